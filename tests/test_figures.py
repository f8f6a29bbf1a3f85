"""The pictures: training curves every epoch, TensorBoard, and the --report folders of ensemble and
predict. Files are checked as files (valid PNG and HTML, not blank), and the numbers a picture
shows (kept in its PNG metadata) against the JSON report they were drawn from."""

import json
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
from fer_cli.engine.metrics import coverage, expected_calibration_error, reliability
from fer_cli.engine.train.curves import CurvesPainter
from fer_cli.engine.train.run import train
from fer_cli.engine.train.run_files import curves_path, history_path
from fer_cli.outputs import figures

from .synthetic import CLASSES, tiny_config

ROOT = Path(__file__).resolve().parents[1]


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args], prog_name="fer")


def picture(path: Path) -> np.ndarray:
    """The PNG's pixels, after checking that it is a whole PNG and shows something."""
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.verify()
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("L"), dtype=np.float64)
    assert pixels.shape[0] > 100 and pixels.shape[1] > 100
    assert pixels.std() > 3, f"{path.name} is blank"  # text alone on white is ~9
    return pixels


def drawn_numbers(path: Path):
    """The numbers a figure was drawn from (save_png keeps them in the PNG's Description)."""
    with Image.open(path) as image:
        return json.loads(image.text["Description"])


# --- metrics the figures are drawn from ------------------------------------------------------------


def test_reliability_bins_make_the_ece_and_coverage_keeps_the_most_confident():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.full(4, 0.4), size=400)
    labels = np.where(rng.random(400) < 0.6, probs.argmax(1), rng.integers(0, 4, 400))
    bins = reliability(labels, probs)
    assert sum(b["count"] for b in bins) == 400
    ece = sum(b["count"] / 400 * abs(b["accuracy"] - b["confidence"]) for b in bins)
    assert ece == pytest.approx(expected_calibration_error(labels, probs))
    curve = coverage(labels, probs, points=10)
    assert [p["images"] for p in curve] == list(range(40, 401, 40))
    assert curve[-1]["accuracy"] == pytest.approx((probs.argmax(1) == labels).mean())
    assert all(a["threshold"] >= b["threshold"] for a, b in zip(curve, curve[1:]))
    confident = probs.max(1) >= curve[0]["threshold"]
    assert confident.sum() == 40 and curve[0]["accuracy"] == (probs.argmax(1) == labels)[confident].mean()


def test_the_heat_map_cells_are_the_confusion_matrix():
    matrix = [[8, 1, 0], [2, 5, 1], [0, 0, 0]]  # an empty class too
    figure = figures.confusion_heatmap(matrix, CLASSES, "t")
    ax = figure.axes[0]
    shares = np.asarray(ax.images[0].get_array())
    np.testing.assert_allclose(shares, [[8 / 9, 1 / 9, 0], [0.25, 0.625, 0.125], [0, 0, 0]])
    texts = [t.get_text() for t in ax.texts]
    assert texts[1::2] == [str(v) for row in matrix for v in row]  # each cell's count under its share
    assert texts[0::2][:3] == ["89%", "11%", "0%"]


def test_figures_need_no_display_and_never_touch_pyplot(tmp_path):
    """Drawn with a display set and an interactive backend asked for: nothing opens, pyplot stays out."""
    code = (
        "import sys; from fer_cli.outputs import figures; "
        "figures.save_png(figures.confusion_heatmap([[1, 0], [0, 1]], ['a', 'b'], 't'), sys.argv[1]); "
        "assert 'matplotlib.pyplot' not in sys.modules"
    )
    env = {**os.environ, "DISPLAY": ":99", "MPLBACKEND": "TkAgg", "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "x.png")], check=True, env=env, timeout=120)
    picture(tmp_path / "x.png")


# --- fer train -----------------------------------------------------------------------------------


def test_training_redraws_the_curves_after_every_epoch(tiny_dataset, tmp_path, monkeypatch):
    out = tmp_path / "model.pt"
    drawn = []
    real = figures.draw_training_curves

    def spy(history, path, title=""):
        real(history, path, title)
        drawn.append(([row["epoch"] for row in history], picture(Path(path)).shape))

    monkeypatch.setattr(figures, "draw_training_curves", spy)
    train(tiny_config(tiny_dataset, out, epochs=3))
    assert [epochs for epochs, _ in drawn] == [[1], [1, 2], [1, 2, 3]]  # redrawn whole, each epoch
    assert curves_path(out).name == "model.curves.png" and curves_path(out).parent == history_path(out).parent
    picture(curves_path(out))
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically: no temporary left


def test_on_a_gpu_the_curves_are_drawn_in_a_helper_process(tmp_path):
    history = [
        {"epoch": e, "train_loss": 1 / e, "val_loss": 1.2 / e, "train_accuracy": 0.5 + e / 20,
         "val_accuracy": 0.4 + e / 25, "lr": 0.01 / e, "best": e == 3}
        for e in range(1, 6)
    ]  # fmt: skip
    path = tmp_path / "m.curves.png"
    painter = CurvesPainter(path, "m.pt", background=True)
    for n in range(1, 6):
        painter.update(history[:n])  # returns at once; epochs finished meanwhile are folded together
    painter.close()  # waits for the last history to be drawn
    drawn = picture(path)
    figures.draw_training_curves(history, tmp_path / "inline.png", "m.pt")
    assert np.array_equal(drawn, picture(tmp_path / "inline.png"))


def test_tensorboard_logs_scalars_confusion_matrices_and_hyperparameters(tiny_dataset, tmp_path):
    pytest.importorskip("tensorboard", reason="--tensorboard needs the tensorboard extra: pip install '.[tensorboard]'")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, logs = tmp_path / "model.pt", tmp_path / "tb"
    train(tiny_config(tiny_dataset, out, epochs=2, tensorboard=str(logs)))
    events = EventAccumulator(str(logs), size_guidance={"images": 0, "scalars": 0}).Reload()
    tags = events.Tags()
    assert {"loss/train", "loss/val", "accuracy/train", "accuracy/val", "learning_rate", "ece/val"} <= set(
        tags["scalars"]
    )
    with open(history_path(out)) as handle:
        history = list(__import__("csv").DictReader(handle))
    logged = [round(e.value, 5) for e in events.Scalars("accuracy/val")]
    assert logged == [pytest.approx(float(row["val_accuracy"]), abs=1e-5) for row in history]
    assert [e.step for e in events.Images("confusion_matrix/val")] == [1, 2]
    assert "hparam/best_val_accuracy" in tags["scalars"]


def test_tensorboard_without_the_package_is_one_clear_line(tiny_dataset, tmp_path, monkeypatch):
    from fer_cli.outputs import tensorboard

    real = tensorboard.importlib.util.find_spec
    monkeypatch.setattr(
        tensorboard.importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a)
    )
    result = invoke("train", tiny_dataset, "--out", tmp_path / "m.pt", "--tensorboard", tmp_path / "tb", "-j", "0")
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        "error: --tensorboard needs the tensorboard package: pip install tensorboard (or, in fer's folder, pip install '.[tensorboard]')"
    ]
    assert not (tmp_path / "m.pt").exists() and not (tmp_path / "tb").exists()


# --- fer ensemble --report -------------------------------------------------------------------------


def test_ensemble_report_folder(labelled_dir, tiny_checkpoint, second_checkpoint, tmp_path):
    folder = tmp_path / "report"
    args = ["ensemble", "--weighted", labelled_dir, "-m", tiny_checkpoint, "-m", second_checkpoint, "-j", "0"]
    result = invoke(*args, "-f", "json", "--report", folder)
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert json.loads((folder / "report.json").read_text()) == printed  # the same report --format json prints

    entries = printed["models"] + printed["ensembles"]
    heat_maps = sorted(folder.glob("confusion-*.png"))
    assert len(heat_maps) == len(entries) == 6
    for path, entry in zip(heat_maps, entries):
        picture(path)
        assert drawn_numbers(path)["confusion_matrix"] == entry["metrics"]["confusion_matrix"]
    recall = drawn_numbers(folder / "recall.png")["recall"]
    assert recall == {e["name"]: [e["metrics"]["per_class"][c]["recall"] for c in CLASSES] for e in entries}
    diagrams = drawn_numbers(folder / "reliability.png")
    for model in printed["models"]:
        assert diagrams[model["name"]]["ece"] == model["metrics"]["expected_calibration_error"]
        assert diagrams[model["name"]]["bins"] == model["reliability"]
        assert sum(b["count"] for b in model["reliability"]) == printed["images"]
    assert drawn_numbers(folder / "coverage.png") == {e["name"]: e["coverage"] for e in entries}
    assert all(e["coverage"][-1]["accuracy"] == pytest.approx(e["metrics"]["accuracy"]) for e in entries)
    mistakes = drawn_numbers(folder / "mistakes.png")
    assert all(m["true"] != m["predicted"] and Path(m["path"]).parent.name == m["true"] for m in mistakes)
    for name in ("recall.png", "reliability.png", "coverage.png", "mistakes.png"):
        picture(folder / name)

    page = (folder / "index.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    links = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert set(links) == {p.name for p in folder.iterdir() if p.suffix in (".png", ".json")}
    assert not re.search(r"https?://|//cdn", page)  # self-contained: nothing from the internet
    assert f"{printed['models'][0]['metrics']['accuracy']:.1%}" in page  # the tables are there too

    again = invoke(*args, "--report", folder)  # a table on stdout, the report folder rewritten
    assert again.exit_code == 0 and "Recall per class" in again.stdout


def test_a_report_folder_that_cannot_be_made_is_a_usage_error(labelled_dir, tiny_checkpoint, tmp_path):
    taken = tmp_path / "file"
    taken.write_text("")
    result = invoke("ensemble", labelled_dir, "-m", tiny_checkpoint, "--report", taken, "-j", "0")
    assert result.exit_code == 2 and "cannot write to" in result.stderr and "Traceback" not in result.output


# --- fer predict --report --------------------------------------------------------------------------


def test_predict_report_counts_labels_and_shows_faces(labelled_dir, tiny_checkpoint, tmp_path):
    folder = tmp_path / "report"
    (labelled_dir / "broken.png").write_bytes(b"not a picture")
    result = invoke("predict", labelled_dir, "-m", tiny_checkpoint, "-f", "jsonl", "-j", "0", "--report", folder)
    assert result.exit_code == 1  # the broken file; the report is still written
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    summary = json.loads((folder / "report.json").read_text())
    given = {c: sum(r["label"] == c for r in rows) for c in CLASSES}
    assert summary["label_counts"] == given == drawn_numbers(folder / "labels.png")
    assert summary["faces"] == 24 and summary["inputs"] == 25 and summary["unreadable_inputs"] == 1
    assert sum(summary["confidence"]["counts"]) == 24
    examples = drawn_numbers(folder / "faces.png")
    first = {c: [r["path"] for r in rows if r["label"] == c][:12] for c in CLASSES}
    assert {c: [e["path"] for e in found] for c, found in examples.items()} == first  # the first N per label
    for name in ("labels.png", "confidence.png", "faces.png"):
        picture(folder / name)
    page = (folder / "index.html").read_text()
    assert set(re.findall(r'src="([^"]+)"', page)) == {"labels.png", "confidence.png", "faces.png"}


def test_unlabelled_ensemble_report_is_the_predict_report(image_folder, tiny_checkpoint, second_checkpoint, tmp_path):
    folder = tmp_path / "report"
    args = ["ensemble", image_folder, "-m", tiny_checkpoint, "-m", second_checkpoint, "-j", "0", "--report", folder]
    result = invoke(*args, "-f", "json")
    assert result.exit_code == 0, result.output
    summary = json.loads((folder / "report.json").read_text())
    assert summary["faces"] == 2 and summary["model"].startswith("ensemble")


def test_hostile_names_are_text_in_the_page_and_the_figures(labelled_dir, tiny_checkpoint, second_checkpoint, tmp_path):
    """A model file named like markup, and names with TeX's $...$: escaped in index.html (no stored XSS), drawn as
    they are by matplotlib (math text once failed to parse and lost the whole report after the run)."""
    import shutil

    hostile = tmp_path / "<svg onload=alert(1)>$x^$.pt"
    shutil.copyfile(tiny_checkpoint, hostile)
    (labelled_dir / "calm" / "$\\frac{$.png").write_bytes((labelled_dir / "calm" / "calm_0.png").read_bytes())
    folder = tmp_path / "report"
    result = invoke("ensemble", labelled_dir, "-m", hostile, "-m", second_checkpoint, "-j", "0", "--report", folder)
    assert result.exit_code == 0, result.output
    page = (folder / "index.html").read_text()
    assert "<svg" not in page and "&lt;svg onload=alert(1)&gt;$x^$" in page
    assert {"report.json", "index.html", "mistakes.png", "recall.png"} <= {p.name for p in folder.iterdir()}
    faces = tmp_path / "faces"
    result = invoke("predict", labelled_dir, "-m", hostile, "-j", "0", "-f", "jsonl", "--report", faces)
    assert result.exit_code == 0, result.output
    assert "<svg" not in (faces / "index.html").read_text() and (faces / "faces.png").is_file()
