"""`fer predict`'s video options: which frames are read (``--fps``, ``--start``, ``--end``) and ``--smooth``.

Nothing heavy is imported here: `fer --help` and `fer --version` load this module too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from ..inputs.video import Sampling

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
    sampling: Sampling | None = None  # None: every frame
    smooth: float | None = None


def video_settings(fps: float | None, start: float, end: float | None, smooth: float | None) -> VideoSettings:
    """The options checked; a bad one is a usage error naming it."""
    from ..inputs import video

    try:
        sampling = video.Sampling(fps, start, end, video.MAX_FRAMES)
    except ValueError as error:
        option = str(error).split()[0] if str(error).startswith("--") else "--fps"
        raise typer.BadParameter(str(error), param_hint=option) from None
    if smooth is not None and not smooth > 0:
        raise typer.BadParameter(f"must be above 0 seconds, got {smooth:g}", param_hint="--smooth")
    return VideoSettings(sampling, smooth)
