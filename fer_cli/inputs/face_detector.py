"""Finding faces in a photo: MTCNN (Zhang et al., 2016), a three-stage cascade, on onnxruntime and numpy.

A proposal net (P) slides over an image pyramid, a refine net (R) rejects most proposals from
24x24 crops, and an output net (O) scores 48x48 crops and places five landmarks (eyes, nose,
mouth corners) used to align each face. It is small (0.5 M parameters) and ships inside this
package: nothing is downloaded, and torch is never imported.

The three stages are ONNX files (``mtcnn_{pnet,rnet,onet}.onnx``) exported by ``mtcnn_export`` from
``mtcnn.pt``, the original authors' Caffe weights as converted to PyTorch by facenet-pytorch 2.6.0 (MIT
licence, see ``MTCNN-LICENSE.txt``); the refine and output stages crop their boxes from the image
themselves (ONNX's RoiAlign, computed as torchvision's ``roi_align``), so each runs in one call. The
pyramid and the non-maximum suppression are numpy, and compute what the torch pipeline they replaced
computed (torch's area interpolation, torchvision's ``nms``): the tests hold the two together on photos,
composed group photos and faceless images (tests/test_face_detector.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

NETS = {name: Path(__file__).with_name(f"mtcnn_{name}.onnx") for name in ("pnet", "rnet", "onet")}


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
    ``device``: 'cpu', or 'cuda[:N]' where onnxruntime has CUDA (onnxruntime-gpu); ``threads``:
    onnxruntime's threads per net (1 in each reading worker, which are several).
    """

    stage_thresholds = (0.6, 0.7)  # proposal and refine stages: permissive, the output stage decides

    def __init__(self, device: str = "cpu", threshold: float = 0.95, min_face: int = 20, threads: int = 1):
        import onnxruntime

        self.device = str(device)
        self.threshold = threshold
        self.min_face = min_face
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # errors only
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        providers = ["CPUExecutionProvider"]
        if self.device.startswith("cuda") and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
            index = int(self.device.partition(":")[2] or 0)
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": index}))
        else:
            self.device = "cpu"
        self.nets = {
            name: onnxruntime.InferenceSession(str(path), options, providers=providers) for name, path in NETS.items()
        }

    def detect(self, image: np.ndarray) -> list[Detection]:
        """``image``: uint8 (H, W, 3), RGB. Returns faces sorted by score, best first."""
        image = np.asarray(image, dtype=np.uint8)
        pixels = np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32)  # (3, H, W)
        boxes = self._propose(pixels, integral_image(image))
        if len(boxes):
            boxes = self._refine(pixels[None], boxes)
        if not len(boxes):
            return []
        boxes, scores, landmarks = self._output(pixels[None], boxes)
        order = np.argsort(-scores, kind="stable")
        return [
            Detection(tuple(boxes[i].tolist()), float(scores[i]), tuple(tuple(p) for p in landmarks[i].tolist()))
            for i in order
        ]

    def _run(self, name: str, pixels: np.ndarray, boxes: np.ndarray | None = None) -> list[np.ndarray]:
        feed = {"pixels": pixels} if boxes is None else {"pixels": pixels, "boxes": boxes}
        return self.nets[name].run(None, feed)

    def _propose(self, pixels: np.ndarray, integral: np.ndarray) -> np.ndarray:
        """Stage 1 over the pyramid (each scale averaged from the image's ``integral``): (N, 4) square boxes."""
        height, width = pixels.shape[1:]
        smallest = max(self.min_face, 0.02 * min(height, width))
        scale = 12.0 / smallest
        cells, regressions, scores = [], [], []
        while min(height, width) * scale >= 12:
            size = (math.ceil(height * scale), math.ceil(width * scale))
            offsets, probs = self._run("pnet", area_resize(integral, size)[None])
            rows, cols = np.nonzero(probs[0] >= self.stage_thresholds[0])
            if len(rows):
                # Each output cell sees a 12x12 window with stride 2 in the scaled image.
                x1 = cols.astype(np.float32) * 2 / np.float32(scale)
                y1 = rows.astype(np.float32) * 2 / np.float32(scale)
                side = np.float32(12 / scale)
                cell = np.stack([x1, y1, x1 + side, y1 + side], axis=1)
                score = probs[0, rows, cols]
                keep = nms(cell, score, 0.5)
                cells.append(cell[keep])
                regressions.append(offsets[0][:, rows[keep], cols[keep]].T)
                scores.append(score[keep])
            scale *= 0.709
        if not cells:
            return np.zeros((0, 4), dtype=np.float32)
        cell, score = np.concatenate(cells), np.concatenate(scores)
        keep = nms(cell, score, 0.7)
        return _square(_apply_offsets(cell[keep], np.concatenate(regressions)[keep]))

    def _refine(self, pixels: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        offsets, score = self._run("rnet", pixels, boxes)  # each box cropped and resampled to 24x24 in the graph
        keep = score >= self.stage_thresholds[1]
        boxes, offsets, score = boxes[keep], offsets[keep], score[keep]
        keep = nms(boxes, score, 0.7)
        return _square(_apply_offsets(boxes[keep], offsets[keep]))

    def _output(self, pixels: np.ndarray, boxes: np.ndarray):
        offsets, points, score = self._run("onet", pixels, boxes)  # 48x48 crops
        keep = score >= self.threshold
        boxes, offsets, points, score = boxes[keep], offsets[keep], points[keep], score[keep]
        size = (boxes[:, 2:] - boxes[:, :2])[:, None, :]  # (N, 1, 2)
        landmarks = boxes[:, None, :2] + size * np.stack([points[:, :5], points[:, 5:]], axis=2)
        boxes = _apply_offsets(boxes, offsets)
        keep = _suppress_nested(boxes, score, 0.7)
        return boxes[keep], score[keep], landmarks[keep]


def area_resize(integral: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """An image, given by its ``integral_image``, resized to ``size`` by averaging as torch's
    ``interpolate(mode="area")`` (adaptive average pooling): output pixel i averages input pixels floor(i*H/h)
    to ceil((i+1)*H/h), whole ones. The sums are exact (whole numbers), then divided as torch divides them;
    one integral serves every scale of the pyramid. float32 (C, *size)."""
    (height, width), (out_h, out_w) = (integral.shape[1] - 1, integral.shape[2] - 1), size
    row_starts, row_ends = _windows(height, out_h)
    col_starts, col_ends = _windows(width, out_w)
    rows = integral[:, row_ends] - integral[:, row_starts]  # whole rows: the windows' column sums so far
    sums = rows[:, :, col_ends] - rows[:, :, col_starts]
    heights = (row_ends - row_starts).astype(np.float32)[:, None]
    return sums.astype(np.float32) / heights / (col_ends - col_starts).astype(np.float32)


def integral_image(image: np.ndarray) -> np.ndarray:
    """uint8 (H, W, C) -> (C, H + 1, W + 1): entry (y, x) sums the pixels above and left of it (int32 where
    that holds every sum: up to 8 megapixels)."""
    height, width, channels = image.shape
    dtype = np.int32 if height * width * 255 < 2**31 else np.int64
    integral = np.zeros((channels, height + 1, width + 1), dtype=dtype)
    planes = np.ascontiguousarray(image.transpose(2, 0, 1), dtype=dtype)
    np.cumsum(planes, axis=2, out=planes)  # along each row, then down the columns
    np.cumsum(planes, axis=1, out=integral[:, 1:, 1:])
    return integral


def _windows(source: int, target: int) -> tuple[np.ndarray, np.ndarray]:
    index = np.arange(target)
    return index * source // target, -((-(index + 1) * source) // target)


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    """Greedy non-maximum suppression, as torchvision's ``nms``: indices kept, best score first; a box whose
    intersection over union with a kept one exceeds ``threshold`` is dropped."""
    order = np.argsort(-scores, kind="stable")
    boxes = boxes[order]
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    suppressed = np.zeros(len(boxes), dtype=bool)
    kept = []
    for i in range(len(boxes)):
        if suppressed[i]:
            continue
        kept.append(i)
        rest = slice(i + 1, None)
        width = np.maximum(0, np.minimum(boxes[i, 2], boxes[rest, 2]) - np.maximum(boxes[i, 0], boxes[rest, 0]))
        height = np.maximum(0, np.minimum(boxes[i, 3], boxes[rest, 3]) - np.maximum(boxes[i, 1], boxes[rest, 1]))
        inter = width * height
        suppressed[rest] |= inter / (areas[i] + areas[rest] - inter) > threshold
    return order[np.array(kept, dtype=np.int64)]


def _apply_offsets(boxes: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Box regression: offsets are fractions of the box's width and height."""
    size = np.tile(boxes[:, 2:] - boxes[:, :2], 2)
    return boxes + offsets * size


def _square(boxes: np.ndarray) -> np.ndarray:
    """Grow each box to a square around its centre (the nets' inputs are square)."""
    centre = (boxes[:, :2] + boxes[:, 2:]) / np.float32(2)
    half = (boxes[:, 2:] - boxes[:, :2]).max(axis=1, keepdims=True) / np.float32(2)
    return np.concatenate([centre - half, centre + half], axis=1)


def _suppress_nested(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    """Greedy NMS on intersection over the *smaller* area, which also drops a box inside another."""
    order = np.argsort(-scores, kind="stable")
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    kept: list[int] = []
    for index in order.tolist():
        if kept:
            others = boxes[kept]
            top_left = np.maximum(others[:, :2], boxes[index, :2])
            bottom_right = np.minimum(others[:, 2:], boxes[index, 2:])
            inter = np.clip(bottom_right - top_left, 0, None).prod(axis=1)
            if (inter / np.minimum(areas[kept], areas[index])).max() > threshold:
                continue
        kept.append(index)
    return np.array(kept, dtype=np.int64)
