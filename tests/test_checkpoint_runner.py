"""Checkpoints on a CPU run as ONNX on onnxruntime, exported once per checkpoint into fer's cache: the
same probabilities as torch, the entry reused, made again for a changed or damaged checkpoint, made once
by concurrent first runs, and torch running the checkpoint where no entry can be made. A checkpoint's
description is read without torch, with the errors torch's reading gives."""

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fer_cli.errors import CheckpointError
from fer_cli.files import file_sha256
from fer_cli.inputs.images import model_pixels, read_image
from fer_cli.models import checkpoint_runner
from fer_cli.models.architectures import create_model
from fer_cli.models.checkpoint import load_checkpoint_classifier, read_checkpoint, save_checkpoint
from fer_cli.models.checkpoint_file import TensorInfo, read_description
from fer_cli.models.checkpoint_runner import CheckpointRunner, onnx_form
from fer_cli.models.exported import OnnxRunner, read_metadata
from fer_cli.models.onnx_cache import record_path
from fer_cli.models.zoo import load_classifier

from .synthetic import FER_VAL

REPO = Path(__file__).resolve().parents[1]


def _val_pixels(folder: Path, preprocess: dict) -> np.ndarray:
    return np.stack([model_pixels(read_image(p, 1), preprocess) for p in sorted(folder.rglob("*.png"))])


def _copy_with(tiny_checkpoint, path: Path, **changes) -> Path:
    """The tiny checkpoint saved again with some keys changed (another file: another sha256)."""
    save_checkpoint(path, {**read_checkpoint(tiny_checkpoint), **changes})
    return path


def test_a_checkpoint_on_the_cpu_runs_as_onnx_with_torchs_probabilities(tiny_checkpoint, tiny_dataset, tmp_path):
    # a stored temperature and prior correction apply whatever runs the network
    path = _copy_with(tiny_checkpoint, tmp_path / "corrected.pt", temperature=1.7, class_prior=[0.5, 0.3, 0.2],
                      prior_correction=0.8)  # fmt: skip
    onnx, reference = load_classifier(path), load_checkpoint_classifier(path)
    assert onnx.runner.prepare("cpu") == reference.runner.prepare("cpu") == "cpu"
    assert isinstance(onnx.runner.engine, OnnxRunner)
    pixels = _val_pixels(tiny_dataset / "val", onnx.preprocess)
    for tta in ("none", "flip", "crops"):
        np.testing.assert_allclose(onnx.probabilities(pixels, tta), reference.probabilities(pixels, tta), atol=1e-5)
    assert not np.allclose(onnx.probabilities(pixels), load_classifier(tiny_checkpoint).probabilities(pixels))


@pytest.mark.skipif(not FER_VAL.is_dir(), reason=f"{FER_VAL} is absent (../shared not beside the repo)")
@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "weights").glob("*.pt")))
def test_every_shipped_checkpoint_gives_torchs_labels_on_val_and_its_probabilities(name):
    """A seventh of FER2013 val (513 faces; benchmarks/cpu_speed.py compares all 3,589 through `fer predict`): the
    same label from both engines, probabilities within float precision."""
    onnx, reference = load_classifier(REPO / "weights" / name), load_checkpoint_classifier(REPO / "weights" / name)
    onnx.runner.prepare("cpu")
    reference.runner.prepare("cpu")
    paths = sorted(FER_VAL.rglob("*.png"))[::7]
    pixels = np.stack([model_pixels(read_image(p, 1), onnx.preprocess) for p in paths])
    got, expected = onnx.probabilities(pixels), reference.probabilities(pixels)
    np.testing.assert_array_equal(got.argmax(1), expected.argmax(1))
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_the_entry_is_made_once_and_a_changed_checkpoint_gets_its_own(tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("FER_CACHE_DIR", str(tmp_path / "cache"))
    notes = []
    first = onnx_form(tiny_checkpoint, notes.append)
    assert onnx_form(tiny_checkpoint, notes.append) == first and len(notes) == 1 and "exporting tiny.pt" in notes[0]
    changed = _copy_with(tiny_checkpoint, tmp_path / "tiny.pt", temperature=2.0)  # same name, other content
    second = onnx_form(changed, notes.append)
    assert second != first and len(notes) == 2 and {first, second} <= set((tmp_path / "cache" / "onnx").iterdir())
    meta = json.loads(OnnxRunner(second).session.get_modelmeta().custom_metadata_map["fer_cli"])
    assert meta == read_metadata(second) and meta["provenance"]["exported_from_sha256"] == file_sha256(changed)
    stored = read_checkpoint(changed)  # its description travels with it: what the exported model knows of itself
    assert meta["temperature"] == 2.0 and meta["class_prior"] == stored.get("class_prior")
    assert meta["prior_correction"] == stored.get("prior_correction", 0.0)


def test_a_damaged_entry_is_made_again(tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("FER_CACHE_DIR", str(tmp_path / "cache"))
    entry = onnx_form(tiny_checkpoint)
    whole = entry.read_bytes()
    for damage in (whole[: len(whole) // 2], whole[:-40] + b"\0" * 40, b""):
        entry.write_bytes(damage)
        classifier = load_classifier(tiny_checkpoint)
        assert classifier.runner.prepare("cpu") == "cpu" and isinstance(classifier.runner.engine, OnnxRunner)
        assert entry.read_bytes() != damage


def test_without_a_usable_cache_the_checkpoint_runs_with_torch_and_says_why(tiny_checkpoint, tmp_path, monkeypatch):
    (tmp_path / "a-file").write_text("not a folder")
    monkeypatch.setenv("FER_CACHE_DIR", str(tmp_path / "a-file" / "cache"))  # cannot be made (root ignores modes)
    notes = []
    classifier = load_classifier(tiny_checkpoint, note=notes.append)
    assert classifier.runner.prepare("auto") == "cpu"
    assert type(classifier.runner.engine).__name__ == "TorchRunner"
    assert len(notes) == 1 and "runs with torch on the CPU" in notes[0] and "cannot be cached" in notes[0]

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setenv("FER_CACHE_DIR", str(tmp_path / "full"))
    monkeypatch.setattr("fer_cli.models.exported.write_exported", full_disk)
    notes.clear()
    classifier = load_classifier(tiny_checkpoint, note=notes.append)
    assert classifier.runner.prepare("cpu") == "cpu" and type(classifier.runner.engine).__name__ == "TorchRunner"
    assert "No space left on device" in notes[-1] and not list((tmp_path / "full" / "onnx").glob("*.onnx"))


def test_concurrent_first_runs_export_once_and_agree(tiny_checkpoint, image_folder, tmp_path):
    environment = {**os.environ, "FER_CACHE_DIR": str(tmp_path / "cache"), "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "fer_cli", "predict", str(image_folder), "-m", str(tiny_checkpoint), "-f", "jsonl"]
    runs = [subprocess.Popen(command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(3)]  # fmt: skip
    done = [run.communicate(timeout=300) for run in runs]
    assert all(run.returncode == 0 for run in runs), [err for _, err in done]
    assert sum(err.count("exporting tiny.pt") for _, err in done) == 1
    assert done[0][0] == done[1][0] == done[2][0] and len(done[0][0].splitlines()) == 2
    assert len(list((tmp_path / "cache" / "onnx").glob("*.onnx"))) == 1


def test_auto_where_torch_finds_no_accelerator_runs_onnx(tiny_checkpoint, monkeypatch):
    """A machine with a GPU driver but no GPU torch can use (a CPU build of torch): torch decides, then ONNX runs."""
    monkeypatch.setattr(checkpoint_runner, "runs_on_the_cpu", lambda device: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    runner = CheckpointRunner(tiny_checkpoint)
    assert runner.prepare("auto") == "cpu" and isinstance(runner.engine, OnnxRunner)


def test_the_cpu_is_recognised_without_torch(monkeypatch):
    from fer_cli import device

    monkeypatch.setattr(device.sys, "platform", "linux")
    monkeypatch.setattr(device.os.path, "exists", lambda path: False)
    assert device.runs_on_the_cpu("auto") and device.runs_on_the_cpu(" CPU ")
    assert not device.runs_on_the_cpu("cuda:0") and not device.runs_on_the_cpu("mps")
    monkeypatch.setattr(device.os.path, "exists", lambda path: path == "/dev/nvidiactl")
    assert not device.runs_on_the_cpu("auto")  # a GPU may be there: torch decides
    monkeypatch.setattr(device.sys, "platform", "darwin")
    monkeypatch.setattr(device.platform, "machine", lambda: "arm64")
    assert not device.runs_on_the_cpu("auto")  # MPS


# --- reading a checkpoint without torch ---------------------------------------------------------


def test_the_description_is_the_checkpoint_without_its_weights(tiny_checkpoint):
    description, checkpoint = read_description(tiny_checkpoint), read_checkpoint(tiny_checkpoint)
    assert description.keys() == checkpoint.keys()
    for key in checkpoint.keys() - {"state_dict"}:
        assert description[key] == checkpoint[key], key
    for name, tensor in checkpoint["state_dict"].items():
        dtype = str(tensor.dtype).removeprefix("torch.")
        assert description["state_dict"][name] == TensorInfo(dtype, tuple(tensor.shape))


def _bad_files(tmp_path) -> dict[str, Path]:
    model = create_model("vgg", num_classes=3, width=4)
    good = tmp_path / "good.pt"
    save_checkpoint(good, {"arch": "vgg", "model_config": {"width": 4}, "class_names": list("abc"),
                           "preprocess": {"size": 48, "channels": 1, "mean": [0.5], "std": [0.25]},
                           "state_dict": model.state_dict()})  # fmt: skip
    files = {"empty": b"", "garbage": b"garbage" * 10, "truncated": good.read_bytes()[: good.stat().st_size // 2]}
    paths = {}
    for name, content in files.items():
        paths[name] = tmp_path / f"{name}.pt"
        paths[name].write_bytes(content)
    paths["foreign"] = tmp_path / "foreign.pt"
    torch.save(model.state_dict(), paths["foreign"])
    paths["unsafe"] = tmp_path / "unsafe.pt"
    torch.save({"format": "fer_cli.checkpoint", "obj": pickle.PickleError("x")}, paths["unsafe"])
    paths["incomplete"] = tmp_path / "incomplete.pt"
    save_checkpoint(paths["incomplete"], {"arch": "vgg"})
    paths["newer"] = tmp_path / "newer.pt"
    save_checkpoint(paths["newer"], {**read_checkpoint(good), "version": 99})
    paths["absent"] = tmp_path / "absent.pt"
    return paths


def test_damaged_foreign_and_unsafe_files_give_torchs_errors(tmp_path):
    for name, path in _bad_files(tmp_path).items():
        with pytest.raises(CheckpointError) as by_torch:
            read_checkpoint(path)
        with pytest.raises(CheckpointError) as without:
            read_description(path)
        assert str(without.value) == str(by_torch.value), name


# --- the cache trusts nothing it did not write, deletes nothing it did not make, waits for no one forever --------


def _reference_probabilities(path, tiny_dataset):
    reference = load_checkpoint_classifier(path)
    reference.runner.prepare("cpu")
    return reference.probabilities(_val_pixels(tiny_dataset / "val", reference.preprocess))


def _edit_head_bias(entry: Path) -> None:
    """The entry with its last layer's bias pushed towards the first class, its metadata kept."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(entry))
    biases = [init for init in model.graph.initializer if init.dims == [3]]  # (classes,): the head's bias
    assert biases
    for bias in biases:
        values = numpy_helper.to_array(bias).copy()
        values[0] += 100.0
        bias.CopyFrom(numpy_helper.from_array(values, bias.name))
    onnx.save(model, str(entry))


def test_an_edited_or_unreadable_entry_is_exported_again(tiny_checkpoint, tiny_dataset, tmp_path, monkeypatch):
    monkeypatch.setenv("FER_CACHE_DIR", str(tmp_path / "cache"))
    path = _copy_with(tiny_checkpoint, tmp_path / "edited.pt", temperature=1.3)
    expected = _reference_probabilities(path, tiny_dataset)
    entry = onnx_form(path)
    nested = "[" * 200_000 + "]" * 200_000
    damages = {
        "an edited head bias": _edit_head_bias,
        "metadata nested 200,000 deep": lambda entry: _set_metadata(entry, nested),
        "its record nested 200,000 deep": lambda entry: record_path(entry).write_text(nested),
    }
    for damage, apply in damages.items():
        apply(entry)
        notes = []
        classifier = load_classifier(path, note=notes.append)
        assert classifier.runner.prepare("cpu") == "cpu" and isinstance(classifier.runner.engine, OnnxRunner)
        pixels = _val_pixels(tiny_dataset / "val", classifier.preprocess)
        np.testing.assert_allclose(classifier.probabilities(pixels), expected, atol=1e-5, err_msg=damage)
        assert any("exporting edited.pt" in note for note in notes), (damage, notes)


def _set_metadata(path: Path, value: str) -> None:
    import onnx

    model = onnx.load(str(path))
    onnx.helper.set_model_props(model, {"fer_cli": value})
    onnx.save(model, str(path))


def test_pruning_deletes_only_the_entries_fer_made(tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("FER_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(checkpoint_runner, "KEEP", 1)
    folder = tmp_path / "cache" / "onnx"
    folder.mkdir(parents=True)
    theirs = ["mobilenet-v2.onnx", "clip-vit-b32.onnx", "resnet50-v1-7.onnx", "a-v1-ort.onnx"]
    for name in theirs:
        (folder / name).write_bytes(b"someone else's model")
    (folder / ".export-settings").mkdir()  # a folder of theirs, hours old, named as fer's private ones once were
    os.utime(folder / ".export-settings", (0, 0))
    for i in range(2):
        onnx_form(_copy_with(tiny_checkpoint, tmp_path / f"p{i}.pt", temperature=1.0 + i))
    assert {name for name in theirs if (folder / name).exists()} == set(theirs)
    assert (folder / ".export-settings").is_dir()


def test_a_command_never_evicts_the_entries_it_uses(tiny_checkpoint, tmp_path, monkeypatch):
    """An ensemble of more checkpoints than the cache keeps: exported on the first run only, whatever the order."""
    monkeypatch.setenv("FER_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(checkpoint_runner, "KEEP", 2)
    members = [_copy_with(tiny_checkpoint, tmp_path / f"e{i}.pt", temperature=1.0 + i) for i in range(3)]
    notes = []
    first = [onnx_form(member, notes.append) for member in members]
    assert len(notes) == 3 and all(entry.exists() for entry in first)
    notes.clear()
    assert [onnx_form(member, notes.append) for member in members] == first and notes == []


def test_earlier_commands_entries_beyond_keep_are_pruned(tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("FER_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(checkpoint_runner, "KEEP", 2)
    entries = []
    for i in range(3):  # three commands, one after another, each with one checkpoint
        monkeypatch.setattr(checkpoint_runner, "_used_here", set())
        entries.append(onnx_form(_copy_with(tiny_checkpoint, tmp_path / f"m{i}.pt", temperature=1.0 + i)))
    assert sorted((tmp_path / "cache" / "onnx").glob("*.onnx")) == sorted(entries[1:])


def test_a_stopped_first_export_holds_up_only_its_own_checkpoint_and_not_for_ever(tiny_checkpoint, tmp_path,
                                                                                   monkeypatch):  # fmt: skip
    """Ctrl-Z on one first run: another checkpoint's first run goes ahead; the same checkpoint's says that it waits,
    once, and runs with torch when the wait is over."""
    import signal
    import threading

    cache = tmp_path / "cache"
    monkeypatch.setenv("FER_CACHE_DIR", str(cache))
    stopped_one = _copy_with(tiny_checkpoint, tmp_path / "stopped.pt", temperature=1.1)
    other = _copy_with(tiny_checkpoint, tmp_path / "other.pt", temperature=1.2)
    script = (
        "import os, signal, sys\n"
        "from fer_cli.models.checkpoint_runner import onnx_form\n"
        "def stop(message):\n"
        "    print(message, flush=True)\n"
        "    os.kill(os.getpid(), signal.SIGSTOP)\n"  # stopped inside its export, as Ctrl-Z does
        f"onnx_form({str(stopped_one)!r}, stop)\n"
    )
    environment = {**os.environ, "FER_CACHE_DIR": str(cache), "PYTHONPATH": str(REPO)}
    first = subprocess.Popen([sys.executable, "-c", script], env=environment, stdout=subprocess.PIPE, text=True)
    try:
        assert "exporting stopped.pt" in first.stdout.readline()

        def in_thread(function, *args):
            outcome = {}

            def run():
                try:
                    outcome["value"] = function(*args)
                except Exception as error:  # the test looks at it
                    outcome["error"] = error

            thread = threading.Thread(target=run, daemon=True)
            thread.start()
            thread.join(timeout=120)
            assert not thread.is_alive(), f"{function.__name__} is still waiting"
            return outcome

        assert in_thread(onnx_form, other).get("value") is not None  # not held up by the stopped one
        monkeypatch.setattr(checkpoint_runner, "EXPORT_WAIT_S", 1.0)
        notes = []
        runner = CheckpointRunner(stopped_one, notes.append)
        assert in_thread(runner.prepare, "cpu").get("value") == "cpu"
        assert type(runner.engine).__name__ == "TorchRunner"
        waits = [note for note in notes if "waiting" in note]
        assert len(waits) == 1 and "stopped.pt" in waits[0], notes
        assert any("runs with torch" in note for note in notes), notes
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
