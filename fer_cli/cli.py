"""The `fer` command: a thin shell that parses options, calls the library and renders results.

    fer predict photos/                       # a file, a folder (recursive), a glob, or '-' for paths on stdin
    fer predict face.png --format json        # table (default on a terminal) | json | jsonl | csv
    fer predict photos/ --annotate out/       # every face found, boxes drawn on copies in out/
    fer ensemble --weighted labelled_dir/     # every shipped model scored, and their votes
    fer train DATA --val VAL --arch vgg --epochs 30 --out weights/vgg.pt
    fer models                                # architectures and available weights
    fer serve                                 # the same predictions over HTTP, and a page

Exit codes: 0 success; 1 the run finished but some inputs could not be read; 2 a usage error
(bad option, missing model, unusable dataset...). Results go to stdout, everything else to stderr.

Help is Click's plain layout (``rich_markup_mode=None``): Typer's rich panels print a type such as
``<bool>`` beside every flag, its own --help included, and read square brackets as markup.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import shlex
import signal
import sys
import time
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from typer.core import TyperCommand

from . import __version__
from .errors import FerError, Interrupted, SourceError
from .files import writable_folder, written_whole
from .models.architectures import MAX_INPUT_SIDE, MIN_INPUT_SIDE
from .models.tta import TTA
from .outputs.destination import KNOWN_SUFFIXES, ResultsFile, format_from_path
from .outputs.results import WRITERS, print_ensemble_report
from .outputs.terminal import markup_safe, plain, printable
from .video_options import EndOpt, FpsOpt, SmoothOpt, StartOpt, VideoSettings, video_settings

EXAMPLES = """Examples:

\b
  fer predict photos/                  # every face in a folder: a table
  fer predict face.png -f json         # table | json | jsonl | csv
  fer predict photos/ --annotate out/  # copies with boxes and labels drawn
  fer ensemble --weighted val/         # score the models and their votes
  fer train data/ --epochs 30          # train (data/train, data/val)
  fer models                           # models, their classes, accuracy
  fer serve                            # over HTTP, a page to drop photos on

Results go to stdout, messages to stderr. Exit codes: 0 done; 1 done, but some inputs could not
be read; 2 usage error (a bad option, a missing model, an unusable data set)."""


class _Command(TyperCommand):
    """Usage lines in the usual notation (``SOURCE...``, ``[OUT]``) instead of Typer's ``{source}...``."""

    def collect_usage_pieces(self, ctx) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if param.param_type_name != "argument":
                continue
            name = (param.metavar or param.name.upper()) + ("..." if param.nargs != 1 else "")
            pieces.append(name if param.required else f"[{name}]")
        return pieces

    def format_options(self, ctx, formatter) -> None:
        """Typer's sections, each argument named by its metavar alone: Typer adds its Python type (``SOURCE
        <list[str]>``, ``DATA <str>``), which says nothing to a user. Options keep their choices (``<auto|detect>``)."""
        arguments, options = [], []
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is None:
                continue
            if param.param_type_name == "argument":
                arguments.append(
                    ((param.metavar or param.name.upper()) + ("..." if param.nargs != 1 else ""), record[1])
                )
            else:
                options.append(record)
        for title, records in (("Arguments", arguments), ("Options", options)):
            if records:
                with formatter.section(title):
                    formatter.write_dl(records)


app = typer.Typer(
    help="Facial-expression recognition for image files and folders.",
    epilog=EXAMPLES,
    no_args_is_help=True,
    add_completion=True,
    rich_markup_mode=None,  # plain help: no <bool> beside flags, brackets shown as typed (see above)
    pretty_exceptions_enable=False,
)
err_console = Console(stderr=True, soft_wrap=True)  # log lines stay whole in files
PROCESS_STARTED = time.perf_counter()  # about when `fer` started: this module is the first it imports

USAGE_ERROR = 2
INPUTS_FAILED = 1
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


def _min_face(text: str | None) -> float:
    from .inputs.faces import DEFAULT_MIN_FACE, parse_min_face

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


def handles_user_errors(command):
    """Turn the library's user-facing errors into one line on stderr and exit code 2, no traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except FerError as error:
            err_console.print(f"[bold red]error:[/] {markup_safe(error)}", highlight=False)
            if os.environ.get("FER_DEBUG"):
                raise
            raise typer.Exit(USAGE_ERROR) from None
        except KeyboardInterrupt:
            err_console.print("interrupted")
            raise typer.Exit(130) from None
        except Interrupted as stop:
            err_console.print(f"stopped by signal {stop.signal_number}")
            raise typer.Exit(128 + stop.signal_number) from None
        except BrokenPipeError:
            # The reader of stdout went away (`fer predict ... | head -1`): stop quietly, as the shell's own tools
            # do, with SIGPIPE's status, not 1 ("some inputs failed"). Later writes go nowhere.
            with contextlib.suppress(OSError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise typer.Exit(128 + signal.SIGPIPE) from None

    return wrapper


def _show_version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        def installed(package: str) -> str:  # from the metadata: importing torch takes seconds
            try:
                return version(package)
            except PackageNotFoundError:
                return "not installed"

        typer.echo(
            f"fer {__version__} (torch {installed('torch')}, onnxruntime {installed('onnxruntime')}, "
            f"Python {sys.version.split()[0]})"
        )
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option("--version", is_eager=True, callback=_show_version, help="Show fer's version and exit."),
    ] = False,
) -> None:
    """Facial-expression recognition for image files and folders: a label and a confidence for every face."""


def _parse_options(pairs: list[str]) -> dict:
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


@handles_user_errors
def train(
    ctx: typer.Context,
    data: Annotated[
        str | None,
        typer.Argument(
            metavar="DATA",
            help="Labelled folder (one subfolder per class), a root with train/ and val/, or a FER2013 CSV.",
        ),
    ] = None,
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            "-o",
            metavar="FILE",
            help="Best checkpoint path; NAME.history.csv, NAME.curves.png and NAME.last.pt go beside it.",
        ),
    ] = Path("runs/model.pt"),
    val: Annotated[
        str | None,
        typer.Option(
            metavar="FOLDER|CSV",
            help="Validation folder or CSV. Default: DATA/val, the CSV's PublicTest rows, or 10% of DATA held out.",
        ),
    ] = None,
    arch: Annotated[str, typer.Option(metavar="NAME", help="Architecture (see `fer models`).")] = "vgg",
    arch_option: Annotated[
        list[str] | None,
        typer.Option("--arch-option", metavar="KEY=VALUE", help="Architecture option, e.g. width=32 (repeatable)."),
    ] = None,
    epochs: Annotated[int | None, typer.Option(min=1, metavar="N", help="Default: 30, or 10 with --init.")] = None,
    batch_size: BatchSizeOpt = 64,
    optimizer: Annotated[
        Optimizer | None,
        typer.Option(
            case_sensitive=False, help="sgd (Nesterov, momentum 0.9) or adamw. Default: sgd, adamw with --init."
        ),
    ] = None,
    lr: Annotated[
        float | None,
        typer.Option(
            metavar="LR", help="Peak learning rate. Default: 0.01 for sgd, 0.001 for adamw; half that with --init."
        ),
    ] = None,
    weight_decay: Annotated[
        float | None, typer.Option(min=0.0, metavar="W", help="Default: 5e-4 for sgd, 0.05 for adamw.")
    ] = None,
    schedule: Annotated[
        Schedule, typer.Option(case_sensitive=False, help="Learning-rate schedule (plateau watches val accuracy).")
    ] = Schedule.onecycle,
    label_smoothing: Annotated[float, typer.Option(min=0.0, max=0.99, metavar="EPS")] = 0.1,
    mixup: Annotated[
        float,
        typer.Option(
            min=0.0, metavar="A", help="MixUp: blend pairs of images and labels, Beta(a, a) weights; 0 = off."
        ),
    ] = 0.0,
    cutmix: Annotated[
        float,
        typer.Option(
            min=0.0, metavar="A", help="CutMix: paste a patch of one image into another, Beta(a, a); 0 = off."
        ),
    ] = 0.0,
    augment: Annotated[
        str, typer.Option(metavar="LIST", help="'default', 'none', or a comma list of flip,crop,shift,rotate,erase.")
    ] = "default",
    balance: Annotated[
        Balance,
        typer.Option(
            case_sensitive=False,
            help="Class-imbalance handling: none, sampler (weighted sampling), loss (weighted loss) or "
            "logit-adjusted (the loss sees logits + log class prior, so rare classes are learnt as often as common).",
        ),
    ] = Balance.none,
    size: Annotated[
        int, typer.Option(min=MIN_INPUT_SIDE, max=MAX_INPUT_SIDE, metavar="PX", help="Input side in pixels.")
    ] = 48,
    channels: Annotated[Channels, typer.Option(metavar="1|3", help="1 = grayscale, 3 = RGB.")] = Channels.grayscale,
    seed: Annotated[int, typer.Option(metavar="N")] = 0,
    half: Annotated[
        bool, typer.Option("--half", help="Store the best checkpoint's weights as float16 (half the size).")
    ] = False,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue the interrupted run whose --out is given, with its settings.")
    ] = False,
    overwrite: Annotated[
        bool,
        typer.Option("--overwrite", help="Replace an earlier run's checkpoint, history and resume state at --out."),
    ] = False,
    init: Annotated[
        str | None,
        typer.Option(
            "--init",
            metavar="NAME|FILE",
            help="Start from a model's weights (a shipped name or a .pt), its architecture and input size "
            "too; a new classifier head when DATA's classes differ.",
        ),
    ] = None,
    freeze_epochs: Annotated[
        int,
        typer.Option(
            "--freeze-epochs",
            min=0,
            metavar="N",
            help="With --init: only the head trains for N epochs. Default: 1 when most of the head is new, else 0.",
        ),
    ] = None,
    teacher: Annotated[
        list[str] | None,
        typer.Option(
            "--teacher",
            metavar="NAME|FILE",
            help="Distil from this model (a shipped name, a .pt or .onnx; repeatable: the teachers' "
            "probabilities are averaged). Its classes must be DATA's.",
        ),
    ] = None,
    distill_weight: Annotated[
        float,
        typer.Option(min=0.0, max=1.0, metavar="A", help="With --teacher: the teachers' share of the loss."),
    ] = 0.9,
    distill_temperature: Annotated[
        float,
        typer.Option(min=0.01, metavar="T", help="With --teacher: softmax temperature of teachers and student."),
    ] = 4.0,
    teacher_cache: Annotated[
        Path | None,
        typer.Option(
            "--teacher-cache",
            metavar="DIR",
            help="Where the teachers' outputs on DATA are cached (default $FER_CACHE_DIR or ~/.cache/fer_cli).",
        ),
    ] = None,
    votes: Annotated[
        Path | None,
        typer.Option(
            "--votes",
            metavar="CSV",
            help="Learn label distributions: a CSV with a column of votes per class for each image of DATA "
            "(paths relative to DATA, or rows in a FER2013 CSV's order: FER+'s fer2013new.csv).",
        ),
    ] = None,
    targets: Annotated[
        Targets,
        typer.Option(case_sensitive=False, help="With --votes: learn the vote shares or the majority class."),
    ] = Targets.distribution,
    label_weight: Annotated[
        float,
        typer.Option(
            "--label-weight",
            min=0.0,
            max=1.0,
            metavar="W",
            help="With --votes: this share of each target is the image's own single label (FER2013's).",
        ),
    ] = 0.0,
    allow_missing: Annotated[
        bool,
        typer.Option(
            "--allow-missing",
            help="With --votes: train on the images found even when more than half of those the votes name are "
            "missing or unreadable (else an error: usually the wrong DATA folder).",
        ),
    ] = False,
    prior_correction: Annotated[
        str,
        typer.Option(
            "--prior-correction",
            metavar="auto|none|TAU",
            help="Take TAU x log(training class prior) off the logits, so rare classes are not drowned by common "
            "ones; auto: the TAU (-1.5 to 1.5) best for accuracy + balanced accuracy on validation.",
        ),
    ] = "auto",
    tensorboard: Annotated[
        Path | None,
        typer.Option(
            "--tensorboard",
            metavar="DIR",
            help="Also log each epoch for TensorBoard into DIR: scalars, the validation confusion matrix, "
            "hyper-parameters. Needs the tensorboard package: pip install tensorboard, or in fer's folder "
            "pip install '.[tensorboard]'.",
        ),
    ] = None,
    device: DeviceOpt = "auto",
    precision: Annotated[
        Precision,
        typer.Option(
            case_sensitive=False,
            help="Arithmetic of training: auto is bfloat16 on CPUs with bfloat16 units (AMX, AVX512-BF16; 2-3x "
            "faster), float16 mixed precision on CUDA, float32 elsewhere.",
        ),
    ] = Precision.auto,
    workers: WorkersOpt = 2,
) -> None:
    """Train a model on labelled images; keep the best checkpoint.

    DATA is a labelled folder or a FER2013 CSV; the checkpoint kept is the epoch with the best
    validation accuracy.

    \b
    Examples:
      fer train data/ --epochs 30        # data/train, data/val: runs/model.pt
      fer train fer2013.csv --arch resnet18 --optimizer adamw --out r18.pt
      fer train --resume --out r18.pt    # go on after an interruption
      fer train data/ --tensorboard runs/tb    # tensorboard --logdir runs/tb
      fer train data/ --teacher resnet18_ferplus --teacher vgg32_ferplus
    """
    from .engine.train.config import TrainConfig
    from .engine.train.run import train as run_training
    from .engine.train.run_files import curves_path, history_path, last_path

    if data is None and not resume:
        raise typer.BadParameter("DATA is required (unless --resume)", param_hint="DATA")
    _refuse_shipped([out, history_path(out), curves_path(out), last_path(out)], "--out")
    try:
        config = TrainConfig(
            data=data or "",
            out=str(out),
            val=val,
            arch=arch,
            arch_options=_parse_options(arch_option or []),
            epochs=epochs,
            batch_size=batch_size,
            optimizer=optimizer.value if optimizer else None,
            lr=lr,
            weight_decay=weight_decay,
            schedule=schedule.value,
            label_smoothing=label_smoothing,
            mixup=mixup,
            cutmix=cutmix,
            augment=augment,
            balance=balance.value,
            size=size,
            channels=int(channels.value),
            seed=seed,
            device=device,
            precision=precision.value,
            workers=workers,
            half=half,
            tensorboard=str(tensorboard) if tensorboard else None,
            resume=resume,
            overwrite=overwrite,
            init=init,
            freeze_epochs=freeze_epochs,
            teachers=tuple(teacher or ()),
            distill_weight=distill_weight,
            distill_temperature=distill_temperature,
            teacher_cache=str(teacher_cache) if teacher_cache else None,
            votes=str(votes) if votes else None,
            targets=Targets(targets).value,
            label_weight=label_weight,
            allow_missing=allow_missing,
            prior_correction=prior_correction,
            command=shlex.join(["fer", *sys.argv[1:]]),
            given=tuple(sorted(_given_on_the_command_line(ctx))),
        )
        config.validate()
    except ValueError as error:
        raise typer.BadParameter(str(error)) from None
    run_training(config, err_console)


def _given_on_the_command_line(ctx: typer.Context) -> set[str]:
    """The parameters the user wrote (not left to their defaults). By the source's name: Typer may bring a click
    of its own, whose ParameterSource is not click's."""
    given = set()
    for param in ctx.command.params:
        source = ctx.get_parameter_source(param.name) if param.name else None
        if source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT"):
            given.add(param.name)
    return given


@handles_user_errors
def models(
    model: Annotated[
        str | None,
        typer.Argument(
            metavar="[NAME|FILE]", help="A shipped model's name or a model file: show its classes, input and data."
        ),
    ] = None,
) -> None:
    """List the architectures and shipped models, or describe one.

    \b
    Examples:
      fer models                    # architectures and shipped models
      fer models resnet18_ferplus   # classes in output order, input, data
      fer models runs/model.pt      # the same for any checkpoint or .onnx
    """
    from rich.table import Table

    from .models.zoo import model_catalogue, resolve_model

    out = Console()
    if model is not None:
        _describe_model(resolve_model(model), out)
        return
    catalogue = model_catalogue(note=_note)
    table = Table(title="Architectures")
    for column in ("name", "options", "description"):
        table.add_column(column)
    for arch in catalogue["architectures"]:
        options = ", ".join(f"{k}={v}" for k, v in arch["options"].items())
        table.add_row(arch["name"], options, arch["description"])
    out.print(table)
    shipped = catalogue["shipped"]
    folders = sorted({os.path.dirname(entry["path"]) for entry in shipped})
    table = Table(title="Shipped weights")
    for column in ("name", "arch", "classes", "val accuracy", "used by default in", "size"):
        table.add_column(column, no_wrap=column == "name")
    for entry in shipped:
        accuracy = entry["val_accuracy"]
        table.add_row(
            plain(entry["name"]),
            plain(entry["arch"]),
            str(len(entry["class_names"])),
            f"{accuracy:.2%}" if accuracy is not None else "-",
            ", ".join(entry["used_by_default_in"]) or "-",
            f"{entry['size_bytes'] / 1e6:.1f} MB",
        )
    out.print(table)
    for names in dict.fromkeys(tuple(entry["class_names"]) for entry in shipped):
        users = [entry["name"] for entry in shipped if tuple(entry["class_names"]) == names]
        which = "every shipped model" if len(users) == len(shipped) else ", ".join(users)
        out.print(plain(f"Classes of {which}, in output order: {', '.join(names)}."))
    out.print(
        plain(
            f"In {', '.join(folders) or 'no weights folder'}. val accuracy: on each model's own validation images, "
            "as stored by fer train (against the majority of the votes for a model trained on votes). "
            "`fer models NAME` describes one model."
        )
    )


def _describe_model(classifier, out: Console) -> None:
    """One model's facts, one per line: what a user needs to read its output and trust its numbers."""
    provenance = classifier.provenance
    preprocess = classifier.preprocess
    metrics = classifier.metrics or {}
    lines = [
        ("name", classifier.name),
        ("file", classifier.path),
        ("architecture", classifier.arch),
        ("classes", ", ".join(classifier.class_names) + " (in output order)"),
        ("input", f"{preprocess['size']}x{preprocess['size']} {'grayscale' if preprocess['channels'] == 1 else 'RGB'}"),
        ("temperature", f"{classifier.temperature:.3f}" + (" (uncalibrated)" if classifier.temperature == 1 else "")),
    ]
    if classifier.prior_correction:
        lines.append(("prior correction", f"tau {classifier.prior_correction:g}: logits - tau x log(training class "
                      "prior), which lifts the rare classes"))  # fmt: skip
    learnt = provenance.get("labels") or {}
    if learnt.get("kind") == "votes":
        mixed = (
            f", {learnt['label_weight']:g} of each target the image's own label" if learnt.get("label_weight") else ""
        )
        lines.append(("learnt from", f"votes in {learnt['votes']} ({learnt['targets']}{mixed})"))
    if metrics.get("accuracy") is not None:
        on = f" on {metrics['count']:,} images" if metrics.get("count") else ""
        against = " (against the majority of the votes)" if "votes" in metrics else ""
        lines.append(("val accuracy", f"{metrics['accuracy']:.2%}{on}{against}"))
        if metrics.get("balanced_accuracy") is not None:
            lines.append(("balanced accuracy", f"{metrics['balanced_accuracy']:.2%} (mean recall of the classes)"))
    for key, label in (
        ("val_data", "validated on"),
        ("train_data", "trained on"),
        ("command", "command"),
        ("date", "date"),
    ):
        if provenance.get(key):
            lines.append((label, str(provenance[key])))
    for command in provenance.get("resumed_by") or ():
        lines.append(("resumed by", command))
    if provenance.get("initialised_from"):
        lines.append(("initialised from", _starting_model(provenance["initialised_from"])))
    if provenance.get("distilled_from"):
        taught = provenance["distilled_from"]
        teachers = ", ".join(teacher["model"] for teacher in taught["teachers"])
        lines.append(("distilled from", f"{teachers} (weight {taught['weight']}, temperature {taught['temperature']})"))
    hashed = (provenance.get("val_images") or {}).get("hashes")  # None when validation was held out of DATA
    if hashed:
        lines.append(("val images", f"{len(hashed):,} content hashes (fer ensemble notices them wherever they are)"))
    from rich.table import Table

    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    for label, value in lines:
        grid.add_row(label, plain(value))
    out.print(grid)


@handles_user_errors
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

    from .engine.calibration import calibrate as fit
    from .engine.calibration import check_prior_correction, describe, describe_prior_correction
    from .engine.ensemble import predict_labelled
    from .models.checkpoint import store_calibration
    from .models.zoo import is_shipped, resolve_model

    try:
        check_prior_correction(prior_correction, ("keep", "auto", "none"))
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--prior-correction") from None
    classifier = resolve_model(model, note=_note)
    if not classifier.path.endswith(".pt"):
        raise typer.BadParameter("calibrate the checkpoint (.pt), then export it again", param_hint="NAME|FILE")
    if out is None and is_shipped(classifier.path):
        raise typer.BadParameter(
            f"{classifier.name} is a shipped model, which fer calibrate never changes: write a calibrated copy with "
            "--out FILE",
            param_hint="NAME|FILE",
        )
    if out is not None:
        _refuse_shipped([out], "--out")
    else:
        _refuse_shipped([Path(classifier.path)], "NAME|FILE")
    voted = _voted_files(folder, votes, split)
    labelled = predict_labelled(
        [classifier], folder, device, batch_size, workers, on_skip=_report_skipped, faces=faces.value, votes=voted
    )
    if labelled.unpredicted:
        raise FerError(f"{votes} has classes {classifier.name} does not predict ({', '.join(labelled.unpredicted)})")
    clear = labelled.labels >= 0  # with votes: the images with a majority
    fitted_on = folder if voted is None else f"{votes} under {folder}, against the majority of the votes"
    probs, labels = labelled.probs[:, 0], labelled.labels
    correction = None
    if prior_correction != "keep":
        probs, correction = _refit_prior_correction(classifier, probs, labels, clear, prior_correction, fitted_on)
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
        metrics = _scores_on(labelled, probs, clear, classifier.class_names)
    if changed or out is not None:
        store_calibration(destination, report, correction, metrics)
        where = f"written to {destination}"
    else:
        where = f"{destination} left as it was"
    if correction is not None:
        err_console.print(plain(f"{classifier.name}: {describe_prior_correction(correction)}"))
    previous = classifier.temperature if prior_correction == "keep" else 1.0
    err_console.print(plain(f"{classifier.name}: {describe(report, previous)} ({where})"))


def _scores_on(labelled, corrected, clear, class_names) -> dict:
    """The metrics ``fer train`` stores, for probabilities ``corrected`` of ``labelled``'s images (against the labels
    of the images ``clear``, and with votes, the votes' own measures over all of them)."""
    from .engine.metrics import summarize, summarize_votes

    if labelled.votes is None:
        return summarize(labelled.labels[clear], corrected[clear], class_names)
    return summarize_votes(labelled.votes, labelled.labels, corrected, class_names)


def _refit_prior_correction(classifier, probs, labels, clear, setting: str, fitted_on: str):
    """The probabilities ``classifier`` gave, taken back to its raw logits (up to a constant per image), corrected anew
    as ``setting`` says (auto, none, a number: chosen on the images ``clear``); returns them (temperature 1) and the
    correction's report."""
    import numpy as np

    from .engine.calibration import choose_prior_correction
    from .models.classifier import log_class_prior, softmax

    if classifier.class_prior is None:
        raise FerError(f"{classifier.name} records no class prior (trained before fer recorded one): no correction")
    prior = np.asarray(classifier.class_prior, dtype=np.float64)
    raw = classifier.temperature * np.log(np.clip(probs, 1e-12, None)) - classifier.logit_adjustment
    correction = choose_prior_correction(raw[clear], labels[clear], prior, setting, fitted_on)
    if correction is None:  # none: no correction at all
        correction = {
            "tau": 0.0,
            "rule": "none (--prior-correction none)",
            "prior": prior.tolist(),
            "reason": "none asked",
        }
    return softmax(raw - correction["tau"] * log_class_prior(prior)), correction


@handles_user_errors
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
    from .engine.ensemble import score_model
    from .models.exported import export_checkpoint, store_metrics
    from .models.zoo import load_classifier, resolve_model

    if out.suffix.lower() != ".onnx":
        raise typer.BadParameter("the exported file's name must end in .onnx", param_hint="OUT")
    source = resolve_model(model)
    if not source.path.endswith(".pt"):
        raise typer.BadParameter(
            f"{printable(model)} is already an exported model; export a checkpoint (.pt)", param_hint="NAME|FILE"
        )
    if votes is not None and val is None:
        raise typer.BadParameter("--votes scores the images under --val FOLDER; give it too", param_hint="--votes")
    voted = _voted_files(val or "", votes, split)
    _refuse_shipped([out], "OUT")
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


def _open_output(output: Path | None, fmt: OutputFormat | None):
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


def _open_annotator(folder: Path | None, class_names: list[str]):
    from .outputs.annotate import Annotator

    if folder is None:
        return None
    try:
        return Annotator(folder, class_names)
    except OSError as error:
        raise typer.BadParameter(
            f"cannot write to {printable(folder)}: {error.strerror}", param_hint="--annotate"
        ) from None


def _open_report_folder(folder: Path | None) -> Path | None:
    """Make --report's folder before any work, so that a bad one fails at once."""
    from .outputs.report import prepare_folder

    if folder is None:
        return None
    try:
        return prepare_folder(folder)
    except OSError as error:
        raise typer.BadParameter(
            f"cannot write to {printable(folder)}: {error.strerror}", param_hint="--report"
        ) from None


@contextlib.contextmanager
def _status(message: str):
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


def _note(message: str) -> None:
    err_console.print(f"[yellow]note:[/] {markup_safe(message)}", highlight=False)


def _report_skipped(path: str, reason: str) -> None:
    err_console.print(f"[yellow]skipped[/] {markup_safe(path)}: {markup_safe(reason)}", highlight=False)


def _report_warning(path: str, warning: str) -> None:
    err_console.print(f"[yellow]warning[/] {markup_safe(path)}: {markup_safe(warning)}", highlight=False)


def _predict_and_write(
    classifiers, sources, vote, model_label, fmt, output, device, batch_size, workers, faces, annotate, tta, shard=None,
    report=None, video=VideoSettings(), min_face=None,
) -> None:  # fmt: skip
    """The shared body of `predict` and unlabelled `ensemble`: stream, vote, write, annotate, report, exit code."""
    from .engine.predict import align_classes, predict_stream
    from .engine.video_records import VideoRecords
    from .inputs.images import iter_image_paths
    from .inputs.video import has_videos
    from .outputs.annotate_video import VideoCopies

    class_names = align_classes(classifiers)
    collector = None
    if report is not None:  # matplotlib is loaded only for a report
        from .outputs.report import PredictionReport

        collector = PredictionReport(_open_report_folder(report), class_names, model_label)
    started = time.perf_counter()
    items = list(iter_image_paths(sources, on_note=lambda note: err_console.print(note, highlight=False), videos=True))
    if not items:
        raise SourceError("no input paths were given (standard input was empty)")
    if shard is not None:
        total, items = len(items), shard.select(items)
        err_console.print(f"shard {shard.index}/{shard.count}: {len(items):,} of {total:,} inputs", highlight=False)
    _refuse_clashing_outputs(output, report, annotate, items)
    destination, chosen = _open_output(output, fmt)
    annotator = _open_annotator(annotate, class_names)
    tally = _Tally()
    videos = VideoRecords(video.smooth)
    copies = VideoCopies(annotator, video.sampling) if annotator and has_videos(items) else None
    try:
        with destination as stream:
            writer = _writer(chosen, has_videos(items))(stream, class_names, video=has_videos(items))
            try:
                batches = predict_stream(
                    classifiers, items, device, batch_size, workers, faces=faces.value, tta=tta,
                    sampling=video.sampling, on_ready=lambda: setattr(tally, "ready_at", time.perf_counter()),
                    min_face=min_face,
                )  # fmt: skip
                _write_predictions(
                    batches, len(items), writer, destination, vote, model_label, annotator, tally, collector, videos,
                    copies,
                )  # fmt: skip
            finally:
                _close_writer(writer, destination)
    except (KeyboardInterrupt, Interrupted):
        if output is not None and tally.done and not destination.discarded:
            err_console.print(
                f"results of {tally.done:,} of {_count(len(items), 'input')} kept in {markup_safe(output)}",
                highlight=False,
            )
        raise
    if collector is not None:
        with written_whole(report):
            collector.write()
        err_console.print(f"report in {markup_safe(report)}{os.sep}index.html", highlight=False)
    _summarise(tally, started, annotator, annotate)


def _close_writer(writer, destination) -> None:
    """Finish the document (a JSON array closed, a table printed) whatever happened; a writer that fails doing it
    (a name it cannot render) leaves half a document, which never replaces an earlier -o file."""
    try:
        writer.close()
    except BaseException:
        if isinstance(destination, ResultsFile):
            destination.discard()
        raise


def _refuse_clashing_outputs(output: Path | None, report: Path | None, annotate: Path | None, items: list) -> None:
    """-o never replaces an input, nor a file --report writes; checked before any work."""
    if output is None:
        return
    _refuse_shipped([output], "--output")
    target = os.path.realpath(output)
    # (an output that does not exist yet is no input: resolving every input's path costs 0.1 s a thousand files)
    if os.path.exists(target) and target in {os.path.realpath(item) for item in items if isinstance(item, str)}:
        raise typer.BadParameter(
            f"{printable(output)} is one of the inputs; results would replace it", param_hint="--output"
        )
    if report is not None and os.path.dirname(target) == os.path.realpath(report):
        from .outputs.report import REPORT_FILES  # matplotlib comes with it: only for --report

        if os.path.basename(target) in REPORT_FILES or os.path.basename(target).startswith("confusion-"):
            raise typer.BadParameter(
                f"{printable(output)} is a file --report writes in {printable(report)}; choose another name or folder",
                param_hint="--output",
            )
    if annotate is not None and os.path.dirname(target) == os.path.realpath(annotate) and ".fer." in output.name:
        raise typer.BadParameter(
            f"{printable(output)} is where an annotated copy may go; choose another name", param_hint="--output"
        )


def _writer(chosen: str, videos: bool):
    """The writer of a format; the table gains one row per face track when videos are among the inputs."""
    if chosen == "table" and videos:
        from .outputs.track_table import TableWithTracks

        return TableWithTracks
    return WRITERS[chosen]


def _starting_model(start: dict) -> str:
    """The model a run started from, as a user can find it: a shipped name, or a file with its sha256 to tell it by."""
    from .models.zoo import shipped_models

    shipped = {entry.name for entry in shipped_models()}
    name = start["model"]
    if name in shipped:
        return f"{name} (shipped)"
    digest = start.get("sha256")
    return f"{name}, not shipped" + (f" (sha256 {digest[:12]}…)" if digest else "")


def _refuse_shipped(paths: list[Path], hint: str) -> None:
    """No command writes over a shipped model (the default ensemble, predict's default and -m NAME need them whole):
    each path is compared, links resolved, with the files its folder's SHA256SUMS lists and with every shipped file
    (the same file under another name: a hard link). Checked before any work."""
    from .models.zoo import is_shipped, weights_dirs

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


@dataclasses.dataclass
class _Tally:
    done: int = 0  # inputs
    failed: int = 0  # inputs that could not be read
    found: int = 0  # faces
    not_annotated: int = 0  # annotated copies that could not be written
    frames: int = 0  # video frames read
    read: int = 0  # images and video frames
    ready_at: float | None = None  # when the models were ready (a first run's ONNX export is start-up, not predicting)


def _write_predictions(
    batches, total, writer, destination, vote, model_label, annotator, tally, collector, videos, copies
) -> None:  # fmt: skip
    """Each batch of outcomes voted on, written, annotated and counted as it comes (a video's frames given their
    tracks by ``videos``, its copy annotated once its last frame is in)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from .engine.predict import to_predictions
    from .inputs.video import ends_input

    class_names = writer.class_names
    # Results piped to another program (| head, | less) share the terminal with the bar: no bar then.
    piped = destination is not None and not isinstance(destination, ResultsFile) and _stdout_is_a_pipe()
    progress = Progress(
        TextColumn("predicting{task.fields[frames]}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        console=err_console, transient=True, disable=piped,
    )  # fmt: skip
    with progress:
        task = progress.add_task("predict", total=total, frames="")  # frames: how many of videos, once there are
        for outcomes in batches:
            ended = sum(ends_input(outcome.frame) for outcome in outcomes)
            progress.advance(task, ended)
            predictions = []
            for outcome in outcomes:
                rows = videos.records(outcome, to_predictions(outcome, vote, class_names, model_label))
                predictions.extend(rows)
                for row in rows:
                    if row.warning and videos.first_warning(row):
                        _report_warning(row.path, row.warning)
                tally.found += len(outcome.faces)
                tally.frames += outcome.frame is not None
                tally.read += 1
                error = outcome.error or next((row.error for row in rows if row.error), None)
                if error:
                    tally.failed += 1
                    _report_skipped(outcome.path, error)
                elif annotator and outcome.frame is None:
                    try:
                        annotator.annotate(outcome.path, rows)
                    except (OSError, ValueError) as error:  # a full disk, a file changed meanwhile
                        tally.not_annotated += 1
                        _report_skipped(outcome.path, f"no annotated copy: {error}")
                try:
                    if copies is not None:
                        copies.add(outcome.path, outcome.frame, rows)
                except (OSError, ValueError) as error:  # as an image's copy
                    tally.not_annotated += 1
                    _report_skipped(outcome.path, f"no annotated copy: {error}")
            if tally.frames:  # a long video is one input: the bar alone would stand still
                progress.update(task, frames=f" ({_count(tally.frames, 'video frame')})")
            writer.write_batch(predictions)
            if collector is not None:
                collector.add(predictions)
            tally.done += ended
            if isinstance(destination, ResultsFile):
                destination.produced()


def _summarise(tally: _Tally, started: float, annotator, annotate) -> None:
    """The run's last lines on stderr, and its exit code: 1 when an input or an annotated copy failed. The time is
    the whole run's; starting up is Python, the imports and the models made ready (a checkpoint's first ONNX export
    included), and the rate is the predicting's after it, given only when something was predicted."""
    now = time.perf_counter()
    started = tally.ready_at or started
    seconds, starting = now - PROCESS_STARTED, started - PROCESS_STARTED
    predicted = tally.done - tally.failed
    per_second = tally.read / (now - started) if now > started else 0.0
    unit = "images" if not tally.frames else "frames" if tally.frames == tally.read else "images and frames"
    rate = f", then {per_second:,.{0 if per_second >= 10 else 1}f} {unit}/s" if predicted and per_second else ""
    frames = f"; {_count(tally.frames, 'video frame')}" if tally.frames else ""
    err_console.print(
        f"{predicted:,} of {_count(tally.done, 'input')} predicted ({_count(tally.found, 'face')}"
        f"{frames}) in {seconds:.1f}s ({starting:.1f}s starting up{rate})",
        highlight=False,
    )
    if annotator:
        copies = _count(annotator.written, "annotated copy", "annotated copies")
        err_console.print(f"{copies} in {markup_safe(annotate)}", highlight=False)
    if tally.failed:
        err_console.print(f"[yellow]{_count(tally.failed, 'input')} could not be read[/]", highlight=False)
    if tally.not_annotated:
        copies = _count(tally.not_annotated, "annotated copy", "annotated copies")
        err_console.print(f"[yellow]{copies} could not be written[/]", highlight=False)
    if tally.failed or tally.not_annotated:
        raise typer.Exit(INPUTS_FAILED)


def _stdout_is_a_pipe() -> bool:
    import stat

    try:
        return stat.S_ISFIFO(os.fstat(sys.stdout.fileno()).st_mode)
    except (OSError, ValueError, AttributeError):  # not a real file (a test's capture)
        return False


def _count(number: int, one: str, many: str | None = None) -> str:
    """'1 input', '2 inputs', '1,200 faces'."""
    return f"{number:,} {one if number == 1 else (many or one + 's')}"


@handles_user_errors
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
    from .inputs.images import Shard
    from .models.zoo import resolve_model

    try:
        chosen_shard = Shard.parse(shard) if shard is not None else None
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--shard") from None

    video = video_settings(fps, start, end, smooth)
    smallest = _min_face(min_face)
    classifier = resolve_model(model, note=_note)
    only_model = lambda probs: probs[:, 0]  # noqa: E731  (N, 1, C) -> (N, C)
    _predict_and_write(
        [classifier], sources, only_model, classifier.name, fmt, output, device, batch_size, workers, faces,
        annotate, tta, chosen_shard, report, video, smallest,
    )  # fmt: skip


@handles_user_errors
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
    from .engine.ensemble import default_vote, score_labelled
    from .engine.predict import align_classes
    from .inputs.labelled import is_labelled_folder
    from .models.zoo import resolve_models

    voted = _voted_files(folder, votes, split)
    smallest = _min_face(min_face)
    classifiers = resolve_models(model, note=_note)
    if voted is None and not is_labelled_folder(folder, align_classes(classifiers)):
        err_console.print(plain(f"{folder} is not a labelled folder (class subfolders): predicting with the ensemble"))
        name, vote = default_vote(classifiers, weighted)
        _predict_and_write(
            classifiers, [folder], vote, f"ensemble: {name}", fmt, output, device, batch_size, workers, faces,
            annotate, tta, report=report, min_face=smallest,
        )  # fmt: skip
        return
    if annotate is not None:
        raise typer.BadParameter("annotated copies are made when predicting, not when scoring", param_hint="--annotate")

    if fmt not in (None, OutputFormat.table, OutputFormat.json):
        raise typer.BadParameter("a labelled folder's report is a table or json", param_hint="--format")
    report_folder = _open_report_folder(report)
    _refuse_clashing_outputs(output, report, None, [])
    started = time.perf_counter()
    destination, chosen = _open_output(output, fmt)  # before the work: an unwritable -o fails at once
    models_scored = f"{len(classifiers)} model{'s' if len(classifiers) != 1 else ''}"
    with destination as stream:
        with _status(f"scoring {models_scored} on {markup_safe(folder)}"):
            scored, labelled = score_labelled(
                classifiers, folder, weighted, device, batch_size, workers, on_skip=_report_skipped,
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
    from .engine.ensemble import most_confident_mistakes
    from .outputs.report import write_ensemble_report

    accuracies = [m["metrics"]["accuracy"] for m in report["models"]]
    best = accuracies.index(max(accuracies))  # the most accurate model's mistakes (a vote has no single face to blame)
    mistakes = most_confident_mistakes(labelled, labelled.probs[:, best], per_class=8)
    try:
        write_ensemble_report(folder, report, mistakes, report["models"][best]["name"])
    except OSError as error:
        raise FerError(f"cannot write the report in {folder}: {error.strerror or error}") from None
    err_console.print(f"report in {markup_safe(folder)}{os.sep}index.html", highlight=False)


@handles_user_errors
def serve(
    host: Annotated[
        str, typer.Option("--host", metavar="ADDRESS", help="Address to listen on (0.0.0.0: every interface).")
    ] = "127.0.0.1",
    port: Annotated[
        int, typer.Option("--port", min=0, max=65535, metavar="N", help="Port to listen on (0: any free one).")
    ] = 8000,
    model: Annotated[
        list[str] | None,
        typer.Option(
            "--model",
            "-m",
            metavar="NAME|FILE",
            help="A shipped model's name or a checkpoint/.onnx file; repeat for an ensemble (mean vote). "
            "Default: the best shipped model, as for predict.",
        ),
    ] = None,
    faces: FacesOpt = Faces.auto,
    min_face: MinFaceOpt = None,
    tta: TtaOpt = TTA.none,
    device: DeviceOpt = "auto",
    max_upload_mb: Annotated[
        float, typer.Option("--max-upload-mb", min=0.001, metavar="MB", help="Largest request body; larger: 413.")
    ] = 20.0,
    queue: Annotated[
        int,
        typer.Option("--queue", min=1, metavar="N", help="Images waiting at most; more: 503 with Retry-After."),
    ] = 256,
    batch_window_ms: Annotated[
        float,
        typer.Option(
            "--batch-window-ms", min=0, metavar="MS", help="How long a short batch waits for concurrent requests."
        ),
    ] = 2.0,
    max_batch: Annotated[
        int,
        typer.Option(
            "--max-batch", min=1, metavar="N", help="Faces in one model batch (more on a GPU); a request's are split."
        ),
    ] = 16,
    max_faces: Annotated[
        int, typer.Option("--max-faces", min=1, metavar="N", help="Faces in one request at most; more: 413.")
    ] = 1000,
    video_fps: Annotated[
        float,
        typer.Option(
            "--video-fps", min=0.01, max=30, metavar="N", help="Frames read a second of an uploaded video's time."
        ),
    ] = 5.0,
    max_video_seconds: Annotated[
        float,
        typer.Option(
            "--max-video-seconds",
            min=0.1,
            max=3600,
            metavar="S",
            help="Longest uploaded video (its header); longer: 413. Frames past it are never read.",
        ),
    ] = 60.0,
    max_megapixels: Annotated[
        float,
        typer.Option(
            "--max-megapixels", min=0.001, metavar="MP", help="Pixels of one image (from its header); more: 413."
        ),
    ] = 40.0,
    decode_memory_mb: Annotated[
        float,
        typer.Option(
            "--decode-memory-mb",
            min=1,
            metavar="MB",
            help="Memory for images being decoded at once (others wait); one image needing more: 413.",
        ),
    ] = 768.0,
    upload_budget_mb: Annotated[
        float,
        typer.Option(
            "--upload-budget-mb",
            min=0.001,
            metavar="MB",
            help="Bodies of all requests in hand (the bytes received), together; more: 503.",
        ),
    ] = 256.0,
    answer_memory_mb: Annotated[
        float,
        typer.Option(
            "--answer-memory-mb",
            min=0.001,
            metavar="MB",
            help="Answers waiting for their clients to take them, together; more: new uploads 503.",
        ),
    ] = 256.0,
    max_connections: Annotated[
        int,
        typer.Option(
            "--max-connections",
            min=1,
            metavar="N",
            help="Connections open at once (fewer if ulimit -n is low); more: 503.",
        ),
    ] = 1000,
    header_timeout: Annotated[
        float, typer.Option("--header-timeout", min=0.1, metavar="S", help="Seconds for a request's headers; then 408.")
    ] = 10.0,
    body_timeout: Annotated[
        float, typer.Option("--body-timeout", min=0.1, metavar="S", help="Seconds for a request's body; then 408.")
    ] = 60.0,
    send_timeout: Annotated[
        float,
        typer.Option(
            "--send-timeout",
            min=0.1,
            metavar="S",
            help="Seconds a client may take an answer at under 64 KB/s (or not at all); then the connection is reset.",
        ),
    ] = 30.0,
    shutdown_grace: Annotated[
        float,
        typer.Option(
            "--shutdown-grace",
            min=1,
            metavar="S",
            help="Seconds SIGTERM/Ctrl-C leaves received requests to be answered (an upload still arriving: 503).",
        ),
    ] = 5.0,
    allow_host: Annotated[
        list[str] | None,
        typer.Option(
            "--allow-host",
            metavar="NAME",
            help="Another name to answer to (besides localhost, IP addresses, this host's name); '*': any. Repeatable.",
        ),
    ] = None,
    access_log: Annotated[bool, typer.Option("--access-log/--no-access-log", help="A line per request.")] = True,
) -> None:
    """Serve predictions over HTTP, with a page to drop photos on.

    POST /predict takes images and short videos (multipart, field "files") and answers the records
    `fer predict --format json` prints (a video's: `--fps` at --video-fps), each with the client's
    file name as its path; ?annotate=true with one image answers the annotated PNG. GET /models, GET /health; GET / is the page, /docs the API.
    Models load once, before the server listens. Needs the serve extra: pip install '.[serve]'.

    Every limit answers at once with a status and one line (413 too large, 408 too slow, 503 busy
    with Retry-After); other web pages (a foreign Origin or Host) are refused.

    \b
    Examples:
      fer serve                          # http://127.0.0.1:8000/
      fer serve --port 9000 -m fast      # another port, the ONNX model
      curl -F files=@face.png http://127.0.0.1:8000/predict
    """
    import importlib.util

    missing = [name for name in ("fastapi", "uvicorn", "multipart") if importlib.util.find_spec(name) is None]
    if missing:
        raise FerError(
            f"fer serve needs the serve extra ({', '.join(missing)} not installed): in fer's folder, "
            "pip install '.[serve]'"
        )
    import socket

    from .engine.predict import Predictor
    from .engine.voting import default_vote
    from .models.zoo import resolve_model
    from .serve.app import ServeConfig, create_app
    from .serve.server import ConnectionLimits, connection_cap
    from .serve.video_uploads import VideoLimits

    smallest = _min_face(min_face)
    classifiers = [resolve_model(name, note=_note) for name in model] if model else [resolve_model(None, note=_note)]
    if len(classifiers) == 1:
        vote, label = (lambda probs: probs[:, 0]), classifiers[0].name  # as fer predict
    else:
        name, vote = default_vote(classifiers, weighted=False)  # as fer ensemble on unlabelled images
        label = f"ensemble: {name}"
    predictor = Predictor(classifiers, device, faces.value, tta=tta, min_face=smallest)
    config = ServeConfig(
        max_upload_bytes=round(max_upload_mb * 2**20),
        upload_budget_bytes=round(max(upload_budget_mb, max_upload_mb) * 2**20),  # room for one largest upload
        answer_budget_bytes=round(answer_memory_mb * 2**20),
        queue=queue,
        max_pixels=round(max_megapixels * 1e6),
        decode_budget_bytes=round(decode_memory_mb * 2**20),
        max_faces=max_faces,
        batch_window_s=batch_window_ms / 1000,
        max_batch=max_batch,
        host=host,
        allowed_hosts=tuple(allow_host or ()),
        video=VideoLimits(video_fps, max_video_seconds),
    )
    connections = connection_cap(max_connections)
    if connections < max_connections:
        _note(
            f"--max-connections {max_connections} lowered to {connections}: the open-file limit (ulimit -n) holds no more"
        )
    limits = ConnectionLimits(connections, header_timeout, body_timeout, shutdown_grace, send_timeout_s=send_timeout)
    try:  # bound here, so that a port in use is one line and exit 2, and --port 0 can say which it got
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        listening = socket.socket(family, socket.SOCK_STREAM)
        listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listening.bind((host, port))
        listening.listen(2048)  # before the line below: a client that reads it may connect at once
    except (OSError, OverflowError) as error:
        # an address that names no interface is the host's fault; one in use (or not allowed) the port's
        which = "--host" if isinstance(error, socket.gaierror) or getattr(error, "errno", None) == 99 else "--port"
        raise typer.BadParameter(
            f"cannot listen on {host}:{port}: {getattr(error, 'strerror', None) or error}", param_hint=which
        ) from None
    bound = listening.getsockname()[1]
    shown = f"[{host}]" if family == socket.AF_INET6 else host
    err_console.print(
        f"serving {label} ({', '.join(predictor.devices)}) on http://{shown}:{bound}/ (API: /docs); Ctrl-C stops",
        highlight=False,
    )
    _run_server(create_app(predictor, vote, label, config), listening, limits, access_log)


def _run_server(application, listening, limits, access_log: bool) -> None:
    from .serve.server import run

    run(application, listening, limits, access_log)


# `fer --help` lists the commands in the order people use them.
for _command in (predict, ensemble, train, calibrate, export, models, serve):
    app.command(cls=_Command)(_command)

_MAIN_PROCESS = os.getpid()


def main() -> None:
    global _MAIN_PROCESS
    _MAIN_PROCESS = os.getpid()
    for stream in (sys.stdout, sys.stderr):  # a file name that is not UTF-8 is written with its own bytes
        with contextlib.suppress(AttributeError, ValueError):
            stream.reconfigure(errors="surrogateescape")
    signal.signal(signal.SIGTERM, _stop)  # unwind as for Ctrl-C: outputs finished, workers stopped
    signal.signal(signal.SIGINT, _stop)
    app(prog_name="fer")


def _stop(signal_number, frame) -> None:
    if os.getpid() != _MAIN_PROCESS:
        # A worker forked a moment ago still has the main process's handlers until it sets its own:
        # the signal that reached the whole group is the main process's to report, the worker just ends.
        os._exit(128 + signal_number)
    if signal_number == signal.SIGINT:
        raise KeyboardInterrupt
    raise Interrupted(signal_number)


def _voted_files(folder: str, votes: Path | None, split: str | None):
    """``--votes CSV [--split NAME]`` over the images under ``folder`` (``ensemble.VotedFiles``), or None without
    --votes; a --split without --votes, or one this tool does not read, is a usage error."""
    from .engine.ensemble import voted_files
    from .inputs.votes import split_of

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
