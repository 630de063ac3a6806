"""Figures of the evaluation and the data: confusion matrices, reliability, galleries, histograms.

Each function returns a matplotlib `Figure` (which a notebook displays as it is); `save_figure`
writes one atomically. No pyplot global state is used.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from imgclf.io import write_atomic


def save_figure(figure: Figure, path: str | Path, dpi: int = 100) -> Path:
    path = Path(path)
    write_atomic(path, lambda tmp: figure.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight"))
    return path


def _label_size(count: int) -> float:
    return float(np.clip(220 / max(count, 1), 4, 11))


def confusion_figure(matrix: np.ndarray, classes: Sequence[str], normalize: bool = False) -> Figure:
    """Counts (or rows normalized to 1) with labels whose size and layout adapt to 2 … 100+ classes."""
    count = len(classes)
    values = matrix.astype(np.float64)
    if normalize:
        totals = values.sum(axis=1, keepdims=True)
        values = np.divide(values, totals, out=np.zeros_like(values), where=totals > 0)
    side = float(np.clip(2.5 + 0.32 * count, 5, 36))
    figure = Figure(figsize=(side + 1.5, side))
    axes = figure.add_subplot(1, 1, 1)
    image = axes.imshow(values, cmap="Blues", vmin=0, vmax=1 if normalize else max(1, values.max()))
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04)
    size = _label_size(count)
    axes.set_xticks(
        range(count),
        labels=list(classes),
        rotation=90 if count > 6 else 45,
        ha="center" if count > 6 else "right",
        fontsize=size,
    )
    axes.set_yticks(range(count), labels=list(classes), fontsize=size)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title("Confusion matrix" + (" (rows sum to 1)" if normalize else " (counts)"))
    if count <= 30:  # numbers in the cells while they stay readable
        threshold = values.max() / 2 if values.size else 0
        for t in range(count):
            for p in range(count):
                value = values[t, p]
                if value == 0 and not normalize:
                    continue
                text = f"{value:.2f}" if normalize else f"{int(matrix[t, p])}"
                axes.text(
                    p,
                    t,
                    text,
                    ha="center",
                    va="center",
                    fontsize=max(4.0, size - 2),
                    color="white" if value > threshold else "black",
                )
    figure.tight_layout()
    return figure


def reliability_figure(bins: list[dict[str, Any]], ece: float) -> Figure:
    """Accuracy against confidence per bin; the diagonal is perfect calibration."""
    figure = Figure(figsize=(5, 5))
    axes = figure.add_subplot(1, 1, 1)
    centers = [(b["low"] + b["high"]) / 2 for b in bins]
    widths = [b["high"] - b["low"] for b in bins]
    accuracy = [0.0 if math.isnan(b["accuracy"]) else b["accuracy"] for b in bins]
    axes.bar(centers, accuracy, width=widths, edgecolor="black", color="#4c72b0", label="accuracy")
    gap = [0.0 if math.isnan(b["confidence"]) else b["confidence"] - a for b, a in zip(bins, accuracy)]
    axes.bar(
        centers, gap, bottom=accuracy, width=widths, color="#dd8452", alpha=0.5, label="gap to confidence"
    )
    axes.plot([0, 1], [0, 1], "k--", linewidth=1)
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1)
    axes.set_xlabel("confidence")
    axes.set_ylabel("accuracy")
    axes.set_title(f"Reliability (ECE {ece:.3f})")
    axes.legend(loc="upper left")
    figure.tight_layout()
    return figure


def coverage_precision_figure(
    coverage: np.ndarray, precision: np.ndarray, point: tuple[float, float] | None, title: str
) -> Figure:
    """Precision of the answers given against the share of images answered, from the most confident
    down; `point` (coverage, precision) marks where the model's threshold stands."""
    figure = Figure(figsize=(5.5, 4.2))
    axes = figure.add_subplot(1, 1, 1)
    axes.plot(coverage, precision, color="#4c72b0", linewidth=1.5)
    if point is not None:
        axes.plot(
            *point,
            "o",
            color="#c44e52",
            label=f"threshold: coverage {point[0]:.1%}, precision {point[1]:.1%}",
        )
        axes.axvline(point[0], color="#c44e52", linewidth=0.8, linestyle=":")
        axes.legend(loc="lower left")
    axes.set_xlim(0, 1)
    axes.set_ylim(max(0.0, float(np.min(precision)) - 0.05) if len(precision) else 0.0, 1.005)
    axes.set_xlabel("coverage (share of images answered)")
    axes.set_ylabel("precision of the answers")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    return figure


def image_grid_figure(
    images: Sequence[np.ndarray],
    titles: Sequence[str],
    columns: int = 6,
    title: str | None = None,
    cell: float = 1.9,
) -> Figure:
    """A grid of uint8 H×W×C images with a caption under each."""
    count = max(1, len(images))
    columns = min(columns, count)
    rows = math.ceil(count / columns)
    figure = Figure(figsize=(columns * cell, rows * (cell + 0.35)))
    for position, (image, caption) in enumerate(zip(images, titles)):
        axes = figure.add_subplot(rows, columns, position + 1)
        shown = image[..., 0] if image.ndim == 3 and image.shape[-1] == 1 else image
        axes.imshow(shown, cmap="gray" if shown.ndim == 2 else None, vmin=0, vmax=255)
        axes.set_title(caption, fontsize=7)
        axes.axis("off")
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    return figure


def class_grid_figure(
    images_by_class: dict[str, list[np.ndarray]], per_class: int, cell: float = 1.4
) -> Figure:
    """One row per class, `per_class` samples each, the class name on the left (the tutorials' first look)."""
    classes = list(images_by_class)
    rows = max(1, len(classes))
    figure = Figure(figsize=(per_class * cell + 1.6, rows * cell))
    grid = figure.add_gridspec(rows, per_class)
    for row, name in enumerate(classes):
        for column in range(per_class):
            axes = figure.add_subplot(grid[row, column])
            axes.set_xticks([])
            axes.set_yticks([])
            for spine in axes.spines.values():
                spine.set_visible(False)
            if column < len(images_by_class[name]):
                image = images_by_class[name][column]
                shown = image[..., 0] if image.ndim == 3 and image.shape[-1] == 1 else image
                axes.imshow(shown, cmap="gray" if shown.ndim == 2 else None, vmin=0, vmax=255)
            if column == 0:
                axes.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=9)
    figure.tight_layout()
    return figure


def class_counts_figure(counts: dict[str, dict[str, int]]) -> Figure:
    """Stacked bars of images per class and split ({split: {class: count}})."""
    splits = [s for s in ("train", "val", "test") if s in counts and sum(counts[s].values())]
    classes = list(next(iter(counts.values())).keys()) if counts else []
    figure = Figure(figsize=(float(np.clip(1 + 0.3 * len(classes), 5, 30)), 3.6))
    axes = figure.add_subplot(1, 1, 1)
    bottom = np.zeros(len(classes))
    for split in splits:
        values = np.array([counts[split].get(name, 0) for name in classes], dtype=float)
        axes.bar(range(len(classes)), values, bottom=bottom, label=split)
        bottom += values
    axes.set_xticks(
        range(len(classes)),
        labels=classes,
        rotation=90 if len(classes) > 8 else 0,
        fontsize=_label_size(len(classes)),
    )
    axes.set_ylabel("images")
    axes.set_title("Images per class")
    axes.legend()
    figure.tight_layout()
    return figure


def size_histogram_figure(widths: Sequence[int], heights: Sequence[int]) -> Figure:
    """2-D histogram of image width × height (a single size shows as one dot)."""
    figure = Figure(figsize=(5, 4))
    axes = figure.add_subplot(1, 1, 1)
    widths_array, heights_array = np.asarray(widths), np.asarray(heights)
    if len(set(zip(widths_array.tolist(), heights_array.tolist()))) <= 1:
        axes.scatter(widths_array[:1], heights_array[:1], s=80)
        axes.annotate(
            f"all {len(widths_array):,} images",
            (widths_array[0], heights_array[0]),
            textcoords="offset points",
            xytext=(8, 8),
        )
    else:
        histogram = axes.hist2d(widths_array, heights_array, bins=30, cmin=1, cmap="viridis")
        figure.colorbar(histogram[3], ax=axes, label="images")
    axes.set_xlabel("width (px)")
    axes.set_ylabel("height (px)")
    axes.set_title("Image sizes")
    figure.tight_layout()
    return figure
