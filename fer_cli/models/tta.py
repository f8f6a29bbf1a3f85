"""Test-time augmentation: the views of each face a model is shown, whose probabilities are averaged.

* ``flip``:  the face and its mirror image (2 views)
* ``crops``: the face, its centre and four corner crops of 11/12 of the side scaled back up to
  the model's size, and the mirror image of each (12 views): the ten-crop of Krizhevsky et al.
  with the whole face added. Training's random resized crops (80-100% of the area) make such
  crops familiar to the models.

Views are uint8 model pixels, made in numpy (no torch: exported models use them too).
"""

from __future__ import annotations

from collections.abc import Iterator
from enum import Enum
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # numpy is imported by the functions: `fer --help` reads TTA, the choices, without it
    import numpy as np

CROP_SHARE = 11 / 12  # a crop's side, as a share of the face's: 44 of 48 pixels


class TTA(str, Enum):
    none = "none"
    flip = "flip"
    crops = "crops"

    @property
    def view_count(self) -> int:
        return {"none": 1, "flip": 2, "crops": 12}[self.value]


def views(pixels: np.ndarray, tta: TTA | str) -> Iterator[np.ndarray]:
    """The views of a batch of uint8 model pixels (N, C, H, W), one batch per view."""
    import numpy as np

    tta = TTA(tta)
    originals = [pixels] if tta != TTA.crops else [pixels, *corner_and_centre_crops(pixels)]
    for view in originals:
        yield view
        if tta != TTA.none:
            yield np.ascontiguousarray(view[..., ::-1])


def corner_and_centre_crops(pixels: np.ndarray) -> list[np.ndarray]:
    """The centre and four corner crops of ``CROP_SHARE`` of the side, each resized to the full side."""
    import numpy as np

    height, width = pixels.shape[-2:]
    crop_h, crop_w = round(height * CROP_SHARE), round(width * CROP_SHARE)
    rows, cols = _bilinear(crop_h, height), _bilinear(crop_w, width)
    corners = [((height - crop_h) // 2, (width - crop_w) // 2), (0, 0), (0, width - crop_w)]
    corners += [(height - crop_h, 0), (height - crop_h, width - crop_w)]
    crops = []
    for top, left in corners:
        crop = pixels[..., top : top + crop_h, left : left + crop_w].astype(np.float32)
        resized = np.einsum("ij,ncjk,lk->ncil", rows, crop, cols, optimize=True)
        crops.append(np.clip(np.rint(resized), 0, 255).astype(np.uint8))
    return crops


def _bilinear(source: int, target: int) -> np.ndarray:
    """(target, source) weights of bilinear upscaling with pixel centres aligned (as PIL and torch do)."""
    import numpy as np

    position = np.clip((np.arange(target) + 0.5) * source / target - 0.5, 0, source - 1)
    low = np.floor(position).astype(int)
    high = np.minimum(low + 1, source - 1)
    weights = np.zeros((target, source), dtype=np.float32)
    np.add.at(weights, (np.arange(target), low), 1 - (position - low))
    np.add.at(weights, (np.arange(target), high), position - low)
    return weights
