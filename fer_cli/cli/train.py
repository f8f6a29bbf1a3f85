"""`fer train`: its options, checked, as a ``TrainConfig``; the run is the library's (``engine.train``)."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer

from ..models.architectures import MAX_INPUT_SIDE, MIN_INPUT_SIDE
from .console import err_console
from .options import (
    Balance,
    BatchSizeOpt,
    Channels,
    DeviceOpt,
    Optimizer,
    Precision,
    Schedule,
    Targets,
    WorkersOpt,
    parse_arch_options,
    refuse_shipped,
)


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
    from ..engine.train.config import TrainConfig
    from ..engine.train.run import train as run_training
    from ..engine.train.run_files import curves_path, history_path, last_path

    if data is None and not resume:
        raise typer.BadParameter("DATA is required (unless --resume)", param_hint="DATA")
    refuse_shipped([out, history_path(out), curves_path(out), last_path(out)], "--out")
    try:
        config = TrainConfig(
            data=data or "",
            out=str(out),
            val=val,
            arch=arch,
            arch_options=parse_arch_options(arch_option or []),
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
