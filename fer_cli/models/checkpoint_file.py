"""A checkpoint's description, read without torch: every key of the checkpoint dict, with each weight a
``TensorInfo`` (dtype and shape) standing for values that are never read.

`fer models`, the zoo and prediction on a CPU (which runs a checkpoint's cached ONNX form) need only
this: reading it takes milliseconds, importing torch to ``torch.load`` the file takes seconds.

The file is what ``torch.save`` writes: a zip archive whose ``<name>/data.pkl`` is the pickled dict,
each tensor in it pointing at a storage kept as another member of the archive. The pickle is read as
``torch.load(..., weights_only=True)`` reads it: only plain types and the globals that rebuild tensors
are allowed, so nothing in the file runs.
"""

from __future__ import annotations

import collections
import os
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import CheckpointError, ModelError
from .architectures import check_model_options
from .classifier import edited_by_hand, implausible

FORMAT = "fer_cli.checkpoint"
VERSION = 1
REQUIRED_KEYS = ("arch", "model_config", "class_names", "preprocess", "state_dict")
# The most a checkpoint's pickle may unpack to, and its whole archive beyond its own size. torch stores the weights
# uncompressed (each unpacks to its own size); the pickle of everything else is about 100 KB (the shipped ones, their
# metrics and calibration reports included). A 3 MB file whose pickle is deflated from 3 GiB is refused, not unpacked.
MAX_PICKLE_BYTES = 8 << 20


@dataclass(frozen=True)
class TensorInfo:
    """A tensor of the file, described: its values stay in the archive."""

    dtype: str  # numpy's name: float32, float16, int64...
    shape: tuple[int, ...]


def read_description(path: str | os.PathLike) -> dict:
    """The checkpoint at ``path`` as ``checkpoint.read_checkpoint`` returns it, tensors as ``TensorInfo``,
    validated the same way, with the same errors for a missing, damaged, foreign or unsafe file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no such checkpoint file: {path}")
    check_unpacked_sizes(path)
    try:
        with zipfile.ZipFile(path) as archive:
            pickled = [name for name in archive.namelist() if name.endswith("/data.pkl") and name.count("/") == 1]
            if len(pickled) != 1:
                raise CheckpointError(f"{path} {what_is_wrong(path)}")
            with archive.open(pickled[0]) as stream:
                checkpoint = _Unpickler(stream).load()
    except pickle.UnpicklingError as error:
        raise refused(path, error) from None
    except (zipfile.BadZipFile, EOFError, ValueError, OSError, KeyError, TypeError, IndexError, AttributeError):
        raise CheckpointError(f"{path} {what_is_wrong(path)}") from None
    return validated(path, checkpoint)


def check_unpacked_sizes(path: Path) -> None:
    """Refuse, before any member is read (by this module or by torch), an archive whose pickle or whole content
    would unpack to more than a checkpoint's can (``MAX_PICKLE_BYTES``): a zip bomb. A file that is no zip archive
    is left to the reader, whose error says what it is."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):
        return
    pickled = max((m.file_size for m in members if m.filename.endswith("/data.pkl")), default=0)
    unpacked = sum(m.file_size for m in members)
    if pickled > MAX_PICKLE_BYTES or unpacked > path.stat().st_size + MAX_PICKLE_BYTES:
        raise CheckpointError(
            f"{path} is not a fer_cli checkpoint: its {path.stat().st_size / 2**20:.1f} MiB would unpack to "
            f"{max(pickled, unpacked) / 2**20:.0f} MiB (checkpoints unpack to about their own size); not read"
        )


def refused(path: Path, error: pickle.UnpicklingError) -> CheckpointError:
    """What a checkpoint whose pickle could not be read is: one holding Python objects (refused: no code runs), or a
    damaged one. The same words whether torch read it (``checkpoint.read_checkpoint``) or this module did."""
    if "unsupported global" in str(error).lower():
        return CheckpointError(
            f"{path} is not a fer_cli checkpoint: it holds Python objects, not plain data, and is not loaded"
        )
    return CheckpointError(f"{path} is not a readable fer_cli checkpoint (corrupt, truncated or foreign)")


def validated(path: str | os.PathLike, checkpoint) -> dict:
    """``checkpoint`` if it is a fer_cli checkpoint this version can read, else the CheckpointError saying why."""
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != FORMAT:
        raise CheckpointError(f"{path} is a PyTorch file but not a fer_cli checkpoint")
    missing = [key for key in REQUIRED_KEYS if key not in checkpoint]
    if missing:
        raise CheckpointError(f"{path} is missing {', '.join(missing)}")
    if checkpoint.get("version", 0) > VERSION:
        raise CheckpointError(f"{path} was written by a newer fer_cli (format version {checkpoint['version']})")
    problem = _malformed(checkpoint) or implausible(checkpoint)
    if problem:
        raise edited_by_hand(path, problem)
    return checkpoint


def _malformed(checkpoint: dict) -> str:
    """Why a checkpoint's network cannot be built from it as it is (a wrong type, an option out of its range), or
    '': checked before anything is built, so a hand-edited file is refused in one line, not by torch's exporter."""
    arch, options = checkpoint["arch"], checkpoint["model_config"]
    if not isinstance(arch, str) or not isinstance(options, dict) or not all(isinstance(k, str) for k in options):
        return "its arch is not a name with a model_config table of options"
    try:
        check_model_options(arch, options)
    except ModelError as error:
        return str(error)
    weights = checkpoint["state_dict"]
    if not isinstance(weights, dict) or not all(
        isinstance(name, str) and hasattr(value, "shape") and hasattr(value, "dtype") for name, value in weights.items()
    ):
        return "its state_dict is not a table of named tensors"
    return ""


def what_is_wrong(path: Path) -> str:
    """Why a file could not be read as a checkpoint, in the user's terms (the readers' own messages speak of
    their internals)."""
    with open(path, "rb") as stream:
        start = stream.read(4)
    if not start:
        return "is empty"
    if start != b"PK\x03\x04":  # every checkpoint torch has written since 1.6 is a zip archive
        return "is not a checkpoint (not a PyTorch file)"
    return "is damaged or truncated (a PyTorch file that cannot be read whole; copy or download it again)"


# torch's storage classes, by the dtype of their elements
_STORAGE_DTYPES = {
    "FloatStorage": "float32",
    "HalfStorage": "float16",
    "DoubleStorage": "float64",
    "BFloat16Storage": "bfloat16",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
}


@dataclass(frozen=True)
class _StorageType:
    dtype: str


def _rebuild_tensor(storage, offset, size, stride, requires_grad=False, hooks=None, metadata=None) -> TensorInfo:
    return TensorInfo(storage.dtype, tuple(size))


def _rebuild_parameter(data, requires_grad=False, hooks=None) -> TensorInfo:
    return data


class _Unpickler(pickle.Unpickler):
    """The pickle of a checkpoint, with only the globals ``torch.load(weights_only=True)`` allows for one."""

    def find_class(self, module: str, name: str):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if (module, name) == ("torch._utils", "_rebuild_parameter"):
            return _rebuild_parameter
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        if (module, name) == ("torch", "Size"):
            return tuple
        raise pickle.UnpicklingError(f"Unsupported global: {module}.{name}")

    def persistent_load(self, pid):
        # torch's reference to a storage: ('storage', storage type, key, location, number of elements)
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError("not a storage reference")
        return pid[1]
