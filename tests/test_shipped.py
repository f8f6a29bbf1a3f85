"""Checks on the real shipped weights (skipped, with the reason, where they or ../shared are absent)."""

from pathlib import Path

import numpy as np
import pytest

from fer_cli.engine.predict import predict_stream
from fer_cli.inputs.data import find_labelled_images
from fer_cli.models.zoo import load_classifier, resolve_model, shipped_models

from .synthetic import FER_VAL

WEIGHTS = Path(__file__).resolve().parents[1] / "weights"  # what the repository ships

SHIPPED = shipped_models()
needs_weights = pytest.mark.skipif(not SHIPPED, reason="no shipped weights in weights/")
needs_val = pytest.mark.skipif(
    not FER_VAL.is_dir(), reason=f"{FER_VAL} is absent (../shared not checked out beside the repo)"
)


@needs_weights
@pytest.mark.parametrize("entry", SHIPPED, ids=[m.name for m in SHIPPED])
def test_every_shipped_model_loads_and_describes_itself(entry):
    classifier = load_classifier(entry.path)
    assert classifier.class_names == ["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"]
    assert classifier.metrics["accuracy"] > 0.5 and "per_class" in classifier.metrics
    assert classifier.provenance["command"].startswith("fer train")
    channels = classifier.preprocess["channels"]
    probs = classifier.probabilities(np.zeros((1, channels, 48, 48), dtype=np.uint8))
    assert np.isfinite(probs).all() and abs(probs.sum() - 1) < 1e-5


@needs_weights
def test_the_default_model_is_the_best_shipped_checkpoint():
    checkpoints = [m for m in SHIPPED if m.path.endswith(".pt")]
    assert resolve_model(None).path == checkpoints[0].path
    assert checkpoints[0].val_accuracy == max(m.val_accuracy for m in checkpoints)


@needs_weights
def test_the_shipped_fast_model_is_an_int8_export_that_scored_itself():
    fast = [m for m in SHIPPED if m.name == "fast"]
    if not fast or not fast[0].path.endswith(".onnx"):
        pytest.skip("no fast.onnx here, or onnxruntime is not installed")
    classifier = load_classifier(fast[0].path)
    assert classifier.arch.endswith("int8") and classifier.metrics["count"] == 3589
    assert classifier.metrics["accuracy"] > 0.6


@needs_weights
@needs_val
def test_default_model_scores_at_least_62_percent_on_300_val_images():
    files = find_labelled_images(FER_VAL)
    pick = np.linspace(0, len(files.paths) - 1, 300).round().astype(int)  # spread over every class
    classifier = resolve_model(None)
    paths = [files.paths[i] for i in pick]
    truth = [classifier.class_names.index(files.class_names[files.labels[i]]) for i in pick]
    predicted = []
    for outcomes in predict_stream([classifier], paths, "cpu", batch_size=100, workers=0):
        predicted += [int(o.faces[0].probs[0].argmax()) for o in outcomes]
    accuracy = float(np.mean(np.array(predicted) == np.array(truth)))
    print(f"shipped model {classifier.name}: {accuracy:.1%} on 300 val images")
    assert accuracy >= 0.62  # 70% on the whole split


@needs_weights
def test_fer_models_names_what_runs_by_default():
    from typer.testing import CliRunner

    from fer_cli.cli import app

    result = CliRunner().invoke(app, ["models"])
    rows = {line.split("│")[1].strip(): line for line in result.stdout.splitlines() if line.count("│") > 5}
    assert "predict, ensemble" in rows[resolve_model(None).name]
    assert all("ensemble" in rows[m.name] for m in SHIPPED if m.path.endswith(".pt"))


def test_the_shipped_weights_fit_beside_a_data_chunk_on_the_gpu_machine():
    """The device tool carries 64 MiB a call: the repository's weights stay within ~50 MB."""
    weights = Path(__file__).resolve().parents[1] / "weights"
    if not weights.is_dir():
        pytest.skip("no weights/ folder here (an installed package)")
    total = sum(p.stat().st_size for p in weights.iterdir() if p.suffix in (".pt", ".onnx"))
    assert total <= 50e6, f"{total / 1e6:.1f} MB of weights"


@needs_weights
@needs_val
def test_the_shipped_checkpoints_recognise_a_copy_of_part_of_their_validation_set(tmp_path):
    """``provenance.val_images`` was added to the shipped files: 100 val images copied elsewhere are noticed."""
    import shutil

    from fer_cli.engine.ensemble import seen_in_validation

    files = find_labelled_images(FER_VAL)
    for i in np.linspace(0, len(files.paths) - 1, 100).round().astype(int):
        target = tmp_path / "copy" / files.class_names[files.labels[i]] / f"renamed_{i}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(files.paths[i], target)
    copied = find_labelled_images(tmp_path / "copy").paths
    checkpoints = [load_classifier(m.path) for m in SHIPPED if m.path.endswith(".pt")]
    seen = seen_in_validation(checkpoints, str(tmp_path / "copy"), copied, len(copied))
    assert [s["model"] for s in seen] == [c.name for c in checkpoints]
    assert all(s["images"] == 100 and s["validation_images"] == 3589 and s["matched_by"] == "content" for s in seen)


def test_the_checksum_list_names_every_shipped_file_as_it_is():
    import hashlib

    from fer_cli.models.zoo import CHECKSUMS, _listed_checksums

    listed = _listed_checksums(WEIGHTS / CHECKSUMS)
    shipped = sorted(p.name for p in WEIGHTS.iterdir() if p.suffix in (".pt", ".onnx") and ".last." not in p.name)
    assert sorted(listed) == shipped
    for name, digest in listed.items():
        assert hashlib.sha256((WEIGHTS / name).read_bytes()).hexdigest() == digest, f"{name}: sha256sum *.pt *.onnx"
