"""Annotated copies of videos: each frame read, with its faces' boxes, track ids, labels and confidences drawn
(``annotate``'s drawing), encoded as H.264 in ``NAME.fer.mp4``.

The records of a video are kept (a few numbers per face per frame) until its last frame is in; the video is then
decoded again, the frames read the first time drawn and encoded one by one, so memory stays flat however long it
is. With ``--fps`` the copy holds the frames read, each at its own time.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

from PIL import Image

from ..engine.predict import Outcome
from ..inputs.video import Sampling, VideoError, sampled_frames
from .annotate import AnnotationError, Annotator, _draw
from .results import Prediction

CRF = 20  # x264's quality: visually near-lossless for drawn boxes and text


class VideoCopies:
    """Writes each video's annotated copy into the annotator's folder once the video's last frame (or its error,
    after some frames) has come."""

    def __init__(self, annotator: Annotator, sampling: Sampling | None = None):
        self.annotator = annotator
        self.sampling = sampling or Sampling()
        self.path: str | None = None
        self.rows: dict[int, list[Prediction]] = {}  # frame index -> its records
        self.last_index = -1

    def add(self, outcome: Outcome, rows: list[Prediction]) -> Path | None:
        """Keep a frame's records; write the copy when its video ends. Returns where it went, or None.
        ``OSError``/``ValueError`` when it could not be written."""
        frame = outcome.frame
        if frame is None:  # an image, or a video's error: the end of that video's frames, if any came
            return self._write() if outcome.path == self.path and self.rows else None
        if outcome.path != self.path or frame.index <= self.last_index:
            self.path, self.rows = outcome.path, {}
        self.last_index = frame.index
        self.rows[frame.index] = rows
        return self._write() if frame.last else None

    def _write(self) -> Path:
        path, rows = self.path, self.rows
        self.path, self.rows, self.last_index = None, {}, -1
        destination = self.annotator._free_name(Path(path), ".mp4")
        try:
            write_annotated_video(path, rows, self.sampling, self.annotator.colours, destination)
        except (OSError, ValueError):
            destination.unlink(missing_ok=True)
            raise
        except Exception as error:  # noqa: BLE001: the encoder failing in a way of its own
            destination.unlink(missing_ok=True)
            raise AnnotationError(f"cannot encode the copy ({type(error).__name__})") from None
        self.annotator.written += 1
        return destination


def write_annotated_video(path: str, rows: dict[int, list[Prediction]], sampling: Sampling, colours, out: Path) -> None:
    """Decode ``path`` again with ``sampling`` and write the frames in ``rows``, drawn, to ``out`` (H.264 MP4)."""
    import av

    timescale = 1000  # pts in milliseconds: each frame keeps its own time, whatever the sampling
    with av.open(str(out), "w") as container:
        stream = None
        last_pts = -1
        try:
            for frame in sampled_frames(path, sampling):
                if frame.index not in rows:
                    continue
                image = _draw(frame.image(), rows[frame.index], colours)
                image = image.crop((0, 0, image.width // 2 * 2, image.height // 2 * 2))  # 4:2:0 wants even sides
                if stream is None:
                    stream = container.add_stream("libx264", rate=Fraction(timescale, 1), options={"crf": str(CRF)})
                    stream.width, stream.height, stream.pix_fmt = image.width, image.height, "yuv420p"
                    stream.codec_context.time_base = Fraction(1, timescale)
                picture = av.VideoFrame.from_image(_sized(image, stream))
                last_pts = picture.pts = max(last_pts + 1, round(frame.time * timescale))
                picture.time_base = Fraction(1, timescale)
                container.mux(stream.encode(picture))
        except VideoError:  # the rest of a damaged video: its error is already told; the frames read are drawn
            pass
        if stream is None:
            raise AnnotationError("no frame to draw")
        container.mux(stream.encode(None))


def _sized(image: Image.Image, stream) -> Image.Image:
    """A frame the size of the stream's first (a video whose frames change size is drawn at the first's)."""
    return image if image.size == (stream.width, stream.height) else image.resize((stream.width, stream.height))
