"""Shared fixtures: tiny synthetic face-like images made in tmp_path, and a tiny trained model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from PIL import Image

from fer_cli.engine.train.run import train

from .synthetic import make_labelled_folder, synthetic_face, tiny_config

# Wide, colourless rich output so assertions never meet wrapped lines or escape codes.
os.environ.setdefault("COLUMNS", "200")
os.environ["NO_COLOR"] = "1"
os.environ["TERM"] = "dumb"


# Fuzzing (tests/test_fuzz.py): a bounded, repeatable profile for CI; `--hypothesis-profile=long` tries many more.
settings.register_profile(
    "ci", max_examples=12, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("long", max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci")


@pytest.fixture(scope="session")
def suite_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fer-cache")


@pytest.fixture(autouse=True)
def caller_environment_ignored(monkeypatch, suite_cache):
    """The suite tests fer, not the caller's shell: FER_DEBUG (re-raise user errors) is unset, and
    what fer caches (a distilling run's teacher outputs, checkpoints' ONNX forms) goes to the suite's
    own folder, shared by its tests: each checkpoint predicted on the CPU is exported once a run."""
    monkeypatch.delenv("FER_DEBUG", raising=False)
    monkeypatch.setenv("FER_CACHE_DIR", str(suite_cache))


@pytest.fixture
def labelled_dir(tmp_path) -> Path:
    return make_labelled_folder(tmp_path / "labelled", per_class=8)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """A root with train/ and val/ of the synthetic classes."""
    root = tmp_path_factory.mktemp("dataset")
    make_labelled_folder(root / "train", per_class=24, seed=1)
    make_labelled_folder(root / "val", per_class=8, seed=2)
    return root


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_dataset, tmp_path_factory) -> Path:
    """A small vgg trained for a few epochs on the synthetic data (learns it well)."""
    out = tmp_path_factory.mktemp("model") / "tiny.pt"
    train(tiny_config(tiny_dataset, out, epochs=6))
    return out


@pytest.fixture(scope="session")
def second_checkpoint(tiny_dataset, tmp_path_factory) -> Path:
    """A different architecture on the same classes, for ensembles."""
    out = tmp_path_factory.mktemp("model2") / "other.pt"
    train(
        tiny_config(
            tiny_dataset, out, arch="mini_xception", arch_options={"width": 8}, epochs=4, augment="flip", seed=1
        )
    )
    return out


@pytest.fixture
def image_folder(tmp_path) -> Path:
    """Good images, in a nested folder too, and bad files beside them."""
    root = tmp_path / "inputs"
    (root / "nested").mkdir(parents=True)
    Image.fromarray(synthetic_face(0, 1)).save(root / "a.png")
    Image.fromarray(synthetic_face(2, 2)).convert("RGB").save(root / "nested" / "b.jpg")
    return root


@pytest.fixture
def bad_files(tmp_path) -> dict[str, Path]:
    root = tmp_path / "bad"
    root.mkdir()
    good = root / "good.png"
    Image.fromarray(synthetic_face(1, 3)).save(good)
    corrupt = root / "corrupt.png"
    corrupt.write_bytes(good.read_bytes()[:60])  # a PNG cut short
    empty = root / "empty.png"
    empty.write_bytes(b"")
    text = root / "notes.jpg"
    text.write_text("this is not a picture\n")
    return {"good": good, "corrupt": corrupt, "empty": empty, "text": text}
