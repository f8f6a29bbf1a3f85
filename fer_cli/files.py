"""Files written whole: the new content goes to a temporary sibling that is renamed over the target
(atomic on one filesystem), and the orphans a writer killed outright left are cleared by the next.
Where fer caches what it computed once, and the content hash that names what it cached."""

from __future__ import annotations

import contextlib
import errno
import functools
import glob
import hashlib
import os
import tempfile
from pathlib import Path

from .errors import FerError


def temporary_sibling(path: Path) -> Path:
    """A hidden name beside ``path`` for this process's new content (same folder: the rename is atomic)."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def remove_orphans(path: Path) -> None:
    """Delete the temporary siblings of ``path`` left by processes that no longer exist (SIGKILL, power loss)."""
    for orphan in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        pid = orphan.name[len(path.name) + 2 : -len(".tmp")]
        if pid.isdigit() and not _alive(int(pid)):
            orphan.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # someone else's process
    return True


@contextlib.contextmanager
def written_whole(path: str | os.PathLike):
    """Around writing ``path`` (and the files beside it): a write that fails (a full disk, a quota, a folder gone)
    becomes one ``FerError`` naming the file and the reason, for one line on stderr. Writers put their new content
    in a temporary sibling, so the earlier file is whole whatever happened. torch.save reports a short write as a
    RuntimeError ('unexpected pos'), its own words for the disk filling under it."""
    try:
        yield
    except FerError:
        raise
    except OSError as error:
        raise FerError(f"cannot write {error.filename or path}: {error.strerror or error}") from None
    except RuntimeError as error:
        if "unexpected pos" not in str(error):
            raise
        raise FerError(f"cannot write {path}: the write was cut short ({os.strerror(errno.ENOSPC)}?)") from None


def writable_folder(folder: str | os.PathLike) -> Path:
    """``folder``, made if needed, after checking that a file can be created in it: outputs are checked before any
    work, not found unwritable after it. ``OSError`` says why not (read-only, a file of that name, no space...)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "a file of that name is there, not a folder", str(folder))
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=folder):
        pass
    return folder


def cache_dir() -> Path:
    """Where fer keeps what it computes once (teachers' outputs, checkpoints' ONNX forms): ``$FER_CACHE_DIR``,
    else ``$XDG_CACHE_HOME/fer_cli``, else ``~/.cache/fer_cli``."""
    if os.environ.get("FER_CACHE_DIR"):
        return Path(os.environ["FER_CACHE_DIR"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "fer_cli"


def file_sha256(path: str | os.PathLike) -> str:
    """A file's sha256, hashed once per process while the file stays as it is."""
    stat = os.stat(path)
    return _sha256(str(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=32)
def _sha256(path: str, size: int, modified_ns: int) -> str:  # size and time: a changed file is hashed again
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
