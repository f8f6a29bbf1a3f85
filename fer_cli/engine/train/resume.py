"""The resume state (NAME.last.pt): written after every epoch, read by ``--resume``, which continues the run with
its own settings where it stopped (``--epochs`` may extend it)."""

from __future__ import annotations

import contextlib
from dataclasses import replace
from pathlib import Path

import torch
from rich.console import Console
from rich.markup import escape

from ...errors import CheckpointError, FerError
from ...models.checkpoint import read_checkpoint, save_checkpoint
from .config import TrainConfig, plain_config
from .optimisation import make_scheduler
from .run_files import last_path
from .set_up import TrainingRun

# What a resumed run takes from its command line: where it runs and writes, and --epochs (to extend it).
RESUME_TAKES = ("out", "device", "precision", "workers", "tensorboard", "teacher_cache", "epochs")


def read_resume_state(out: Path) -> dict | None:
    path = last_path(out)
    if not path.exists():
        raise CheckpointError(f"--resume: nothing to resume, {path} does not exist")
    state = read_checkpoint(path)
    if not state.get("training"):
        raise CheckpointError(f"--resume: {path} holds no training state")
    return state


def resumed_config(config: TrainConfig, state: dict, log: Console) -> TrainConfig:
    """A resumed run keeps the settings it started with: where it runs may change, and --epochs may extend it; any
    other option given is ignored, and the log says which."""
    saved = {**state["config"], "teachers": tuple(state["config"].get("teachers", ()))}
    where = {name: getattr(config, name) for name in RESUME_TAKES if name != "epochs"}
    epochs = saved["epochs"]
    if "epochs" in config.given and config.epochs != saved["epochs"]:
        if config.epochs < state["epoch"]:
            raise FerError(f"--resume --epochs {config.epochs}: the run has done {state['epoch']} epochs already")
        epochs = config.epochs
        log.print(f"extending the run from {saved['epochs']} to {epochs} epochs")
    option = {"data": "DATA", "resume": None, "overwrite": None}
    ignored = [
        option.get(name, f"--{name.replace('_', '-')}") for name in config.given
        if name not in RESUME_TAKES and option.get(name, "") is not None
        and (name not in saved or _differs(getattr(config, name, None), saved[name]))
    ]  # fmt: skip
    if ignored:
        log.print(f"[yellow]note:[/] --resume continues with the run's own settings; ignored: {', '.join(ignored)}")
    return TrainConfig(**{**saved, **where, "epochs": epochs}, resume=True, command=config.command, given=config.given)


def _differs(given, saved) -> bool:
    if isinstance(given, tuple | list) and isinstance(saved, tuple | list):
        return list(given) != list(saved)
    return given != saved


def resume_from(run: TrainingRun, state: dict) -> None:
    """Continue from a resume state: optimiser, schedule, loss scaling, history and best so far."""
    run.optimizer.load_state_dict(state["optimizer"])
    extended = run.config.epochs != state["config"]["epochs"]
    if extended and run.config.schedule in ("onecycle", "cosine"):
        # the schedule had ended (or was ending): the added epochs get one of their own, as a warm restart
        added = replace(run.config, epochs=run.config.epochs - state["epoch"])
        run.scheduler = make_scheduler(added, run.optimizer, run.steps_per_epoch)
        run.log.print(f"a new {run.config.schedule} schedule over the {added.epochs} added epoch(s)")
    elif run.scheduler is not None and state.get("scheduler"):
        run.scheduler.load_state_dict(state["scheduler"])
    restore_scaler(run.scaler, state["scaler"])
    run.start_epoch = state["epoch"] + 1
    run.history = state["history"]
    run.best_accuracy = state["best_accuracy"]
    run.best_metrics = state["best_metrics"]
    ran_on = state.get("device")  # absent from resume states written before it was recorded
    moved = f" (it ran on {ran_on} until now)" if ran_on and ran_on != str(run.device) else ""
    run.log.print(f"resuming {run.out} at epoch {run.start_epoch} of {run.config.epochs} on {run.device}{moved}")


def restore_scaler(scaler: torch.amp.GradScaler, saved: dict) -> None:
    """Continue a run's loss scaling where it can: a run that ran without scaling (on a CPU) and
    resumes on a GPU starts a fresh scale; one that resumes on a CPU drops the GPU's scale."""
    if scaler.is_enabled() and saved:
        scaler.load_state_dict(saved)


def save_resume_state(run: TrainingRun, network: dict, epoch: int) -> None:
    save_checkpoint(
        last_path(run.out),
        {
            **network,
            "training": True,
            "epoch": epoch,
            "optimizer": run.optimizer.state_dict(),
            "scheduler": run.scheduler.state_dict() if run.scheduler is not None else None,
            "scaler": run.scaler.state_dict(),
            "history": run.history,
            "best_accuracy": run.best_accuracy,
            "best_metrics": run.best_metrics,
            "config": plain_config(run.config),
            "device": str(run.device),  # where the last epoch ran; a resumed run may move
            "teachers": run.provenance.get("distilled_from", {}).get("teachers"),  # a resumed run checks them
            "initialised_from": run.provenance.get("initialised_from"),
            "commands": [run.provenance["command"], *run.provenance.get("resumed_by", [])],  # kept by a resumed run
        },
    )


def say_resume_state_kept(run: TrainingRun) -> None:
    """A finished run keeps its resume state (``--resume --epochs N`` extends it), and says so once, with its size:
    with AdamW it is about three times the checkpoint, which the user may not expect beside it."""
    with contextlib.suppress(OSError):
        size = last_path(run.out).stat().st_size
        run.log.print(
            f"{escape(str(last_path(run.out)))} ({size / 1e6:,.1f} MB) kept: --resume --epochs N extends the run; "
            "delete it otherwise"
        )
