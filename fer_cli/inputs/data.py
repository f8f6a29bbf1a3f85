"""Labelled datasets decoded into memory as uint8 tensors, for training and scoring.

Images are read and converted to model pixels by ``images`` (the same two steps prediction
uses); this module decodes whole labelled folders or FER2013 CSVs into memory once.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.datasets.folder import find_classes

from ..errors import SourceError
from .images import READ_ERRORS, images_in_folder, is_image_file, model_pixels, read_image

# FER2013's CSV labels 0..6, in that order.
FER2013_CLASSES = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]


def decode(image: Image.Image, preprocess: dict) -> torch.Tensor:
    """PIL image -> uint8 tensor (C, size, size): ``images.model_pixels``, as prediction does it."""
    return torch.from_numpy(np.array(model_pixels(image, preprocess)))  # a writable copy


# --- labelled data -------------------------------------------------------------------------------


@dataclass
class LabelledFiles:
    """Image paths with integer labels into ``class_names``."""

    paths: list[str]
    labels: list[int]
    class_names: list[str]
    origin: str


def find_labelled_images(root: str | os.PathLike) -> LabelledFiles:
    """A folder with one subfolder per class (searched recursively for images)."""
    root = Path(root)
    if not root.is_dir():
        raise SourceError(f"no such folder: {root}")
    try:
        class_names, class_to_idx = find_classes(str(root))
    except FileNotFoundError:
        raise SourceError(f"{root} has no class subfolders; expected one subfolder of images per class") from None
    # a link inside one class's folder never reaches the others' images (nor loops)
    fence = [root, *(root / name for name in class_names)]
    samples = [
        (path, label)
        for name, label in class_to_idx.items()
        for path in images_in_folder(root / name, outside=[f for f in fence if f != root / name])
    ]
    counts = np.bincount([label for _, label in samples], minlength=len(class_names))
    empty = [class_names[i] for i, count in enumerate(counts) if count == 0]
    if empty:
        raise SourceError(f"class folder {root / empty[0]} has no images ({len(empty)} empty class folder(s))")
    if len(class_names) < 2:
        raise SourceError(f"{root} has only one class folder ({class_names[0]}); need at least two classes")
    return LabelledFiles([p for p, _ in samples], [label for _, label in samples], class_names, str(root))


def labelled_digest(root: str | os.PathLike) -> str:
    """A fingerprint of a labelled folder's contents by name: sha256 of its sorted 'class/file' entries,
    extensions dropped. The same images moved to another machine or re-encoded (PNG, WebP) keep it."""
    import hashlib

    files = find_labelled_images(root)
    entries = sorted(
        f"{files.class_names[label]}/{Path(path).relative_to(Path(root) / files.class_names[label]).with_suffix('')}"
        for path, label in zip(files.paths, files.labels)
    )
    return hashlib.sha256("\n".join(entries).encode()).hexdigest()


# How ``content_hash`` names an image, stored beside the hashes so that another method never
# compares equal by accident.
CONTENT_HASH = "sha256[:16] of WxH + 8-bit grayscale pixels"


def content_hash(path: str | os.PathLike) -> str | None:
    """An image's identity by what it shows: 16 hex digits of the sha256 of its size and upright
    8-bit grayscale pixels (None when it cannot be read).

    Pixels, not file bytes: a copy re-saved losslessly (another PNG compression, WebP lossless, BMP,
    metadata stripped, an RGB copy of a grayscale face) keeps its hash, and FER2013's CSV rows and
    its PNG trees hash alike. A lossy re-encode (JPEG) changes the pixels, and the hash.
    """
    import hashlib

    try:
        image = read_image(path, channels=1)
    except READ_ERRORS:
        return None
    return hashlib.sha256(f"{image.width}x{image.height}\n".encode() + image.tobytes()).hexdigest()[:16]


def validation_images(root: str | os.PathLike) -> dict:
    """What a checkpoint records of its validation folder's images: the content hashes (sorted,
    each once; 3,589 FER2013 faces take about 60 KB) and how many images there were."""
    files = find_labelled_images(root)
    hashes = [h for h in map(content_hash, files.paths) if h is not None]
    return {"method": CONTENT_HASH, "count": len(hashes), "hashes": sorted(set(hashes))}


def is_labelled_folder(root: str | os.PathLike, class_names: list[str]) -> bool:
    """True when ``root``'s image-holding subfolders are named after (some of) ``class_names``.

    A photo archive sorted into other folders (2019/, holidays/...) is not mistaken for one.
    """
    root = Path(root)
    if not root.is_dir() or any(p.is_file() and is_image_file(p) for p in root.iterdir()):
        return False
    with_images = [d.name for d in root.iterdir() if d.is_dir() and any(is_image_file(p) for p in d.rglob("*"))]
    return len(with_images) >= 2 and bool(set(with_images) & set(class_names))


@dataclass
class LabelledTensors:
    """A whole labelled dataset decoded once: uint8 images (N, C, H, W) and labels (N,)."""

    images: torch.Tensor
    labels: torch.Tensor
    class_names: list[str]
    origin: str

    def __len__(self) -> int:
        return len(self.labels)

    def reorder_classes(self, class_names: list[str]) -> LabelledTensors:
        """Relabel to another ordering of the same class names (e.g. a model's)."""
        if sorted(class_names) != sorted(self.class_names):
            raise SourceError(
                f"{self.origin} has classes {', '.join(self.class_names)} "
                f"but the training data has {', '.join(class_names)}"
            )
        mapping = torch.tensor([class_names.index(name) for name in self.class_names])
        return LabelledTensors(self.images, mapping[self.labels], list(class_names), self.origin)


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
    loader = torch.utils.data.DataLoader(_DecodeFiles(files.paths, preprocess), batch_size=256, num_workers=workers)
    images, kept = [], []
    for batch, indices in loader:
        good = indices >= 0
        images.append(batch[good])
        kept.extend(indices[good].tolist())
        if warn:
            for bad in (-1 - indices[~good]).tolist():
                warn(f"skipped unreadable image {files.paths[bad]}")
    if not kept:
        raise SourceError(f"no readable images in {files.origin}")
    labels = torch.tensor([files.labels[i] for i in kept])
    return LabelledTensors(torch.cat(images), labels, files.class_names, files.origin)


def read_fer2013_csv(path: str | os.PathLike, usage: Iterable[str], preprocess: dict) -> LabelledTensors:
    """Rows of a FER2013-style CSV (``emotion,pixels[,Usage]``) whose Usage is in ``usage``.

    A CSV without a Usage column counts every row as Training. Pixels are square grayscale.
    """
    usage = {u.lower() for u in usage}
    images, labels = [], []
    try:
        with open(path, newline="") as handle:
            reader = csv.DictReader(handle)
            if not reader.fieldnames or not {"emotion", "pixels"} <= set(reader.fieldnames):
                raise SourceError(f"{path} is not a FER2013-style CSV: it needs 'emotion' and 'pixels' columns")
            for line, row in enumerate(reader, start=2):
                if row.get("Usage", "Training").strip().lower() not in usage:
                    continue
                try:
                    pixels = np.array(row["pixels"].split(), dtype=np.uint8)
                    side = int(round(len(pixels) ** 0.5))
                    if side * side != len(pixels) or side == 0:
                        raise ValueError(f"{len(pixels)} pixels do not make a square image")
                    label = int(row["emotion"])
                    if not 0 <= label < len(FER2013_CLASSES):
                        raise ValueError(f"emotion {label} is outside 0..{len(FER2013_CLASSES) - 1}")
                except (ValueError, AttributeError) as error:
                    raise SourceError(f"{path}, line {line}: {error}") from None
                images.append(pixels.reshape(side, side))
                labels.append(label)
    except (OSError, UnicodeDecodeError) as error:
        raise SourceError(f"cannot read {path}: {error}") from None
    if not images:
        raise SourceError(f"{path} has no rows with Usage {' or '.join(sorted(usage))}")
    tensors = [decode(Image.fromarray(img, mode="L"), preprocess) for img in images]
    return LabelledTensors(torch.stack(tensors), torch.tensor(labels), list(FER2013_CLASSES), str(path))
