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
