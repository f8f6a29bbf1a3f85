"""Where results go: a file that is replaced only when the run produced something.

Results are written to a hidden temporary file beside the destination and renamed over it at the
end, so a run that fails before its first result (a missing device, a bad model) leaves an earlier
file as it was, and a run that is interrupted leaves a complete file of what it finished (a JSON
array closed, a CSV with its header) rather than half a line.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..files import remove_orphans, temporary_sibling

KNOWN_SUFFIXES = {"json": "json", "jsonl": "jsonl", "ndjson": "jsonl", "csv": "csv", "txt": "table"}


def format_from_path(path) -> str | None:
    """The format a file name asks for (.json, .jsonl/.ndjson, .csv, .txt for the table), if any."""
    suffix = Path(path).suffix.lower().lstrip(".")
    return KNOWN_SUFFIXES.get(suffix)


class ResultsFile:
    """A context manager giving a text stream for ``path``; see the module's docstring.

    ``produced()`` marks that results were written: from then on the file replaces ``path`` even if
    the run ends in an error or an interruption. Without it, only a run that ends normally does.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.temporary = temporary_sibling(self.path)
        self.has_results = False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        remove_orphans(self.path)
        # A file name that is not UTF-8 keeps its own bytes (surrogateescape), as `ls > file` does: reversible.
        # An OSError here is the caller's to report.
        self.stream = open(self.temporary, "w", newline="", encoding="utf-8", errors="surrogateescape")

    def produced(self) -> None:
        self.has_results = True

    def __enter__(self):
        return self.stream

    def __exit__(self, error_type, error, traceback) -> None:
        try:
            self.stream.close()
            if error_type is None or self.has_results:
                os.replace(self.temporary, self.path)
        finally:
            self.temporary.unlink(missing_ok=True)
