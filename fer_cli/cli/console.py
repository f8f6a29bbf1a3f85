"""What fer says on stderr, and its exit codes: the console every message goes to, notes, skipped inputs and
warnings, the spinner of a long step, counts in words.

Results go to stdout (see ``destinations``); everything here goes to stderr.
"""

from __future__ import annotations

import contextlib
import time

from rich.console import Console

from ..outputs.terminal import markup_safe

err_console = Console(stderr=True, soft_wrap=True)  # log lines stay whole in files
PROCESS_STARTED = time.perf_counter()  # about when `fer` started: the first command-line module to load

USAGE_ERROR = 2
INPUTS_FAILED = 1


@contextlib.contextmanager
def spinner(message: str):
    """A spinner with ``message`` on stderr while a long step runs without a progress bar of its own (a first run's
    ONNX exports, then the scoring): on a terminal only, shown at once; notes printed meanwhile appear above it."""
    from rich.live import Live
    from rich.spinner import Spinner

    if not err_console.is_terminal:
        yield
        return
    with Live(Spinner("dots", message), console=err_console, transient=True, refresh_per_second=12.5) as live:
        live.refresh()
        yield


def note(message: str) -> None:
    err_console.print(f"[yellow]note:[/] {markup_safe(message)}", highlight=False)


def report_skipped(path: str, reason: str) -> None:
    err_console.print(f"[yellow]skipped[/] {markup_safe(path)}: {markup_safe(reason)}", highlight=False)


def report_warning(path: str, warning: str) -> None:
    err_console.print(f"[yellow]warning[/] {markup_safe(path)}: {markup_safe(warning)}", highlight=False)


def plural(number: int, one: str, many: str | None = None) -> str:
    """'1 input', '2 inputs', '1,200 faces'."""
    return f"{number:,} {one if number == 1 else (many or one + 's')}"
