"""Synthetic, easy-to-learn images for tests, and where the shared data set lives."""

from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ["calm", "frown", "smile"]
SHARED = Path(__file__).resolve().parents[1].parent / "shared"
FER_VAL = SHARED / "data" / "fer2013" / "val"


def synthetic_face(label: int, seed: int, size: int = 48) -> np.ndarray:
    """A grey image whose class is easy to learn: a bright bar at a class-specific height, plus noise."""
    rng = np.random.default_rng(seed)
    image = rng.normal(110, 20, (size, size))
    row = (label + 1) * size // (len(CLASSES) + 1)
    image[row - 3 : row + 3, size // 6 : -size // 6] += 110
    return np.clip(image, 0, 255).astype(np.uint8)


def make_labelled_folder(root: Path, per_class: int = 8, seed: int = 0, classes=CLASSES) -> Path:
    for label, name in enumerate(classes):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(synthetic_face(label, seed * 1000 + label * 100 + i)).save(folder / f"{name}_{i}.png")
    return root


def tiny_config(data, out, **overrides):
    """Training settings that learn the synthetic classes in seconds on a CPU."""
    from fer_cli.engine.train.config import TrainConfig

    settings = dict(
        data=str(data), out=str(out), arch="vgg", arch_options={"width": 4}, epochs=3, batch_size=16,
        optimizer="adamw", lr=0.01, augment="none", workers=0, device="cpu",
    )  # fmt: skip
    return TrainConfig(**{**settings, **overrides})


def interrupt_in_epoch(monkeypatch, epoch: int) -> None:
    """Make the next training run stop with Ctrl-C as epoch ``epoch`` begins, once."""
    from fer_cli.engine.train import epoch as epoch_module  # where train_epoch looks train_one_epoch up

    real_epoch = epoch_module.train_one_epoch
    calls = []

    def crash(*args, **kwargs):
        calls.append(1)
        if len(calls) == epoch:
            monkeypatch.setattr(epoch_module, "train_one_epoch", real_epoch)
            raise KeyboardInterrupt
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(epoch_module, "train_one_epoch", crash)
