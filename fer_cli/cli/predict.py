"""`fer predict`: a label for every face in images and videos, with one model (``prediction_run`` does the work)."""

from __future__ import annotations

from typing import Annotated

import typer

from ..models.tta import TTA
from .console import note
from .options import (
    DEFAULT_WORKERS,
    AnnotateOpt,
    BatchSizeOpt,
    DeviceOpt,
    Faces,
    FacesOpt,
    FormatOpt,
    MinFaceOpt,
    OutputOpt,
    ReportOpt,
    ShardOpt,
    TtaOpt,
    WorkersOpt,
    smallest_face,
)
from .prediction_run import predict_and_write
from .video_options import EndOpt, FpsOpt, SmoothOpt, StartOpt, video_settings


def predict(
    sources: Annotated[
        list[str],
        typer.Argument(
            metavar="SOURCE",
            help="Image or video files, folders (recursive), globs, or '-' to read paths from stdin.",
        ),
    ],
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            "-m",
            metavar="NAME|FILE",
            help="A shipped model's name or a checkpoint/.onnx file. Default: the best shipped model.",
        ),
    ] = None,
    faces: FacesOpt = Faces.auto,
    min_face: MinFaceOpt = None,
    tta: TtaOpt = TTA.none,
    annotate: AnnotateOpt = None,
    report: ReportOpt = None,
    fmt: FormatOpt = None,
    output: OutputOpt = None,
    shard: ShardOpt = None,
    batch_size: BatchSizeOpt = 64,
    workers: WorkersOpt = DEFAULT_WORKERS,
    device: DeviceOpt = "auto",
    fps: FpsOpt = None,
    start: StartOpt = 0.0,
    end: EndOpt = None,
    smooth: SmoothOpt = None,
) -> None:
    """Label the expression of every face in images and videos.

    Each face gets a label, its confidence, every class's probability and where the face is.

    The table keeps image, face, label and confidence whole; on a narrow terminal the per-class
    probabilities fold into the runner-up class, then the box goes (-f csv or json has them all).
    A face under 24 px gets its label with a warning: too few pixels to read an expression.

    Videos (.mp4 .mov .mkv .webm .avi .m4v): every frame, or --fps N a second, from --start to
    --end; one record per face per frame, with its time and track id (the same face across
    frames); the table shows one row per track.

    \b
    Examples:
      fer predict photos/                       # a table of every face found
      fer predict clip.mp4 --fps 5 -o faces.jsonl
      fer predict face.png -f json              # one JSON array on stdout
      fer predict photos/ -o results.csv        # format from the extension
      find . -name '*.jpg' | fer predict -      # paths on stdin
      fer predict photos/ --annotate out/ --tta flip
      fer predict photos/ --report report/      # labels, confidences, faces
    """
    from ..api import Model
    from ..inputs.images import Shard
    from ..models.zoo import resolve_model

    try:
        chosen_shard = Shard.parse(shard) if shard is not None else None
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--shard") from None

    video = video_settings(fps, start, end, smooth)
    smallest = smallest_face(min_face)
    one = Model([resolve_model(model, note=note)])  # its vote: the model's own probabilities
    predict_and_write(
        one.classifiers, sources, one.vote, one.name, fmt, output, device, batch_size, workers, faces,
        annotate, tta, chosen_shard, report, video, smallest,
    )  # fmt: skip
