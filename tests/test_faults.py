"""The faults an adversarial run found, one test each: links that loop, outputs a failing run must
not destroy, signals, a run that must not replace an earlier one, folders that cannot be written,
and the smaller ones (huge images, unknown output names, damaged files, shipped weights swapped)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from fer_cli.cli.app import app
from fer_cli.errors import FerError
from fer_cli.inputs.images import MissingInput, iter_image_paths, read_image

from .synthetic import make_labelled_folder, synthetic_face, tiny_config

REPO = Path(__file__).resolve().parents[1]


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture
def loop(tmp_path) -> Path:
    """A folder with two links back to itself, one from a subfolder to its grandparent, and a dead link."""
    root = tmp_path / "loop"
    (root / "sub").mkdir(parents=True)
    Image.fromarray(synthetic_face(0, 1)).save(root / "x.png")
    Image.fromarray(synthetic_face(1, 2)).save(root / "sub" / "y.png")
    (root / "a").symlink_to(".")
    (root / "b").symlink_to(".")
    (root / "sub" / "up").symlink_to("../..")
    (root / "dead.png").symlink_to("nowhere.png")
    (root / "notes.heic").write_bytes(b"not read")
    return root


class Hung(Exception):
    """Not an OSError: glob swallows those, and a looping glob must not swallow its own deadline."""


@pytest.fixture
def deadline():
    """Fail a test that hangs (the symlink loop did) instead of hanging the suite."""

    def expired(*_):
        raise Hung("did not finish in 20 s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(20)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("pattern", ["{root}", "{root}/**/*.png", "{root}/**", "{root}/*/*.png"])
def test_links_that_loop_are_walked_once(loop, pattern, deadline):
    found = list(iter_image_paths([pattern.format(root=loop)]))
    images = [item for item in found if isinstance(item, str)]
    assert sorted(Path(p).resolve() for p in images) == sorted({Path(p).resolve() for p in images})  # no repeats
    assert {Path(p).name for p in images} <= {"x.png", "y.png"}
    if pattern.startswith("{root}/**") or pattern == "{root}":
        assert {Path(p).name for p in images} == {"x.png", "y.png"}
        assert [item.reason for item in found if isinstance(item, MissingInput)] == [
            "broken link (its target does not exist)"
        ]


def test_a_glob_in_the_current_folder_and_hidden_names(tmp_path, monkeypatch, deadline):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "d" / ".hidden").mkdir(parents=True)
    for name in ("d/a.png", "d/.b.png", "d/.hidden/c.png"):
        Image.fromarray(synthetic_face(0, 1)).save(tmp_path / name)
    assert list(iter_image_paths(["**/*.png"])) == [os.path.join("d", "a.png")]  # glob's rule: no dot names
    assert list(iter_image_paths(["d/.*.png"])) == [os.path.join("d", ".b.png")]


def test_folders_say_what_they_passed_over(loop):
    notes = []
    list(iter_image_paths([str(loop)], on_note=notes.append))
    assert notes == [f"{loop}: passed over 1 file(s) without an image extension (notes.heic)"]


def test_a_loop_through_the_cli_gives_each_image_once(loop, tiny_checkpoint, deadline):
    done = invoke("predict", f"{loop}/**/*.png", "-m", tiny_checkpoint, "-f", "jsonl", "--workers", "0")
    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert sorted(Path(r["path"]).name for r in records) == ["dead.png", "x.png", "y.png"]
    assert done.exit_code == 1  # the dead link is an input that could not be read


def test_a_run_that_fails_before_any_result_leaves_the_output_file_alone(image_folder, tiny_checkpoint, tmp_path):
    out = tmp_path / "out.jsonl"
    out.write_text("keep\n")
    done = invoke("predict", image_folder, "-m", tiny_checkpoint, "--device", "no-such-device", "-o", out)
    assert done.exit_code == 2
    assert out.read_text() == "keep\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["inputs", "out.jsonl"]  # no temporary file left


def test_a_failure_in_the_stream_leaves_the_output_file_alone(image_folder, tiny_checkpoint, tmp_path, monkeypatch):
    from fer_cli.engine import predict

    def no_device(*args, **kwargs):
        raise FerError("device 'cuda' requested but CUDA is not available here; use --device cpu")
        yield  # a generator, as the real stream

    monkeypatch.setattr(predict, "predict_stream", no_device)
    for suffix in ("jsonl", "json", "csv"):
        out = tmp_path / f"out.{suffix}"
        out.write_text("keep\n")
        done = invoke("predict", image_folder, "-m", tiny_checkpoint, "-o", out)
        assert done.exit_code == 2 and out.read_text() == "keep\n"


def test_an_interrupted_run_keeps_a_valid_file_of_what_it_finished(
    image_folder, tiny_checkpoint, tmp_path, monkeypatch
):
    from fer_cli.engine import predict

    real_stream = predict.predict_stream

    def interrupted_after_one_batch(*args, **kwargs):
        stream = real_stream(*args, **{**kwargs})
        yield next(iter(stream))
        raise KeyboardInterrupt

    monkeypatch.setattr(predict, "predict_stream", interrupted_after_one_batch)
    out = tmp_path / "out.json"
    out.write_text("keep\n")
    done = invoke("predict", image_folder, "-m", tiny_checkpoint, "-o", out, "--batch-size", "1", "--workers", "0")
    assert done.exit_code == 130
    assert len(json.loads(out.read_text())) == 1  # a closed JSON array of the one finished input
    assert "results of 1 of 2 inputs kept" in done.stderr


def _predict_process(tmp_path: Path, *extra: str) -> subprocess.Popen:
    """A real `fer predict` over many photos that need the face detector (slow enough to stop midway)."""
    photos = tmp_path / "photos"
    photos.mkdir()
    base = Image.fromarray(synthetic_face(0, 1)).resize((320, 320))
    for i in range(600):  # minutes of work at 12 views a face on a CPU: still running when it is stopped
        base.save(photos / f"p{i:03d}.png")
    command = ["predict", str(photos), "--faces", "detect", "--tta", "crops", "--device", "cpu", "--batch-size", "2"]
    return subprocess.Popen(
        [sys.executable, "-m", "fer_cli", *command, *extra],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # a background job's SIGINT is ignored
    )


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as listing:
        return [int(child) for child in listing.read().split()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split(")")[-1].split()[0] != "Z"


def _gone_within(pids: list[int], seconds: float) -> bool:
    stop = time.monotonic() + seconds
    while time.monotonic() < stop:
        if not any(_alive(pid) for pid in pids):
            return True
        time.sleep(0.1)
    return False


def _wait_for_workers(process: subprocess.Popen) -> list[int]:
    stop = time.monotonic() + 300  # a loaded machine imports torch slowly
    while time.monotonic() < stop and process.poll() is None:
        workers = _children(process.pid)
        if len(workers) >= 2:
            return workers
        time.sleep(0.1)
    pytest.fail(f"no workers started: {process.communicate()[1]}")


def _finished_lines(out: Path) -> int:
    """Whole lines written so far to the run's hidden temporary file beside OUT."""
    return sum(path.read_bytes().count(b"\n") for path in out.parent.glob(f".{out.name}.*.tmp"))


def _wait_for_a_first_result(process: subprocess.Popen, out: Path) -> None:
    """Until the run has flushed one result: a condition, not a time (a loaded machine takes minutes)."""
    stop = time.monotonic() + 300
    while time.monotonic() < stop:
        assert process.poll() is None, f"finished before it could be stopped: {process.communicate()[1]}"
        if _finished_lines(out):
            return
        time.sleep(0.1)
    pytest.fail("no result within 5 minutes")


linux_only = pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads /proc (Linux)")


@linux_only
@pytest.mark.parametrize("stop", ["SIGTERM", "SIGINT"])
def test_a_stopped_run_leaves_no_worker_and_no_traceback(tmp_path, stop):
    process = _predict_process(tmp_path, "-o", "out.jsonl", "--workers", "2")
    workers = _wait_for_workers(process)
    _wait_for_a_first_result(process, tmp_path / "out.jsonl")
    os.killpg(process.pid, getattr(signal, stop))  # as a terminal's Ctrl-C or a service manager does
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + getattr(signal, stop)
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    assert _gone_within(workers, 30)
    kept = (tmp_path / "out.jsonl").read_text().splitlines()
    assert kept and f"results of {len(kept)} of 600 inputs kept" in stderr
    for line in kept:
        json.loads(line)  # whatever was finished, whole


def _double(batch):
    return [2 * x for x in batch]


def _quiet_worker(state):
    pass


def test_a_signal_while_the_pool_starts_is_what_the_caller_sees_and_no_worker_is_left(monkeypatch):
    """SIGTERM landing inside ``ProcessPoolExecutor.submit`` as it starts its manager thread (seen once in a quiet
    suite run): shutting the pool down then raised RuntimeError('cannot join thread before it is started'), a
    traceback in place of the quiet stop, and its workers were never told to end."""
    import multiprocessing
    from concurrent.futures import process as futures_process

    from fer_cli.engine.predict import in_order
    from fer_cli.errors import Interrupted

    def interrupted_start(thread):
        raise Interrupted(signal.SIGTERM)  # what cli.app._stop raises from the signal handler, there

    monkeypatch.setattr(futures_process._ExecutorManagerThread, "start", interrupted_start)
    with pytest.raises(Interrupted):
        list(in_order(_double, [[1], [2], [3]], 2, _quiet_worker, None))
    deadline = time.monotonic() + 30
    while multiprocessing.active_children() and time.monotonic() < deadline:  # reaped, not just signalled
        time.sleep(0.05)
    assert not multiprocessing.active_children()


@linux_only
def test_a_run_stopped_before_its_first_result_leaves_no_file(tmp_path):
    process = _predict_process(tmp_path, "-o", "out.jsonl", "--workers", "2")
    workers = _wait_for_workers(process)
    os.killpg(process.pid, signal.SIGTERM)  # as soon as it reads: almost always before a first result
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143 and "Traceback" not in stderr, stderr
    assert _gone_within(workers, 30)
    assert not list(tmp_path.glob(".out.jsonl.*.tmp"))  # never a temporary file left behind
    if (tmp_path / "out.jsonl").exists():  # a result came first after all: whole lines only
        for line in (tmp_path / "out.jsonl").read_text().splitlines():
            json.loads(line)
    else:
        assert "kept in" not in stderr  # nothing finished: no file, by design, and nothing claimed


@linux_only
def test_workers_die_with_a_killed_main_process(tmp_path):
    process = _predict_process(tmp_path, "-o", "out.jsonl", "--workers", "2")
    workers = _wait_for_workers(process)
    process.kill()
    process.communicate(timeout=60)
    assert _gone_within(workers, 10)
    assert not (tmp_path / "out.jsonl").exists()  # never renamed: nothing half-written under its name
    # the next run to the same file clears the dead run's temporary file
    leftovers = list(tmp_path.glob(".out.jsonl.*.tmp"))
    assert leftovers
    Image.fromarray(synthetic_face(0, 1)).save(tmp_path / "one.png")
    from fer_cli.outputs.destination import ResultsFile

    with ResultsFile(tmp_path / "out.jsonl") as stream:
        stream.write("{}\n")
    assert not any(path.exists() for path in leftovers)


def test_train_refuses_to_replace_an_earlier_run(tiny_dataset, tmp_path):
    from fer_cli.engine.train.run import train

    out = tmp_path / "a.pt"
    train(tiny_config(tiny_dataset, out, epochs=1))
    before = out.read_bytes()
    done = invoke("train", tiny_dataset, "--epochs", "1", "--out", out, "--workers", "0", "--device", "cpu")
    assert done.exit_code == 2
    assert "a.pt, a.history.csv, a.last.pt" in done.stderr and "--overwrite" in done.stderr
    assert "--resume" in done.stderr
    assert out.read_bytes() == before
    train(tiny_config(tiny_dataset, out, epochs=1, overwrite=True, seed=3))
    assert out.read_bytes() != before


def test_annotating_into_a_folder_that_cannot_be_written(image_folder, tiny_checkpoint, tmp_path, monkeypatch):
    from fer_cli.outputs import annotate

    def refused(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(annotate.tempfile, "TemporaryFile", refused)
    done = invoke("predict", image_folder, "-m", tiny_checkpoint, "--annotate", tmp_path / "ro", "--workers", "0")
    assert done.exit_code == 2 and "cannot write to" in done.stderr and "Permission denied" in done.stderr
    assert done.stdout == ""
    monkeypatch.undo()

    monkeypatch.setattr(annotate.Annotator, "annotate", lambda self, path, rows: refused())
    done = invoke("predict", image_folder, "-m", tiny_checkpoint, "--annotate", tmp_path / "full", "--workers", "0")
    assert done.exit_code == 1 and "2 annotated copies could not be written" in done.stderr
    assert len(done.stdout.splitlines()) == 2  # the predictions themselves are all there


def test_a_huge_image_gives_no_raw_warning(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # a 40x40 image is then between warning and refusal
    path = tmp_path / "big.png"
    Image.new("L", (40, 40), 128).save(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_image(path, channels=1).size == (40, 40)
    Image.new("L", (50, 50), 128).save(path)  # over twice the limit: refused
    with pytest.raises(Image.DecompressionBombError):
        read_image(path, channels=1)


def test_an_output_name_without_a_known_format_is_a_usage_error(image_folder, tiny_checkpoint, tmp_path):
    done = invoke("predict", image_folder, "-m", tiny_checkpoint, "-o", tmp_path / "out.dat")
    assert done.exit_code == 2 and "cannot tell the format" in done.output
    assert not (tmp_path / "out.dat").exists()
    done = invoke("predict", image_folder, "-m", tiny_checkpoint, "-o", tmp_path / "out.dat", "-f", "csv")
    assert done.exit_code == 0 and (tmp_path / "out.dat").read_text().startswith("path,face")


def test_a_damaged_shipped_model_is_refused(tmp_path, monkeypatch):
    shipped = tmp_path / "weights"
    shipped.mkdir()
    source = REPO / "weights"
    shutil.copy(source / "vgg32_ferplus.pt", shipped)
    shutil.copy(source / "SHA256SUMS", shipped)
    monkeypatch.setenv("FER_WEIGHTS_DIR", str(shipped))
    from fer_cli.models.zoo import resolve_model

    assert resolve_model("vgg32_ferplus").name == "vgg32_ferplus"
    with open(shipped / "vgg32_ferplus.pt", "r+b") as stream:
        stream.seek(5000)
        stream.write(b"\x00\x01")  # two bytes inside the weights: torch would load it silently
    done = invoke("predict", REPO / "examples", "-m", "vgg32_ferplus")
    assert done.exit_code == 2
    assert "is not the file that was shipped" in done.stderr and "Traceback" not in done.output
    own = tmp_path / "mine"
    own.mkdir()
    shutil.copy(source / "vgg32_ferplus.pt", own / "renamed.pt")  # not in any list: your own model
    assert resolve_model(str(own / "renamed.pt")).name == "renamed"


def test_a_labelled_folder_with_a_loop_is_scored_and_an_empty_class_is_a_clear_error(
    tmp_path, tiny_checkpoint, deadline
):
    root = make_labelled_folder(tmp_path / "labelled", per_class=4)
    (root / "calm" / "again").symlink_to("..")
    (root / "calm" / "self").symlink_to(".")
    done = invoke("ensemble", root, "-m", tiny_checkpoint, "-f", "json", "--workers", "0")
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout)["images"] == 12
    for image in (root / "frown").iterdir():
        image.unlink()
    done = invoke("ensemble", root, "-m", tiny_checkpoint, "-f", "json", "--workers", "0")
    assert done.exit_code == 2 and "frown has no images" in done.stderr and "Traceback" not in done.output


def test_a_damaged_file_gives_no_raw_library_warning(tmp_path):
    """Found by the fuzzing: a TIFF cut short made PIL print 'Corrupt EXIF data' on stderr."""
    image = Image.fromarray(synthetic_face(0, 1))
    image.save(tmp_path / "whole.tiff")
    (tmp_path / "cut.tiff").write_bytes((tmp_path / "whole.tiff").read_bytes()[:14])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(OSError):
            read_image(tmp_path / "cut.tiff", channels=1)  # an error for this file, not a warning for the user


def test_a_reader_that_goes_away_ends_the_run_quietly(tiny_checkpoint, tmp_path):
    """`fer predict ... | head -1`: the pipe closes early; fer stops with SIGPIPE's status (141, as the shell's own
    tools), not 1 ('some inputs failed'), and prints nothing about it."""
    for i in range(400):
        Image.fromarray(synthetic_face(i % 3, i)).save(tmp_path / f"f{i:03d}.png")
    process = subprocess.Popen(
        [sys.executable, "-m", "fer_cli", "predict", str(tmp_path), "-m", str(tiny_checkpoint), "-f", "csv",
         "--batch-size", "4", "-j", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert process.stdout.readline().startswith(b"path,")
    process.stdout.close()  # as head does after its line
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=300) == 141
    assert "Traceback" not in stderr and "Broken pipe" not in stderr and "error" not in stderr.lower()


STOPPED_WHILE_FORKING = """
import os, signal, sys

def stop_while_the_pool_forks():  # an at-fork hook, as logging's: where Python swallows a handler's exception
    frame, fired = sys._getframe(), stop_while_the_pool_forks.__dict__
    while frame is not None and not fired:
        if frame.f_code.co_name == "_launch_processes":  # the reading workers, not another fork
            fired["once"] = True
            os.killpg(0, signal.SIGTERM)  # as a service manager stops the group: the new worker gets it too
        frame = frame.f_back

os.register_at_fork(after_in_parent=stop_while_the_pool_forks)
sys.argv = ["fer", *sys.argv[1:]]
from fer_cli.cli.app import main
main()
"""


@linux_only
def test_a_stop_signal_while_the_workers_are_forked_is_the_stop(image_folder, tiny_checkpoint):
    """Issue 33, item 17: SIGTERM landing while the pool forks its workers ran cli.app._stop inside an at-fork hook,
    which swallowed its exception; the worker died of the same signal and the run ended as 'a reading worker process
    died' (exit 2). Put there deterministically, it must be the stop: 143, no worker left."""
    command = ["predict", str(image_folder), "-m", str(tiny_checkpoint), "-j", "2", "-b", "1", "-f", "jsonl",
               "--device", "cpu"]  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-c", STOPPED_WHILE_FORKING, *command], capture_output=True, text=True, timeout=300,
        start_new_session=True, env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert done.returncode == 143, done.stderr
    assert "stopped by signal 15" in done.stderr
    assert "worker process died" not in done.stderr and "Traceback" not in done.stderr
    assert "Exception ignored" not in done.stderr
