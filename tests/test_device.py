import pytest
import torch

from fer_cli.device import autocast, select_device
from fer_cli.errors import DeviceError


def test_auto_and_cpu():
    assert select_device("cpu") == torch.device("cpu")
    assert select_device("auto").type in ("cpu", "cuda", "mps")


def test_cuda_requests_without_cuda_are_errors(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceError, match="CUDA is not available"):
        select_device("cuda:0")
    assert select_device("auto").type in ("cpu", "mps")


def test_cuda_index_is_checked(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert select_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(DeviceError, match="has 2 CUDA device"):
        select_device("cuda:5")


def test_unknown_device_and_cpu_precision():
    with pytest.raises(DeviceError, match="unknown device 'tpu'"):
        select_device("tpu")
    with autocast(torch.device("cpu")):
        assert torch.ones(2).dtype == torch.float32


def test_precision_auto_follows_the_cpu_units(monkeypatch):
    from fer_cli import device as device_module
    from fer_cli.device import resolve_precision

    cpu = torch.device("cpu")
    monkeypatch.setattr(device_module, "cpu_has_bf16_units", lambda: True)
    assert resolve_precision("auto", cpu) == "bf16"
    assert resolve_precision("fp32", cpu) == "fp32"
    monkeypatch.setattr(device_module, "cpu_has_bf16_units", lambda: False)
    assert resolve_precision("auto", cpu) == "fp32"
    assert resolve_precision("bf16", cpu) == "bf16"  # asked for: runs, emulated (the log says it is slow)
    assert resolve_precision("auto", torch.device("cuda")) == "fp16"
    assert resolve_precision("bf16", torch.device("cuda")) == "bf16"
    with pytest.raises(DeviceError, match="unknown precision 'fp8'"):
        resolve_precision("fp8", cpu)
    with pytest.raises(DeviceError, match="not available on mps"):
        resolve_precision("bf16", torch.device("mps"))


def test_bf16_autocast_on_the_cpu_and_no_loss_scaling():
    from fer_cli.device import grad_scaler

    cpu = torch.device("cpu")
    layer = torch.nn.Linear(4, 2)
    with autocast(cpu, "bf16"):
        assert layer(torch.ones(1, 4)).dtype == torch.bfloat16
    with autocast(cpu, "fp32"):
        assert layer(torch.ones(1, 4)).dtype == torch.float32
    assert not grad_scaler(cpu, "bf16").is_enabled() and not grad_scaler(cpu, "fp32").is_enabled()


def test_the_cpu_units_are_asked_of_proc_cpuinfo_without_torch_probes(monkeypatch, tmp_path):
    from fer_cli import device as device_module

    for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        monkeypatch.delattr(torch.cpu, name, raising=False)
    flags = tmp_path / "cpuinfo"
    real_open = open
    monkeypatch.setattr(
        "builtins.open", lambda path, *a, **k: real_open(flags if path == "/proc/cpuinfo" else path, *a, **k)
    )
    flags.write_text("processor : 0\nflags : fpu sse avx2 avx512f amx_bf16 amx_tile\n")
    assert device_module.cpu_has_bf16_units()
    flags.write_text("processor : 0\nflags : fpu sse avx2\n")
    assert not device_module.cpu_has_bf16_units()
