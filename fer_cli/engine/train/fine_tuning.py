"""Starting from a trained model (``--init``): reading it, taking its architecture and input, and copying its
weights in, its classifier head row by row by class name."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
from rich.console import Console
from rich.markup import escape
from torch import nn

from ...errors import FerError, SourceError
from ...inputs.data import find_labelled_images
from ...inputs.votes import canonical_class, read_votes
from ...models.checkpoint import build_model, read_checkpoint
from .config import TrainConfig


def initial_model(config: TrainConfig) -> dict:
    """The checkpoint ``--init`` names (a shipped model or a .pt file), with its file's sha256."""
    from ...models.zoo import file_sha256, resolve_model

    if Path(config.init).is_dir():
        raise FerError(f"--init {config.init} is a folder; it takes a model: a shipped name or a checkpoint (.pt)")
    path = resolve_model(config.init).path
    if not path.endswith(".pt"):
        raise FerError(f"--init needs a checkpoint (.pt) to take weights from; {config.init} is an exported model")
    checkpoint = read_checkpoint(path)
    return {**checkpoint, "path": path, "sha256": file_sha256(path)}


def adopt_initial_model(config: TrainConfig, init: dict, log: Console) -> TrainConfig:
    """A run that starts from a model takes its architecture and input (size, channels) along with its weights."""
    log.print(
        f"starting from {config.init} ({init['arch']}, {init['preprocess']['size']} px, "
        f"{init['preprocess']['channels']} channel(s); classes {escape(', '.join(init['class_names']))})"
    )
    return replace(
        config,
        arch=init["arch"],
        arch_options=dict(init["model_config"]),
        size=init["preprocess"]["size"],
        channels=init["preprocess"]["channels"],
    )


def new_head_share(config: TrainConfig, init: dict) -> float:
    """The share of the classes of DATA that ``init`` does not know (by name or alias): rows of the head that start
    untrained. Read from the data's class names without decoding it (a folder's subfolders, a votes file's columns)."""
    known = {canonical_class(name) for name in init["class_names"]}
    try:
        if config.votes:
            names = read_votes(config.votes, by_row=Path(config.data).is_file()).class_names
        elif Path(config.data).is_dir():
            root = Path(config.data)
            root = root / "train" if (root / "train").is_dir() and not config.val else root
            names = find_labelled_images(root).class_names
        else:
            from ...inputs.data import FER2013_CLASSES

            names = FER2013_CLASSES
    except SourceError:
        return 0.0  # the data's own error comes when it is loaded
    return sum(canonical_class(name) not in known for name in names) / max(len(names), 1)


def start_from(network: nn.Module, init: dict, class_names: list[str], log: Console | None = None) -> None:
    """Copy ``init``'s weights into ``network``, its classifier head row by row: a class of ``class_names`` that
    ``init`` knows, by name or alias (FER+'s anger is angry), keeps its row wherever it was; a new class keeps
    the fresh (seeded) row the network was built with. The log says which is which."""
    source = build_model(init).state_dict()
    head = classifier_head(network)
    fresh = network.state_dict()
    known = {canonical_class(name): row for row, name in enumerate(init["class_names"])}
    rows = [known.get(canonical_class(name)) for name in class_names]
    weights = {name: value for name, value in source.items() if not name.startswith(head + ".")}
    for part in ("weight", "bias"):
        key = f"{head}.{part}"
        if key in fresh:
            weights[key] = torch.stack(
                [
                    source[key][row].to(fresh[key].dtype) if row is not None else fresh[key][i]
                    for i, row in enumerate(rows)
                ]
            )
    network.load_state_dict(weights)
    if log is not None:
        kept = [name for name, row in zip(class_names, rows) if row is not None]
        new = [name for name, row in zip(class_names, rows) if row is None]
        moved = [name for i, (name, row) in enumerate(zip(class_names, rows)) if row is not None and row != i]
        dropped = [
            name for name in init["class_names"] if canonical_class(name) not in map(canonical_class, class_names)
        ]
        log.print(
            f"classifier head: {len(kept)} row(s) kept by class ({escape(', '.join(kept)) or 'none'})"
            + (f", {len(moved)} of them moved to the data's order" if moved else "")
            + (f"; new, untrained: {escape(', '.join(new))}" if new else "")
            + (f"; not in the data, dropped: {escape(', '.join(dropped))}" if dropped else "")
        )


def classifier_head(network: nn.Module) -> str:
    """The name of the network's last linear layer: the one that gives each class its logit."""
    return [name for name, module in network.named_modules() if isinstance(module, nn.Linear)][-1]
