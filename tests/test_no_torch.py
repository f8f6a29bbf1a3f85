"""On a CPU, the commands that predict and describe never import torch (seconds to import): `fer predict`
of face crops and photos with the default model, a checkpoint or an exported model, `fer models`, `fer
serve`, `--help`, `--version`. Each runs in a fresh process whose first `torch` (and `torchvision`) on the
path records that it was imported, and fails. The checkpoints' ONNX forms are in the cache first (their
export, once per checkpoint, is torch's job)."""

import importlib.util
import json
import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from fer_cli.models.zoo import load_classifier, resolve_model

REPO = Path(__file__).resolve().parents[1]
FACE, PHOTO = REPO / "examples" / "happy.png", REPO / "examples" / "astronaut.jpg"


@pytest.fixture
def no_torch(tmp_path, tiny_checkpoint):
    """An environment whose torch and torchvision record their import in a file, then refuse it."""
    for package in ("torch", "torchvision"):
        (tmp_path / "poisoned" / package).mkdir(parents=True)
        (tmp_path / "poisoned" / package / "__init__.py").write_text(
            "import os, traceback\n"
            "with open(os.environ['IMPORTED'], 'a') as log:\n"
            f"    log.write('{package} imported from:\\n' + ''.join(traceback.format_stack()))\n"
            f"raise ImportError('{package} must not be imported here')\n"
        )
    for path in (resolve_model(None).path, tiny_checkpoint):  # their ONNX forms, made by torch beforehand
        load_classifier(path).runner.prepare("cpu")
    log = tmp_path / "imported.txt"
    environment = {**os.environ, "PYTHONPATH": f"{tmp_path / 'poisoned'}{os.pathsep}{REPO}", "IMPORTED": str(log)}
    environment.pop("OMP_NUM_THREADS", None)
    return environment, log


def fer(environment, *arguments, timeout=300) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "fer_cli", *map(str, arguments)]
    return subprocess.run(command, env=environment, capture_output=True, text=True, timeout=timeout, cwd=REPO)


def test_predicting_face_crops_and_photos_never_imports_torch(no_torch, tiny_checkpoint, image_folder):
    environment, log = no_torch
    crop = fer(environment, "predict", FACE, "-f", "jsonl")  # the default model
    assert crop.returncode == 0, crop.stderr
    (row,) = map(json.loads, crop.stdout.splitlines())
    assert row["label"] in row["probabilities"] and row["detector_score"] is None  # whichever weights ship

    photo = fer(environment, "predict", PHOTO, "-f", "jsonl")  # the face detector, then the default model
    assert photo.returncode == 0, photo.stderr
    (row,) = map(json.loads, photo.stdout.splitlines())
    assert row["faces"] == 1 and row["detector_score"] > 0.99 and row["label"]

    several = fer(environment, "predict", image_folder, PHOTO, "-m", tiny_checkpoint, "--tta", "flip", "-j", "2")
    assert several.returncode == 0, several.stderr
    assert len(several.stdout.splitlines()) == 3  # piped: JSON lines

    exported = fer(environment, "predict", PHOTO, "-m", "fast", "--faces", "detect", "-f", "csv")
    assert exported.returncode == 0, exported.stderr
    assert not log.exists(), log.read_text()


def test_describing_models_and_the_help_never_import_torch(no_torch, tiny_checkpoint):
    environment, log = no_torch
    listing = fer(environment, "models")
    assert listing.returncode == 0, listing.stderr
    assert "resnet18" in listing.stdout and "mini_xception" in listing.stdout and "fast" in listing.stdout
    one = fer(environment, "models", tiny_checkpoint)
    assert one.returncode == 0 and "calm, frown, smile" in one.stdout, one.stderr
    for arguments in (["--help"], ["--version"], ["predict", "--help"], ["train", "--help"]):
        done = fer(environment, *arguments)
        assert done.returncode == 0, done.stderr
    assert not log.exists(), log.read_text()


@pytest.mark.skipif(importlib.util.find_spec("fastapi") is None, reason="the serve extra is not installed")
def test_serving_never_imports_torch(no_torch, tiny_checkpoint):
    environment, log = no_torch
    command = [sys.executable, "-m", "fer_cli", "serve", "--port", "0", "-m", str(tiny_checkpoint), "--no-access-log"]
    server = subprocess.Popen(command, env=environment, stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        for line in server.stderr:  # waits for the line said once the socket listens
            found = re.search(r"serving .* on (http://\S+/)", line)
            if found:
                break
        else:
            pytest.fail(f"the server ended: {server.wait()}")
        boundary = "fer-test-boundary"
        head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"happy.png\"\r\n"
                "Content-Type: image/png\r\n\r\n")  # fmt: skip
        body = head.encode() + FACE.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
        request = urllib.request.Request(
            found.group(1) + "predict", body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            (record,) = json.loads(response.read())
        assert record["path"] == "happy.png" and record["label"] in ("calm", "frown", "smile")
    finally:
        server.terminate()
        server.wait(timeout=60)
    assert not log.exists(), log.read_text()


def test_ensembles_never_import_torch(no_torch, tiny_checkpoint, image_folder, labelled_dir):
    environment, log = no_torch
    done = fer(environment, "ensemble", image_folder, "-m", tiny_checkpoint, "-m", tiny_checkpoint, "-f", "jsonl")
    assert done.returncode == 0, done.stderr
    done = fer(environment, "ensemble", labelled_dir, "-m", tiny_checkpoint, "-f", "json")  # scoring a labelled folder
    assert done.returncode == 0, done.stderr
    assert not log.exists(), log.read_text()
