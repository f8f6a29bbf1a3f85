"""The one prediction path: image paths in, class probabilities out, streamed batch by batch.

Images are read and transformed in DataLoader workers; each distinct preprocessing among the
models is applied once per image, so an ensemble of models that share it decodes every image
once. Unreadable inputs travel through the same stream as failures, in input order.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from PIL import UnidentifiedImageError

from .checkpoint import Classifier
from .data import READ_ERRORS, MissingInput, eval_transform, read_image
from .device import autocast, prepare_model, to_device
from .errors import ModelError
from .results import Prediction


@dataclass
class Outcome:
    """One input: its class probabilities from each model (M, C), or the reason it failed."""

    path: str
    probs: np.ndarray | None = None
    error: str | None = None


def align_classes(classifiers: list[Classifier]) -> list[str]:
    """The class order all models share (the first model's); refuse models with other class sets."""
    reference = classifiers[0].class_names
    for classifier in classifiers[1:]:
        if sorted(classifier.class_names) != sorted(reference):
            only_here = sorted(set(classifier.class_names) - set(reference))
            only_there = sorted(set(reference) - set(classifier.class_names))
            raise ModelError(
                f"models '{classifiers[0].name}' and '{classifier.name}' predict different classes "
                f"(only in {classifier.name}: {', '.join(only_here) or '-'}; "
                f"only in {classifiers[0].name}: {', '.join(only_there) or '-'}); they cannot vote together"
            )
    return list(reference)


def _preprocess_key(preprocess: dict) -> tuple:
    return (preprocess["size"], preprocess["channels"], tuple(preprocess["mean"]), tuple(preprocess["std"]))


class _InputImages(torch.utils.data.Dataset):
    """Reads each input once and applies every distinct preprocessing the models need."""

    def __init__(self, items: list[str | MissingInput], preprocesses: list[dict]):
        self.items = items
        self.preprocesses = preprocesses
        self.transforms = [eval_transform(p) for p in preprocesses]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        item = self.items[index]
        if isinstance(item, MissingInput):
            return index, None, item.reason
        try:
            # One read per colour mode, then each model's own resize and normalisation.
            images = {channels: read_image(item, channels) for channels in {p["channels"] for p in self.preprocesses}}
            return index, [t(images[p["channels"]]) for p, t in zip(self.preprocesses, self.transforms)], None
        except READ_ERRORS as error:
            return index, None, _describe_read_error(item, error)


def _describe_read_error(path: str, error: Exception) -> str:
    if os.path.isfile(path) and os.path.getsize(path) == 0:
        return "empty file"
    if isinstance(error, UnidentifiedImageError):
        return "not an image (or an unsupported format)"
    return f"cannot read image: {str(error).splitlines()[0] if str(error) else type(error).__name__}"


def _collate(batch):
    """Stack the readable images; pass failures through as (index, reason)."""
    good = [(index, tensors) for index, tensors, error in batch if error is None]
    failed = [(index, error) for index, _, error in batch if error is not None]
    indices = [index for index, _ in good]
    stacks = [torch.stack([tensors[k] for _, tensors in good]) for k in range(len(good[0][1]))] if good else []
    return indices, stacks, failed


def predict_stream(
    classifiers: list[Classifier],
    items: Iterable[str | MissingInput],
    device: torch.device,
    batch_size: int = 64,
    workers: int = 2,
) -> Iterator[list[Outcome]]:
    """Yield, per batch and in input order, each input's probabilities from every model.

    Probabilities are temperature-scaled softmax outputs with columns in ``align_classes`` order.
    """
    class_names = align_classes(classifiers)
    items = list(items)
    if not items:
        return
    # Models that share a preprocessing share its input tensor.
    distinct: dict[tuple, dict] = {}
    for classifier in classifiers:
        distinct.setdefault(_preprocess_key(classifier.preprocess), classifier.preprocess)
    keys, preprocesses = list(distinct), list(distinct.values())
    which_input = [keys.index(_preprocess_key(c.preprocess)) for c in classifiers]
    columns = [[c.class_names.index(name) for name in class_names] for c in classifiers]
    models = [prepare_model(c.model, device).eval() for c in classifiers]

    loader = torch.utils.data.DataLoader(
        _InputImages(items, preprocesses),
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=_collate,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
    )
    with torch.inference_mode():
        for indices, stacks, failed in loader:
            outcomes = {index: Outcome(_path(items[index]), error=error) for index, error in failed}
            if indices:
                inputs = [to_device(stack, device) for stack in stacks]
                per_model = []
                for model, classifier, k, order in zip(models, classifiers, which_input, columns):
                    with autocast(device):
                        logits = model(inputs[k]).float()
                    probs = torch.softmax(logits / classifier.temperature, dim=1)[:, order]
                    per_model.append(probs.cpu().numpy())
                stacked = np.stack(per_model, axis=1)  # (B, M, C)
                for row, index in enumerate(indices):
                    outcomes[index] = Outcome(_path(items[index]), probs=stacked[row])
            yield [outcomes[index] for index in sorted(outcomes)]


def _path(item: str | MissingInput) -> str:
    return item.source if isinstance(item, MissingInput) else item


def to_prediction(outcome: Outcome, probs: np.ndarray | None, class_names: list[str], model: str) -> Prediction:
    """Render one outcome (with its final probability vector) as a Prediction."""
    if outcome.error is not None or probs is None:
        return Prediction(path=outcome.path, error=outcome.error, model=model)
    best = int(np.argmax(probs))
    return Prediction(
        path=outcome.path,
        label=class_names[best],
        confidence=float(probs[best]),
        probabilities={name: float(p) for name, p in zip(class_names, probs)},
        model=model,
    )
