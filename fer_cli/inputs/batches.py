"""A labelled dataset held in memory, on the training device when it fits, served as batches.

Training decodes its images once (``data``); every epoch then only draws an order, slices
batches out of the uint8 tensor where it lives and augments them there (``augment``): no
per-image Python, no worker processes, no copies from the CPU when the data sits on the GPU.
"""

from __future__ import annotations

import torch

from .augment import BatchAugment
from .data import LabelledTensors

DEVICE_SHARE = 0.25  # keep the data on the GPU when it takes at most this share of its free memory


class InMemoryBatches:
    """Batches of (normalised images, targets) on ``device``, in the given order of indices.

    The targets are the labels, or ``targets`` when given: a row per image, e.g. each image's distribution over
    the classes (votes); ``labels`` stay what sampling balances on. With a ``generator`` the images are augmented
    by ``augment``; without one only normalised. ``extra``, a tensor with a row per image (a distilling run's soft
    targets), adds its rows to each batch.
    """

    def __init__(
        self,
        data: LabelledTensors,
        device: torch.device,
        augment: BatchAugment,
        batch_size: int,
        extra: torch.Tensor | None = None,
        targets: torch.Tensor | None = None,
    ):
        self.device = device
        self.images = _place(data.images, device)
        self.labels = data.labels.to(self.images.device)
        self.targets = self.labels if targets is None else targets.to(self.images.device)
        self.extra = extra.to(self.images.device) if extra is not None else None
        self.augment = augment
        self.batch_size = batch_size

    def epoch(self, order: torch.Tensor, generator: torch.Generator | None = None, drop_last: bool = False):
        """An iterable over one pass in ``order``; ``len()`` gives its number of batches."""
        return _Epoch(self, order, generator, drop_last)


class _Epoch:
    def __init__(self, batches: InMemoryBatches, order: torch.Tensor, generator, drop_last: bool):
        self.batches, self.order, self.generator = batches, order, generator
        size = batches.batch_size
        self.count = len(order) // size if drop_last and len(order) >= size else -(-len(order) // size)

    def __len__(self) -> int:
        return self.count

    def __iter__(self):
        source, size = self.batches, self.batches.batch_size
        order = self.order.to(source.images.device)
        for start in range(0, self.count * size, size):
            index = order[start : start + size]
            images = source.images[index].to(source.device, non_blocking=True)
            labels = source.targets[index].to(source.device, non_blocking=True)
            extra = () if source.extra is None else (source.extra[index].to(source.device, non_blocking=True),)
            if self.generator is None:
                yield source.augment.normalise(images), labels, *extra
            else:
                yield source.augment(images, self.generator), labels, *extra


def shuffled_order(labels: torch.Tensor, generator: torch.Generator, balanced: bool = False) -> torch.Tensor:
    """A random permutation; ``balanced``: as many draws, with replacement, each class equally likely."""
    if balanced:
        labels = labels.cpu()  # the generator draws on the CPU, wherever the data lives
        weights = (1.0 / torch.bincount(labels).double())[labels]
        return torch.multinomial(weights, len(weights), replacement=True, generator=generator)
    return torch.randperm(len(labels), generator=generator)


def share_of(order: torch.Tensor, rank: int, world: int, equal: bool) -> torch.Tensor:
    """Rank ``rank``'s share of ``order`` (every world-th item); ``equal``: all shares one length."""
    share = order[rank::world]
    return share[: len(order) // world] if equal else share


def _place(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    if device.type != "cuda":
        return images
    free, _ = torch.cuda.mem_get_info(device)
    if images.numel() * images.element_size() <= DEVICE_SHARE * free:
        return images.to(device)
    return images.pin_memory()  # too big for the GPU: batches are copied over as they are needed
