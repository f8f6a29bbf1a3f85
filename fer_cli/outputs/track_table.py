"""The table for people of a video: one row per face track, with its span, the frames it is in, the share of
them under each label and the dominant one. Only counts are kept, so memory stays flat however long the video."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from rich.console import Console
from rich.table import Table
from rich.text import Text

from .results import Prediction, TableWriter, _fits
from .terminal import plain, printable


@dataclass
class TrackTally:
    start: float
    end: float
    labels: Counter = field(default_factory=Counter)


@dataclass
class VideoTally:
    frames: int = 0
    tracks: dict[int, TrackTally] = field(default_factory=dict)


class TableWithTracks(TableWriter):
    """The table for people when videos are among the inputs: the images' rows as ``TableWriter`` lays them out
    (none when there are only videos), then one row per face track."""

    def __init__(self, stream, class_names, width: int | None = None, video: bool = True):
        super().__init__(stream, class_names, width, video)
        self.tracks = TrackSummary(class_names)

    def write_batch(self, predictions):
        super().write_batch([p for p in predictions if p.frame is None])  # images, and a video's error
        for p in predictions:
            if p.frame is not None:
                self.tracks.add(p)

    def close(self):
        if self.rows or not self.tracks:
            super().close()
        if self.tracks:
            console = Console(file=self.stream, width=self.width)
            table = self.tracks.table(per_class=True)  # a column per class where they fit
            console.print(table if _fits(console, table) else self.tracks.table(per_class=False))
            for note in self.tracks.notes():
                console.print(note, highlight=False)
        self.stream.flush()


class TrackSummary:
    """Gathers video records (``frame`` set) per video and track; ``table`` lays them out."""

    def __init__(self, class_names: list[str]):
        self.class_names = class_names
        self.videos: dict[str, VideoTally] = {}
        self.smooth: float | None = None

    def __bool__(self) -> bool:
        return bool(self.videos)

    def add(self, p: Prediction) -> None:
        video = self.videos.setdefault(p.path, VideoTally())
        video.frames += not p.face  # each frame has one record with face 0, or one without a face
        self.smooth = p.smooth
        if p.track is None or p.label is None:
            return
        track = video.tracks.setdefault(p.track, TrackTally(p.time, p.time))
        track.end = p.time
        track.labels[p.label] += 1

    def table(self, per_class: bool) -> Table:
        table = Table(title="Face tracks")
        table.add_column("video", overflow="fold")
        for name in ("track", "span (s)", "frames"):
            table.add_column(name, justify="right", no_wrap=True)
        table.add_column("dominant", no_wrap=True)
        for name in self.class_names if per_class else ():
            table.add_column(plain(name), justify="right", no_wrap=True)
        for path, video in self.videos.items():
            if not video.tracks:
                table.add_row(Text(printable(path)), "-", "-", f"{video.frames:,}", Text("no face", style="dim"))
            for number, track in sorted(video.tracks.items()):
                seen = sum(track.labels.values())
                label, count = track.labels.most_common(1)[0]
                shares = [f"{track.labels[c] / seen:.0%}" if track.labels[c] else "" for c in self.class_names]
                table.add_row(
                    Text(printable(path)),
                    str(number),
                    f"{track.start:.2f}-{track.end:.2f}",
                    f"{seen:,} of {video.frames:,}",
                    Text.assemble(plain(label, "bold"), f" {count / seen:.0%}"),
                    *(shares if per_class else ()),
                )
        return table

    def notes(self) -> list[str]:
        notes = [EXPLAINED]
        if self.smooth:
            notes.append(f"Probabilities smoothed: each averaged over its track's last {self.smooth:g} s (--smooth).")
        return notes


EXPLAINED = (
    "frames: the frames read with the track's face, of the video's; dominant: the label of most of them, and its "
    "share (the columns per class, where they fit: each label's)."
)
