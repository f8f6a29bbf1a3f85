"""Files written whole: the new content goes to a temporary sibling that is renamed over the target
(atomic on one filesystem), and the orphans a writer killed outright left are cleared by the next."""

from __future__ import annotations

import errno
import glob
import os
import tempfile
from pathlib import Path


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
