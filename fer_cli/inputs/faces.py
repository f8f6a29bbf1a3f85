"""From a photo to face crops that look like the training data.

Policy (``--faces``):

* ``none``   the whole image is one face crop (what FER2013 images are);
* ``detect`` every face the detector finds becomes its own crop; no face, no crop;
* ``auto``   images that are already face crops skip detection: small images (at most
             ``CROP_MAX_SIDE`` px, like FER2013's 48x48), and images where the detector finds
             a single face filling the frame. Every other image is searched for faces.

Each detected face is aligned to where faces sit in FER2013 crops: a similarity transform
(rotation, scale, shift) takes its five landmarks onto ``FER2013_LANDMARKS``, the landmarks'
mean positions measured by this detector on 1,288 FER2013 training faces (see
``python benchmarks/faces.py --template``). The aligned crop is then converted exactly as training images
were (8-bit grayscale or RGB, resized with antialiasing, normalised), by the same transforms.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:  # the detector (and onnxruntime with it) is imported only when an image needs searching
    from .face_detector import Detection, FaceDetector


class FacePolicy(str, Enum):
    auto = "auto"
    detect = "detect"
    none = "none"


CROP_MAX_SIDE = 128  # auto: an image no larger than this is a face crop already
FILLS_FRAME = 0.5  # auto: one face whose aligned crop covers this share of the image is the whole image
DETECT_MAX_SIDE = 1280  # larger photos are searched at this size; crops come from full resolution
# The smallest face searched for (--min-face): a fraction of the image's shorter side (under 1), or pixels (1 or
# more). 1/12 is a 60 px face in a 720p frame, 40 px in a 640x480 photo; searching for smaller faces costs the
# square of the ratio (every pixel of a larger pyramid), and 1/12 is what lets 720p video run in real time on 2 cores.
DEFAULT_MIN_FACE = 1 / 12
DETECTOR_FACE = 20  # px: the smallest face the detector finds; the search copy is scaled so the smallest face is this
ALIGNED_MAX_SIDE = 1024  # aligned crops are made at the face's own resolution, up to this side
# A face narrower than this (half FER2013's 48 px) has too few pixels to show an expression; its
# label is still given, with a warning. The detector's own smallest face is 20 px.
MIN_FACE_SIDE = 24

# Landmarks (left eye, right eye, nose, left and right mouth corner) as fractions of a FER2013
# crop's side: the detector's mean on training faces, made left-right symmetric.
FER2013_LANDMARKS = np.array(
    [[0.318, 0.378], [0.682, 0.378], [0.500, 0.594], [0.346, 0.779], [0.654, 0.779]], dtype=np.float64
)


@dataclass(frozen=True)
class Face:
    """One face of an image: its crop and where it was found.

    ``box`` is (x, y, w, h) in the upright image's pixels (after EXIF rotation), ``score`` the
    detector's confidence, None when the whole image was taken as the face without detection.
    ``fallback`` marks the whole image standing in for a face the detector did not find.
    """

    index: int
    box: tuple[int, int, int, int]
    score: float | None
    crop: Image.Image
    fallback: bool = False


class FaceFinder:
    """Applies a face policy to upright images. The detector is built on first use."""

    def __init__(
        self,
        policy: FacePolicy | str = FacePolicy.auto,
        device: str = "cpu",
        whole_image_if_none=False,
        min_face: float | None = None,
    ):
        self.policy = FacePolicy(policy)
        self.device = device
        self.whole_image_if_none = whole_image_if_none  # scoring a labelled folder: every image gets a guess
        self.min_face = DEFAULT_MIN_FACE if min_face is None else check_min_face(min_face)  # see smallest_face
        self._detector: FaceDetector | None = None

    @property
    def detector(self) -> FaceDetector:
        if self._detector is None:
            from .face_detector import FaceDetector

            self._detector = FaceDetector(self.device)
        return self._detector

    def find(self, image: Image.Image) -> list[Face]:
        """The faces of one upright RGB or grayscale image, left to right."""
        whole = Face(0, (0, 0, image.width, image.height), None, image)
        if self.policy is FacePolicy.none or (self.policy is FacePolicy.auto and max(image.size) <= CROP_MAX_SIDE):
            return [whole]
        detections = self.detect(image)
        if self.policy is FacePolicy.auto and len(detections) == 1 and _fills_frame(detections[0], image):
            return [Face(0, whole.box, detections[0].score, image)]
        if not detections:
            return [Face(0, whole.box, None, image, fallback=True)] if self.whole_image_if_none else []
        detections.sort(key=lambda d: (d.box[0] + d.box[2]) / 2)
        return [Face(i, _xywh(d.box, image), d.score, align_face(image, d)) for i, d in enumerate(detections)]

    def detect(self, image: Image.Image) -> list[Detection]:
        """Detect on a copy no larger than DETECT_MAX_SIDE, scaled down further so the smallest face searched for
        (``smallest_face``) is the detector's own smallest (``DETECTOR_FACE``): the same rule for a photo and a
        video frame of the same size. Boxes and landmarks in ``image``'s pixels."""
        scale = min(1.0, DETECT_MAX_SIDE / max(image.size), DETECTOR_FACE / smallest_face(self.min_face, image.size))
        small = image
        if scale < 1.0:
            size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
            # reducing_gap 1: by 2x or more, whole pixels averaged first (half the time of bilinear alone on a 720p frame)
            small = image.resize(size, Image.Resampling.BILINEAR, reducing_gap=1.0)
        found = self.detector.detect(np.asarray(small if small.mode == "RGB" else small.convert("RGB")))
        if scale == 1.0:
            return found
        return [
            dataclasses.replace(
                d, box=tuple(v / scale for v in d.box), landmarks=tuple((x / scale, y / scale) for x, y in d.landmarks)
            )
            for d in found
        ]


def check_min_face(min_face: float) -> float:
    """``min_face`` if it is a fraction of the shorter side (above 0, under 1) or pixels (1 or more)."""
    if not 0 < min_face < math.inf:
        raise ValueError(
            f"the smallest face must be a fraction of the shorter side (0.05) or pixels (30), got {min_face}"
        )
    return float(min_face)


def parse_min_face(text: str) -> float:
    """``--min-face``: '40' (px), '0.05' or '1/20' (of the image's shorter side)."""
    numerator, slash, denominator = text.strip().partition("/")
    try:
        value = float(numerator) / float(denominator) if slash else float(text)
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"expected pixels (40) or a fraction of the shorter side (0.05, 1/20), got {text!r}") from None
    return check_min_face(value)


def smallest_face(min_face: float, size: tuple[int, int]) -> float:
    """The smallest face side searched for in an image of ``size`` (px): ``min_face`` px, or that fraction of the
    shorter side, and never under the detector's own ``DETECTOR_FACE``."""
    side = min_face if min_face >= 1 else min_face * min(size)
    return max(float(DETECTOR_FACE), side)


def size_warning(box: tuple[int, int, int, int]) -> str | None:
    """Why a face of this (x, y, w, h) box is implausibly small to read, or None."""
    width, height = box[2], box[3]
    if min(width, height) >= MIN_FACE_SIDE:
        return None
    return f"{width}x{height} px, too small to be a readable face (under {MIN_FACE_SIDE} px): the label is a guess"


def align_face(image: Image.Image, detection: Detection) -> Image.Image:
    """The face's crop, rotated and scaled so its landmarks sit where FER2013's do."""
    a, b, tx, ty = _crop_similarity(detection)
    size = int(np.clip(round(np.hypot(a, b)), 8, ALIGNED_MAX_SIDE))  # about one crop pixel per image pixel
    # PIL maps each output pixel (x, y) back to the input point (a*u - b*v + tx, b*u + a*v + ty), u = x/size.
    k = 1.0 / size
    return image.transform(
        (size, size), Image.Transform.AFFINE, (a * k, -b * k, tx, b * k, a * k, ty), Image.Resampling.BILINEAR
    )


def _crop_similarity(detection: Detection) -> tuple[float, float, float, float]:
    """(a, b, tx, ty): the least-squares similarity from crop coordinates (0..1) to image pixels.

    Solves x = a*u - b*v + tx, y = b*u + a*v + ty over the five landmark pairs; the crop's side
    in image pixels is hypot(a, b).
    """
    landmarks = np.array(detection.landmarks, dtype=np.float64)
    u, v = FER2013_LANDMARKS[:, 0], FER2013_LANDMARKS[:, 1]
    ones, zeros = np.ones_like(u), np.zeros_like(u)
    design = np.concatenate([np.stack([u, -v, ones, zeros], 1), np.stack([v, u, zeros, ones], 1)])
    target = np.concatenate([landmarks[:, 0], landmarks[:, 1]])
    a, b, tx, ty = np.linalg.lstsq(design, target, rcond=None)[0].tolist()
    return a, b, tx, ty


def _fills_frame(detection: Detection, image: Image.Image) -> bool:
    a, b, _, _ = _crop_similarity(detection)
    return a * a + b * b >= FILLS_FRAME * image.width * image.height


def _xywh(box: tuple[float, float, float, float], image: Image.Image) -> tuple[int, int, int, int]:
    """A detector box clipped to the image, as integer (x, y, w, h)."""
    x1, y1 = max(0, round(box[0])), max(0, round(box[1]))
    x2, y2 = min(image.width, round(box[2])), min(image.height, round(box[3]))
    return x1, y1, max(0, x2 - x1), max(0, y2 - y1)
