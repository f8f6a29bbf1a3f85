"""Where results go, settled before any work: --output's file and format, --annotate's and --report's folders,
the writer of a format, and the outputs refused (an input, a file --report writes, an annotated copy's name).
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

import typer

from ..outputs.destination import KNOWN_SUFFIXES, ResultsFile, format_from_path
from ..outputs.results import WRITERS
from ..outputs.terminal import printable
from .options import OutputFormat, refuse_shipped


def open_output(output: Path | None, fmt: OutputFormat | None):
    """The results destination and its format: --format wins, then --output's extension, then the terminal."""
    if fmt is not None:
        chosen = fmt.value
    elif output is not None:
        chosen = format_from_path(output)
        if chosen is None:
            known = ", ".join(f".{suffix}" for suffix in KNOWN_SUFFIXES)
            raise typer.BadParameter(
                f"cannot tell the format from the name {output.name} ({known}); add --format", param_hint="--output"
            )
    else:
        chosen = "table" if sys.stdout.isatty() else "jsonl"
    if output is None:
        return contextlib.nullcontext(sys.stdout), chosen
    try:
        return ResultsFile(output), chosen
    except OSError as error:
        raise typer.BadParameter(f"cannot write {printable(output)}: {error.strerror}", param_hint="--output") from None


def open_annotator(folder: Path | None, class_names: list[str]):
    from ..outputs.annotate import Annotator

    if folder is None:
        return None
    try:
        return Annotator(folder, class_names)
    except OSError as error:
        raise typer.BadParameter(
            f"cannot write to {printable(folder)}: {error.strerror}", param_hint="--annotate"
        ) from None


def open_report_folder(folder: Path | None) -> Path | None:
    """Make --report's folder before any work, so that a bad one fails at once."""
    from ..outputs.report import prepare_folder

    if folder is None:
        return None
    try:
        return prepare_folder(folder)
    except OSError as error:
        raise typer.BadParameter(
            f"cannot write to {printable(folder)}: {error.strerror}", param_hint="--report"
        ) from None


def close_writer(writer, destination) -> None:
    """Finish the document (a JSON array closed, a table printed) whatever happened; a writer that fails doing it
    (a name it cannot render) leaves half a document, which never replaces an earlier -o file."""
    try:
        writer.close()
    except BaseException:
        if isinstance(destination, ResultsFile):
            destination.discard()
        raise


def refuse_clashing_outputs(output: Path | None, report: Path | None, annotate: Path | None, items: list) -> None:
    """-o never replaces an input, nor a file --report writes; checked before any work."""
    if output is None:
        return
    refuse_shipped([output], "--output")
    target = os.path.realpath(output)
    # (an output that does not exist yet is no input: resolving every input's path costs 0.1 s a thousand files)
    if os.path.exists(target) and target in {os.path.realpath(item) for item in items if isinstance(item, str)}:
        raise typer.BadParameter(
            f"{printable(output)} is one of the inputs; results would replace it", param_hint="--output"
        )
    if report is not None and os.path.dirname(target) == os.path.realpath(report):
        from ..outputs.report import REPORT_FILES  # matplotlib comes with it: only for --report

        if os.path.basename(target) in REPORT_FILES or os.path.basename(target).startswith("confusion-"):
            raise typer.BadParameter(
                f"{printable(output)} is a file --report writes in {printable(report)}; choose another name or folder",
                param_hint="--output",
            )
    if annotate is not None and os.path.dirname(target) == os.path.realpath(annotate) and ".fer." in output.name:
        raise typer.BadParameter(
            f"{printable(output)} is where an annotated copy may go; choose another name", param_hint="--output"
        )


def writer_for(chosen: str, videos: bool):
    """The writer of a format; the table gains one row per face track when videos are among the inputs."""
    if chosen == "table" and videos:
        from ..outputs.track_table import TableWithTracks

        return TableWithTracks
    return WRITERS[chosen]
