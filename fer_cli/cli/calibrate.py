"""`fer calibrate`: a model's temperature (and, when asked, its prior correction) fitted on labelled images and
written into its checkpoint or a copy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..errors import FerError
from ..outputs.terminal import plain
from .console import err_console, note, report_skipped
from .options import (
    DEFAULT_WORKERS,
    BatchSizeOpt,
    DeviceOpt,
    Faces,
    FacesOpt,
    SplitOpt,
    WorkersOpt,
    checked_votes,
    refuse_shipped,
)


def calibrate(
    model: Annotated[str, typer.Argument(metavar="NAME|FILE", help="Shipped model name or checkpoint (.pt) path.")],
    folder: Annotated[
        str,
        typer.Argument(
            metavar="FOLDER", help="Labelled validation images (one subfolder per class), or with --votes their root."
        ),
    ],
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            metavar="FILE",
            help="Write the calibrated checkpoint here. Default: update MODEL in place (never a shipped model).",
        ),
    ] = None,
    votes: Annotated[
        Path | None,
        typer.Option("--votes", metavar="CSV", help="Fit against the majority of these votes (images under FOLDER)."),
    ] = None,
    split: SplitOpt = None,
    prior_correction: Annotated[
        str,
        typer.Option(
            "--prior-correction",
            metavar="keep|auto|none|TAU",
            help="Also set the prior correction (logits - TAU x log training prior): auto chooses it on these "
            "images as fer train does; keep (default) leaves it.",
        ),
    ] = "keep",
    faces: FacesOpt = Faces.auto,
    batch_size: BatchSizeOpt = 64,
    workers: WorkersOpt = DEFAULT_WORKERS,
    device: DeviceOpt = "auto",
) -> None:
    """Fit a model's temperature so confidences match accuracy.

    The softmax temperature is fitted on labelled validation images and written into the checkpoint
    (MODEL itself, or a copy with --out; a shipped model is never changed: give --out). A model
    whose temperature stays as it was is not rewritten.

    `fer train` already does this on its validation data; use this for other data or older checkpoints.

    \b
    Examples:
      fer calibrate runs/model.pt val/              # into the file
      fer calibrate vgg32_ferplus val/ -o mine.pt   # a calibrated copy
      fer calibrate m.pt fer2013/ --votes fer2013plus.csv --split val
    """
    import shutil

    from ..engine.calibration import calibrate as fit
    from ..engine.calibration import (
        check_prior_correction,
        describe,
        describe_prior_correction,
        refit_prior_correction,
        validation_metrics,
    )
    from ..engine.ensemble import predict_labelled
    from ..models.checkpoint import store_calibration
    from ..models.zoo import is_shipped, resolve_model

    try:
        check_prior_correction(prior_correction, ("keep", "auto", "none"))
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--prior-correction") from None
    classifier = resolve_model(model, note=note)
    if not classifier.path.endswith(".pt"):
        raise typer.BadParameter("calibrate the checkpoint (.pt), then export it again", param_hint="NAME|FILE")
    if out is None and is_shipped(classifier.path):
        raise typer.BadParameter(
            f"{classifier.name} is a shipped model, which fer calibrate never changes: write a calibrated copy with "
            "--out FILE",
            param_hint="NAME|FILE",
        )
    if out is not None:
        refuse_shipped([out], "--out")
    else:
        refuse_shipped([Path(classifier.path)], "NAME|FILE")
    voted = checked_votes(folder, votes, split)
    labelled = predict_labelled(
        [classifier], folder, device, batch_size, workers, on_skip=report_skipped, faces=faces.value, votes=voted
    )
    if labelled.unpredicted:
        raise FerError(f"{votes} has classes {classifier.name} does not predict ({', '.join(labelled.unpredicted)})")
    clear = labelled.labels >= 0  # with votes: the images with a majority
    fitted_on = folder if voted is None else f"{votes} under {folder}, against the majority of the votes"
    probs, labels = labelled.probs[:, 0], labelled.labels
    correction = None
    if prior_correction != "keep":
        probs, correction = refit_prior_correction(classifier, probs, labels, clear, prior_correction, fitted_on)
        report = fit(probs[clear], labels[clear], 1.0, fitted_on=fitted_on)
    else:
        report = fit(probs[clear], labels[clear], classifier.temperature, fitted_on=fitted_on)
    changed = report["temperature"] != classifier.temperature or correction is not None
    if out is not None:
        destination = out
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(classifier.path, out)
        except OSError as error:
            raise FerError(f"cannot write {out}: {error.strerror or error}") from None
    else:
        destination = Path(classifier.path)
    metrics = None
    if correction is not None:  # the stored validation metrics become the corrected model's, on these images
        metrics = validation_metrics(labelled, probs, clear, classifier.class_names)
    if changed or out is not None:
        store_calibration(destination, report, correction, metrics)
        where = f"written to {destination}"
    else:
        where = f"{destination} left as it was"
    if correction is not None:
        err_console.print(plain(f"{classifier.name}: {describe_prior_correction(correction)}"))
    previous = classifier.temperature if prior_correction == "keep" else 1.0
    err_console.print(plain(f"{classifier.name}: {describe(report, previous)} ({where})"))
