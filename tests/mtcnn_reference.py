"""The face detector as fer_cli ran it on torch until the ONNX one replaced it (fer_cli 0.1.0's
``fer_cli/inputs/face_detector.py``, unchanged but for the nets' import): the reference
``tests/test_face_detector.py`` holds the ONNX nets and the numpy pipeline to. Needs torch and torchvision.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F
from torchvision.ops import batched_nms, box_area, roi_align

from fer_cli.inputs.face_detector import Detection
from fer_cli.inputs.mtcnn_export import load_nets


class ReferenceDetector:
    """Find every face in an RGB image.

    ``min_face`` is the smallest face side searched for, in pixels; the pyramid never looks for
    faces smaller than 2% of the image's shorter side either, which keeps large photos fast.
    ``threshold`` is the minimum final score: 0.95 keeps the faces of crowded photos while
    rejecting hands, pets and texture in the photos tested (see tests/test_faces.py).
    """

    stage_thresholds = (0.6, 0.7)  # proposal and refine stages: permissive, the output stage decides

    def __init__(self, device: torch.device | str = "cpu", threshold: float = 0.95, min_face: int = 20):
        self.device = torch.device(device)
        self.threshold = threshold
        self.min_face = min_face
        self.nets = load_nets().to(self.device)

    @torch.inference_mode()
    def detect(self, image: torch.Tensor) -> list[Detection]:
        """``image``: uint8 (3, H, W), RGB. Returns faces sorted by score, best first."""
        pixels = image.to(self.device, torch.float32)[None]
        boxes = self._propose(pixels)
        if len(boxes):
            boxes = self._refine(pixels, boxes)
        if not len(boxes):
            return []
        boxes, scores, landmarks = self._output(pixels, boxes)
        order = scores.argsort(descending=True).tolist()
        boxes, scores, landmarks = boxes.cpu().tolist(), scores.cpu().tolist(), landmarks.cpu().tolist()
        return [
            Detection(tuple(boxes[i]), float(scores[i]), tuple(tuple(point) for point in landmarks[i])) for i in order
        ]

    def _propose(self, pixels: torch.Tensor) -> torch.Tensor:
        """Stage 1 over the pyramid: (N, 4) square candidate boxes."""
        height, width = pixels.shape[2:]
        smallest = max(self.min_face, 0.02 * min(height, width))
        scale = 12.0 / smallest
        cells, regressions, scores = [], [], []
        while min(height, width) * scale >= 12:
            size = (math.ceil(height * scale), math.ceil(width * scale))
            offsets, probs = self.nets.pnet(_normalize(F.interpolate(pixels, size=size, mode="area")))
            rows, cols = torch.nonzero(probs[0] >= self.stage_thresholds[0], as_tuple=True)
            if len(rows):
                # Each output cell sees a 12x12 window with stride 2 in the scaled image.
                x1, y1 = cols.float() * 2 / scale, rows.float() * 2 / scale
                cell = torch.stack([x1, y1, x1 + 12 / scale, y1 + 12 / scale], dim=1)
                score = probs[0, rows, cols]
                keep = batched_nms(cell, score, torch.zeros_like(score, dtype=torch.long), 0.5)
                cells.append(cell[keep])
                regressions.append(offsets[0, :, rows[keep], cols[keep]].T)
                scores.append(score[keep])
            scale *= 0.709
        if not cells:
            return pixels.new_zeros((0, 4))
        cell, score = torch.cat(cells), torch.cat(scores)
        keep = batched_nms(cell, score, torch.zeros_like(score, dtype=torch.long), 0.7)
        return _square(_apply_offsets(cell[keep], torch.cat(regressions)[keep]))

    def _refine(self, pixels: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        offsets, score = self.nets.rnet(_crops(pixels, boxes, 24))
        keep = score >= self.stage_thresholds[1]
        boxes, offsets, score = boxes[keep], offsets[keep], score[keep]
        keep = batched_nms(boxes, score, torch.zeros_like(score, dtype=torch.long), 0.7)
        return _square(_apply_offsets(boxes[keep], offsets[keep]))

    def _output(self, pixels: torch.Tensor, boxes: torch.Tensor):
        offsets, points, score = self.nets.onet(_crops(pixels, boxes, 48))
        keep = score >= self.threshold
        boxes, offsets, points, score = boxes[keep], offsets[keep], points[keep], score[keep]
        size = (boxes[:, 2:] - boxes[:, :2])[:, None, :]  # (N, 1, 2)
        landmarks = boxes[:, None, :2] + size * torch.stack([points[:, :5], points[:, 5:]], dim=2)
        boxes = _apply_offsets(boxes, offsets)
        keep = _suppress_nested(boxes, score, 0.7)
        return boxes[keep], score[keep], landmarks[keep]


def _normalize(pixels: torch.Tensor) -> torch.Tensor:
    return (pixels - 127.5) * 0.0078125


def _crops(pixels: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Each box resampled to size x size (area-averaged; outside the image reads as black)."""
    rois = torch.cat([boxes.new_zeros((len(boxes), 1)), boxes], dim=1)
    return _normalize(roi_align(pixels, rois, output_size=size, spatial_scale=1.0, sampling_ratio=-1, aligned=True))


def _apply_offsets(boxes: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Box regression: offsets are fractions of the box's width and height."""
    size = (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2)
    return boxes + offsets * size


def _square(boxes: torch.Tensor) -> torch.Tensor:
    """Grow each box to a square around its centre (the nets' inputs are square)."""
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    half = (boxes[:, 2:] - boxes[:, :2]).max(dim=1, keepdim=True).values / 2
    return torch.cat([centre - half, centre + half], dim=1)


def _suppress_nested(boxes: torch.Tensor, scores: torch.Tensor, threshold: float) -> torch.Tensor:
    """Greedy NMS on intersection over the *smaller* area, which also drops a box inside another."""
    order = scores.argsort(descending=True)
    areas = box_area(boxes)
    kept: list[int] = []
    for index in order.tolist():
        if kept:
            others = boxes[kept]
            top_left = torch.maximum(others[:, :2], boxes[index, :2])
            bottom_right = torch.minimum(others[:, 2:], boxes[index, 2:])
            inter = (bottom_right - top_left).clamp(min=0).prod(dim=1)
            if (inter / torch.minimum(areas[kept], areas[index])).max() > threshold:
                continue
        kept.append(index)
    return torch.tensor(kept, dtype=torch.long, device=boxes.device)
