"""Issue 33's rough edges (a newcomer's and a hostile run): what reaches stderr, what the summary counts, what help
and errors say. One test per behaviour; tiny synthetic data made here."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from fer_cli.cli.app import app

from .synthetic import synthetic_face

REPO = Path(__file__).resolve().parents[1]
SUMMARY = re.compile(r"in ([\d.]+)s \(([\d.]+)s starting up(, then [\d.,]+ images/s)?\)")


def invoke(*args, **env):
    return CliRunner(env=env or None).invoke(app, [str(a) for a in args])


def damaged_tiff(path: Path) -> Path:
    """An LZW TIFF with 64 bytes of its compressed strip inverted (its header and directory whole): libtiff's own
    handlers print "Using code not yet in table." on stderr when decoding it."""
    pixels = np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)
    Image.fromarray(pixels).save(path, compression="tiff_lzw")
    data = bytearray(path.read_bytes())
    for at in range(len(data) // 2, len(data) // 2 + 64):
        data[at] ^= 0xFF
    path.write_bytes(bytes(data))
    return path


def fer_alone(tmp_path: Path, home: Path, *args, cache: Path | None = None) -> subprocess.CompletedProcess:
    """fer in its own process, as a user starts it: no setting of the suite's or the caller's that changes what it
    prints (onnxruntime's telemetry switch included: fer_cli sets it in this process when imported)."""
    dropped = ("ORT_DISABLE_TELEMETRY", "XDG_CACHE_HOME", "XDG_CONFIG_HOME", "MPLCONFIGDIR", "FER_DEBUG")
    env = {k: v for k, v in os.environ.items() if k not in dropped}
    env.update(HOME=str(home), PYTHONPATH=str(REPO), FER_CACHE_DIR=str(cache or tmp_path / "cache"), COLUMNS="200")
    command = [sys.executable, "-m", "fer_cli", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)


def test_a_first_run_prints_only_fers_own_lines_and_counts_the_export_as_start_up(tmp_path, tiny_checkpoint):
    Image.fromarray(synthetic_face(0, 1)).save(tmp_path / "face.png")
    damaged_tiff(tmp_path / "damaged.tif")
    home = tmp_path / "home"
    home.mkdir()
    done = fer_alone(
        tmp_path, home, "predict", "face.png", "damaged.tif", "-m", tiny_checkpoint, "-f", "jsonl", "-j", 0
    )
    assert done.returncode == 1, done.stderr  # the damaged TIFF is an input that could not be read
    lines = [line for line in done.stderr.splitlines() if line]
    assert lines[0].startswith("note: exporting tiny.pt to ONNX"), done.stderr
    assert lines[1].startswith("skipped damaged.tif"), done.stderr  # libtiff's own complaint is not beside it
    assert lines[2].startswith("1 of 2 inputs predicted") and lines[3] == "1 input could not be read", done.stderr
    assert len(lines) == 4 and "\x1b" not in done.stderr, done.stderr  # no warnings, no exporter logs, no colours
    seconds, starting, rate = SUMMARY.search(lines[2]).groups()
    assert rate and float(starting) > float(seconds) / 2, lines[2]  # the export is start-up, not predicting
    assert not (home / ".cache" / "Microsoft").exists()  # onnxruntime's telemetry is off: no device id, no event


def test_a_read_only_home_gets_no_telemetry_warning(tmp_path, tiny_checkpoint):
    blocked = tmp_path / "file"
    blocked.write_text("")
    Image.fromarray(synthetic_face(0, 1)).save(tmp_path / "face.png")
    suite_cache = Path(os.environ["FER_CACHE_DIR"])  # (tiny.pt's ONNX form made once for the suite)
    done = fer_alone(
        tmp_path,
        blocked / "home",
        "predict",
        "face.png",
        "-m",
        tiny_checkpoint,
        "-f",
        "jsonl",
        "-j",
        0,
        cache=suite_cache,
    )
    assert done.returncode == 0, done.stderr
    assert "telemetry" not in done.stderr and "\x1b" not in done.stderr, done.stderr


def test_no_rate_is_given_when_nothing_was_predicted(tmp_path, tiny_checkpoint):
    (tmp_path / "broken.png").write_bytes(b"not an image")
    done = invoke("predict", tmp_path / "broken.png", "-m", tiny_checkpoint, "-f", "jsonl", "-j", 0)
    assert done.exit_code == 1
    summary = next(line for line in done.stderr.splitlines() if "predicted" in line)
    assert summary.startswith("0 of 1 input predicted") and "/s" not in summary, summary


def test_macro_f1_averages_the_classes_present_as_balanced_accuracy_does():
    from sklearn.metrics import f1_score

    from fer_cli.engine.metrics import summarize

    classes = ["angry", "contempt", "happy", "sad"]  # no image is contempt
    labels = np.array([0, 0, 2, 2, 2, 3, 3, 3])
    predicted = np.array([0, 1, 2, 2, 3, 3, 3, 0])  # one answer is contempt: an error of the angry image
    metrics = summarize(labels, np.eye(len(classes))[predicted], classes)
    present = [0, 2, 3]
    assert metrics["macro_f1"] == pytest.approx(f1_score(labels, predicted, labels=present, average="macro"))
    assert metrics["balanced_accuracy"] == pytest.approx(np.mean([1 / 2, 2 / 3, 2 / 3]))  # recalls of the three
    assert metrics["macro_f1"] > f1_score(labels, predicted, labels=range(4), average="macro", zero_division=0)


def test_a_long_path_folds_after_its_separators_never_within_a_name():
    from fer_cli.outputs.results import Prediction, TableWriter, fold_path

    names = ["photos_of_the_summer_2026", "a_family_holiday_by_the_sea", "portrait_of_grandmother_smiling.jpg"]
    path = "/".join(names)
    probabilities = {"happy": 0.9, "sad": 0.1}
    for width in (100, 80, 60):
        stream = io.StringIO()
        writer = TableWriter(stream, ["happy", "sad"], width=width)
        writer.write_batch([Prediction(path, 0, 1, (0, 0, 48, 48), None, "happy", 0.9, probabilities)])
        writer.close()
        lines = stream.getvalue().splitlines()
        assert max(map(len, lines)) <= width
        cells = [line.split("│")[1].strip() for line in lines if line.startswith("│")]
        assert "".join(cells) == path and cells == [f"{n}/" for n in names[:-1]] + [names[-1]], cells
        assert "90.0%" in stream.getvalue()
    assert fold_path("a/bcdefgh/ij", 4) == "a/\nbcde\nfgh/\nij"  # a name longer than the width is cut, last resort
    assert fold_path("short/path.png", 40) == "short/path.png"


def test_help_names_arguments_by_their_metavar_alone_and_channels_is_a_choice():
    for command in ("predict", "ensemble", "train", "calibrate", "export", "models", "serve"):
        text = invoke(command, "--help", COLUMNS="100").stdout
        assert not re.search(r"<(str|int|float|path|list\[\w+\])>", text), (command, text)
    train = invoke("train", "--help", COLUMNS="100").stdout
    assert re.search(r"^  \[?DATA\]?\s+Labelled folder", train, re.M) and "--channels 1|3" in train
    assert "<=x<=3" not in train
    refused = invoke("train", "data", "--channels", "2")
    assert refused.exit_code == 2 and "'2' is not one of '1', '3'" in refused.stderr


def test_a_finished_run_says_it_keeps_its_resume_state_and_its_size(tiny_dataset, tmp_path):
    out = tmp_path / "m.pt"
    done = invoke("train", tiny_dataset, "--arch", "vgg", "--arch-option", "width=4", "--epochs", 1, "--out", out,
                  "-j", 0, "--device", "cpu")  # fmt: skip
    assert done.exit_code == 0, done.stderr
    last = tmp_path / "m.last.pt"
    assert last.exists()  # kept: --resume --epochs N extends a finished run
    said = " ".join(done.stderr.split())
    assert f"{last} ({last.stat().st_size / 1e6:,.1f} MB) kept: --resume --epochs N extends the run" in said


def test_scoring_a_labelled_folder_shows_a_status_line_on_a_terminal(tiny_checkpoint, labelled_dir, monkeypatch):
    from rich.console import Console

    from fer_cli.cli import console

    terminal = io.StringIO()
    monkeypatch.setenv("TERM", "xterm")  # (the suite's TERM=dumb would keep rich from drawing it)
    monkeypatch.setattr(
        console, "err_console", Console(file=terminal, force_terminal=True, force_interactive=True, width=200)
    )
    done = invoke("ensemble", labelled_dir, "-m", tiny_checkpoint, "-f", "json", "-j", 0)
    assert done.exit_code == 0, done.output
    shown = " ".join(terminal.getvalue().split())
    assert f"scoring 1 model on {labelled_dir}" in shown  # the spinner's line, while exports and scoring run
    assert "scoring 1 model on" not in done.stderr  # not on a pipe or in a log


def test_calibrate_names_the_argument_as_its_usage_line_does(labelled_dir):
    done = invoke("calibrate", "vgg32_ferplus", labelled_dir)  # a shipped model, no --out: refused before any work
    assert done.exit_code == 2
    assert "calibrate [OPTIONS] NAME|FILE FOLDER" in done.stderr  # (CliRunner names the program "root")
    assert "Invalid value for NAME|FILE: vgg32_ferplus is a shipped model" in done.stderr and "MODEL" not in done.stderr
