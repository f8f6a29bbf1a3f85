"""What a run writes never costs what was there (issue 33, items 10 and 12): no command writes over a shipped
model, by its name, through a link or beside another output; a full disk is one line on stderr and exit 2, with
the earlier files whole and no temporary file left."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from fer_cli.cli.app import app

from .synthetic import tiny_config

REPO = Path(__file__).resolve().parents[1]
TINY = ["--arch", "vgg", "--arch-option", "width=4", "--batch-size", "16", "--optimizer", "adamw", "--lr", "0.01",
        "--augment", "none", "--workers", "0", "--device", "cpu"]  # fmt: skip
full_disk = pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def shipped(tmp_path, monkeypatch) -> Path:
    """A copy of two shipped models with their SHA256SUMS, as $FER_WEIGHTS_DIR."""
    weights = tmp_path / "weights"
    weights.mkdir()
    listed = []
    for name in ("vgg32_ferplus.pt", "fast.onnx"):
        shutil.copyfile(REPO / "weights" / name, weights / name)
        listed.append(f"{digest(weights / name)}  {name}\n")
    (weights / "SHA256SUMS").write_text("".join(listed))
    monkeypatch.setenv("FER_WEIGHTS_DIR", str(weights))
    return weights


def test_no_command_writes_over_a_shipped_model(shipped, tiny_checkpoint, tiny_dataset, image_folder, tmp_path):
    before = {path.name: digest(path) for path in shipped.iterdir()}
    (tmp_path / "link.pt").symlink_to(shipped / "vgg32_ferplus.pt")
    (tmp_path / "mine.last.pt").symlink_to(shipped / "vgg32_ferplus.pt")  # beside train's --out
    val = tiny_dataset / "val"
    attempts = [
        ("calibrate", tiny_checkpoint, val, "-o", shipped / "vgg32_ferplus.pt", "-j", 0),
        ("calibrate", tiny_checkpoint, val, "-o", tmp_path / "link.pt", "-j", 0),
        ("calibrate", tmp_path / "link.pt", val, "-j", 0),  # in place, through the link
        ("export", tiny_checkpoint, shipped / "fast.onnx"),
        ("train", tiny_dataset, "--out", shipped / "vgg32_ferplus.pt", "--epochs", 1, *TINY),
        ("train", tiny_dataset, "--out", tmp_path / "mine.pt", "--epochs", 1, *TINY),
        ("predict", image_folder, "-m", tiny_checkpoint, "-o", shipped / "fast.onnx", "-f", "json", "-j", 0),
        ("ensemble", image_folder, "-m", tiny_checkpoint, "-o", tmp_path / "link.pt", "-f", "json", "-j", 0),
    ]
    for attempt in attempts:
        done = invoke(*attempt)
        assert done.exit_code == 2, (attempt, done.output)
        assert "is a shipped model" in done.stderr and "Traceback" not in done.output
        assert {path.name: digest(path) for path in shipped.iterdir()} == before, attempt


@full_disk
def test_results_to_a_full_disk_keep_the_earlier_file(tiny_checkpoint, image_folder, tmp_path, monkeypatch):
    from fer_cli.outputs import destination

    monkeypatch.setattr(destination, "open", lambda path, mode, **kw: open("/dev/full", mode, **kw), raising=False)
    for name in ("out.jsonl", "out.json", "out.csv", "out.txt"):
        earlier = tmp_path / name
        earlier.write_text("keep\n")
        done = invoke("predict", image_folder, "-m", tiny_checkpoint, "-o", earlier, "-j", 0, "-b", 1)
        assert done.exit_code == 2, done.output
        assert done.stderr.strip().splitlines()[-1] == f"error: cannot write {earlier}: No space left on device"
        assert "Traceback" not in done.output
        assert earlier.read_text() == "keep\n"
        assert not list(tmp_path.glob(f".{name}.*"))


@pytest.fixture
def a_run(tiny_dataset, tmp_path) -> Path:
    """One epoch of a run, to be resumed onto a full disk."""
    from fer_cli.engine.train.run import train

    out = tmp_path / "run" / "m.pt"
    train(tiny_config(tiny_dataset, out, epochs=1))
    return out


def _torch_finds_the_disk_full(monkeypatch):
    import torch

    def short_write(*args, **kwargs):  # what torch.save raised when the disk filled under it
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 33728 vs 33624")

    monkeypatch.setattr(torch, "save", short_write)


def _matplotlib_finds_the_disk_full(monkeypatch):
    from fer_cli.outputs import figures

    real = figures.FigureCanvasAgg.print_png
    monkeypatch.setattr(figures.FigureCanvasAgg, "print_png", lambda self, path, **kw: real(self, "/dev/full", **kw))


@full_disk
@pytest.mark.parametrize("full", [_torch_finds_the_disk_full, _matplotlib_finds_the_disk_full])
def test_training_onto_a_full_disk_keeps_the_earlier_files(a_run, monkeypatch, full):
    files = sorted(a_run.parent.iterdir())
    before = {path: path.read_bytes() for path in files}
    full(monkeypatch)
    done = invoke("train", "--resume", "--out", a_run, "--epochs", 2)
    assert done.exit_code == 2, done.output
    assert "Traceback" not in done.output and "unexpected pos" not in done.output
    assert done.stderr.strip().splitlines()[-1].startswith(f"error: cannot write {a_run.parent}")
    assert sorted(a_run.parent.iterdir()) == files  # no temporary file left
    for path, content in before.items():  # the checkpoints as they were; the history and curves whole
        if path.suffix == ".pt" or full is _matplotlib_finds_the_disk_full and path.suffix == ".png":
            assert path.read_bytes() == content, path
    Image.open(a_run.with_name("m.curves.png")).load()
    assert a_run.with_name("m.history.csv").read_text().startswith("epoch,")


@full_disk
def test_an_export_onto_a_full_disk_keeps_the_earlier_file(tiny_checkpoint, tmp_path, monkeypatch):
    from fer_cli.models import exported

    def export_to_a_full_disk(checkpoint, out, **kwargs):
        with open("/dev/full", "wb") as stream:  # as onnx.save met it
            stream.write(b"\0" * 100_000)

    monkeypatch.setattr(exported, "export_checkpoint", export_to_a_full_disk)
    out = tmp_path / "m.onnx"
    out.write_bytes(b"earlier")
    done = invoke("export", tiny_checkpoint, out)
    assert done.exit_code == 2 and "Traceback" not in done.output, done.output
    assert done.stderr.strip() == f"error: cannot write {out}: No space left on device"
    assert out.read_bytes() == b"earlier" and sorted(tmp_path.iterdir()) == [out]


@full_disk
def test_a_report_onto_a_full_disk_is_one_line(tiny_checkpoint, image_folder, tmp_path, monkeypatch):
    _matplotlib_finds_the_disk_full(monkeypatch)
    done = invoke("predict", image_folder, "-m", tiny_checkpoint, "--report", tmp_path / "report", "-j", 0)
    assert done.exit_code == 2 and "Traceback" not in done.output, done.output
    assert done.stderr.strip().splitlines()[-1].startswith("error: cannot write")
    assert "No space left on device" in done.stderr
