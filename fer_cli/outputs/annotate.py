"""Annotated copies of the inputs: each face's box, index, label and confidence drawn on the photo."""

from __future__ import annotations

import colorsys
import tempfile
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from ..inputs.images import ImageBytes, read_image
from .results import Prediction

MIN_SIDE = 256  # smaller inputs (a 48x48 crop) are enlarged so the text stays readable
KEEP_FORMAT = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP"}


class Annotator:
    """Writes ``<stem>.fer<ext>`` into ``folder``, adding -1, -2... rather than overwrite any file."""

    def __init__(self, folder: Path, class_names: list[str]):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=self.folder).close()  # OSError now, not one per copy later: cannot write here
        self.colours = class_colours(class_names)
        self.written = 0

    def annotate(self, path: str, predictions: list[Prediction]) -> Path:
        image = annotated(path, predictions, self.colours)
        destination = self._free_name(Path(path))
        save_format = KEEP_FORMAT.get(destination.suffix.lower(), "PNG")
        image.save(destination, save_format, **({"quality": 92} if save_format == "JPEG" else {}))
        self.written += 1
        return destination

    def _free_name(self, source: Path) -> Path:
        suffix = source.suffix.lower() if source.suffix.lower() in KEEP_FORMAT else ".png"
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
    """An RGB copy of the input with each face's box, index, label and confidence drawn on it."""
    image = read_image(source, channels=3)
    scale = max(1.0, MIN_SIDE / min(image.size))
    if scale > 1.0:
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.LANCZOS)
    draw = ImageDraw.Draw(image)
    font = _font(max(12, round(max(image.size) / 40)))
    line = max(2, round(max(image.size) / 320))
    if all(p.faces == 0 for p in predictions):
        _label(draw, (0, 0), "no face found", (200, 200, 200), font)
    for p in predictions:
        if p.box is None or p.label is None:
            continue
        x, y, w, h = (round(v * scale) for v in p.box)
        colour = colours.get(p.label, (255, 255, 0))
        draw.rectangle((x, y, x + w - 1, y + h - 1), outline=colour, width=line)
        text = (
            f"{p.face + 1}: {p.label} {p.confidence:.0%}"
            if p.faces and p.faces > 1
            else f"{p.label} {p.confidence:.0%}"
        )
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
