import pickle

import numpy as np
import pytest
import torch

from fer_cli.errors import CheckpointError
from fer_cli.models.architectures import create_model
from fer_cli.models.checkpoint import build_model, clean_state_dict, read_checkpoint, save_checkpoint
from fer_cli.models.zoo import load_classifier


def _checkpoint(model, **extra):
    return {
        "arch": "vgg",
        "model_config": {"width": 4},
        "class_names": ["a", "b", "c"],
        "preprocess": {"size": 48, "channels": 1, "mean": [0.5], "std": [0.25]},
        "state_dict": model.state_dict(),
        "metrics": {"accuracy": 0.5, "per_class": {"a": {"f1": 0.4}}},
        "provenance": {"command": "fer train x", "seed": 3},
        **extra,
    }


def test_round_trip_restores_the_same_predictions(tmp_path):
    torch.manual_seed(0)
    model = create_model("vgg", num_classes=3, width=4).eval()
    path = tmp_path / "m.pt"
    save_checkpoint(path, _checkpoint(model))
    classifier = load_classifier(path)
    pixels = torch.randint(0, 256, (4, 1, 48, 48), dtype=torch.uint8)
    with torch.no_grad():
        expected = model((pixels.float() / 255 - 0.5) / 0.25)  # the checkpoint's mean and std
    classifier.runner.prepare("cpu")
    assert np.allclose(classifier.runner.logits(pixels.numpy()), expected.numpy(), atol=1e-5)
    assert classifier.class_names == ["a", "b", "c"] and classifier.arch == "vgg"
    assert classifier.metrics["accuracy"] == 0.5 and classifier.provenance["seed"] == 3
    # plain types only: loadable with weights_only=True
    assert torch.load(path, weights_only=True)["format"] == "fer_cli.checkpoint"


def test_half_storage_halves_the_file_and_keeps_predictions(tmp_path):
    torch.manual_seed(0)
    model = create_model("vgg", num_classes=3, width=16).eval()
    save_checkpoint(tmp_path / "full.pt", _checkpoint(model, model_config={"width": 16}))
    save_checkpoint(tmp_path / "half.pt", _checkpoint(model, model_config={"width": 16}), half=True)
    assert (tmp_path / "half.pt").stat().st_size < 0.6 * (tmp_path / "full.pt").stat().st_size
    restored = build_model(read_checkpoint(tmp_path / "half.pt"))
    x = torch.randn(8, 1, 48, 48)
    with torch.no_grad():
        reference, half = torch.softmax(model(x), 1), torch.softmax(restored(x), 1)
    assert next(restored.parameters()).dtype == torch.float32
    assert (reference - half).abs().max() < 1e-2


def test_clean_state_dict_strips_ddp_and_compile_prefixes():
    assert list(clean_state_dict({"module._orig_mod.fc.weight": 1, "fc.bias": 2})) == ["fc.weight", "fc.bias"]


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "is empty$"),
        (b"garbage" * 10, "is not a checkpoint \\(not a PyTorch file\\)$"),
        (bytes(range(256)) * 40, "is not a checkpoint \\(not a PyTorch file\\)$"),
    ],
)
def test_corrupt_files_are_clear_errors(tmp_path, content, message):
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message) as refused:
        read_checkpoint(path)
    assert "zipfile" not in str(refused.value) and "\n" not in str(refused.value)  # torch's internals stay inside


def test_truncated_foreign_and_unsafe_files_are_refused(tmp_path):
    model = create_model("vgg", num_classes=3, width=4)
    good = tmp_path / "good.pt"
    save_checkpoint(good, _checkpoint(model))
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="is damaged or truncated") as refused:
        read_checkpoint(truncated)
    assert "central directory" not in str(refused.value) and "\n" not in str(refused.value)

    foreign = tmp_path / "foreign.pt"
    torch.save(model.state_dict(), foreign)  # a bare state_dict from some other tool
    with pytest.raises(CheckpointError, match="not a fer_cli checkpoint"):
        read_checkpoint(foreign)

    unsafe = tmp_path / "unsafe.pt"
    torch.save({"format": "fer_cli.checkpoint", "obj": pickle.PickleError("x")}, unsafe)
    with pytest.raises(CheckpointError, match="not plain data"):
        read_checkpoint(unsafe)

    with pytest.raises(CheckpointError, match="no such checkpoint"):
        read_checkpoint(tmp_path / "absent.pt")

    incomplete = tmp_path / "incomplete.pt"
    save_checkpoint(incomplete, {"arch": "vgg"})
    with pytest.raises(CheckpointError, match="missing model_config"):
        read_checkpoint(incomplete)


def test_weights_that_do_not_fit_the_architecture(tmp_path):
    model = create_model("vgg", num_classes=3, width=4)
    path = tmp_path / "m.pt"
    save_checkpoint(path, _checkpoint(model, model_config={"width": 8}))
    classifier = load_classifier(path)  # its description: the weights are read when it is made ready to run
    for device in ("cpu", "auto"):  # the ONNX form cannot be exported, and torch refuses it as well
        with pytest.raises(CheckpointError, match="do not fit architecture 'vgg'"):
            classifier.runner.prepare(device)


def test_writes_are_atomic(tmp_path, monkeypatch):
    path = tmp_path / "m.pt"
    path.write_bytes(b"previous")

    def crash(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(RuntimeError):
        save_checkpoint(path, _checkpoint(create_model("vgg", num_classes=3, width=4)))
    assert path.read_bytes() == b"previous"
    assert list(tmp_path.iterdir()) == [path]  # no temporary left behind
