"""Face tracks across a video's frames: which face of one frame is which face of the next.

Greedy matching by box overlap, frame after frame (the frames read, so with ``--fps`` the sampled ones): every
pair of a live track and a face of the new frame is scored by the IoU (intersection over union) of the track's
last box and the face's box; the best pairs are taken first, each track and face once, down to
``IOU_THRESHOLD``. A track not seen in a frame stays live for ``MAX_GAP`` frames (the detector missing a face for
a few frames, someone turning away), and a face matched to no live track starts a new one. Ids count from 1 in
order of appearance and are never reused within a video. Pure Python: boxes are (x, y, w, h) tuples.
"""

from __future__ import annotations

IOU_THRESHOLD = 0.3  # a face continues a track when their boxes overlap at least this much (IoU)
MAX_GAP = 5  # frames read in a row that a track may miss and still continue


def iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    """Intersection over union of two (x, y, w, h) boxes: 1 for the same box, 0 for boxes apart."""
    width = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    height = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    if width <= 0 or height <= 0:
        return 0.0
    shared = width * height
    return shared / (a[2] * a[3] + b[2] * b[3] - shared)


class Tracker:
    """Gives each face of each frame, frame after frame, the id of its track."""

    def __init__(self, iou_threshold: float = IOU_THRESHOLD, max_gap: int = MAX_GAP):
        self.iou_threshold = iou_threshold
        self.max_gap = max_gap
        self.live: dict[int, tuple[tuple, int]] = {}  # track id -> (its last box, the step it was last seen)
        self.step = -1
        self.next_id = 1

    def update(self, boxes: list[tuple[float, float, float, float]]) -> list[int]:
        """The track ids of the next frame's faces, in the order of ``boxes`` (an empty list: a frame without any)."""
        self.step += 1
        self.live = {tid: seen for tid, seen in self.live.items() if self.step - seen[1] - 1 <= self.max_gap}
        pairs = sorted(
            ((iou(last, box), tid, i) for tid, (last, _) in self.live.items() for i, box in enumerate(boxes)),
            key=lambda pair: (-pair[0], pair[1], pair[2]),
        )
        ids: dict[int, int] = {}
        for overlap, tid, i in pairs:
            if overlap < self.iou_threshold:
                break
            if i not in ids and tid not in ids.values():
                ids[i] = tid
        for i, box in enumerate(boxes):
            if i not in ids:
                ids[i] = self.next_id
                self.next_id += 1
            self.live[ids[i]] = (tuple(box), self.step)
        return [ids[i] for i in range(len(boxes))]
