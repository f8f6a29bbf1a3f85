"""The smaller faults a hostile run found (issue 25, item 11), one test each."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fer_cli.cli.app import app
from fer_cli.models.checkpoint import read_checkpoint, save_checkpoint

REPO = Path(__file__).resolve().parents[1]


def invoke(*args, **env):
    return CliRunner(env=env or None).invoke(app, [str(a) for a in args])


def test_a_narrow_terminal_keeps_the_confidence_whole(image_folder, tiny_checkpoint):
    done = invoke("predict", image_folder, "-m", tiny_checkpoint, "-f", "table", "-j", 0, COLUMNS="40")
    lines = done.stdout.splitlines()
    assert all(len(line) <= 40 for line in lines)
    assert any(line.rstrip("│").rstrip().endswith("%") for line in lines if "of 1" in line)  # "94.7%", not "94"


def test_one_unreadable_file_among_the_weights_is_left_out_with_a_note(tiny_checkpoint, tmp_path, image_folder):
    weights = tmp_path / "weights"
    weights.mkdir()
    shutil.copyfile(tiny_checkpoint, weights / "tiny.pt")
    (weights / "broken.pt").write_bytes(b"not a checkpoint")
    for args in (("predict", image_folder, "-j", 0, "-f", "jsonl"), ("models",)):
        done = invoke(*args, FER_WEIGHTS_DIR=str(weights))
        assert done.exit_code == 0, done.output
        assert "left out" in done.stderr and "broken.pt" in done.stderr


def test_an_input_size_out_of_range_is_refused_before_decoding(tiny_dataset, tmp_path):
    for side, bound in (("8", "16"), ("300", "256")):
        done = invoke("train", tiny_dataset, "--arch", "vgg", "--size", side, "--out", tmp_path / "m.pt", "-j", 0)
        assert done.exit_code == 2 and "--size" in done.stderr and bound in done.stderr, done.stderr
        assert "decoding" not in done.stderr


def test_an_unwritable_home_prints_no_matplotlib_warning(tmp_path):
    script = "from fer_cli.outputs import figures; figures.label_counts(['a', 'b'], [1, 2], 't')"
    env = {k: v for k, v in os.environ.items() if k not in ("MPLCONFIGDIR", "XDG_CONFIG_HOME", "XDG_CACHE_HOME")}
    blocked = tmp_path / "file"
    blocked.write_text("")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO,
                          env={**env, "HOME": str(blocked / "home"), "PYTHONPATH": str(REPO)})  # fmt: skip
    assert done.returncode == 0 and done.stderr == "", done.stderr


def test_a_bad_host_is_the_hosts_fault(tiny_checkpoint):
    pytest.importorskip("uvicorn", reason="the serve extra is not installed")
    done = invoke("serve", "--host", "no such host!", "-m", tiny_checkpoint)
    assert done.exit_code == 2 and "--host" in done.output and "--port" not in done.output


def test_init_with_a_folder_says_it_takes_a_model(tiny_dataset, tmp_path):
    done = invoke("train", tiny_dataset, "--init", tiny_dataset, "--out", tmp_path / "m.pt", "-j", 0)
    assert done.exit_code == 2 and "is a folder; it takes a model" in done.stderr


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda c: c.update(class_names=["calm", "calm", "smile"]), "a class is named twice (calm)"),
        (lambda c: c.update(temperature=0.0), "temperature 0.0"),
        (lambda c: c["preprocess"].update(std=[0.0]), "normalisation std"),
        (lambda c: c.update(class_prior=[1.0]), "class prior does not fit"),
    ],
)
def test_a_damaged_checkpoint_is_refused_not_loaded_quietly(tiny_checkpoint, tmp_path, image_folder, damage, message):
    checkpoint = read_checkpoint(tiny_checkpoint)
    checkpoint = {**checkpoint, "preprocess": dict(checkpoint["preprocess"])}
    damage(checkpoint)
    path = tmp_path / "damaged.pt"
    save_checkpoint(path, checkpoint)
    done = invoke("predict", image_folder, "-m", path, "-j", 0)
    assert done.exit_code == 2 and message in done.stderr and "Traceback" not in done.output


def test_validating_on_the_training_data_is_warned(tiny_dataset, tmp_path):
    done = invoke("train", tiny_dataset / "train", "--val", tiny_dataset / "train", "--out", tmp_path / "m.pt",
                  "--epochs", "1", "--arch-option", "width=4", "-j", 0)  # fmt: skip
    assert done.exit_code == 0 and "is the training data" in done.stderr


def test_validation_paths_are_recorded_absolute(tiny_dataset, tmp_path, monkeypatch):
    monkeypatch.chdir(tiny_dataset)
    done = invoke("train", "train", "--val", "val", "--out", tmp_path / "m.pt", "--epochs", "1",
                  "--arch-option", "width=4", "-j", 0)  # fmt: skip
    assert done.exit_code == 0, done.output
    assert read_checkpoint(tmp_path / "m.pt")["provenance"]["val_path"] == str(tiny_dataset / "val")


@pytest.mark.skipif(sys.platform != "linux", reason="file names as raw bytes: Linux")
def test_a_name_that_is_not_utf8_comes_back_byte_for_byte(tiny_checkpoint, tmp_path):
    """JSON writes its undecodable bytes as \\udcXX (Python's surrogateescape: os.fsencode gives the bytes back), CSV
    its own bytes (as `ls > file` does); neither crashes (CSV to a file once did)."""
    import csv
    import json

    from PIL import Image

    from .synthetic import synthetic_face

    name = os.fsencode(str(tmp_path)) + b"/caf\xe9.png"
    Image.fromarray(synthetic_face(0, 1)).save(os.fsdecode(name))
    out = tmp_path / "out"
    for fmt in ("csv", "json", "jsonl"):
        done = invoke("predict", os.fsdecode(name), "-m", tiny_checkpoint, "-j", 0, "-o", out.with_suffix(f".{fmt}"))
        assert done.exit_code == 0, done.output
    with open(out.with_suffix(".csv"), newline="", encoding="utf-8", errors="surrogateescape") as handle:
        assert os.fsencode(next(csv.DictReader(handle))["path"]) == name
    assert os.fsencode(json.loads(out.with_suffix(".json").read_text())[0]["path"]) == name
    assert os.fsencode(json.loads(out.with_suffix(".jsonl").read_text())["path"]) == name
