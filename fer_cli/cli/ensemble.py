"""`fer ensemble`: models and their votes scored on a labelled folder (a table or json, and --report's figures), or
any other images predicted with the vote.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from ..errors import FerError
from ..models.tta import TTA
from ..outputs.results import print_ensemble_report
from ..outputs.terminal import markup_safe, plain
from .console import INPUTS_FAILED, err_console, note, report_skipped, spinner
from .destinations import open_output, open_report_folder, refuse_clashing_outputs
from .options import (
    DEFAULT_WORKERS,
    AnnotateOpt,
    BatchSizeOpt,
    DeviceOpt,
    Faces,
    FacesOpt,
    FormatOpt,
    MinFaceOpt,
    ModelsOpt,
    OutputFormat,
    OutputOpt,
    ReportOpt,
    SplitOpt,
    TtaOpt,
    WorkersOpt,
    checked_votes,
    smallest_face,
)
from .prediction_run import predict_and_write


def ensemble(
    folder: Annotated[
        str,
        typer.Argument(
            metavar="FOLDER", help="A labelled folder (one subfolder per class) to score, or any images to predict."
        ),
    ],
    model: ModelsOpt = None,
    weighted: Annotated[
        bool, typer.Option("--weighted", help="Add votes weighted by each model's stored validation metrics.")
    ] = False,
    votes: Annotated[
        Path | None,
        typer.Option(
            "--votes",
            metavar="CSV",
            help="Score against label distributions: a CSV with a column of votes per class for images under "
            "FOLDER (e.g. FER+); accuracy against each image's majority.",
        ),
    ] = None,
    split: SplitOpt = None,
    faces: FacesOpt = Faces.auto,
    min_face: MinFaceOpt = None,
    tta: TtaOpt = TTA.none,
    annotate: AnnotateOpt = None,
    report: ReportOpt = None,
    fmt: FormatOpt = None,
    output: OutputOpt = None,
    batch_size: BatchSizeOpt = 64,
    workers: WorkersOpt = DEFAULT_WORKERS,
    device: DeviceOpt = "auto",
) -> None:
    """Score models and their votes on labelled images.

    FOLDER with one subfolder per class is scored: every model and their votes. Any other images
    are predicted with the vote.

    \b
    The report's columns:
      accuracy          share of images whose top class is the true one
      balanced accuracy the mean recall of the classes present (rare ones count
                        as much)
      tagger agreement  with --votes: mean share of the votes the answer got
      macro F1          F1 averaged over the classes present, each weighing the
                        same
      conf. when right  mean confidence of the right answers (higher is better)
      conf. when wrong  mean confidence of the wrong ones (lower is better);
                        none for the majority vote (a share of models agreeing)
      ECE               expected calibration error: the gap between confidence
                        and accuracy, averaged over confidence bins (0 is best)

    A model scored on the images it was selected on (its validation set, found by content
    wherever the copy is) is named in a note: its accuracy there is optimistic.

    \b
    Examples:
      fer ensemble ../shared/data/fer2013/val   # shipped checkpoints, votes
      fer ensemble --weighted val/ -f json       # + votes weighted by val metrics
      fer ensemble --weighted val/ --report report/  # + figures, index.html
      fer ensemble -m resnet18_ferplus -m my.pt val/
      fer ensemble photos/                       # unlabelled: the mean vote
    """
    from ..engine.ensemble import default_vote, score_labelled
    from ..engine.predict import align_classes
    from ..inputs.labelled import is_labelled_folder
    from ..models.zoo import resolve_models

    voted = checked_votes(folder, votes, split)
    smallest = smallest_face(min_face)
    classifiers = resolve_models(model, note=note)
    if voted is None and not is_labelled_folder(folder, align_classes(classifiers)):
        err_console.print(plain(f"{folder} is not a labelled folder (class subfolders): predicting with the ensemble"))
        name, vote = default_vote(classifiers, weighted)
        predict_and_write(
            classifiers, [folder], vote, f"ensemble: {name}", fmt, output, device, batch_size, workers, faces,
            annotate, tta, report=report, min_face=smallest,
        )  # fmt: skip
        return
    if annotate is not None:
        raise typer.BadParameter("annotated copies are made when predicting, not when scoring", param_hint="--annotate")

    if fmt not in (None, OutputFormat.table, OutputFormat.json):
        raise typer.BadParameter("a labelled folder's report is a table or json", param_hint="--format")
    report_folder = open_report_folder(report)
    refuse_clashing_outputs(output, report, None, [])
    started = time.perf_counter()
    destination, chosen = open_output(output, fmt)  # before the work: an unwritable -o fails at once
    models_scored = f"{len(classifiers)} model{'s' if len(classifiers) != 1 else ''}"
    with destination as stream:
        with spinner(f"scoring {models_scored} on {markup_safe(folder)}"):
            scored, labelled = score_labelled(
                classifiers, folder, weighted, device, batch_size, workers, on_skip=report_skipped,
                faces=faces.value, tta=tta, votes=voted, min_face=smallest,
            )  # fmt: skip
        if chosen == "json":
            stream.write(json.dumps(scored, indent=2) + "\n")
        else:
            print_ensemble_report(scored, Console(file=stream))
    err_console.print(
        f"scored {models_scored} on {scored['images']:,} images in {time.perf_counter() - started:.1f}s",
        highlight=False,
    )
    if report_folder is not None:
        _write_ensemble_report(report_folder, scored, labelled)
    if scored["unreadable_images"]:
        raise typer.Exit(INPUTS_FAILED)


def _write_ensemble_report(folder: Path, report: dict, labelled) -> None:
    """--report for a labelled folder: the figures, from the report and the per-image scores it was made from."""
    from ..engine.ensemble import most_confident_mistakes
    from ..outputs.report import write_ensemble_report

    accuracies = [m["metrics"]["accuracy"] for m in report["models"]]
    best = accuracies.index(max(accuracies))  # the most accurate model's mistakes (a vote has no single face to blame)
    mistakes = most_confident_mistakes(labelled, labelled.probs[:, best], per_class=8)
    try:
        write_ensemble_report(folder, report, mistakes, report["models"][best]["name"])
    except OSError as error:
        raise FerError(f"cannot write the report in {folder}: {error.strerror or error}") from None
    err_console.print(f"report in {markup_safe(folder)}{os.sep}index.html", highlight=False)
