"""The options more than one command shares, declared once (``DeviceOpt``, ``FacesOpt``...), their choices (enums),
and the checks that turn a bad value into a usage error naming the option.

Nothing heavy is imported here: `fer --help` and `fer --version` load this module too.
"""

from __future__ import annotations

import os
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from ..errors import SourceError
from ..models.tta import TTA
from ..outputs.terminal import printable

# As many reading processes as cores, up to 4: face detection in photos keeps them all busy (and the model, in
# the main process, mostly waits); on face crops they mostly wait (and the model uses the cores).
DEFAULT_WORKERS = min(4, os.cpu_count() or 1)


class Channels(str, Enum):
    """--channels: a choice of two (not a range of 1 to 3)."""

    grayscale = "1"
    rgb = "3"


class OutputFormat(str, Enum):
    table = "table"
    json = "json"
    jsonl = "jsonl"
    csv = "csv"


class Optimizer(str, Enum):
    sgd = "sgd"
    adamw = "adamw"


class Schedule(str, Enum):
    onecycle = "onecycle"
    cosine = "cosine"
    plateau = "plateau"
    none = "none"


class Balance(str, Enum):
    none = "none"
    sampler = "sampler"
    loss = "loss"
    logit_adjusted = "logit-adjusted"


class Precision(str, Enum):
    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"


class Targets(str, Enum):
    distribution = "distribution"
    majority = "majority"


DeviceOpt = Annotated[
    str, typer.Option("--device", metavar="DEVICE", help="auto, cpu, cuda, cuda:N (the N-th GPU) or mps.")
]
WorkersOpt = Annotated[
    int,
    typer.Option(
        "--workers",
        "-j",
        min=0,
        metavar="N",
        help="Processes reading and decoding images (0 = none, read in this one).",
    ),
]
BatchSizeOpt = Annotated[int, typer.Option("--batch-size", "-b", min=1, metavar="N", help="Images per batch.")]
ModelsOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--model",
        "-m",
        metavar="NAME|FILE",
        help="A shipped model's name or a checkpoint/.onnx file; repeat for each member. "
        "Default: every shipped checkpoint (see `fer models`); exported copies of one (fast) only when named.",
    ),
]
FormatOpt = Annotated[
    OutputFormat | None,
    typer.Option(
        "--format",
        "-f",
        case_sensitive=False,
        help="Output format. Default: table on a terminal, else jsonl (or from --output's extension).",
    ),
]
OutputOpt = Annotated[
    Path | None, typer.Option("--output", "-o", metavar="FILE", help="Write results to FILE instead of stdout.")
]


class Faces(str, Enum):
    auto = "auto"
    detect = "detect"
    none = "none"


FacesOpt = Annotated[
    Faces,
    typer.Option(
        "--faces",
        case_sensitive=False,
        help="auto: face crops (small images, one face filling the frame) go straight to the model, other "
        "photos are searched for faces; detect: always search; none: each image is one face.",
    ),
]


def smallest_face(text: str | None) -> float:
    from ..inputs.faces import DEFAULT_MIN_FACE, parse_min_face

    try:
        return DEFAULT_MIN_FACE if text is None else parse_min_face(text)
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--min-face") from None


MinFaceOpt = Annotated[
    str | None,
    typer.Option(
        "--min-face",
        metavar="PX|FRACTION",
        help="The smallest face searched for: pixels (30), or a fraction of the image's shorter side (0.05, "
        "1/20). Default 1/12 (60 px in a 720p frame); smaller is slower (a group photo's small faces: 20).",
    ),
]
TtaOpt = Annotated[
    TTA,
    typer.Option(
        "--tta",
        case_sensitive=False,
        help="Test-time augmentation, probabilities averaged over views of each face: flip = the face and its "
        "mirror image (2x the work); crops = the face, its centre and 4 corner crops, and their mirrors (12x).",
    ),
]
ShardOpt = Annotated[
    str | None,
    typer.Option(
        "--shard",
        metavar="I/N",
        help="Process only shard I of N (e.g. 2/8) of the inputs: contiguous blocks in input order, so the "
        "outputs of 1/N..N/N concatenated are the unsharded output.",
    ),
]
SplitOpt = Annotated[
    str | None,
    typer.Option("--split", metavar="NAME", help="With --votes: only the rows of this split (train, val)."),
]
ReportOpt = Annotated[
    Path | None,
    typer.Option(
        "--report",
        metavar="DIR",
        help="Also write figures, report.json and index.html (tables and pictures, for any browser) into DIR.",
    ),
]
AnnotateOpt = Annotated[
    Path | None,
    typer.Option(
        "--annotate", metavar="DIR", help="Write a copy of each input with boxes, labels and confidences into DIR."
    ),
]


def parse_arch_options(pairs: list[str]) -> dict:
    """KEY=VALUE strings -> dict, values read as int, float, bool or str."""
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"expected KEY=VALUE, got '{printable(pair)}'", param_hint="--arch-option")
        for cast in (int, float):
            try:
                options[key] = cast(value)
                break
            except ValueError:
                continue
        else:
            options[key] = {"true": True, "false": False}.get(value.lower(), value)
    return options


def checked_votes(folder: str, votes: Path | None, split: str | None):
    """``--votes CSV [--split NAME]`` over the images under ``folder`` (``ensemble.VotedFiles``), or None without
    --votes; a --split without --votes, or one this tool does not read, is a usage error."""
    from ..engine.ensemble import voted_files
    from ..inputs.votes import split_of

    if split is not None and votes is None:
        raise typer.BadParameter("--split picks rows of a votes file; give it with --votes", param_hint="--split")
    if split is not None and split_of(split) is None:
        raise typer.BadParameter(
            f"'{printable(split)}' is not a split this tool reads (train, val)", param_hint="--split"
        )
    if votes is None:
        return None
    if not Path(folder).is_dir():
        raise SourceError(f"no such folder: {folder} (with --votes, FOLDER holds the images the votes file names)")
    return voted_files(folder, str(votes), split_of(split) if split else None)


def refuse_shipped(paths: list[Path], hint: str) -> None:
    """No command writes over a shipped model (the default ensemble, predict's default and -m NAME need them whole):
    each path is compared, links resolved, with the files its folder's SHA256SUMS lists and with every shipped file
    (the same file under another name: a hard link). Checked before any work."""
    from ..models.zoo import is_shipped, weights_dirs

    shipped = [path for folder in weights_dirs() for path in folder.iterdir() if is_shipped(path)]
    for path in paths:
        target = Path(os.path.realpath(path))
        same = is_shipped(target) or any(_same_file(target, file) for file in shipped)
        if same:
            raise typer.BadParameter(
                f"{printable(path)} is a shipped model, which no command replaces; choose another file", param_hint=hint
            )


def _same_file(path: Path, other: Path) -> bool:
    try:
        return os.path.samefile(path, other)
    except OSError:  # not there (yet)
        return False
