"""Learning from votes (FER+): reading votes CSVs, what is left out, the loss, the metrics, the head kept by
class name, training and scoring against votes."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from typer.testing import CliRunner

from fer_cli.cli.app import app
from fer_cli.engine.metrics import summarize_votes
from fer_cli.engine.train.run import train
from fer_cli.errors import SourceError
from fer_cli.inputs.votes import outcome, read_votes
from fer_cli.models.checkpoint import build_model, read_checkpoint

from .synthetic import CLASSES, make_labelled_folder, synthetic_face, tiny_config

FERPLUS_HEADER = (
    "split,path,fer2013_label,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,not_a_face"
)


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def write(path, text: str):
    path.write_text(text)
    return path


# --- reading votes ---------------------------------------------------------------------------------


def test_a_ferplus_csv_is_read_with_this_tools_class_names(tmp_path):
    votes = write(
        tmp_path / "v.csv",
        f"{FERPLUS_HEADER}\n"
        "train,train/angry/fer00000.png,angry,4,0,0,1,3,2,0,0,0,0\n"
        "val,val/happy/fer00001.png,happy,0,10,0,0,0,0,0,0,0,0\n"
        "test,test/x.png,sad,0,0,0,10,0,0,0,0,0,0\n",  # another split: never read
    )
    table = read_votes(votes)
    assert table.class_names == ["angry", "contempt", "disgust", "fear", "happy", "neutral", "sad", "surprise"]
    assert table.images == ["train/angry/fer00000.png", "val/happy/fer00001.png", "test/x.png"]
    assert table.splits == ["train", "val", None]
    assert [table.class_names[g] for g in table.given] == ["angry", "happy", "sad"]
    assert table.votes[0].tolist() == [3, 0, 2, 0, 0, 4, 1, 0]  # in the sorted classes' order
    assert list(table.rows("train")) == [0] and list(table.rows("val")) == [1]


def test_rows_mostly_unknown_or_not_a_face_are_left_out_and_ties_have_no_majority():
    # classes a, b; then unknown and not-a-face
    votes = np.array([[6, 4], [5, 5], [2, 2], [4, 0], [3, 3], [0, 0]], dtype=float)
    no_class = np.array([[0, 0], [0, 0], [6, 0], [4, 2], [3, 1], [0, 10]], dtype=float)
    result = outcome(votes, no_class)
    assert result.keep.tolist() == [0, 1, 3, 4]  # row 2: unknown first; row 5: nothing but not-a-face
    assert result.left_out == {"mostly unknown or not a face": 2}
    # row 3: a ties with unknown at 4: kept (as many votes for a), but no majority; row 4: a three-way tie
    assert result.majority.tolist() == [0, -1, -1, -1]
    assert np.allclose(result.distributions, [[0.6, 0.4], [0.5, 0.5], [1.0, 0.0], [0.5, 0.5]])


@pytest.mark.parametrize(
    "text, message",
    [
        ("path,a\nx.png,1\n", "column\\(s\\) of votes"),
        ("image,a,b,notes\nx.png,1,2,blurry\n", "notes hold something other than numbers"),
        ("a,b\n1,2\n", "no image column"),
        ("path,a,b\nx.png,1,-2\n", "line 2: votes must be non-negative"),
        ("path,anger,angry\nx.png,1,2\n", "names a class twice"),
        ("", "is empty"),
    ],
)
def test_bad_votes_files_are_one_clear_error(tmp_path, text, message):
    with pytest.raises(SourceError, match=message):
        read_votes(write(tmp_path / "v.csv", text))


# --- the loss and the metrics ----------------------------------------------------------------------


def test_the_loss_is_plain_cross_entropy_for_one_hot_votes_and_hand_computed_otherwise():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    labels = torch.tensor([0, 2])
    criterion = nn.CrossEntropyLoss()  # what fer train uses, with the votes' shares as targets
    one_hot = torch.nn.functional.one_hot(labels, 3).float()
    assert criterion(logits, one_hot).item() == pytest.approx(criterion(logits, labels).item(), rel=1e-6)
    # (0, ln 3) -> probabilities (1/4, 3/4); votes 7 and 3 of 10: -(0.7 ln 1/4 + 0.3 ln 3/4)
    shares = torch.tensor([[0.7, 0.3]])
    expected = -(0.7 * math.log(0.25) + 0.3 * math.log(0.75))
    assert criterion(torch.tensor([[0.0, math.log(3)]]), shares).item() == pytest.approx(expected, rel=1e-6)


def test_vote_metrics_count_the_majority_images_and_say_how_many_had_none():
    votes = np.array([[0.6, 0.4, 0.0], [0.5, 0.5, 0.0], [0.1, 0.1, 0.8], [0.2, 0.7, 0.1]])
    majority = np.array([0, -1, 2, 1])
    probs = np.array([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.1, 0.2, 0.7], [0.6, 0.3, 0.1]])  # answers 0, 1, 2, 0
    metrics = summarize_votes(votes, majority, probs, ["a", "b", "c"])
    assert metrics["count"] == 3 and metrics["accuracy"] == pytest.approx(2 / 3)  # the tie is left out
    assert metrics["balanced_accuracy"] == pytest.approx((1 + 0 + 1) / 3)
    assert metrics["votes"]["without_majority"] == 1 and metrics["votes"]["with_majority"] == 3
    assert metrics["votes"]["tagger_agreement"] == pytest.approx((0.6 + 0.5 + 0.8 + 0.2) / 4)
    assert metrics["votes"]["plurality_accuracy"] == pytest.approx(3 / 4)  # the tie counts: b had the most too


# --- training ----------------------------------------------------------------------------------------


def _voted_images(root, count: int = 36, seed: int = 0, names=CLASSES) -> list[list]:
    """Synthetic faces in ROOT/img/, and rows of votes for them: ten taggers, most of them for the face's class."""
    rng = np.random.default_rng(seed)
    (root / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(count):
        label = i % len(names)
        Image.fromarray(synthetic_face(label, seed * 1000 + i)).save(root / "img" / f"{seed}_{i}.png")
        votes = [0] * len(names)
        votes[label] = int(rng.integers(6, 10))
        votes[(label + 1) % len(names)] = 10 - votes[label]
        rows.append([f"img/{seed}_{i}.png", *votes, 0])
    return rows


def _votes_csv(root, train_rows, val_rows, names=CLASSES):
    path = root / "votes.csv"
    with open(path, "w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(["split", "path", *names, "unknown"])
        out.writerows(["train", *row] for row in train_rows)
        out.writerows(["val", *row] for row in val_rows)
    return path


@pytest.fixture(scope="module")
def voted(tmp_path_factory):
    """A folder of synthetic faces and a votes CSV over it: 72 to train (one of them mostly 'unknown'), 12 to validate."""
    root = tmp_path_factory.mktemp("voted")
    train_rows = _voted_images(root, 72, seed=1)
    train_rows[0][1:] = [0, 0, 3, 7]  # mostly unknown: left out
    val_rows = _voted_images(root, 12, seed=2)
    val_rows[0][1:] = [5, 5, 0, 0]  # a tie at the top: no majority
    return root, _votes_csv(root, train_rows, val_rows)


def test_training_on_votes_records_what_it_learnt_and_left_out(voted, tmp_path, capsys):
    from rich.console import Console

    root, votes = voted
    out = tmp_path / "m.pt"
    log = Console(stderr=True, width=300)
    best = train(tiny_config(root, out, votes=str(votes), epochs=6), log)
    said = capsys.readouterr().err
    assert "training: 71 images (1 mostly unknown or not a face)" in said
    assert "majority of the votes on the 11 with one (1 tied at the top)" in said
    assert "val_bal" in said and "agree" in said
    assert best["votes"]["without_majority"] == 1 and best["count"] == 11
    assert best["accuracy"] > 0.9  # the synthetic classes are easy
    checkpoint = read_checkpoint(out)
    labels = checkpoint["provenance"]["labels"]
    assert labels["kind"] == "votes" and labels["targets"] == "distribution"
    assert labels["left_out"]["training"] == {"mostly unknown or not a face": 1}
    assert "majority" in labels["selected_on"]
    assert checkpoint["provenance"]["val_images"]["count"] == 12  # the validation images, by content
    assert "against the majority" in checkpoint["metrics"]["calibration"]["fitted_on"]


def test_majority_targets_and_the_label_weight(voted, tmp_path):
    root, votes = voted
    with pytest.raises(SourceError, match="no label column"):
        train(tiny_config(root, tmp_path / "a.pt", votes=str(votes), label_weight=0.3, epochs=1))
    best = train(tiny_config(root, tmp_path / "b.pt", votes=str(votes), targets="majority", epochs=2))
    assert read_checkpoint(tmp_path / "b.pt")["provenance"]["labels"]["targets"] == "majority"
    assert best["count"] == 11


def test_the_target_mixes_in_the_images_own_label():
    from fer_cli.engine.train.config import TrainConfig
    from fer_cli.engine.train.data import training_targets
    from fer_cli.inputs.data import LabelledTensors

    data = LabelledTensors(
        torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.tensor([0, 1]), ["a", "b"], "x",
        votes=torch.tensor([[0.6, 0.4], [0.2, 0.8]]), majority=torch.tensor([0, 1]), given=torch.tensor([1, 1]),
    )  # fmt: skip
    config = TrainConfig(data="x", out="y", votes="v.csv", label_weight=0.3)
    assert torch.allclose(training_targets(data, config), torch.tensor([[0.42, 0.58], [0.14, 0.86]]))
    majority = TrainConfig(data="x", out="y", votes="v.csv", targets="majority")
    assert torch.equal(training_targets(data, majority), torch.tensor([[1.0, 0.0], [0.0, 1.0]]))


def test_votes_beside_a_fer2013_csv_pair_up_by_row(tmp_path):
    """FER+'s fer2013new.csv beside Kaggle's fer2013.csv: same rows, same order; unnamed rows are unlabelled."""
    pixels = lambda label, i: " ".join(map(str, synthetic_face(label % 3, i).ravel()))  # noqa: E731
    usage = ["Training"] * 9 + ["PublicTest"] * 3 + ["PrivateTest"]
    emotions = [0, 3, 6] * 4 + [0]  # angry, happy, neutral in FER2013's numbering
    fer2013 = tmp_path / "fer2013.csv"
    fer2013.write_text("emotion,pixels,Usage\n" + "".join(
        f"{e},{pixels(i, i)},{u}\n" for i, (e, u) in enumerate(zip(emotions, usage))))  # fmt: skip
    header = "Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF\n"
    lines = []
    for i, (e, u) in enumerate(zip(emotions, usage)):
        votes = {0: "0,0,0,0,9,1,0,0", 3: "0,9,0,0,0,0,1,0", 6: "9,0,0,1,0,0,0,0"}[e]
        name = "" if i == 4 else f"fer{i:07d}.png"  # FER+ left this one out
        lines.append(f"{u},{name},{votes},0,0\n")
    new = write(tmp_path / "fer2013new.csv", header + "".join(lines))
    out = tmp_path / "plus.pt"
    best = train(tiny_config(fer2013, out, votes=str(new), epochs=3, label_weight=0.2))
    checkpoint = read_checkpoint(out)
    assert len(checkpoint["class_names"]) == 8 and "contempt" in checkpoint["class_names"]
    assert best["count"] == 3 and checkpoint["provenance"]["labels"]["label_weight"] == 0.2
    assert checkpoint["provenance"]["val_data"].endswith("(val rows)")  # the PublicTest rows validate


# --- --init keeps the head rows by class ---------------------------------------------------------------


def test_init_keeps_head_rows_by_name_and_alias_and_adds_new_ones(voted, tiny_checkpoint, tmp_path, capsys):
    """The tiny model knows calm, frown, smile. Votes for smile, calm, frown (another order) and a new class: the
    kept rows move with their class, the new one starts fresh, and the log says which is which."""
    from rich.console import Console

    root = tmp_path / "other"
    names = ["smile", "calm", "frown", "wink"]
    rows = _voted_images(root, 8, seed=3)
    rows = [[row[0], row[3], row[1], row[2], 0, 0] for row in rows]  # columns in the new order, wink: 0
    votes = root / "v.csv"
    with open(votes, "w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(["split", "path", *names, "unknown"])
        out.writerows(["train", *row] for row in rows)
        out.writerows(["val", *row] for row in rows)
        out.writerow(["train", rows[0][0], 0, 0, 0, 10, 0])  # one image to have a wink at all
    out = tmp_path / "tuned.pt"
    train(tiny_config(root, out, votes=str(votes), init=str(tiny_checkpoint), epochs=1, lr=0.0),
          Console(stderr=True, width=300))  # fmt: skip
    said = capsys.readouterr().err
    assert "3 row(s) kept by class (calm, frown, smile)" in said and "new, untrained: wink" in said
    source, tuned = read_checkpoint(tiny_checkpoint), read_checkpoint(out)
    assert tuned["class_names"] == ["calm", "frown", "smile", "wink"]
    head = [name for name in source["state_dict"] if name.endswith(".weight")][-1]
    assert torch.equal(tuned["state_dict"][head][:3].float(), source["state_dict"][head].float())  # lr 0: as they were


def test_classes_in_another_order_start_where_they_were(tiny_checkpoint):
    """Before any training, a network started from a model for a permutation of its classes gives each class
    exactly the model's logit for it (the old --init re-seeded the whole head: chance)."""
    from fer_cli.engine.train.fine_tuning import start_from
    from fer_cli.models.architectures import create_model

    source = read_checkpoint(tiny_checkpoint)
    order = ["smile", "calm", "frown"]
    network = create_model(source["arch"], 3, 1, **source["model_config"])
    start_from(network, source, order)
    images = torch.from_numpy(np.stack([synthetic_face(i % 3, 50 + i) for i in range(6)]))[:, None].float()
    images = (images / 255 - source["preprocess"]["mean"][0]) / source["preprocess"]["std"][0]
    with torch.no_grad():
        old, new = build_model(source).eval()(images), network.eval()(images)
    assert torch.allclose(new, old[:, [CLASSES.index(name) for name in order]], atol=1e-5)


def test_aliases_keep_the_head_of_a_class_under_another_name(tmp_path, tiny_checkpoint):
    from fer_cli.engine.train.fine_tuning import classifier_head, start_from
    from fer_cli.models.architectures import create_model

    source = read_checkpoint(tiny_checkpoint)
    source["class_names"] = ["angry", "happy", "sad"]  # the tiny model, renamed
    network = create_model(source["arch"], 4, 1, **source["model_config"])
    start_from(network, source, ["anger", "happiness", "sadness", "contempt"])
    head = classifier_head(network)
    old = build_model(source).state_dict()[f"{head}.weight"]
    assert torch.equal(network.state_dict()[f"{head}.weight"][:3], old.float())


# --- scoring against votes -----------------------------------------------------------------------------


def test_fer_ensemble_scores_models_against_a_votes_file(voted, tiny_checkpoint, second_checkpoint):
    root, votes = voted
    done = invoke("ensemble", root, "--votes", votes, "--split", "val", "-m", tiny_checkpoint, "-m",
                  second_checkpoint, "-f", "json", "-j", 0)  # fmt: skip
    assert done.exit_code == 0, done.output
    report = json.loads(done.stdout)
    assert report["images"] == 11 and report["votes"]["images_without_majority"] == 1
    assert report["votes"]["split"] == "val"
    first = report["models"][0]["metrics"]
    assert first["votes"]["images"] == 12 and 0 <= first["votes"]["tagger_agreement"] <= 1
    assert any("11 of 12 images with one (1 tied at the top)" in note for note in report["notes"])
    table = invoke("ensemble", root, "--votes", votes, "--split", "val", "-m", tiny_checkpoint, "-j", 0)
    assert table.exit_code == 0 and "tagger" in table.stdout and "balanced" in table.stdout
    assert "11 images with a majority of the votes" in table.stdout


def test_fer_ensemble_votes_usage_errors(voted, tiny_checkpoint, tmp_path):
    root, votes = voted
    done = invoke("ensemble", root, "--split", "val", "-m", tiny_checkpoint)
    assert done.exit_code == 2 and "--votes" in done.stderr
    done = invoke("ensemble", root, "--votes", votes, "--split", "holdout", "-m", tiny_checkpoint)
    assert done.exit_code == 2 and "not a split" in done.stderr
    done = invoke("ensemble", tmp_path / "nowhere", "--votes", votes, "-m", tiny_checkpoint)
    assert done.exit_code == 2 and "no such folder" in done.stderr


def test_fer_export_scores_the_exported_model_against_votes(voted, tiny_checkpoint, tmp_path):
    pytest.importorskip("onnxruntime")
    from fer_cli.models.zoo import load_classifier

    root, votes = voted
    out = tmp_path / "m.onnx"
    done = invoke("export", tiny_checkpoint, out, "--val", root, "--votes", votes, "--split", "val", "-j", 0)
    assert done.exit_code == 0, done.output
    assert "against the majority of the votes" in done.stderr
    exported = load_classifier(str(out))
    assert exported.metrics["votes"]["images"] == 12 and "balanced_accuracy" in exported.metrics
    import onnx

    from fer_cli.models.exported import METADATA_KEY

    meta = json.loads({p.key: p.value for p in onnx.load(str(out)).metadata_props}[METADATA_KEY])
    assert "majority of the votes" in meta["metrics_source"] and meta["provenance"]["val_path"] == str(root)
    for wrong, message in [(["--votes", votes], "--val"), (["--val", root, "--split", "val"], "--votes")]:
        done = invoke("export", tiny_checkpoint, tmp_path / "x.onnx", *wrong)
        assert done.exit_code == 2 and message in done.stderr and not (tmp_path / "x.onnx").exists()


# --- every training feature keeps working with votes ------------------------------------------------------


def test_votes_with_mixup_balancing_and_resume_end_where_an_uninterrupted_run_does(voted, tmp_path, monkeypatch):
    from fer_cli.engine.train.run_files import last_path

    from .synthetic import interrupt_in_epoch

    root, votes = voted
    settings = dict(votes=str(votes), epochs=3, mixup=0.4, cutmix=1.0, balance="sampler", augment="flip,shift")
    whole, parts = tmp_path / "whole.pt", tmp_path / "parts.pt"
    train(tiny_config(root, whole, **settings))
    interrupt_in_epoch(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(root, parts, **settings))
    assert read_checkpoint(last_path(parts))["epoch"] == 1
    train(tiny_config(root, parts, resume=True, **settings))
    a, b = read_checkpoint(whole), read_checkpoint(parts)
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    assert a["metrics"]["accuracy"] == b["metrics"]["accuracy"]


def test_votes_with_teachers(voted, tmp_path):
    root, votes = voted
    teacher = tmp_path / "teacher.pt"
    train(tiny_config(root, teacher, votes=str(votes), epochs=4))
    best = train(tiny_config(root, tmp_path / "student.pt", votes=str(votes), epochs=3, teachers=(str(teacher),)))
    assert read_checkpoint(tmp_path / "student.pt")["provenance"]["distilled_from"]["teachers"][0]["sha256"]
    assert best["votes"]["images"] == 12


def test_votes_under_torchrun_gather_every_validation_image_once(voted, tmp_path):
    from .test_distributed import torchrun, train_args

    root, votes = voted
    out = tmp_path / "ddp.pt"
    result = torchrun(*train_args(root, out), "--votes", str(votes))
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = read_checkpoint(out)["metrics"]
    assert metrics["votes"]["images"] == 12 and metrics["votes"]["without_majority"] == 1 and metrics["count"] == 11


def test_the_prior_correction_is_chosen_on_validation_and_stored(tmp_path):
    """A model that over-answers the common class: the correction lifts the rare one, and the classifier applies it."""
    from fer_cli.engine.calibration import fit_prior_correction
    from fer_cli.models.classifier import Classifier

    rng = np.random.default_rng(0)
    labels = np.array([0] * 150 + [1] * 50)
    logits = np.stack([np.full(200, 1.0), np.where(labels == 1, 0.8, -1.0)], axis=1) + rng.normal(0, 0.2, (200, 2))
    prior = [0.9, 0.1]
    report = fit_prior_correction(logits, labels, prior)
    assert report["before"]["balanced_accuracy"] < 0.6 and report["after"]["balanced_accuracy"] > 0.9
    assert 0 < report["tau"] <= 1.5 and report["after"]["accuracy"] > report["before"]["accuracy"]
    assert fit_prior_correction(logits[:50], labels[:50], prior)["tau"] == 0  # too few images: none
    assert fit_prior_correction(logits, labels, [0.5, 0.5])["tau"] == 0  # balanced: nothing to correct

    class Fixed:
        def logits(self, pixels):
            return logits.astype(np.float32)

    model = Classifier("m", "x", Fixed(), ["a", "b"], {}, class_prior=prior, prior_correction=report["tau"])
    assert (model.probabilities(np.zeros((200, 1, 2, 2), np.uint8)).argmax(1) == labels).mean() > 0.9


def test_fine_tuning_has_its_own_defaults(tiny_dataset, tiny_checkpoint, tmp_path):
    from fer_cli.engine.train.config import TrainConfig
    from fer_cli.engine.train.fine_tuning import new_head_share
    from fer_cli.models.checkpoint import read_checkpoint as read

    fresh = TrainConfig(data=str(tiny_dataset), out="m.pt").with_defaults()
    assert (fresh.epochs, fresh.optimizer, fresh.learning_rate, fresh.freeze_epochs) == (30, "sgd", 0.01, 0)
    tuning = TrainConfig(data=str(tiny_dataset), out="m.pt", init=str(tiny_checkpoint))
    assert new_head_share(tuning, read(tiny_checkpoint)) == 0  # the same classes
    tuned = tuning.with_defaults(0.0)
    assert (tuned.epochs, tuned.optimizer, tuned.learning_rate, tuned.freeze_epochs) == (10, "adamw", 0.0005, 0)
    assert tuning.with_defaults(0.75).freeze_epochs == 1  # most of the head is new: it learns alone first
    given = TrainConfig(data="d", out="m.pt", init="x", epochs=3, optimizer="sgd", lr=0.1, freeze_epochs=0)
    assert given.with_defaults(1.0) == given  # what the user says stands
    other = make_labelled_folder(tmp_path / "other", per_class=2, classes=["calm", "grin", "wink", "yawn"])
    assert new_head_share(replace(tuning, data=str(other)), read(tiny_checkpoint)) == 0.75


def test_calibrate_against_votes(voted, tiny_checkpoint, tmp_path):
    root, votes = voted
    out = tmp_path / "calibrated.pt"
    done = invoke("calibrate", tiny_checkpoint, root, "--votes", votes, "--out", out, "-j", 0)
    assert done.exit_code == 0, done.output
    calibration = read_checkpoint(out)["metrics"]["calibration"]
    assert calibration["images"] == 71 + 11  # every row with a majority: the tie and the unknown one left out
    assert "against the majority of the votes" in calibration["fitted_on"]


def test_calibrate_sets_the_prior_correction_anew(voted, tmp_path):
    root, votes = voted
    model = tmp_path / "m.pt"
    train(tiny_config(root, model, votes=str(votes), epochs=2, prior_correction="none"))
    assert read_checkpoint(model).get("prior_correction", 0.0) == 0.0
    given = tmp_path / "given.pt"
    done = invoke("calibrate", model, root, "--votes", votes, "--prior-correction", "0.5", "-o", given, "-j", 0)
    assert done.exit_code == 0, done.output
    stored = read_checkpoint(given)
    assert stored["prior_correction"] == 0.5 and stored["metrics"]["prior_correction"]["rule"].startswith("given")
    assert stored["metrics"]["votes"]["images"] == 71 + 12  # the corrected model's figures, on these images
    kept = tmp_path / "kept.pt"
    assert invoke("calibrate", given, root, "--votes", votes, "-o", kept, "-j", 0).exit_code == 0
    assert read_checkpoint(kept)["prior_correction"] == 0.5  # keep: the temperature alone
    done = invoke("calibrate", given, root, "--votes", votes, "--prior-correction", "lots", "-o", kept, "-j", 0)
    assert done.exit_code == 2 and "--prior-correction" in done.output


# --- votes files that cannot be trusted (issue 33) -----------------------------------------------------


def _votes_over(root, rows, names=CLASSES, header_tail: str = ""):
    """A votes CSV in ROOT naming ``rows`` ([split, path, *votes]), with ``header_tail`` after its header."""
    path = root / "votes.csv"
    with open(path, "w", newline="") as handle:
        handle.write(",".join(["split", "path", *names]) + header_tail + "\n")
        csv.writer(handle).writerows(rows)
    return path


PREPROCESS = {"size": 48, "channels": 1}


@pytest.mark.parametrize("outside", ["../../x.png", "img/../../x.png", "/etc/x.png"])
def test_votes_paths_that_leave_the_images_folder_are_refused(tmp_path, outside):
    votes = _votes_over(tmp_path, [["train", "img/a.png", 1, 0, 0], ["train", outside, 0, 1, 0]])
    with pytest.raises(SourceError, match=r"line 3: .* outside"):
        read_votes(votes)


def test_a_fifo_named_by_a_votes_file_is_unreadable_at_once(tmp_path):
    """A named pipe opened for reading waits for a writer: fer train hung. Only regular files are opened."""
    import os
    import threading

    from fer_cli.inputs.data import read_voted_images

    rows = [["train", *row] for row in _voted_images(tmp_path, 6)]
    os.mkfifo(tmp_path / "img" / "pipe.png")
    rows.append(["train", "img/pipe.png", 9, 1, 0, 0])
    votes = _votes_csv(tmp_path, [row[1:] for row in rows], [])
    done = {}
    reader = threading.Thread(
        target=lambda: done.update(data=read_voted_images(tmp_path, read_votes(votes), None, PREPROCESS)), daemon=True
    )
    reader.start()
    reader.join(60)
    if reader.is_alive():  # let the hung reader go before failing
        os.close(os.open(tmp_path / "img" / "pipe.png", os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("reading the images waited on a named pipe")
    assert len(done["data"]) == 6 and done["data"].left_out == {"unreadable or missing": 1}


@pytest.mark.parametrize("value", ["1.7e308", "inf", "nan", "1e10"])
def test_vote_counts_must_be_bounded_finite_numbers(tmp_path, value):
    votes = write(tmp_path / "v.csv", f"path,a,b\nx.png,1,2\ny.png,{value},1\n")
    with pytest.raises(SourceError, match="line 3: votes must be"):
        read_votes(votes)


def test_training_without_a_validation_majority_is_refused_before_decoding(tmp_path, monkeypatch):
    from fer_cli.engine.train import data as data_module

    rows = _voted_images(tmp_path, 12)
    val = [[row[0], 5, 5, 0, 0] for row in rows[:3]]  # every validation image tied at the top
    votes = _votes_csv(tmp_path, rows, val)

    def decoded(*args, **kwargs):
        raise AssertionError("decoded before refusing")

    monkeypatch.setattr(data_module, "read_voted_images", decoded)
    with pytest.raises(SourceError, match="no validation image with a majority"):
        train(tiny_config(tmp_path, tmp_path / "m.pt", votes=str(votes), epochs=1))


def test_a_trailing_comma_makes_no_class_and_an_unnamed_column_with_votes_is_refused(tmp_path):
    table = read_votes(write(tmp_path / "v.csv", "path,a,b,\nx.png,1,2,\ny.png,0,3,\n"))
    assert table.class_names == ["a", "b"]
    assert any("without a name" in note for note in table.notes)
    with pytest.raises(SourceError, match="column 3 has no name"):
        read_votes(write(tmp_path / "w.csv", "path,a,,b\nx.png,1,4,2\n"))


def test_class_names_with_control_characters_are_refused(tmp_path):
    with pytest.raises(SourceError, match="control character"):
        read_votes(write(tmp_path / "v.csv", "path,a,b\x1b[31m\nx.png,1,2\n"))


def test_class_names_with_rich_markup_are_printed_as_they_are(tmp_path, capsys):
    from rich.console import Console

    names = ["[/]", "calm", "contempt[/b]"]
    rows = _voted_images(tmp_path, 24, names=names)
    votes = _votes_csv(tmp_path, rows, rows[:6], names=names)
    train(tiny_config(tmp_path, tmp_path / "m.pt", votes=str(votes), epochs=1), Console(stderr=True, width=300))
    assert "classes [/], calm, contempt[/b]" in capsys.readouterr().err
    assert read_checkpoint(tmp_path / "m.pt")["class_names"] == names


def test_a_class_never_voted_for_keeps_a_floored_prior(tmp_path):
    """A class with no training votes has prior 0: log 0 made every answer NaN once corrected (and numpy warned)."""
    import warnings

    from fer_cli.models.classifier import Classifier

    class Fixed:
        def logits(self, pixels):
            return np.array([[2.0, 1.0, 0.0], [0.0, 1.0, 2.0]], dtype=np.float32)

    model = Classifier("m", "x", Fixed(), ["a", "b", "c"], {}, class_prior=[0.7, 0.3, 0.0], prior_correction=1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        probs = model.probabilities(np.zeros((2, 1, 2, 2), np.uint8))
    assert np.isfinite(probs).all() and probs.argmax(1).tolist() == [2, 2]  # the unseen class: rare, not impossible


def _fer_plus_pair(root, names: bool = True, drop: int | None = None):
    """Kaggle's fer2013.csv (13 rows: 9 Training, 3 PublicTest, 1 PrivateTest) and FER+'s votes for it, row by row;
    ``drop``: the votes file lacks that row, so every later row is one out of step."""
    pixels = lambda label, i: " ".join(map(str, synthetic_face(label % 3, i).ravel()))  # noqa: E731
    usage = ["Training"] * 9 + ["PublicTest"] * 3 + ["PrivateTest"]
    emotions = [0, 3, 6] * 4 + [0]
    fer2013 = root / "fer2013.csv"
    fer2013.write_text("emotion,pixels,Usage\n" + "".join(
        f"{e},{pixels(i, i)},{u}\n" for i, (e, u) in enumerate(zip(emotions, usage))))  # fmt: skip
    header = "Usage," + ("Image name," if names else "") + "neutral,happiness,surprise,sadness,anger,disgust,fear,"
    lines = []
    for i, (e, u) in enumerate(zip(emotions, usage)):
        votes = {0: "0,0,0,0,9,1,0,0", 3: "0,9,0,0,0,0,1,0", 6: "9,0,0,1,0,0,0,0"}[e]
        if i != drop:
            lines.append(f"{u}," + (f"fer{i:07d}.png," if names else "") + f"{votes},0,0\n")
    new = write(root / "fer2013new.csv", header + "contempt,unknown,NF\n" + "".join(lines))
    return fer2013, new


def test_ferplus_rows_out_of_step_with_fer2013_are_refused(tmp_path):
    from fer_cli.inputs.data import read_voted_images

    fer2013, new = _fer_plus_pair(tmp_path, drop=5)
    with pytest.raises(SourceError, match=r"line 7: image fer0000006.png is not row 5 .*out of step"):
        read_votes(new, by_row=True)
    fer2013, new = _fer_plus_pair(tmp_path, names=False, drop=5)
    table = read_votes(new, by_row=True)
    with pytest.raises(SourceError, match=r"line 10 is val, but .*line 10 is training.*out of step"):
        read_voted_images(fer2013, table, "train", PREPROCESS)
    fer2013, new = _fer_plus_pair(tmp_path, names=False)
    assert len(read_voted_images(fer2013, read_votes(new, by_row=True), "val", PREPROCESS)) == 3  # in step


def test_missing_images_are_one_warning_and_mostly_missing_is_an_error(tmp_path):
    from fer_cli.inputs.data import read_voted_images

    rows = _voted_images(tmp_path, 4)
    missing = [[f"img/gone{i}.png", *row[1:]] for i, row in enumerate(rows * 2)]
    said = []
    table = read_votes(_votes_csv(tmp_path, rows + missing[:1], []))
    data = read_voted_images(tmp_path, table, None, PREPROCESS, warn=said.append)
    assert len(data) == 4 and len(said) == 1 and "1 image(s)" in said[0] and "gone0.png" in said[0]
    table = read_votes(_votes_csv(tmp_path, rows + missing, []))
    with pytest.raises(SourceError, match=r"8 of 12 images .* missing or unreadable.*--allow-missing"):
        read_voted_images(tmp_path, table, None, PREPROCESS, warn=said.append)
    said.clear()
    data = read_voted_images(tmp_path, table, None, PREPROCESS, warn=said.append, allow_missing=True)
    assert len(data) == 4 and len(said) == 1 and "8 image(s)" in said[0] and "e.g." in said[0]
    assert said[0].count("gone") <= 3  # a few examples, not every one


def test_fer_train_stops_when_most_images_are_missing_unless_allowed(tmp_path):
    rows = _voted_images(tmp_path, 6)
    missing = [[f"img/gone{i}.png", *row[1:]] for i, row in enumerate(rows * 2)]
    votes = _votes_csv(tmp_path, rows + missing, rows[:3])
    done = invoke("train", tmp_path, "--votes", votes, "--out", tmp_path / "m.pt", "--epochs", 1, "-j", 0,
                  "--arch", "vgg", "--arch-option", "width=4", "--device", "cpu")  # fmt: skip
    assert done.exit_code == 2 and "--allow-missing" in done.stderr, done.output
    assert not (tmp_path / "m.pt").exists()


def test_a_large_votes_file_is_read_into_compact_arrays(tmp_path):
    """10^6 rows took 4.9 GB: the rows were held as Python lists of strings. Now a row costs its numbers and path."""
    import tracemalloc

    count = 20000
    path = tmp_path / "big.csv"
    with open(path, "w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(FERPLUS_HEADER.split(","))
        out.writerows(["train", f"train/x/fer{i:08d}.png", "angry", 4, 0, 0, 1, 3, 2, 0, 0, 0, 0] for i in range(count))
    tracemalloc.start()
    table = read_votes(path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert len(table.images) == count
    assert peak / count < 400, f"{peak / count:.0f} bytes a row"
