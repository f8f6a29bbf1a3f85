"""Annotated copies of videos: each frame read, with its faces' boxes, track ids, labels and confidences drawn
(``annotate``'s drawing), encoded as H.264 in ``NAME.fer.mp4``.

The pixels of a frame are gone once its faces are found (only the records come back), so the copy decodes the
video a second time, in step with the records: each frame's records, as they come, are drawn on the same frame of
the second decoder and encoded at once. Nothing waits for the end of the video, and memory stays flat however
long it is. With ``--fps`` the copy holds the frames read, each at its own time.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

from ..inputs.video import Sampling, VideoFrame, sampled_frames
from .annotate import AnnotationError, Annotator, _draw
from .results import Prediction

CRF = 20  # x264's quality: visually near-lossless for drawn boxes and text
TIMESCALE = 1000  # pts in milliseconds: each frame keeps its own time, whatever the sampling


class VideoCopies:
    """Writes each video's annotated copy into the annotator's folder, frame by frame as its records come."""

    def __init__(self, annotator: Annotator, sampling: Sampling | None = None):
        self.annotator = annotator
        self.sampling = sampling or Sampling()
        self.copy: _Copy | None = None
        self.passing: tuple[str, int] | None = None  # (video, last frame) of a copy that failed: the rest passed over

    def add(self, path: str, frame: VideoFrame | None, rows: list[Prediction]) -> Path | None:
        """Draw the records of a video's frame (an input's outcome: ``frame`` None for an image or an error) on its
        copy; finish the copy at the video's end (its last frame, or its error after some frames) and return where
        it went. ``OSError``/``ValueError`` when it cannot be made."""
        if frame is None:  # an image, or a video's error: the end of that video's frames, if any came
            if self.passing is not None and self.passing[0] == path:
                self.passing = None
            return self._finish() if self.copy is not None and path == self.copy.source else None
        if self.passing is not None:
            path, last = self.passing
            self.passing = None
            if path == path and frame.index > last:  # the rest of a video whose copy failed
                self.passing = None if frame.last else (path, frame.index)
                return None
        if self.copy is not None and (path != self.copy.source or frame.index <= self.copy.index):
            self._finish()  # a video that ended without its last frame: not expected, but closed
        if self.copy is None:
            destination = self.annotator._free_name(Path(path), ".mp4")
            self.copy = _Copy(path, destination, self.sampling, self.annotator.colours)
        try:
            self.copy.draw(frame.index, rows)
        except BaseException:
            self._abandon(None if frame.last else frame.index)
            raise
        return self._finish() if frame.last else None

    def _finish(self) -> Path:
        copy = self.copy
        try:
            copy.close()
        except BaseException:
            self._abandon(None)
            raise
        self.copy = None
        self.annotator.written += 1
        return copy.destination

    def _abandon(self, last: int | None) -> None:
        """A copy that failed: its file removed, and the video's frames after ``last`` (None: none) passed over."""
        copy, self.copy = self.copy, None
        self.passing = None if last is None else (copy.source, last)
        copy.discard()


class _Copy:
    """One video's annotated copy being written: a second decoder, and the encoder."""

    def __init__(self, source: str, destination: Path, sampling: Sampling, colours: dict):
        import av

        self.source, self.destination, self.colours = source, destination, colours
        self.frames = sampled_frames(source, sampling)
        self.container = av.open(str(destination), "w")
        self.stream = None
        self.index = -1
        self.pts = -1

    def draw(self, index: int, rows: list[Prediction]) -> None:
        import av

        try:
            frame = next(f for f in self.frames if f.index >= index)
        except StopIteration:
            raise AnnotationError("the video ended before its frames were drawn (was it changed?)") from None
        except ValueError as error:  # the second decoder's VideoError
            raise AnnotationError(f"cannot decode it again: {error}") from None
        if frame.index != index:
            raise AnnotationError("the video's frames differ from those read (was it changed?)")
        self.index = index
        try:
            image = _draw(frame.image(), rows, self.colours)
            image = image.crop((0, 0, image.width // 2 * 2, image.height // 2 * 2))  # 4:2:0 wants even sides
            if self.stream is None:
                self.stream = self.container.add_stream("libx264", rate=TIMESCALE, options={"crf": str(CRF)})
                self.stream.width, self.stream.height, self.stream.pix_fmt = image.width, image.height, "yuv420p"
                self.stream.codec_context.time_base = Fraction(1, TIMESCALE)
            if image.size != (self.stream.width, self.stream.height):  # a video whose frames change size
                image = image.resize((self.stream.width, self.stream.height))
            picture = av.VideoFrame.from_image(image)
            self.pts = picture.pts = max(self.pts + 1, round(frame.time * TIMESCALE))
            picture.time_base = Fraction(1, TIMESCALE)
            self.container.mux(self.stream.encode(picture))
        except (OSError, ValueError):
            raise
        except Exception as error:  # noqa: BLE001: the drawing or the encoder failing in a way of its own
            raise AnnotationError(f"cannot draw or encode the copy ({type(error).__name__})") from None

    def close(self) -> None:
        self.frames.close()
        if self.stream is None:
            raise AnnotationError("no frame to draw")
        try:
            self.container.mux(self.stream.encode(None))
            self.container.close()
        except (OSError, ValueError):
            raise
        except Exception as error:  # noqa: BLE001
            raise AnnotationError(f"cannot encode the copy ({type(error).__name__})") from None

    def discard(self) -> None:
        self.frames.close()
        try:
            self.container.close()
        except Exception:  # noqa: BLE001: a half-written file, removed below
            pass
        self.destination.unlink(missing_ok=True)
