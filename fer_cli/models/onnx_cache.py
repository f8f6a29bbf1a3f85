"""The cache folder of checkpoints' ONNX forms (``files.cache_dir()/onnx``, see ``checkpoint_runner``): what an
entry is called, what ties it to its checkpoint, the lock held while one is made, and which entries are pruned.

An entry is trusted by nothing inside it: its record, a small JSON file beside it written when it is made, names
the sha256 of the checkpoint it was exported from and the sha256 of the graph as written. An entry whose graph
was edited (a head's bias), replaced (an int8 graph copied over it) or whose record cannot be read is no entry,
and is made again. Pruning touches only the names fer gives its entries, and never an entry the running process
uses: the cache may be a folder that holds other files, and one command may run more checkpoints than it keeps.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections.abc import Callable, Collection
from pathlib import Path

from ..files import file_sha256, temporary_sibling

# <first 32 hex digits of the checkpoint's sha256>-v<export format>-ort<onnxruntime version>.onnx: nothing else
ENTRY_NAME = re.compile(r"[0-9a-f]{32}-v[0-9]+-ort[0-9][0-9a-z.+]*\.onnx")
RECORD_BYTES = 4096  # a record is about 150 bytes; more is not one


def entry_path(folder: Path, checkpoint_sha256: str, export_format: int, onnxruntime_version: str) -> Path:
    return folder / f"{checkpoint_sha256[:32]}-v{export_format}-ort{onnxruntime_version}.onnx"


def record_path(entry: Path) -> Path:
    return entry.with_name(entry.name + ".json")


def is_whole(entry: Path, checkpoint_sha256: str) -> bool:
    """Whether ``entry`` is the graph exported from the checkpoint with this hash, as it was written: its record says
    so, and the graph's hash is the recorded one. An entry, or a record, that cannot be read is no entry."""
    try:
        with open(record_path(entry), "rb") as stream:
            record = json.loads(stream.read(RECORD_BYTES))
        return record == {"checkpoint": checkpoint_sha256, "graph": file_sha256(entry)}
    except (OSError, ValueError, RecursionError):  # absent, unreadable, not JSON, nested past json's depth
        return False


def place(graph: Path, entry: Path, checkpoint_sha256: str) -> None:
    """The finished ``graph`` (in a private folder beside ``entry``) renamed to ``entry``, then its record written:
    a reader never sees a record for a graph that is not whole."""
    record = {"checkpoint": checkpoint_sha256, "graph": file_sha256(graph)}
    os.replace(graph, entry)
    temporary = temporary_sibling(record_path(entry))
    try:
        temporary.write_text(json.dumps(record))
        os.replace(temporary, record_path(entry))
    finally:
        temporary.unlink(missing_ok=True)


class LockTimeout(Exception):
    """Another process held an entry's lock longer than the caller would wait (it may be stopped: Ctrl-Z)."""


@contextlib.contextmanager
def entry_lock(entry: Path, wait_s: float, on_wait: Callable[[], None]):
    """Held while one process makes ``entry``: each entry has its own lock, so a first run waits only for a process
    making the same one. ``on_wait`` is called once if it has to wait; after ``wait_s`` seconds, ``LockTimeout``.
    The lock file is removed by its holder before it lets go (a waiter that then finds its file gone locks anew), so
    none is left behind. Where files cannot be locked (Windows), nothing is held: two first runs then both export,
    and the second rename replaces the first's entry with an equal one."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    path = entry.with_name(entry.name + ".lock")
    deadline = time.monotonic() + wait_s
    waited = False
    while True:
        stream = open(path, "a")
        try:
            fcntl.flock(stream, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            stream.close()
            if not waited:
                on_wait()
                waited = True
            if time.monotonic() >= deadline:
                raise LockTimeout from None
            time.sleep(0.1)
            continue
        if _is_at(stream, path):
            break
        stream.close()  # its holder removed the file after we opened it: that lock guards nothing now
    try:
        yield
    finally:
        path.unlink(missing_ok=True)
        stream.close()  # lets go of the lock


def _is_at(stream, path: Path) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(stream.fileno()).st_ino
    except FileNotFoundError:
        return False


def mark_used(entry: Path) -> None:
    with contextlib.suppress(OSError):  # a read-only cache is still read
        os.utime(entry)


def prune(folder: Path, keep: int, in_use: Collection[Path]) -> None:
    """Delete fer's entries (``ENTRY_NAME``, with their records) beyond the ``keep`` used last, counting ``in_use``
    (the entries the running process uses) first and never deleting one of those. A process that has an entry open
    keeps reading it."""
    in_use = [entry for entry in in_use if entry.parent == folder]
    used = {}
    for entry in folder.glob("*.onnx"):
        if ENTRY_NAME.fullmatch(entry.name) and entry not in in_use:
            with contextlib.suppress(OSError):  # another process pruning at the same time
                used[entry] = entry.stat().st_mtime
    for old in sorted(used, key=used.get, reverse=True)[max(0, keep - len(in_use)) :]:
        with contextlib.suppress(OSError):
            old.unlink()
            record_path(old).unlink(missing_ok=True)
