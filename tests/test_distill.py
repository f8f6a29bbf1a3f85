"""Knowledge distillation (`fer train --teacher`): the loss, the teachers' classes, the cache, resume."""

import math

import pytest
import torch
from rich.console import Console
from torch import nn
from typer.testing import CliRunner

from fer_cli.cli.app import app
from fer_cli.engine import distill
from fer_cli.engine.distill import DistillationLoss, soft_loss, soft_targets
from fer_cli.engine.train.config import TrainConfig
from fer_cli.engine.train.run import train
from fer_cli.engine.train.run_files import last_path
from fer_cli.errors import FerError
from fer_cli.inputs.data import LabelledTensors
from fer_cli.models.checkpoint import read_checkpoint, save_checkpoint, store_calibration

from .synthetic import CLASSES, interrupt_in_epoch, make_labelled_folder, synthetic_face, tiny_config

QUIET = Console(quiet=True)


def test_the_soft_loss_is_zero_when_the_student_is_its_teacher():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.0, 0.0, 3.0]])
    assert soft_loss(logits, torch.softmax(logits, dim=1), 1.0).abs() < 1e-6
    assert soft_loss(logits, soft_targets(logits[None], 3.0), 3.0).abs() < 1e-6  # at any temperature
    assert soft_loss(logits, soft_targets(logits[None].flip(2), 1.0), 1.0) > 0.1


def test_the_loss_matches_a_hand_computed_value():
    # At T = 2 the student's logits (0, 2 ln 3) are the probabilities (1/4, 3/4); the teachers say (1/2, 1/2).
    logits = torch.tensor([[0.0, 2 * math.log(3)]])
    teacher = torch.tensor([[0.5, 0.5]])
    kl = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert soft_loss(logits, teacher, 2.0).item() == pytest.approx(4 * kl, rel=1e-5)  # T^2 KL

    loss = DistillationLoss(nn.CrossEntropyLoss(), weight=0.25, temperature=2.0)
    hard = math.log(10)  # at T = 1 the label's class 0 has probability 1 / (1 + 9)
    label = torch.tensor([0])
    assert loss(logits, label, teacher).item() == pytest.approx(0.75 * hard + 0.25 * 4 * kl, rel=1e-5)
    assert loss(logits, label).item() == pytest.approx(hard, rel=1e-5)  # validation: the labels alone


def test_the_teachers_probabilities_are_averaged():
    two_teachers = torch.tensor([[[0.0, math.log(3)]], [[math.log(3), 0.0]]])  # (1/4, 3/4) and (3/4, 1/4)
    assert soft_targets(two_teachers, 1.0)[0].tolist() == pytest.approx([0.5, 0.5])
    softened = soft_targets(two_teachers[:1], 2.0)[0]  # logits halved: (1, sqrt 3) / (1 + sqrt 3)
    assert softened.tolist() == pytest.approx([1 / (1 + math.sqrt(3)), math.sqrt(3) / (1 + math.sqrt(3))])


def _tensors(count: int = 12, seed: int = 0) -> LabelledTensors:
    images = torch.stack([torch.from_numpy(synthetic_face(i % 3, seed * 100 + i))[None] for i in range(count)])
    return LabelledTensors(images, torch.arange(count) % 3, list(CLASSES), "synthetic")


def test_a_teacher_with_the_classes_in_another_order_is_aligned_by_name(tiny_checkpoint, tmp_path):
    checkpoint = read_checkpoint(tiny_checkpoint)
    order = [2, 0, 1]
    head = [name for name in checkpoint["state_dict"] if name.endswith(".weight")][-1].rsplit(".", 1)[0]
    for part in ("weight", "bias"):
        checkpoint["state_dict"][f"{head}.{part}"] = checkpoint["state_dict"][f"{head}.{part}"][order]
    checkpoint["class_names"] = [CLASSES[i] for i in order]
    shuffled = tmp_path / "shuffled.pt"
    save_checkpoint(shuffled, checkpoint)

    data = _tensors()
    straight = distill.teacher_logits(
        distill.load_teachers([str(tiny_checkpoint)], CLASSES), data, tmp_path, "cpu", QUIET
    )
    aligned = distill.teacher_logits(distill.load_teachers([str(shuffled)], CLASSES), data, tmp_path, "cpu", QUIET)
    assert torch.allclose(straight, aligned, atol=1e-5)
    assert distill.teacher_accuracy(straight, data.labels) == 1.0  # the tiny model knows these faces


def test_teachers_that_know_other_classes_are_refused(tiny_dataset, tiny_checkpoint, tmp_path):
    other = make_labelled_folder(tmp_path / "other", per_class=6, classes=["calm", "frown", "grin"])
    with pytest.raises(FerError, match="teacher .* predicts calm, frown, smile.* training data has calm, frown, grin"):
        train(tiny_config(other, tmp_path / "m.pt", teachers=(str(tiny_checkpoint),)))

    done = CliRunner().invoke(
        app,
        ["train", str(other), "--teacher", str(tiny_checkpoint), "--out", str(tmp_path / "c.pt"), "--workers", "0"],
    )
    assert done.exit_code == 2 and "must know the same classes" in done.stderr and "Traceback" not in done.output

    with pytest.raises(ValueError, match="--teacher does not combine with --mixup"):
        train(tiny_config(tiny_dataset, tmp_path / "x.pt", teachers=(str(tiny_checkpoint),), mixup=0.2))


def test_the_cache_is_reused_and_made_again_when_a_teacher_or_the_data_change(tiny_checkpoint, tmp_path, monkeypatch):
    runs = []
    real = distill._run_teacher
    monkeypatch.setattr(distill, "_run_teacher", lambda *a: runs.append(a[0].name) or real(*a))
    teacher = tmp_path / "teacher.pt"
    teacher.write_bytes(tiny_checkpoint.read_bytes())
    data, cache = _tensors(), tmp_path / "cache"

    def logits(images=data):
        return distill.teacher_logits(distill.load_teachers([str(teacher)], CLASSES), images, cache, "cpu", QUIET)

    first = logits()
    assert torch.equal(logits(), first) and len(runs) == 1  # read back, not run again
    store_calibration(teacher, {"temperature": 2.0})  # the teacher changes: another file, another key
    second = logits()
    assert len(runs) == 2 and torch.allclose(second, first / 2, atol=1e-5)  # calibrated logits
    logits(_tensors(seed=1))  # other images
    assert len(runs) == 3 and len(list(cache.glob("teachers-*.pt"))) == 3


def test_a_distilled_student_follows_its_teachers(tiny_dataset, tiny_checkpoint, tmp_path):
    """Training labels that are all wrong (each class's faces filed under another class) against a teacher that
    knows better: with the teachers' share at 1 the student learns the teacher's classes, at 0 the wrong labels."""
    mislabelled = make_labelled_folder(
        tmp_path / "mislabelled", per_class=24, seed=1, classes=["frown", "smile", "calm"]
    )

    def val_accuracy(weight: float) -> float:
        out = tmp_path / f"student{weight}.pt"
        config = tiny_config(
            mislabelled, out, val=str(tiny_dataset / "val"), epochs=5, teachers=(str(tiny_checkpoint),)
        )
        return train(TrainConfig(**{**config.__dict__, "distill_weight": weight, "distill_temperature": 1.0}))[
            "accuracy"
        ]

    assert val_accuracy(1.0) >= 0.9
    assert val_accuracy(0.0) <= 0.34  # never above chance: it learnt the wrong labels
    provenance = read_checkpoint(tmp_path / "student1.0.pt")["provenance"]["distilled_from"]
    teacher = provenance["teachers"][0]
    assert teacher["path"] == str(tiny_checkpoint) and len(teacher["sha256"]) == 64
    assert (provenance["weight"], provenance["temperature"], provenance["views"]) == (1.0, 1.0, ["none"])


def test_resume_with_teachers_reads_their_cache_and_ends_where_an_uninterrupted_run_does(
    tiny_dataset, tiny_checkpoint, tmp_path, monkeypatch
):
    teachers = (str(tiny_checkpoint),)
    settings = dict(teachers=teachers, distill_weight=0.5, augment="flip,shift", epochs=3)
    reference = tmp_path / "reference.pt"
    train(tiny_config(tiny_dataset, reference, **settings))

    runs = []
    real = distill._run_teacher
    monkeypatch.setattr(distill, "_run_teacher", lambda *a: runs.append(1) or real(*a))
    interrupted = tmp_path / "interrupted.pt"
    interrupt_in_epoch(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(tiny_dataset, interrupted, **settings))
    train(TrainConfig(data="", out=str(interrupted), resume=True, workers=0, device="cpu"))
    assert runs == []  # the teachers ran once, for the reference run; both later runs read the cache
    a = read_checkpoint(last_path(reference))["state_dict"]
    b = read_checkpoint(last_path(interrupted))["state_dict"]
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-5) for k in a)
    assert read_checkpoint(interrupted)["provenance"]["distilled_from"]["teachers"][0]["path"] == teachers[0]


def test_resume_refuses_a_teacher_that_changed(tiny_dataset, tiny_checkpoint, tmp_path, monkeypatch):
    teacher = tmp_path / "teacher.pt"
    teacher.write_bytes(tiny_checkpoint.read_bytes())
    out = tmp_path / "student.pt"
    interrupt_in_epoch(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(tiny_dataset, out, teachers=(str(teacher),)))
    store_calibration(teacher, {"temperature": 3.0})
    with pytest.raises(FerError, match=r"teacher\(s\) .*teacher.pt changed since the run started"):
        train(TrainConfig(data="", out=str(out), resume=True, workers=0, device="cpu"))
    assert last_path(out).exists()
