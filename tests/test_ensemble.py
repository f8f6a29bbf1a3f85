import shutil

import numpy as np
import pytest

from fer_cli.engine.ensemble import (
    errors_fixed_by,
    majority_vote,
    mean_vote,
    validated_on,
    validation_weights,
    weighted_vote,
)
from fer_cli.models.zoo import load_classifier


class _Model:
    def __init__(self, name, accuracy, f1):
        self.name = name
        self.metrics = {"accuracy": accuracy, "per_class": {c: {"f1": v} for c, v in zip("ab", f1)}} if accuracy else {}


def test_majority_vote_counts_votes_and_breaks_ties_by_probability():
    probs = np.array([[[0.6, 0.4], [0.55, 0.45], [0.1, 0.9]]])  # two models vote a, one strongly b
    assert majority_vote(probs).argmax(1).tolist() == [0]
    assert majority_vote(probs).max() == pytest.approx(2 / 3, abs=1e-3)  # confidence = agreement
    assert mean_vote(probs).argmax(1).tolist() == [1]  # mean: (1.25 vs 1.75)/3
    tie = np.array([[[0.6, 0.4], [0.1, 0.9]]])
    assert majority_vote(tie).argmax(1).tolist() == [1]  # 1 vote each; mean probability decides


def test_weighted_vote_follows_the_weights():
    probs = np.array([[[0.9, 0.1], [0.2, 0.8], [0.3, 0.7]]])
    assert weighted_vote(probs, np.array([1.0, 1.0, 1.0])).argmax(1).tolist() == [1]
    assert weighted_vote(probs, np.array([5.0, 1.0, 1.0])).argmax(1).tolist() == [0]
    per_class = np.array([[1.0, 1.0], [0.1, 0.1], [0.1, 0.1]])
    scores = weighted_vote(probs, per_class)
    np.testing.assert_allclose(scores.sum(1), 1.0)
    assert scores.argmax(1).tolist() == [0]


def test_validation_weights_come_from_the_checkpoints():
    models = [_Model("x", 0.7, [0.6, 0.8]), _Model("y", 0.5, [0.2, 0.4]), _Model("z", None, None)]
    accuracy, per_class, notes = validation_weights(models, ["a", "b"])
    np.testing.assert_allclose(accuracy, [0.7, 0.5, 0.6])  # z gets the mean
    np.testing.assert_allclose(per_class, [[0.6, 0.8], [0.2, 0.4], [0.4, 0.6]])
    assert notes == ["z has no stored validation metrics; it gets the average weight"]


def test_errors_fixed_by_counts_the_other_models_rescues():
    correct = np.array(
        [  # models a, b, c on five images
            [True, True, False],
            [False, True, False],
            [False, False, True],
            [False, True, True],
            [True, False, False],
        ]
    )
    fixed = errors_fixed_by(correct)
    # a is wrong on images 1, 2, 3: b is right on 1 and 3, c on 2 and 3.
    assert fixed[0].tolist() == [0.0, 2 / 3, 2 / 3]
    # c is wrong on 0, 1, 4: a is right on 0 and 4, b on 0 and 1.
    assert fixed[2].tolist() == [2 / 3, 2 / 3, 0.0]


def test_a_models_validation_folder_is_recognised_wherever_it_is(tiny_dataset, tiny_checkpoint, tmp_path):
    model = load_classifier(tiny_checkpoint)
    assert validated_on([model], str(tiny_dataset / "val")) == [model]
    moved = tmp_path / "elsewhere" / "val"
    shutil.copytree(tiny_dataset / "val", moved)  # the same images on another machine
    assert validated_on([model], str(moved)) == [model]
    next(moved.glob("*/*.png")).unlink()  # not the same images any more
    assert validated_on([model], str(moved)) == []


def test_a_models_validation_images_are_recognised_by_content(tiny_dataset, tiny_checkpoint, tmp_path):
    """Copies, parts and lossless re-encodings of the validation set count; other images do not."""
    from PIL import Image

    from fer_cli.engine.ensemble import evaluate_ensemble, seen_in_validation
    from fer_cli.inputs.data import find_labelled_images

    model = load_classifier(tiny_checkpoint)
    recorded = model.provenance["val_images"]
    val = find_labelled_images(tiny_dataset / "val")
    assert recorded["count"] == len(val.paths) and len(recorded["hashes"]) <= len(val.paths)

    # Five of its images, renamed, one re-saved as lossless WebP and one as RGB, beside three new ones.
    mixed = tmp_path / "mixed"
    (mixed / "calm").mkdir(parents=True)
    (mixed / "smile").mkdir()
    for i, path in enumerate(val.paths[:5]):
        image = Image.open(path)
        if i == 0:
            image.save(mixed / "calm" / "copy0.webp", lossless=True)
        elif i == 1:
            image.convert("RGB").save(mixed / "calm" / "copy1.png")
        else:
            shutil.copy(path, mixed / "calm" / f"copy{i}.png")
    for i in range(3):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (48, 48), dtype=np.uint8)).save(
            mixed / "smile" / f"new{i}.png"
        )
    paths = find_labelled_images(mixed).paths
    assert seen_in_validation([model], str(mixed), paths, len(paths)) == [
        {"model": model.name, "images": 5, "validation_images": len(val.paths), "matched_by": "content"}
    ]
    report = evaluate_ensemble(
        np.full((len(paths), 1, 3), 1 / 3), np.zeros(len(paths), int), [model], model.class_names, True, "x", paths
    )
    assert report["notes"] == [
        f"{model.name} was selected on 5 of these 8 images (part of its validation set of {len(val.paths)}): "
        "its accuracy here is optimistic, as are the weighted votes (weights measured on its validation set)"
    ]
    others = find_labelled_images(tiny_dataset / "train").paths
    assert seen_in_validation([model], str(tiny_dataset / "train"), others, len(others)) == []


def test_a_checkpoint_without_content_hashes_falls_back_to_the_folder(tiny_dataset, tiny_checkpoint):
    from fer_cli.engine.ensemble import seen_in_validation

    model = load_classifier(tiny_checkpoint)
    model.provenance.pop("val_images")
    assert seen_in_validation([model], str(tiny_dataset / "val"), [], 24) == [
        {"model": model.name, "images": 24, "validation_images": None, "matched_by": "folder"}
    ]
