import numpy as np
import pytest
from PIL import Image

from fer_cli.models.tta import TTA, corner_and_centre_crops, views

from .synthetic import synthetic_face


def faces(count: int) -> np.ndarray:
    return np.stack([synthetic_face(i % 3, i) for i in range(count)])[:, None]


@pytest.mark.parametrize("tta, count", [("none", 1), ("flip", 2), ("crops", 12)])
def test_each_mode_shows_its_views_and_every_view_its_mirror(tta, count):
    pixels = faces(3)
    shown = list(views(pixels, tta))
    assert len(shown) == count == TTA(tta).view_count
    assert all(view.shape == pixels.shape and view.dtype == np.uint8 for view in shown)
    assert np.array_equal(shown[0], pixels)
    for original, mirror in zip(shown[::2], shown[1::2]):
        assert np.array_equal(mirror, original[..., ::-1])


def test_crops_are_the_centre_and_corners_scaled_back_up_like_pil_does():
    pixels = faces(2)
    crops = corner_and_centre_crops(pixels)
    assert len(crops) == 5
    boxes = [(2, 2), (0, 0), (0, 4), (4, 0), (4, 4)]  # 44 of 48 pixels: centre, then the corners
    for crop, (top, left) in zip(crops, boxes):
        for face, cropped in zip(pixels[:, 0], crop[:, 0]):
            expected = Image.fromarray(face[top : top + 44, left : left + 44]).resize((48, 48), Image.BILINEAR)
            assert np.abs(cropped.astype(int) - np.asarray(expected).astype(int)).max() <= 1


def test_a_uniform_image_stays_uniform_in_every_view():
    pixels = np.full((1, 1, 48, 48), 77, dtype=np.uint8)
    assert all((view == 77).all() for view in views(pixels, "crops"))
