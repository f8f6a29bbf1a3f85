"""The face detector on onnxruntime and numpy gives the faces, boxes, scores and landmarks the torch
pipeline it replaced gave (tests/mtcnn_reference.py): on the shared photos, on group photos composed
from FER2013 faces (sizes, tilts, a photo larger than the detector's 1280 px), on images without a
face, and step by step (area resizing, non-maximum suppression, the crops of boxes) on random data."""

import numpy as np
import pytest
import torch
from PIL import Image
from torch.nn import functional as F
from torchvision.ops import nms as torch_nms
from torchvision.ops import roi_align

from fer_cli.inputs.face_detector import FaceDetector, area_resize, integral_image, nms
from fer_cli.inputs.faces import FaceFinder
from fer_cli.inputs.images import read_image

from .mtcnn_reference import ReferenceDetector
from .synthetic import FER_VAL, SHARED

PHOTOS = SHARED / "data" / "photos"
needs_photos = pytest.mark.skipif(not PHOTOS.is_dir(), reason=f"{PHOTOS} is absent (../shared not beside the repo)")
needs_val = pytest.mark.skipif(not FER_VAL.is_dir(), reason=f"{FER_VAL} is absent (../shared not beside the repo)")


@pytest.fixture(scope="module")
def detectors():
    return FaceDetector(), ReferenceDetector()


def assert_same_faces(image: np.ndarray, detectors) -> int:
    """Both detectors find the same faces in ``image`` (H, W, 3): boxes and landmarks within a thousandth of a
    pixel, scores within 1e-5. Returns how many."""
    onnx, reference = detectors
    found = onnx.detect(image)
    expected = reference.detect(torch.from_numpy(np.array(image)).permute(2, 0, 1))
    assert len(found) == len(expected)
    for face, same in zip(found, expected):
        np.testing.assert_allclose(face.box, same.box, atol=1e-3)
        np.testing.assert_allclose(face.landmarks, same.landmarks, atol=1e-3)
        assert face.score == pytest.approx(same.score, abs=1e-5)
    return len(found)


@needs_photos
@pytest.mark.parametrize("name, faces", [("astronaut", 1), ("camera", 1), ("chelsea", 0), ("coffee", 0)])
def test_the_shared_photos_give_the_torch_pipelines_faces(detectors, name, faces):
    assert assert_same_faces(np.asarray(read_image(PHOTOS / f"{name}.png", 3)), detectors) == faces


def composed(seed: int, size=(640, 480)) -> np.ndarray:
    """FER2013 val faces of 40-200 px, tilted up to 25 degrees, pasted on a crop of a photo without faces."""
    rng = np.random.default_rng(seed)
    background = read_image(PHOTOS / ("coffee.png" if seed % 2 else "chelsea.png"), 3).resize(size)
    faces = sorted(p for p in FER_VAL.rglob("*.png"))
    for _ in range(rng.integers(1, 5)):
        side = int(rng.integers(40, 200))
        face = read_image(faces[rng.integers(len(faces))], 3).resize((side, side), Image.Resampling.BICUBIC)
        face = face.rotate(float(rng.uniform(-25, 25)), Image.Resampling.BICUBIC)
        background.paste(face, (int(rng.integers(0, size[0] - side)), int(rng.integers(0, size[1] - side))))
    return np.asarray(background)


@needs_photos
@needs_val
def test_group_photos_of_fer2013_faces_give_the_torch_pipelines_faces(detectors):
    found = sum(assert_same_faces(composed(seed), detectors) for seed in range(6))
    assert found >= 6  # most pasted faces are found (FER2013's hardest are not)


@needs_photos
def test_a_photo_larger_than_the_detector_searches_gives_the_same_faces_in_its_own_pixels(detectors):
    big = read_image(PHOTOS / "astronaut.png", 3).resize((1900, 1900))
    finder = FaceFinder("detect", min_face=20)
    (face,) = finder.detect(big)  # searched at 1280 px when faces of 20 px are searched for
    small = np.asarray(big.resize((1280, 1280), Image.Resampling.BILINEAR, reducing_gap=2.0))
    (same,) = detectors[1].detect(torch.from_numpy(small.copy()).permute(2, 0, 1))
    np.testing.assert_allclose(face.box, np.array(same.box) * 1900 / 1280, atol=1e-2)


def test_images_without_a_face_give_none(detectors):
    rng = np.random.default_rng(0)
    for image in (
        rng.integers(0, 256, (300, 400, 3), dtype=np.uint8),  # noise
        np.full((64, 64, 3), 128, dtype=np.uint8),  # uniform
        np.zeros((8, 8, 3), dtype=np.uint8),  # smaller than any face
        np.zeros((12, 500, 3), dtype=np.uint8),  # one pyramid level
    ):
        assert assert_same_faces(image, detectors) == 0


@pytest.mark.parametrize("size", [(61, 95), (12, 19), (40, 40), (100, 157)])
def test_area_resizing_is_torchs_exactly(size):
    image = np.random.default_rng(1).integers(0, 256, (101, 157, 3), dtype=np.uint8)
    pixels = torch.from_numpy(image).permute(2, 0, 1).float()[None]
    expected = F.interpolate(pixels, size=size, mode="area")[0].numpy()
    np.testing.assert_array_equal(area_resize(integral_image(image), size), expected)


def test_the_refine_and_output_stages_crop_boxes_as_torchvisions_roi_align(detectors):
    """R and O take the image and boxes, and crop inside their graph (ONNX's RoiAlign): as the reference crops
    with torchvision's roi_align and runs the torch nets, boxes across the image's edges and beyond it included."""
    pixels = np.random.default_rng(2).integers(0, 256, (1, 3, 101, 157)).astype(np.float32)
    boxes = np.array(
        [
            [10.3, 5.2, 60.7, 55.1],
            [-20, -10, 30, 40],
            [90, 50, 180, 140],
            [140.2, 90.9, 170, 120],
            [200, 200, 230, 230],
            [3, 3, 5, 5],
        ],
        dtype=np.float32,
    )  # fmt: skip  (inside, across each edge, beyond the image, smaller than a bin)
    onnx, reference = detectors
    rois = torch.cat([torch.zeros(len(boxes), 1), torch.from_numpy(boxes)], dim=1)
    for name, size in (("rnet", 24), ("onet", 48)):
        crops = roi_align(torch.from_numpy(pixels), rois, size, 1.0, sampling_ratio=-1, aligned=True)
        with torch.inference_mode():
            expected = getattr(reference.nets, name)((crops - 127.5) * 0.0078125)
        for got, want in zip(onnx.nets[name].run(None, {"pixels": pixels, "boxes": boxes}), expected):
            np.testing.assert_allclose(got, want.numpy(), atol=1e-4)


def test_non_maximum_suppression_is_torchvisions():
    rng = np.random.default_rng(3)
    corners = rng.uniform(0, 100, (400, 2)).astype(np.float32)
    boxes = np.concatenate([corners, corners + rng.uniform(5, 40, (400, 2)).astype(np.float32)], axis=1)
    scores = rng.choice(np.float32([0.5, 0.7, 0.9]), 400) + rng.uniform(0, 1e-3, 400).astype(np.float32) * (
        rng.uniform(size=400) < 0.5
    )  # ties included
    for threshold in (0.3, 0.5, 0.7):
        expected = torch_nms(torch.from_numpy(boxes), torch.from_numpy(scores), threshold).numpy()
        np.testing.assert_array_equal(nms(boxes, scores, threshold), expected)
