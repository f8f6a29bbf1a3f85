"""``train``: a whole run, from its checks and set-up through its epochs (each saved: the best checkpoint, the
history, the resume state) to its finish (the best checkpoint's prior correction and temperature fitted)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ...device import prepare_model, select_device
from ...errors import FerError
from ...files import written_whole
from ...models.checkpoint import build_model, now_iso, read_checkpoint, save_checkpoint
from ...models.classifier import softmax
from ...outputs import tensorboard as tensorboard_log
from .. import distributed
from ..calibration import calibrate, choose_prior_correction, describe, describe_prior_correction, log_class_prior
from .config import TrainConfig, plain_config
from .curves import CurvesPainter
from .epoch import epoch_seed, predict_tensors, record_epoch, stop_if_diverged, train_epoch, validate
from .fine_tuning import adopt_initial_model, classifier_head, initial_model, new_head_share
from .resume import read_resume_state, resume_from, resumed_config, save_resume_state, say_resume_state_kept
from .run_files import check_outputs, curves_path, history_path, refuse_to_replace, write_history
from .set_up import TrainingRun, set_up_run


def train(config: TrainConfig, log: Console | None = None) -> dict:
    """Train, validating every epoch; keep the best checkpoint by validation accuracy.

    Returns the metrics of the best epoch.
    """
    log = log or Console(stderr=True, quiet=True)
    out = Path(config.out)
    state = read_resume_state(out) if config.resume else None
    if not config.resume and not config.overwrite:
        refuse_to_replace(out)
    if config.tensorboard:
        tensorboard_log.check_available()  # before anything is made or decoded
    check_outputs(config, log)  # before any data is decoded: a run never finds out at its end that it cannot write
    if state:
        config = resumed_config(config, state, log)
    init = initial_model(config) if config.init and not state else None  # read once: weights, input, hash
    if init:
        config = adopt_initial_model(config, init, log)
    if not state:
        config = config.with_defaults(new_head_share(config, init) if init else 0.0)
    config.validate()
    if config.tensorboard:
        tensorboard_log.check_available()  # before any data is decoded
    group, device = distributed.join(select_device(config.device))
    # On an error this process just exits: torchrun then stops the others (a barrier here would hang).
    best = _train(config, state, group, device, log if group.is_main else Console(stderr=True, quiet=True), init)
    distributed.leave(group)
    return best


def _train(
    config: TrainConfig, state: dict | None, group: distributed.Group, device, log: Console, init: dict | None = None
) -> dict:
    run = set_up_run(config, state, group, device, log, init)
    if state:
        resume_from(run, state)
    if run.start_epoch > config.epochs:
        log.print(f"{run.out}: all {config.epochs} epochs already done")
        return run.best_metrics
    if group.is_main:
        run.curves = CurvesPainter(curves_path(run.out), run.out.name, background=device.type != "cpu")
        if config.tensorboard:
            run.tensorboard = tensorboard_log.TensorBoardLog(config.tensorboard)
    try:
        _epochs(run, config, group, log)
        _finish(run)
    except BaseException:
        if run.curves is not None:
            run.curves.close(wait=False)  # an error or a signal: leave at once (the last drawing stands)
        raise
    finally:
        if run.tensorboard is not None:
            run.tensorboard.close()
    if run.curves is not None:
        with written_whole(curves_path(run.out)):
            run.curves.close()
    return run.best_metrics


def _epochs(run: TrainingRun, config: TrainConfig, group: distributed.Group, log: Console) -> None:
    with _progress(log) as progress:
        for epoch in range(run.start_epoch, config.epochs + 1):
            if config.freeze_epochs:
                _freeze_all_but_the_head(run, frozen=epoch <= config.freeze_epochs)
            started = time.perf_counter()
            # Everything random in an epoch derives from (seed, epoch, rank), so a resumed run repeats it exactly.
            torch.manual_seed(epoch_seed(config, epoch, group.rank))
            train_loss, train_accuracy = train_epoch(run, epoch, progress)
            metrics = validate(run)
            stop_if_diverged(run, epoch, train_loss, metrics)
            record = record_epoch(run, epoch, train_loss, train_accuracy, metrics, time.perf_counter() - started)
            with written_whole(run.out):  # a full disk: one line, the earlier files whole
                _save(run, epoch, improved=record["best"])
            if run.tensorboard is not None:
                run.tensorboard.epoch(record, metrics, run.class_names)
            voted = (
                f"  val_bal {metrics['balanced_accuracy']:.4f}  agree {metrics['votes']['tagger_agreement']:.4f}"
                if "votes" in metrics else ""
            )  # fmt: skip
            log.print(
                f"epoch {epoch}/{config.epochs}  loss {train_loss:.4f}  acc {train_accuracy:.4f}  "
                f"val_loss {metrics['loss']:.4f}  val_acc {metrics['accuracy']:.4f}{voted}"
                f"{'  [green]best, saved[/]' if record['best'] else ''}  {record['seconds']:.0f}s"
            )


def _freeze_all_but_the_head(run: TrainingRun, frozen: bool) -> None:
    head = classifier_head(run.network) + "."
    for name, parameter in run.network.named_parameters():
        parameter.requires_grad_(not frozen or name.startswith(head))


def _save(run: TrainingRun, epoch: int, improved: bool) -> None:
    """The best checkpoint (when this epoch is it), the history and the resume state; the main process only."""
    if not run.group.is_main:
        return
    network = run.network_state()
    if improved:
        provenance = {**run.provenance, "date": now_iso(), "epoch": epoch, "epochs": run.config.epochs}
        checkpoint = {**network, "temperature": 1.0, "metrics": run.best_metrics, "provenance": provenance}
        save_checkpoint(run.out, checkpoint, half=run.config.half)
    write_history(history_path(run.out), run.history)
    if run.curves is not None:
        run.curves.update(run.history)
    save_resume_state(run, network, epoch)


def _finish(run: TrainingRun) -> None:
    """Check that every process ends with the same weights; calibrate the best checkpoint."""
    if run.group.active:
        prints = distributed.fingerprints(run.group, run.network)
        if len(set(prints)) > 1:
            raise FerError(f"the {run.group.world} processes ended with different weights: {prints}")
        run.log.print(f"all {run.group.world} processes hold the same weights (fingerprint {prints[0]})")
    if run.group.is_main:
        with written_whole(run.out):
            correction, calibration = _fit_outputs(run)
        if correction is not None:
            run.log.print(f"validation data: {describe_prior_correction(correction)}")
        run.log.print(f"validation data: {describe(calibration)}")
    if run.tensorboard is not None:
        run.tensorboard.hyperparameters(plain_config(run.config), run.best_metrics)
    run.log.print(f"best val accuracy {run.best_accuracy:.4f} (epoch {run.best_metrics.get('epoch')}) -> {run.out}")
    if run.group.is_main:
        say_resume_state_kept(run)


def _fit_outputs(run: TrainingRun) -> tuple[dict | None, dict]:
    """On all the validation data, with the best checkpoint's weights as stored (float16 or not): choose its prior
    correction (``--prior-correction``), then fit its temperature to the corrected logits. With votes both are fitted
    on the images with a majority, against it. With a correction the stored metrics become the corrected model's."""
    out, config = run.out, run.config
    checkpoint = read_checkpoint(out)
    model = prepare_model(build_model(checkpoint), run.device)
    # in prediction's precision (float32 on a CPU): the correction and temperature fit the logits users will get
    probs, targets, _ = predict_tensors(model, run.val_loader(everything=True), run.device)
    labels = targets if run.val_majority is None else run.val_majority
    clear = labels >= 0
    fitted_on = run.provenance["val_data"] + (
        ", against the majority of the votes" if run.val_majority is not None else ""
    )
    log_probs = np.log(np.clip(probs, 1e-12, None))
    correction = choose_prior_correction(log_probs[clear], labels[clear], run.class_prior, config.prior_correction,
                                         fitted_on)  # fmt: skip
    tau = correction["tau"] if correction else 0.0
    adjusted = log_probs - tau * log_class_prior(run.class_prior)
    calibration = calibrate(softmax(adjusted)[clear], labels[clear], fitted_on=fitted_on)
    checkpoint["temperature"] = float(calibration["temperature"])
    checkpoint["prior_correction"] = tau
    metrics = dict(checkpoint.get("metrics", {}))
    if tau:  # the model as it now predicts (the best epoch's figures were without the correction)
        metrics = {**run.scores(softmax(adjusted), targets, np.arange(len(targets))), "epoch": metrics.get("epoch")}
    checkpoint["metrics"] = {
        **metrics,
        "calibration": calibration,
        **({"prior_correction": correction} if correction else {}),
    }
    save_checkpoint(out, checkpoint)
    return correction, calibration


def _progress(log: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[stats]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=log,
        transient=True,
    )
