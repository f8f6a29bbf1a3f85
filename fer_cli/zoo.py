"""The shipped weights: where they live and which one is the default."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .checkpoint import Classifier, load_classifier, read_checkpoint
from .errors import ModelError

PACKAGE_DIR = Path(__file__).resolve().parent


def weights_dirs() -> list[Path]:
    """Where shipped weights are looked for, first match wins.

    ``$FER_WEIGHTS_DIR`` if set; ``fer_cli/weights`` inside an installed wheel; ``weights/`` at the
    top of a source checkout (editable installs and ``python -m fer_cli`` from the repo).
    """
    candidates = []
    if os.environ.get("FER_WEIGHTS_DIR"):
        candidates.append(Path(os.environ["FER_WEIGHTS_DIR"]))
    candidates += [PACKAGE_DIR / "weights", PACKAGE_DIR.parent / "weights"]
    return [c for c in candidates if c.is_dir()]


@dataclass(frozen=True)
class ShippedModel:
    name: str
    path: str
    arch: str
    class_names: list[str]
    val_accuracy: float | None


def shipped_models() -> list[ShippedModel]:
    """Every loadable ``*.pt`` in the weights folders, best validation accuracy first."""
    found: dict[str, ShippedModel] = {}
    for folder in weights_dirs():
        for path in sorted(folder.glob("*.pt")):
            if path.stem in found or path.name.endswith(".last.pt"):
                continue
            checkpoint = read_checkpoint(path)
            found[path.stem] = ShippedModel(
                name=path.stem,
                path=str(path),
                arch=checkpoint["arch"],
                class_names=list(checkpoint["class_names"]),
                val_accuracy=checkpoint.get("metrics", {}).get("accuracy"),
            )
    return sorted(found.values(), key=lambda m: -(m.val_accuracy or 0.0))


def resolve_model(name_or_path: str | None) -> Classifier:
    """A shipped model's name, a checkpoint path, or None for the best shipped model."""
    if name_or_path is None:
        available = shipped_models()
        if not available:
            raise ModelError("no shipped weights found; train one with `fer train` and pass --model PATH")
        return load_classifier(available[0].path)
    if Path(name_or_path).is_file() or name_or_path.endswith(".pt") or os.sep in name_or_path:
        return load_classifier(name_or_path)
    for entry in shipped_models():
        if entry.name == name_or_path:
            return load_classifier(entry.path)
    names = ", ".join(m.name for m in shipped_models()) or "none"
    raise ModelError(f"no shipped model named '{name_or_path}' (shipped: {names}); or pass a checkpoint path")


def resolve_models(names_or_paths: list[str] | None) -> list[Classifier]:
    """The given models, or every shipped one."""
    if names_or_paths:
        return [resolve_model(n) for n in names_or_paths]
    available = shipped_models()
    if not available:
        raise ModelError("no shipped weights found; pass --model PATH")
    return [load_classifier(m.path) for m in available]
