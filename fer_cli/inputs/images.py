"""Input images without torch: finding them, reading any image file upright, and turning an image
into the pixels a model takes.

Preprocessing is described by a plain dict that travels inside every checkpoint
(``{"size": 48, "channels": 1, "mean": [...], "std": [...]}``); ``model_pixels`` and ``normalise``
are the only two steps between a file and a model, in training and in prediction alike. Nothing
here imports torch, so predicting with an exported (ONNX) model never loads it.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import glob
import io
import os
import stat
import sys
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pnm")
# The only Pillow decoders a file or upload reaches, whatever its name: the formats the extensions above name
# (JPEG includes cameras' multi-picture JPEGs, MPO). PostScript (Ghostscript), FITS, WMF, DDS, SPIDER, PSD... are
# not opened at all: a file in one of them is "not an image (or an unsupported format)".
IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP", "PPM")


def _register_decoders() -> None:
    """Register the decoders of IMAGE_FORMATS, and only them: asked for a format it has not registered,
    Image.open registers every plugin Pillow has (60 ms of imports: Photoshop, PDF, AVIF...)."""
    Image.preinit()  # BMP, GIF, JPEG, PPM, PNG
    from PIL import TiffImagePlugin, WebPImagePlugin  # noqa: F401


_register_decoders()


def _quiet_libtiff() -> None:
    """Stop libtiff printing on stderr itself: Pillow decodes compressed TIFFs with it, and its default handlers
    write a damaged file's complaints ("tempfile.tif: Using code not yet in table.") beside fer's own line for that
    file. Pillow reads libtiff's return codes, not its messages, so a damaged TIFF is still an error per file.
    Best effort: where the libtiff Pillow loaded cannot be found (no /proc, a static build), nothing changes."""
    import ctypes

    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "libtiff" in line.rsplit("/", 1)[-1]}
    except OSError:
        return
    for path in paths:
        with contextlib.suppress(OSError, AttributeError):
            libtiff = ctypes.CDLL(path)  # the copy already loaded: dlopen hands back the same library
            for setter in (libtiff.TIFFSetWarningHandler, libtiff.TIFFSetErrorHandler):
                setter.restype, setter.argtypes = ctypes.c_void_p, [ctypes.c_void_p]
                setter(None)


_quiet_libtiff()


class UnreadableImage(ValueError):
    """A file a decoder failed on in a way of its own (a crafted file can make Pillow raise nearly anything)."""


# What reading a broken or hostile file can raise: read_image turns every decoder failure into one of these
# (UnidentifiedImageError is an OSError; DecompressionBombError for absurd sizes).
READ_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


# --- reading one image -------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageBytes:
    """An image held in memory (an upload to ``fer serve``): read like a file, reported under
    ``name``, never written anywhere."""

    name: str
    data: bytes = field(repr=False)


@dataclass(frozen=True)
class InMemoryImage:
    """A picture given from Python (a PIL image, or a numpy array of 8-bit pixels), reported under ``name``."""

    name: str
    picture: Image.Image = field(repr=False)

    @classmethod
    def of(cls, picture: Image.Image | np.ndarray, name: str) -> InMemoryImage:
        if isinstance(picture, np.ndarray):
            shape = picture.shape
            if picture.dtype != np.uint8 or not (picture.ndim == 2 or (picture.ndim == 3 and shape[2] in (1, 3, 4))):
                raise ValueError(f"{name}: an array of uint8 pixels, (H, W) or (H, W, 1|3|4), not {picture.dtype} "
                                 f"{shape}")  # fmt: skip
            picture = Image.fromarray(picture[:, :, 0] if picture.ndim == 3 and shape[2] == 1 else picture)
        if picture.width * picture.height > 2 * Image.MAX_IMAGE_PIXELS:  # as a file of that size is refused
            raise ValueError(f"{name}: over {2 * Image.MAX_IMAGE_PIXELS / 1e6:.0f} megapixels")
        return cls(name, picture)

    def image(self) -> Image.Image:
        """Grayscale stays grayscale, anything else becomes RGB (transparency on white), as a file's pixels."""
        return _to_channels(self.picture, 0)


def read_image(path: str | os.PathLike | ImageBytes, channels: int) -> Image.Image:
    """Open any still image (a file, or ``ImageBytes``) as 8-bit grayscale (channels=1), RGB
    (channels=3) or, with channels=0, whichever of the two the file holds (grayscale stays
    grayscale), upright.

    EXIF orientation is applied, transparency is composited on white, and 16/32-bit images are
    rescaled to 8 bits instead of clipped. Raises ``OSError``/``ValueError`` for unreadable files.
    """
    with warnings.catch_warnings():
        # PIL warns where it reads what it can: between its warning and hard limits (89 and 179
        # megapixels) an image is large, not hostile (a panorama); a damaged file's metadata
        # ("Corrupt EXIF data") does not stop its pixels. The image is read either way, and an
        # image that cannot be read is an error per file; a raw library warning is neither.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        warnings.simplefilter("ignore", UserWarning)
        try:
            with _open(path) as source, Image.open(source, formats=IMAGE_FORMATS) as image:
                image.load()
                image = ImageOps.exif_transpose(image)
            return _to_channels(image, channels)
        except READ_ERRORS:
            raise
        except (MemoryError, RecursionError):
            raise UnreadableImage("the image is too large or too deeply nested to decode") from None
        except Exception as error:  # noqa: BLE001: e.g. NotImplementedError (DDS), AttributeError (SPIDER)
            raise UnreadableImage(f"the decoder failed ({type(error).__name__})") from None


def _open(path: str | os.PathLike | ImageBytes) -> BinaryIO:
    """An image's bytes to read: a regular file (links followed), opened without waiting; a named pipe, a device or a
    folder is an ``OSError`` at once (opening a pipe to read waits for a writer: a listed FIFO hung a whole run)."""
    if isinstance(path, ImageBytes):
        return io.BytesIO(path.data)
    handle = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        if not stat.S_ISREG(os.fstat(handle).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        return os.fdopen(handle, "rb")
    except BaseException:
        os.close(handle)
        raise


def image_header(path: str | os.PathLike | ImageBytes) -> tuple[int, int, str] | None:
    """The (width, height, mode) an image declares in its header, read without decoding its pixels
    (to weigh it before reading it); None when it is not an image ``read_image`` opens.

    Raises ``Image.DecompressionBombError`` for a size past Pillow's hard limit (179 megapixels).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        warnings.simplefilter("ignore", UserWarning)
        try:
            with _open(path) as source, Image.open(source, formats=IMAGE_FORMATS) as image:
                return image.width, image.height, image.mode
        except Image.DecompressionBombError:
            raise
        except Exception:  # noqa: BLE001: any failure here is read_image's to report, as the input's error
            return None


def _to_channels(image: Image.Image, channels: int) -> Image.Image:
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


VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v")  # read by inputs/video.py


def is_video_file(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(VIDEO_EXTENSIONS)


@dataclass(frozen=True)
class MissingInput:
    """A source that named nothing usable: reported like an unreadable image, never fatal."""

    source: str
    reason: str


def iter_image_paths(
    sources: Iterable[str], stdin=None, on_note=None, videos: bool = False
) -> Iterator[str | MissingInput]:
    """Expand files, folders (recursively), globs and '-' (one path per line on stdin).

    Folders and globs keep only files with image extensions (and video ones, with ``videos``), in sorted order; a file named
    directly is always tried, whatever its extension. Links are followed, but each real folder is
    entered once and each real file listed once per source, so a link back up the tree neither
    loops nor repeats. A source that yields nothing, and a link with an image's name that leads
    nowhere, come out as ``MissingInput`` so the caller can report them and go on; ``on_note(text)``
    hears of the files a folder or glob passed over as not images.
    """
    for source in sources:
        if source == "-":
            lines = (line.rstrip("\r\n") for line in (stdin or sys.stdin))
            yield from iter_image_paths(
                (line for line in lines if line.strip() and line != "-"), stdin, on_note, videos
            )
            continue
        path = Path(source)
        if path.is_file():
            yield str(path)
        elif path.is_dir() or glob.has_magic(source):
            found = _walk(path, None) if path.is_dir() else _glob(source)
            images, broken, others = _sort_found(found, _is_input_file if videos else is_image_file)
            if not images and not broken:
                yield MissingInput(
                    source, f"no images in folder {source}" if path.is_dir() else f"no images match {source}"
                )
            if others and on_note:
                on_note(_passed_over(source, others))
            yield from sorted(
                [*images, *(MissingInput(link, "broken link (its target does not exist)") for link in broken)],
                key=_path_of,
            )
        elif path.is_symlink():
            yield MissingInput(source, f"broken link (its target does not exist): {source}")
        else:
            yield MissingInput(source, f"no such file or folder: {source}")


def images_in_folder(folder: str | os.PathLike, outside: Iterable[str | os.PathLike] = ()) -> list[str]:
    """The image files under ``folder``, sorted, each real file once, links followed without looping,
    never into the ``outside`` folders (e.g. a link from one class's folder to another's)."""
    fenced = {_identity(other) for other in outside}
    images, _, _ = _sort_found(_walk(Path(folder), None, fenced))
    return sorted(images)


def _identity(folder: str | os.PathLike) -> tuple[int, int]:
    stat = os.stat(folder)
    return stat.st_dev, stat.st_ino


def _path_of(item: str | MissingInput) -> str:
    return item.source if isinstance(item, MissingInput) else item


def _walk(root: Path, matches, fenced: set | None = None) -> Iterator[str]:
    """Every file under ``root`` (``matches(relative parts)`` to filter), following links to folders
    but entering each real folder once, and none of the ``fenced`` ones."""
    seen_folders = set(fenced or ())
    for folder, subfolders, files in os.walk(root, followlinks=True):
        identity = _identity(folder)
        if identity in seen_folders:
            subfolders[:] = []
            continue
        seen_folders.add(identity)
        subfolders.sort()
        for name in files:
            full = os.path.join(folder, name)
            if matches is None or matches(Path(full).relative_to(root).parts):
                yield full


def _glob(pattern: str) -> Iterator[str]:
    """``glob.glob(pattern, recursive=True)`` (files only), but a ``**`` walks with ``_walk``: the
    standard one follows links into cycles forever."""
    parts = Path(pattern).parts
    first_magic = next(i for i, part in enumerate(parts) if glob.has_magic(part))
    if "**" not in parts[first_magic:]:
        yield from (p for p in glob.glob(pattern) if os.path.isfile(p) or os.path.islink(p))
        return
    root = Path(*parts[:first_magic]) if first_magic else Path(".")
    if root.is_dir():
        rest = parts[first_magic:]
        for found in _walk(root, lambda relative: _glob_match(rest, relative)):
            yield found if first_magic else os.path.relpath(found)


def _glob_match(pattern: tuple[str, ...], parts: tuple[str, ...]) -> bool:
    """Glob's rules, one path component at a time: ``**`` spans any number of folders, and a
    wildcard never matches a name that starts with a dot unless the pattern does."""
    if not pattern:
        return not parts
    if pattern[0] == "**":
        return any(_glob_match(pattern[1:], parts[i:]) for i in range(len(parts) + 1) if not _hidden(parts[:i]))
    if not parts or (parts[0].startswith(".") and not pattern[0].startswith(".")):
        return False
    return fnmatch.fnmatchcase(parts[0], pattern[0]) and _glob_match(pattern[1:], parts[1:])


def _hidden(parts: tuple[str, ...]) -> bool:
    return any(part.startswith(".") for part in parts)


def _is_input_file(path: str) -> bool:
    return is_image_file(path) or is_video_file(path)


def _sort_found(found: Iterable[str], accepts=is_image_file) -> tuple[list[str], list[str], list[str]]:
    """Found files as (images (the files ``accepts``), each real file once; links with an image's name that lead
    nowhere; the rest)."""
    images, broken, others, real_paths, real_folders = [], [], [], set(), {}
    for path in found:
        if not accepts(path):
            others.append(path)
        elif not os.path.exists(path):
            broken.append(path)
        elif (real := _real_path(path, real_folders)) not in real_paths:
            real_paths.add(real)
            images.append(path)
    return images, broken, others


def _real_path(path: str, real_folders: dict[str, str]) -> str:
    """``os.path.realpath(path)``, its folder's resolved once for all its files (resolving each file's whole path
    took 0.4 s for FER2013 val's 3,589)."""
    if os.path.islink(path):
        return os.path.realpath(path)
    folder, name = os.path.split(path)
    if folder not in real_folders:
        real_folders[folder] = os.path.realpath(folder)
    return os.path.join(real_folders[folder], name)


def _passed_over(source: str, others: list[str]) -> str:
    examples = ", ".join(os.path.basename(p) for p in sorted(others)[:3])
    more = f" and {len(others) - 3:,} more" if len(others) > 3 else ""
    return f"{source}: passed over {len(others):,} file(s) without an image extension ({examples}{more})"


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
