"""The Python API (fer_cli.api): the same records as `fer predict -f json`, from paths, PIL images and numpy arrays;
ensembles; scoring a labelled folder; training from a config; and `import fer_cli` staying instant."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import fer_cli
from fer_cli.cli.app import app

from .synthetic import CLASSES, synthetic_face, tiny_config


def test_records_are_what_fer_predict_writes(tiny_checkpoint, image_folder):
    model = fer_cli.load(tiny_checkpoint)
    records = model.predict(image_folder)
    done = CliRunner().invoke(app, ["predict", str(image_folder), "-m", str(tiny_checkpoint), "-f", "json", "-j", "0"])
    assert done.exit_code == 0, done.output
    assert records == json.loads(done.stdout)
    assert [r["label"] for r in records] and all(r["label"] in CLASSES for r in records)


def test_pictures_in_memory_are_read_as_their_files(tiny_checkpoint, tmp_path):
    face = synthetic_face(1, 7)
    Image.fromarray(face).save(tmp_path / "face.png")
    model = fer_cli.load(str(tiny_checkpoint))
    from_file = model.predict(tmp_path / "face.png")[0]
    from_array, from_pil, from_rgb, from_channel = model.predict(
        [face, Image.fromarray(face), np.repeat(face[:, :, None], 3, axis=2), face[:, :, None]]
    )
    for record in (from_array, from_pil, from_rgb, from_channel):
        assert record["probabilities"] == pytest.approx(from_file["probabilities"], abs=1e-5)
        assert record["label"] == from_file["label"] and record["box"] == [0, 0, 48, 48]
    assert [from_array["path"], from_pil["path"]] == ["<image 0>", "<image 1>"]


def test_inputs_it_cannot_take_are_said_and_bad_files_are_records(tiny_checkpoint, bad_files):
    model = fer_cli.load(tiny_checkpoint)
    with pytest.raises(ValueError, match="uint8"):
        model.predict(np.zeros((48, 48), dtype=np.float32))
    with pytest.raises(TypeError, match="a path, a PIL image or a numpy array"):
        model.predict([42])
    records = {r["path"]: r for r in model.predict(list(bad_files.values()))}
    assert records.pop(str(bad_files.pop("good")))["label"] in CLASSES
    assert sorted(records) == sorted(map(str, bad_files.values()))
    assert all(r["error"] and r["label"] is None for r in records.values())


def test_an_ensemble_votes_the_mean_probability(tiny_checkpoint, second_checkpoint):
    face = synthetic_face(2, 3)
    alone = [fer_cli.load(path).predict(face)[0]["probabilities"] for path in (tiny_checkpoint, second_checkpoint)]
    both = fer_cli.load([tiny_checkpoint, second_checkpoint])
    record = both.predict(face)[0]
    assert record["model"] == both.name == "ensemble: mean probability"
    for name in CLASSES:
        assert record["probabilities"][name] == pytest.approx((alone[0][name] + alone[1][name]) / 2, abs=1e-5)


def test_score_gives_fer_ensembles_report(tiny_checkpoint, tiny_dataset):
    report = fer_cli.load(tiny_checkpoint).score(tiny_dataset / "val")
    assert report["images"] == 8 * len(CLASSES)
    assert report["models"][0]["metrics"]["accuracy"] > 0.8


def test_train_from_a_config(tiny_dataset, tmp_path):
    metrics = fer_cli.train(tiny_config(tiny_dataset, tmp_path / "m.pt", epochs=2))
    assert (tmp_path / "m.pt").is_file() and 0 <= metrics["accuracy"] <= 1
    assert fer_cli.load(tmp_path / "m.pt").class_names == CLASSES


def test_importing_fer_cli_loads_neither_torch_nor_onnxruntime():
    code = "import sys, fer_cli; fer_cli.Model; print('torch' in sys.modules, 'onnxruntime' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["False", "False"], done.stderr
