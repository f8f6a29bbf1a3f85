"""Where results go: a file that is replaced only when the run produced something.

Results are written to a hidden temporary file beside the destination and renamed over it at the
end, so a run that fails before its first result (a missing device, a bad model) leaves an earlier
file as it was, and a run that is interrupted leaves a complete file of what it finished (a JSON
array closed, a CSV with its header) rather than half a line.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..files import remove_orphans, temporary_sibling, written_whole

KNOWN_SUFFIXES = {"json": "json", "jsonl": "jsonl", "ndjson": "jsonl", "csv": "csv", "txt": "table"}


def format_from_path(path) -> str | None:
    """The format a file name asks for (.json, .jsonl/.ndjson, .csv, .txt for the table), if any."""
    suffix = Path(path).suffix.lower().lstrip(".")
    return KNOWN_SUFFIXES.get(suffix)


class ResultsFile:
    """A context manager giving a text stream for ``path``; see the module's docstring.

    ``produced()`` marks that results were written: from then on the file replaces ``path`` even if
    the run ends in an error or an interruption. Without it, only a run that ends normally does.
    ``discard()`` marks the content as not whole (its writer failed while finishing it): it never replaces ``path``.
    A write that fails (a full disk) leaves ``path`` as it was and is one ``FerError``.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.temporary = temporary_sibling(self.path)
        self.has_results = False
        self.discarded = False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        remove_orphans(self.path)
        # A file name that is not UTF-8 keeps its own bytes (surrogateescape), as `ls > file` does: reversible.
        # An OSError here is the caller's to report.
        self.stream = open(self.temporary, "w", newline="", encoding="utf-8", errors="surrogateescape")

    def produced(self) -> None:
        self.has_results = True

    def discard(self) -> None:
        self.discarded = True

    def __enter__(self):
        return self.stream

    def __exit__(self, error_type, error, traceback) -> None:
        failed_write = isinstance(error, OSError)  # the body only writes to the stream: a full disk, say
        with written_whole(self.path):
            try:
                self.stream.close()  # the last buffered lines: may find the disk full too
                if not (self.discarded or failed_write) and (error_type is None or self.has_results):
                    os.replace(self.temporary, self.path)
            finally:
                self.temporary.unlink(missing_ok=True)
            if failed_write:
                raise error
