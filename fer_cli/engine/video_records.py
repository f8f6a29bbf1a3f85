"""A video's records, frame after frame: each face's frame, time and track id, and with ``--smooth`` its
probabilities averaged over the track's last seconds.

The smoothing is a trailing moving average (each record averages its track's records from ``seconds`` before it
up to itself, so results still stream): the label and confidence are then the average's. Records say it
(``smooth``: the seconds, or None).
"""

from __future__ import annotations

import dataclasses
from collections import deque

import numpy as np

from ..outputs.results import Prediction
from .predict import Outcome
from .tracks import Tracker


class TrailingMean:
    """Each track's probabilities averaged over its records of the last ``seconds`` (its own included)."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.recent: dict[int, deque] = {}  # track -> (time, probabilities) of its last seconds

    def add(self, track: int, time: float, probabilities: np.ndarray) -> np.ndarray:
        recent = self.recent.setdefault(track, deque())
        recent.append((time, probabilities))
        while time - recent[0][0] >= self.seconds:  # a window of `seconds`: its start excluded
            recent.popleft()
        return np.mean([p for _, p in recent], axis=0)


class VideoRecords:
    """Turns each frame's predictions into video records; a new video (another path, or the frames starting over)
    starts new tracks."""

    def __init__(self, smooth: float | None = None):
        self.smooth = smooth
        self.path: str | None = None
        self.last_index = -1
        self.tracker = Tracker()
        self.mean = TrailingMean(smooth) if smooth else None
        self.warned: set[str] = set()  # videos whose records had a warning told on stderr

    def records(self, outcome: Outcome, rows: list[Prediction]) -> list[Prediction]:
        """``rows`` (``to_predictions`` of ``outcome``) as video records; an image's rows as they are."""
        frame = outcome.frame
        if frame is None:
            return rows
        if outcome.path != self.path or frame.index <= self.last_index:
            self.path, self.tracker = outcome.path, Tracker()
            self.mean = TrailingMean(self.smooth) if self.smooth else None
        self.last_index = frame.index
        tracked = [row for row in rows if row.box is not None and row.ok]
        ids = dict(zip(map(id, tracked), self.tracker.update([row.box for row in tracked])))
        out = []
        for row in rows:
            track = ids.get(id(row))
            row = dataclasses.replace(row, frame=frame.index, time=frame.time, track=track, smooth=self.smooth)
            if self.mean is not None and track is not None and row.label is not None:
                row = _smoothed(row, self.mean.add(track, frame.time, np.array(list(row.probabilities.values()))))
            out.append(row)
        return out

    def first_warning(self, row: Prediction) -> bool:
        """Whether a record's warning is to be told: an image's always, a video's once per video (not each frame)."""
        if row.frame is None:
            return True
        if row.path in self.warned:
            return False
        self.warned.add(row.path)
        return True


def _smoothed(row: Prediction, probabilities: np.ndarray) -> Prediction:
    names = list(row.probabilities)
    best = int(np.argmax(probabilities))
    return dataclasses.replace(
        row,
        label=names[best],
        confidence=float(probabilities[best]),
        probabilities={name: float(p) for name, p in zip(names, probabilities)},
    )
