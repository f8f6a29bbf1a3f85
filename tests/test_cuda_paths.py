"""The defects a GPU run found, caught on a machine without one.

* Data and labels held on the GPU: ``OnAccelerator`` is a CPU tensor that refuses ``.numpy()`` as
  a CUDA tensor does, until ``.cpu()`` is asked for. Training with everything "on the device"
  must never turn a device tensor into numpy.
* A run resumed on another device: a CPU run has no loss-scaler state and a GPU run has one; a
  resumed run continues on the device it is given, whichever way it moves, and says so.
* The caller's environment: FER_DEBUG changes how user errors end, so the suite controls it.
"""

import csv
import io

import pytest
import torch
from rich.console import Console

from fer_cli.cli.app import app
from fer_cli.engine.train import set_up as set_up_module
from fer_cli.engine.train.config import TrainConfig
from fer_cli.engine.train.data import _hold_out
from fer_cli.engine.train.resume import restore_scaler
from fer_cli.engine.train.run import train
from fer_cli.engine.train.run_files import history_path, last_path
from fer_cli.inputs.batches import InMemoryBatches
from fer_cli.inputs.data import LabelledTensors
from fer_cli.models.checkpoint import read_checkpoint, save_checkpoint

from .synthetic import interrupt_in_epoch, tiny_config


class OnAccelerator(torch.Tensor):
    """Computes on the CPU but, like a CUDA tensor, only becomes numpy after ``.cpu()``."""

    def numpy(self, *args, **kwargs):
        raise TypeError("can't convert cuda:0 device type tensor to numpy. Use Tensor.cpu() first.")

    def cpu(self, *args, **kwargs):
        return self.as_subclass(torch.Tensor)


def test_the_fake_behaves_like_a_device_tensor():
    labels = torch.tensor([1, 2]).as_subclass(OnAccelerator)
    with pytest.raises(TypeError, match="cuda:0 device type"):
        torch.cat([labels, labels]).numpy()
    assert torch.cat([labels, labels]).cpu().numpy().tolist() == [1, 2, 1, 2]


def test_training_with_data_and_labels_held_on_the_device(tiny_dataset, tmp_path, monkeypatch):
    real_init = InMemoryBatches.__init__

    def on_the_device(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        self.images, self.labels = self.images.as_subclass(OnAccelerator), self.labels.as_subclass(OnAccelerator)

    monkeypatch.setattr(InMemoryBatches, "__init__", on_the_device)
    out = tmp_path / "model.pt"
    best = train(tiny_config(tiny_dataset, out, epochs=2, balance="sampler"))
    assert best["epoch"] in (1, 2) and 0.0 <= best["accuracy"] <= 1.0
    assert read_checkpoint(out)["temperature"] > 0  # calibration ran on the device-held validation data too


def test_holding_out_validation_from_labels_on_the_device():
    labels = torch.arange(40) % 4
    data = LabelledTensors(
        torch.zeros(40, 1, 8, 8, dtype=torch.uint8), labels.as_subclass(OnAccelerator), list("abcd"), "x"
    )
    train_part, held = _hold_out(data, fraction=0.2, seed=0)
    assert len(held) == 8 and len(train_part) == 32


def _interrupted_run(tiny_dataset, out, monkeypatch):
    interrupt_in_epoch(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(tiny_dataset, out, epochs=4))
    return read_checkpoint(last_path(out))


def _resume(out, log: io.StringIO) -> dict:
    config = TrainConfig(data="", out=str(out), resume=True, workers=0, device="cpu")
    return train(config, log=Console(file=log, width=200))


def test_a_cpu_run_resumes_where_the_loss_is_scaled(tiny_dataset, tmp_path, monkeypatch):
    """Started on a CPU (no scaler state), resumed where AMP's scaler is on, as on a GPU."""
    out = tmp_path / "cpu-then-gpu.pt"
    state = _interrupted_run(tiny_dataset, out, monkeypatch)
    assert state["scaler"] == {} and state["device"] == "cpu"

    scalers = []
    monkeypatch.setattr(
        set_up_module,
        "grad_scaler",
        lambda device, precision=None: scalers.append(torch.amp.GradScaler("cpu")) or scalers[-1],
    )
    log = io.StringIO()
    _resume(out, log)
    assert scalers[0].is_enabled() and scalers[0].get_scale() > 0  # a fresh scale, not the empty CPU state
    assert "resuming" in log.getvalue() and "at epoch 3 of 4 on cpu" in log.getvalue()
    assert read_checkpoint(last_path(out))["epoch"] == 4


def test_a_gpu_run_resumes_on_the_cpu_and_says_so(tiny_dataset, tmp_path, monkeypatch):
    """The resume state a GPU run writes (its scaler's state, its device), continued on a CPU."""
    out = tmp_path / "gpu-then-cpu.pt"
    state = _interrupted_run(tiny_dataset, out, monkeypatch)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    scaler.scale(torch.ones((), requires_grad=True))  # the scale exists once something was scaled
    save_checkpoint(last_path(out), {**state, "scaler": scaler.state_dict(), "device": "cuda:0"})

    log = io.StringIO()
    _resume(out, log)
    assert "at epoch 3 of 4 on cpu (it ran on cuda:0 until now)" in log.getvalue()
    rows = list(csv.DictReader(history_path(out).read_text().splitlines()))
    assert [row["device"] for row in rows] == ["cpu"] * 4


def test_loss_scaler_state_is_restored_only_where_it_applies():
    on = torch.amp.GradScaler("cpu", init_scale=8.0)
    on.scale(torch.ones((), requires_grad=True))
    saved = on.state_dict()
    fresh = torch.amp.GradScaler("cpu", init_scale=2.0)
    restore_scaler(fresh, saved)
    assert fresh.get_scale() == 8.0
    restore_scaler(fresh_again := torch.amp.GradScaler("cpu", init_scale=2.0), {})  # from a run without scaling
    assert fresh_again.get_scale() == 2.0
    off = torch.amp.GradScaler("cpu", enabled=False)
    restore_scaler(off, saved)  # a GPU run continued without scaling
    assert not off.is_enabled()


def test_the_suite_sets_fer_debug_itself(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    runner = CliRunner()
    quiet = runner.invoke(app, ["predict", str(tmp_path), "--device", "tpu"])
    assert quiet.exit_code == 2 and "unknown device 'tpu'" in quiet.stderr
    monkeypatch.setenv("FER_DEBUG", "1")  # a developer's switch: the error is re-raised for its traceback
    loud = runner.invoke(app, ["predict", str(tmp_path), "--device", "tpu"])
    assert loud.exit_code == 1 and "unknown device" in str(loud.exception)
