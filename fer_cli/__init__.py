"""fer_cli: facial-expression recognition from the command line, and from Python (``fer_cli.api``).

    import fer_cli
    model = fer_cli.load()                    # the default model, or fer_cli.load("resnet18_ferplus"), a file...
    records = model.predict("photos/")        # one dict per face, as `fer predict -f json` writes

``load``, ``Model``, ``train`` and ``TrainConfig`` are imported on first use: ``import fer_cli`` stays instant.
"""

import os

from .version import __version__

__all__ = ["Model", "TrainConfig", "load", "train", "__version__"]

# onnxruntime (1.29 and later) records telemetry on Linux and macOS: a device id and an event per process under
# ~/.cache/Microsoft, sent to Microsoft, and a coloured warning on stderr where HOME is read-only. fer runs every
# model on it, so fer turns it off before onnxruntime is imported, unless the caller has set the variable.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")


def __getattr__(name: str):
    if name in ("Model", "load", "train"):
        from . import api

        return getattr(api, name)
    if name == "TrainConfig":  # imports torch
        from .engine.train.config import TrainConfig

        return TrainConfig
    raise AttributeError(f"module 'fer_cli' has no attribute {name!r}")
