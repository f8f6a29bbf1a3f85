"""Video inputs: their frames decoded one at a time (PyAV), upright, sampled, and batched for the reading workers.

A video is read in the main process as its frames are needed, so memory stays flat however long it is; each
frame then travels like an image through the one prediction path (the workers' face search, the models). Bad
files are one error each, given after the frames decoded before the damage, never an exception.

Limits (a file is refused, or cut short with its error, past them): ``MAX_SIDE`` px on a side and ``MAX_PIXELS``
a frame (8K), ``MAX_RATE`` frames a second, ``MAX_FRAMES`` frames read per video (``--fps`` and ``--start``/``--end``
choose fewer).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from .images import ImageBytes, MissingInput, is_video_file  # videos are found beside images (VIDEO_EXTENSIONS)

MAX_SIDE = 8192  # px, either side: 8K video is 7680x4320 (DCI 8K 8192x4320)
MAX_PIXELS = 8192 * 4320  # px a frame: 106 MB as RGB
MAX_RATE = 1000  # frames per second of video time, as the stream declares it
MAX_FRAMES = 100_000  # frames read from one video: nearly an hour at 30 fps
FRAME_BATCH_BYTES = 32 * 2**20  # decoded pixels per batch of frames: a batch of 720p frames holds 12
CUT_SHORT_SLACK = 0.5  # s: a video whose frames stop this much (and 2 frames) before its declared end was cut short
EPSILON = 1e-4  # s: timestamps closer than this are the same instant


class VideoError(ValueError):
    """Why a video, or the rest of it, could not be read: reported as that input's one error."""


@dataclass(frozen=True)
class Sampling:
    """Which frames of each video are read: every frame (``fps`` None), or at ``fps`` a second of video time;
    from ``start`` to ``end`` seconds (``end`` excluded; None: to the end), at most ``max_frames``, and at most
    ``max_decoded`` frames decoded to find them (None: no limit but the video's end)."""

    fps: float | None = None
    start: float = 0.0
    end: float | None = None
    max_frames: int = MAX_FRAMES
    max_decoded: int | None = None

    def __post_init__(self):
        if self.fps is not None and not 0 < self.fps <= MAX_RATE:
            raise ValueError(f"--fps must be above 0 and at most {MAX_RATE}, got {self.fps:g}")
        if not 0 <= self.start < math.inf:
            raise ValueError(f"--start must be 0 or more seconds, got {self.start:g}")
        if self.end is not None and not self.start < self.end:
            raise ValueError(f"--end ({self.end:g} s) must come after --start ({self.start:g} s)")

    def describe(self) -> str:
        rate = f"{self.fps:g} frames/s" if self.fps else "every frame"
        span = f" from {self.start:g} s" if self.start else ""
        return rate + span + (f" to {self.end:g} s" if self.end is not None else "")


@dataclass(frozen=True)
class VideoFrame:
    """One frame of a video on its way to the face search: ``index`` counts the video's frames from 0, ``time`` is
    seconds from its start, ``last`` marks the video's last frame read; ``pixels`` (RGB, upright) leave it once read."""

    path: str
    index: int
    time: float
    last: bool = False
    pixels: np.ndarray | None = field(default=None, repr=False, compare=False)

    def image(self) -> Image.Image:
        return Image.fromarray(self.pixels)  # (height, width, 3) uint8: RGB


def read_frames(path: str, sampling: Sampling, name: str | None = None) -> Iterator[VideoFrame | MissingInput]:
    """The video's sampled frames, the last one marked, then a ``MissingInput`` with the reason when the video, or
    its rest, could not be read (one frame is held back to know which is last). ``path`` may be a file object
    (an upload) called ``name``."""
    held: VideoFrame | None = None
    problem = None
    try:
        for frame in sampled_frames(path, sampling, name):
            if held is not None:
                yield held
            held = frame
    except VideoError as error:
        problem = str(error)
    except (MemoryError, RecursionError):
        problem = "the video is too large to decode"
    except Exception as error:  # noqa: BLE001: a damaged file can make a decoder fail in a way of its own
        problem = f"the decoder failed ({type(error).__name__})"
    if held is not None:
        yield VideoFrame(held.path, held.index, held.time, problem is None, held.pixels)
    if problem is not None:
        yield MissingInput(name or path, problem)


def sampled_frames(path: str, sampling: Sampling, name: str | None = None) -> Iterator[VideoFrame]:
    """Decode ``path`` (a file, or a file object called ``name``) frame by frame and yield the frames ``sampling``
    takes, upright RGB; ``VideoError`` (after the frames read before it) when the file is not a video, breaks a
    limit, is damaged or cut short."""
    import av  # only when a video is read: the import costs 0.1 s

    try:
        container = av.open(path, metadata_errors="ignore")
    except (av.FFmpegError, OSError, ValueError) as error:
        raise VideoError(f"not a video (or an unsupported or damaged one): {_reason(error)}") from None
    with container:
        if not container.streams.video:
            raise VideoError("no video stream in the file (audio only?)")
        stream = container.streams.video[0]
        if stream.codec_context is None:
            raise VideoError("the video stream's codec is unknown (or the file is damaged)")
        _check_declared(stream)
        stream.thread_type = "AUTO"
        offset = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
        rate = float(stream.average_rate or stream.guessed_rate or 0) or None
        decoded = taken = chosen = 0  # frames decoded, yielded, and the sampling instants reached (--fps)
        last_time, stopped_at_end = None, False
        try:
            for frame in container.decode(stream):
                if sampling.max_decoded is not None and decoded >= sampling.max_decoded:
                    raise VideoError(f"stopped after decoding {decoded:,} frames, the most decoded of one video")
                index, decoded = decoded, decoded + 1
                time = _seconds(frame, offset, index, rate)
                last_time = time
                if time < sampling.start - EPSILON:
                    continue
                if sampling.end is not None and time >= sampling.end - EPSILON:
                    stopped_at_end = True
                    break
                if sampling.fps:
                    if time < sampling.start + chosen / sampling.fps - EPSILON:
                        continue
                    chosen = math.floor((time - sampling.start) * sampling.fps + EPSILON) + 1
                if taken >= sampling.max_frames:
                    raise VideoError(
                        f"stopped after {sampling.max_frames:,} frames (at {time:.2f} s), the most read of one "
                        "video; --fps or --start/--end choose fewer"
                    )
                if max(frame.width, frame.height) > MAX_SIDE or frame.width * frame.height > MAX_PIXELS:
                    raise VideoError(f"frame {index} is {frame.width}x{frame.height}, larger than 8K: refused")
                yield VideoFrame(name or path, index, round(time, 6), pixels=upright_pixels(frame))
                taken += 1
        except VideoError:
            raise
        except (av.FFmpegError, OSError, ValueError, MemoryError) as error:  # the decoder's, or the conversion's
            where = f"after frame {decoded - 1} ({last_time:.2f} s)" if decoded else "at its first frame"
            raise VideoError(f"damaged or cut short {where}: {_reason(error)}") from None
        if not stopped_at_end:
            _check_complete(container, stream, decoded, last_time, rate)
        if decoded == 0:
            raise VideoError("no frames in the video stream")
        if taken == 0:
            raise VideoError(
                f"no frames in the chosen span ({sampling.describe()}; the last frame is at {last_time:.2f} s)"
            )


def upright_pixels(frame) -> np.ndarray:
    """A decoded frame as RGB pixels (height, width, 3), turned as its stream's display matrix says (phone videos
    are stored sideways, with a rotation to show them upright)."""
    pixels = frame.to_ndarray(format="rgb24")
    quarter_turns = round((getattr(frame, "rotation", 0) or 0) / 90) % 4  # counter-clockwise
    return np.ascontiguousarray(np.rot90(pixels, quarter_turns)) if quarter_turns else pixels


def _seconds(frame, offset: float, index: int, rate: float | None) -> float:
    if frame.pts is not None and frame.time_base is not None:
        return float(frame.pts * frame.time_base) - offset
    return index / rate if rate else float(index)


def _check_declared(stream) -> None:
    width, height = stream.codec_context.width, stream.codec_context.height
    if max(width, height) > MAX_SIDE or width * height > MAX_PIXELS:
        raise VideoError(f"the video is {width}x{height}, larger than 8K ({MAX_SIDE} px a side, 8192x4320): refused")
    rate = stream.average_rate or stream.base_rate
    if rate and float(rate) > MAX_RATE:
        raise VideoError(f"the video declares {float(rate):,.0f} frames/s, over {MAX_RATE}: refused")


def _check_complete(container, stream, decoded: int, last_time: float | None, rate: float | None) -> None:
    """A file cut short often decodes without an error, its frames just stop: compare with what its header declares
    (the number of frames, else the duration: the stream's, or the file's when the video is all it holds). Only a
    shortfall over ``CUT_SHORT_SLACK`` and 2 frames counts: an edit list may leave out a frame or two of a whole file."""
    frame_time = 1 / rate if rate else 0.0
    if stream.frames and stream.frames - decoded > max(2, CUT_SHORT_SLACK * (rate or 0)):
        raise VideoError(f"cut short or damaged: {decoded:,} of the {stream.frames:,} frames it declares decoded")
    if stream.frames:
        return
    duration = None
    if stream.duration is not None:
        duration = float(stream.duration * stream.time_base)
    elif container.duration is not None and len(container.streams) == 1:
        duration = container.duration / 1_000_000
    if duration and last_time is not None and last_time + frame_time < duration - max(CUT_SHORT_SLACK, 2 * frame_time):
        raise VideoError(
            f"cut short or damaged: its frames stop at {last_time:.2f} s of the {duration:.2f} s it declares"
        )


def _reason(error: Exception) -> str:
    return getattr(error, "strerror", None) or str(error).splitlines()[0] or type(error).__name__


# --- into the prediction path --------------------------------------------------------------------


def has_videos(items: Iterable) -> bool:
    return any(isinstance(item, str) and is_video_file(item) for item in items)


def numbered_inputs(items: Iterable, sampling: Sampling) -> Iterator[tuple[int, object]]:
    """The inputs numbered in order, each video replaced by its frames (and its error, if any) as it is decoded."""
    number = 0
    for item in items:
        expanded = read_frames(item, sampling) if isinstance(item, str) and is_video_file(item) else (item,)
        for one in expanded:
            yield number, one
            number += 1


def input_batches(items: list, sampling: Sampling, batch_size: int) -> Iterator[list[tuple[int, object]]]:
    """``numbered_inputs`` in batches of ``batch_size``, fewer frames when they are large (``FRAME_BATCH_BYTES``)."""
    batch, size = [], 0
    for number, item in numbered_inputs(items, sampling):
        batch.append((number, item))
        size += item.pixels.nbytes if isinstance(item, VideoFrame) else 0
        if len(batch) >= batch_size or size >= FRAME_BATCH_BYTES:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def without_pixels(item: str | MissingInput | ImageBytes | VideoFrame):
    """What is kept of an input while it is read: a frame's place in its video, not its pixels."""
    return VideoFrame(item.path, item.index, item.time, item.last) if isinstance(item, VideoFrame) else item


def ends_input(frame: VideoFrame | None) -> bool:
    """Whether an outcome with this frame (None: an image, or an input's error) completes one input."""
    return frame is None or frame.last
