"""How a checkpoint runs: on a GPU (or Apple's MPS) with torch, as it was trained; on a CPU as ONNX on
onnxruntime, without importing torch, which alone takes longer than most runs.

The ONNX form of a checkpoint is exported by torch the first time the checkpoint runs on a CPU, and
kept in fer's cache folder (``files.cache_dir()/onnx``) under the checkpoint's sha256. Any checkpoint
gets one (a shipped one, one a user trained), the shipped weights stay as they are, and a changed
checkpoint is a new hash, so a new export. An entry is used only while the record written beside it
when it was made names the checkpoint's sha256 and the graph's own (``onnx_cache``): one edited,
replaced or unreadable is exported again. Entries are written under a temporary name and renamed when
whole; concurrent first runs of one checkpoint queue on its entry's lock, so one exports and the
others read its entry (a run waits at most ``EXPORT_WAIT_S``, saying so, then runs with torch); other
checkpoints' first runs do not wait. The last ``KEEP`` entries used are kept, and every entry the
running process uses. Where no entry can be made (a read-only or full cache, an export that fails)
the checkpoint runs with torch on the CPU, as it always could, and the caller's ``note`` hears why.
The ONNX form is float32, the checkpoint's own network: its probabilities equal torch's to float
precision (tests/test_checkpoint_runner.py).
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..device import runs_on_the_cpu
from ..errors import CheckpointError, FerError
from ..files import cache_dir, file_sha256, writable_folder
from . import onnx_cache
from .exported import OnnxRunner, _onnxruntime

EXPORT_FORMAT = 1  # raised when the exported graph changes: older entries are then exported again
KEEP = 8  # entries kept in the cache, the most recently used (resnet18's is 45 MB, a vgg width 64's 20 MB)
EXPORT_WAIT_S = 60.0  # how long a first run waits for another process exporting the same checkpoint (seconds)
_used_here: set[Path] = set()  # the entries this process runs: never pruned by it
_SCRATCH_PREFIX = ".fer-export-"  # the private folder of an export: this, then tempfile's 8 characters
_SCRATCH_NAME = re.compile(re.escape(_SCRATCH_PREFIX) + "[a-z0-9_]{8}")


class CheckpointRunner:
    """Runs a checkpoint: torch on an accelerator, its cached ONNX form on a CPU (see above). What is
    chosen happens in ``prepare``; ``logits`` before it runs on the CPU."""

    def __init__(self, path: str | os.PathLike, note: Callable[[str], None] | None = None):
        self.path = str(path)
        self.note = note or (lambda message: None)
        self.engine = None  # an OnnxRunner or a TorchRunner, once prepared

    def prepare(self, device: str = "auto") -> str:
        if runs_on_the_cpu(device):
            onnx_runner = self._onnx_runner()
            if onnx_runner is not None:
                self.engine = onnx_runner
                return onnx_runner.prepare("cpu")
            self.engine = self._torch_runner()
            return self.engine.prepare("cpu")
        torch_runner = self._torch_runner()
        used = torch_runner.prepare(device)
        if used == "cpu":  # 'auto' on a machine whose GPU torch cannot use (a CPU build of torch, no device)
            onnx_runner = self._onnx_runner()
            if onnx_runner is not None:
                torch_runner = onnx_runner
        self.engine = torch_runner
        return used

    def logits(self, pixels: np.ndarray) -> np.ndarray:
        if self.engine is None:
            self.prepare("cpu")
        return self.engine.logits(pixels)

    def _torch_runner(self):
        from .checkpoint import TorchRunner, build_model, read_checkpoint

        checkpoint = read_checkpoint(self.path)
        return TorchRunner(build_model(checkpoint), checkpoint["preprocess"])

    def _onnx_runner(self) -> OnnxRunner | None:
        """The runner of the checkpoint's ONNX form, or None (said to ``note``) where there can be none."""
        try:
            entry = onnx_form(self.path, self.note)
            try:
                return OnnxRunner(entry)
            except CheckpointError:  # the entry was damaged after it was written: made again, once
                entry.unlink(missing_ok=True)
                return OnnxRunner(onnx_form(self.path, self.note))
        except NoOnnxForm as reason:
            self.note(f"{Path(self.path).name} runs with torch on the CPU (slower to start): {reason}")
        except CheckpointError:  # the checkpoint itself cannot be built: torch would refuse it too
            raise
        except FerError as error:  # onnxruntime missing (a broken install)
            self.note(f"{Path(self.path).name} runs with torch on the CPU (slower to start): {error}")
        return None


class NoOnnxForm(Exception):
    """Why a checkpoint's ONNX form could not be made or kept: it then runs with torch."""


def onnx_form(path: str | os.PathLike, note: Callable[[str], None] = lambda message: None) -> Path:
    """The cache entry holding the checkpoint at ``path`` as ONNX, exported now (by torch) if there is none whole.

    Raises ``NoOnnxForm`` where the cache cannot hold it (or another process has been making it for
    ``EXPORT_WAIT_S``), ``CheckpointError`` for a checkpoint that cannot be built (weights that do not fit).
    """
    sha256 = file_sha256(path)
    folder = cache_dir() / "onnx"
    entry = onnx_cache.entry_path(folder, sha256, EXPORT_FORMAT, _onnxruntime_version())
    _used_here.add(entry)
    if onnx_cache.is_whole(entry, sha256):
        onnx_cache.mark_used(entry)
        return entry
    try:
        writable_folder(folder)
    except OSError as error:
        raise NoOnnxForm(f"its ONNX form cannot be cached in {folder} ({error.strerror or error})") from None
    name = Path(path).name
    waiting = f"{name}: waiting while another fer process exports it to ONNX (at most {EXPORT_WAIT_S:.0f} s)"
    try:
        with onnx_cache.entry_lock(entry, EXPORT_WAIT_S, functools.partial(note, waiting)):
            if not onnx_cache.is_whole(entry, sha256):  # the process waited for may have made it
                again = " again (the cached one is damaged, changed or an older fer's)" if entry.exists() else ", once"
                note(f"exporting {name} to ONNX for the CPU{again} (cached in {folder})")
                _export(Path(path), entry, sha256)
                onnx_cache.prune(folder, KEEP, _used_here)
    except onnx_cache.LockTimeout:
        raise NoOnnxForm(f"another fer process has been exporting it for {EXPORT_WAIT_S:.0f} s") from None
    except OSError as error:  # its lock cannot be made (the folder changed since it was checked)
        raise NoOnnxForm(f"its ONNX form cannot be cached in {folder} ({error.strerror or error})") from None
    return entry


def _export(checkpoint_path: Path, entry: Path, checkpoint_sha256: str) -> None:
    """The checkpoint as ONNX at ``entry``, its graph as onnxruntime optimises it (batch norms folded into the
    convolutions, activations fused: what it would otherwise redo at every start, half of a session's making).
    Written in a private folder beside it, then renamed and recorded (``onnx_cache.place``)."""
    from .checkpoint import read_checkpoint
    from .exported import write_exported

    checkpoint = read_checkpoint(checkpoint_path)
    _remove_abandoned_exports(entry.parent)
    try:
        # torch's exporter and onnx warn about their own internals (deprecations, numpy's RuntimeWarnings while
        # folding constants): nothing a user can act on, and the note already said an export is happening.
        with (
            warnings.catch_warnings(),
            tempfile.TemporaryDirectory(dir=entry.parent, prefix=_SCRATCH_PREFIX) as scratch,
        ):
            warnings.simplefilter("ignore")
            exported, optimised = Path(scratch) / "exported.onnx", Path(scratch) / "optimised.onnx"
            write_exported(checkpoint, checkpoint_path, exported)
            _optimise(exported, optimised)
            onnx_cache.place(optimised, entry, checkpoint_sha256)
    except CheckpointError:
        raise
    except OSError as error:  # a full disk
        raise NoOnnxForm(f"its ONNX form cannot be written in {entry.parent} ({error.strerror or error})") from None
    except Exception as error:  # noqa: BLE001: torch's exporter raises its own types; torch then runs it as it is
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise NoOnnxForm(f"torch could not export it to ONNX ({reason})") from None


def _remove_abandoned_exports(folder: Path, older_than_s: float = 3600) -> None:
    """The private folders of exports killed outright (SIGKILL, power loss): an export takes seconds, not hours."""
    for scratch in folder.glob(_SCRATCH_PREFIX + "*"):
        if not _SCRATCH_NAME.fullmatch(scratch.name):  # not a folder fer made
            continue
        with contextlib.suppress(OSError):
            if scratch.is_dir() and time.time() - scratch.stat().st_mtime > older_than_s:
                shutil.rmtree(scratch, ignore_errors=True)


def _optimise(source: Path, out: Path) -> None:
    """``source`` as onnxruntime's graph optimisations leave it, at ``out`` (metadata kept). Only the optimisations
    valid on any CPU are saved (level 'extended'); the ones for this CPU's instructions are made at each start."""
    onnxruntime = _onnxruntime()
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(out)
    options.log_severity_level = 3
    onnxruntime.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])


def _onnxruntime_version() -> str:
    """Part of an entry's name: its graph is the optimised one of this onnxruntime (a new version, a new entry)."""
    return _onnxruntime().__version__
