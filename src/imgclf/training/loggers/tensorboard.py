"""TensorBoard: each epoch's losses, accuracy, learning rate and speed, then the run's final metrics,
hyper-parameters, curves and confusion matrix (pip install 'imgclf[tensorboard]').

The event files go into the run folder's `tensorboard/`, so `tensorboard --logdir runs/` shows every
run of a project side by side. Nothing leaves the machine.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from imgclf.config import Config, config_to_dict
from imgclf.runs import RunFolder
from imgclf.training.events import Callback, TrainState
from imgclf.training.loggers import finite_number, flat_config, phase_names, require_extra

logger = logging.getLogger(__name__)

FOLDER = "tensorboard"
# metrics.csv's columns as TensorBoard tags: grouped so that train and val share a chart
TAGS = {
    "train_loss": "loss/train",
    "val_loss": "loss/val",
    "train_acc": "accuracy/train",
    "val_acc": "accuracy/val",
    "val_map": "mAP/val",
    "lr": "learning_rate",
    "images_per_s": "speed/images_per_s",
    "seconds": "time/epoch_seconds",
    "elapsed": "time/elapsed_seconds",
}
# the run's pictures, logged once at the end (run-folder relative paths)
IMAGES = {
    "curves": "curves.png",
    "confusion_matrix": "evaluation/confusion_matrix.png",
    "confusion_matrix_normalized": "evaluation/confusion_matrix_normalized.png",
    "misclassified": "evaluation/misclassified.png",
}


def check() -> None:
    """At start: a one-line error when the TensorBoard writer is not installed."""
    require_extra("--log tensorboard", "tensorboard", "tensorboard", "torch.utils.tensorboard")


def create_logger(cfg: Config, folder: RunFolder) -> Callback:
    return TensorBoardLog(cfg, folder)


class TensorBoardLog(Callback):
    """Writes the run into `<run>/tensorboard/` as it goes: scalars per epoch, the rest at the end."""

    def __init__(self, cfg: Config, folder: RunFolder) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.cfg, self.folder = cfg, folder
        self.path = folder.path / FOLDER
        self.writer = SummaryWriter(log_dir=str(self.path))
        logger.info(
            "TensorBoard logs in %s: tensorboard --logdir %s, then open http://localhost:6006",
            self.path, folder.path.parent,
        )  # fmt: skip

    def on_train_start(self, state: TrainState) -> None:
        import yaml

        text = yaml.safe_dump(config_to_dict(self.cfg), sort_keys=False)
        self.writer.add_text("config", "```\n" + text + "\n```", 0)

    def on_epoch_end(self, state: TrainState) -> None:
        row = state.history[-1] if state.history else {}
        epoch = int(row.get("epoch", state.epoch))
        for key, tag in TAGS.items():
            value = row.get(key)
            if finite_number(value):
                self.writer.add_scalar(tag, float(value), epoch)
        self.writer.flush()

    def on_run_end(self, run: Any) -> None:
        metrics = {f"final/{key}": float(value) for key, value in run.metrics.items() if finite_number(value)}
        for tag, value in metrics.items():
            self.writer.add_scalar(tag, value, run.best_epoch or 0)
        for name, seconds in phase_names(run):
            self.writer.add_scalar(f"phase_seconds/{name}", seconds, 0)
        for tag, relative in IMAGES.items():
            picture = self.folder.path / relative
            if picture.is_file():
                self.writer.add_image(tag, _png(picture), run.best_epoch or 0, dataformats="HWC")
        report = self.folder.path / "report.html"
        self.writer.add_text(
            "run",
            f"run folder `{self.folder.path}`; model `{run.artifact}`; best epoch {run.best_epoch}; "
            f"stopped: {run.stop_reason or 'as planned'}"
            + (f"; report `{report}`" if report.is_file() else ""),
            0,
        )
        hparams = {key: _hparam(value) for key, value in flat_config(self.cfg).items()}
        self.writer.add_hparams(hparams, metrics or {"final/none": 0.0}, run_name=".")
        self.writer.close()


def _hparam(value: Any) -> Any:
    """A config value as TensorBoard's hyper-parameters take it: a number, a bool or text."""
    if isinstance(value, (bool, int, float, str)):
        return value
    return "" if value is None else str(value)


def _png(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))
