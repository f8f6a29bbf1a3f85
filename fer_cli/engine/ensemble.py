"""Scoring models on a labelled folder, and combining their votes.

The votes themselves are ``voting``'s (pure functions of the per-model probabilities). Their weights
are never fitted on the images being scored: they come from the metrics ``fer train`` stored in each
checkpoint, measured on that run's validation data.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from ..errors import ModelError, SourceError
from ..inputs import votes as vote_rules
from ..inputs.faces import FacePolicy
from ..inputs.labelled import CONTENT_HASH, LabelledFiles, content_hash, find_labelled_images, labelled_digest
from ..inputs.votes import describe_left_out, read_votes
from ..models.classifier import Classifier
from ..models.tta import TTA
from .metrics import confident_mistakes, coverage, reliability, summarize, summarize_votes
from .predict import align_classes, predict_stream
from .voting import combine, default_vote, majority_vote, mean_vote, validation_weights, weighted_vote  # noqa: F401

WEIGHTS_SOURCE = (
    "validation metrics stored in each checkpoint by `fer train` "
    "(accuracy, and per-class F1), never fitted on the images scored here"
)


def score_labelled(
    classifiers: list[Classifier],
    folder: str,
    weighted: bool,
    device: str = "auto",
    batch_size: int = 64,
    workers: int = 0,
    on_skip=None,
    faces: FacePolicy | str = FacePolicy.auto,
    tta: TTA | str = TTA.none,
    votes: VotedFiles | None = None,
    min_face: float | None = None,
) -> tuple[dict, LabelledPredictions]:
    """Predict a labelled folder (or, with ``votes``, the images a votes file names) with every model and score the
    models and their votes: the report, and the per-image predictions it was made from (for the figures)."""
    policy = FacePolicy(faces)
    labelled = predict_labelled(classifiers, folder, device, batch_size, workers, on_skip, policy, tta, votes, min_face)
    class_names = labelled.class_names
    report = evaluate_ensemble(
        labelled.probs, labelled.labels, classifiers, class_names, weighted, folder, paths=labelled.paths,
        votes=labelled.votes,
    )  # fmt: skip
    if votes is not None:
        report["votes"] = {
            "file": votes.origin,
            "split": votes.split,
            "left_out": votes.left_out,
            "images_without_majority": int((labelled.labels < 0).sum()),
        }
        report["notes"].insert(0, votes_note(votes, int((labelled.labels < 0).sum()), len(labelled.labels)))
        if labelled.unpredicted:
            report["notes"].insert(1, f"no model predicts {', '.join(labelled.unpredicted)}: images whose majority "
                                      "is that count as wrong for every model")  # fmt: skip
    report["unreadable_images"] = labelled.unreadable
    report["face_policy"] = policy.value
    report["tta"] = TTA(tta).value
    report["images_without_detected_face"] = labelled.without_face
    if labelled.without_face:
        report["notes"].append(f"{labelled.without_face:,} image(s) had no detected face and were classified whole")
    return report, labelled


@dataclass
class VotedFiles:
    """The images a votes file names (one split, or all), each with its vote shares and majority."""

    origin: str
    split: str | None
    files: LabelledFiles  # labels: the majority class, -1 where there is none (a tie at the top)
    votes: np.ndarray  # (N, classes of ``files``) vote shares
    left_out: dict  # reason -> images


def voted_files(root: str, votes_csv: str, split: str | None) -> VotedFiles:
    """Read a votes CSV (``inputs.votes``) whose paths are relative to ``root``; leave out what its votes say to."""
    table = read_votes(votes_csv)
    if split is not None and not table.has_split:
        raise SourceError(f"{votes_csv} has no split column (split or Usage), so --split {split} cannot pick rows")
    rows = table.rows(split)
    if len(rows) == 0:
        raise SourceError(f"{votes_csv} has no {split} rows")
    verdict = vote_rules.outcome(table.votes[rows], table.no_class[rows])
    rows = rows[verdict.keep]
    paths = [os.path.join(root, table.images[r]) for r in rows]
    files = LabelledFiles(paths, verdict.majority.tolist(), list(table.class_names), votes_csv)
    return VotedFiles(votes_csv, split, files, verdict.distributions.astype(np.float64), dict(verdict.left_out))


def votes_note(votes: VotedFiles, without_majority: int, scored: int) -> str:
    """E.g. 'against the majority of 10 votes ... : 3,396 of 3,553 images (157 tied at the top) ...'."""
    left = describe_left_out(votes.left_out)
    return (
        f"labels: the majority of the votes in {votes.origin}" + (f" ({votes.split} rows)" if votes.split else "")
        + f"; accuracy and the tables count the {scored - without_majority:,} of {scored:,} images with one "
        + f"({without_majority:,} tied at the top)" + (f"; left out before scoring: {left}" if left else "")
        + "; tagger agreement (all images): the mean share of the votes the answer got"
    )  # fmt: skip


@dataclass
class LabelledPredictions:
    probs: np.ndarray  # (N, M, C): every model's probabilities, columns in align_classes order
    labels: np.ndarray  # (N,) indices into the same classes (-1: no single label, an image whose votes tie)
    unreadable: int
    without_face: int  # images classified whole because the detector found no face
    paths: list[str] = field(default_factory=list)  # the images scored, in the rows' order
    boxes: list[tuple[int, int, int, int]] = field(default_factory=list)  # the face scored in each, (x, y, w, h)
    votes: np.ndarray | None = None  # (N, C) vote shares, columns as ``probs``'s, when scored against votes
    class_names: list[str] = field(
        default_factory=list
    )  # the columns: the models' classes, then any only the votes have
    unpredicted: list[str] = field(default_factory=list)  # classes of the votes that no model gives


def predict_labelled(
    classifiers: list[Classifier],
    folder: str,
    device: str = "auto",
    batch_size: int = 64,
    workers: int = 0,
    on_skip=None,
    faces: FacePolicy | str = FacePolicy.auto,
    tta: TTA | str = TTA.none,
    votes: VotedFiles | None = None,
    min_face: float | None = None,
) -> LabelledPredictions:
    """Every model's probabilities for every readable image of a labelled folder (or of ``votes``), with its label.

    Class folders are matched to the models' classes by name; a folder class no model knows is
    an error. Unreadable images are skipped (reported through ``on_skip``) and counted. Each
    image has one label, so it is scored on its largest face, or on the whole image when the
    detector searched and found none (counted, whatever the policy).
    """
    class_names = align_classes(classifiers)
    files = find_labelled_images(folder) if votes is None else votes.files
    unknown = sorted(set(files.class_names) - set(class_names))
    if unknown and votes is not None:  # scored as a class no model gives: its images count as wrong
        class_names = class_names + [name for name in files.class_names if name in unknown]
    elif unknown:
        raise ModelError(
            f"{files.origin} has {'class folders' if votes is None else 'classes'} the models do not predict: "
            f"{', '.join(unknown)} (models predict {', '.join(class_names)})"
        )
    to_model_label = [class_names.index(name) for name in files.class_names]
    label_of = dict(zip(files.paths, files.labels))
    row_of = {path: i for i, path in enumerate(files.paths)}
    vote_rows = []
    probs, labels, paths, boxes, unreadable, no_face = [], [], [], [], 0, 0
    stream = predict_stream(classifiers, files.paths, device, batch_size, workers, faces, True, tta, min_face=min_face)
    for outcomes in stream:
        for outcome in outcomes:
            if outcome.error is not None:
                unreadable += 1
                if on_skip:
                    on_skip(outcome.path, outcome.error)
                continue
            largest = max(outcome.faces, key=lambda face: face.box[2] * face.box[3])
            no_face += largest.fallback
            probs.append(np.pad(largest.probs, ((0, 0), (0, len(class_names) - largest.probs.shape[-1]))))
            label = label_of[outcome.path]
            labels.append(to_model_label[label] if label >= 0 else -1)
            vote_rows.append(row_of[outcome.path])
            paths.append(outcome.path)
            boxes.append(tuple(largest.box))
    if not probs:
        raise SourceError(f"no readable images in {files.origin}")
    shares = None
    if votes is not None:  # the votes' columns in the models' class order (0 for a class the file does not have)
        shares = np.zeros((len(vote_rows), len(class_names)))
        shares[:, to_model_label] = votes.votes[vote_rows]
    return LabelledPredictions(
        np.stack(probs), np.array(labels), unreadable, no_face, paths, boxes, shares, class_names, unknown
    )


def score_model(
    classifier: Classifier,
    folder: str,
    device: str = "auto",
    batch_size: int = 64,
    workers: int = 0,
    votes: VotedFiles | None = None,
) -> dict:
    """One model's metrics on a labelled folder, or against ``votes`` (what ``fer export --val`` stores in an
    exported model): the same measures ``fer train`` stores for the checkpoint."""
    labelled = predict_labelled([classifier], folder, device, batch_size, workers, votes=votes)
    if votes is None:
        return summarize(labelled.labels, labelled.probs[:, 0], classifier.class_names)
    return summarize_votes(labelled.votes, labelled.labels, labelled.probs[:, 0], labelled.class_names)


def evaluate_ensemble(
    probs: np.ndarray,
    labels: np.ndarray,
    classifiers: list[Classifier],
    class_names: list[str],
    weighted: bool,
    folder: str,
    paths: list[str] | None = None,
    votes: np.ndarray | None = None,
) -> dict:
    """The whole report for a labelled folder, as one plain dict (what --format json prints).

    ``paths`` (the images scored) let it notice models that were selected on some of them. With ``votes`` (N, C)
    the labels are the majorities (-1: none): accuracies count the images with one, and each model's metrics have
    the votes' own measures (``metrics.summarize_votes``).
    """
    clear = labels >= 0

    def summarize_scores(scores: np.ndarray) -> dict:
        if votes is None:
            return summarize(labels, scores, class_names)
        return summarize_votes(votes, labels, scores, class_names)

    def curves(scores: np.ndarray) -> dict:
        return _curves(labels[clear], scores[clear])

    models = []
    for m, classifier in enumerate(classifiers):
        models.append(
            {
                "name": classifier.name,
                "path": classifier.path,
                "arch": classifier.arch,
                "val_accuracy_in_checkpoint": classifier.val_accuracy,
                "metrics": summarize_scores(probs[:, m]),
                **curves(probs[:, m]),
            }
        )
    weights, notes = None, []
    if weighted:
        accuracy, per_class, notes = validation_weights(classifiers, class_names)
        weights = (accuracy, per_class)
    overlap = seen_in_validation(classifiers, folder, paths if paths is not None else [], len(labels))
    groups: dict[tuple, list[str]] = {}  # models seen on the same images make one note
    for seen in overlap:
        groups.setdefault((seen["images"], seen["validation_images"]), []).append(seen["model"])
    for (images, size), names in groups.items():
        notes.append(_overlap_note(names, images, size, len(labels), weighted))
    ensembles = []
    if len(classifiers) > 1:
        for name, scores in combine(probs, weights).items():
            ensembles.append({"name": name, "metrics": summarize_scores(scores), **curves(scores)})
    correct = probs[clear].argmax(axis=2) == labels[clear, None]
    return {
        "folder": folder,
        "images": int(clear.sum()),
        "class_names": class_names,
        "weights_source": WEIGHTS_SOURCE if weighted else None,
        "notes": notes,
        "validation_overlap": overlap,
        "models": models,
        "ensembles": ensembles,
        "oracle_accuracy": float(correct.any(axis=1).mean()) if len(correct) else 0.0,
        "all_wrong_rate": float((~correct).all(axis=1).mean()) if len(correct) else 0.0,
        "errors_fixed_by": errors_fixed_by(correct).tolist(),
    }


def _curves(labels: np.ndarray, scores: np.ndarray) -> dict:
    """The report's data for a reliability diagram (the bins its ECE is made of) and for accuracy
    against the share of images kept above a confidence threshold."""
    return {"reliability": reliability(labels, scores), "coverage": coverage(labels, scores)}


def most_confident_mistakes(labelled: LabelledPredictions, scores: np.ndarray, per_class: int = 6) -> list[dict]:
    """The wrong answers given with the most confidence, up to ``per_class`` per true class, most
    confident first: ``{"path", "box", "true", "predicted", "confidence"}`` (class indices)."""
    found = []
    for indices in confident_mistakes(labelled.labels, scores, per_class):
        for i in indices:
            found.append(
                {
                    "path": labelled.paths[i],
                    "box": labelled.boxes[i] if labelled.boxes else None,
                    "true": int(labelled.labels[i]),
                    "predicted": int(scores[i].argmax()),
                    "confidence": float(scores[i].max()),
                }
            )
    return found


def errors_fixed_by(correct: np.ndarray) -> np.ndarray:
    """(N, M) right/wrong -> (M, M): row i, column j is the share of model i's errors that model j
    gets right, the room an ensemble of the two has to improve on i (diagonal 0)."""
    wrong = ~correct
    fixed = wrong.T.astype(float) @ correct.astype(float)  # (i, j): i wrong and j right
    return fixed / np.maximum(wrong.sum(axis=0), 1)[:, None]


def seen_in_validation(classifiers: list[Classifier], folder: str, paths: list[str], scored: int) -> list[dict]:
    """The models that were selected on some of the scored images, and on how many.

    A checkpoint that records its validation images' content hashes (``provenance.val_images``)
    is matched image by image, so a copy of its validation set, or 100 of its images in another
    folder, is noticed; the scored images are hashed once, only when some model has hashes. A
    checkpoint without them falls back to ``validated_on`` (same path or same names: the whole
    folder). Returns ``{"model", "images", "validation_images", "matched_by"}`` per model.
    """
    found, hashes = [], None
    for classifier in classifiers:
        recorded = classifier.provenance.get("val_images") or {}
        if recorded.get("method") == CONTENT_HASH and recorded.get("hashes"):
            if hashes is None:
                hashes = [content_hash(path) for path in paths]
            known = set(recorded["hashes"])
            images = sum(h in known for h in hashes if h is not None)
            if images:
                found.append(_seen(classifier, images, recorded.get("count"), "content"))
        elif classifier in validated_on([classifier], folder):
            found.append(_seen(classifier, scored, None, "folder"))
    return found


def _seen(classifier: Classifier, images: int, validation_images: int | None, matched_by: str) -> dict:
    return {
        "model": classifier.name,
        "images": images,
        "validation_images": validation_images,
        "matched_by": matched_by,
    }


def _overlap_note(names: list[str], images: int, size: int | None, scored: int, weighted: bool) -> str:
    """E.g. "m was selected on 3,589 of these 3,589 images (its validation set): its accuracy here is optimistic"."""
    one = len(names) == 1
    its = "its" if one else "their"
    if size is None:
        which = f"{its} validation folder"
    elif images >= scored and size == scored:
        which = f"{its} validation set"
    else:
        which = f"part of {its} validation set of {size:,}"
    who = names[0] if one else ", ".join(names[:-1]) + " and " + names[-1]
    note = (
        f"{who} {'was' if one else 'were'} selected on {images:,} of these {scored:,} images ({which}): "
        f"{its} accuracy here is optimistic"
    )
    if weighted:
        note += f", as are the weighted votes (weights measured on {its} validation set)"
    return note


def validated_on(classifiers: list[Classifier], folder: str) -> list[Classifier]:
    """The models whose stored validation data is ``folder``: the same path, or the same images by
    name wherever they are (``val_digest``; a model trained on another machine)."""
    here = os.path.realpath(folder)
    digest = None
    found = []
    for classifier in classifiers:
        provenance = classifier.provenance
        # Checkpoints written before ``val_path`` existed only have ``val_data``, which was then a plain path.
        path = provenance["val_path"] if "val_path" in provenance else provenance.get("val_data")
        if path and os.path.realpath(path) == here:
            found.append(classifier)
        elif provenance.get("val_digest"):
            digest = digest or labelled_digest(folder)
            if provenance["val_digest"] == digest:
                found.append(classifier)
    return found
