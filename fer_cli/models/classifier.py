"""A ready-to-run model, whatever engine runs it: what it predicts, how it is fed, its probabilities.

Checkpoints (``.pt``, run by torch) and exported models (``.onnx``, run by onnxruntime) load into
the same ``Classifier``; prediction, ensembles and every output format see nothing else. The file
formats build one (``described_by``), this module knows none of them: ``zoo.load_classifier`` picks
the format. Nothing here imports torch: an exported model predicts without it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from ..errors import CheckpointError
from .architectures import MAX_INPUT_SIDE, MIN_INPUT_SIDE
from .tta import TTA, views

MAX_CLASSES = 1000  # a head of a million classes would be gigabytes before a weight is read


class Runner(Protocol):
    """An engine holding one network."""

    def prepare(self, device: str) -> str:
        """Get ready on ``device`` ('auto', 'cpu', 'cuda', ...); return the device actually used."""

    def logits(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 model pixels (N, C, H, W) -> float32 logits (N, classes)."""


@dataclass
class Classifier:
    name: str
    arch: str
    runner: Runner
    class_names: list[str]
    preprocess: dict
    temperature: float = 1.0  # logits are divided by it before the softmax (fitted on val: calibration)
    class_prior: list[float] | None = None  # each class's share of the training targets
    prior_correction: float = 0.0  # tau: the logits lose tau * log(class prior) before the temperature
    metrics: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)
    path: str = ""

    @property
    def val_accuracy(self) -> float | None:
        return self.metrics.get("accuracy")

    @property
    def logit_adjustment(self) -> np.ndarray | float:
        """What is added to the logits before the temperature: -tau * log(prior) (Menon et al. 2021, "Long-tail
        learning via logit adjustment"), which lifts the classes the training data had few of; 0 without."""
        if not self.prior_correction or self.class_prior is None:
            return 0.0
        return -self.prior_correction * log_class_prior(self.class_prior).astype(np.float32)

    def calibrated_logits(self, pixels: np.ndarray) -> np.ndarray:
        """The logits the probabilities are the softmax of: prior-corrected, then divided by the temperature."""
        return (self.runner.logits(pixels) + self.logit_adjustment) / self.temperature

    def probabilities(self, pixels: np.ndarray, tta: TTA | str = TTA.none) -> np.ndarray:
        """Calibrated class probabilities (N, classes) in ``class_names`` order.

        With test-time augmentation (``tta``: flip or crops) the probabilities of each view of
        the faces are averaged.
        """
        total = None
        for view in views(pixels, tta):
            probs = softmax(self.calibrated_logits(view))
            total = probs if total is None else total + probs
        return total / TTA(tta).view_count


PRIOR_FLOOR = 1e-6  # a class the training data never had is this rare, not impossible: log 0 made every answer NaN


def log_class_prior(prior) -> np.ndarray:
    """log(prior), each share floored at PRIOR_FLOOR: the one log prior that fer train, fer calibrate and every
    model's prior correction use."""
    return np.log(np.clip(np.asarray(prior, dtype=np.float64), PRIOR_FLOOR, None))


def described_by(path: str | os.PathLike, description: dict, runner: Runner, arch: str = "") -> Classifier:
    """A Classifier from the dict a checkpoint, or an exported model's metadata, describes itself with; a
    description that cannot be right (classes named twice, a temperature of 0, a std of 0...) is refused."""
    problem = implausible(description)
    if problem:
        raise edited_by_hand(path, problem)
    return Classifier(
        name=Path(path).stem,
        arch=arch or description["arch"],
        runner=runner,
        class_names=list(description["class_names"]),
        preprocess=dict(description["preprocess"]),
        temperature=float(description.get("temperature", 1.0)),
        class_prior=list(description["class_prior"]) if description.get("class_prior") is not None else None,
        prior_correction=float(description.get("prior_correction", 0.0)),
        metrics=dict(description.get("metrics", {})),
        provenance=dict(description.get("provenance", {})),
        path=str(path),
    )


def edited_by_hand(path: str | os.PathLike, problem: str) -> CheckpointError:
    """The error for a model file whose description cannot be right: ``problem`` says why."""
    return CheckpointError(f"{path} is damaged or was edited by hand: {problem}")


def implausible(description: dict) -> str:
    """Why a model's description (a checkpoint's dict, an exported model's metadata) cannot be right, or ''."""
    names = description.get("class_names")
    if not isinstance(names, list | tuple) or len(names) < 2 or not all(isinstance(n, str) and n for n in names):
        return "it needs two or more class names"
    if len(names) > MAX_CLASSES:
        return f"{len(names)} classes (at most {MAX_CLASSES})"
    if len(set(names)) != len(names):
        return f"a class is named twice ({', '.join(sorted({n for n in names if list(names).count(n) > 1}))})"
    preprocess = description.get("preprocess")
    if not isinstance(preprocess, dict) or not all(isinstance(preprocess.get(k), int) for k in ("size", "channels")):
        return "its preprocess is not a table of size, channels, mean and std"
    for key in ("metrics", "provenance"):
        if not isinstance(description.get(key, {}), dict):
            return f"its {key} are not a table"
    accuracy = description.get("metrics", {}).get("accuracy")
    if accuracy is not None and (not isinstance(accuracy, int | float) or isinstance(accuracy, bool)):
        return f"its accuracy {accuracy!r} is not a number"
    try:
        temperature = float(description.get("temperature", 1.0))
        std = [float(v) for v in preprocess.get("std", [1.0])]
        mean = [float(v) for v in preprocess.get("mean", [0.0])]
        channels, size = preprocess["channels"], preprocess["size"]
        prior = description.get("class_prior")
        prior = None if prior is None else [float(v) for v in prior]
        tau = float(description.get("prior_correction", 0.0))
    except (TypeError, ValueError, KeyError) as error:
        return f"its numbers cannot be read ({type(error).__name__})"
    if not np.isfinite(temperature) or temperature <= 0:
        return f"temperature {temperature} (it must be a positive number)"
    if not all(np.isfinite(v) and v > 0 for v in std) or not all(np.isfinite(v) for v in mean):
        return f"normalisation std {std} (each must be a positive number)"
    if not MIN_INPUT_SIDE <= size <= MAX_INPUT_SIDE:
        return f"input {size} px (a network's input side is {MIN_INPUT_SIDE} to {MAX_INPUT_SIDE} px)"
    if channels not in (1, 3) or len(std) != channels or len(mean) != channels:
        return f"input {size} px, {channels} channel(s), {len(mean)} mean(s) and {len(std)} std(s) do not fit together"
    if prior is not None and (len(prior) != len(names) or not all(np.isfinite(v) and v >= 0 for v in prior)):
        return "its class prior does not fit its classes"
    if not np.isfinite(tau):
        return f"prior correction {tau}"
    return ""


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)
