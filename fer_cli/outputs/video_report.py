"""``fer predict --report`` on videos: each face track's probabilities over time (``timelines.png``, one strip per
track), its span and labels in ``report.json``, and the frames behind the report's example faces.

Memory stays flat however long the videos: a track's timeline is kept as the mean probabilities of at most
``MAX_BINS`` bins of equal length (merged in pairs, twice as long, whenever the track outgrows them), and only the
first ``MAX_TRACKS`` tracks are drawn (the others are counted).
"""

from __future__ import annotations

from collections import Counter

import numpy as np
from PIL import Image

from .results import Prediction

MAX_BINS = 240  # points of a track's timeline
FIRST_BIN = 0.1  # seconds: a bin's length until the track outgrows MAX_BINS of them
MAX_TRACKS = 12  # tracks drawn in timelines.png


class Timeline:
    """One track: its span, frames, labels, and its probabilities averaged over equal bins of time."""

    def __init__(self, start: float, classes: int):
        self.start = self.end = start
        self.width = FIRST_BIN
        self.sums = np.zeros((0, classes + 1))  # per bin: the sum of the frames' times, then of their probabilities
        self.counts = np.zeros(0, dtype=np.int64)
        self.labels: Counter = Counter()

    def add(self, time: float, label: str, probabilities: np.ndarray) -> None:
        self.end = max(self.end, time)
        self.labels[label] += 1
        while (slot := int((time - self.start) // self.width)) >= MAX_BINS:
            self._halve()
        if slot >= len(self.counts):
            grow = slot + 1 - len(self.counts)
            self.sums = np.concatenate([self.sums, np.zeros((grow, self.sums.shape[1]))])
            self.counts = np.concatenate([self.counts, np.zeros(grow, dtype=np.int64)])
        self.sums[slot, 0] += time
        self.sums[slot, 1:] += probabilities
        self.counts[slot] += 1

    def _halve(self) -> None:
        """Bins twice as long: each pair merged."""
        if len(self.counts) % 2:
            self.sums = np.concatenate([self.sums, np.zeros((1, self.sums.shape[1]))])
            self.counts = np.append(self.counts, 0)
        self.sums = self.sums.reshape(-1, 2, self.sums.shape[1]).sum(axis=1)
        self.counts = self.counts.reshape(-1, 2).sum(axis=1)
        self.width *= 2

    def series(self) -> tuple[np.ndarray, np.ndarray]:
        """(the mean time of each bin with frames, in seconds; the mean probabilities there (bins, classes))."""
        kept = self.counts > 0
        means = self.sums[kept] / self.counts[kept, None]
        return means[:, 0], means[:, 1:]

    def summary(self) -> dict:
        frames = sum(self.labels.values())
        return {
            "start": round(self.start, 3),
            "end": round(self.end, 3),
            "frames": frames,
            "labels": {label: round(count / frames, 4) for label, count in self.labels.most_common()},
        }


class VideoTimelines:
    """The video records of a report: the first MAX_TRACKS tracks' timelines, and how many videos and tracks."""

    def __init__(self, class_names: list[str]):
        self.class_names = class_names
        self.tracks: dict[tuple[str, int], Timeline] = {}
        self.last_track: dict[str, int] = {}  # video -> its highest track id: the tracks counted, not kept
        self.videos = 0
        self._current: tuple[str, int] | None = None  # (path, frame) of the last record: a new video starts over

    def __bool__(self) -> bool:
        return self.videos > 0

    def add(self, p: Prediction) -> bool:
        """Take one video record; True when it is the first of a video."""
        starts = self._current is None or p.path != self._current[0] or p.frame < self._current[1]
        self._current = (p.path, p.frame)
        self.videos += starts
        if p.track is None or p.label is None:
            return starts
        self.last_track[p.path] = max(self.last_track.get(p.path, 0), p.track)
        key = (p.path, p.track)
        if key not in self.tracks and len(self.tracks) >= MAX_TRACKS:
            return starts
        timeline = self.tracks.setdefault(key, Timeline(p.time, len(self.class_names)))
        timeline.add(p.time, p.label, np.array([p.probabilities.get(c, 0.0) for c in self.class_names]))
        return starts

    def not_drawn(self) -> int:
        return sum(self.last_track.values()) - len(self.tracks)

    def summary(self) -> list[dict]:
        return [{"path": path, "track": track, **line.summary()} for (path, track), line in self.tracks.items()]

    def figure(self):
        """One strip per track: its probabilities over time, stacked (a class's colour as in the other figures)."""
        from matplotlib.figure import Figure

        from .figures import DPI, _colours

        rows = max(1, len(self.tracks))
        figure = Figure(figsize=(9.0, 1.2 * rows + 1.0), dpi=DPI, layout="constrained")
        axes = figure.subplots(rows, 1, squeeze=False)[:, 0]
        colours = _colours(len(self.class_names))
        for ax, ((path, track), line) in zip(axes, self.tracks.items()):
            times, means = line.series()
            if len(times) == 1:  # a single point draws nothing: a bin's width of it
                times, means = np.array([times[0] - line.width / 2, times[0] + line.width / 2]), np.repeat(means, 2, 0)
            ax.stackplot(times, means.T, colors=colours, labels=self.class_names, linewidth=0)
            ax.set_ylim(0, 1)
            ax.set_xlim(times[0], times[-1])
            ax.set_yticks([0, 1], ["0", "1"])
            ax.set_title(f"{_name(path)}, track {track}", fontsize=8, loc="left")
        axes[-1].set_xlabel("seconds")
        axes[0].legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small")
        more = f" (and {self.not_drawn():,} more tracks)" if self.not_drawn() else ""
        figure.suptitle(f"Probabilities of each face track over time{more}", fontsize=10)
        return figure


def _name(path: str) -> str:
    return path.replace("\\", "/").rsplit("/", 1)[-1]


def example_frames(examples: list[Prediction]) -> dict[tuple[str, int], Image.Image]:
    """The frames behind the video records among ``examples``, each video decoded once, up to the last one needed."""
    from ..inputs.video import Sampling, sampled_frames

    wanted: dict[str, set[int]] = {}
    for p in examples:
        if p.frame is not None:
            wanted.setdefault(p.path, set()).add(p.frame)
    found = {}
    for path, frames in wanted.items():
        try:
            for frame in sampled_frames(path, Sampling()):
                if frame.index in frames:
                    found[(path, frame.index)] = frame.image()
                if frame.index >= max(frames):
                    break
        except Exception:  # noqa: BLE001: the video changed or broke since: its faces are shown grey, as unreadable
            continue
    return found
