"""Label distributions: images tagged by several people, one column of votes per class.

A votes CSV has a row per image and a column per class holding how many people chose that class (or
any non-negative weight: probabilities work too)::

    split,path,fer2013_label,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,not_a_face
    train,train/angry/fer00000.png,angry,4,0,0,1,3,2,0,0,0,0

* the image: a ``path`` column (also ``image``, ``file``, ``Image name``), relative to the images' folder and
  inside it (an absolute path, or one that leaves by ``..``, is an error); beside a FER2013 CSV (FER+'s own
  ``fer2013new.csv`` beside Kaggle's ``fer2013.csv``) rows pair up in order instead, a row without an image name is
  one FER+ left unlabelled, and a FER+ name (``fer0000123.png``) must be its row's (else the files are out of step);
* which split: an optional ``split`` or ``Usage`` column (train/Training, val/PublicTest; other rows,
  PrivateTest, are never read);
* the image's single label, if it has one: an optional ``label`` or ``fer2013_label`` column;
* ``unknown`` and ``not_a_face`` (FER+'s NF): votes that are no class;
* every other column is a class, of numbers from 0 to ``MAX_VOTES`` (empty: 0). FER+'s emotion names become this
  tool's (anger -> angry, happiness -> happy, sadness -> sad); a name with a control character is refused, and a
  column without a name is passed over when it holds nothing (a spreadsheet's trailing comma), refused otherwise.

An image whose most voted column is "unknown" or "not a face" is left out (counted): it shows no
readable expression. The majority of an image is the class with strictly the most votes, "unknown"
and "not a face" included: a tie has no majority (such images still train, on their distribution).
"""

from __future__ import annotations

import csv
import os
import posixpath
import re
from array import array
from dataclasses import dataclass, field
from pathlib import PureWindowsPath

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
MAX_VOTES = 1e9  # the most one cell may hold: the sums of a row's votes stay finite
SPLIT_CODES = {None: 0, "train": 1, "val": 2}  # how VoteTable.split_codes spells a row's split
FER_IMAGE_NAME = re.compile(r"fer(\d+)\.png", re.IGNORECASE)  # FER+'s name for row N of fer2013.csv


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
    """A votes CSV, read: one entry per row that has an image, in compact arrays (a file can have millions)."""

    origin: str
    class_names: list[str]  # this tool's names, sorted (as class folders are)
    images: list  # each row's path (relative, inside the images' folder), or its row number (0 first) by row
    split_codes: np.ndarray  # (N,) int8, SPLIT_CODES: 1 train, 2 val, 0 another split; 1 for all without a split column
    votes: np.ndarray  # (N, classes) float64, as in the file
    no_class: np.ndarray  # (N, 2) float64: unknown and not-a-face votes (0 where the file has no such column)
    given: np.ndarray  # (N,) int64: each row's single label as an index into class_names (-1: none, or no class)
    has_split: bool
    has_label: bool  # the file has a label column
    unnamed: int  # rows without an image name (FER+: images it left unlabelled)
    notes: list[str] = field(default_factory=list)  # what was passed over in reading it, to say

    @property
    def splits(self) -> list[str | None]:
        names = {code: name for name, code in SPLIT_CODES.items()}
        return [names[code] for code in self.split_codes.tolist()]

    def rows(self, split: str | None) -> np.ndarray:
        """Indices of the rows of one split ('train', 'val'), or of every row (None)."""
        if split is None:
            return np.arange(len(self.images))
        return np.flatnonzero(self.split_codes == SPLIT_CODES[split])

    def count(self, split: str) -> int:
        return len(self.rows(split))


def read_votes(path: str | os.PathLike, by_row: bool = False) -> VoteTable:
    """Read a votes CSV (see the module's docstring); ``by_row``: its rows pair up with another file's rows in order,
    so the image column is optional and a row is known by its number. The rows are read one at a time."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if not header:
                raise SourceError(f"{path} is empty; a votes CSV needs a header and a row per image")
            layout = _Layout(path, header, by_row)
            table = layout.read(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise SourceError(f"cannot read {path}: {getattr(error, 'strerror', None) or error}") from None
    if not table.images:
        raise SourceError(f"{path} has no rows with an image")
    return table


class _Layout:
    """What each column of a votes CSV's header is, and how its rows are read."""

    def __init__(self, path, header: list[str], by_row: bool):
        self.path, self.header, self.by_row = path, header, by_row
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
        self.column = {kind: i for i, kind in role.items() if kind != "no_class"}
        self.no_class_columns = [i for i, kind in role.items() if kind == "no_class"][:2]
        others = [i for i in range(len(names)) if i not in role]
        self.unnamed_columns = [i for i in others if not names[i]]  # a trailing comma's: refused if they hold votes
        self.class_columns = sorted((i for i in others if names[i]), key=lambda i: canonical_class(header[i]))
        self.class_names = [canonical_class(header[i]) for i in self.class_columns]
        if len(self.class_names) < 2:
            raise SourceError(
                f"{path} has {len(self.class_names)} column(s) of votes; a votes CSV needs a column of numbers per "
                "class (2+)"
            )
        for i in self.class_columns:
            if not header[i].strip().isprintable():
                raise SourceError(
                    f"{path}: column {i + 1} ({header[i]!r}) has a control character (or another that does not "
                    "print) in its name; a class name is printed and kept in the model"
                )
        if len(set(self.class_names)) != len(self.class_names):
            raise SourceError(f"{path} names a class twice: {', '.join(self.class_names)} (after anger -> angry etc.)")
        self.width = len(names)

    def read(self, reader) -> VoteTable:
        numbers = array("d")  # each row's class votes, then its two no-class votes
        images, splits, given, unnamed = [], array("b"), array("q"), 0
        label_index = {name: i for i, name in enumerate(self.class_names)}
        path_at, split_at, label_at = (self.column.get(kind) for kind in ("path", "split", "label"))
        for number, line in enumerate(reader):
            if len(line) < self.width:
                line = line + [""] * (self.width - len(line))
            image = line[path_at].strip() if path_at is not None else ""
            if not image and (not self.by_row or path_at is not None):
                unnamed += 1
                continue
            for i in self.unnamed_columns:
                if line[i].strip():
                    raise SourceError(
                        f"{self.path}: column {i + 1} has no name, but line {number + 2} holds {line[i].strip()!r} "
                        "in it; name it (a class) or remove it"
                    )
            numbers.extend(self._number(line[i], i, number) for i in self.class_columns)
            numbers.extend(self._number(line[i], i, number) for i in self.no_class_columns)
            numbers.extend([0.0] * (2 - len(self.no_class_columns)))
            images.append(self._image(image, number))
            splits.append(SPLIT_CODES[split_of(line[split_at])] if split_at is not None else SPLIT_CODES["train"])
            label = line[label_at].strip() if label_at is not None else ""
            given.append(label_index.get(canonical_class(label), -1) if label else -1)
        table = np.frombuffer(numbers, dtype=np.float64).reshape(len(images), len(self.class_names) + 2)
        notes = []
        if self.unnamed_columns:
            notes.append(
                f"{self.path}: {len(self.unnamed_columns)} column(s) without a name and without votes passed over "
                "(a trailing comma?)"
            )
        return VoteTable(
            origin=str(self.path),
            class_names=self.class_names,
            images=images,
            split_codes=np.frombuffer(splits, dtype=np.int8),
            votes=table[:, :-2],
            no_class=table[:, -2:],
            given=np.frombuffer(given, dtype=np.int64),
            has_split=split_at is not None,
            has_label=label_at is not None,
            unnamed=unnamed,
            notes=notes,
        )

    def _number(self, text: str, column: int, number: int) -> float:
        text = text.strip()
        try:
            value = float(text) if text else 0.0
        except ValueError:
            raise SourceError(
                f"{self.path}: column(s) {self.header[column].strip()} hold something other than numbers (line "
                f"{number + 2}: {text!r}); a votes CSV has a column of numbers per class, and only path, split, "
                "label, unknown and not_a_face beside them"
            ) from None
        if not 0 <= value <= MAX_VOTES:  # NaN too
            raise SourceError(
                f"{self.path}, line {number + 2}: votes must be non-negative numbers up to {MAX_VOTES:g}, not {text!r}"
            )
        return value

    def _image(self, image: str, number: int):
        """A row's image: its path, which must stay inside the images' folder; by row, its number (checked against
        FER+'s image name, which holds it)."""
        if self.by_row:
            named = FER_IMAGE_NAME.fullmatch(image)
            if named and int(named.group(1)) != number:
                raise SourceError(
                    f"{self.path}, line {number + 2}: image {image} is not row {number} of the FER2013 CSV this file "
                    "pairs with: the two files are out of step (a row missing or added?)"
                )
            return number
        relative = posixpath.normpath(image.replace("\\", "/"))
        if posixpath.isabs(relative) or PureWindowsPath(image).drive or relative.split("/")[0] == "..":
            raise SourceError(
                f"{self.path}, line {number + 2}: {image} is outside the images' folder; a votes CSV names images by "
                "their path inside it"
            )
        return image


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


def require_a_majority(table: VoteTable, split: str | None) -> None:
    """Refuse validation rows (``split``: 'val', 'train' to hold some out of, None for every row) without a single
    image whose votes have a clear majority: the best epoch is chosen by accuracy against it. Read before decoding."""
    rows = table.rows(split)
    if len(rows) and not (outcome(table.votes[rows], table.no_class[rows]).majority >= 0).any():
        raise SourceError(
            f"{table.origin}: no validation image with a majority of the votes (every one tied at the top, or left "
            "out); the best epoch is chosen by accuracy against it"
        )


def describe_left_out(left_out: dict) -> str:
    """E.g. '172 left out (mostly unknown or not a face), 2 unreadable' (empty when none)."""
    return ", ".join(f"{count:,} {reason}" for reason, count in left_out.items() if count)
