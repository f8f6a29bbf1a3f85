"""One epoch: this rank's shuffled, augmented batches (reproducible from the seed and the epoch), the training
pass, validation, the divergence check, and the epoch's row of the history."""

from __future__ import annotations

import math

import numpy as np
import torch
from rich.progress import Progress

from ...device import autocast, to_device
from ...errors import FerError
from ...inputs.batches import InMemoryBatches, share_of, shuffled_order
from ...models.classifier import log_class_prior
from .. import distributed
from .config import TrainConfig
from .set_up import TrainingRun

GLOBAL_STREAM, AUGMENT_STREAM, ORDER_STREAM = 0, 1, 2


def epoch_seed(config: TrainConfig, epoch: int, rank: int, stream: int = GLOBAL_STREAM) -> int:
    """The seed of one of an epoch's random streams: torch's global one (dropout, mixup), the
    augmentations', or the order's (asked for with rank 0: every rank shares one shuffle)."""
    return config.seed * 100_003 + epoch + 7_919 * rank + 1_000_003 * stream


def _epoch_batches(config: TrainConfig, batches: InMemoryBatches, epoch: int, group: distributed.Group):
    """This rank's augmented batches for one epoch.

    The order depends on (seed, epoch) alone, so every rank shares one shuffle and takes an
    equal part of it; the augmentations also depend on the rank.
    """
    shuffle = torch.Generator().manual_seed(epoch_seed(config, epoch, rank=0, stream=ORDER_STREAM))
    order = shuffled_order(batches.labels, shuffle, balanced=config.balance == "sampler")
    order = share_of(order, group.rank, group.world, equal=True)
    augmentations = torch.Generator().manual_seed(epoch_seed(config, epoch, group.rank, AUGMENT_STREAM))
    return batches.epoch(order, augmentations, drop_last=_drops_last_batch(len(order), config.batch_size))


def _drops_last_batch(images: int, batch_size: int) -> bool:
    """Whether an epoch leaves out its last, partial batch: only when it is a sliver (under a quarter of a batch,
    or one image, which batch norm cannot train on) after at least one whole batch. 150 images at batch 64 train
    on all 150 (two batches of 64 and one of 22), not on 128."""
    left = images % batch_size
    return images > batch_size and 0 < left < max(2, batch_size // 4)


def train_epoch(run: TrainingRun, epoch: int, progress: Progress) -> tuple[float, float]:
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


def validate(run: TrainingRun) -> dict:
    """The metrics on the validation data (gathered from every rank), its mean loss under ``loss``."""
    share = run.val_share().numpy()
    probs, labels, loss = predict_tensors(run.model, run.val_batches.epoch(torch.from_numpy(share)), run.device,
                                          run.criterion, run.precision)  # fmt: skip
    probs, labels, share, loss_sums = distributed.gather_arrays(
        run.group, probs, labels, share, np.array([loss * len(labels)])
    )
    metrics = run.scores(as_the_loss_sees_them(probs, run.class_prior, run.config.balance), labels, share)
    metrics["loss"] = float(loss_sums.sum() / max(len(labels), 1))
    if run.scheduler is not None and run.config.schedule == "plateau":
        run.scheduler.step(metrics["accuracy"])
    return metrics


def as_the_loss_sees_them(probs: np.ndarray, class_prior: list[float], balance: str) -> np.ndarray:
    """The probabilities an epoch is scored and chosen by: the network's own, or under ``--balance logit-adjusted``
    those of its logits plus the log class prior, which is what that loss fits to the targets. The network's own
    logits there are the balanced ones (every class as if equally common): scored as they are, accuracy against
    FER+'s majority fell as they grew more balanced, and a run kept its first epoch. The prior correction fitted at
    the end starts from the network's own logits either way (a negative tau gives the prior back)."""
    if balance != "logit-adjusted":
        return probs
    weighted = probs * np.exp(
        log_class_prior(class_prior)
    )  # softmax(logits + log prior), the prior floored as everywhere
    return (weighted / weighted.sum(axis=1, keepdims=True)).astype(probs.dtype)


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


def stop_if_diverged(run: TrainingRun, epoch: int, train_loss: float, metrics: dict) -> None:
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


def record_epoch(
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
