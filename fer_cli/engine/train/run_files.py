"""The files a run writes beside ``--out`` (NAME.history.csv, NAME.curves.png, NAME.last.pt): their names, the
history CSV, and the checks made before any work (an earlier run's files are never silently replaced)."""

from __future__ import annotations

import csv
from pathlib import Path

from rich.console import Console

from ...errors import FerError
from ...files import writable_folder
from .config import TrainConfig


def history_path(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.stem + ".history.csv")


def curves_path(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.stem + ".curves.png")


def last_path(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.stem + ".last.pt")


def refuse_to_replace(out: Path) -> None:
    """A new run never silently replaces an earlier one's checkpoint, history or resume state."""
    earlier = [path for path in (out, history_path(out), last_path(out)) if path.exists()]
    if not earlier:
        return
    resumable = "--resume continues that run if it is unfinished, " if last_path(out).exists() else ""
    raise FerError(
        f"{out}: an earlier run's files are there ({', '.join(path.name for path in earlier)}); "
        f"{resumable}--overwrite replaces them, or choose another --out"
    )


def check_outputs(config: TrainConfig, log: Console) -> None:
    """Every folder the run will write to, checked (and made) before any work; an earlier run's TensorBoard events
    in --tensorboard are refused, or with --overwrite removed, so that two runs never mix in one folder."""
    try:
        writable_folder(Path(config.out).parent)
    except OSError as error:
        raise FerError(f"cannot write to {Path(config.out).parent} (--out): {error.strerror or error}") from None
    if config.tensorboard:
        folder = Path(config.tensorboard)
        try:
            writable_folder(folder)
        except OSError as error:
            raise FerError(f"cannot write TensorBoard events to {folder}: {error.strerror or error}") from None
        earlier = sorted(folder.glob("events.out.tfevents.*"))
        if earlier and not config.resume:
            if not config.overwrite:
                raise FerError(
                    f"{folder} holds an earlier run's TensorBoard events ({len(earlier)} file(s)); --overwrite "
                    "replaces them, or choose another --tensorboard folder"
                )
            for path in earlier:
                path.unlink()
            log.print(f"removed the earlier run's TensorBoard events from {folder}")


def write_history(path: Path, history: list[dict]) -> None:
    temporary = path.with_name(path.name + ".tmp")
    columns = list(dict.fromkeys(key for record in history for key in record))  # older runs lack newer columns
    try:
        with open(temporary, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns, restval="")
            writer.writeheader()
            writer.writerows(history)
        temporary.replace(path)
    finally:  # a full disk: the earlier history stays, no half-written file beside it
        temporary.unlink(missing_ok=True)
