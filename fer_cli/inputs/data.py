"""Labelled datasets decoded into memory as uint8 tensors, for training.

Images are read and converted to model pixels by ``images`` (the same two steps prediction
uses); this module decodes whole labelled folders, FER2013 CSVs and images labelled by votes into
memory once. Finding labelled folders' files (``labelled``) needs no torch; decoding them here does.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import SourceError
from .images import READ_ERRORS, model_pixels, read_image
from .labelled import (  # noqa: F401 (the labelled folders' part, without torch, re-exported)
    CONTENT_HASH,
    LabelledFiles,
    content_hash,
    find_labelled_images,
    images_fingerprint,
    is_labelled_folder,
    labelled_digest,
    validation_images,
)
from .votes import SPLIT_CODES, VoteTable, outcome, split_of

# FER2013's CSV labels 0..6, in that order.
FER2013_CLASSES = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]


def decode(image: Image.Image, preprocess: dict) -> torch.Tensor:
    """PIL image -> uint8 tensor (C, size, size): ``images.model_pixels``, as prediction does it."""
    return torch.from_numpy(np.array(model_pixels(image, preprocess)))  # a writable copy


@dataclass
class LabelledTensors:
    """A whole labelled dataset decoded once: uint8 images (N, C, H, W) and labels (N,).

    Data labelled by votes (``votes``) also has, per image, the share of votes each class got
    (N, classes; each row sums to 1), the class of the clear majority (``majority``, -1 where the top
    is tied or "unknown"/"not a face" had as many votes) and the image's single label where the
    votes file gives one (``given``, -1 otherwise; FER2013's own label for FER+). ``labels`` is then the
    most voted class, for what needs one class per image (balanced sampling, stratified hold-out).
    """

    images: torch.Tensor
    labels: torch.Tensor
    class_names: list[str]
    origin: str
    votes: torch.Tensor | None = None
    majority: torch.Tensor | None = None
    given: torch.Tensor | None = None
    left_out: dict = field(default_factory=dict)  # why images were left out, and how many
    paths: list[str] | None = None  # each image's file, where known (votes over a folder)

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: torch.Tensor) -> LabelledTensors:
        """The images at ``index``, with everything known of them."""
        pick = lambda t: None if t is None else t[index]  # noqa: E731
        paths = None if self.paths is None else [self.paths[i] for i in torch.as_tensor(index).reshape(-1).tolist()]
        return LabelledTensors(
            self.images[index], self.labels[index], self.class_names, self.origin,
            pick(self.votes), pick(self.majority), pick(self.given), dict(self.left_out), paths,
        )  # fmt: skip

    def reorder_classes(self, class_names: list[str]) -> LabelledTensors:
        """Relabel to another ordering of the same class names (e.g. a model's)."""
        if sorted(class_names) != sorted(self.class_names):
            raise SourceError(
                f"{self.origin} has classes {', '.join(self.class_names)} "
                f"but the training data has {', '.join(class_names)}"
            )
        mapping = torch.tensor([class_names.index(name) for name in self.class_names])
        relabel = lambda t: None if t is None else torch.where(t >= 0, mapping[t.clamp_min(0)], t)  # noqa: E731
        columns = torch.tensor([self.class_names.index(name) for name in class_names])
        return LabelledTensors(
            self.images, mapping[self.labels], list(class_names), self.origin,
            None if self.votes is None else self.votes[:, columns],
            relabel(self.majority), relabel(self.given), dict(self.left_out), self.paths,
        )  # fmt: skip


class _DecodeFiles(torch.utils.data.Dataset):
    def __init__(self, paths: list[str], preprocess: dict):
        self.paths = paths
        self.blank = torch.zeros((preprocess["channels"], preprocess["size"], preprocess["size"]), dtype=torch.uint8)
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        try:
            return decode(read_image(self.paths[index], self.preprocess["channels"]), self.preprocess), index
        except READ_ERRORS:
            return self.blank, -1 - index  # a negative index marks the failure


def decode_labelled_files(files: LabelledFiles, preprocess: dict, workers: int = 0, warn=None) -> LabelledTensors:
    """Decode every image of a labelled folder into memory, with DataLoader workers.

    Unreadable files are skipped and counted through ``warn``, so one bad file in a dataset of
    thousands does not stop a training run.
    """
    images, kept = _decode_paths(files.paths, preprocess, workers, warn)
    if not kept:
        raise SourceError(f"no readable images in {files.origin}")
    labels = torch.tensor([files.labels[i] for i in kept])
    return LabelledTensors(images, labels, files.class_names, files.origin)


EXAMPLES = 3  # how many unreadable files a warning names
MOST_MISSING = 0.5  # more of a votes file's images missing than this share: the wrong folder, usually


def _decode_paths(paths: list[str], preprocess: dict, workers: int, warn) -> tuple[torch.Tensor | None, list]:
    """The readable images of ``paths`` decoded (N, C, H, W; None when none is), and which of ``paths`` they are.
    The unreadable ones are one warning through ``warn``, naming a few."""
    loader = torch.utils.data.DataLoader(_DecodeFiles(paths, preprocess), batch_size=256, num_workers=workers)
    images, kept, bad = [], [], []
    for batch, indices in loader:
        good = indices >= 0
        images.append(batch[good])
        kept.extend(indices[good].tolist())
        bad.extend((-1 - indices[~good][: EXAMPLES - len(bad)]).tolist())
    if warn and len(kept) < len(paths):
        missing = len(paths) - len(kept)
        warn(f"{missing:,} image(s) unreadable or missing, skipped ({_examples(paths, bad, missing)})")
    return (torch.cat(images) if kept else None), kept


def _examples(paths: list[str], some: list[int], total: int) -> str:
    return "e.g. " + ", ".join(paths[i] for i in some) + (", ..." if total > len(some) else "")


def read_fer2013_csv(path: str | os.PathLike, usage: Iterable[str], preprocess: dict) -> LabelledTensors:
    """Rows of a FER2013-style CSV (``emotion,pixels[,Usage]``) whose Usage is in ``usage``.

    A CSV without a Usage column counts every row as Training. Pixels are square grayscale.
    """
    rows = list(_fer2013_rows(path, lambda _, row: row in usage))
    if not rows:
        raise SourceError(f"{path} has no rows with Usage {' or '.join(sorted(usage))}")
    tensors = [decode(Image.fromarray(img, mode="L"), preprocess) for _, img, _ in rows]
    labels = torch.tensor([label for _, _, label in rows])
    return LabelledTensors(torch.stack(tensors), labels, list(FER2013_CLASSES), str(path))


def _fer2013_rows(path: str | os.PathLike, wanted):
    """(row number from 0, 48x48-like uint8 image, label) for every row of a FER2013-style CSV that ``wanted(row
    number, usage)`` accepts (usage in lower case; "training" when the CSV has no Usage column). A bad row is an
    error naming its line."""
    try:
        with open(path, newline="") as handle:
            reader = csv.DictReader(handle)
            if not reader.fieldnames or not {"emotion", "pixels"} <= set(reader.fieldnames):
                raise SourceError(f"{path} is not a FER2013-style CSV: it needs 'emotion' and 'pixels' columns")
            for index, row in enumerate(reader):
                if not wanted(index, (row.get("Usage") or "Training").strip().lower()):
                    continue
                try:
                    pixels = np.array((row["pixels"] or "").split(), dtype=np.uint8)
                    side = int(round(len(pixels) ** 0.5))
                    if side * side != len(pixels) or side == 0:
                        raise ValueError(f"{len(pixels)} pixels do not make a square image")
                    label = int(row["emotion"])
                    if not 0 <= label < len(FER2013_CLASSES):
                        raise ValueError(f"emotion {label} is outside 0..{len(FER2013_CLASSES) - 1}")
                except (ValueError, AttributeError, OverflowError) as error:
                    raise SourceError(f"{path}, line {index + 2}: {error}") from None
                yield index, pixels.reshape(side, side), label
    except (OSError, UnicodeDecodeError) as error:
        raise SourceError(f"cannot read {path}: {error}") from None


# --- images labelled by votes --------------------------------------------------------------------


def read_voted_images(
    images: str | os.PathLike,
    table: VoteTable,
    split: str | None,
    preprocess: dict,
    workers: int = 0,
    warn=None,
    fer2013_labels: bool = True,
    allow_missing: bool = False,
) -> LabelledTensors:
    """The images of one split of a votes table (``split`` 'train', 'val', or None for every row) decoded, with their
    vote shares, majorities and single labels (see ``LabelledTensors``).

    ``images`` is the folder the table's paths are relative to, or a FER2013-style CSV whose rows pair up with
    the table's in order (FER+'s ``fer2013new.csv`` beside Kaggle's ``fer2013.csv``; rows whose splits disagree are an
    error). Images left out by their votes and unreadable ones are counted in ``left_out``; when more than half of a
    folder's images are missing or unreadable (the wrong folder, usually) that is an error, unless ``allow_missing``.
    An image's single label (``given``) is the table's label column, or the FER2013 CSV's emotion
    (``fer2013_labels``).
    """
    rows = table.rows(split)
    if len(rows) == 0:
        raise SourceError(f"{table.origin} has no {split} rows")
    verdict = outcome(table.votes[rows], table.no_class[rows])
    rows = rows[verdict.keep]
    left_out = dict(verdict.left_out)
    source = Path(images)
    given = table.given[rows]
    has_given = table.has_label or (source.is_file() and fer2013_labels)
    if source.is_file():
        decoded, emotion = _decode_fer2013_rows(source, table, rows, preprocess)
        kept, paths = list(range(len(rows))), None
        if fer2013_labels and not table.has_label:
            index = {name: i for i, name in enumerate(table.class_names)}
            given = np.array([index.get(FER2013_CLASSES[label], -1) for label in emotion], dtype=np.int64)
    else:
        if not source.is_dir():
            raise SourceError(f"no such folder: {source}")
        paths = [os.path.join(source, table.images[r]) for r in rows]
        decoded, kept = _decode_paths(paths, preprocess, workers, warn)
        missing = len(rows) - len(kept)
        if missing > MOST_MISSING * len(rows) and not allow_missing:
            raise SourceError(
                f"{missing:,} of {len(rows):,} images {table.origin} names are missing or unreadable under {source}: "
                "is that the folder its paths are relative to? (--allow-missing trains on the rest)"
            )
        if not kept:
            raise SourceError(f"no readable images in {table.origin}")
        paths = [paths[i] for i in kept]
        if missing:
            left_out["unreadable or missing"] = missing
    kept_t = torch.as_tensor(kept, dtype=torch.long)
    distributions = torch.from_numpy(verdict.distributions)[kept_t]
    return LabelledTensors(
        images=decoded,
        labels=distributions.argmax(dim=1),
        class_names=list(table.class_names),
        origin=f"{table.origin}" + (f" ({split} rows)" if split else ""),
        votes=distributions,
        majority=torch.from_numpy(verdict.majority)[kept_t],
        given=torch.as_tensor(given, dtype=torch.long)[kept_t] if has_given else None,
        left_out=left_out,
        paths=paths,
    )


def _decode_fer2013_rows(
    source: Path, table: VoteTable, rows: np.ndarray, preprocess: dict
) -> tuple[torch.Tensor, list]:
    """The images of a FER2013 CSV at the table's ``rows`` (row numbers: FER+ beside fer2013.csv) decoded, in
    ``rows``' order, and FER2013's emotion (0..6) of each. Every row of the table is checked against the CSV's: a
    row whose split (Usage) disagrees means the files are out of step, an error naming the first."""
    by_number = {int(table.images[r]): i for i, r in enumerate(rows)}
    numbers = np.asarray(table.images, dtype=np.int64)
    split_by_number = np.full(int(numbers.max()) + 1, -1, dtype=np.int8)
    if table.has_split:
        split_by_number[numbers] = table.split_codes
    found, emotion = [None] * len(rows), [0] * len(rows)

    def wanted(index: int, usage: str) -> bool:
        ours = int(split_by_number[index]) if index < len(split_by_number) else -1
        if ours >= 0 and ours != SPLIT_CODES[split_of(usage)]:
            name = {code: name for name, code in SPLIT_CODES.items()}[ours] or "another split"
            raise SourceError(
                f"{table.origin}, line {index + 2} is {name}, but {source}, line {index + 2} is {usage or 'empty'}: "
                "the two files are out of step (a row missing or added?); a votes file beside a FER2013 CSV lists "
                "its images in the same order"
            )
        return index in by_number

    for index, pixels, label in _fer2013_rows(source, wanted):
        found[by_number[index]] = decode(Image.fromarray(pixels, mode="L"), preprocess)
        emotion[by_number[index]] = label
    if any(image is None for image in found):
        raise SourceError(
            f"{table.origin} has rows beyond the rows of {source}: a votes file beside a FER2013 CSV must list "
            "its images in the same order (FER+'s fer2013new.csv beside fer2013.csv)"
        )
    return torch.stack(found), emotion
