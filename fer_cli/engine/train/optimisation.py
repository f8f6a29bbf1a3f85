"""What moves the weights: the optimiser, the learning-rate schedule, the loss (label smoothing, class balance,
logit adjustment) and MixUp/CutMix."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.transforms import v2

from ..calibration import log_class_prior
from .config import TrainConfig


def make_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    if config.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.decay)
    return torch.optim.SGD(
        model.parameters(), lr=config.learning_rate, momentum=0.9, nesterov=True, weight_decay=config.decay
    )


def make_scheduler(config: TrainConfig, optimizer, steps_per_epoch: int):
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


def make_criterion(config: TrainConfig, labels: torch.Tensor, class_prior: list[float], device) -> nn.Module:
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
