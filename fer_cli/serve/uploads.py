"""A request's uploads read within the server's limits: pixels per image, memory per decode, faces
per request. Each image is weighed from its header before a pixel of it is decoded; videos likewise
(``video_uploads.py``)."""

from __future__ import annotations

import io
import threading
from dataclasses import dataclass
from functools import partial

from PIL import Image

from ..engine.predict import Predictor
from ..inputs.images import ImageBytes, image_header
from ..outputs.annotate import annotated, enlargement
from ..outputs.results import Prediction, printable
from .pool import Task
from .video_uploads import VideoHeader, VideoLimits, check_video, is_video_upload, read_video_header, video_task

# Peak bytes per pixel while an image of each mode is read (decoded, made upright, converted,
# composited on white when it has transparency, rescaled when it has 16 bits), measured on
# 36-megapixel images with a margin: grayscale 3.3, RGB 7.7, RGBA and palette 16-17, 16-bit 27.
BYTES_PER_PIXEL = {"1": 6, "L": 6, "RGB": 12, "YCbCr": 12, "CMYK": 12, "LAB": 12, "HSV": 12, "P": 18, "PA": 18,
                   "LA": 18, "La": 18, "RGBA": 18, "RGBa": 18, "RGBX": 12}  # fmt: skip
OTHER_MODES = 30  # 16-bit and floating-point images, and anything else
ANNOTATED_BYTES_PER_PIXEL = 8  # the copy drawn on (RGB) and its PNG encoder's buffers


class Refused(Exception):
    """A request the server will not serve: answered ``status`` with ``detail``."""

    def __init__(self, status: int, detail: str, retry_after: int | None = None):
        super().__init__(detail)
        self.status, self.detail, self.retry_after = status, detail, retry_after


@dataclass(frozen=True)
class Header:
    """What an upload says of itself before it is decoded."""

    width: int
    height: int
    mode: str

    @property
    def pixels(self) -> int:
        return self.width * self.height

    @property
    def decode_memory(self) -> int:
        return self.pixels * BYTES_PER_PIXEL.get(self.mode, OTHER_MODES)


def read_header(item: ImageBytes) -> Header | str | None:
    """The upload's header; None when it is no image the reader opens (reading it says so, as for
    any unreadable file), or why it is refused outright."""
    try:
        found = image_header(item)
    except Image.DecompressionBombError:
        return f"{printable(item.name)} is over {2 * Image.MAX_IMAGE_PIXELS / 1e6:.0f} megapixels"
    return Header(*found) if found else None


def header_tasks(items: list[ImageBytes]) -> list[Task]:
    return [Task(partial(read_video_header if is_video_upload(item) else read_header, item)) for item in items]


def check_sizes(
    items: list[ImageBytes], headers: list, max_pixels: int, decode_memory: int, video: VideoLimits = VideoLimits()
) -> None:
    """Refuse the request (413) if one of its images or videos is larger than the server decodes."""
    limit = f"this server reads at most {max_pixels / 1e6:g} megapixels an image (fer serve --max-megapixels)"
    for item, header in zip(items, headers):
        if isinstance(header, VideoHeader):
            if refusal := check_video(item, header, video, max_pixels, decode_memory):
                raise Refused(413, refusal)
            continue
        if isinstance(header, str):
            raise Refused(413, f"{header}: {limit}")
        if header is None:
            continue
        if header.pixels > max_pixels:
            raise Refused(
                413,
                f"{printable(item.name)} is {header.width}x{header.height} pixels "
                f"({header.pixels / 1e6:.8g} megapixels): {limit}",  # 40.005, never rounded to the limit
            )
        if header.decode_memory + len(item.data) > decode_memory:
            raise Refused(
                413,
                f"{printable(item.name)} ({header.width}x{header.height}, {header.mode}) would take about "
                f"{_mb(header.decode_memory)} to decode: more than this server decodes at once, "
                f"{_mb(decode_memory)} (fer serve --decode-memory-mb)",
            )


class _FaceCount:
    """Faces found so far in one request (its images are read in several threads)."""

    def __init__(self, limit: int):
        self.limit, self.found = limit, 0
        self._lock = threading.Lock()

    def add(self, faces: int) -> None:
        with self._lock:
            self.found += faces
            if self.found > self.limit:
                raise Refused(
                    413,
                    f"more than {self.limit} faces in one request: this server takes at most {self.limit} "
                    "(fer serve --max-faces); send the images in several requests",
                )


def read_tasks(
    predictor: Predictor, items: list[ImageBytes], headers: list, max_faces: int, video: VideoLimits = VideoLimits()
) -> list[Task]:
    """One task per image: read, faces found, model pixels made (``Predictor.read``'s result), and one per video
    (its frames', ``video_uploads.VideoRead``); past ``max_faces`` faces in all, the request is refused and its
    uploads not yet read are not read."""
    count = _FaceCount(max_faces)

    def read(index: int, item: ImageBytes):
        result = predictor.read(index, item)
        count.add(len(result[1]))
        return result

    return [
        video_task(predictor, item, header, video, count.add)
        if is_video_upload(item)
        else Task(partial(read, index, item), _memory(item, header))
        for index, (item, header) in enumerate(zip(items, headers))
    ]


def annotate_task(item: ImageBytes, header, predictions: list[Prediction], colours: dict) -> Task:
    """The annotated PNG of one upload, drawn within the decode budget like a read."""
    copy = 0
    if isinstance(header, Header):
        scale = enlargement((header.width, header.height))
        copy = round(header.width * scale) * round(header.height * scale) * ANNOTATED_BYTES_PER_PIXEL
    return Task(partial(_annotated_png, item, predictions, colours), _memory(item, header) + copy)


def _annotated_png(item: ImageBytes, predictions: list[Prediction], colours: dict) -> bytes:
    buffer = io.BytesIO()
    annotated(item, predictions, colours).save(buffer, "PNG")
    return buffer.getvalue()


def _memory(item: ImageBytes, header) -> int:
    return (header.decode_memory if isinstance(header, Header) else 0) + len(item.data)


def _mb(size: int) -> str:
    return f"{size / 2**20:,.0f} MB"
