"""Images in, tensors out: reading any image file, finding inputs, labelled datasets, transforms.

Preprocessing is described by a plain dict that travels inside every checkpoint
(``{"size": 48, "channels": 1, "mean": [...], "std": [...]}``), and every tensor a model sees,
in training or prediction, is made from it by the transforms built here.
"""

from __future__ import annotations

import csv
import glob
import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torchvision.datasets.folder import find_classes, make_dataset
from torchvision.transforms import v2

from .errors import SourceError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pnm")

# What reading a broken or hostile file can raise (UnidentifiedImageError is an OSError;
# PIL raises SyntaxError for some malformed chunks; DecompressionBombError for absurd sizes).
READ_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)

# FER2013's CSV labels 0..6, in that order.
FER2013_CLASSES = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]


# --- reading one image -------------------------------------------------------------------------


def read_image(path: str | os.PathLike, channels: int) -> Image.Image:
    """Open any still image as 8-bit grayscale (channels=1), RGB (channels=3) or, with channels=0,
    whichever of the two the file holds (grayscale stays grayscale), upright.

    EXIF orientation is applied, transparency is composited on white, and 16/32-bit images are
    rescaled to 8 bits instead of clipped. Raises ``OSError``/``ValueError`` for unreadable files.
    """
    with Image.open(path) as image:
        image.load()
        image = ImageOps.exif_transpose(image)
    if channels == 0:
        channels = 1 if image.mode in ("1", "L", "LA", "I", "F") or image.mode.startswith("I;") else 3
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        image = _rescale_to_8_bits(image)
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    return image.convert("L" if channels == 1 else "RGB")


def _rescale_to_8_bits(image: Image.Image) -> Image.Image:
    pixels = np.asarray(image, dtype=np.float64)
    low, high = float(pixels.min()), float(pixels.max())
    scaled = (pixels - low) * (255.0 / (high - low)) if high > low else np.zeros_like(pixels)
    return Image.fromarray(scaled.round().astype(np.uint8), mode="L")


# --- transforms ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Augmentation:
    """Training-time augmentations; each one can be switched off on the command line."""

    flip: bool = True  # horizontal flip: faces are roughly symmetric
    crop: bool = True  # random resized crop, scale 0.8-1
    shift: bool = True  # translate up to 10% of the size
    rotate: float = 10.0  # degrees, either way; 0 = off
    erase: bool = True  # random erasing of a patch (after normalisation)

    @classmethod
    def parse(cls, spec: str) -> Augmentation:
        """'default', 'none', or a comma list of flip,crop,shift,rotate,erase."""
        spec = spec.strip().lower()
        if spec == "default":
            return cls()
        chosen = set() if spec == "none" else {part.strip() for part in spec.split(",") if part.strip()}
        valid = {"flip", "crop", "shift", "rotate", "erase"}
        if chosen - valid:
            raise ValueError(
                f"unknown augmentation {', '.join(sorted(chosen - valid))}; "
                f"use 'default', 'none' or a comma list of {', '.join(sorted(valid))}"
            )
        return cls(
            flip="flip" in chosen,
            crop="crop" in chosen,
            shift="shift" in chosen,
            rotate=10.0 if "rotate" in chosen else 0.0,
            erase="erase" in chosen,
        )

    def names(self) -> list[str]:
        return [n for n in ("flip", "crop", "shift", "rotate", "erase") if getattr(self, n)]


def decode_transform(preprocess: dict) -> v2.Transform:
    """PIL image -> uint8 tensor (C, size, size). The cheap-to-cache part of preprocessing."""
    size = preprocess["size"]
    return v2.Compose([v2.ToImage(), v2.Resize((size, size), antialias=True)])


def normalize_transform(preprocess: dict) -> v2.Transform:
    """uint8 tensor -> normalised float tensor, exactly as the model was trained."""
    return v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(preprocess["mean"], preprocess["std"])])


def eval_transform(preprocess: dict) -> v2.Transform:
    return v2.Compose([decode_transform(preprocess), normalize_transform(preprocess)])


def augment_transform(preprocess: dict, augmentation: Augmentation) -> v2.Transform:
    """uint8 tensor at model size -> augmented, normalised float tensor."""
    size = preprocess["size"]
    steps: list[v2.Transform] = []
    if augmentation.crop:
        steps.append(v2.RandomResizedCrop((size, size), scale=(0.8, 1.0), ratio=(0.9, 1.1), antialias=True))
    if augmentation.shift or augmentation.rotate:
        steps.append(
            v2.RandomAffine(
                degrees=augmentation.rotate,
                translate=(0.1, 0.1) if augmentation.shift else None,
            )
        )
    if augmentation.flip:
        steps.append(v2.RandomHorizontalFlip())
    steps.append(normalize_transform(preprocess))
    if augmentation.erase:
        steps.append(v2.RandomErasing(p=0.5, scale=(0.02, 0.15)))
    return v2.Compose(steps)


# --- finding inputs ------------------------------------------------------------------------------


def is_image_file(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(IMAGE_EXTENSIONS)


@dataclass(frozen=True)
class MissingInput:
    """A source that named nothing usable: reported like an unreadable image, never fatal."""

    source: str
    reason: str


def iter_image_paths(sources: Iterable[str], stdin=None) -> Iterator[str | MissingInput]:
    """Expand files, folders (recursively), globs and '-' (one path per line on stdin).

    Folders and globs keep only files with image extensions, in sorted order; a file named
    directly is always tried, whatever its extension. A source that yields nothing comes out
    as a ``MissingInput`` so the caller can report it and go on.
    """
    for source in sources:
        if source == "-":
            lines = (line.strip() for line in (stdin or sys.stdin))
            yield from iter_image_paths((line for line in lines if line and line != "-"), stdin)
            continue
        path = Path(source)
        if path.is_file():
            yield str(path)
        elif path.is_dir():
            found = sorted(str(p) for p in path.rglob("*") if p.is_file() and is_image_file(p))
            if not found:
                yield MissingInput(source, f"no images in folder {source}")
            yield from found
        elif glob.has_magic(source):
            found = sorted(p for p in glob.glob(source, recursive=True) if os.path.isfile(p) and is_image_file(p))
            if not found:
                yield MissingInput(source, f"no images match {source}")
            yield from found
        else:
            yield MissingInput(source, f"no such file or folder: {source}")


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count`` (1-based): a contiguous, balanced block of the sorted inputs,
    so the outputs of shards 1..count, concatenated in order, are exactly the unsharded output."""

    index: int
    count: int

    @classmethod
    def parse(cls, spec: str) -> Shard:
        index, sep, count = spec.partition("/")
        if not sep or not index.strip().isdigit() or not count.strip().isdigit():
            raise ValueError(f"expected I/N, e.g. 1/4, got '{spec}'")
        shard = cls(int(index), int(count))
        if not 1 <= shard.index <= shard.count:
            raise ValueError(f"shard {spec}: I must be between 1 and N (shards are numbered from 1)")
        return shard

    def select(self, items: list) -> list:
        start = len(items) * (self.index - 1) // self.count
        end = len(items) * self.index // self.count
        return items[start:end]


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
    samples = make_dataset(str(root), class_to_idx, extensions=IMAGE_EXTENSIONS, allow_empty=True)
    counts = np.bincount([label for _, label in samples], minlength=len(class_names))
    empty = [class_names[i] for i, count in enumerate(counts) if count == 0]
    if empty:
        raise SourceError(f"class folder {root / empty[0]} has no images ({len(empty)} empty class folder(s))")
    if len(class_names) < 2:
        raise SourceError(f"{root} has only one class folder ({class_names[0]}); need at least two classes")
    return LabelledFiles([p for p, _ in samples], [label for _, label in samples], class_names, str(root))


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
        self.channels = preprocess["channels"]
        self.decode = decode_transform(preprocess)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        try:
            return self.decode(read_image(self.paths[index], self.channels)), index
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
    decode = decode_transform(preprocess)
    channels = preprocess["channels"]
    tensors = [decode(Image.fromarray(img, mode="L").convert("L" if channels == 1 else "RGB")) for img in images]
    return LabelledTensors(torch.stack(tensors), torch.tensor(labels), list(FER2013_CLASSES), str(path))


class AugmentedTensors(torch.utils.data.Dataset):
    """Serves decoded images through a (random) transform, one sample at a time."""

    def __init__(self, data: LabelledTensors, transform: v2.Transform):
        self.data = data
        self.transform = transform

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int):
        return self.transform(self.data.images[index]), self.data.labels[index]
