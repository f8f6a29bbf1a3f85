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


# --- hostile files: refused before they cost memory or reach the network's builder ---------------


def _with_pickle(source, out, payload: bytes):
    """``source``'s archive with its ``data.pkl`` replaced by ``payload``, deflated (torch never compresses)."""
    import zipfile

    with zipfile.ZipFile(source) as original, zipfile.ZipFile(out, "w") as bomb:
        for info in original.infolist():
            if info.filename.endswith("/data.pkl"):
                bomb.writestr(info.filename, payload, compress_type=zipfile.ZIP_DEFLATED)
            else:
                bomb.writestr(info, original.read(info))
    return out


def test_a_zip_bomb_is_refused_before_it_is_unpacked(tmp_path):
    import tracemalloc

    from fer_cli.models.checkpoint_file import read_description

    good = tmp_path / "good.pt"
    save_checkpoint(good, _checkpoint(create_model("vgg", num_classes=3, width=4)))
    size = 256 << 20  # a BINBYTES8 pickle of 256 MiB, deflated to a quarter of a megabyte
    bomb = _with_pickle(good, tmp_path / "bomb.pt", b"\x80\x04\x8e" + size.to_bytes(8, "little") + bytes(size) + b".")
    assert bomb.stat().st_size < 2 << 20
    tracemalloc.start()
    try:
        for read in (read_description, read_checkpoint):
            with pytest.raises(CheckpointError, match="would unpack to 256 MiB") as refused:
                read(bomb)
            message = str(refused.value)
            assert "\n" not in message and message.startswith(f"{bomb} is not a fer_cli checkpoint")
        assert tracemalloc.get_traced_memory()[1] < 32 << 20  # nothing was unpacked
    finally:
        tracemalloc.stop()


def _edited(tmp_path, name: str, **changes):
    path = tmp_path / f"{name}.pt"
    checkpoint = _checkpoint(create_model("vgg", num_classes=3, width=4))
    for key, value in changes.items():
        if "." in key:
            outer, inner = key.split(".")
            checkpoint[outer] = {**checkpoint[outer], inner: value}
        else:
            checkpoint[key] = value
    save_checkpoint(path, checkpoint)
    return path


@pytest.mark.parametrize(
    "changes, reason",
    [
        ({"preprocess.size": 1}, "input 1 px"),
        ({"preprocess.size": 4096}, "input 4096 px"),
        ({"preprocess": [48, 1]}, "preprocess"),
        ({"state_dict": {"0.weight": [[0.5]]}}, "state_dict"),
        ({"state_dict": "weights"}, "state_dict"),
        ({"model_config": {"width": -5}}, "width -5"),
        ({"model_config": {"width": 10**6}}, "width 1000000"),
        ({"model_config": {"width": "wide"}}, "width"),
        ({"model_config": [4]}, "model_config"),
        ({"model_config": {1: 2, "width": 4}}, "model_config"),
        ({"metrics": ["accuracy"]}, "metrics"),
        ({"class_names": [f"c{i}" for i in range(5000)]}, "classes"),
    ],
)
def test_hand_edited_checkpoints_are_refused_in_one_line_before_building(tmp_path, changes, reason):
    from fer_cli.models.checkpoint_file import read_description

    path = _edited(tmp_path, "edited", **changes)
    for read in (read_checkpoint, read_description, load_classifier):
        with pytest.raises(CheckpointError, match="damaged or was edited by hand") as refused:
            read(path)
        assert reason in str(refused.value) and "\n" not in str(refused.value), read.__name__


def test_a_checkpoint_at_the_input_size_bounds_still_runs(tmp_path):
    for side in (16, 256):
        path = _edited(tmp_path, f"side{side}", **{"preprocess.size": side})
        classifier = load_classifier(path)
        classifier.runner.prepare("cpu")
        assert classifier.probabilities(np.zeros((1, 1, side, side), np.uint8)).shape == (1, 3)
