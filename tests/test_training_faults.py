"""Faults while training: a run killed outright (SIGKILL) at random points, mid-epoch and
mid-checkpoint-write, then resumed, ends with every epoch in its history once and the same weights
as a run never interrupted; a full disk leaves the previous checkpoint as it was."""

from __future__ import annotations

import csv
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from fer_cli.cli.app import app
from fer_cli.models import checkpoint as checkpoint_module

REPO = Path(__file__).resolve().parents[1]
EPOCHS = 5


def train_args(data: Path, out: Path) -> list[str]:
    """The tiny run, as a user types it."""
    return [
        "train", str(data), "--out", str(out), "--arch", "vgg", "--arch-option", "width=4", "--epochs", str(EPOCHS),
        "--batch-size", "16", "--optimizer", "adamw", "--lr", "0.01", "--augment", "none", "--workers", "0",
        "--device", "cpu",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def uninterrupted(tiny_dataset, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("reference") / "model.pt"
    done = CliRunner().invoke(app, train_args(tiny_dataset, out))
    assert done.exit_code == 0, done.output
    return torch.load(out, weights_only=True)["state_dict"]


def _start(args: list[str], die_at_save: int | None = None) -> subprocess.Popen:
    """`fer train` in its own process; with ``die_at_save`` N, it kills itself halfway through its Nth checkpoint write."""
    script = textwrap.dedent(
        f"""
        import os, signal, sys
        import torch
        saves, real_save = [0], torch.save
        def save(obj, stream, *args, **kwargs):
            saves[0] += 1
            if saves[0] == {die_at_save or 0}:
                stream.write(b"PK\\x03\\x04" + b"half a checkpoint" * 100)
                stream.flush()
                os.kill(os.getpid(), signal.SIGKILL)
            return real_save(obj, stream, *args, **kwargs)
        torch.save = save
        from fer_cli.cli.app import main
        sys.argv = ["fer", *{args!r}]
        main()
        """
    )
    return subprocess.Popen(
        [sys.executable, "-c", script],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200"},
    )


def _kill_during_epoch(process: subprocess.Popen, epoch: int, delay: float) -> None:
    """SIGKILL once the log says epoch ``epoch - 1`` ended (or at once for the first), after ``delay`` seconds."""
    if epoch > 1:
        for line in process.stderr:
            if line.startswith(f"epoch {epoch - 1}/{EPOCHS}"):
                break
    time.sleep(delay)
    process.kill()
    process.wait(timeout=60)


def _finish(data: Path, out: Path) -> None:
    """What the user does after a crash: resume if there is a run to resume, else start it again."""
    args = train_args(data, out)
    resumable = out.with_name(out.stem + ".last.pt").exists()
    done = CliRunner().invoke(app, args + (["--resume"] if resumable else ["--overwrite"]))
    assert done.exit_code == 0, done.output


def _assert_as_if_never_interrupted(out: Path, reference: dict) -> None:
    with open(out.with_name(out.stem + ".history.csv")) as history:
        assert [int(row["epoch"]) for row in csv.DictReader(history)] == list(range(1, EPOCHS + 1))
    weights = torch.load(out, weights_only=True)["state_dict"]
    assert all(torch.equal(weights[name], reference[name]) for name in reference)
    assert not list(out.parent.glob(".*.tmp"))  # nothing left behind by the killed writer


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_killed_at_a_random_point_then_resumed(tiny_dataset, tmp_path, uninterrupted, seed):
    rng = random.Random(seed)
    out = tmp_path / "model.pt"
    process = _start(train_args(tiny_dataset, out))
    _kill_during_epoch(process, epoch=rng.randint(1, EPOCHS), delay=rng.uniform(0.0, 0.3))
    _finish(tiny_dataset, out)
    _assert_as_if_never_interrupted(out, uninterrupted)


# Saves per epoch: the best checkpoint (when the epoch improved) then the resume state; the 1st
# save is epoch 1's best, the 2nd its resume state, later ones depend on which epochs improve.
@pytest.mark.parametrize("save", [1, 2, 3, 6])
def test_killed_in_the_middle_of_writing_a_checkpoint_then_resumed(tiny_dataset, tmp_path, uninterrupted, save):
    out = tmp_path / "model.pt"
    process = _start(train_args(tiny_dataset, out), die_at_save=save)
    process.communicate(timeout=120)
    assert process.returncode == -signal.SIGKILL
    assert list(tmp_path.glob(".*.tmp"))  # it did die mid-write
    for written in (out, out.with_name("model.last.pt")):
        if written.exists():
            torch.load(written, weights_only=True)  # whatever has the real name is whole
    _finish(tiny_dataset, out)
    _assert_as_if_never_interrupted(out, uninterrupted)


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
def test_a_full_disk_leaves_the_previous_checkpoint_intact(tiny_dataset, tmp_path, monkeypatch):
    out, last = tmp_path / "model.pt", tmp_path / "model.last.pt"
    opened, before = [], {}

    def open_on_a_full_disk(path, mode="r", *args, **kwargs):  # the 4th checkpoint write finds the disk full
        opened.append(path)
        if len(opened) < 4 or "w" not in mode:
            return open(path, mode, *args, **kwargs)
        before.update({file: file.read_bytes() for file in (out, last)})
        return open("/dev/full", mode, *args, **kwargs)  # the kernel's own ENOSPC

    monkeypatch.setattr(checkpoint_module, "open", open_on_a_full_disk, raising=False)
    done = CliRunner().invoke(app, train_args(tiny_dataset, out))
    assert done.exit_code == 2, done.output
    assert "cannot write" in done.stderr and "No space left on device" in done.stderr
    assert "Traceback" not in done.output
    assert before and all(file.read_bytes() == content for file, content in before.items())
    torch.load(out, weights_only=True)
    torch.load(last, weights_only=True)
    assert not list(tmp_path.glob(".*.tmp"))
