"""`fer train` under torchrun: two CPU processes with gloo on a tiny synthetic set."""

import csv
import os
import subprocess
import sys

import pytest
import torch

from fer_cli.engine.train.run import train
from fer_cli.engine.train.run_files import last_path
from fer_cli.models.checkpoint import load_checkpoint_classifier, read_checkpoint
from fer_cli.models.zoo import load_classifier

from .synthetic import CLASSES, interrupt_in_epoch, tiny_config

TIMEOUT = 240


def torchrun(*args: str, processes: int = 2) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    return subprocess.run(
        [*command, "-m", "fer_cli", "train", *args], capture_output=True, text=True, timeout=TIMEOUT, env=env
    )


def train_args(data, out, epochs=3):
    return [
        str(data), "--out", str(out), "--arch", "vgg", "--arch-option", "width=4", "--epochs", str(epochs),
        "--batch-size", "8", "--optimizer", "adamw", "--lr", "0.01", "--augment", "none", "--schedule", "none",
        "--workers", "0", "--device", "cpu",
    ]  # fmt: skip


def history(out) -> list[dict]:
    with open(out.with_name(out.stem + ".history.csv")) as handle:
        return list(csv.DictReader(handle))


def test_two_gloo_processes_train_one_model_and_write_it_once(tiny_dataset, tmp_path):
    out = tmp_path / "ddp.pt"
    result = torchrun(*train_args(tiny_dataset, out))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "x 2 processes (gloo)" in result.stderr
    assert "all 2 processes hold the same weights" in result.stderr  # both ranks agree, checked by the run itself
    assert result.stderr.count("best val accuracy") == 1  # only rank 0 logs
    classifier = load_classifier(out)
    assert classifier.class_names == CLASSES and classifier.provenance["processes"] == 2
    assert classifier.metrics["count"] == len(CLASSES) * 8  # validation gathered from both ranks: every image once
    assert [row["epoch"] for row in history(out)] == ["1", "2", "3"]
    assert classifier.metrics["accuracy"] > 0.8


def test_a_run_interrupted_in_one_process_resumes_under_torchrun(tiny_dataset, tmp_path, monkeypatch):
    out = tmp_path / "resumed.pt"
    interrupt_in_epoch(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(tiny_dataset, out, epochs=3, schedule="none"))
    assert read_checkpoint(last_path(out))["epoch"] == 2

    result = torchrun("--resume", "--out", str(out), "--device", "cpu", "--workers", "0")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming" in result.stderr and "all 2 processes hold the same weights" in result.stderr
    assert [row["epoch"] for row in history(out)] == ["1", "2", "3"]
    assert read_checkpoint(last_path(out))["epoch"] == 3
    assert all(torch.isfinite(p).all() for p in load_checkpoint_classifier(out).runner.model.parameters())
