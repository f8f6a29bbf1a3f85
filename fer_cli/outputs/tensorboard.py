"""``fer train --tensorboard DIR``: the epoch's scalars, the validation confusion matrix as a
picture, and the run's hyper-parameters, as TensorBoard event files (``tensorboard --logdir DIR``).

Needs the ``tensorboard`` package (``pip install tensorboard``, or fer's ``tensorboard`` extra); ``check_available``
says so in one line before any work is done.
"""

from __future__ import annotations

import importlib.util

from ..errors import FerError
from . import figures

SCALARS = {  # history column -> TensorBoard tag
    "train_loss": "loss/train",
    "val_loss": "loss/val",
    "train_accuracy": "accuracy/train",
    "val_accuracy": "accuracy/val",
    "val_macro_f1": "macro_f1/val",
    "lr": "learning_rate",
    "seconds": "seconds_per_epoch",
}


def check_available() -> None:
    if importlib.util.find_spec("tensorboard") is None:
        raise FerError(
            "--tensorboard needs the tensorboard package: pip install tensorboard (or, in fer's folder, pip install '.[tensorboard]')"
        )


class TensorBoardLog:
    def __init__(self, folder: str):
        check_available()
        from torch.utils.tensorboard import SummaryWriter

        self.folder = folder
        self.writer = SummaryWriter(log_dir=folder)

    def epoch(self, record: dict, metrics: dict, class_names: list[str]) -> None:
        """One epoch: its history row's numbers, the validation ECE, and the confusion matrix as a figure."""
        step = record["epoch"]
        for column, tag in SCALARS.items():
            if record.get(column) is not None:
                self.writer.add_scalar(tag, record[column], step)
        self.writer.add_scalar("ece/val", metrics["expected_calibration_error"], step)
        figure = figures.confusion_heatmap(
            metrics["confusion_matrix"], class_names, f"validation, epoch {step}: accuracy {metrics['accuracy']:.1%}"
        )
        self.writer.add_image("confusion_matrix/val", figures.to_rgb(figure), step, dataformats="HWC")
        self.writer.flush()

    def hyperparameters(self, config: dict, best: dict) -> None:
        """The run's settings beside its best epoch's results (TensorBoard's HPARAMS tab)."""
        plain = {k: v if isinstance(v, int | float | str | bool) else str(v) for k, v in config.items()}
        results = {
            "hparam/best_val_accuracy": best.get("accuracy", 0.0),
            "hparam/best_val_loss": best.get("loss", 0.0),
            "hparam/best_epoch": best.get("epoch", 0),
        }
        self.writer.add_hparams(plain, results, run_name=".")

    def close(self) -> None:
        self.writer.close()
