"""`fer predict`'s video options: which frames are read (``--fps``, ``--start``, ``--end``) and ``--smooth``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import typer

from .inputs.video import MAX_FRAMES, Sampling

FpsOpt = Annotated[
    float | None,
    typer.Option("--fps", metavar="N", help="Videos: read N frames a second of video time (default: every frame)."),
]
StartOpt = Annotated[float, typer.Option("--start", metavar="SECONDS", help="Videos: read from this time (seconds).")]
EndOpt = Annotated[
    float | None,
    typer.Option("--end", metavar="SECONDS", help="Videos: read up to this time (seconds, excluded)."),
]
SmoothOpt = Annotated[
    float | None,
    typer.Option(
        "--smooth",
        metavar="SECONDS",
        help="Videos: average each face track's probabilities over its last SECONDS (off by default; the "
        "records say so).",
    ),
]


@dataclass(frozen=True)
class VideoSettings:
    sampling: Sampling = Sampling()
    smooth: float | None = None


def video_settings(fps: float | None, start: float, end: float | None, smooth: float | None) -> VideoSettings:
    """The options checked; a bad one is a usage error naming it."""
    try:
        sampling = Sampling(fps, start, end, MAX_FRAMES)
    except ValueError as error:
        option = str(error).split()[0] if str(error).startswith("--") else "--fps"
        raise typer.BadParameter(str(error), param_hint=option) from None
    if smooth is not None and not smooth > 0:
        raise typer.BadParameter(f"must be above 0 seconds, got {smooth:g}", param_hint="--smooth")
    return VideoSettings(sampling, smooth)
