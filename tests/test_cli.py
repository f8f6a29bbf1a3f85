"""Every command through Typer's CliRunner: exit codes, stdout data, stderr messages."""

import csv
import hashlib
import io
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from fer_cli.cli.app import app

from .synthetic import CLASSES, make_labelled_folder


@pytest.fixture
def runner():
    return CliRunner()


def invoke(runner, *args, stdin=None):
    return runner.invoke(app, [str(a) for a in args], input=stdin, prog_name="fer")


def test_predict_jsonl_has_every_probability(runner, image_folder, tiny_checkpoint):
    result = invoke(runner, "predict", image_folder, "--model", tiny_checkpoint, "--format", "jsonl", "-j", 0)
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["path"] for r in rows] == [str(image_folder / "a.png"), str(image_folder / "nested" / "b.jpg")]
    for row in rows:
        assert row["error"] is None and row["label"] in CLASSES
        assert set(row["probabilities"]) == set(CLASSES)
        assert sum(row["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
        assert row["confidence"] == max(row["probabilities"].values())
    assert [r["label"] for r in rows] == ["calm", "smile"]  # the tiny model learned the synthetic classes
    assert "2 of 2 inputs predicted" in result.stderr


def test_predict_with_test_time_augmentation(runner, image_folder, tiny_checkpoint):
    def rows(*tta):
        result = invoke(runner, "predict", image_folder, "--model", tiny_checkpoint, "-f", "jsonl", "-j", 0, *tta)
        assert result.exit_code == 0, result.output
        return [json.loads(line) for line in result.stdout.splitlines()]

    plain, flipped, cropped = rows(), rows("--tta", "flip"), rows("--tta", "crops")
    for row in flipped + cropped:
        assert sum(row["probabilities"].values()) == pytest.approx(1.0, abs=1e-3)
    assert [r["probabilities"] for r in cropped] != [r["probabilities"] for r in plain]
    result = invoke(runner, "predict", image_folder, "--model", tiny_checkpoint, "--tta", "tencrop")
    assert result.exit_code == 2 and "tencrop" in result.stderr


def test_predict_json_csv_and_table(runner, image_folder, tiny_checkpoint):
    as_json = invoke(runner, "predict", image_folder / "a.png", "-m", tiny_checkpoint, "-f", "json", "-j", 0)
    assert as_json.exit_code == 0
    assert [row["label"] for row in json.loads(as_json.stdout)] == ["calm"]

    as_csv = invoke(runner, "predict", image_folder, "-m", tiny_checkpoint, "-f", "csv", "-j", 0)
    rows = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert list(rows[0]) == [
        *["path", "face", "faces", "x", "y", "w", "h", "detector_score", "label", "confidence"],
        *[*CLASSES, "model", "error", "warning"],
    ]
    assert [(row["face"], row["faces"], row["w"], row["detector_score"]) for row in rows] == [("0", "1", "48", "")] * 2
    assert [row["label"] for row in rows] == ["calm", "smile"]

    table = invoke(runner, "predict", image_folder, "-m", tiny_checkpoint, "-f", "table", "-j", 0)
    assert table.exit_code == 0 and "smile" in table.stdout and "confidence" in table.stdout


def test_predict_reads_paths_from_stdin_and_writes_output_files(runner, image_folder, tiny_checkpoint, tmp_path):
    stdin = f"{image_folder / 'nested' / 'b.jpg'}\n{image_folder / 'a.png'}\n"
    out = tmp_path / "results" / "out.csv"
    result = invoke(runner, "predict", "-", "-m", tiny_checkpoint, "--output", out, "-j", 0, stdin=stdin)
    assert result.exit_code == 0 and result.stdout == ""
    rows = list(csv.DictReader(out.open()))  # format chosen from the extension
    assert [row["label"] for row in rows] == ["smile", "calm"]


def test_bad_inputs_are_reported_and_good_ones_still_predicted(runner, bad_files, tiny_checkpoint, tmp_path):
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    sources = [
        bad_files["corrupt"],
        bad_files["good"],
        bad_files["empty"],
        bad_files["text"],
        empty_dir,
        tmp_path / "missing.png",
    ]
    result = invoke(runner, "predict", *sources, "-m", tiny_checkpoint, "-f", "jsonl", "-j", 0)
    assert result.exit_code == 1
    rows = {row["path"]: row for row in map(json.loads, result.stdout.splitlines())}
    assert rows[str(bad_files["good"])]["label"] in CLASSES and rows[str(bad_files["good"])]["error"] is None
    assert rows[str(bad_files["empty"])]["error"] == "empty file"
    assert rows[str(bad_files["text"])]["error"] == "not an image (or an unsupported format)"
    assert (
        rows[str(bad_files["corrupt"])]["error"].startswith("cannot read image")
        or "not an image" in rows[str(bad_files["corrupt"])]["error"]
    )
    assert rows[str(empty_dir)]["error"] == f"no images in folder {empty_dir}"
    assert rows[str(tmp_path / "missing.png")]["error"].startswith("no such file or folder")
    assert all(rows[p]["label"] is None for p in rows if p != str(bad_files["good"]))
    assert "1 of 6 inputs predicted" in result.stderr
    assert f"skipped {bad_files['text']}" in result.stderr
    assert "Traceback" not in result.output


def test_usage_errors_exit_2_without_traceback(runner, image_folder, tmp_path):
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    for args, message in [
        (["predict", image_folder, "-m", foreign], "not a fer_cli checkpoint"),
        (["predict", image_folder, "-m", tmp_path / "absent.pt"], "no such checkpoint"),
        (["predict", image_folder, "-m", "no-such-model"], "no shipped model named 'no-such-model'"),
        (["predict", image_folder, "--device", "tpu"], "unknown device 'tpu'"),
        (["train", tmp_path / "nowhere", "--out", tmp_path / "m.pt"], "no such file or folder"),
        (["train", image_folder, "--arch", "vgg99", "--out", tmp_path / "m.pt"], "unknown architecture 'vgg99'"),
    ]:
        result = invoke(runner, *args)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.output and result.stdout == ""
    empty_stdin = invoke(runner, "predict", "-", stdin="")
    assert empty_stdin.exit_code == 2 and "no input paths" in empty_stdin.stderr
    bad_option = invoke(runner, "predict", image_folder, "--format", "yaml")
    assert bad_option.exit_code == 2


def test_ensemble_scores_models_and_votes_as_json(runner, labelled_dir, tiny_checkpoint, second_checkpoint):
    result = invoke(
        runner,
        "ensemble",
        "--weighted",
        labelled_dir,
        "-m",
        tiny_checkpoint,
        "-m",
        second_checkpoint,
        "-f",
        "json",
        "-j",
        0,
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["images"] == 24 and report["class_names"] == CLASSES
    assert [m["name"] for m in report["models"]] == ["tiny", "other"]
    assert [e["name"] for e in report["ensembles"]] == [
        "majority vote",
        "mean probability",
        "weighted (val accuracy)",
        "weighted per class (val F1)",
    ]
    tiny = report["models"][0]["metrics"]
    assert tiny["accuracy"] >= 0.9
    assert set(tiny["per_class"]) == set(CLASSES) and sum(v["support"] for v in tiny["per_class"].values()) == 24
    assert sum(map(sum, tiny["confusion_matrix"])) == 24
    assert 0 <= tiny["mean_confidence_correct"] <= 1
    assert "never fitted on the images scored here" in report["weights_source"]
    fixed = np.array(report["errors_fixed_by"])
    assert fixed.shape == (2, 2) and fixed[0, 0] == fixed[1, 1] == 0 and fixed.max() <= 1


def test_ensemble_tables(runner, labelled_dir, tiny_checkpoint, second_checkpoint):
    result = invoke(
        runner, "ensemble", labelled_dir, "-m", tiny_checkpoint, "-m", second_checkpoint, "--weighted", "-j", 0
    )
    assert result.exit_code == 0, result.output
    for title in (
        "labelled images",
        "Recall per class",
        "Per-class results of",
        "Confusion matrix of",
        "conf. when",
        "errors that the column model gets right",
        "ECE: expected calibration error",  # the line that says what the columns mean
    ):
        assert title in result.stdout
    assert "weighted per class (val F1)" in result.stdout
    # Both models were selected on other images (their val/), not on these.
    assert "selected on" not in result.stdout


def test_ensemble_on_unlabelled_images_predicts_with_the_vote(runner, image_folder, tiny_checkpoint, second_checkpoint):
    result = invoke(
        runner, "ensemble", image_folder, "-m", tiny_checkpoint, "-m", second_checkpoint, "-f", "jsonl", "-j", 0
    )
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(rows) == 2 and rows[0]["model"] == "ensemble: mean probability"
    assert sum(rows[0]["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)


def test_ensemble_refuses_models_with_other_classes(runner, labelled_dir, tiny_checkpoint, tmp_path):
    from fer_cli.engine.train.config import TrainConfig
    from fer_cli.engine.train.run import train

    other = make_labelled_folder(tmp_path / "other", per_class=4, classes=["calm", "frown", "wink"])
    train(
        TrainConfig(
            data=str(other), out=str(tmp_path / "wink.pt"), arch_options={"width": 4}, epochs=1, workers=0, device="cpu"
        )
    )
    result = invoke(runner, "ensemble", labelled_dir, "-m", tiny_checkpoint, "-m", tmp_path / "wink.pt")
    assert result.exit_code == 2
    assert "predict different classes" in result.stderr and "wink" in result.stderr


def test_train_command_writes_checkpoint_history_and_resumes(runner, tiny_dataset, tmp_path):
    out = tmp_path / "cli.pt"
    args = [
        "train",
        tiny_dataset,
        "--out",
        out,
        "--arch",
        "vgg",
        "--arch-option",
        "width=4",
        "--epochs",
        "2",
        "--batch-size",
        "16",
        "--augment",
        "flip,erase",
        "--balance",
        "loss",
        "--workers",
        "0",
        "--device",
        "cpu",
    ]
    result = invoke(runner, *args)
    assert result.exit_code == 0, result.output
    assert out.exists() and out.with_name("cli.history.csv").exists()
    assert result.stdout == ""  # training talks on stderr only
    assert "epoch 2/2" in result.stderr
    again = invoke(runner, "train", "--resume", "--out", out, "--workers", "0")
    assert again.exit_code == 0 and "already done" in again.stderr
    bad = invoke(runner, "train", tiny_dataset, "--out", out, "--augment", "blur")
    assert bad.exit_code == 2 and "unknown augmentation blur" in bad.output


def test_models_lists_architectures_and_weights(runner):
    result = invoke(runner, "models")
    assert result.exit_code == 0
    for name in ("vgg", "resnet18", "mini_xception"):
        assert name in result.stdout


def test_shards_together_give_exactly_the_unsharded_run(runner, tmp_path, tiny_checkpoint):
    folder = make_labelled_folder(tmp_path / "archive", per_class=5)  # 15 images, sorted by path
    (folder / "broken.png").write_bytes(b"")

    codes = []

    def rows(*extra):
        result = invoke(runner, "predict", folder, "-m", tiny_checkpoint, "-f", "jsonl", "-j", 0, *extra)
        codes.append(result.exit_code)
        return [json.loads(line) for line in result.stdout.splitlines()]

    whole = rows()
    shards = [rows("--shard", f"{i}/4") for i in range(1, 5)]
    assert [len(s) for s in shards] == [4, 4, 4, 4]
    assert codes == [1, 1, 0, 0, 0]  # broken.png sorts first: only the first shard meets it
    joined = [row for shard in shards for row in shard]
    assert [(r["path"], r["label"], r["error"]) for r in joined] == [(r["path"], r["label"], r["error"]) for r in whole]
    for a, b in zip(joined, whole):
        assert a["probabilities"] == pytest.approx(b["probabilities"], abs=1e-5)


@pytest.mark.parametrize("spec", ["0/4", "5/4", "2", "a/b", "1/0"])
def test_bad_shard_specs_are_usage_errors(runner, image_folder, tiny_checkpoint, spec):
    result = invoke(runner, "predict", image_folder, "-m", tiny_checkpoint, "--shard", spec)
    assert result.exit_code == 2 and "--shard" in result.output


def test_more_shards_than_inputs_leaves_some_empty_and_that_is_fine(runner, image_folder, tiny_checkpoint):
    result = invoke(runner, "predict", image_folder, "-m", tiny_checkpoint, "-f", "json", "--shard", "1/5", "-j", 0)
    assert result.exit_code == 0 and json.loads(result.stdout) == []


def test_an_rgb_model_reads_grayscale_files_as_rgb(runner, tiny_dataset, image_folder, tmp_path):
    from fer_cli.engine.train.run import train

    from .synthetic import tiny_config

    out = tmp_path / "rgb.pt"
    train(tiny_config(tiny_dataset, out, channels=3, epochs=1))
    result = invoke(runner, "predict", image_folder, "-m", out, "-f", "jsonl", "-j", 0)  # a.png is grayscale
    assert result.exit_code == 0, result.output
    assert len(result.stdout.splitlines()) == 2


def test_a_reading_worker_that_dies_is_a_clear_error_not_a_traceback():
    import os

    from fer_cli.engine.predict import in_order
    from fer_cli.errors import FerError

    with pytest.raises(FerError, match="--workers 0"):  # each "batch" makes its worker exit at once
        list(in_order(os._exit, [1, 2, 3], 1, id, None))


# --- a command line that explains itself ---------------------------------------------------------


@pytest.mark.parametrize("command", ["predict", "ensemble", "train", "models", "calibrate", "export", "serve"])
def test_every_command_shows_examples_and_readable_usage(runner, command):
    result = invoke(runner, command, "--help")
    assert result.exit_code == 0
    assert "Examples:" in result.stdout and f"fer {command}" in result.stdout
    assert "<bool>" not in result.stdout  # flags take no value
    usage = result.stdout.splitlines()[0]
    assert "{" not in usage and usage.startswith(f"Usage: fer {command} [OPTIONS]")
    assert max(len(line) for line in result.stdout.splitlines()) <= 80  # examples included


def test_help_says_what_it_means(runner):
    top = invoke(runner, "--help")
    assert "--version" in top.stdout and "--install-completion" in top.stdout and "Examples:" in top.stdout
    assert max(len(line) for line in top.stdout.splitlines()) <= 80
    train_help = " ".join(invoke(runner, "train", "--help").stdout.split())  # (wrapped at the terminal's width)
    assert "pip install '.[tensorboard]'" in train_help  # brackets not eaten
    assert "fer-cli[" not in train_help + invoke(runner, "export", "--help").stdout  # no extra of a package not on PyPI
    predict_help = invoke(runner, "predict", "--help").stdout
    assert "Usage: fer predict [OPTIONS] SOURCE..." in predict_help
    ensemble_help = invoke(runner, "ensemble", "--help").stdout
    assert "Usage: fer ensemble [OPTIONS] FOLDER" in ensemble_help
    assert "every shipped checkpoint" in " ".join(ensemble_help.split())  # what --model defaults to
    assert "ECE" in ensemble_help and "conf. when wrong" in ensemble_help  # the report's columns


def test_version(runner):
    from fer_cli import __version__

    version = invoke(runner, "--version")
    assert version.exit_code == 0 and version.stdout.startswith(f"fer {__version__} (torch ")


def complete(runner, words: str) -> list[str]:
    """What bash's completion offers for ``words`` (the cursor after the last one), as the script that
    `fer --install-completion` installs asks for it. (`--show-completion` itself detects the calling
    shell from the process tree, so its test failed when the suite's parent was not a shell.)"""
    env = {"_FER_COMPLETE": "complete_bash", "COMP_WORDS": words, "COMP_CWORD": str(words.count(" "))}
    result = runner.invoke(app, [], prog_name="fer", env=env)
    assert result.exit_code == 0, result.output
    return result.stdout.split()


def test_shell_completion_offers_commands_options_and_choices(runner):
    assert complete(runner, "fer pre") == ["predict"]
    assert complete(runner, "fer predict --for") == ["--format"]
    assert complete(runner, "fer predict --format ") == ["table", "json", "jsonl", "csv"]


def test_models_describes_one_model_with_its_classes(runner, tiny_checkpoint):
    result = invoke(runner, "models", tiny_checkpoint)
    assert result.exit_code == 0, result.output
    assert "calm, frown, smile (in output order)" in result.stdout
    assert "48x48 grayscale" in result.stdout and "val images" in result.stdout
    assert invoke(runner, "models", "no-such-model").exit_code == 2


def test_models_describes_a_model_validated_on_images_held_out_of_its_data(runner, labelled_dir, tmp_path):
    """Such a model has no validation folder to hash (it crashed `fer models NAME` once), and says what it
    was trained on and which model it learnt from."""
    from fer_cli.engine.train.run import train

    from .synthetic import tiny_config

    teacher = tmp_path / "teacher.pt"
    train(tiny_config(labelled_dir, teacher, epochs=1))
    student = tmp_path / "student.pt"
    train(tiny_config(labelled_dir, student, epochs=1, teachers=(str(teacher),), init=str(teacher)))
    result = invoke(runner, "models", student)
    assert result.exit_code == 0, result.output
    facts = {
        label.strip(): value.strip() for label, value in (line.split("  ", 1) for line in result.stdout.splitlines())
    }
    assert "held out" in facts["validated on"] and facts["trained on"] == str(labelled_dir)
    assert facts["distilled from"] == f"{teacher} (weight 0.9, temperature 4.0)"
    digest = hashlib.sha256(teacher.read_bytes()).hexdigest()
    assert facts["initialised from"] == f"{teacher}, not shipped (sha256 {digest[:12]}…)"  # a file to tell it by


def test_a_face_too_small_to_read_is_labelled_with_a_warning(runner, tmp_path, tiny_checkpoint):
    from PIL import Image

    Image.new("L", (1, 1), 128).save(tmp_path / "dot.png")
    Image.fromarray(np.full((48, 48), 120, dtype=np.uint8)).save(tmp_path / "face.png")
    result = invoke(runner, "predict", tmp_path, "-m", tiny_checkpoint, "-f", "jsonl", "-j", 0)
    assert result.exit_code == 0, result.output
    rows = {json.loads(line)["path"]: json.loads(line) for line in result.stdout.splitlines()}
    dot = rows[str(tmp_path / "dot.png")]
    assert dot["label"] in CLASSES and "1x1 px" in dot["warning"]  # kept, with the reason to doubt it
    assert rows[str(tmp_path / "face.png")]["warning"] is None
    assert f"warning {tmp_path / 'dot.png'}: 1x1 px" in result.stderr


def test_newlines_in_file_names_keep_messages_and_table_rows_whole(runner, tmp_path, tiny_checkpoint):
    from PIL import Image

    from .synthetic import synthetic_face

    Image.fromarray(synthetic_face(0, 5)).save(tmp_path / "two\nlines.png")
    (tmp_path / "bad\nname [red].png").write_text("not an image")
    table = invoke(runner, "predict", tmp_path, "-m", tiny_checkpoint, "-f", "table", "-j", 0)
    assert table.exit_code == 1
    assert "two\\nlines.png" in table.stdout and "bad\\nname [red].png" in table.stdout
    skipped = [line for line in table.stderr.splitlines() if line.startswith("skipped")]
    assert skipped == [f"skipped {tmp_path}/bad\\nname [red].png: not an image (or an unsupported format)"]
    as_json = invoke(runner, "predict", tmp_path, "-m", tiny_checkpoint, "-f", "json", "-j", 0)
    assert {row["path"] for row in json.loads(as_json.stdout)} == {
        str(tmp_path / "two\nlines.png"),
        str(tmp_path / "bad\nname [red].png"),
    }
