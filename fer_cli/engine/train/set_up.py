"""A run's parts: ``TrainingRun`` (what a run holds from one epoch to the next) and how it is set up, fresh or
resumed: data, model, optimiser, schedule, loss, the teachers' targets with ``--teacher``."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from torch import nn

from ...device import describe_precision, grad_scaler, prepare_model, resolve_precision
from ...errors import CheckpointError, FerError
from ...inputs.augment import Augmentation, BatchAugment
from ...inputs.batches import InMemoryBatches, share_of
from ...inputs.data import LabelledTensors
from ...models.architectures import create_model
from ...outputs import tensorboard as tensorboard_log
from .. import distill, distributed
from ..distill import DistillationLoss
from ..metrics import summarize, summarize_votes
from .config import TrainConfig
from .curves import CurvesPainter
from .data import class_prior_of, describe_targets, load_training_data, normalisation, training_targets
from .fine_tuning import start_from
from .optimisation import batch_mixing, make_criterion, make_optimizer, make_scheduler
from .provenance import commands_provenance, init_provenance, labels_provenance, run_provenance
from .run_files import last_path


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


def set_up_run(
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
    optimizer = make_optimizer(config, model)
    steps_per_epoch = math.ceil(len(train_data) / group.world / config.batch_size)
    # The data stays in memory (on the GPU when it fits), augmented a whole batch at a time there.
    augment = BatchAugment(preprocess, Augmentation.parse(config.augment), device)
    class_prior = class_prior_of(train_data, config)
    criterion = make_criterion(config, train_data.labels, class_prior, device)
    if train_data.votes is not None:
        log.print(describe_targets(config))
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
        scheduler=make_scheduler(config, optimizer, steps_per_epoch),
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
            **run_provenance(config, val_origin, val_path, group, device, val_data),
            "precision": precision,
            "labels": labels_provenance(config, train_data, val_data),
            **init_provenance(config, init, state),
            **commands_provenance(config, state),
            **({"distilled_from": teaching["provenance"]} if teaching else {}),
        },
    )


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
        start_from(network, init, class_names, log)
    network = prepare_model(network, device, training=True)
    if not group.active:
        return network, network
    wrapped = torch.nn.parallel.DistributedDataParallel(network, device_ids=[device] if device.type == "cuda" else None)
    return network, wrapped


def _state_dict(model: nn.Module) -> dict:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
