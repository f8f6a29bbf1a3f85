"""`fer export`: a checkpoint as an ONNX model (float32 or int8), scored on --val when given, written whole or not
at all.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from ..files import writable_folder, written_whole
from ..outputs.terminal import plain, printable
from .console import err_console
from .options import DEFAULT_WORKERS, SplitOpt, WorkersOpt, checked_votes, refuse_shipped


def export(
    model: Annotated[str, typer.Argument(metavar="NAME|FILE", help="Shipped model name or checkpoint (.pt) path.")],
    out: Annotated[Path, typer.Argument(metavar="OUT.onnx", help="Where to write the ONNX model.")],
    int8: Annotated[
        bool, typer.Option("--int8", help="Quantise to int8 (static, per-channel weights): smaller and faster on CPUs.")
    ] = False,
    calibration: Annotated[
        str | None,
        typer.Option(
            "--calibration",
            metavar="FOLDER",
            help="Images (a folder, e.g. the training data) that set --int8's value ranges.",
        ),
    ] = None,
    calibration_size: Annotated[
        int,
        typer.Option("--calibration-size", min=1, metavar="N", help="How many calibration images (a seeded sample)."),
    ] = 1000,
    val: Annotated[
        str | None,
        typer.Option(
            "--val",
            metavar="FOLDER",
            help="Labelled folder to score the exported model on; its own metrics are stored.",
        ),
    ] = None,
    votes: Annotated[
        Path | None,
        typer.Option("--votes", metavar="CSV", help="With --val: score against the majority of these votes."),
    ] = None,
    split: SplitOpt = None,
    workers: WorkersOpt = DEFAULT_WORKERS,
) -> None:
    """Export a model to ONNX, to run without torch.

    The exported model runs with onnxruntime, which comes with fer: no torch needed.

    \b
    Examples:
      fer export resnet18_ferplus r18.onnx --val val/ # float32, scored on val/
      fer export runs/model.pt fast.onnx --int8 --calibration train/
      fer export m.pt m.onnx --val fer2013/ --votes fer2013plus.csv --split val
      fer predict photos/ -m fast.onnx                # run it like any model
    """
    from ..engine.ensemble import score_model
    from ..models.exported import export_checkpoint, store_metrics
    from ..models.zoo import load_classifier, resolve_model

    if out.suffix.lower() != ".onnx":
        raise typer.BadParameter("the exported file's name must end in .onnx", param_hint="OUT")
    source = resolve_model(model)
    if not source.path.endswith(".pt"):
        raise typer.BadParameter(
            f"{printable(model)} is already an exported model; export a checkpoint (.pt)", param_hint="NAME|FILE"
        )
    if votes is not None and val is None:
        raise typer.BadParameter("--votes scores the images under --val FOLDER; give it too", param_hint="--votes")
    voted = checked_votes(val or "", votes, split)
    refuse_shipped([out], "OUT")
    try:
        writable_folder(out.parent)  # before the work, not after it
    except OSError as error:
        reason = error.strerror or error
        raise typer.BadParameter(f"cannot write to {printable(out.parent)}: {reason}", param_hint="OUT") from None
    # Written beside OUT under a hidden name, scored there, and only then renamed: a failure leaves no OUT behind.
    temporary = out.with_name(f".{out.stem}.{os.getpid()}.tmp.onnx")
    with written_whole(out):
        try:
            summary = export_checkpoint(
                source.path, temporary, int8=int8, calibration=calibration, calibration_size=calibration_size
            )
            if val:  # the exported model's own accuracy, in place of its checkpoint's
                metrics = score_model(load_classifier(temporary), val, "cpu", 256, workers, votes=voted)
                against = None
                if voted is not None:
                    against = f"against the majority of the votes in {votes}"
                    against += f" ({voted.split} rows)" if split else ""
                store_metrics(temporary, metrics, scored_on=val, labels=against)
            os.replace(temporary, out)
        finally:
            temporary.unlink(missing_ok=True)
    if int8 and summary.get("checked_on", 0) < 100:
        err_console.print(
            f"[yellow]warning:[/] the int8 value ranges were set on {summary.get('checked_on', 0):,} image(s); "
            "a few hundred or more (--calibration-size, 1,000 by default) make them reliable"
        )
    kind = "int8" if int8 else "float32"
    err_console.print(plain(f"wrote {out} ({kind}, {out.stat().st_size / 1e6:.1f} MB)"))
    if val:
        against = f" against the majority of the votes in {votes}" if votes is not None else ""
        err_console.print(plain(f"accuracy on {val}{against}: {metrics['accuracy']:.2%} (stored in the file)"))
    if "checked_on" in summary:
        err_console.print(
            f"on {summary['checked_on']:,} calibration images it picks the checkpoint's class for "
            f"{summary['same_top_class']:.1%} of them (largest probability difference "
            f"{summary['max_probability_difference']:.3f})",
            highlight=False,
        )
