"""Where models run and at what precision: one place decides, everyone else is handed the answer.

Whether a run is on the CPU is decided first without torch (``runs_on_the_cpu``): there a model runs on
onnxruntime and torch, seconds to import, is never loaded. The rest needs torch and imports it.
"""

from __future__ import annotations

import contextlib
import os
import platform
import sys
from typing import TYPE_CHECKING

from .errors import DeviceError

if TYPE_CHECKING:
    import torch

# Device files a GPU that torch could use leaves on Linux: NVIDIA's driver, AMD's ROCm, WSL2's GPU.
_GPU_DEVICE_FILES = ("/dev/nvidiactl", "/dev/nvidia0", "/proc/driver/nvidia/version", "/dev/kfd", "/dev/dxg")


def runs_on_the_cpu(spec: str) -> bool:
    """True when ``spec`` surely means the CPU here, decided without importing torch: 'cpu', or 'auto' on
    a machine with no GPU driver (Linux: none of NVIDIA's, AMD's or WSL2's device files; macOS: not Apple
    silicon, which has MPS). False when in doubt: then torch decides (``select_device``)."""
    spec = spec.strip().lower()
    if spec == "cpu":
        return True
    if spec != "auto":
        return False
    if sys.platform == "darwin":
        return platform.machine() != "arm64"
    if sys.platform.startswith("linux"):
        return not any(os.path.exists(path) for path in _GPU_DEVICE_FILES)
    return False  # Windows and the rest: ask torch


def select_device(spec: str = "auto") -> torch.device:
    """Turn 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps' into a usable torch.device.

    'auto' picks CUDA when present, then MPS, then the CPU. Asking for a device that is not
    there is an error, never a silent fallback.
    """
    import torch

    spec = spec.strip().lower()
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "mps":
        if not _mps_available():
            raise DeviceError("device 'mps' requested but Apple MPS is not available here; use --device cpu")
        return torch.device("mps")
    if spec == "cuda" or spec.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise DeviceError(f"device '{spec}' requested but CUDA is not available here; use --device cpu")
        index = spec.partition(":")[2]
        if index:
            if not index.isdigit() or int(index) >= torch.cuda.device_count():
                raise DeviceError(
                    f"device '{spec}' requested but this machine has {torch.cuda.device_count()} CUDA device(s)"
                )
            return torch.device("cuda", int(index))
        return torch.device("cuda")
    raise DeviceError(f"unknown device '{spec}'; use auto, cpu, cuda, cuda:N or mps")


def _mps_available() -> bool:
    import torch

    backend = getattr(torch.backends, "mps", None)
    return bool(backend and backend.is_available())


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """Mixed precision on CUDA (float16 autocast); full float32 everywhere else."""
    import torch

    if device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def grad_scaler(device: torch.device) -> torch.amp.GradScaler:
    """A loss scaler that only acts when autocast runs in float16, i.e. on CUDA."""
    import torch

    return torch.amp.GradScaler("cuda", enabled=device.type == "cuda")


def prepare_model(model: torch.nn.Module, device: torch.device, training: bool = False) -> torch.nn.Module:
    """Move a model to its device, in channels_last where that is safe and faster: on CUDA (tensor
    cores prefer it), and on a CPU for prediction (oneDNN's convolutions: 1.3x images/s for vgg and
    resnet18 here, 2x for mini_xception). Not for training on a CPU: there torch 2.14's backward
    pass crashed (segfault) for resnet18 and mini_xception of width 8 in channels_last."""
    import torch

    model = model.to(device)
    if device.type == "cuda" or not training:
        model = model.to(memory_format=torch.channels_last)
    return model


def to_device(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Move a batch to the device; on CUDA in channels_last, the layout the model was prepared for."""
    import torch

    if device.type == "cuda":
        return images.to(device, non_blocking=True, memory_format=torch.channels_last)
    return images.to(device)
