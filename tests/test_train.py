import csv
import hashlib

import numpy as np
import pytest
import torch

from fer_cli.engine.train import epoch as epoch_module
from fer_cli.engine.train.config import TrainConfig
from fer_cli.engine.train.optimisation import LogitAdjustedLoss
from fer_cli.engine.train.run import train
from fer_cli.engine.train.run_files import history_path, last_path
from fer_cli.errors import CheckpointError, SourceError
from fer_cli.models.checkpoint import read_checkpoint
from fer_cli.models.zoo import load_classifier

from .synthetic import CLASSES, interrupt_in_epoch, make_labelled_folder, tiny_config

_config = tiny_config


def _history(out):
    with open(history_path(out)) as handle:
        return list(csv.DictReader(handle))


def test_training_lowers_the_loss_and_keeps_the_best_checkpoint(tiny_dataset, tmp_path):
    out = tmp_path / "run" / "model.pt"
    best = train(_config(tiny_dataset, out, epochs=5))
    history = _history(out)
    assert [int(row["epoch"]) for row in history] == [1, 2, 3, 4, 5]
    losses = [float(row["train_loss"]) for row in history]
    assert losses[-1] < 0.7 * losses[0]
    assert best["accuracy"] == max(float(row["val_accuracy"]) for row in history)
    assert best["accuracy"] >= 0.9  # the synthetic classes are easy

    checkpoint = read_checkpoint(out)
    assert checkpoint["class_names"] == CLASSES
    assert checkpoint["metrics"]["accuracy"] == best["accuracy"]
    assert set(checkpoint["metrics"]["per_class"]) == set(CLASSES)
    assert checkpoint["preprocess"]["size"] == 48 and len(checkpoint["preprocess"]["mean"]) == 1
    assert checkpoint["provenance"]["val_data"].endswith("val")
    assert checkpoint["provenance"]["val_path"] == str(tiny_dataset / "val")
    assert checkpoint["provenance"]["seed"] == 0 and checkpoint["provenance"]["date"]
    assert "optimizer" not in checkpoint  # the shipped file stays small; resume state lives in .last.pt
    assert read_checkpoint(last_path(out))["epoch"] == 5


def test_resume_continues_where_an_interrupted_run_stopped(tiny_dataset, tmp_path, monkeypatch):
    reference = tmp_path / "reference.pt"
    train(_config(tiny_dataset, reference, augment="flip,shift"))

    interrupted = tmp_path / "interrupted.pt"
    interrupt_in_epoch(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        train(_config(tiny_dataset, interrupted, augment="flip,shift"))
    real_epoch = epoch_module.train_one_epoch
    assert read_checkpoint(last_path(interrupted))["epoch"] == 2

    started = []
    monkeypatch.setattr(epoch_module, "train_one_epoch", lambda *a, **k: started.append(1) or real_epoch(*a, **k))
    # Settings come from the interrupted run: only out, device and workers are given again.
    train(TrainConfig(data="", out=str(interrupted), resume=True, workers=0, device="cpu"))
    assert len(started) == 1  # only epoch 3 ran
    assert [row["epoch"] for row in _history(interrupted)] == ["1", "2", "3"]
    # An interrupted-and-resumed run ends exactly where an uninterrupted one does.
    a = read_checkpoint(last_path(reference))["state_dict"]
    b = read_checkpoint(last_path(interrupted))["state_dict"]
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-5) for k in a)


def test_resume_without_a_previous_run_is_an_error(tiny_dataset, tmp_path):
    with pytest.raises(CheckpointError, match="nothing to resume"):
        train(_config(tiny_dataset, tmp_path / "new.pt", resume=True))


@pytest.mark.parametrize("balance", ["sampler", "loss", "logit-adjusted"])
def test_imbalance_handling_and_held_out_validation(tmp_path, balance):
    data = make_labelled_folder(tmp_path / "data", per_class=10)
    out = tmp_path / "m.pt"
    best = train(_config(data, out, balance=balance, epochs=2))
    provenance = read_checkpoint(out)["provenance"]
    assert "10% of" in provenance["val_data"] and "held out" in provenance["val_data"]
    assert provenance["val_path"] is None
    assert best["count"] == 3  # 10% of 30, stratified
    assert load_classifier(out).class_names == CLASSES


def test_training_from_a_fer2013_csv(tmp_path):
    rows = ["emotion,pixels,Usage"]
    for i in range(70):
        usage = "PublicTest" if i % 5 == 0 else "Training"
        rows.append(f"{i % 7}," + " ".join(str((i * 7 + j) % 256) for j in range(48 * 48)) + f",{usage}")
    csv_path = tmp_path / "fer.csv"
    csv_path.write_text("\n".join(rows) + "\n")
    out = tmp_path / "csv.pt"
    best = train(_config(csv_path, out, epochs=1))
    assert best["count"] == 14
    assert "PublicTest" in read_checkpoint(out)["provenance"]["val_data"]


def test_validation_classes_must_match(tmp_path):
    make_labelled_folder(tmp_path / "train", per_class=4)
    make_labelled_folder(tmp_path / "val", per_class=2, classes=["calm", "frown", "other"])
    with pytest.raises(SourceError, match="has classes calm, frown, other"):
        train(_config(tmp_path / "train", tmp_path / "m.pt", val=str(tmp_path / "val")))


def test_mixup_and_cutmix_blend_batches_into_soft_labels_and_still_learn(tiny_dataset, tmp_path):
    from fer_cli.engine.train.optimisation import batch_mixing

    mix = batch_mixing(_config(tiny_dataset, tmp_path / "x.pt", mixup=0.4, cutmix=1.0), num_classes=3)
    images, labels = torch.rand(8, 1, 48, 48), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    torch.manual_seed(0)
    mixed, targets = mix(images, labels)
    assert mixed.shape == images.shape and targets.shape == (8, 3)
    assert torch.allclose(targets.sum(dim=1), torch.ones(8)) and (targets.max(dim=1).values < 1).any()
    assert batch_mixing(_config(tiny_dataset, tmp_path / "x.pt"), 3) is None  # off by default

    out = tmp_path / "mixed.pt"
    best = train(_config(tiny_dataset, out, epochs=6, mixup=0.2, cutmix=1.0))
    assert best["accuracy"] >= 0.8
    config = read_checkpoint(out)["provenance"]["config"]
    assert config["mixup"] == 0.2 and config["cutmix"] == 1.0


def test_init_starts_from_a_model_and_rebuilds_the_head_for_other_classes(tiny_dataset, tiny_checkpoint, tmp_path):
    """--init: the model's architecture, input and weights; a fresh head for a different class set; early
    layers frozen for the first epochs; provenance names the model."""
    from fer_cli.engine.train.fine_tuning import classifier_head
    from fer_cli.models.checkpoint import build_model, read_checkpoint

    source = read_checkpoint(tiny_checkpoint)
    two = make_labelled_folder(tmp_path / "two", per_class=12, classes=["calm", "smile"])
    out = tmp_path / "tuned.pt"
    train(tiny_config(two, out, arch="resnet18", epochs=1, init=str(tiny_checkpoint), freeze_epochs=1, lr=0.0))
    tuned = read_checkpoint(out)
    assert (tuned["arch"], tuned["model_config"]) == (source["arch"], source["model_config"])  # not resnet18
    assert tuned["preprocess"] == source["preprocess"] and tuned["class_names"] == ["calm", "smile"]
    head = classifier_head(build_model(tuned))
    for name, value in build_model(source).state_dict().items():
        if name.startswith(head + "."):
            assert value.shape[0] == 3 and tuned["state_dict"][name].shape[0] == 2  # rebuilt for two classes
        elif "running_" not in name and "num_batches" not in name:  # frozen, lr 0: the body is the source's
            assert torch.equal(value, tuned["state_dict"][name].float()), name
    assert tuned["provenance"]["initialised_from"]["sha256"] == hashlib.sha256(tiny_checkpoint.read_bytes()).hexdigest()

    same = tmp_path / "same.pt"  # the same classes: the head is kept too, and one epoch at lr 0 changes nothing
    train(tiny_config(tiny_dataset, same, epochs=1, init=str(tiny_checkpoint), lr=0.0))
    kept = read_checkpoint(same)["state_dict"]
    assert all(torch.equal(value, kept[name].float()) for name, value in build_model(source).state_dict().items()
               if "running_" not in name and "num_batches" not in name)  # fmt: skip


def test_freeze_epochs_without_init_is_a_usage_error(tiny_dataset, tmp_path):
    with pytest.raises(ValueError, match="--freeze-epochs needs --init"):
        train(tiny_config(tiny_dataset, tmp_path / "m.pt", freeze_epochs=2))


def test_logit_adjusted_loss_is_the_loss_of_logits_plus_the_log_prior():
    prior = [0.7, 0.2, 0.1]
    loss = LogitAdjustedLoss(torch.nn.CrossEntropyLoss(), torch.log(torch.tensor(prior)))
    logits, labels = torch.randn(5, 3), torch.tensor([0, 1, 2, 2, 0])
    expected = torch.nn.functional.cross_entropy(logits + torch.log(torch.tensor(prior)), labels)
    assert torch.allclose(loss(logits, labels), expected)
    # a network that answers the prior alone is already right under it: its own logits need say nothing of it
    assert loss(torch.zeros(1, 3), torch.tensor([2])) > loss(torch.zeros(1, 3), torch.tensor([0]))


def test_a_logit_adjusted_run_is_scored_as_its_loss_sees_it():
    """Its epochs are chosen on softmax(logits + log prior), what the loss fits: scored on its own (balanced) logits,
    accuracy against FER+'s majority fell as they grew balanced, and a 6-epoch run kept its first epoch."""
    from fer_cli.engine.train.epoch import as_the_loss_sees_them

    prior = [0.7, 0.2, 0.1]
    logits = np.log(np.array([[0.2, 0.5, 0.3], [0.3, 0.3, 0.4]]))
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    seen = as_the_loss_sees_them(probs, prior, "logit-adjusted")
    expected = torch.softmax(torch.tensor(logits) + torch.log(torch.tensor(prior, dtype=torch.float64)), dim=1)
    assert np.allclose(seen, expected.numpy()) and seen.argmax(axis=1).tolist() == [0, 0]
    assert probs.argmax(axis=1).tolist() == [1, 2]  # the balanced logits alone answer the rarer classes
    for balance in ("none", "sampler", "loss"):
        assert as_the_loss_sees_them(probs, prior, balance) is probs


def test_precision_is_logged_recorded_and_may_change_on_resume(tiny_dataset, tmp_path, monkeypatch):
    import io

    from rich.console import Console

    out = tmp_path / "bf16.pt"
    log = io.StringIO()
    interrupt_in_epoch(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        train(_config(tiny_dataset, out, precision="bf16", epochs=2), log=Console(file=log, width=200))
    assert "bfloat16 mixed precision (autocast)" in log.getvalue()
    log = io.StringIO()
    best = train(
        TrainConfig(data="", out=str(out), resume=True, workers=0, device="cpu", precision="fp32",
                    given=("out", "resume", "precision")),
        log=Console(file=log, width=200),
    )  # fmt: skip
    assert "ignored" not in log.getvalue() and "float32" in log.getvalue()
    assert [row["precision"] for row in _history(out)] == ["bf16", "fp32"]
    assert read_checkpoint(out)["provenance"]["precision"] == ("bf16" if best["epoch"] == 1 else "fp32")


def test_an_epoch_keeps_its_last_partial_batch_unless_it_is_a_sliver():
    drops = epoch_module._drops_last_batch
    assert not drops(150, 64)  # 64 + 64 + 22: every image trains
    assert drops(129, 64)  # one image alone: batch norm cannot train on it
    assert drops(140, 64) and not drops(144, 64)  # 12 is under a quarter of a batch, 16 is not
    assert not drops(128, 64) and not drops(40, 64)  # whole batches; a run smaller than one batch
