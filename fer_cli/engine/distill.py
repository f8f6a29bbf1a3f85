"""Knowledge distillation (`fer train --teacher MODEL ...`): a student learns from the labels and
from its teachers' softened probabilities (Hinton, Vinyals and Dean, 2015).

The teachers run once over the training images, before the first epoch; their calibrated logits
are cached on disk under a key made of the teachers' sha256 and the images' content, so a run on a
CPU pays for its teachers once, ``--resume`` and later runs on the same data reuse the cache, and a
changed teacher (or changed data) is a new key. Each training batch then carries its images'
cached teacher probabilities: the teachers see the unaugmented image, the student an augmented
view of it (offline distillation; running the teachers on every augmented batch would cost a CPU
about 15 times the student's own epoch).

The loss mixes the two targets:

    (1 - A) * cross_entropy(student, label) + A * T^2 * KL(teachers_T || student_T)

where ``_T`` is a softmax at temperature T and ``teachers_T`` the mean of the teachers' softened
probabilities. T^2 keeps the soft part's gradients the size of the hard part's as T changes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress
from torch import nn

from ..errors import CheckpointError, FerError
from ..files import cache_dir
from ..inputs.data import LabelledTensors
from ..models.checkpoint import save_checkpoint
from ..models.classifier import Classifier

CACHE_FORMAT = 1
BATCH = 512


@dataclass
class Teacher:
    classifier: Classifier
    name: str  # as given on the command line
    sha256: str

    def describe(self) -> dict:
        accuracy = self.classifier.val_accuracy
        return {"model": self.name, "path": self.classifier.path, "sha256": self.sha256, "val_accuracy": accuracy}


class DistillationLoss(nn.Module):
    """The hard-label loss mixed with the KL divergence to the teachers' softened probabilities.

    Called as ``loss(logits, targets, teacher_probabilities)``; without the teachers' probabilities
    (validation) it is the hard-label loss alone, so validation losses compare with undistilled runs'.
    """

    def __init__(self, hard: nn.Module, weight: float, temperature: float):
        super().__init__()
        self.hard, self.weight, self.temperature = hard, weight, temperature

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, teacher: torch.Tensor | None = None):
        hard = self.hard(logits, targets)
        if teacher is None:
            return hard
        return (1 - self.weight) * hard + self.weight * soft_loss(logits, teacher, self.temperature)


def soft_loss(logits: torch.Tensor, teacher_probabilities: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(teacher || softmax(logits / T)), averaged over the batch."""
    student = F.log_softmax(logits.float() / temperature, dim=1)
    return F.kl_div(student, teacher_probabilities.float(), reduction="batchmean") * temperature**2


def soft_targets(teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """(teachers, N, classes) calibrated logits -> (N, classes): the mean of their softmaxes at ``temperature``."""
    return torch.softmax(teacher_logits.float() / temperature, dim=2).mean(dim=0)


def load_teachers(names: list[str], class_names: list[str]) -> list[Teacher]:
    """The teacher models (shipped names, .pt or .onnx files); each must know exactly the data's classes."""
    from ..models.zoo import file_sha256, resolve_model

    teachers = []
    for name in names:
        classifier = resolve_model(name)
        if sorted(classifier.class_names) != sorted(class_names):
            raise FerError(
                f"teacher {name} predicts {', '.join(classifier.class_names)}, but the training data has "
                f"{', '.join(class_names)}: a teacher must know the same classes (in any order)"
            )
        teachers.append(Teacher(classifier, name, file_sha256(classifier.path)))
    return teachers


def teacher_logits(
    teachers: list[Teacher],
    data: LabelledTensors,
    cache_dir: str | os.PathLike,
    device: str,
    log: Console,
    key: str | None = None,
) -> torch.Tensor:
    """The teachers' calibrated logits on every training image, (teachers, N, classes) in the data's class
    order: from the cache when these teachers already saw these images, else computed and cached.
    ``key``: their ``cache_key``, when the caller has it already (it hashes every image)."""
    key = key or cache_key(teachers, data)
    path = Path(cache_dir) / f"teachers-{key[:24]}.pt"
    cached = _read_cache(path, key, (len(data), len(data.class_names)), log)
    if cached is not None:
        log.print(f"teachers' logits on the {len(data):,} training images read from {path}")
        return cached
    logits = torch.stack([_run_teacher(teacher, data, device, log) for teacher in teachers])
    entry = {
        "key": key,
        "cache_format": CACHE_FORMAT,
        "teachers": [teacher.describe() for teacher in teachers],
        "class_names": list(data.class_names),
        "logits": logits,
    }
    try:
        save_checkpoint(path, entry)  # written whole, or not at all
        log.print(f"teachers' logits cached in {path}")
    except (CheckpointError, OSError) as error:  # the cache is a convenience: the run goes on without it
        log.print(f"[yellow]warning:[/] the teachers' logits could not be cached ({escape(str(error))}); "
                  "a later run computes them again")  # fmt: skip
    return logits


def _read_cache(path: Path, key: str, shape: tuple[int, int], log: Console) -> torch.Tensor | None:
    """A cache entry's logits, or None when there is none; a damaged entry is said and replaced, never fatal."""
    if not path.is_file():
        return None
    try:
        cached = torch.load(path, map_location="cpu", weights_only=True)
        if cached.get("key") == key and tuple(cached["logits"].shape[1:]) == shape:
            return cached["logits"].float()
        reason = "it belongs to other teachers or data"
    except Exception as error:  # noqa: BLE001 - a truncated, corrupt or foreign file, whatever torch raises
        reason = f"it cannot be read ({type(error).__name__})"
    log.print(f"[yellow]warning:[/] the teachers' cache {escape(str(path))} is not usable ({reason}); computing again")
    with contextlib.suppress(OSError):
        path.unlink()
    return None


def cache_key(teachers: list[Teacher], data: LabelledTensors) -> str:
    """Changes when a teacher's file, the images (their pixels, order and size) or the class order change."""
    images = hashlib.sha256(data.images.contiguous().numpy().tobytes()).hexdigest()
    described = {
        "format": CACHE_FORMAT,
        "teachers": [teacher.sha256 for teacher in teachers],
        "images": images,
        "shape": list(data.images.shape),
        "class_names": list(data.class_names),
    }
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()


def teacher_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """How often the teachers' averaged probabilities pick the label (on the training images)."""
    return float((soft_targets(logits, 1.0).argmax(dim=1) == labels.cpu()).float().mean())


def default_cache_dir() -> Path:
    """fer's cache folder (``files.cache_dir``): ``$FER_CACHE_DIR``, else ``$XDG_CACHE_HOME/fer_cli``, else
    ``~/.cache/fer_cli``."""
    return cache_dir()


def _run_teacher(teacher: Teacher, data: LabelledTensors, device: str, log: Console) -> torch.Tensor:
    """One teacher's calibrated logits (N, classes), columns in the data's class order."""
    classifier = teacher.classifier
    used = classifier.runner.prepare(device)
    columns = [classifier.class_names.index(name) for name in data.class_names]
    images = _as_model_input(data.images, classifier.preprocess)
    out = np.empty((len(images), len(columns)), dtype=np.float32)
    with Progress(console=log, transient=True) as progress:
        task = progress.add_task(f"teacher {teacher.name} ({used})", total=len(images))
        for start in range(0, len(images), BATCH):
            pixels = images[start : start + BATCH].numpy()
            out[start : start + BATCH] = classifier.calibrated_logits(pixels)[:, columns]
            progress.advance(task, len(pixels))
    log.print(f"teacher {teacher.name}: logits on {len(images):,} training images ({used})")
    return torch.from_numpy(out)


def _as_model_input(images: torch.Tensor, preprocess: dict) -> torch.Tensor:
    """uint8 (N, C, H, W) images made the size and channels a teacher was trained on."""
    channels, size = preprocess["channels"], preprocess["size"]
    if images.shape[1] != channels:
        if channels == 3:
            images = images.expand(-1, 3, -1, -1)
        else:  # RGB to luminance, as PIL's convert("L") does
            weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
            images = (images.float() * weights).sum(dim=1, keepdim=True).round().clamp(0, 255).to(torch.uint8)
    if images.shape[-1] != size or images.shape[-2] != size:
        resized = F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        images = resized.round().clamp(0, 255).to(torch.uint8)
    return images.contiguous()
