"""The votes of several models: pure functions of their probabilities (N faces, M models, C classes).

* majority:  each model votes for its top class; ties go to the higher mean probability;
             its confidence is the share of models that agree
* mean:      the average of the models' probabilities
* weighted:  the average weighted by each model's *validation* accuracy, read from its checkpoint
* weighted per class: each model's probability for class c weighted by its validation F1 on c

Nothing here reads data or imports torch or scikit-learn: `fer serve` and `fer ensemble` on
unlabelled images vote with these alone (scoring on labelled folders is ``ensemble``'s).
"""

from __future__ import annotations

import numpy as np

from ..models.classifier import Classifier
from .predict import align_classes


def majority_vote(probs: np.ndarray) -> np.ndarray:
    """(N, M, C) -> (N, C) vote shares: each model votes for its top class.

    The winner's score is the share of models that agree with it (its "confidence"); ties go to
    the class with the higher mean probability, through a tie-breaker far smaller than one vote.
    """
    n, m, c = probs.shape
    votes = np.zeros((n, c))
    np.add.at(votes, (np.repeat(np.arange(n), m), probs.argmax(axis=2).ravel()), 1.0)
    scores = votes / m + 1e-3 * probs.mean(axis=1) / m
    return scores / scores.sum(axis=1, keepdims=True)


def mean_vote(probs: np.ndarray) -> np.ndarray:
    return probs.mean(axis=1)


def weighted_vote(probs: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(N, M, C) with weights (M,) or (M, C) -> (N, C), a weighted average per class."""
    weights = np.asarray(weights, dtype=np.float64)
    if weights.ndim == 1:
        weights = np.repeat(weights[:, None], probs.shape[2], axis=1)
    weights = np.clip(weights, 1e-6, None)
    scores = (probs * weights[None]).sum(axis=1) / weights.sum(axis=0)[None]
    return scores / scores.sum(axis=1, keepdims=True)


def validation_weights(
    classifiers: list[Classifier], class_names: list[str]
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Per-model accuracy weights (M,) and per-class F1 weights (M, C) from the checkpoints.

    A model without stored metrics gets the mean weight of the others (1.0 if none has any), and
    is named in the returned notes.
    """
    accuracy = np.full(len(classifiers), np.nan)
    per_class = np.full((len(classifiers), len(class_names)), np.nan)
    notes = []
    for m, classifier in enumerate(classifiers):
        metrics = classifier.metrics or {}
        if metrics.get("accuracy") is None:
            notes.append(f"{classifier.name} has no stored validation metrics; it gets the average weight")
            continue
        accuracy[m] = metrics["accuracy"]
        stored = metrics.get("per_class", {})
        per_class[m] = [stored[name]["f1"] if name in stored else np.nan for name in class_names]
    return _fill_with_mean(accuracy), _fill_with_mean(per_class), notes


def _fill_with_mean(weights: np.ndarray) -> np.ndarray:
    """Missing weights take the mean of the other models' (per class), or 1.0 where none has one."""
    known = ~np.isnan(weights)
    counts = known.sum(axis=0)
    means = np.where(counts > 0, np.where(known, weights, 0.0).sum(axis=0) / np.maximum(counts, 1), 1.0)
    return np.where(known, weights, means)


def combine(probs: np.ndarray, weights: tuple[np.ndarray, np.ndarray] | None) -> dict[str, np.ndarray]:
    """Every ensemble's (N, C) scores; the weighted votes when (accuracy, per-class) weights are given."""
    votes = {"majority vote": majority_vote(probs), "mean probability": mean_vote(probs)}
    if weights is not None:
        accuracy, per_class = weights
        votes["weighted (val accuracy)"] = weighted_vote(probs, accuracy)
        votes["weighted per class (val F1)"] = weighted_vote(probs, per_class)
    return votes


def default_vote(classifiers: list[Classifier], weighted: bool):
    """The one vote that labels unlabelled images: per-class weighted with ``weighted``, else the mean."""
    if weighted:
        _, per_class, _ = validation_weights(classifiers, align_classes(classifiers))
        return "weighted per class (val F1)", lambda probs: weighted_vote(probs, per_class)
    return "mean probability", mean_vote
