"""`fer train`: one training loop, validation every epoch, best checkpoint kept, resumable.

    fer train ../shared/data/fer2013/train --val ../shared/data/fer2013/val --arch vgg --epochs 30 --out weights/vgg.pt

Beside ``--out`` it writes ``NAME.history.csv`` (one row per epoch), ``NAME.curves.png`` (the
history as curves, redrawn every epoch) and ``NAME.last.pt`` (everything ``--resume`` needs to
continue an interrupted run where it stopped). ``--tensorboard DIR`` logs the epochs there too.
"""

from __future__ import annotations

import contextlib
import csv
import math
import multiprocessing
import os
import time
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from sklearn.model_selection import train_test_split
from torch import nn
from torchvision.transforms import v2

from ..device import (
    autocast,
    describe_precision,
    grad_scaler,
    prepare_model,
    resolve_precision,
    select_device,
    to_device,
)
from ..errors import CheckpointError, FerError, SourceError
from ..files import writable_folder, written_whole
from ..inputs.augment import Augmentation, BatchAugment
from ..inputs.batches import InMemoryBatches, share_of, shuffled_order
from ..inputs.data import (
    LabelledTensors,
    decode_labelled_files,
    find_labelled_images,
    images_fingerprint,
    labelled_digest,
    read_fer2013_csv,
    read_voted_images,
    validation_images,
)
from ..inputs.votes import canonical_class, describe_left_out, read_votes, require_a_majority
from ..models.architectures import check_input_size, check_model_options, create_model
from ..models.checkpoint import build_model, now_iso, read_checkpoint, save_checkpoint
from ..models.classifier import softmax
from ..outputs import figures
from ..outputs import tensorboard as tensorboard_log
from ..version import __version__
from . import distill, distributed
from .calibration import (
    calibrate,
    check_prior_correction,
    choose_prior_correction,
    describe,
    describe_prior_correction,
    log_class_prior,
)
from .distill import DistillationLoss
from .metrics import summarize, summarize_votes
from .predict import stay_quiet_and_die_with_parent

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "onecycle", "plateau", "none")
BALANCING = ("none", "sampler", "loss", "logit-adjusted")
# Starting from a trained model (--init), what a user does not say: fewer epochs, AdamW at half its usual rate
# (measured on FER+ votes from the shipped FER2013 models: see weights/README.md).
FINE_TUNING = {"epochs": 10, "optimizer": "adamw", "lr_factor": 0.5, "freeze_epochs": 1}
TARGETS = ("distribution", "majority")


@dataclass(frozen=True)
class TrainConfig:
    data: str  # labelled folder, a root with train/ and val/, or a FER2013 CSV
    out: str  # best checkpoint path; history and resume state are written beside it
    val: str | None = None  # labelled folder or CSV; default: DATA/val, the CSV's PublicTest rows, or 10% held out
    arch: str = "vgg"
    arch_options: dict = field(default_factory=dict)
    epochs: int | None = None  # default: 30, or FINE_TUNING's with init
    batch_size: int = 64
    optimizer: str | None = None  # sgd (Nesterov momentum 0.9) or adamw; default: sgd, or FINE_TUNING's with init
    lr: float | None = None  # default: 0.01 for sgd, 0.001 for adamw; half that with init
    weight_decay: float | None = None  # default: 5e-4 for sgd, 0.05 for adamw (decoupled)
    schedule: str = "onecycle"  # onecycle | cosine | plateau (on val accuracy) | none
    label_smoothing: float = 0.1
    mixup: float = 0.0  # MixUp's Beta(a, a) parameter; 0 = off (with cutmix too, each batch picks one)
    cutmix: float = 0.0  # CutMix's Beta(a, a) parameter; 0 = off
    augment: str = "default"  # 'default', 'none' or a comma list of flip,crop,shift,rotate,erase
    balance: str = "none"  # class imbalance: none | sampler (weighted sampling) | loss (weighted loss) |
    # logit-adjusted (the loss sees logits + log class prior: Menon et al. 2021)
    size: int = 48  # square input side in pixels
    channels: int = 1  # 1 = grayscale, 3 = RGB
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"  # auto | fp32 | bf16 (device.resolve_precision: bf16 on CPUs with bfloat16 units)
    workers: int = 2  # processes decoding the images (once, before the first epoch)
    half: bool = False  # store the best checkpoint's weights as float16 (half the size)
    tensorboard: str | None = None  # folder to log epochs to for TensorBoard (needs the tensorboard package)
    resume: bool = False
    overwrite: bool = False  # replace an earlier run's files at ``out`` (else refused)
    init: str | None = None  # start from this model's weights (a shipped name or a .pt): its architecture and input
    freeze_epochs: int | None = None  # with init: only the classifier head trains for this many first epochs (default:
    # 1 when most of the head is new, else 0)
    teachers: tuple[str, ...] = ()  # distil from these models (shipped names or files): their softened probabilities
    distill_weight: float = 0.9  # the share of the loss that is the teachers' (the rest: the labels')
    distill_temperature: float = 4.0  # the softmax temperature of teachers and student in that share
    teacher_cache: str | None = None  # where the teachers' logits are cached; default: distill.default_cache_dir()
    votes: str | None = None  # a votes CSV: each image's label distribution (DATA holds the images; see inputs.votes)
    targets: str = "distribution"  # with votes: learn the vote shares, or the majority class (one-hot)
    label_weight: float = 0.0  # with votes: this share of each target is the image's own single label (FER2013's)
    allow_missing: bool = False  # with votes: train on the images found even when most are missing (else an error)
    prior_correction: str = "auto"  # tau of logits - tau * log(class prior): 'auto' (chosen on val), 'none', a number
    command: str = ""  # the command line, recorded for provenance
    given: tuple[str, ...] = ()  # the options the user wrote (the command line's parameter names), for --resume

    @property
    def learning_rate(self) -> float:
        if self.lr is not None:
            return self.lr
        return {"sgd": 0.01, "adamw": 1e-3}[self.optimizer] * (FINE_TUNING["lr_factor"] if self.init else 1.0)

    def with_defaults(self, head_rows_new: float = 0.0) -> TrainConfig:
        """The settings a user left out filled in: a fresh run's, or with ``init`` a fine-tuning's (FINE_TUNING;
        ``head_rows_new``: the share of the classifier head that starts untrained)."""
        tuning = bool(self.init)
        freeze = self.freeze_epochs
        if freeze is None:
            freeze = FINE_TUNING["freeze_epochs"] if tuning and head_rows_new > 0.5 else 0
        return replace(
            self,
            epochs=self.epochs or (FINE_TUNING["epochs"] if tuning else 30),
            optimizer=self.optimizer or (FINE_TUNING["optimizer"] if tuning else "sgd"),
            freeze_epochs=freeze,
        )

    @property
    def decay(self) -> float:
        if self.weight_decay is not None:
            return self.weight_decay
        return {"sgd": 5e-4, "adamw": 0.05}[self.optimizer or "sgd"]

    def validate(self) -> None:
        for value, valid, option in (
            (self.optimizer or "sgd", OPTIMIZERS, "--optimizer"),
            (self.schedule, SCHEDULES, "--schedule"),
            (self.balance, BALANCING, "--balance"),
            (self.targets, TARGETS, "--targets"),
        ):
            if value not in valid:
                raise ValueError(f"{option} must be one of {', '.join(valid)}, not '{value}'")
        if (self.epochs is not None and self.epochs < 1) or self.batch_size < 1:
            raise ValueError("--epochs and --batch-size must be at least 1")
        if self.channels not in (1, 3):
            raise ValueError("--channels must be 1 (grayscale) or 3 (RGB)")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError("--label-smoothing must be in [0, 1)")
        if self.mixup < 0 or self.cutmix < 0:
            raise ValueError("--mixup and --cutmix must be 0 (off) or positive")
        check_prior_correction(self.prior_correction)
        if not 0.0 <= self.label_weight <= 1.0:
            raise ValueError("--label-weight must be in [0, 1]")
        if not self.votes and (self.label_weight or self.targets != "distribution"):
            raise ValueError("--label-weight and --targets need --votes (they say how to learn from votes)")
        if (self.freeze_epochs or 0) < 0 or (self.freeze_epochs and not self.init):
            raise ValueError("--freeze-epochs needs --init (the layers to freeze come from that model)")
        if self.teachers:
            if not 0.0 <= self.distill_weight <= 1.0:
                raise ValueError("--distill-weight must be in [0, 1]")
            if self.distill_temperature <= 0:
                raise ValueError("--distill-temperature must be positive")
            if self.mixup or self.cutmix:
                raise ValueError(
                    "--teacher does not combine with --mixup or --cutmix (the teachers saw unmixed images)"
                )
        Augmentation.parse(self.augment)
        check_model_options(self.arch, self.arch_options)  # fail before decoding any data
        check_input_size(self.arch, self.arch_options, self.size, self.channels)


def history_path(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.stem + ".history.csv")


def curves_path(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.stem + ".curves.png")


def last_path(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.stem + ".last.pt")


# --- data ----------------------------------------------------------------------------------------


def load_training_data(config: TrainConfig, log: Console) -> tuple[LabelledTensors, LabelledTensors, str, str | None]:
    """Decode the training and validation sets into memory.

    Also returns where validation came from, in words and as the path of its file or folder
    (None when it was held out of the training data).
    """
    preprocess = {"size": config.size, "channels": config.channels}
    if config.votes:
        return _load_voted_data(config, preprocess, log)
    data = Path(config.data)
    train_source = data
    val_source = Path(config.val) if config.val else None
    if data.is_dir() and (data / "train").is_dir() and not config.val and (data / "val").is_dir():
        train_source, val_source = data / "train", data / "val"

    def load(source: Path, usage: tuple[str, ...]) -> LabelledTensors:
        if source.is_file() and source.suffix.lower() == ".csv":
            return read_fer2013_csv(source, usage, preprocess)
        if not source.exists():
            raise SourceError(f"no such file or folder: {source}")
        files = find_labelled_images(source)
        log.print(f"decoding {len(files.paths):,} images from {source} ...")
        return decode_labelled_files(
            files, preprocess, workers=config.workers, warn=lambda m: log.print(f"[yellow]warning:[/] {m}")
        )

    train = load(train_source, ("training",))
    if val_source is not None and val_source.exists() and val_source.resolve() == train_source.resolve():
        log.print(
            f"[yellow]warning:[/] --val {val_source} is the training data: its accuracy will say how well the model "
            "remembers these images, not how it does on new ones"
        )
    if val_source is not None:
        val = load(val_source, ("publictest",)).reorder_classes(train.class_names)
        return train, val, str(val_source), str(val_source)
    if train_source.suffix.lower() == ".csv":
        try:
            val = load(train_source, ("publictest",))
            return train, val, f"{train_source} (PublicTest rows)", str(train_source)
        except SourceError:
            pass  # no PublicTest rows: hold out part of the training rows below
    train, val = _hold_out(train, fraction=0.1, seed=config.seed)
    return train, val, f"10% of {train_source} held out (stratified, seed {config.seed})", None


def _load_voted_data(config: TrainConfig, preprocess: dict, log: Console):
    """``load_training_data`` for images labelled by votes: DATA holds the images (a folder the votes CSV's paths
    are relative to, or a FER2013 CSV whose rows pair up with its rows), validation is the votes' val rows, ``--val``
    (another votes CSV over DATA's images), or 10% of the training rows held out."""
    data = Path(config.data)
    if not data.exists():
        raise SourceError(f"no such file or folder: {data}")
    by_row = data.is_file()
    table = read_votes(config.votes, by_row=by_row)
    warn = lambda m: log.print(f"[yellow]warning:[/] {escape(m)}")  # noqa: E731
    log.print(
        f"votes: {escape(table.origin)}, {len(table.images):,} images, classes {escape(', '.join(table.class_names))}"
        + (f"; {table.unnamed:,} rows without an image left out" if table.unnamed else "")
    )
    other = read_votes(config.val, by_row=by_row) if config.val else None
    for note in table.notes + (other.notes if other else []):
        warn(note)
    train_split = "train" if table.has_split else None
    if other:
        val_table, val_split = other, "val" if other.count("val") else None
    else:  # the val rows, or some of the training rows held out
        val_table, val_split = table, "val" if table.count("val") else train_split
    require_a_majority(val_table, val_split)
    decode = lambda t, split: read_voted_images(  # noqa: E731
        data, t, split, preprocess, config.workers, warn, fer2013_labels=by_row, allow_missing=config.allow_missing
    )
    train = _targets_usable(decode(table, train_split), config, log, "training")
    if other:
        val = decode(other, val_split).reorder_classes(train.class_names)
        val_origin, val_path = val.origin, str(config.val)
    elif val_split == "val":
        val, val_origin, val_path = decode(table, "val"), f"{table.origin} (val rows)", str(config.votes)
    else:
        train, val = _hold_out(train, fraction=0.1, seed=config.seed)
        val_origin, val_path = f"10% of {table.origin}'s rows held out (stratified, seed {config.seed})", None
    without = int((val.majority < 0).sum())
    if without == len(val):
        raise SourceError(f"{val_origin}: no validation image with a majority of the votes (of those read) to choose "
                          "the best epoch by")  # fmt: skip
    log.print(
        f"validation: {len(val):,} images" + (f" ({describe_left_out(val.left_out)})" if val.left_out else "")
        + f"; accuracy against the majority of the votes on the {len(val) - without:,} with one"
        + f" ({without:,} tied at the top)"
    )  # fmt: skip
    return train, val, val_origin, val_path


def _targets_usable(data: LabelledTensors, config: TrainConfig, log: Console, what: str) -> LabelledTensors:
    """Training images by votes: with ``--targets majority`` only those with a clear majority; with
    ``--label-weight`` only those whose single label is one of the classes. Says what was left out."""
    left_out = dict(data.left_out)
    if config.targets == "majority":
        keep = data.majority >= 0
        left_out["no majority (tied at the top)"] = int((~keep).sum())
        data = data.subset(torch.nonzero(keep).flatten())
    if config.label_weight:
        if data.given is None:
            raise SourceError(
                f"--label-weight mixes in each image's own label, but {config.votes} has no label column "
                "(label or fer2013_label), and DATA is not a FER2013 CSV"
            )
        keep = data.given >= 0
        left_out["single label not among the classes"] = int((~keep).sum())
        data = data.subset(torch.nonzero(keep).flatten())
    data.left_out = {reason: count for reason, count in left_out.items() if count}
    note = f" ({describe_left_out(data.left_out)})" if data.left_out else ""
    log.print(f"{what}: {len(data):,} images{note}")
    return data


def _class_prior(data: LabelledTensors, config: TrainConfig) -> list[float]:
    """Each class's share of what the training images teach: the mean target (vote shares), or label frequencies."""
    targets = training_targets(data, config)
    if targets is None:
        targets = torch.nn.functional.one_hot(data.labels.cpu(), len(data.class_names)).float()
    return [round(float(share), 6) for share in targets.float().mean(dim=0)]


def training_targets(data: LabelledTensors, config: TrainConfig) -> torch.Tensor | None:
    """What the loss compares each training image's output with: None for one label per image (the labels
    themselves), else a distribution over the classes: the vote shares, or the majority one-hot, with
    ``--label-weight`` of the image's own label mixed in."""
    if data.votes is None:
        return None
    classes = len(data.class_names)
    if config.targets == "majority":
        targets = torch.nn.functional.one_hot(data.majority.clamp_min(0), classes).float()
    else:
        targets = data.votes.float()
    if config.label_weight:
        given = torch.nn.functional.one_hot(data.given.clamp_min(0), classes).float()
        targets = (1 - config.label_weight) * targets + config.label_weight * given
    return targets


def _hold_out(data: LabelledTensors, fraction: float, seed: int) -> tuple[LabelledTensors, LabelledTensors]:
    """A stratified validation split: ``fraction`` of the images, at least one per class."""
    labels = data.labels.cpu().numpy()
    classes = len(data.class_names)
    held_count = max(int(round(fraction * len(labels))), classes)
    if np.bincount(labels, minlength=classes).min() < 2 or len(labels) - held_count < classes:
        raise SourceError(
            f"{data.origin} is too small to hold out a validation set (every class needs 2+ images); pass --val"
        )
    keep, held = train_test_split(np.arange(len(labels)), test_size=held_count, random_state=seed, stratify=labels)
    return data.subset(torch.as_tensor(np.sort(keep))), data.subset(torch.as_tensor(np.sort(held)))


def normalisation(images: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of the training images, on the 0..1 scale."""
    pixels = images.float().div(255).transpose(0, 1).reshape(images.shape[1], -1)
    return pixels.mean(dim=1).tolist(), pixels.std(dim=1).clamp_min(1e-3).tolist()


# --- the loop ------------------------------------------------------------------------------------


def train(config: TrainConfig, log: Console | None = None) -> dict:
    """Train, validating every epoch; keep the best checkpoint by validation accuracy.

    Returns the metrics of the best epoch.
    """
    log = log or Console(stderr=True, quiet=True)
    out = Path(config.out)
    state = _read_resume_state(out) if config.resume else None
    if not config.resume and not config.overwrite:
        _refuse_to_replace(out)
    if config.tensorboard:
        tensorboard_log.check_available()  # before anything is made or decoded
    _check_outputs(config, log)  # before any data is decoded: a run never finds out at its end that it cannot write
    if state:
        config = _resumed_config(config, state, log)
    init = _initial_model(config) if config.init and not state else None  # read once: weights, input, hash
    if init:
        config = _adopt_initial_model(config, init, log)
    if not state:
        config = config.with_defaults(_new_head_share(config, init) if init else 0.0)
    config.validate()
    if config.tensorboard:
        tensorboard_log.check_available()  # before any data is decoded
    group, device = distributed.join(select_device(config.device))
    # On an error this process just exits: torchrun then stops the others (a barrier here would hang).
    best = _train(config, state, group, device, log if group.is_main else Console(stderr=True, quiet=True), init)
    distributed.leave(group)
    return best


@dataclass
class TrainingRun:
    """What a run holds from one epoch to the next: the model and its optimiser, the data, the record so far."""

    config: TrainConfig
    group: distributed.Group
    device: torch.device
    precision: str  # what autocast runs in: fp32, bf16 or fp16 (device.resolve_precision)
    log: Console
    class_names: list[str]
    preprocess: dict
    network: nn.Module  # the bare model, what is saved
    model: nn.Module  # what trains: the network, or its DistributedDataParallel wrapper
    optimizer: torch.optim.Optimizer
    scheduler: object
    scaler: torch.amp.GradScaler
    criterion: nn.Module
    train_batches: InMemoryBatches
    val_batches: InMemoryBatches
    val_size: int
    val_majority: np.ndarray | None  # with votes: each validation image's majority class (-1: none)
    steps_per_epoch: int
    class_prior: list[float]  # each class's share of the training targets
    mix: object
    provenance: dict
    start_epoch: int = 1
    history: list[dict] = field(default_factory=list)
    best_accuracy: float = -1.0
    best_metrics: dict = field(default_factory=dict)
    tensorboard: tensorboard_log.TensorBoardLog | None = None  # the main process's, with --tensorboard
    curves: CurvesPainter | None = None  # the main process's

    @property
    def out(self) -> Path:
        return Path(self.config.out)

    @property
    def per_batch_scheduler(self):
        return self.scheduler if self.config.schedule in ("onecycle", "cosine") else None

    def val_share(self, everything: bool = False) -> torch.Tensor:
        """The validation images this rank validates (every world-th), or all of them."""
        indices = torch.arange(self.val_size)
        return indices if everything else share_of(indices, self.group.rank, self.group.world, equal=False)

    def val_loader(self, everything: bool = False):
        """The validation batches: this rank's share, or all."""
        return self.val_batches.epoch(self.val_share(everything))

    def scores(self, probs: np.ndarray, targets: np.ndarray, indices: np.ndarray) -> dict:
        """Validation metrics of ``probs`` for the validation images ``indices``: against their labels, or with
        votes against their majority (ties left out, counted), with the votes' own measures beside."""
        if self.val_majority is None:
            return summarize(targets, probs, self.class_names)
        return summarize_votes(targets, self.val_majority[indices], probs, self.class_names)

    def network_state(self) -> dict:
        """What any checkpoint needs to rebuild and feed the model."""
        return {
            "arch": self.config.arch,
            "model_config": dict(self.config.arch_options),
            "class_names": self.class_names,
            "preprocess": self.preprocess,
            "class_prior": self.class_prior,
            "state_dict": _state_dict(self.network),
        }


def _train(
    config: TrainConfig, state: dict | None, group: distributed.Group, device, log: Console, init: dict | None = None
) -> dict:
    run = _set_up(config, state, group, device, log, init)
    if state:
        _resume(run, state)
    if run.start_epoch > config.epochs:
        log.print(f"{run.out}: all {config.epochs} epochs already done")
        return run.best_metrics
    if group.is_main:
        run.curves = CurvesPainter(curves_path(run.out), run.out.name, background=device.type != "cpu")
        if config.tensorboard:
            run.tensorboard = tensorboard_log.TensorBoardLog(config.tensorboard)
    try:
        _epochs(run, config, group, log)
        _finish(run)
    except BaseException:
        if run.curves is not None:
            run.curves.close(wait=False)  # an error or a signal: leave at once (the last drawing stands)
        raise
    finally:
        if run.tensorboard is not None:
            run.tensorboard.close()
    if run.curves is not None:
        with written_whole(curves_path(run.out)):
            run.curves.close()
    return run.best_metrics


def _epochs(run: TrainingRun, config: TrainConfig, group: distributed.Group, log: Console) -> None:
    with _progress(log) as progress:
        for epoch in range(run.start_epoch, config.epochs + 1):
            if config.freeze_epochs:
                _freeze_all_but_the_head(run, frozen=epoch <= config.freeze_epochs)
            started = time.perf_counter()
            # Everything random in an epoch derives from (seed, epoch, rank), so a resumed run repeats it exactly.
            torch.manual_seed(_epoch_seed(config, epoch, group.rank))
            train_loss, train_accuracy = _train_epoch(run, epoch, progress)
            metrics = _validate(run)
            _stop_if_diverged(run, epoch, train_loss, metrics)
            record = _record_epoch(run, epoch, train_loss, train_accuracy, metrics, time.perf_counter() - started)
            with written_whole(run.out):  # a full disk: one line, the earlier files whole
                _save(run, epoch, improved=record["best"])
            if run.tensorboard is not None:
                run.tensorboard.epoch(record, metrics, run.class_names)
            voted = (
                f"  val_bal {metrics['balanced_accuracy']:.4f}  agree {metrics['votes']['tagger_agreement']:.4f}"
                if "votes" in metrics else ""
            )  # fmt: skip
            log.print(
                f"epoch {epoch}/{config.epochs}  loss {train_loss:.4f}  acc {train_accuracy:.4f}  "
                f"val_loss {metrics['loss']:.4f}  val_acc {metrics['accuracy']:.4f}{voted}"
                f"{'  [green]best, saved[/]' if record['best'] else ''}  {record['seconds']:.0f}s"
            )


def _set_up(
    config: TrainConfig, state: dict | None, group: distributed.Group, device, log: Console, init: dict | None = None
) -> TrainingRun:
    """Data, model, optimiser, schedule and loss for a run, fresh or (given ``state``) resumed."""
    if group.active and config.balance == "sampler":
        raise FerError("--balance sampler is not available under torchrun; use --balance loss")
    if group.active and config.freeze_epochs:
        raise FerError("--freeze-epochs is not available under torchrun (every process must train the same layers)")
    train_data, val_data, val_origin, val_path = load_training_data(config, log)
    class_names = train_data.class_names
    if state and state["class_names"] != class_names:
        raise CheckpointError(
            f"{last_path(config.out)} was trained on classes {state['class_names']}, not {class_names}"
        )
    if state:
        preprocess = state["preprocess"]
    elif init:
        preprocess = init["preprocess"]  # its features were learnt on pixels normalised this way
    else:
        mean, std = normalisation(train_data.images)
        preprocess = {"size": config.size, "channels": config.channels, "mean": mean, "std": std}
    processes = f" x {group.world} processes ({'nccl' if device.type == 'cuda' else 'gloo'})" if group.active else ""
    precision = resolve_precision(config.precision, device)
    log.print(
        f"training {config.arch} on {len(train_data):,} images, validating on {len(val_data):,} ({val_origin}); "
        f"{len(class_names)} classes; device {device}{processes}; {describe_precision(precision, device)}"
    )
    network, model = _build_network(config, class_names, state, group, device, init, log)
    optimizer = _make_optimizer(config, model)
    steps_per_epoch = math.ceil(len(train_data) / group.world / config.batch_size)
    # The data stays in memory (on the GPU when it fits), augmented a whole batch at a time there.
    augment = BatchAugment(preprocess, Augmentation.parse(config.augment), device)
    class_prior = _class_prior(train_data, config)
    criterion = _make_criterion(config, train_data.labels, class_prior, device)
    if train_data.votes is not None:
        log.print(_describe_targets(config))
    teaching = _teaching(config, train_data, state, device, log) if config.teachers else None
    if teaching:
        criterion = DistillationLoss(criterion, config.distill_weight, config.distill_temperature)
    return TrainingRun(
        config=config,
        group=group,
        device=device,
        precision=precision,
        log=log,
        class_names=class_names,
        preprocess=preprocess,
        network=network,
        model=model,
        optimizer=optimizer,
        scheduler=_make_scheduler(config, optimizer, steps_per_epoch),
        scaler=grad_scaler(device, precision),
        criterion=criterion,
        train_batches=InMemoryBatches(
            train_data,
            device,
            augment,
            config.batch_size,
            extra=teaching["targets"] if teaching else None,
            targets=training_targets(train_data, config),
        ),  # fmt: skip
        val_batches=InMemoryBatches(val_data, device, augment, batch_size=256, targets=val_data.votes),
        val_size=len(val_data),
        val_majority=None if val_data.majority is None else val_data.majority.numpy(),
        class_prior=class_prior,
        steps_per_epoch=steps_per_epoch,
        mix=batch_mixing(config, len(class_names)),
        provenance={
            **_provenance(config, val_origin, val_path, group, device, val_data),
            "precision": precision,
            "labels": _labels_provenance(config, train_data, val_data),
            **_init_provenance(config, init, state),
            **_commands_provenance(config, state),
            **({"distilled_from": teaching["provenance"]} if teaching else {}),
        },
    )


def _commands_provenance(config: TrainConfig, state: dict | None) -> dict:
    """The command that started the run stays its ``command``; the commands that resumed it are listed after it."""
    if not state:
        return {}
    commands = list(state.get("commands") or ["(not recorded by this older run)"]) + [config.command]
    return {"command": commands[0], "resumed_by": commands[1:]}


def _teaching(config: TrainConfig, train_data: LabelledTensors, state: dict | None, device, log: Console) -> dict:
    """The teachers' soft targets for every training image (cached on disk), and what provenance says of them."""
    teachers = distill.load_teachers(list(config.teachers), train_data.class_names)
    hashes = [teacher.sha256 for teacher in teachers]
    started_with = (state or {}).get("teachers")
    if started_with is not None and [t["sha256"] for t in started_with] != hashes:
        changed = [t.name for t, before in zip(teachers, started_with) if t.sha256 != before["sha256"]]
        raise FerError(
            f"--resume: teacher(s) {', '.join(changed)} changed since the run started (another sha256); "
            "resume with the same files, or start a new run"
        )
    cache_dir = config.teacher_cache or distill.default_cache_dir()
    key = distill.cache_key(teachers, train_data)  # hashes every training image: once
    logits = distill.teacher_logits(teachers, train_data, cache_dir, str(device), log, key)
    log.print(
        f"distilling from {', '.join(config.teachers)} (weight {config.distill_weight}, temperature "
        f"{config.distill_temperature}); their vote is right on {distill.teacher_accuracy(logits, train_data.labels):.1%}"
        " of the training images"
    )
    return {
        "targets": distill.soft_targets(logits, config.distill_temperature),
        "provenance": {
            "teachers": [teacher.describe() for teacher in teachers],
            "weight": config.distill_weight,
            "temperature": config.distill_temperature,
            "views": ["none"],  # the teachers saw each training image once, unaugmented
            "cache_key": key,
        },
    }


def _build_network(
    config: TrainConfig, class_names: list[str], state: dict | None, group: distributed.Group, device, init=None,
    log: Console | None = None,
):  # fmt: skip
    """The model (its initial weights from the seed, from ``--init``'s model, or the resumed ones) on the device, and
    what trains it: the model itself, or under torchrun its DistributedDataParallel wrapper."""
    torch.manual_seed(config.seed)
    network = create_model(config.arch, len(class_names), config.channels, **config.arch_options)
    if state:
        network.load_state_dict(state["state_dict"])
    elif init:
        _start_from(network, init, class_names, log)
    network = prepare_model(network, device, training=True)
    if not group.active:
        return network, network
    wrapped = torch.nn.parallel.DistributedDataParallel(network, device_ids=[device] if device.type == "cuda" else None)
    return network, wrapped


def _initial_model(config: TrainConfig) -> dict:
    """The checkpoint ``--init`` names (a shipped model or a .pt file), with its file's sha256."""
    from ..models.zoo import file_sha256, resolve_model

    if Path(config.init).is_dir():
        raise FerError(f"--init {config.init} is a folder; it takes a model: a shipped name or a checkpoint (.pt)")
    path = resolve_model(config.init).path
    if not path.endswith(".pt"):
        raise FerError(f"--init needs a checkpoint (.pt) to take weights from; {config.init} is an exported model")
    checkpoint = read_checkpoint(path)
    return {**checkpoint, "path": path, "sha256": file_sha256(path)}


def _new_head_share(config: TrainConfig, init: dict) -> float:
    """The share of the classes of DATA that ``init`` does not know (by name or alias): rows of the head that start
    untrained. Read from the data's class names without decoding it (a folder's subfolders, a votes file's columns)."""
    known = {canonical_class(name) for name in init["class_names"]}
    try:
        if config.votes:
            names = read_votes(config.votes, by_row=Path(config.data).is_file()).class_names
        elif Path(config.data).is_dir():
            root = Path(config.data)
            root = root / "train" if (root / "train").is_dir() and not config.val else root
            names = find_labelled_images(root).class_names
        else:
            from ..inputs.data import FER2013_CLASSES

            names = FER2013_CLASSES
    except SourceError:
        return 0.0  # the data's own error comes when it is loaded
    return sum(canonical_class(name) not in known for name in names) / max(len(names), 1)


# What a resumed run takes from its command line: where it runs and writes, and --epochs (to extend it).
RESUME_TAKES = ("out", "device", "precision", "workers", "tensorboard", "teacher_cache", "epochs")


def _resumed_config(config: TrainConfig, state: dict, log: Console) -> TrainConfig:
    """A resumed run keeps the settings it started with: where it runs may change, and --epochs may extend it; any
    other option given is ignored, and the log says which."""
    saved = {**state["config"], "teachers": tuple(state["config"].get("teachers", ()))}
    where = {name: getattr(config, name) for name in RESUME_TAKES if name != "epochs"}
    epochs = saved["epochs"]
    if "epochs" in config.given and config.epochs != saved["epochs"]:
        if config.epochs < state["epoch"]:
            raise FerError(f"--resume --epochs {config.epochs}: the run has done {state['epoch']} epochs already")
        epochs = config.epochs
        log.print(f"extending the run from {saved['epochs']} to {epochs} epochs")
    option = {"data": "DATA", "resume": None, "overwrite": None}
    ignored = [
        option.get(name, f"--{name.replace('_', '-')}") for name in config.given
        if name not in RESUME_TAKES and option.get(name, "") is not None
        and (name not in saved or _differs(getattr(config, name, None), saved[name]))
    ]  # fmt: skip
    if ignored:
        log.print(f"[yellow]note:[/] --resume continues with the run's own settings; ignored: {', '.join(ignored)}")
    return TrainConfig(**{**saved, **where, "epochs": epochs}, resume=True, command=config.command, given=config.given)


def _differs(given, saved) -> bool:
    if isinstance(given, tuple | list) and isinstance(saved, tuple | list):
        return list(given) != list(saved)
    return given != saved


def _check_outputs(config: TrainConfig, log: Console) -> None:
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


def _adopt_initial_model(config: TrainConfig, init: dict, log: Console) -> TrainConfig:
    """A run that starts from a model takes its architecture and input (size, channels) along with its weights."""
    log.print(
        f"starting from {config.init} ({init['arch']}, {init['preprocess']['size']} px, "
        f"{init['preprocess']['channels']} channel(s); classes {escape(', '.join(init['class_names']))})"
    )
    return replace(
        config,
        arch=init["arch"],
        arch_options=dict(init["model_config"]),
        size=init["preprocess"]["size"],
        channels=init["preprocess"]["channels"],
    )


def _start_from(network: nn.Module, init: dict, class_names: list[str], log: Console | None = None) -> None:
    """Copy ``init``'s weights into ``network``, its classifier head row by row: a class of ``class_names`` that
    ``init`` knows, by name or alias (FER+'s anger is angry), keeps its row wherever it was; a new class keeps
    the fresh (seeded) row the network was built with. The log says which is which."""
    source = build_model(init).state_dict()
    head = classifier_head(network)
    fresh = network.state_dict()
    known = {canonical_class(name): row for row, name in enumerate(init["class_names"])}
    rows = [known.get(canonical_class(name)) for name in class_names]
    weights = {name: value for name, value in source.items() if not name.startswith(head + ".")}
    for part in ("weight", "bias"):
        key = f"{head}.{part}"
        if key in fresh:
            weights[key] = torch.stack(
                [
                    source[key][row].to(fresh[key].dtype) if row is not None else fresh[key][i]
                    for i, row in enumerate(rows)
                ]
            )
    network.load_state_dict(weights)
    if log is not None:
        kept = [name for name, row in zip(class_names, rows) if row is not None]
        new = [name for name, row in zip(class_names, rows) if row is None]
        moved = [name for i, (name, row) in enumerate(zip(class_names, rows)) if row is not None and row != i]
        dropped = [
            name for name in init["class_names"] if canonical_class(name) not in map(canonical_class, class_names)
        ]
        log.print(
            f"classifier head: {len(kept)} row(s) kept by class ({escape(', '.join(kept)) or 'none'})"
            + (f", {len(moved)} of them moved to the data's order" if moved else "")
            + (f"; new, untrained: {escape(', '.join(new))}" if new else "")
            + (f"; not in the data, dropped: {escape(', '.join(dropped))}" if dropped else "")
        )


def classifier_head(network: nn.Module) -> str:
    """The name of the network's last linear layer: the one that gives each class its logit."""
    return [name for name, module in network.named_modules() if isinstance(module, nn.Linear)][-1]


def _freeze_all_but_the_head(run: TrainingRun, frozen: bool) -> None:
    head = classifier_head(run.network) + "."
    for name, parameter in run.network.named_parameters():
        parameter.requires_grad_(not frozen or name.startswith(head))


def _make_criterion(config: TrainConfig, labels: torch.Tensor, class_prior: list[float], device) -> nn.Module:
    """Cross-entropy, with label smoothing; with classes weighted by their rarity under ``--balance loss``, or with
    the logits adjusted by the class prior under ``--balance logit-adjusted``."""
    weights = None
    if config.balance == "loss":
        counts = torch.bincount(labels, minlength=len(class_prior)).float()
        weights = (counts.sum() / (len(class_prior) * counts.clamp_min(1))).to(device)
    criterion = nn.CrossEntropyLoss(weight=weights, label_smoothing=config.label_smoothing)
    if config.balance == "logit-adjusted":
        return LogitAdjustedLoss(criterion, torch.as_tensor(log_class_prior(class_prior), dtype=torch.float32))
    return criterion


class LogitAdjustedLoss(nn.Module):
    """The loss of ``logits + log(class prior)`` (Menon et al., "Long-tail learning via logit adjustment", ICLR
    2021): the network's own logits learn the classes as if they were equally common, so a rare class (FER+'s
    contempt, 1.8% of the votes) is not out-voted by its prior. The prior correction chosen after training
    (``--prior-correction``, tau may be negative) then sets how much of the prior the stored model gives back."""

    def __init__(self, loss: nn.Module, log_prior: torch.Tensor):
        super().__init__()
        self.loss = loss
        self.register_buffer("log_prior", log_prior)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, *rest) -> torch.Tensor:
        return self.loss(logits + self.log_prior.to(logits.dtype), targets, *rest)


def _describe_targets(config: TrainConfig) -> str:
    what = "each image's share of the votes" if config.targets == "distribution" else "the majority of the votes"
    if config.label_weight:
        what += f", {config.label_weight:g} of each target its own single label"
    return f"learning {what}; the best epoch is the most accurate against the majority on validation"


def _labels_provenance(config: TrainConfig, train: LabelledTensors, val: LabelledTensors) -> dict:
    """What the checkpoint learnt from and was selected on (one label per image, or votes, and how)."""
    if train.votes is None:
        return {"kind": "one label per image", "selected_on": "accuracy against the validation labels"}
    return {
        "kind": "votes",
        "votes": str(config.votes),
        "targets": config.targets,
        "label_weight": config.label_weight,
        "left_out": {"training": train.left_out, "validation": val.left_out},
        "validation_without_majority": int((val.majority < 0).sum()),
        "selected_on": "accuracy against the majority of the validation votes (ties at the top left out)",
    }


def _provenance(
    config: TrainConfig, val_origin: str, val_path: str | None, group: distributed.Group, device,
    val_data: LabelledTensors | None = None,
) -> dict:  # fmt: skip
    if val_data is not None and val_data.paths is not None:  # votes over a folder: the images themselves
        return {**_provenance(config, val_origin, None, group, device), "val_path": os.path.abspath(val_path),
                "val_images": images_fingerprint(val_data.paths)}  # fmt: skip
    return {
        "train_data": str(config.data),
        "val_data": val_origin,
        "val_path": os.path.abspath(val_path) if val_path else None,  # lets `fer ensemble` notice it is scoring a
        # model on its own validation data (absolute: a relative path means nothing from another folder),
        # also once that data has moved (another machine, another copy): its images by name
        "val_digest": labelled_digest(val_path) if val_path and Path(val_path).is_dir() else None,
        # ...and by content, so that copies and parts of it are recognised too (``ensemble.seen_in_validation``)
        "val_images": validation_images(val_path) if val_path and Path(val_path).is_dir() else None,
        "command": config.command,
        "seed": config.seed,
        "config": _plain_config(config),
        "fer_cli_version": __version__,
        "torch_version": str(torch.__version__),
        "device": str(device),
        "processes": group.world,
    }


def _init_provenance(config: TrainConfig, init: dict | None, state: dict | None = None) -> dict:
    """Which model a run started from (``--init``), by name, file and sha256. A resumed run takes it from its resume
    state: it needs the file no more (and a file changed since is not recorded in its place)."""
    if not config.init:
        return {}
    if init is None and state is not None and state.get("initialised_from"):
        return {"initialised_from": state["initialised_from"]}
    init = init or _initial_model(config)  # a resume state written before it was recorded there
    return {"initialised_from": {"model": config.init, "path": init["path"], "sha256": init["sha256"],
                                 "class_names": list(init["class_names"])}}  # fmt: skip


def _resume(run: TrainingRun, state: dict) -> None:
    """Continue from a resume state: optimiser, schedule, loss scaling, history and best so far."""
    run.optimizer.load_state_dict(state["optimizer"])
    extended = run.config.epochs != state["config"]["epochs"]
    if extended and run.config.schedule in ("onecycle", "cosine"):
        # the schedule had ended (or was ending): the added epochs get one of their own, as a warm restart
        added = replace(run.config, epochs=run.config.epochs - state["epoch"])
        run.scheduler = _make_scheduler(added, run.optimizer, run.steps_per_epoch)
        run.log.print(f"a new {run.config.schedule} schedule over the {added.epochs} added epoch(s)")
    elif run.scheduler is not None and state.get("scheduler"):
        run.scheduler.load_state_dict(state["scheduler"])
    restore_scaler(run.scaler, state["scaler"])
    run.start_epoch = state["epoch"] + 1
    run.history = state["history"]
    run.best_accuracy = state["best_accuracy"]
    run.best_metrics = state["best_metrics"]
    ran_on = state.get("device")  # absent from resume states written before it was recorded
    moved = f" (it ran on {ran_on} until now)" if ran_on and ran_on != str(run.device) else ""
    run.log.print(f"resuming {run.out} at epoch {run.start_epoch} of {run.config.epochs} on {run.device}{moved}")


def _train_epoch(run: TrainingRun, epoch: int, progress: Progress) -> tuple[float, float]:
    """One epoch of training, with a progress bar; mean loss and accuracy over every rank."""
    loader = _epoch_batches(run.config, run.train_batches, epoch, run.group)
    task = progress.add_task(f"epoch {epoch}/{run.config.epochs}", total=len(loader), stats="")

    def on_batch(loss, accuracy):
        stats = {} if loss is None else {"stats": f"loss {loss:.4f}  acc {accuracy:.4f}"}
        progress.update(task, advance=1, **stats)

    loss, accuracy = train_one_epoch(
        run.model,
        loader,
        run.criterion,
        run.optimizer,
        run.per_batch_scheduler,
        run.scaler,
        run.device,
        on_batch=on_batch,
        mix=run.mix,
        precision=run.precision,
    )
    progress.remove_task(task)
    loss, accuracy = distributed.mean_over_ranks(run.group, [loss, accuracy], run.device)
    return loss, accuracy


def _validate(run: TrainingRun) -> dict:
    """The metrics on the validation data (gathered from every rank), its mean loss under ``loss``."""
    share = run.val_share().numpy()
    probs, labels, loss = predict_tensors(run.model, run.val_batches.epoch(torch.from_numpy(share)), run.device,
                                          run.criterion, run.precision)  # fmt: skip
    probs, labels, share, loss_sums = distributed.gather_arrays(
        run.group, probs, labels, share, np.array([loss * len(labels)])
    )
    metrics = run.scores(probs, labels, share)
    metrics["loss"] = float(loss_sums.sum() / max(len(labels), 1))
    if run.scheduler is not None and run.config.schedule == "plateau":
        run.scheduler.step(metrics["accuracy"])
    return metrics


def _stop_if_diverged(run: TrainingRun, epoch: int, train_loss: float, metrics: dict) -> None:
    """A loss or weight that is no longer a number ends the run: such an epoch is never saved, as the best or to
    resume from (the last good epoch's files stay as they were)."""
    weights = all(torch.isfinite(p).all() for p in run.network.parameters())
    if math.isfinite(train_loss) and math.isfinite(metrics["loss"]) and weights:
        return
    what = "the weights" if math.isfinite(train_loss) and math.isfinite(metrics["loss"]) else "the loss"
    raise FerError(
        f"training diverged at epoch {epoch}: {what} became NaN or infinite (learning rate {run.config.learning_rate:g}"
        " too high?); nothing of this epoch was saved. Start again with a lower --lr"
        + (", or --resume to retry from the last good epoch" if epoch > 1 else "")
    )


def _record_epoch(
    run: TrainingRun, epoch: int, train_loss: float, train_accuracy: float, metrics: dict, seconds: float
) -> dict:
    """Append the epoch to the history; an epoch better on validation than any before becomes the best."""
    improved = metrics["accuracy"] > run.best_accuracy
    if improved:
        run.best_accuracy, run.best_metrics = metrics["accuracy"], {**metrics, "epoch": epoch}
    record = {
        "epoch": epoch,
        "train_loss": round(train_loss, 5),
        "train_accuracy": round(train_accuracy, 5),
        "val_loss": round(metrics["loss"], 5),
        "val_accuracy": round(metrics["accuracy"], 5),
        "val_macro_f1": round(metrics["macro_f1"], 5),
        "val_balanced_accuracy": round(metrics["balanced_accuracy"], 5),
        **({"val_tagger_agreement": round(metrics["votes"]["tagger_agreement"], 5)} if "votes" in metrics else {}),
        "lr": run.optimizer.param_groups[0]["lr"],
        "seconds": round(seconds, 2),
        "best": improved,
        "device": str(run.device),
        "precision": run.precision,
    }
    run.history.append(record)
    return record


def _save(run: TrainingRun, epoch: int, improved: bool) -> None:
    """The best checkpoint (when this epoch is it), the history and the resume state; the main process only."""
    if not run.group.is_main:
        return
    network = run.network_state()
    if improved:
        provenance = {**run.provenance, "date": now_iso(), "epoch": epoch, "epochs": run.config.epochs}
        checkpoint = {**network, "temperature": 1.0, "metrics": run.best_metrics, "provenance": provenance}
        save_checkpoint(run.out, checkpoint, half=run.config.half)
    _write_history(history_path(run.out), run.history)
    if run.curves is not None:
        run.curves.update(run.history)
    _save_resume_state(run, network, epoch)


def _finish(run: TrainingRun) -> None:
    """Check that every process ends with the same weights; calibrate the best checkpoint."""
    if run.group.active:
        prints = distributed.fingerprints(run.group, run.network)
        if len(set(prints)) > 1:
            raise FerError(f"the {run.group.world} processes ended with different weights: {prints}")
        run.log.print(f"all {run.group.world} processes hold the same weights (fingerprint {prints[0]})")
    if run.group.is_main:
        with written_whole(run.out):
            correction, calibration = _fit_outputs(run)
        if correction is not None:
            run.log.print(f"validation data: {describe_prior_correction(correction)}")
        run.log.print(f"validation data: {describe(calibration)}")
    if run.tensorboard is not None:
        run.tensorboard.hyperparameters(_plain_config(run.config), run.best_metrics)
    run.log.print(f"best val accuracy {run.best_accuracy:.4f} (epoch {run.best_metrics.get('epoch')}) -> {run.out}")
    if run.group.is_main:
        _say_resume_state_kept(run)


def _say_resume_state_kept(run: TrainingRun) -> None:
    """A finished run keeps its resume state (``--resume --epochs N`` extends it), and says so once, with its size:
    with AdamW it is about three times the checkpoint, which the user may not expect beside it."""
    with contextlib.suppress(OSError):
        size = last_path(run.out).stat().st_size
        run.log.print(
            f"{escape(str(last_path(run.out)))} ({size / 1e6:,.1f} MB) kept: --resume --epochs N extends the run; "
            "delete it otherwise"
        )


class CurvesPainter:
    """Redraws NAME.curves.png from the history after every epoch.

    On a CPU it draws in place: an epoch there takes tens of seconds, a drawing about 0.2 s of CPU.
    On a GPU an epoch can take 2 s, so it draws in a helper process and the loop never waits on
    matplotlib: the newest history is drawn as soon as the previous drawing is done (an epoch that
    ends meanwhile is folded into the next drawing), and ``close`` waits for the last one.
    """

    def __init__(self, path: Path, title: str, background: bool):
        self.path, self.title = path, title
        self.pool: ProcessPoolExecutor | None = None
        if background:
            self.pool = ProcessPoolExecutor(
                1, mp_context=multiprocessing.get_context("spawn"), initializer=stay_quiet_and_die_with_parent
            )
        self.drawing: Future | None = None
        self.waiting: list[dict] | None = None  # the newest history, not yet handed over
        if self.pool is not None:
            self.drawing = self.pool.submit(int)  # start the helper (~0.4 s) while the first epoch runs

    def update(self, history: list[dict]) -> None:
        if self.pool is None:
            figures.draw_training_curves(history, self.path, self.title)
            return
        self.waiting = [dict(row) for row in history]
        self._hand_over()

    def _hand_over(self) -> None:
        if self.drawing is not None:
            if not self.drawing.done():
                return
            self.drawing.result()  # a drawing that failed (a full disk) fails the run, as in place
        if self.waiting is not None:
            self.drawing = self.pool.submit(figures.draw_training_curves, self.waiting, self.path, self.title)
            self.waiting = None

    def close(self, wait: bool = True) -> None:
        """Finish the last drawing (``wait``), or leave it (and the helper) at once."""
        if self.pool is None:
            return
        try:
            if wait:
                if self.drawing is not None:
                    self.drawing.result()
                    self.drawing = None
                self._hand_over()
                if self.drawing is not None:
                    self.drawing.result()
        finally:
            self.pool.shutdown(wait=wait, cancel_futures=not wait)
            self.pool = None


def restore_scaler(scaler: torch.amp.GradScaler, saved: dict) -> None:
    """Continue a run's loss scaling where it can: a run that ran without scaling (on a CPU) and
    resumes on a GPU starts a fresh scale; one that resumes on a CPU drops the GPU's scale."""
    if scaler.is_enabled() and saved:
        scaler.load_state_dict(saved)


def _fit_outputs(run: TrainingRun) -> tuple[dict | None, dict]:
    """On all the validation data, with the best checkpoint's weights as stored (float16 or not): choose its prior
    correction (``--prior-correction``), then fit its temperature to the corrected logits. With votes both are fitted
    on the images with a majority, against it. With a correction the stored metrics become the corrected model's."""
    out, config = run.out, run.config
    checkpoint = read_checkpoint(out)
    model = prepare_model(build_model(checkpoint), run.device)
    # in prediction's precision (float32 on a CPU): the correction and temperature fit the logits users will get
    probs, targets, _ = predict_tensors(model, run.val_loader(everything=True), run.device)
    labels = targets if run.val_majority is None else run.val_majority
    clear = labels >= 0
    fitted_on = run.provenance["val_data"] + (
        ", against the majority of the votes" if run.val_majority is not None else ""
    )
    log_probs = np.log(np.clip(probs, 1e-12, None))
    correction = choose_prior_correction(log_probs[clear], labels[clear], run.class_prior, config.prior_correction,
                                         fitted_on)  # fmt: skip
    tau = correction["tau"] if correction else 0.0
    adjusted = log_probs - tau * log_class_prior(run.class_prior)
    calibration = calibrate(softmax(adjusted)[clear], labels[clear], fitted_on=fitted_on)
    checkpoint["temperature"] = float(calibration["temperature"])
    checkpoint["prior_correction"] = tau
    metrics = dict(checkpoint.get("metrics", {}))
    if tau:  # the model as it now predicts (the best epoch's figures were without the correction)
        metrics = {**run.scores(softmax(adjusted), targets, np.arange(len(targets))), "epoch": metrics.get("epoch")}
    checkpoint["metrics"] = {
        **metrics,
        "calibration": calibration,
        **({"prior_correction": correction} if correction else {}),
    }
    save_checkpoint(out, checkpoint)
    return correction, calibration


def _save_resume_state(run: TrainingRun, network: dict, epoch: int) -> None:
    save_checkpoint(
        last_path(run.out),
        {
            **network,
            "training": True,
            "epoch": epoch,
            "optimizer": run.optimizer.state_dict(),
            "scheduler": run.scheduler.state_dict() if run.scheduler is not None else None,
            "scaler": run.scaler.state_dict(),
            "history": run.history,
            "best_accuracy": run.best_accuracy,
            "best_metrics": run.best_metrics,
            "config": _plain_config(run.config),
            "device": str(run.device),  # where the last epoch ran; a resumed run may move
            "teachers": run.provenance.get("distilled_from", {}).get("teachers"),  # a resumed run checks them
            "initialised_from": run.provenance.get("initialised_from"),
            "commands": [run.provenance["command"], *run.provenance.get("resumed_by", [])],  # kept by a resumed run
        },
    )


GLOBAL_STREAM, AUGMENT_STREAM, ORDER_STREAM = 0, 1, 2


def _epoch_seed(config: TrainConfig, epoch: int, rank: int, stream: int = GLOBAL_STREAM) -> int:
    """The seed of one of an epoch's random streams: torch's global one (dropout, mixup), the
    augmentations', or the order's (asked for with rank 0: every rank shares one shuffle)."""
    return config.seed * 100_003 + epoch + 7_919 * rank + 1_000_003 * stream


def batch_mixing(config: TrainConfig, num_classes: int):
    """MixUp and/or CutMix on whole batches (torchvision v2), or None; labels become class probabilities."""
    mixers = []
    if config.mixup > 0:
        mixers.append(v2.MixUp(alpha=config.mixup, num_classes=num_classes))
    if config.cutmix > 0:
        mixers.append(v2.CutMix(alpha=config.cutmix, num_classes=num_classes))
    if not mixers:
        return None
    return mixers[0] if len(mixers) == 1 else v2.RandomChoice(mixers)


def train_one_epoch(
    model, loader, criterion, optimizer, scheduler, scaler, device, on_batch=None, mix=None, report_every: int = 25,
    precision: str | None = None,
) -> tuple[float, float]:  # fmt: skip
    """One pass over ``loader``; ``scheduler`` (if given) steps every batch; ``mix`` (MixUp/CutMix)
    blends each batch on the device. Returns mean loss and accuracy (against the unmixed labels).

    The running sums stay on the device, so the host never waits for the GPU inside the loop:
    ``on_batch(loss, accuracy)`` is called every batch, with figures refreshed (one wait) every
    ``report_every`` batches and at the end, and ``None`` for both in between.
    """
    model.train()
    total_loss = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    for step, (images, labels, *teacher) in enumerate(loader, start=1):  # teacher: with --teacher, soft targets
        images, labels = to_device(images, device), labels.to(device, non_blocking=True)
        teacher = [t.to(device, non_blocking=True) for t in teacher]
        targets = labels
        if mix is not None:
            images, targets = mix(images, labels)
        with autocast(device, precision):
            logits = model(images)
            loss = criterion(logits, targets, *teacher)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        if scheduler is not None:
            scheduler.step()
        batch = len(labels)
        total_loss += loss.detach().float() * batch
        correct += (logits.detach().argmax(dim=1) == (labels.argmax(dim=1) if labels.ndim == 2 else labels)).sum()
        seen += batch
        if on_batch:
            if step % report_every == 0 or step == len(loader):
                on_batch(total_loss.item() / seen, correct.item() / seen)
            else:
                on_batch(None, None)
    if seen == 0:
        return 0.0, 0.0
    return total_loss.item() / seen, correct.item() / seen


@torch.no_grad()
def predict_tensors(
    model, loader, device, criterion=None, precision: str | None = None
) -> tuple[np.ndarray, np.ndarray, float]:
    """Softmax probabilities and labels (or the loader's targets, e.g. vote shares) for a labelled loader, and the
    mean loss if ``criterion`` given; in ``precision`` (the training run's), by default prediction's."""
    model.eval()
    all_probs, all_labels, total_loss = [], [], 0.0
    for images, labels in loader:
        images = to_device(images, device)
        with autocast(device, precision):
            logits = model(images).float()
        if criterion is not None:
            total_loss += criterion(logits, labels.to(device)).item() * len(labels)
        all_probs.append(torch.softmax(logits, dim=1).cpu())
        all_labels.append(labels.cpu())  # the labels live wherever the data does, the GPU included
    labels = torch.cat(all_labels).numpy()
    return torch.cat(all_probs).numpy(), labels, total_loss / max(len(labels), 1)


def _epoch_batches(config: TrainConfig, batches: InMemoryBatches, epoch: int, group: distributed.Group):
    """This rank's augmented batches for one epoch.

    The order depends on (seed, epoch) alone, so every rank shares one shuffle and takes an
    equal part of it; the augmentations also depend on the rank.
    """
    shuffle = torch.Generator().manual_seed(_epoch_seed(config, epoch, rank=0, stream=ORDER_STREAM))
    order = shuffled_order(batches.labels, shuffle, balanced=config.balance == "sampler")
    order = share_of(order, group.rank, group.world, equal=True)
    augmentations = torch.Generator().manual_seed(_epoch_seed(config, epoch, group.rank, AUGMENT_STREAM))
    return batches.epoch(order, augmentations, drop_last=_drops_last_batch(len(order), config.batch_size))


def _drops_last_batch(images: int, batch_size: int) -> bool:
    """Whether an epoch leaves out its last, partial batch: only when it is a sliver (under a quarter of a batch,
    or one image, which batch norm cannot train on) after at least one whole batch. 150 images at batch 64 train
    on all 150 (two batches of 64 and one of 22), not on 128."""
    left = images % batch_size
    return images > batch_size and 0 < left < max(2, batch_size // 4)


def _make_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    if config.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.decay)
    return torch.optim.SGD(
        model.parameters(), lr=config.learning_rate, momentum=0.9, nesterov=True, weight_decay=config.decay
    )


def _make_scheduler(config: TrainConfig, optimizer, steps_per_epoch: int):
    total_steps = config.epochs * steps_per_epoch
    if config.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=config.learning_rate, total_steps=total_steps, pct_start=0.15
        )
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    if config.schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=0.75, patience=5)
    return None


def _state_dict(model: nn.Module) -> dict:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def _plain_config(config: TrainConfig) -> dict:
    return {
        k: v
        for k, v in asdict(config).items()
        if k not in ("resume", "overwrite", "command", "tensorboard", "teacher_cache", "given")
    }


def _refuse_to_replace(out: Path) -> None:
    """A new run never silently replaces an earlier one's checkpoint, history or resume state."""
    earlier = [path for path in (out, history_path(out), last_path(out)) if path.exists()]
    if not earlier:
        return
    resumable = "--resume continues that run if it is unfinished, " if last_path(out).exists() else ""
    raise FerError(
        f"{out}: an earlier run's files are there ({', '.join(path.name for path in earlier)}); "
        f"{resumable}--overwrite replaces them, or choose another --out"
    )


def _read_resume_state(out: Path) -> dict | None:
    path = last_path(out)
    if not path.exists():
        raise CheckpointError(f"--resume: nothing to resume, {path} does not exist")
    state = read_checkpoint(path)
    if not state.get("training"):
        raise CheckpointError(f"--resume: {path} holds no training state")
    return state


def _write_history(path: Path, history: list[dict]) -> None:
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


def _progress(log: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[stats]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=log,
        transient=True,
    )
