"""Outputs are checked before any work (issue 25): an unwritable place is one line and exit 2 at once, never found
after an epoch or a whole run; outputs never replace inputs or each other; --resume says what it ignores and can
extend a run; a diverged run is not saved as the best."""

from __future__ import annotations

import csv
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from fer_cli.cli.app import app
from fer_cli.engine.train.run import train
from fer_cli.engine.train.run_files import history_path, last_path
from fer_cli.models.checkpoint import read_checkpoint

from .synthetic import tiny_config

TINY = ["--arch", "vgg", "--arch-option", "width=4", "--batch-size", "16", "--optimizer", "adamw", "--lr", "0.01",
        "--augment", "none", "--workers", "0", "--device", "cpu"]  # fmt: skip


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture
def a_file(tmp_path) -> Path:
    """A plain file where a folder is wanted: unwritable for everyone, root included."""
    path = tmp_path / "taken"
    path.write_text("not a folder")
    return path


def test_train_into_an_unwritable_place_fails_before_any_work(tiny_dataset, a_file, monkeypatch):
    from fer_cli.engine.train import set_up as set_up_module

    monkeypatch.setattr(set_up_module, "load_training_data", lambda *a: pytest.fail("decoded the data first"))
    done = invoke("train", tiny_dataset, "--out", a_file / "m.pt", "--epochs", "1", *TINY)
    assert done.exit_code == 2 and "cannot write to" in done.stderr and "Traceback" not in done.output
    done = invoke(
        "train", tiny_dataset, "--out", a_file.parent / "m.pt", "--tensorboard", a_file, "--epochs", "1", *TINY
    )
    assert done.exit_code == 2 and "cannot write TensorBoard events" in done.stderr


def test_two_runs_never_mix_in_one_tensorboard_folder(tiny_dataset, tmp_path):
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    board = tmp_path / "tb"
    first = invoke("train", tiny_dataset, "--out", tmp_path / "a.pt", "--tensorboard", board, "--epochs", "1", *TINY)
    assert first.exit_code == 0, first.output
    events = sorted(board.glob("events.out.tfevents.*"))
    done = invoke("train", tiny_dataset, "--out", tmp_path / "b.pt", "--tensorboard", board, "--epochs", "1", *TINY)
    assert done.exit_code == 2 and "earlier run's TensorBoard events" in done.stderr
    again = invoke("train", tiny_dataset, "--out", tmp_path / "a.pt", "--tensorboard", board, "--epochs", "1",
                   "--overwrite", *TINY)  # fmt: skip
    assert again.exit_code == 0 and not any(path.exists() for path in events)


def test_an_unusable_teacher_cache_is_a_warning_and_a_corrupt_entry_is_computed_again(tiny_dataset, tiny_checkpoint,
                                                                                      tmp_path, a_file):  # fmt: skip
    from rich.console import Console

    log = Console(stderr=True, width=300, record=True)
    settings = dict(teachers=(str(tiny_checkpoint),), epochs=1)
    train(tiny_config(tiny_dataset, tmp_path / "a.pt", teacher_cache=str(a_file), **settings), log)
    assert "could not be cached" in log.export_text()
    cache = tmp_path / "cache"
    train(tiny_config(tiny_dataset, tmp_path / "b.pt", teacher_cache=str(cache), **settings), log)
    (entry,) = cache.glob("teachers-*.pt")
    entry.write_bytes(entry.read_bytes()[:100])  # cut short
    log = Console(stderr=True, width=300, record=True)
    train(tiny_config(tiny_dataset, tmp_path / "c.pt", teacher_cache=str(cache), **settings), log)
    said = log.export_text()
    assert f"{entry}" in said and "not usable" in said and "cached in" in said
    assert torch.load(entry, weights_only=True)["logits"].shape[1] == 72  # written whole again


def test_export_checks_its_destination_first_and_leaves_nothing_when_it_fails(tiny_checkpoint, tmp_path, a_file,
                                                                               monkeypatch):  # fmt: skip
    pytest.importorskip("onnx", reason="the onnx extra is not installed")
    done = invoke("export", tiny_checkpoint, a_file / "m.onnx")
    assert done.exit_code == 2 and "cannot write to" in done.stderr
    from fer_cli.engine import ensemble

    def broken(*args, **kwargs):
        raise OSError("the validation folder went away")

    monkeypatch.setattr(ensemble, "score_model", broken)
    out = tmp_path / "m.onnx"
    done = invoke("export", tiny_checkpoint, out, "--val", tmp_path)
    assert done.exit_code != 0 and not out.exists() and not list(tmp_path.glob(".m.*"))


def test_outputs_never_replace_inputs_or_each_other(labelled_dir, tiny_checkpoint, tmp_path):
    image = labelled_dir / "calm" / "calm_0.png"
    before = image.read_bytes()
    done = invoke("predict", labelled_dir, "-m", tiny_checkpoint, "-f", "csv", "-o", image, "-j", 0)
    assert done.exit_code == 2 and "is one of the inputs" in done.stderr and image.read_bytes() == before
    report = tmp_path / "rep"
    done = invoke("predict", labelled_dir, "-m", tiny_checkpoint, "-o", report / "report.json", "--report", report)
    assert done.exit_code == 2 and "a file --report writes" in done.stderr
    done = invoke("ensemble", labelled_dir, "-m", tiny_checkpoint, "-o", report / "report.json", "--report", report)
    assert done.exit_code == 2 and "a file --report writes" in done.stderr
    (tmp_path / "rep2" / "index.html").mkdir(parents=True)  # a folder where the report writes a file
    done = invoke("predict", labelled_dir, "-m", tiny_checkpoint, "--report", tmp_path / "rep2", "-j", 0)
    assert done.exit_code == 2 and "index.html in it is a folder" in done.stderr and done.stdout == ""


def test_resume_says_what_it_ignores_extends_epochs_and_needs_no_init_file(tiny_dataset, tiny_checkpoint, tmp_path,
                                                                           monkeypatch):  # fmt: skip
    from .synthetic import interrupt_in_epoch

    init = tmp_path / "init.pt"
    shutil.copyfile(tiny_checkpoint, init)
    out = tmp_path / "m.pt"
    interrupt_in_epoch(monkeypatch, 2)
    monkeypatch.setattr(sys, "argv", ["fer", "train", "DATA", "--first"])  # what the checkpoint records as its command
    done = invoke("train", tiny_dataset, "--out", out, "--init", init, "--epochs", "2", *TINY)
    assert done.exit_code == 130
    init.unlink()  # the run started from it; resuming needs it no more
    other = tmp_path / "other.pt"
    monkeypatch.setattr(sys, "argv", ["fer", "train", "--resume", "--second"])
    done = invoke("train", "--resume", "--out", out, "--epochs", "4", "--lr", "0.5", "--init", other, "-j", "0")
    assert done.exit_code == 0, done.output
    assert "extending the run from 2 to 4 epochs" in done.stderr
    assert "ignored: --init, --lr" in done.stderr
    with open(history_path(out)) as handle:
        assert [row["epoch"] for row in csv.DictReader(handle)] == ["1", "2", "3", "4"]
    assert read_checkpoint(out)["provenance"]["initialised_from"]["path"] == str(init)
    assert read_checkpoint(last_path(out))["config"]["epochs"] == 4
    # the command that started the run stays its command (whichever epoch was best), then those that resumed it
    assert read_checkpoint(out)["provenance"]["command"] == "fer train DATA --first"
    assert read_checkpoint(last_path(out))["commands"] == ["fer train DATA --first", "fer train --resume --second"]


def test_a_diverged_run_is_stopped_and_never_saved_as_the_best(tiny_dataset, tmp_path):
    out = tmp_path / "m.pt"
    args = [a for a in TINY if a not in ("--lr", "0.01")]
    done = invoke("train", tiny_dataset, "--out", out, "--epochs", "2", "--lr", "1e12", *args)
    assert done.exit_code == 2 and "training diverged at epoch 1" in done.stderr and "Traceback" not in done.output
    assert not out.exists()


def test_a_model_that_gives_nan_writes_an_error_never_nan(tiny_checkpoint, image_folder, tmp_path):
    from fer_cli.models.checkpoint import save_checkpoint

    checkpoint = read_checkpoint(tiny_checkpoint)
    checkpoint["state_dict"] = {k: v.float() * float("nan") if v.is_floating_point() else v
                                for k, v in checkpoint["state_dict"].items()}  # fmt: skip
    broken = tmp_path / "nan.pt"
    save_checkpoint(broken, checkpoint)
    for fmt in ("json", "jsonl"):
        done = invoke("predict", image_folder, "-m", broken, "-f", fmt, "-j", 0)
        assert done.exit_code == 1 and "diverged" in done.stderr

        def strict(text):  # NaN and Infinity are not JSON
            return json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in the output"))

        records = strict(done.stdout) if fmt == "json" else [strict(x) for x in done.stdout.splitlines()]
        assert all(r["label"] is None and "no usable probabilities" in r["error"] for r in records)
