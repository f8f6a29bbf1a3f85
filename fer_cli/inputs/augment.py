"""Training-time augmentation of whole batches, on the device that trains.

Each batch of uint8 images is augmented in one go where the model runs (the GPU when there is
one): a random resized crop, a shift, a rotation and a horizontal flip are folded into one 2x3
matrix per image and applied by a single ``grid_sample``; then the images are normalised and a
random patch of some is erased. One warp per batch replaces five per-image transforms, so a GPU
is not kept waiting for CPU workers, and on a CPU the cores go to the model instead of workers.

The random numbers are drawn on the CPU from the caller's generator, so a resumed run repeats its
epochs exactly and a CPU and a GPU draw the same augmentations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

CROP_AREA = (0.8, 1.0)  # share of the image a random resized crop keeps
CROP_RATIO = (0.9, 1.1)  # its width / height
SHIFT = 0.1  # largest shift, as a share of the side
ERASE_PROBABILITY = 0.5
ERASE_AREA = (0.02, 0.15)  # share of the image an erased patch covers
ERASE_RATIO = (0.3, 3.3)  # its height / width


@dataclass(frozen=True)
class Augmentation:
    """Training-time augmentations; each one can be switched off on the command line."""

    flip: bool = True  # horizontal flip: faces are roughly symmetric
    crop: bool = True  # random resized crop, scale 0.8-1
    shift: bool = True  # translate up to 10% of the size
    rotate: float = 10.0  # degrees, either way; 0 = off
    erase: bool = True  # random erasing of a patch (after normalisation)

    @classmethod
    def parse(cls, spec: str) -> Augmentation:
        """'default', 'none', or a comma list of flip,crop,shift,rotate,erase."""
        spec = spec.strip().lower()
        if spec == "default":
            return cls()
        chosen = set() if spec == "none" else {part.strip() for part in spec.split(",") if part.strip()}
        valid = {"flip", "crop", "shift", "rotate", "erase"}
        if chosen - valid:
            raise ValueError(
                f"unknown augmentation {', '.join(sorted(chosen - valid))}; "
                f"use 'default', 'none' or a comma list of {', '.join(sorted(valid))}"
            )
        return cls(
            flip="flip" in chosen,
            crop="crop" in chosen,
            shift="shift" in chosen,
            rotate=10.0 if "rotate" in chosen else 0.0,
            erase="erase" in chosen,
        )

    def names(self) -> list[str]:
        return [n for n in ("flip", "crop", "shift", "rotate", "erase") if getattr(self, n)]

    @property
    def warps(self) -> bool:
        return self.flip or self.crop or self.shift or bool(self.rotate)


class BatchAugment:
    """uint8 batches (B, C, H, W) -> normalised float32 batches, augmented or not."""

    def __init__(self, preprocess: dict, augmentation: Augmentation | None = None, device: str | torch.device = "cpu"):
        self.mean = torch.tensor(preprocess["mean"], dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(preprocess["std"], dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.augmentation = augmentation or Augmentation.parse("none")

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images on the augmenter's device -> normalised float32."""
        return (images.float() / 255 - self.mean) / self.std

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        images = images.float() / 255
        if self.augmentation.warps:
            matrices = self.affine_matrices(len(images), generator).to(images.device)
            grid = F.affine_grid(matrices, list(images.shape), align_corners=False)
            images = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        images = (images - self.mean) / self.std
        if self.augmentation.erase:
            mask = self.erase_masks(len(images), images.shape[-2], images.shape[-1], generator, images.device)
            images = images.masked_fill(mask, 0.0)  # 0 = the training mean after normalisation
        return images

    def affine_matrices(self, count: int, generator: torch.Generator) -> torch.Tensor:
        """(count, 2, 3) maps from output to input coordinates (-1..1), as ``affine_grid`` wants.

        Output point p comes from input point c + D R (F p - t): F flips, t shifts, R rotates and
        D, c are the crop's half-sizes and centre.
        """
        a = self.augmentation
        u = torch.rand(count, 7, generator=generator)
        flip = torch.where(u[:, 0] < 0.5, -1.0, 1.0) if a.flip else torch.ones(count)
        angle = torch.deg2rad((u[:, 1] * 2 - 1) * a.rotate)
        shift = (u[:, 2:4] * 2 - 1) * (2 * SHIFT) if a.shift else torch.zeros(count, 2)  # the side spans 2
        if a.crop:
            area = CROP_AREA[0] + u[:, 4] * (CROP_AREA[1] - CROP_AREA[0])
            ratio = torch.exp(math.log(CROP_RATIO[0]) + u[:, 5] * math.log(CROP_RATIO[1] / CROP_RATIO[0]))
            half = torch.stack([(area * ratio).sqrt(), (area / ratio).sqrt()], dim=1).clamp(max=1.0)
            centre = (torch.stack([u[:, 6], torch.rand(count, generator=generator)], dim=1) * 2 - 1) * (1 - half)
        else:
            half, centre = torch.ones(count, 2), torch.zeros(count, 2)
        cos, sin = angle.cos(), angle.sin()
        rotation = torch.stack([torch.stack([cos, -sin], 1), torch.stack([sin, cos], 1)], 1)
        linear = half[:, :, None] * rotation * torch.stack([flip, torch.ones(count)], 1)[:, None, :]
        offset = centre - (half[:, :, None] * rotation @ shift[:, :, None]).squeeze(2)
        return torch.cat([linear, offset[:, :, None]], dim=2)

    def erase_masks(
        self, count: int, height: int, width: int, generator: torch.Generator, device: str | torch.device = "cpu"
    ) -> torch.Tensor:
        """(count, 1, height, width) booleans on ``device``: a random rectangle in about half the images."""
        u = torch.rand(count, 5, generator=generator).to(device)  # drawn on the CPU, the mask made on the device
        area = (ERASE_AREA[0] + u[:, 1] * (ERASE_AREA[1] - ERASE_AREA[0])) * height * width
        ratio = torch.exp(math.log(ERASE_RATIO[0]) + u[:, 2] * math.log(ERASE_RATIO[1] / ERASE_RATIO[0]))
        h = (area * ratio).sqrt().round().clamp(1, height - 1)
        w = (area / ratio).sqrt().round().clamp(1, width - 1)
        top = (u[:, 3] * (height - h + 1)).floor()
        left = (u[:, 4] * (width - w + 1)).floor()
        rows = torch.arange(height, device=device).view(1, height, 1)
        cols = torch.arange(width, device=device).view(1, 1, width)
        inside = (
            (rows >= top.view(-1, 1, 1))
            & (rows < (top + h).view(-1, 1, 1))
            & (cols >= left.view(-1, 1, 1))
            & (cols < (left + w).view(-1, 1, 1))
        )
        return (inside & (u[:, 0] < ERASE_PROBABILITY).view(-1, 1, 1))[:, None]
