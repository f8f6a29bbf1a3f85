"""Label distributions: images tagged by several people, one column of votes per class.

A votes CSV has a row per image and a column per class holding how many people chose that class (or
any non-negative weight: probabilities work too)::

    split,path,fer2013_label,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,not_a_face
    train,train/angry/fer00000.png,angry,4,0,0,1,3,2,0,0,0,0

* the image: a ``path`` column (also ``image``, ``file``, ``Image name``), relative to the images' folder;
  beside a FER2013 CSV (FER+'s own ``fer2013new.csv`` beside Kaggle's ``fer2013.csv``) rows pair up in
  order instead, and a row without an image name is one FER+ left unlabelled;
* which split: an optional ``split`` or ``Usage`` column (train/Training, val/PublicTest; other rows,
  PrivateTest, are never read);
* the image's single label, if it has one: an optional ``label`` or ``fer2013_label`` column;
* ``unknown`` and ``not_a_face`` (FER+'s NF): votes that are no class;
* every other column of numbers is a class. FER+'s emotion names become this tool's
  (anger -> angry, happiness -> happy, sadness -> sad).

An image whose most voted column is "unknown" or "not a face" is left out (counted): it shows no
readable expression. The majority of an image is the class with strictly the most votes, "unknown"
and "not a face" included: a tie has no majority (such images still train, on their distribution).
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass

import numpy as np

from ..errors import SourceError

# Other data sets' names for this tool's classes (FER+'s first).
CLASS_ALIASES = {"anger": "angry", "happiness": "happy", "sadness": "sad", "surprised": "surprise"}
PATH_COLUMNS = ("path", "image", "file", "image name", "image_name", "filename")
SPLIT_COLUMNS = ("split", "usage")
LABEL_COLUMNS = ("label", "fer2013_label")
NO_CLASS_COLUMNS = ("unknown", "not_a_face", "nf", "not a face")
TRAIN_SPLITS = ("train", "training")
VAL_SPLITS = ("val", "validation", "publictest")


def canonical_class(name: str) -> str:
    """A class name as this tool spells it: lower case, FER+'s names mapped (anger -> angry)."""
    name = name.strip().lower()
    return CLASS_ALIASES.get(name, name)


def split_of(usage: str | None) -> str | None:
    """'train', 'val', or None (another split, e.g. PrivateTest) for a split or Usage value."""
    value = (usage or "").strip().lower()
    if value in TRAIN_SPLITS:
        return "train"
    if value in VAL_SPLITS:
        return "val"
    return None


@dataclass
class VoteTable:
    """A votes CSV, read: one entry per row that has an image."""

    origin: str
    class_names: list[str]  # this tool's names, sorted (as class folders are)
    images: list[str]  # each row's path (relative), or its row number (0 first) when rows pair up in order
    splits: list[str | None]  # 'train', 'val', None (another split), or 'train' for all when there is no split column
    votes: np.ndarray  # (N, classes) float64, as in the file
    no_class: np.ndarray  # (N, 2) float64: unknown and not-a-face votes (0 where the file has no such column)
    given: list[str | None]  # each row's single label (this tool's name) when the file has a label column
    has_split: bool
    unnamed: int  # rows without an image name (FER+: images it left unlabelled)

    def rows(self, split: str | None) -> np.ndarray:
        """Indices of the rows of one split ('train', 'val'), or of every row (None)."""
        if split is None:
            return np.arange(len(self.images))
        return np.flatnonzero(np.array([s == split for s in self.splits], dtype=bool))

    def count(self, split: str) -> int:
        return int(sum(s == split for s in self.splits))


def read_votes(path: str | os.PathLike, by_row: bool = False) -> VoteTable:
    """Read a votes CSV (see the module's docstring); ``by_row``: its rows pair up with another file's rows in order,
    so the image column is optional and a row is known by its number."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if not header:
                raise SourceError(f"{path} is empty; a votes CSV needs a header and a row per image")
            lines = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise SourceError(f"cannot read {path}: {getattr(error, 'strerror', None) or error}") from None
    names = [column.strip().lower() for column in header]
    role = {}
    for i, name in enumerate(names):
        for kind, known in (("path", PATH_COLUMNS), ("split", SPLIT_COLUMNS), ("label", LABEL_COLUMNS),
                            ("no_class", NO_CLASS_COLUMNS)):  # fmt: skip
            if name in known and (kind == "no_class" or kind not in role.values()):
                role[i] = kind
    if "path" not in role.values() and not by_row:
        raise SourceError(
            f"{path} has no image column: name one of its columns path (or {', '.join(PATH_COLUMNS[1:])})"
        )
    candidates = [i for i in range(len(names)) if i not in role]
    numeric = [i for i in candidates if _all_numbers(line[i] if i < len(line) else "" for line in lines)]
    ignored = [header[i] for i in candidates if i not in numeric]
    class_columns = sorted(numeric, key=lambda i: canonical_class(header[i]))  # as class folders sort
    class_names = [canonical_class(header[i]) for i in class_columns]
    if len(class_names) < 2:
        raise SourceError(
            f"{path} has {len(class_names)} column(s) of votes; a votes CSV needs a column of numbers per class (2+)"
            + (f" (not numbers: {', '.join(ignored)})" if ignored else "")
        )
    if len(set(class_names)) != len(class_names):
        raise SourceError(f"{path} names a class twice: {', '.join(class_names)} (after anger -> angry etc.)")
    if ignored:
        raise SourceError(
            f"{path}: column(s) {', '.join(ignored)} hold something other than numbers; a votes CSV has a column "
            "of numbers per class, and only path, split, label, unknown and not_a_face beside them"
        )
    column = {kind: i for i, kind in role.items() if kind != "no_class"}
    no_class_columns = [i for i, kind in role.items() if kind == "no_class"]
    images, splits, votes, no_class, given, unnamed = [], [], [], [], [], 0
    for number, line in enumerate(lines):
        line = line + [""] * (len(names) - len(line))
        image = line[column["path"]].strip() if "path" in column else ""
        if not image and (not by_row or "path" in column):
            unnamed += 1
            continue
        try:
            row_votes = [_number(line[i]) for i in class_columns]
            row_other = [_number(line[i]) for i in no_class_columns] + [0.0] * (2 - len(no_class_columns))
        except ValueError as error:
            raise SourceError(f"{path}, line {number + 2}: {error}") from None
        images.append(number if by_row else image)
        splits.append(split_of(line[column["split"]]) if "split" in column else "train")
        votes.append(row_votes)
        no_class.append(row_other[:2])
        label = line[column["label"]].strip() if "label" in column else ""
        given.append(canonical_class(label) if label else None)
    if not images:
        raise SourceError(f"{path} has no rows with an image")
    return VoteTable(
        origin=str(path),
        class_names=class_names,
        images=images,
        splits=splits,
        votes=np.array(votes, dtype=np.float64).reshape(len(images), len(class_names)),
        no_class=np.array(no_class, dtype=np.float64).reshape(len(images), 2),
        given=given,
        has_split="split" in column,
        unnamed=unnamed,
    )


def _number(text: str) -> float:
    text = text.strip()
    value = float(text) if text else 0.0
    if not np.isfinite(value) or value < 0:
        raise ValueError(f"votes must be non-negative numbers, not {text!r}")
    return value


def _all_numbers(values) -> bool:
    for value in values:
        value = value.strip()
        if not value:
            continue
        try:
            float(value)
        except ValueError:
            return False
    return True


@dataclass
class Outcome:
    """What the votes of a set of rows say: which rows to keep, their distributions and majorities."""

    keep: np.ndarray  # indices (into the rows given) of the images kept
    distributions: np.ndarray  # (kept, classes) float32, each row summing to 1
    majority: np.ndarray  # (kept,) int64: the class of the clear majority, -1 where there is none
    left_out: dict  # reason -> count


def outcome(votes: np.ndarray, no_class: np.ndarray) -> Outcome:
    """Leave out the images whose most voted answer is "unknown" or "not a face" (or that have no votes); the rest's
    vote shares over the classes, and their majority (-1: a tie at the top, "unknown"/"not a face" included)."""
    top_class = votes.max(axis=1) if votes.shape[1] else np.zeros(len(votes))
    top_other = no_class.max(axis=1)
    totals = votes.sum(axis=1)
    unreadable = (top_other > top_class) | (totals <= 0)
    keep = np.flatnonzero(~unreadable)
    everything = np.concatenate([votes, no_class], axis=1)[keep]
    top = everything.max(axis=1, keepdims=True)
    clear = (everything == top).sum(axis=1) == 1
    winner = everything.argmax(axis=1)
    majority = np.where(clear & (winner < votes.shape[1]), winner, -1)
    distributions = (votes[keep] / totals[keep, None]).astype(np.float32)
    left_out = {"mostly unknown or not a face": int(unreadable.sum())} if unreadable.any() else {}
    return Outcome(keep, distributions, majority.astype(np.int64), left_out)


def describe_left_out(left_out: dict) -> str:
    """E.g. '172 left out (mostly unknown or not a face), 2 unreadable' (empty when none)."""
    return ", ".join(f"{count:,} {reason}" for reason, count in left_out.items() if count)
