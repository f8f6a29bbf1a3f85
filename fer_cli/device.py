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


PRECISIONS = ("auto", "fp32", "bf16")
# Flags of /proc/cpuinfo that mean bfloat16 matrix units: Intel's AMX, and AVX-512's BF16 dot products
# (Intel Cooper Lake and later, AMD Zen 4 and later). Without them torch emulates bfloat16: 15x slower
# than float32 on an AVX2-only AMD EPYC (Zen 3), measured.
_BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_has_bf16_units() -> bool:
    """True when this CPU multiplies bfloat16 in hardware (AMX or AVX512-BF16), asked of torch, else of
    /proc/cpuinfo's flags."""
    import torch

    probes = [getattr(torch.cpu, name, None) for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")]
    if all(probe is not None for probe in probes):
        return any(probe() for probe in probes)
    try:
        with open("/proc/cpuinfo") as handle:
            flags = next((line.split(":", 1)[1].split() for line in handle if line.startswith("flags")), [])
    except OSError:
        return False
    return any(flag in flags for flag in _BF16_CPU_FLAGS)


def resolve_precision(spec: str, device: torch.device) -> str:
    """What ``--precision auto|fp32|bf16`` means on ``device``: 'fp16' (float16 autocast with loss scaling:
    CUDA's auto), 'bf16' (bfloat16 autocast) or 'fp32'. On a CPU, auto is bf16 where the CPU has bfloat16 units
    (``cpu_has_bf16_units``), fp32 elsewhere; bf16 asked for on a CPU without them runs, emulated and slow."""
    spec = spec.strip().lower()
    if spec not in PRECISIONS:
        raise DeviceError(f"unknown precision '{spec}'; use {', '.join(PRECISIONS)}")
    if spec == "fp32":
        return "fp32"
    if device.type == "cuda":
        return "fp16" if spec == "auto" else "bf16"
    if device.type == "cpu":
        return "bf16" if spec == "bf16" or cpu_has_bf16_units() else "fp32"
    if spec == "bf16":
        raise DeviceError(f"--precision bf16 is not available on {device.type}; use auto or fp32")
    return "fp32"


def describe_precision(precision: str, device: torch.device) -> str:
    """One line for the log: the precision and why."""
    if precision == "fp16":
        return "float16 mixed precision (autocast, loss scaling)"
    if precision == "bf16":
        units = cpu_has_bf16_units() if device.type == "cpu" else True
        return "bfloat16 mixed precision (autocast)" + ("" if units else ": this CPU has no bfloat16 units, slow")
    if device.type == "cpu":
        return "float32" + ("" if cpu_has_bf16_units() else " (this CPU has no bfloat16 units: AMX or AVX512-BF16)")
    return "float32"


def autocast(device: torch.device, precision: str | None = None) -> contextlib.AbstractContextManager:
    """The autocast context of ``precision`` ('fp16', 'bf16' or 'fp32'); by default float16 on CUDA, float32
    elsewhere (what prediction uses: on a CPU it gives the same results as onnxruntime)."""
    import torch

    precision = precision or ("fp16" if device.type == "cuda" else "fp32")
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler(device: torch.device, precision: str | None = None) -> torch.amp.GradScaler:
    """A loss scaler that only acts when autocast runs in float16 (on CUDA); bfloat16 needs none."""
    import torch

    precision = precision or ("fp16" if device.type == "cuda" else "fp32")
    return torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and precision == "fp16")


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
