"""Annotated copies of the inputs: each face's box, index, label and confidence drawn on the photo.

A copy is never much larger than its input: small images are enlarged so the text stays readable,
but only until the long side reaches ``MAX_ENLARGED_SIDE`` (a 1x60000 strip is not made 256 px wide,
which would be 15 gigapixels), and the text and lines are sized to fit the picture. Whatever goes
wrong while drawing is an ``AnnotationError`` (a ``ValueError``): one copy that could not be made,
never a crash of the run or of a server.
"""

from __future__ import annotations

import colorsys
import tempfile
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from ..inputs.images import ImageBytes, read_image
from .results import Prediction

MIN_SIDE = 256  # smaller inputs (a 48x48 crop) are enlarged so the text stays readable
MAX_ENLARGED_SIDE = 4096  # ... but never past this long side (a thin strip stays thin)
MIN_FONT, MAX_FONT = 12, 160  # text height in px: 1/40 of the long side, within these and half the short side
KEEP_FORMAT = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP"}


class AnnotationError(ValueError):
    """An annotated copy that could not be drawn (the drawing library failed, or memory ran out)."""


class Annotator:
    """Writes ``<stem>.fer<ext>`` into ``folder``, adding -1, -2... rather than overwrite any file."""

    def __init__(self, folder: Path, class_names: list[str]):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=self.folder).close()  # OSError now, not one per copy later: cannot write here
        self.colours = class_colours(class_names)
        self.written = 0

    def annotate(self, path: str, predictions: list[Prediction]) -> Path:
        """Write the copy; ``OSError`` (cannot write) or ``ValueError`` (cannot read or draw) when it
        could not be made, so the caller reports one copy missing and goes on."""
        image = annotated(path, predictions, self.colours)
        destination = self._free_name(Path(path))
        save_format = KEEP_FORMAT.get(destination.suffix.lower(), "PNG")
        try:
            image.save(destination, save_format, **({"quality": 92} if save_format == "JPEG" else {}))
        except (OSError, ValueError):
            raise
        except Exception as error:  # noqa: BLE001: an encoder failing in a way of its own
            raise AnnotationError(f"cannot encode the copy ({type(error).__name__})") from None
        self.written += 1
        return destination

    def _free_name(self, source: Path, suffix: str | None = None) -> Path:
        suffix = suffix or (source.suffix.lower() if source.suffix.lower() in KEEP_FORMAT else ".png")
        candidate = self.folder / f"{source.stem}.fer{suffix}"
        n = 0
        while candidate.exists():
            n += 1
            candidate = self.folder / f"{source.stem}.fer-{n}{suffix}"
        return candidate


def class_colours(class_names: list[str]) -> dict[str, tuple[int, int, int]]:
    """Each class's colour on annotated copies (and on ``fer serve``'s page)."""
    return {name: _colour(i, len(class_names)) for i, name in enumerate(class_names)}


def annotated(source: str | ImageBytes, predictions: list[Prediction], colours: dict) -> Image.Image:
    """An RGB copy of the input with each face's box, index, label and confidence drawn on it.

    Raises ``OSError``/``ValueError`` when the input cannot be read, ``AnnotationError`` (a
    ``ValueError``) when the copy cannot be drawn.
    """
    image = read_image(source, channels=3)
    try:
        return _draw(image, predictions, colours)
    except MemoryError:
        raise AnnotationError("not enough memory to draw the copy") from None
    except Exception as error:  # noqa: BLE001: Pillow's drawing can fail in ways of its own
        raise AnnotationError(f"cannot draw the copy ({type(error).__name__})") from None


def enlargement(size: tuple[int, int]) -> float:
    """How much a copy of an image of ``size`` is enlarged: until its short side is MIN_SIDE, but
    never past MAX_ENLARGED_SIDE on its long side, and never shrunk."""
    return max(1.0, min(MIN_SIDE / min(size), MAX_ENLARGED_SIDE / max(size)))


def _draw(image: Image.Image, predictions: list[Prediction], colours: dict) -> Image.Image:
    scale = enlargement(image.size)
    if scale > 1.0:
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.LANCZOS)
    draw = ImageDraw.Draw(image)
    short, long = min(image.size), max(image.size)
    # Sized from the long side, as a photo's; but a thin strip's text is as tall as the strip allows,
    # not 1/40 of its length (a 25,600-px font is a gigapixel bitmap).
    font = _font(max(MIN_FONT, min(round(long / 40), MAX_FONT, short // 2)))
    line = max(2, min(round(long / 320), short // 16))
    if all(p.faces == 0 for p in predictions):
        _label(draw, (0, 0), "no face found", (200, 200, 200), font)
    for p in predictions:
        if p.box is None or p.label is None:
            continue
        x, y, w, h = (round(v * scale) for v in p.box)
        colour = colours.get(p.label, (255, 255, 0))
        draw.rectangle((x, y, x + w - 1, y + h - 1), outline=colour, width=line)
        if p.track is not None:  # a video's face: its track
            text = f"#{p.track} {p.label} {p.confidence:.0%}"
        elif p.faces and p.faces > 1:
            text = f"{p.face + 1}: {p.label} {p.confidence:.0%}"
        else:
            text = f"{p.label} {p.confidence:.0%}"
        _label(draw, (x, y), text, colour, font)
    return image


def _label(draw: ImageDraw.ImageDraw, corner: tuple[int, int], text: str, colour, font) -> None:
    """Text on a filled tag above the box's corner (or inside it at the image's top edge)."""
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    pad = max(2, (bottom - top) // 5)
    width, height = right - left + 2 * pad, bottom - top + 2 * pad
    x = max(0, min(corner[0], draw.im.size[0] - width - 1))  # kept inside the picture
    y = corner[1] - height if corner[1] >= height else corner[1]
    draw.rectangle((x, y, x + width, y + height), fill=colour)
    draw.text((x + pad - left, y + pad - top), text, fill=(0, 0, 0), font=font)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: a small bitmap font
        return ImageFont.load_default()


def _colour(i: int, n: int) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(i / max(1, n), 0.65, 1.0)
    return round(r * 255), round(g * 255), round(b * 255)
