"""metrics.csv and curves.png in the run folder, rewritten atomically every epoch (always on).

metrics.csv has one row per epoch (the columns below); curves.png plots accuracy and loss, train
against validation, as the tutorials plot them.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from imgclf.config import Config
from imgclf.io import write_atomic, write_text_atomic
from imgclf.runs import RunFolder
from imgclf.training.events import Callback, TrainState

# seconds: this epoch's training and validation; elapsed: since this process started the run
# (data preparation included), so "time to reach an accuracy" reads straight off the file.
METRIC_COLUMNS = (
    "epoch",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "lr",
    "seconds",
    "images_per_s",
    "elapsed",
)


class MetricsLog(Callback):
    """metrics.csv and curves.png in the run folder, rewritten atomically every epoch."""

    def __init__(self, csv_path: Path, curves_path: Path | None) -> None:
        self.csv_path = csv_path
        self.curves_path = curves_path

    def on_epoch_end(self, state: TrainState) -> None:
        buffer = io.StringIO()
        columns = list(METRIC_COLUMNS)
        if any("val_map" in row for row in state.history):  # a multi-label run
            columns.insert(columns.index("val_acc") + 1, "val_map")
        writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in state.history:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
        write_text_atomic(self.csv_path, buffer.getvalue())
        if self.curves_path is not None:
            plot_curves(state.history, self.curves_path)


def plot_curves(history: list[dict[str, float]], path: Path) -> None:
    """Accuracy and loss per epoch, train vs val, as the tutorials plot them."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    epochs = [row["epoch"] for row in history]
    figure = Figure(figsize=(10, 4), dpi=100)
    for position, (metric, title) in enumerate((("acc", "Accuracy"), ("loss", "Loss")), start=1):
        axes = figure.add_subplot(1, 2, position)
        for split, style in (("train", "-o"), ("val", "-s")):
            values = [row.get(f"{split}_{metric}", float("nan")) for row in history]
            if any(math.isfinite(v) for v in values):
                axes.plot(epochs, values, style, label=split, markersize=4)
        axes.set_title(title)
        axes.set_xlabel("epoch")
        axes.grid(alpha=0.3)
        axes.legend()
    figure.tight_layout()
    write_atomic(path, lambda tmp: figure.savefig(tmp, format="png"))


def create_logger(cfg: Config, folder: RunFolder) -> Callback:
    return MetricsLog(folder.metrics, folder.curves)
