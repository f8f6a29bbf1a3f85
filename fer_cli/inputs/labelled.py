"""Labelled folders without torch: one subfolder of images per class, their files, and what identifies them
(by name, ``labelled_digest``; by content, ``content_hash``) so that a model's validation images are recognised
wherever they are. Scoring (``fer ensemble``) needs only this; decoding for training is ``data``'s.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import SourceError
from .images import READ_ERRORS, images_in_folder, is_image_file, read_image


def find_classes(root: str | os.PathLike) -> tuple[list[str], dict[str, int]]:
    """The class folders of ``root``, sorted by name, and their indices (as torchvision's ``find_classes``)."""
    names = sorted(entry.name for entry in os.scandir(root) if entry.is_dir())
    if not names:
        raise FileNotFoundError(f"no class folders in {root}")
    return names, {name: i for i, name in enumerate(names)}


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
    return images_fingerprint(find_labelled_images(root).paths)


def images_fingerprint(paths: list[str]) -> dict:
    """``validation_images`` for a list of image files."""
    hashes = [h for h in map(content_hash, paths) if h is not None]
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
