"""Checkpoints: self-describing files of plain types, written atomically, loaded safely.

A checkpoint is a dict::

    format        "fer_cli.checkpoint", version 1
    arch          registry name, with model_config (its keyword options)
    class_names   output order of the classifier
    preprocess    {"size", "channels", "mean", "std"}: how images become tensors
    state_dict    weights (float tensors may be stored as float16 to save space)
    temperature   softmax temperature (1.0 = uncalibrated)
    metrics       validation results of the saved epoch, per class included
    provenance    data, command, seed, date, fer_cli version
    training      (resumable "last" checkpoints only) optimizer/scheduler/RNG state and history
"""

from __future__ import annotations

import datetime
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..device import autocast, prepare_model, select_device
from ..errors import CheckpointError
from ..files import remove_orphans, temporary_sibling
from .architectures import create_model
from .checkpoint_file import FORMAT, VERSION, check_unpacked_sizes, refused, validated, what_is_wrong
from .classifier import Classifier, described_by


def clean_state_dict(state_dict: dict) -> dict:
    """Strip the prefixes DistributedDataParallel ('module.') and torch.compile ('_orig_mod.') add."""
    cleaned = {}
    for key, value in state_dict.items():
        for prefix in ("module.", "_orig_mod."):
            while key.startswith(prefix):
                key = key[len(prefix) :]
        cleaned[key] = value
    return cleaned


def save_checkpoint(path: str | os.PathLike, checkpoint: dict, half: bool = False) -> None:
    """Write atomically: a crash mid-write never leaves a truncated file under ``path``."""
    checkpoint = {"format": FORMAT, "version": VERSION, **checkpoint}
    if half:
        checkpoint["state_dict"] = {
            k: v.half() if v.is_floating_point() else v for k, v in checkpoint["state_dict"].items()
        }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_orphans(path)
    temporary = temporary_sibling(path)
    try:
        with open(temporary, "wb") as stream:
            torch.save(checkpoint, stream)
            stream.flush()
            os.fsync(stream.fileno())  # on disk before it takes the old file's name, power loss included
        os.replace(temporary, path)
    except OSError as error:  # a full disk, a folder that cannot be written: the earlier file is untouched
        temporary.unlink(missing_ok=True)
        raise CheckpointError(f"cannot write {path}: {error.strerror or error}") from None
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def store_calibration(
    path: str | os.PathLike, calibration: dict, correction: dict | None = None, metrics: dict | None = None
) -> None:
    """Set a checkpoint's temperature from a ``calibration.calibrate`` report (kept in its metrics), and its prior
    correction from a ``calibration.choose_prior_correction`` report when one is given (with ``metrics``, the
    corrected model's validation metrics, in place of the stored ones)."""
    checkpoint = read_checkpoint(path)
    checkpoint["temperature"] = float(calibration["temperature"])
    stored = checkpoint.get("metrics", {})
    if metrics is not None:
        stored = {**metrics, "epoch": stored.get("epoch")}
    checkpoint["metrics"] = {**stored, "calibration": calibration}
    if correction is not None:
        checkpoint["prior_correction"] = float(correction["tau"])
        checkpoint["metrics"]["prior_correction"] = correction
    save_checkpoint(path, checkpoint)


def read_checkpoint(path: str | os.PathLike) -> dict:
    """Load and validate a checkpoint dict (no code runs: ``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no such checkpoint file: {path}")
    check_unpacked_sizes(path)
    try:
        # mmap: listing checkpoints reads only their metadata, not every weight
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as error:
        raise refused(path, error) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError):
        raise CheckpointError(f"{path} {what_is_wrong(path)}") from None
    return validated(path, checkpoint)


def build_model(checkpoint: dict) -> nn.Module:
    """Rebuild the network a checkpoint describes and load its weights in float32."""
    model = create_model(
        checkpoint["arch"],
        num_classes=len(checkpoint["class_names"]),
        in_channels=checkpoint["preprocess"]["channels"],
        **checkpoint["model_config"],
    )
    state = {
        k: v.float() if v.is_floating_point() else v for k, v in clean_state_dict(checkpoint["state_dict"]).items()
    }
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise CheckpointError(
            f"weights do not fit architecture '{checkpoint['arch']}': {str(error).splitlines()[0]}"
        ) from None
    return model.eval()


class PixelsIn(nn.Module):
    """A network fed uint8 pixels (N, C, H, W), normalised inside exactly as ``images.normalise`` does."""

    def __init__(self, network: nn.Module, preprocess: dict):
        super().__init__()
        self.network = network
        shape = (1, -1, 1, 1)
        self.register_buffer("mean", torch.tensor(preprocess["mean"], dtype=torch.float32).view(shape))
        self.register_buffer("std", torch.tensor(preprocess["std"], dtype=torch.float32).view(shape))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.network((pixels.float() / 255.0 - self.mean) / self.std)


class TorchRunner:
    """Runs a checkpoint's network with torch; on CUDA: pinned memory, non-blocking copies (of the
    uint8 pixels, a quarter of float32's bytes), channels_last and AMP."""

    def __init__(self, network: nn.Module, preprocess: dict):
        self.model = PixelsIn(network, preprocess).eval()
        self.device = torch.device("cpu")

    def prepare(self, device: str | torch.device = "auto") -> str:
        self.device = select_device(device) if isinstance(device, str) else device
        self.model = prepare_model(self.model, self.device).eval()
        return str(self.device)

    @torch.inference_mode()
    def logits(self, pixels: np.ndarray) -> np.ndarray:
        batch = torch.from_numpy(np.ascontiguousarray(pixels))
        if self.device.type == "cuda":
            batch = batch.pin_memory().to(self.device, non_blocking=True, memory_format=torch.channels_last)
        else:
            batch = batch.contiguous(memory_format=torch.channels_last)  # the model's layout (prepare_model)
        with autocast(self.device):
            return self.model(batch.to(self.device)).float().cpu().numpy()


def load_checkpoint_classifier(path: str | os.PathLike) -> Classifier:
    """A checkpoint run by torch whatever the device: the reference its ONNX form is held to (``zoo.load_classifier``
    is what the commands use)."""
    checkpoint = read_checkpoint(path)
    return described_by(path, checkpoint, TorchRunner(build_model(checkpoint), checkpoint["preprocess"]))


def now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
