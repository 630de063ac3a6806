"""Named training events and the callbacks that react to them.

The events are declared once, in `EVENTS`, in the order a run emits them: on_progress (work before
training, such as decoding the images once), on_train_start, then per epoch on_epoch_start,
on_batch_end (per batch) and on_epoch_end; finally on_train_end and, from `imgclf.train`, on_run_end
(with the finished `Run`). Callbacks read and update the shared `TrainState`; setting
`state.stop = True` ends training after the current epoch.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is not imported by the command line's --help
    import torch
    from torch import nn

logger = logging.getLogger(__name__)


EVENTS = (
    "on_progress",
    "on_train_start",
    "on_epoch_start",
    "on_batch_end",
    "on_epoch_end",
    "on_train_end",
    "on_run_end",
)


@dataclass
class RunInfo:
    """What a run is about, set before training starts; the console shows it, and elapsed times
    count from `started` (data preparation included)."""

    started: float = field(default_factory=time.perf_counter)
    run_dir: Path | None = None
    layout: str | None = None
    classes: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)  # images per split: train, val, test
    validation_split: str | None = None  # "test" when validating on the test split
    problems: list[Any] = field(default_factory=list)  # the files left out (imgclf.data.imageset.Problem)
    spec: Any = None  # the preprocessing (imgclf.data.preprocess.PreprocessSpec)
    device: str = ""
    cache: str = ""  # where the decoded images live: ram, disk or none
    summary: Any = None  # the model's layer table (imgclf.models.summary.ModelSummary)
    resumed_from: int | None = None  # the epoch a resumed run continues after
    recipe: str = ""


@dataclass
class TrainState:
    """What the loop and the callbacks share. `epoch` counts completed epochs."""

    epochs: int
    model: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: Any
    monitor: str = "val_loss"
    epoch: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    best_value: float | None = None
    best_epoch: int | None = None
    epochs_without_improvement: int = 0
    improved: bool = False
    stop: bool = False
    stop_reason: str = ""
    batch: int = 0
    batches: int = 0
    running: dict[str, float] = field(default_factory=dict)
    info: RunInfo = field(default_factory=RunInfo)
    # the last epoch's validation answers, one per image in the validation loader's order: right or
    # not, and the labels (None for multi-label and distributed runs); the stop rules pair epochs by them
    val_right: Any = None
    val_labels: Any = None

    @property
    def last(self) -> dict[str, float]:
        return self.history[-1] if self.history else {}


class Callback:
    """Base class: override the events you need."""

    def on_progress(self, stage: str, done: int, total: int) -> None:
        """Progress of work before training (decoding the images once)."""

    def on_train_start(self, state: TrainState) -> None: ...

    def on_epoch_start(self, state: TrainState) -> None: ...

    def on_batch_end(self, state: TrainState) -> None: ...

    def on_epoch_end(self, state: TrainState) -> None: ...

    def on_train_end(self, state: TrainState) -> None: ...

    def on_run_end(self, run: Any) -> None:
        """The run is finished and evaluated (`run` is the `imgclf.training.trainer.Run`)."""


def emit(callbacks: Sequence[Callback], event: str, subject: Any) -> None:
    """Call `event` (one of EVENTS) on every callback that has it, in order."""
    if event not in EVENTS or event == "on_progress":
        raise ValueError(f"unknown training event {event!r}")
    for callback in callbacks:
        handler = getattr(callback, event, None)
        if handler is not None:
            handler(subject)


def _monitored(row: dict[str, float], monitor: str) -> float | None:
    value = row.get(monitor)
    if value is None or not math.isfinite(value):
        return None
    return value


class KeepBest(Callback):
    """Track the monitored metric and save the model (via `save`) whenever it improves.

    With `val_acc`, an epoch that ties the best accuracy with a lower validation loss improves too
    (small validation sets tie often).
    """

    def __init__(self, save: Callable[[TrainState], None], min_delta: float = 0.0) -> None:
        self.save = save
        self.min_delta = min_delta
        self.best_loss: float | None = None

    def on_epoch_end(self, state: TrainState) -> None:
        value = _monitored(state.last, state.monitor)
        if value is None:  # no validation data: the latest model is the best we know
            value = -float(state.epoch) if state.monitor == "val_loss" else float(state.epoch)
        lower_is_better = state.monitor.endswith("loss")
        loss = _monitored(state.last, "val_loss")
        if state.best_value is None:
            improved = True
        elif lower_is_better:
            improved = value < state.best_value - self.min_delta
        else:
            improved = value > state.best_value + self.min_delta
            if not improved and value == state.best_value and loss is not None:
                best_loss = self._best_loss(state)
                improved = best_loss is not None and loss < best_loss
        state.improved = improved
        if improved:
            state.best_value = value
            state.best_epoch = state.epoch
            state.epochs_without_improvement = 0
            self.save(state)
        else:
            state.epochs_without_improvement += 1

    @staticmethod
    def _best_loss(state: TrainState) -> float | None:
        rows = [row for row in state.history if row.get("epoch") == state.best_epoch]
        return _monitored(rows[-1], "val_loss") if rows else None


class TimeLimit(Callback):
    """Stop after the epoch when the next one would end past `seconds` since the run started."""

    def __init__(self, seconds: float, started: float) -> None:
        self.seconds = seconds
        self.started = started

    def on_epoch_end(self, state: TrainState) -> None:
        elapsed = time.perf_counter() - self.started
        if state.epoch < state.epochs and elapsed + state.last.get("seconds", 0.0) > self.seconds:
            state.stop = True
            state.stop_reason = (
                f"time limit: {self.seconds / 60:.1f} min would be passed by epoch {state.epoch + 1} "
                f"({elapsed / 60:.1f} min so far); the best epoch is kept"
            )


class EarlyStopping(Callback):
    """Stop when the monitored metric has not improved for `patience` epochs (KeepBest runs first)."""

    def __init__(self, patience: int) -> None:
        self.patience = patience

    def on_epoch_end(self, state: TrainState) -> None:
        if state.epochs_without_improvement >= self.patience and state.epoch < state.epochs:
            state.stop = True
            state.stop_reason = (
                f"early stop: {state.monitor} has not improved for {self.patience} epochs "
                f"(best {state.best_value:.4f} at epoch {state.best_epoch})"
            )
