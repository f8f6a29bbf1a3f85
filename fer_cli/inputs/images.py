"""Input images without torch: finding them, reading any image file upright, and turning an image
into the pixels a model takes.

Preprocessing is described by a plain dict that travels inside every checkpoint
(``{"size": 48, "channels": 1, "mean": [...], "std": [...]}``); ``model_pixels`` and ``normalise``
are the only two steps between a file and a model, in training and in prediction alike. Nothing
here imports torch, so predicting with an exported (ONNX) model never loads it.
"""

from __future__ import annotations

import glob
import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pnm")

# What reading a broken or hostile file can raise (UnidentifiedImageError is an OSError;
# PIL raises SyntaxError for some malformed chunks; DecompressionBombError for absurd sizes).
READ_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


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


# --- model pixels --------------------------------------------------------------------------------


def model_pixels(image: Image.Image, preprocess: dict) -> np.ndarray:
    """An upright 8-bit image -> the model's input as uint8 (channels, size, size): converted to
    grayscale or RGB and resized (bilinear, antialiased when shrinking)."""
    mode = "L" if preprocess["channels"] == 1 else "RGB"
    if image.mode != mode:
        image = image.convert(mode)
    size = preprocess["size"]
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BILINEAR)
    pixels = np.asarray(image)
    return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)


def normalise(pixels: np.ndarray, preprocess: dict) -> np.ndarray:
    """uint8 (..., C, H, W) -> float32 scaled to [0, 1] then standardised with the training mean and std."""
    mean = np.asarray(preprocess["mean"], dtype=np.float32)[:, None, None]
    std = np.asarray(preprocess["std"], dtype=np.float32)[:, None, None]
    return (pixels.astype(np.float32) / np.float32(255.0) - mean) / std
