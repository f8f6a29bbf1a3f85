"""Temperature scaling: the fit recovers a known temperature, training stores one, `fer calibrate` refits."""

import shutil

import numpy as np
from typer.testing import CliRunner

from fer_cli.cli.app import app
from fer_cli.engine.calibration import calibrate, fit_temperature
from fer_cli.models.checkpoint import read_checkpoint
from fer_cli.models.classifier import softmax

from .synthetic import make_labelled_folder


def _overconfident(temperature: float, count: int = 20000, seed: int = 0):
    """Logits whose labels were drawn from softmax(logits / temperature): T is the right answer."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 3, (count, 7))
    probs = softmax(logits / temperature)
    labels = np.array([rng.choice(7, p=p) for p in probs])
    return logits, labels


def test_the_fit_recovers_the_temperature_the_labels_were_drawn_with():
    for temperature in (0.5, 1.0, 2.5):
        logits, labels = _overconfident(temperature)
        assert abs(fit_temperature(logits, labels) / temperature - 1) < 0.05


def test_calibrating_an_overconfident_model_lowers_its_error_and_keeps_its_answers():
    logits, labels = _overconfident(2.5)
    probs = softmax(logits)  # the model reports T = 1: far too sure
    report = calibrate(probs, labels, current_temperature=1.0, fitted_on="synthetic")
    assert report["nll_after"] < report["nll_before"]
    assert report["ece_after"] < 0.02 < 0.1 < report["ece_before"]
    assert abs(report["temperature"] / 2.5 - 1) < 0.05
    assert (softmax(logits / report["temperature"]).argmax(1) == probs.argmax(1)).all()
    # calibrating probabilities that were already scaled composes the temperatures
    again = calibrate(softmax(logits / 2.0), labels, current_temperature=2.0)
    assert abs(again["temperature"] / report["temperature"] - 1) < 0.01


def test_training_fits_and_stores_a_temperature(tiny_checkpoint):
    checkpoint = read_checkpoint(tiny_checkpoint)
    calibration = checkpoint["metrics"]["calibration"]
    assert checkpoint["temperature"] == calibration["temperature"] > 0
    assert calibration["images"] == 24 and calibration["nll_after"] <= calibration["nll_before"] + 1e-9


def test_calibrate_command_updates_the_checkpoint_in_place(tiny_checkpoint, tmp_path):
    model = tmp_path / "model.pt"
    shutil.copyfile(tiny_checkpoint, model)
    folder = make_labelled_folder(tmp_path / "val", per_class=40, seed=7)  # 120 images: enough to fit on
    done = CliRunner().invoke(app, ["calibrate", str(model), str(folder), "--workers", "0"])
    assert done.exit_code == 0, done.output
    assert "expected calibration error" in done.output
    stored = read_checkpoint(model)
    assert stored["metrics"]["calibration"]["fitted_on"] == str(folder)
    assert stored["metrics"]["calibration"]["applied"]
    # the same data again: the temperature is already right
    CliRunner().invoke(app, ["calibrate", str(model), str(folder), "--workers", "0"])
    assert abs(read_checkpoint(model)["temperature"] / stored["temperature"] - 1) < 0.02


def test_a_temperature_is_not_applied_on_too_few_images(tiny_checkpoint, tiny_dataset, tmp_path):
    model = tmp_path / "model.pt"
    shutil.copyfile(tiny_checkpoint, model)
    before = read_checkpoint(model)["temperature"]
    done = CliRunner().invoke(app, ["calibrate", str(model), str(tiny_dataset / "val"), "--workers", "0"])
    assert done.exit_code == 0, done.output
    assert "temperature kept" in done.output and "too few images (24)" in done.output
    assert read_checkpoint(model)["temperature"] == before


def test_a_temperature_that_does_not_help_held_out_images_is_not_applied():
    rng = np.random.default_rng(0)
    # calibrated already: the label is drawn from the probabilities themselves
    probs = rng.dirichlet(np.ones(3), 400)
    labels = np.array([rng.choice(3, p=row) for row in probs])
    report = calibrate(probs, labels, current_temperature=1.3)
    assert not report["applied"] and report["temperature"] == 1.3
    assert "other half" in report["reason"]
    # over-confident: sharpened probabilities of the same draws; here a temperature helps
    sharp = probs**4 / (probs**4).sum(axis=1, keepdims=True)
    report = calibrate(sharp, labels)
    assert report["applied"] and report["temperature"] > 2 and report["nll_after"] < report["nll_before"]


def test_calibrate_never_changes_a_shipped_model_and_writes_a_copy_instead(tiny_checkpoint, tmp_path, monkeypatch):
    """A shipped model (listed in its folder's SHA256SUMS) is refused in place; --out writes a calibrated copy."""
    import hashlib

    shipped = tmp_path / "weights"
    shipped.mkdir()
    model = shipped / "tiny.pt"
    shutil.copyfile(tiny_checkpoint, model)
    (shipped / "SHA256SUMS").write_text(f"{hashlib.sha256(model.read_bytes()).hexdigest()}  tiny.pt\n")
    monkeypatch.setenv("FER_WEIGHTS_DIR", str(shipped))
    folder = make_labelled_folder(tmp_path / "val", per_class=40, seed=7)
    before = model.read_bytes()
    done = CliRunner().invoke(app, ["calibrate", "tiny", str(folder), "--workers", "0"])
    assert done.exit_code == 2 and "shipped model" in done.stderr and "--out" in done.stderr
    copy = tmp_path / "mine.pt"
    done = CliRunner().invoke(app, ["calibrate", "tiny", str(folder), "--workers", "0", "--out", str(copy)])
    assert done.exit_code == 0, done.output
    assert model.read_bytes() == before  # the shipped file, untouched: the default ensemble still loads it
    assert read_checkpoint(copy)["metrics"]["calibration"]["fitted_on"] == str(folder)
    assert CliRunner().invoke(app, ["models", "tiny"]).exit_code == 0


def test_a_model_whose_temperature_is_kept_is_not_rewritten(tiny_checkpoint, tiny_dataset, tmp_path):
    model = tmp_path / "model.pt"
    shutil.copyfile(tiny_checkpoint, model)
    stamp = model.stat().st_mtime_ns
    done = CliRunner().invoke(app, ["calibrate", str(model), str(tiny_dataset / "val"), "--workers", "0"])
    assert "temperature kept" in done.output and "left as it was" in done.output
    assert model.stat().st_mtime_ns == stamp


def test_calibrate_refuses_a_prior_correction_that_is_not_a_bounded_number(tiny_checkpoint, tmp_path):
    """nan and inf were written into the model (which every command then refused as damaged); 1e308 made a model
    that answered nothing. fer train's bound (-10 to 10) holds here too, and the model is left as it was."""
    model = tmp_path / "model.pt"
    shutil.copyfile(tiny_checkpoint, model)
    before = model.read_bytes()
    folder = make_labelled_folder(tmp_path / "val", per_class=4, seed=7)
    for tau in ("nan", "inf", "-inf", "1e308", "10.5"):
        done = CliRunner().invoke(app, ["calibrate", str(model), str(folder), "--prior-correction", tau, "-j", "0"])
        assert done.exit_code == 2 and "--prior-correction" in done.output, (tau, done.output)
        assert model.read_bytes() == before
    done = CliRunner().invoke(app, ["calibrate", str(model), str(folder), "--prior-correction", "10", "-j", "0"])
    assert done.exit_code == 0, done.output


def test_a_fit_that_is_not_finite_is_refused():
    import pytest

    from fer_cli.errors import FerError

    probs = softmax(np.random.default_rng(0).normal(0, 1, (200, 3)))
    probs[3] = np.nan
    with pytest.raises(FerError, match="not finite"):
        calibrate(probs, np.arange(200) % 3)
