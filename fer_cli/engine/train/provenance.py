"""What a checkpoint records of how it was made: the data it learnt from and was selected on, the model it started
from, the commands that ran it, the versions and the device."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ...inputs.data import LabelledTensors, images_fingerprint, labelled_digest, validation_images
from ...version import __version__
from .. import distributed
from .config import TrainConfig, plain_config
from .fine_tuning import initial_model


def run_provenance(
    config: TrainConfig, val_origin: str, val_path: str | None, group: distributed.Group, device,
    val_data: LabelledTensors | None = None,
) -> dict:  # fmt: skip
    if val_data is not None and val_data.paths is not None:  # votes over a folder: the images themselves
        return {**run_provenance(config, val_origin, None, group, device), "val_path": os.path.abspath(val_path),
                "val_images": images_fingerprint(val_data.paths)}  # fmt: skip
    return {
        "train_data": str(config.data),
        "val_data": val_origin,
        "val_path": os.path.abspath(val_path) if val_path else None,  # lets `fer ensemble` notice it is scoring a
        # model on its own validation data (absolute: a relative path means nothing from another folder),
        # also once that data has moved (another machine, another copy): its images by name
        "val_digest": labelled_digest(val_path) if val_path and Path(val_path).is_dir() else None,
        # ...and by content, so that copies and parts of it are recognised too (``ensemble.seen_in_validation``)
        "val_images": validation_images(val_path) if val_path and Path(val_path).is_dir() else None,
        "command": config.command,
        "seed": config.seed,
        "config": plain_config(config),
        "fer_cli_version": __version__,
        "torch_version": str(torch.__version__),
        "device": str(device),
        "processes": group.world,
    }


def labels_provenance(config: TrainConfig, train: LabelledTensors, val: LabelledTensors) -> dict:
    """What the checkpoint learnt from and was selected on (one label per image, or votes, and how)."""
    if train.votes is None:
        return {"kind": "one label per image", "selected_on": "accuracy against the validation labels"}
    return {
        "kind": "votes",
        "votes": str(config.votes),
        "targets": config.targets,
        "label_weight": config.label_weight,
        "left_out": {"training": train.left_out, "validation": val.left_out},
        "validation_without_majority": int((val.majority < 0).sum()),
        "selected_on": "accuracy against the majority of the validation votes (ties at the top left out)",
    }


def init_provenance(config: TrainConfig, init: dict | None, state: dict | None = None) -> dict:
    """Which model a run started from (``--init``), by name, file and sha256. A resumed run takes it from its resume
    state: it needs the file no more (and a file changed since is not recorded in its place)."""
    if not config.init:
        return {}
    if init is None and state is not None and state.get("initialised_from"):
        return {"initialised_from": state["initialised_from"]}
    init = init or initial_model(config)  # a resume state written before it was recorded there
    return {"initialised_from": {"model": config.init, "path": init["path"], "sha256": init["sha256"],
                                 "class_names": list(init["class_names"])}}  # fmt: skip


def commands_provenance(config: TrainConfig, state: dict | None) -> dict:
    """The command that started the run stays its ``command``; the commands that resumed it are listed after it."""
    if not state:
        return {}
    commands = list(state.get("commands") or ["(not recorded by this older run)"]) + [config.command]
    return {"command": commands[0], "resumed_by": commands[1:]}
