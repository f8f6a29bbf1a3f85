"""fer_cli: facial-expression recognition from the command line, and from Python (``fer_cli.api``).

    import fer_cli
    model = fer_cli.load()                    # the default model, or fer_cli.load("resnet18_ferplus"), a file...
    records = model.predict("photos/")        # one dict per face, as `fer predict -f json` writes

``load``, ``Model``, ``train`` and ``TrainConfig`` are imported on first use: ``import fer_cli`` stays instant.
"""

from .version import __version__

__all__ = ["Model", "TrainConfig", "load", "train", "__version__"]


def __getattr__(name: str):
    if name in ("Model", "load", "train"):
        from . import api

        return getattr(api, name)
    if name == "TrainConfig":  # imports torch
        from .engine.train import TrainConfig

        return TrainConfig
    raise AttributeError(f"module 'fer_cli' has no attribute {name!r}")
