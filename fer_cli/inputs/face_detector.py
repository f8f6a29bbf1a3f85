"""Finding faces in a photo: MTCNN (Zhang et al., 2016), a three-stage cascade in plain PyTorch.

A proposal net (P) slides over an image pyramid, a refine net (R) rejects most proposals from
24x24 crops, and an output net (O) scores 48x48 crops and places five landmarks (eyes, nose,
mouth corners) used to align each face. It is small (0.5 M parameters), runs wherever torch
runs, CUDA included, and ships inside this package: nothing is downloaded.

The weights, ``mtcnn.pt``, are the original authors' Caffe weights as converted to PyTorch by
facenet-pytorch 2.6.0 (MIT licence, see ``MTCNN-LICENSE.txt``), merged into one state dict
(``pnet.*``, ``rnet.*``, ``onet.*``). The nets below reproduce that layout; the detection
pipeline is written here, batched with torchvision's ``roi_align`` and ``batched_nms``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F
from torchvision.ops import batched_nms, box_area, roi_align

WEIGHTS = Path(__file__).with_name("mtcnn.pt")


class _ProposalNet(nn.Module):
    """12x12 receptive field, fully convolutional: a face score and a box offset per 2 pixels."""

    def __init__(self):
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 10, 3), nn.PReLU(10)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(10, 16, 3), nn.PReLU(16)
        self.conv3, self.prelu3 = nn.Conv2d(16, 32, 3), nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, 1)  # face / not face
        self.conv4_2 = nn.Conv2d(32, 4, 1)  # box offsets

    def forward(self, x):
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
        return self.conv4_2(x), torch.softmax(self.conv4_1(x), dim=1)[:, 1]


class _RefineNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 28, 3), nn.PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(28, 48, 3), nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3 = nn.Conv2d(48, 64, 2), nn.PReLU(64)
        self.dense4, self.prelu4 = nn.Linear(576, 128), nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x):
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu3(self.conv3(x))
        x = self.prelu4(self.dense4(_caffe_flatten(x)))
        return self.dense5_2(x), torch.softmax(self.dense5_1(x), dim=1)[:, 1]


class _OutputNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 32, 3), nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(32, 64, 3), nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3 = nn.Conv2d(64, 64, 3), nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4, self.prelu4 = nn.Conv2d(64, 128, 2), nn.PReLU(128)
        self.dense5, self.prelu5 = nn.Linear(1152, 256), nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)  # landmarks: 5 x's, then 5 y's, relative to the box

    def forward(self, x):
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu5(self.dense5(_caffe_flatten(self.prelu4(self.conv4(x)))))
        return self.dense6_2(x), self.dense6_3(x), torch.softmax(self.dense6_1(x), dim=1)[:, 1]


def _caffe_flatten(x: torch.Tensor) -> torch.Tensor:
    """The converted dense layers expect Caffe's (W, H, C) flattening order."""
    return x.permute(0, 3, 2, 1).reshape(x.shape[0], -1)


class _Cascade(nn.Module):
    def __init__(self):
        super().__init__()
        self.pnet, self.rnet, self.onet = _ProposalNet(), _RefineNet(), _OutputNet()


@dataclass(frozen=True)
class Detection:
    """One face: box (x1, y1, x2, y2) in the image's pixels, score in [0, 1], landmarks (5, 2).

    Landmarks are (x, y) of: left eye, right eye, nose, left and right mouth corner, "left"
    meaning the image's left.
    """

    box: tuple[float, float, float, float]
    score: float
    landmarks: tuple[tuple[float, float], ...]


class FaceDetector:
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
        self.nets = _Cascade()
        self.nets.load_state_dict(torch.load(WEIGHTS, map_location="cpu", weights_only=True))
        self.nets.to(self.device).eval()

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
