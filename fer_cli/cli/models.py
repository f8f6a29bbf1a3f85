"""`fer models`: the architectures and shipped models as tables, or one model's facts."""

from __future__ import annotations

import os
from typing import Annotated

import typer
from rich.console import Console

from ..outputs.terminal import plain
from .console import note


def models(
    model: Annotated[
        str | None,
        typer.Argument(
            metavar="[NAME|FILE]", help="A shipped model's name or a model file: show its classes, input and data."
        ),
    ] = None,
) -> None:
    """List the architectures and shipped models, or describe one.

    \b
    Examples:
      fer models                    # architectures and shipped models
      fer models resnet18_ferplus   # classes in output order, input, data
      fer models runs/model.pt      # the same for any checkpoint or .onnx
    """
    from rich.table import Table

    from ..models.zoo import model_catalogue, resolve_model

    out = Console()
    if model is not None:
        _describe_model(resolve_model(model), out)
        return
    catalogue = model_catalogue(note=note)
    table = Table(title="Architectures")
    for column in ("name", "options", "description"):
        table.add_column(column)
    for arch in catalogue["architectures"]:
        options = ", ".join(f"{k}={v}" for k, v in arch["options"].items())
        table.add_row(arch["name"], options, arch["description"])
    out.print(table)
    shipped = catalogue["shipped"]
    folders = sorted({os.path.dirname(entry["path"]) for entry in shipped})
    table = Table(title="Shipped weights")
    for column in ("name", "arch", "classes", "val accuracy", "used by default in", "size"):
        table.add_column(column, no_wrap=column == "name")
    for entry in shipped:
        accuracy = entry["val_accuracy"]
        table.add_row(
            plain(entry["name"]),
            plain(entry["arch"]),
            str(len(entry["class_names"])),
            f"{accuracy:.2%}" if accuracy is not None else "-",
            ", ".join(entry["used_by_default_in"]) or "-",
            f"{entry['size_bytes'] / 1e6:.1f} MB",
        )
    out.print(table)
    for names in dict.fromkeys(tuple(entry["class_names"]) for entry in shipped):
        users = [entry["name"] for entry in shipped if tuple(entry["class_names"]) == names]
        which = "every shipped model" if len(users) == len(shipped) else ", ".join(users)
        out.print(plain(f"Classes of {which}, in output order: {', '.join(names)}."))
    out.print(
        plain(
            f"In {', '.join(folders) or 'no weights folder'}. val accuracy: on each model's own validation images, "
            "as stored by fer train (against the majority of the votes for a model trained on votes). "
            "`fer models NAME` describes one model."
        )
    )


def _describe_model(classifier, out: Console) -> None:
    """One model's facts, one per line: what a user needs to read its output and trust its numbers."""
    provenance = classifier.provenance
    preprocess = classifier.preprocess
    metrics = classifier.metrics or {}
    lines = [
        ("name", classifier.name),
        ("file", classifier.path),
        ("architecture", classifier.arch),
        ("classes", ", ".join(classifier.class_names) + " (in output order)"),
        ("input", f"{preprocess['size']}x{preprocess['size']} {'grayscale' if preprocess['channels'] == 1 else 'RGB'}"),
        ("temperature", f"{classifier.temperature:.3f}" + (" (uncalibrated)" if classifier.temperature == 1 else "")),
    ]
    if classifier.prior_correction:
        lines.append(("prior correction", f"tau {classifier.prior_correction:g}: logits - tau x log(training class "
                      "prior), which lifts the rare classes"))  # fmt: skip
    learnt = provenance.get("labels") or {}
    if learnt.get("kind") == "votes":
        mixed = (
            f", {learnt['label_weight']:g} of each target the image's own label" if learnt.get("label_weight") else ""
        )
        lines.append(("learnt from", f"votes in {learnt['votes']} ({learnt['targets']}{mixed})"))
    if metrics.get("accuracy") is not None:
        on = f" on {metrics['count']:,} images" if metrics.get("count") else ""
        against = " (against the majority of the votes)" if "votes" in metrics else ""
        lines.append(("val accuracy", f"{metrics['accuracy']:.2%}{on}{against}"))
        if metrics.get("balanced_accuracy") is not None:
            lines.append(("balanced accuracy", f"{metrics['balanced_accuracy']:.2%} (mean recall of the classes)"))
    for key, label in (
        ("val_data", "validated on"),
        ("train_data", "trained on"),
        ("command", "command"),
        ("date", "date"),
    ):
        if provenance.get(key):
            lines.append((label, str(provenance[key])))
    for command in provenance.get("resumed_by") or ():
        lines.append(("resumed by", command))
    if provenance.get("initialised_from"):
        lines.append(("initialised from", _starting_model(provenance["initialised_from"])))
    if provenance.get("distilled_from"):
        taught = provenance["distilled_from"]
        teachers = ", ".join(teacher["model"] for teacher in taught["teachers"])
        lines.append(("distilled from", f"{teachers} (weight {taught['weight']}, temperature {taught['temperature']})"))
    hashed = (provenance.get("val_images") or {}).get("hashes")  # None when validation was held out of DATA
    if hashed:
        lines.append(("val images", f"{len(hashed):,} content hashes (fer ensemble notices them wherever they are)"))
    from rich.table import Table

    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    for label, value in lines:
        grid.add_row(label, plain(value))
    out.print(grid)


def _starting_model(start: dict) -> str:
    """The model a run started from, as a user can find it: a shipped name, or a file with its sha256 to tell it by."""
    from ..models.zoo import shipped_models

    shipped = {entry.name for entry in shipped_models()}
    name = start["model"]
    if name in shipped:
        return f"{name} (shipped)"
    digest = start.get("sha256")
    return f"{name}, not shipped" + (f" (sha256 {digest[:12]}…)" if digest else "")
