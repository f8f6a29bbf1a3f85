"""The IoU tracker on boxes alone: faces crossing, a gap bridged, a face leaving and another arriving."""

import pytest

from fer_cli.engine.tracks import IOU_THRESHOLD, MAX_GAP, Tracker, iou


def test_iou():
    assert iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert iou((0, 0, 10, 10), (10, 0, 10, 10)) == 0.0  # touching edges share nothing
    assert iou((0, 0, 10, 10), (5, 0, 10, 10)) == pytest.approx(50 / 150)


def test_a_moving_face_keeps_its_id():
    tracker = Tracker()
    assert [tracker.update([(x, 20, 40, 40)]) for x in range(0, 60, 6)] == [[1]] * 10


def test_two_faces_crossing_keep_their_ids():
    """Two faces moving towards each other, overlapping, then apart: each keeps its id (the boxes are listed left to
    right, so their order in each frame swaps as they pass)."""
    tracker = Tracker()
    for step in range(13):
        a = (10 + 8 * step, 30, 40, 40)  # left to right
        b = (106 - 8 * step, 34, 40, 40)  # right to left
        boxes = sorted([a, b])
        ids = dict(zip(boxes, tracker.update(boxes)))
        assert (ids[a], ids[b]) == (1, 2), step


def test_a_gap_is_bridged_up_to_max_gap_frames():
    tracker = Tracker()
    assert tracker.update([(10, 10, 40, 40)]) == [1]
    for _ in range(MAX_GAP):
        assert tracker.update([]) == []
    assert tracker.update([(12, 10, 40, 40)]) == [1]  # missing for MAX_GAP frames: the same track
    for _ in range(MAX_GAP + 1):
        tracker.update([])
    assert tracker.update([(12, 10, 40, 40)]) == [2]  # one frame more: a new track


def test_a_face_leaving_and_one_arriving_elsewhere():
    tracker = Tracker()
    assert tracker.update([(0, 0, 30, 30), (100, 0, 30, 30)]) == [1, 2]
    assert tracker.update([(100, 2, 30, 30)]) == [2]  # the first left
    assert tracker.update([(100, 4, 30, 30), (0, 100, 30, 30)]) == [2, 3]  # a newcomer gets a new id, never 1 again


def test_too_little_overlap_starts_a_new_track():
    tracker = Tracker()
    tracker.update([(0, 0, 40, 40)])
    jump = (30, 0, 40, 40)  # IoU 10*40 / (2*1600 - 400) = 0.14
    assert iou((0, 0, 40, 40), jump) < IOU_THRESHOLD
    assert tracker.update([jump]) == [2]
