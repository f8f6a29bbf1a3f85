"""Short videos uploaded to `fer serve`, read within the server's limits.

A video is weighed from its header first (frame size, declared duration: over the limits, 413 before a frame is
decoded), then read in one reading task: ``fps`` frames a second of video time, up to ``seconds`` of it (frames past
that are not read, whatever the header said), each frame searched for faces and made into model pixels as `fer
predict` does. The frames it gives are inputs of the request of their own, so their records are `fer predict`'s
video records (frame, time, track). The request's upload size, face count and decode memory limits count a video
as they count images.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from functools import partial

from ..engine.predict import Predictor
from ..inputs.images import ImageBytes, is_video_file
from ..inputs.video import MAX_SIDE, Sampling, read_frames, without_pixels
from ..outputs.results import printable
from .pool import Task

# Peak bytes per pixel of a frame while a video is read: the decoder's frames (YUV, 1.5 bytes a pixel: the
# references it keeps, one more per decoding thread), the frame as RGB, its image and the copy searched for faces.
VIDEO_BYTES_PER_PIXEL = 40
FASTEST_RATE = 240  # frames a second decoded at most, on average, over the seconds read (slow motion phones: 240)


@dataclass(frozen=True)
class VideoLimits:
    """What the server reads of one video: ``fps`` frames a second of video time, the first ``seconds``."""

    fps: float = 5.0
    seconds: float = 60.0

    @property
    def frames(self) -> int:
        """Frames read at most: one at the start of each 1/fps s."""
        return math.ceil(self.seconds * self.fps) + 1

    def sampling(self) -> Sampling:
        decoded = math.ceil(self.seconds * FASTEST_RATE)
        return Sampling(fps=self.fps, end=self.seconds, max_frames=self.frames, max_decoded=decoded)


@dataclass(frozen=True)
class VideoHeader:
    """What an uploaded video says of itself before it is decoded."""

    width: int
    height: int
    seconds: float | None  # as declared (None: not said)

    @property
    def pixels(self) -> int:
        return self.width * self.height

    @property
    def decode_memory(self) -> int:
        return self.pixels * VIDEO_BYTES_PER_PIXEL


@dataclass(frozen=True)
class VideoRead:
    """A video's frames read: each (the frame without its pixels, or the error of the rest) with its reading."""

    frames: list[tuple]


def is_video_upload(item: ImageBytes) -> bool:
    return is_video_file(item.name)


def read_video_header(item: ImageBytes) -> VideoHeader | None:
    """The video's header; None when it is no video PyAV opens (reading it then says why, as for a file)."""
    import av

    try:
        with av.open(io.BytesIO(item.data), metadata_errors="ignore") as container:
            if not container.streams.video or container.streams.video[0].codec_context is None:
                return None
            stream = container.streams.video[0]
            seconds = None
            if stream.duration is not None and stream.time_base is not None:
                seconds = float(stream.duration * stream.time_base)
            elif container.duration is not None:
                seconds = container.duration / 1_000_000
            return VideoHeader(stream.codec_context.width, stream.codec_context.height, seconds)
    except Exception:  # noqa: BLE001: whatever a damaged or hostile file makes the demuxer raise, reading tells it
        return None


def check_video(item: ImageBytes, header: VideoHeader, limits: VideoLimits, max_pixels: int, decode_memory: int):
    """Why the server refuses this video (413), or None."""
    name = printable(item.name)
    if header.pixels > max_pixels or max(header.width, header.height) > MAX_SIDE:
        return (
            f"{name} is {header.width}x{header.height} pixels a frame: this server reads at most "
            f"{max_pixels / 1e6:g} megapixels a frame (fer serve --max-megapixels)"
        )
    if header.seconds is not None and header.seconds > limits.seconds + 0.5:
        return (
            f"{name} is {header.seconds:.1f} s long: this server reads videos of at most {limits.seconds:g} s "
            "(fer serve --max-video-seconds); send a shorter cut"
        )
    if header.decode_memory + len(item.data) > decode_memory:
        return (
            f"{name} ({header.width}x{header.height}) would take about {header.decode_memory / 2**20:,.0f} MB to "
            f"decode: more than this server decodes at once, {decode_memory / 2**20:,.0f} MB (fer serve "
            "--decode-memory-mb)"
        )
    return None


def video_task(predictor: Predictor, item: ImageBytes, header, limits: VideoLimits, count_faces) -> Task:
    """The reading of one uploaded video, as one task of the reading pool; ``count_faces(n)`` refuses the request
    once its faces pass the limit."""
    memory = (header.decode_memory if isinstance(header, VideoHeader) else 0) + len(item.data)
    return Task(partial(_read_video, predictor, item, limits, count_faces), memory)


def _read_video(predictor: Predictor, item: ImageBytes, limits: VideoLimits, count_faces) -> VideoRead:
    frames = []
    for number, one in enumerate(read_frames(io.BytesIO(item.data), limits.sampling(), item.name)):
        reading = predictor.read(number, one)
        count_faces(len(reading[1]))
        frames.append((without_pixels(one), reading))
    return VideoRead(frames)


def each_input(items: list[ImageBytes], read: list) -> tuple[list, list[tuple]]:
    """A request's uploads and their readings, each video's frames made inputs of their own: (the inputs: images
    and frames, numbered in order; their readings, as ``Predictor.read`` gives them, numbered alike)."""
    inputs, readings = [], []
    for item, result in zip(items, read):
        pairs = result.frames if isinstance(result, VideoRead) else [(item, result)]
        for one, (_, places, pixels, error) in pairs:
            readings.append((len(inputs), places, pixels, error))
            inputs.append(one)
    return inputs, readings
