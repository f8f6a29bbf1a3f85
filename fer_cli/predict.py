"""The one prediction path: image paths in, faces with class probabilities out, streamed batch by batch.

Images are read, searched for faces (``faces.FaceFinder``) and transformed in DataLoader
workers; each distinct preprocessing among the models is applied once per face, so an ensemble
of models that share it decodes every image once. All faces of a batch go through each model
together. Unreadable inputs travel through the same stream as failures, in input order.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .checkpoint import Classifier
from .data import READ_ERRORS, MissingInput, eval_transform, read_image
from .device import autocast, prepare_model, to_device
from .errors import ModelError
from .faces import FaceFinder, FacePolicy
from .results import Prediction


@dataclass
class FaceOutcome:
    """One face of an input: where it is and its class probabilities from each model (M, C)."""

    index: int
    box: tuple[int, int, int, int]
    score: float | None
    probs: np.ndarray
    fallback: bool = False  # the whole image, standing in because no face was found


@dataclass
class Outcome:
    """One input: its faces (possibly none), or the reason it could not be read."""

    path: str
    faces: list[FaceOutcome] = field(default_factory=list)
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
    """Reads each input once, finds its faces, and applies every distinct preprocessing to each face."""

    def __init__(self, items: list[str | MissingInput], preprocesses: list[dict], finder: FaceFinder):
        self.items = items
        self.preprocesses = preprocesses
        self.transforms = [eval_transform(p) for p in preprocesses]
        self.finder = finder

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        item = self.items[index]
        if isinstance(item, MissingInput):
            return index, [], [], item.reason
        try:
            image = read_image(item, channels=0)  # grayscale files stay grayscale: no needless conversion
            faces = self.finder.find(image)
            # Each face converted as training images were: 8-bit grayscale or RGB, then the model's transform.
            tensors = [
                [t(_to_channels(face.crop, p["channels"])) for p, t in zip(self.preprocesses, self.transforms)]
                for face in faces
            ]
        except READ_ERRORS as error:
            return index, [], [], _describe_read_error(item, error)
        return index, [(face.index, face.box, face.score, face.fallback) for face in faces], tensors, None


def _to_channels(image: Image.Image, channels: int) -> Image.Image:
    mode = "L" if channels == 1 else "RGB"
    return image if image.mode == mode else image.convert(mode)


def _describe_read_error(path: str, error: Exception) -> str:
    if os.path.isfile(path) and os.path.getsize(path) == 0:
        return "empty file"
    if isinstance(error, UnidentifiedImageError):
        return "not an image (or an unsupported format)"
    return f"cannot read image: {str(error).splitlines()[0] if str(error) else type(error).__name__}"


def _collate(batch):
    """Stack every face of the batch per preprocessing, remembering which input each came from."""
    owners = [(index, place) for index, places, _, _ in batch for place in places]
    faces = [tensors for _, _, face_tensors, _ in batch for tensors in face_tensors]
    stacks = [torch.stack([tensors[k] for tensors in faces]) for k in range(len(faces[0]))] if faces else []
    inputs = [(index, error) for index, _, _, error in batch]
    return inputs, owners, stacks


def predict_stream(
    classifiers: list[Classifier],
    items: Iterable[str | MissingInput],
    device: torch.device,
    batch_size: int = 64,
    workers: int = 2,
    faces: FacePolicy | str = FacePolicy.auto,
    whole_image_if_no_face: bool = False,
) -> Iterator[list[Outcome]]:
    """Yield, per batch of inputs and in input order, each input's faces with every model's probabilities.

    Probabilities are temperature-scaled softmax outputs with columns in ``align_classes`` order.
    Faces are found in the DataLoader workers, on the CPU beside decoding, which keeps memory flat
    (only crops leave a worker); with ``workers=0`` on CUDA the detector runs on the GPU.
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
    detector_device = str(device) if workers == 0 and device.type == "cuda" else "cpu"
    finder = FaceFinder(faces, device=detector_device, whole_image_if_none=whole_image_if_no_face)

    loader = torch.utils.data.DataLoader(
        _InputImages(items, preprocesses, finder),
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=_collate,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
    )
    with torch.inference_mode():
        for inputs, owners, stacks in loader:
            outcomes = {index: Outcome(_path(items[index]), error=error) for index, error in inputs}
            if owners:
                stacked = np.stack(
                    [
                        _probabilities(model, classifier, to_device(stacks[k], device), order)
                        for model, classifier, k, order in zip(models, classifiers, which_input, columns)
                    ],
                    axis=1,
                )  # (faces, M, C)
                for row, (index, (face, box, score, fallback)) in enumerate(owners):
                    outcomes[index].faces.append(FaceOutcome(face, box, score, stacked[row], fallback))
            yield [outcomes[index] for index, _ in inputs]


def _probabilities(model, classifier: Classifier, inputs: torch.Tensor, order: list[int]) -> np.ndarray:
    with autocast(inputs.device):
        logits = model(inputs).float()
    return torch.softmax(logits / classifier.temperature, dim=1)[:, order].cpu().numpy()


def _path(item: str | MissingInput) -> str:
    return item.source if isinstance(item, MissingInput) else item


def to_predictions(outcome: Outcome, vote, class_names: list[str], model: str) -> list[Prediction]:
    """One Prediction per face of the outcome, with ``vote`` turning (N, M, C) into (N, C);
    one row saying so for an input without a face or that could not be read."""
    if outcome.error is not None:
        return [Prediction(path=outcome.path, error=outcome.error, model=model)]
    if not outcome.faces:
        return [Prediction(path=outcome.path, faces=0, model=model)]
    final = vote(np.stack([face.probs for face in outcome.faces]))
    predictions = []
    for face, probs in zip(outcome.faces, final):
        best = int(np.argmax(probs))
        predictions.append(
            Prediction(
                path=outcome.path,
                face=face.index,
                faces=len(outcome.faces),
                box=face.box,
                detector_score=face.score,
                label=class_names[best],
                confidence=float(probs[best]),
                probabilities={name: float(p) for name, p in zip(class_names, probs)},
                model=model,
            )
        )
    return predictions
