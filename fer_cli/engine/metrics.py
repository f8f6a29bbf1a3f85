"""Scores of predicted probabilities against true labels, as plain dicts (checkpoint- and JSON-safe)."""

from __future__ import annotations

import numpy as np


def summarize(labels: np.ndarray, probs: np.ndarray, class_names: list[str]) -> dict:
    """Accuracy, confidence when right and wrong, per-class precision/recall/F1/support, confusion matrix.

    ``probs`` is (N, C) with columns in ``class_names`` order; ``labels`` are indices into it.
    """
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support  # 0.3 s: only when scoring

    labels = np.asarray(labels)
    probs = np.asarray(probs, dtype=np.float64)
    predicted = probs.argmax(axis=1)
    confidence = probs.max(axis=1)
    correct = predicted == labels
    indices = list(range(len(class_names)))
    precision, recall, f1, support = precision_recall_fscore_support(labels, predicted, labels=indices, zero_division=0)
    present = support > 0
    return {
        "count": int(len(labels)),
        "accuracy": float(correct.mean()) if len(labels) else 0.0,
        # both over the classes that occur, as scikit-learn's f1_score(labels=present classes, average="macro"):
        # a class the data lacks (contempt in a FER2013 folder) would add its F1 of 0 to the mean. Answers given
        # as such a class still count, as errors, in the recall and F1 of the class each image is.
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        # (a model that answers the commonest class for every image scores 1/classes here, whatever its accuracy)
        "balanced_accuracy": float(recall[present].mean()) if present.any() else 0.0,
        "mean_confidence_correct": float(confidence[correct].mean()) if correct.any() else None,
        "mean_confidence_incorrect": float(confidence[~correct].mean()) if (~correct).any() else None,
        "expected_calibration_error": expected_calibration_error(labels, probs),
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(class_names)
        },
        "confusion_matrix": confusion_matrix(labels, predicted, labels=indices).tolist(),
        "class_names": list(class_names),
    }


def summarize_votes(votes: np.ndarray, majority: np.ndarray, probs: np.ndarray, class_names: list[str]) -> dict:
    """``summarize`` against each image's majority class, the images without one (-1: a tie at the top) left out
    and counted, and under ``votes`` what only votes tell (``votes`` (N, C): each image's vote shares):

    * ``tagger_agreement``: the mean share of the taggers who chose the class given, i.e. how often a tagger
      drawn at random agrees with the model;
    * ``plurality_accuracy``: the share of all images (ties included) whose answer got the most votes;
    * ``cross_entropy``: of the probabilities against the vote shares (what training on votes lowers).
    """
    votes = np.asarray(votes, dtype=np.float64)
    majority = np.asarray(majority)
    probs = np.asarray(probs, dtype=np.float64)
    clear = majority >= 0
    metrics = summarize(majority[clear], probs[clear], class_names)
    predicted = probs.argmax(axis=1)
    given = votes[np.arange(len(votes)), predicted]
    metrics["votes"] = {
        "images": int(len(votes)),
        "with_majority": int(clear.sum()),
        "without_majority": int((~clear).sum()),
        "tagger_agreement": float(given.mean()) if len(votes) else 0.0,
        "plurality_accuracy": float((given >= votes.max(axis=1) - 1e-9).mean()) if len(votes) else 0.0,
        "cross_entropy": float(-(votes * np.log(np.clip(probs, 1e-12, None))).sum(axis=1).mean())
        if len(votes)
        else 0.0,
    }
    subtle = subtle_expressions(votes, majority, class_names)
    if subtle is not None:
        metrics["votes"]["subtle_recall"] = (
            float((predicted[subtle] == majority[subtle]).mean()) if subtle.any() else None
        )
        metrics["votes"]["subtle_images"] = int(subtle.sum())
    return metrics


SUBTLE_NEUTRAL_SHARE = 0.3  # 3 of FER+'s 10 taggers


def subtle_expressions(votes: np.ndarray, majority: np.ndarray, class_names: list[str]) -> np.ndarray | None:
    """The subtle expressions among voted images: those whose majority is an emotion while at least
    ``SUBTLE_NEUTRAL_SHARE`` of the votes said neutral. A model's recall on them is the neutral pull in one number
    (how often it answers neutral where most people saw the emotion). None without a neutral class."""
    names = [name.lower() for name in class_names]
    if "neutral" not in names:
        return None
    neutral = names.index("neutral")
    return (np.asarray(majority) >= 0) & (majority != neutral) & (votes[:, neutral] >= SUBTLE_NEUTRAL_SHARE - 1e-9)


def expected_calibration_error(labels: np.ndarray, probs: np.ndarray, bins: int = 15) -> float:
    """Mean |accuracy - confidence| over equal-width confidence bins, weighted by bin size."""
    if len(labels) == 0:
        return 0.0
    total = len(labels)
    return float(
        sum(b["count"] / total * abs(b["accuracy"] - b["confidence"]) for b in reliability(labels, probs, bins))
    )


def reliability(labels: np.ndarray, probs: np.ndarray, bins: int = 15) -> list[dict]:
    """The confidence bins the ECE is made of (equal width, empty ones left out): each bin's edges,
    how many answers fall in it, their accuracy and their mean confidence. A reliability diagram."""
    labels = np.asarray(labels)
    probs = np.asarray(probs, dtype=np.float64)
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    found = []
    for b in range(bins):
        members = which == b
        if members.any():
            found.append(
                {
                    "lower": float(edges[b]),
                    "upper": float(edges[b + 1]),
                    "count": int(members.sum()),
                    "accuracy": float(correct[members].mean()),
                    "confidence": float(confidence[members].mean()),
                }
            )
    return found


def coverage(labels: np.ndarray, probs: np.ndarray, points: int = 20) -> list[dict]:
    """Accuracy on the most confident answers only, for shares kept of 1/points .. 1 (all).

    What a confidence threshold buys: keeping the ``kept`` most confident share of the images
    means leaving out those below ``threshold`` (the lowest confidence kept), and the ones kept
    are right ``accuracy`` of the time.
    """
    labels = np.asarray(labels)
    probs = np.asarray(probs, dtype=np.float64)
    if len(labels) == 0:
        return []
    order = np.argsort(-probs.max(axis=1), kind="stable")
    confidence = probs.max(axis=1)[order]
    correct = (probs.argmax(axis=1) == labels)[order]
    right_so_far = np.cumsum(correct)
    curve = []
    for share in np.linspace(1.0 / points, 1.0, points):
        kept = max(1, int(round(share * len(labels))))
        curve.append(
            {
                "kept": kept / len(labels),
                "images": kept,
                "accuracy": float(right_so_far[kept - 1] / kept),
                "threshold": float(confidence[kept - 1]),
            }
        )
    return curve


def confident_mistakes(labels: np.ndarray, probs: np.ndarray, per_class: int = 6) -> list[list[int]]:
    """For each true class, the indices of its wrong answers given with the most confidence first
    (at most ``per_class``)."""
    labels = np.asarray(labels)
    probs = np.asarray(probs, dtype=np.float64)
    predicted, confidence = probs.argmax(axis=1), probs.max(axis=1)
    found = []
    for c in range(probs.shape[1]):
        wrong = np.flatnonzero((labels == c) & (predicted != c))
        found.append(wrong[np.argsort(-confidence[wrong], kind="stable")][:per_class].tolist())
    return found
