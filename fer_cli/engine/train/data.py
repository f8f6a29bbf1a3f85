"""The training and validation data, decoded into memory (a labelled folder, a FER2013 CSV, or images labelled by
votes), and what the loss learns from them: the labels, or targets made of the votes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.markup import escape
from sklearn.model_selection import train_test_split

from ...errors import SourceError
from ...inputs.data import (
    LabelledTensors,
    decode_labelled_files,
    find_labelled_images,
    read_fer2013_csv,
    read_voted_images,
)
from ...inputs.votes import describe_left_out, read_votes, require_a_majority
from .config import TrainConfig


def load_training_data(config: TrainConfig, log: Console) -> tuple[LabelledTensors, LabelledTensors, str, str | None]:
    """Decode the training and validation sets into memory.

    Also returns where validation came from, in words and as the path of its file or folder
    (None when it was held out of the training data).
    """
    preprocess = {"size": config.size, "channels": config.channels}
    if config.votes:
        return _load_voted_data(config, preprocess, log)
    data = Path(config.data)
    train_source = data
    val_source = Path(config.val) if config.val else None
    if data.is_dir() and (data / "train").is_dir() and not config.val and (data / "val").is_dir():
        train_source, val_source = data / "train", data / "val"

    def load(source: Path, usage: tuple[str, ...]) -> LabelledTensors:
        if source.is_file() and source.suffix.lower() == ".csv":
            return read_fer2013_csv(source, usage, preprocess)
        if not source.exists():
            raise SourceError(f"no such file or folder: {source}")
        files = find_labelled_images(source)
        log.print(f"decoding {len(files.paths):,} images from {source} ...")
        return decode_labelled_files(
            files, preprocess, workers=config.workers, warn=lambda m: log.print(f"[yellow]warning:[/] {m}")
        )

    train = load(train_source, ("training",))
    if val_source is not None and val_source.exists() and val_source.resolve() == train_source.resolve():
        log.print(
            f"[yellow]warning:[/] --val {val_source} is the training data: its accuracy will say how well the model "
            "remembers these images, not how it does on new ones"
        )
    if val_source is not None:
        val = load(val_source, ("publictest",)).reorder_classes(train.class_names)
        return train, val, str(val_source), str(val_source)
    if train_source.suffix.lower() == ".csv":
        try:
            val = load(train_source, ("publictest",))
            return train, val, f"{train_source} (PublicTest rows)", str(train_source)
        except SourceError:
            pass  # no PublicTest rows: hold out part of the training rows below
    train, val = _hold_out(train, fraction=0.1, seed=config.seed)
    return train, val, f"10% of {train_source} held out (stratified, seed {config.seed})", None


def _load_voted_data(config: TrainConfig, preprocess: dict, log: Console):
    """``load_training_data`` for images labelled by votes: DATA holds the images (a folder the votes CSV's paths
    are relative to, or a FER2013 CSV whose rows pair up with its rows), validation is the votes' val rows, ``--val``
    (another votes CSV over DATA's images), or 10% of the training rows held out."""
    data = Path(config.data)
    if not data.exists():
        raise SourceError(f"no such file or folder: {data}")
    by_row = data.is_file()
    table = read_votes(config.votes, by_row=by_row)
    warn = lambda m: log.print(f"[yellow]warning:[/] {escape(m)}")  # noqa: E731
    log.print(
        f"votes: {escape(table.origin)}, {len(table.images):,} images, classes {escape(', '.join(table.class_names))}"
        + (f"; {table.unnamed:,} rows without an image left out" if table.unnamed else "")
    )
    other = read_votes(config.val, by_row=by_row) if config.val else None
    for note in table.notes + (other.notes if other else []):
        warn(note)
    train_split = "train" if table.has_split else None
    if other:
        val_table, val_split = other, "val" if other.count("val") else None
    else:  # the val rows, or some of the training rows held out
        val_table, val_split = table, "val" if table.count("val") else train_split
    require_a_majority(val_table, val_split)
    decode = lambda t, split: read_voted_images(  # noqa: E731
        data, t, split, preprocess, config.workers, warn, fer2013_labels=by_row, allow_missing=config.allow_missing
    )
    train = _targets_usable(decode(table, train_split), config, log, "training")
    if other:
        val = decode(other, val_split).reorder_classes(train.class_names)
        val_origin, val_path = val.origin, str(config.val)
    elif val_split == "val":
        val, val_origin, val_path = decode(table, "val"), f"{table.origin} (val rows)", str(config.votes)
    else:
        train, val = _hold_out(train, fraction=0.1, seed=config.seed)
        val_origin, val_path = f"10% of {table.origin}'s rows held out (stratified, seed {config.seed})", None
    without = int((val.majority < 0).sum())
    if without == len(val):
        raise SourceError(f"{val_origin}: no validation image with a majority of the votes (of those read) to choose "
                          "the best epoch by")  # fmt: skip
    log.print(
        f"validation: {len(val):,} images" + (f" ({describe_left_out(val.left_out)})" if val.left_out else "")
        + f"; accuracy against the majority of the votes on the {len(val) - without:,} with one"
        + f" ({without:,} tied at the top)"
    )  # fmt: skip
    return train, val, val_origin, val_path


def _targets_usable(data: LabelledTensors, config: TrainConfig, log: Console, what: str) -> LabelledTensors:
    """Training images by votes: with ``--targets majority`` only those with a clear majority; with
    ``--label-weight`` only those whose single label is one of the classes. Says what was left out."""
    left_out = dict(data.left_out)
    if config.targets == "majority":
        keep = data.majority >= 0
        left_out["no majority (tied at the top)"] = int((~keep).sum())
        data = data.subset(torch.nonzero(keep).flatten())
    if config.label_weight:
        if data.given is None:
            raise SourceError(
                f"--label-weight mixes in each image's own label, but {config.votes} has no label column "
                "(label or fer2013_label), and DATA is not a FER2013 CSV"
            )
        keep = data.given >= 0
        left_out["single label not among the classes"] = int((~keep).sum())
        data = data.subset(torch.nonzero(keep).flatten())
    data.left_out = {reason: count for reason, count in left_out.items() if count}
    note = f" ({describe_left_out(data.left_out)})" if data.left_out else ""
    log.print(f"{what}: {len(data):,} images{note}")
    return data


def class_prior_of(data: LabelledTensors, config: TrainConfig) -> list[float]:
    """Each class's share of what the training images teach: the mean target (vote shares), or label frequencies."""
    targets = training_targets(data, config)
    if targets is None:
        targets = torch.nn.functional.one_hot(data.labels.cpu(), len(data.class_names)).float()
    return [round(float(share), 6) for share in targets.float().mean(dim=0)]


def training_targets(data: LabelledTensors, config: TrainConfig) -> torch.Tensor | None:
    """What the loss compares each training image's output with: None for one label per image (the labels
    themselves), else a distribution over the classes: the vote shares, or the majority one-hot, with
    ``--label-weight`` of the image's own label mixed in."""
    if data.votes is None:
        return None
    classes = len(data.class_names)
    if config.targets == "majority":
        targets = torch.nn.functional.one_hot(data.majority.clamp_min(0), classes).float()
    else:
        targets = data.votes.float()
    if config.label_weight:
        given = torch.nn.functional.one_hot(data.given.clamp_min(0), classes).float()
        targets = (1 - config.label_weight) * targets + config.label_weight * given
    return targets


def describe_targets(config: TrainConfig) -> str:
    what = "each image's share of the votes" if config.targets == "distribution" else "the majority of the votes"
    if config.label_weight:
        what += f", {config.label_weight:g} of each target its own single label"
    return f"learning {what}; the best epoch is the most accurate against the majority on validation"


def _hold_out(data: LabelledTensors, fraction: float, seed: int) -> tuple[LabelledTensors, LabelledTensors]:
    """A stratified validation split: ``fraction`` of the images, at least one per class."""
    labels = data.labels.cpu().numpy()
    classes = len(data.class_names)
    held_count = max(int(round(fraction * len(labels))), classes)
    if np.bincount(labels, minlength=classes).min() < 2 or len(labels) - held_count < classes:
        raise SourceError(
            f"{data.origin} is too small to hold out a validation set (every class needs 2+ images); pass --val"
        )
    keep, held = train_test_split(np.arange(len(labels)), test_size=held_count, random_state=seed, stratify=labels)
    return data.subset(torch.as_tensor(np.sort(keep))), data.subset(torch.as_tensor(np.sort(held)))


def normalisation(images: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of the training images, on the 0..1 scale."""
    pixels = images.float().div(255).transpose(0, 1).reshape(images.shape[1], -1)
    return pixels.mean(dim=1).tolist(), pixels.std(dim=1).clamp_min(1e-3).tolist()
