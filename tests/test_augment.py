import numpy as np
import pytest
import torch

from fer_cli.inputs.augment import ERASE_AREA, Augmentation, BatchAugment
from fer_cli.inputs.batches import InMemoryBatches, share_of, shuffled_order
from fer_cli.inputs.data import LabelledTensors

from .synthetic import synthetic_face

PREPROCESS = {"size": 48, "channels": 1, "mean": [0.5], "std": [0.25]}


def faces(count: int) -> torch.Tensor:
    return torch.from_numpy(np.stack([synthetic_face(i % 3, i) for i in range(count)]))[:, None]


def test_augmentation_parsing():
    assert Augmentation.parse("none").names() == []
    assert Augmentation.parse("flip,erase").names() == ["flip", "erase"]
    assert Augmentation.parse("default").names() == ["flip", "crop", "shift", "rotate", "erase"]
    with pytest.raises(ValueError, match="unknown augmentation blur"):
        Augmentation.parse("flip,blur")


def test_without_augmentations_a_batch_is_only_normalised():
    images = faces(4)
    out = BatchAugment(PREPROCESS, Augmentation.parse("none"))(images, torch.Generator().manual_seed(0))
    expected = (images.float() / 255 - 0.5) / 0.25
    assert out.dtype == torch.float32 and torch.equal(out, expected)


def test_flip_alone_gives_each_image_or_its_mirror_about_half_the_time():
    augment = BatchAugment(PREPROCESS, Augmentation.parse("flip"))
    images = faces(200)
    out = augment(images, torch.Generator().manual_seed(0))
    plain, mirrored = augment.normalise(images), augment.normalise(images.flip(-1))
    same = (out - plain).abs().amax(dim=(1, 2, 3)) < 1e-4
    flipped = (out - mirrored).abs().amax(dim=(1, 2, 3)) < 1e-4
    assert torch.all(same | flipped)
    assert 70 < flipped.sum() < 130


def test_warps_stay_within_their_ranges():
    generator = torch.Generator().manual_seed(0)
    crops = BatchAugment(PREPROCESS, Augmentation.parse("crop")).affine_matrices(1000, generator)
    area = crops[:, :, :2].det()  # the crop's area, as a share of the image
    assert area.min() >= 0.8 - 1e-4 and area.max() <= 1.0 + 1e-4
    ratio = crops[:, 0, 0] / crops[:, 1, 1]
    assert ratio.min() >= 0.9 - 1e-4 and ratio.max() <= 1.1 + 1e-4
    assert torch.all(crops[:, :, 2].abs() <= 1 - crops[:, [0, 1], [0, 1]] + 1e-6)  # inside the image
    turns = BatchAugment(PREPROCESS, Augmentation.parse("shift,rotate")).affine_matrices(1000, generator)
    angles = torch.rad2deg(torch.atan2(turns[:, 1, 0], turns[:, 0, 0])).abs()
    assert 9.0 < angles.max() <= 10.0 + 1e-3
    shifts = torch.linalg.solve(turns[:, :, :2], turns[:, :, 2]).abs()  # the shift before the rotation
    assert 0.19 < shifts.max() <= 0.2 + 1e-6  # 10% of the side, which spans 2


def test_erasing_blanks_one_rectangle_in_about_half_the_images():
    augment = BatchAugment(PREPROCESS, Augmentation.parse("erase"))
    masks = augment.erase_masks(1000, 48, 48, torch.Generator().manual_seed(0))
    area = masks.float().mean(dim=(1, 2, 3))
    erased = area > 0
    assert 400 < erased.sum() < 600
    assert area[erased].min() >= ERASE_AREA[0] * 0.5 and area[erased].max() <= ERASE_AREA[1] * 1.5
    rows, cols = masks[:, 0].any(dim=2), masks[:, 0].any(dim=1)  # a rectangle: its rows x its columns
    assert torch.equal(masks[:, 0], rows[:, :, None] & cols[:, None, :])
    out = augment(faces(8), torch.Generator().manual_seed(1))
    assert torch.all(out[augment.erase_masks(8, 48, 48, torch.Generator().manual_seed(1)).expand_as(out)] == 0)


def test_the_same_generator_seed_gives_the_same_augmentations():
    augment = BatchAugment(PREPROCESS, Augmentation())
    images = faces(16)
    first = augment(images, torch.Generator().manual_seed(3))
    assert torch.equal(first, augment(images, torch.Generator().manual_seed(3)))
    assert not torch.equal(first, augment(images, torch.Generator().manual_seed(4)))


def test_in_memory_batches_cover_an_epoch_in_order():
    data = LabelledTensors(faces(10), torch.arange(10) % 2, ["a", "b"], "synthetic")
    batches = InMemoryBatches(data, torch.device("cpu"), BatchAugment(PREPROCESS), batch_size=4)
    order = torch.tensor([9, 8, 7, 6, 5, 4, 3, 2, 1, 0])
    epoch = batches.epoch(order)
    labels = [labels for _, labels in epoch]
    assert len(epoch) == 3 and torch.equal(torch.cat(labels), data.labels[order])
    assert len(batches.epoch(order, torch.Generator(), drop_last=True)) == 2


def test_orders_shuffle_balance_and_share():
    labels = torch.tensor([0] * 90 + [1] * 10)
    generator = torch.Generator().manual_seed(0)
    assert sorted(shuffled_order(labels, generator).tolist()) == list(range(100))
    balanced = labels[shuffled_order(labels.repeat(50), generator, balanced=True) % 100]
    assert 0.4 < balanced.float().mean() < 0.6
    order = torch.arange(10)
    assert share_of(order, 1, 3, equal=True).tolist() == [1, 4, 7]
    assert share_of(order, 0, 3, equal=False).tolist() == [0, 3, 6, 9]
