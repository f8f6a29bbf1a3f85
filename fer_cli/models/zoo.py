"""Models by name or path: the one place a model file becomes a ``Classifier``, whatever its format,
and the shipped weights (where they live, which one is the default)."""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import FerError, ModelError
from ..files import file_sha256
from .checkpoint_file import read_description
from .checkpoint_runner import CheckpointRunner
from .classifier import Classifier, described_by
from .exported import load_exported, read_metadata

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # fer_cli/, above this stage


CHECKSUMS = "SHA256SUMS"  # beside the shipped weights, in `sha256sum` format


def load_classifier(path: str | os.PathLike, note=None) -> Classifier:
    """A checkpoint (.pt) or an exported model (.onnx); a shipped one only if it is the file that was shipped.

    A checkpoint is read without torch; its runner picks the engine when it is prepared for a device
    (``checkpoint_runner``), and ``note`` hears what that involves (a first export, a fallback to torch)."""
    verify_shipped(path)
    if Path(path).suffix.lower() == ".onnx":
        return load_exported(path)
    return described_by(path, read_description(path), CheckpointRunner(path, note))


def verify_shipped(path: str | os.PathLike) -> None:
    """Refuse a file that its folder's ``SHA256SUMS`` lists under another hash: a shipped model
    damaged, truncated or swapped. Files the list does not name (your own models) pass."""
    path = Path(path)
    expected = _listed_checksums(path.parent / CHECKSUMS).get(path.name)
    if expected is None:
        return
    if file_sha256(path) != expected:
        raise ModelError(
            f"{path} is not the file that was shipped (its sha256 differs from {path.parent / CHECKSUMS}): "
            "damaged or replaced; reinstall fer-cli, or in a source checkout `git checkout weights/`"
        )


def is_shipped(path: str | os.PathLike) -> bool:
    """A file that its folder's ``SHA256SUMS`` lists: a shipped model, which no command may change."""
    path = Path(path)
    return path.name in _listed_checksums(path.parent / CHECKSUMS)


def _listed_checksums(listing: Path) -> dict[str, str]:
    if not listing.is_file():
        return {}
    entries = (line.split(maxsplit=1) for line in listing.read_text().splitlines() if line.strip())
    return {name.lstrip("*").strip(): digest.lower() for digest, name in entries}


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


def shipped_models(note=None) -> list[ShippedModel]:
    """Every loadable checkpoint (``*.pt``) and exported model (``*.onnx``, where onnxruntime is
    installed) in the weights folders, best validation accuracy first. A file that cannot be read (a damaged
    or foreign file dropped in ``$FER_WEIGHTS_DIR``) is left out, and ``note`` hears why: it never stops the rest."""
    found: dict[str, ShippedModel] = {}
    for folder in weights_dirs():
        for path in sorted(folder.glob("*.pt")):
            if path.stem in found or path.name.endswith(".last.pt"):
                continue
            try:
                checkpoint = read_description(path)  # no torch: the weights are not read
            except FerError as error:  # damaged, truncated, foreign
                if note:
                    note(f"left out {path}: {error}")
                continue
            found[path.stem] = ShippedModel(
                path.stem, str(path), checkpoint["arch"], list(checkpoint["class_names"]),
                checkpoint.get("metrics", {}).get("accuracy"),
            )  # fmt: skip
        for path in sorted(folder.glob("*.onnx")) if exported_models_run_here() else []:
            if path.stem in found:
                continue
            try:
                meta = read_metadata(path)  # no onnxruntime: the file's metadata alone
            except FerError as error:  # damaged, or not exported by fer
                if note:
                    note(f"left out {path}: {str(error).splitlines()[0] if str(error) else type(error).__name__}")
                continue
            found[path.stem] = ShippedModel(
                path.stem, str(path), meta["arch"] + (" int8" if meta.get("int8") else ""), list(meta["class_names"]),
                meta.get("metrics", {}).get("accuracy"),
            )  # fmt: skip
    return sorted(found.values(), key=lambda m: -(m.val_accuracy or 0.0))


def exported_models_run_here() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None


def _find_shipped_file(name: str) -> Path | None:
    """A shipped model by name, found by its file alone (reading no other model)."""
    for folder in weights_dirs():
        for suffix in (".pt", ".onnx"):
            if (folder / (name + suffix)).is_file():
                return folder / (name + suffix)
    return None


def resolve_model(name_or_path: str | None, note=None) -> Classifier:
    """A shipped model's name, a model file (.pt or .onnx), or None for the default: the shipped
    checkpoint with the best validation accuracy (never an exported model, so the default does not
    depend on which extras are installed)."""
    if name_or_path is None:
        checkpoints = [m for m in shipped_models(note) if m.path.endswith(".pt")]
        if not checkpoints:
            raise ModelError("no shipped weights found; train one with `fer train` and pass --model PATH")
        return load_classifier(checkpoints[0].path, note)
    looks_like_path = name_or_path.endswith((".pt", ".onnx")) or os.sep in name_or_path
    if Path(name_or_path).is_file() or looks_like_path:
        return load_classifier(name_or_path, note)
    shipped = _find_shipped_file(name_or_path)
    if shipped is not None:
        return load_classifier(shipped, note)
    names = ", ".join(m.name for m in shipped_models()) or "none"
    raise ModelError(f"no shipped model named '{name_or_path}' (shipped: {names}); or pass a model file")


def resolve_models(names_or_paths: list[str] | None, note=None) -> list[Classifier]:
    """The given models, or the default ensemble: every shipped checkpoint. Exported models (.onnx)
    are faster copies of a checkpoint, not members of their own: they vote only when named (`fer ensemble
    --help` and the README say so once; a note at every run said nothing new after the first)."""
    if names_or_paths:
        return [resolve_model(n, note) for n in names_or_paths]
    checkpoints = [m for m in shipped_models(note) if m.path.endswith(".pt")]
    if not checkpoints:
        raise ModelError("no shipped weights found; pass --model PATH")
    return [load_classifier(m.path, note) for m in checkpoints]


def model_catalogue(note=None) -> dict:
    """What `fer models` lists, as plain data: the architectures, and the shipped models (best
    validation accuracy first) with the commands that use each by default."""
    from .architectures import describe_model, list_models, model_options

    shipped = shipped_models(note)
    default = next((m.name for m in shipped if m.path.endswith(".pt")), None)  # the best checkpoint
    return {
        "architectures": [
            {"name": name, "options": model_options(name), "description": describe_model(name)}
            for name in list_models()
        ],
        "shipped": [
            {
                "name": entry.name,
                "arch": entry.arch,
                "class_names": entry.class_names,
                "val_accuracy": entry.val_accuracy,
                "used_by_default_in": _default_uses(entry, default),
                "path": entry.path,
                "size_bytes": os.path.getsize(entry.path),
            }
            for entry in shipped
        ],
    }


def _default_uses(entry: ShippedModel, default: str | None) -> list[str]:
    """The commands that use a shipped model unasked: every checkpoint votes in `fer ensemble`, the
    best also predicts alone; exported copies run only when named."""
    if not entry.path.endswith(".pt"):
        return []
    return ["predict", "ensemble"] if entry.name == default else ["ensemble"]
