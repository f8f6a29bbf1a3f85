"""Exported (ONNX) models: the export keeps the checkpoint's predictions, int8 stays close, running
one never imports torch, and the zoo does not let an export vote twice beside its checkpoint."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fer_cli.errors import FerError
from fer_cli.inputs.images import model_pixels, read_image
from fer_cli.models.zoo import load_classifier

from .synthetic import CLASSES

pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
pytest.importorskip("onnxscript", reason="the onnx extra is not installed")


@pytest.fixture(scope="module")
def exported(tiny_checkpoint, tiny_dataset, tmp_path_factory):
    from fer_cli.engine.ensemble import score_model
    from fer_cli.models.exported import export_checkpoint, store_metrics

    folder = tmp_path_factory.mktemp("exported")
    float32 = export_checkpoint(tiny_checkpoint, folder / "tiny.onnx")
    int8 = export_checkpoint(tiny_checkpoint, folder / "tiny8.onnx", int8=True, calibration=str(tiny_dataset / "train"))
    # what `fer export --val` adds: the exported model scored on its own
    metrics = score_model(load_classifier(int8["path"]), str(tiny_dataset / "val"), "cpu")
    store_metrics(int8["path"], metrics, scored_on=str(tiny_dataset / "val"))
    return Path(float32["path"]), Path(int8["path"]), int8, metrics


def _val_pixels(tiny_dataset, preprocess):
    paths = sorted((tiny_dataset / "val").rglob("*.png"))
    return np.stack([model_pixels(read_image(p, 1), preprocess) for p in paths])


def test_float32_export_gives_the_checkpoints_probabilities(exported, tiny_checkpoint, tiny_dataset):
    checkpoint, onnx_model = load_classifier(tiny_checkpoint), load_classifier(exported[0])
    assert onnx_model.class_names == checkpoint.class_names == CLASSES
    assert onnx_model.preprocess == checkpoint.preprocess and onnx_model.metrics == checkpoint.metrics
    assert onnx_model.provenance["exported_from"] == str(tiny_checkpoint)
    checkpoint.runner.prepare("cpu")
    assert onnx_model.runner.prepare("cpu") == "cpu"
    pixels = _val_pixels(tiny_dataset, checkpoint.preprocess)
    np.testing.assert_allclose(onnx_model.probabilities(pixels), checkpoint.probabilities(pixels), atol=1e-5)


def test_int8_export_is_smaller_and_agrees_with_the_checkpoint(exported, tiny_checkpoint, tiny_dataset):
    float32, int8, summary, metrics = exported
    assert int8.stat().st_size < float32.stat().st_size
    assert summary["checked_on"] == 72 and summary["same_top_class"] >= 0.95
    checkpoint, quantised = load_classifier(tiny_checkpoint), load_classifier(int8)
    assert quantised.arch == "vgg int8"
    # scored on val itself, not the checkpoint's numbers passed on
    assert metrics["accuracy"] == quantised.metrics["accuracy"] >= 0.9
    assert quantised.metrics["count"] == 24 and quantised.provenance["val_path"] == str(tiny_dataset / "val")
    assert load_classifier(float32).metrics == checkpoint.metrics
    checkpoint.runner.prepare("cpu")
    pixels = _val_pixels(tiny_dataset, checkpoint.preprocess)
    same = quantised.probabilities(pixels).argmax(1) == checkpoint.probabilities(pixels).argmax(1)
    assert same.mean() >= 0.95


def test_predicting_with_an_exported_model_never_imports_torch(exported, tiny_dataset, tmp_path):
    script = (
        "import sys\n"
        "from fer_cli.cli.app import main\n"
        f"sys.argv = ['fer', 'predict', {str(tiny_dataset / 'val')!r}, '--model', {str(exported[1])!r}, '-f', 'jsonl']\n"
        "try:\n    main()\nexcept SystemExit as end:\n    assert not end.code, end.code\n"
        "print('TORCH' if 'torch' in sys.modules else 'NO TORCH', file=sys.stderr)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "NO TORCH" in done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(rows) == 24 and {row["model"] for row in rows} == {"tiny8"}
    assert np.mean([row["label"] == Path(row["path"]).parent.name for row in rows]) >= 0.9


def test_without_onnxruntime_an_exported_model_is_a_clear_error(exported, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` fail
    with pytest.raises(FerError, match=r"pip install onnxruntime onnx onnxscript"):
        load_classifier(exported[0])


def test_exported_models_vote_only_when_named(exported, tiny_checkpoint, second_checkpoint, tmp_path, monkeypatch):
    from fer_cli.models.zoo import resolve_model, resolve_models

    weights = tmp_path / "weights"
    weights.mkdir()
    for source, name in ((tiny_checkpoint, "tiny.pt"), (second_checkpoint, "other.pt"), (exported[1], "fast.onnx")):
        (weights / name).write_bytes(Path(source).read_bytes())
    monkeypatch.setenv("FER_WEIGHTS_DIR", str(weights))
    notes = []
    chosen = resolve_models(None, note=notes.append)
    names = {c.name for c in chosen}  # (the repository's own weights/ are found too)
    assert {"other", "tiny"} <= names and "fast" not in names
    assert not any("left out" in note for note in notes)  # said once, in --help and the README, not at every run
    assert "fast" in {c.name for c in resolve_models(["tiny", "fast"])}
    assert resolve_model("fast").runner.__class__.__name__ == "OnnxRunner"
    assert resolve_model(None).path.endswith(".pt")  # the default never depends on installed extras


def test_export_command_reports_agreement_and_refuses_bad_requests(tiny_checkpoint, tiny_dataset, tmp_path):
    from typer.testing import CliRunner

    from fer_cli.cli.app import app

    runner = CliRunner()
    done = runner.invoke(app, ["export", str(tiny_checkpoint), str(tmp_path / "m.txt")])
    assert done.exit_code == 2 and ".onnx" in done.output
    done = runner.invoke(app, ["export", str(tiny_checkpoint), str(tmp_path / "m.onnx"), "--int8"])
    assert done.exit_code == 2 and "--calibration" in done.output
    assert not (tmp_path / "m.onnx").exists()
    val = str(tiny_dataset / "val")
    done = runner.invoke(app, ["export", str(tiny_checkpoint), str(tmp_path / "m.onnx"), "--val", val, "-j", "0"])
    assert done.exit_code == 0, done.output
    stored = load_classifier(tmp_path / "m.onnx")
    assert "epoch" in load_classifier(tiny_checkpoint).metrics and "epoch" not in stored.metrics  # its own scores
    assert stored.metrics["count"] == 24 and "calibration" in stored.metrics and stored.provenance["val_path"] == val
    assert f"accuracy on {val}: {stored.metrics['accuracy']:.2%} (stored in the file)" in done.output


def _protobuf_field(number: int, value: bytes) -> bytes:
    def varint(n):
        out = b""
        while n >= 0x80:
            out, n = out + bytes([n & 0x7F | 0x80]), n >> 7
        return out + bytes([n])

    return varint(number << 3 | 2) + varint(len(value)) + value


@pytest.mark.parametrize(
    "stored",
    ["[" * 200_000 + "]" * 200_000, "[1, 2]", '{"arch": "vgg"}', '{"arch": 3, "class_names": ["a", "b"]}'],
    ids=["nested 200,000 deep", "a list", "no classes", "arch a number"],
)
def test_an_onnx_file_whose_metadata_cannot_be_read_is_its_own_clear_error(stored, tiny_checkpoint, tmp_path,
                                                                           monkeypatch):  # fmt: skip
    import onnx

    from fer_cli.models.checkpoint_runner import onnx_form
    from fer_cli.models.exported import read_metadata
    from fer_cli.models.zoo import model_catalogue, resolve_model

    weights = tmp_path / "weights"
    weights.mkdir()
    crafted = weights / "crafted.onnx"
    entry = _protobuf_field(1, b"fer_cli") + _protobuf_field(2, stored.encode())
    crafted.write_bytes(_protobuf_field(14, entry))  # a ModelProto with only its metadata_props
    graph = weights / "graph.onnx"  # a whole graph, with that metadata
    model = onnx.load(str(onnx_form(tiny_checkpoint)))
    onnx.helper.set_model_props(model, {"fer_cli": stored})
    onnx.save(model, str(graph))
    (weights / "fine.pt").write_bytes(Path(tiny_checkpoint).read_bytes())
    monkeypatch.setenv("FER_WEIGHTS_DIR", str(weights))
    for path in (crafted, graph):
        for read in (read_metadata, resolve_model):
            with pytest.raises(FerError) as refused:
                read(str(path))
            assert str(path) in str(refused.value) and "\n" not in str(refused.value)
    notes = []
    listed = {entry["name"] for entry in model_catalogue(note=notes.append)["shipped"]}
    assert "fine" in listed and not {"crafted", "graph"} & listed
    assert sum("left out" in note and ("crafted.onnx" in note or "graph.onnx" in note) for note in notes) == 2
    assert resolve_model(None).path.endswith(".pt")
