"""The evaluation folder: metrics.json, confusion matrices, most_confused.csv, predictions.csv,
misclassified.png, reliability.png and coverage_precision.png, all from one array of probabilities.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from imgclf.evaluation.calibration import coverage_precision, unknown_metrics
from imgclf.evaluation.metrics import compute_metrics
from imgclf.evaluation.plots import (
    confusion_figure,
    coverage_precision_figure,
    image_grid_figure,
    reliability_figure,
    save_figure,
)
from imgclf.inference.unknown import UNKNOWN, UnknownRule
from imgclf.io import write_text_atomic

METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "predictions.csv"
MOST_CONFUSED_FILE = "most_confused.csv"
CONFUSION_FILE = "confusion_matrix.png"
CONFUSION_NORMALIZED_FILE = "confusion_matrix_normalized.png"
MISCLASSIFIED_FILE = "misclassified.png"
RELIABILITY_FILE = "reliability.png"
COVERAGE_FILE = "coverage_precision.png"


@dataclass
class Evaluation:
    """Metrics of one model on one split, and the folder holding every output."""

    metrics: dict[str, Any]
    out_dir: Path
    problems: list[Any] = field(
        default_factory=list
    )  # files left out (unreadable), listed in skipped_files.csv

    @property
    def accuracy(self) -> float:
        return float(self.metrics["accuracy"])


def _json_ready(value: Any) -> Any:
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    return value


def write_evaluation(
    out_dir: str | Path,
    probabilities: np.ndarray,
    labels: np.ndarray,
    classes: Sequence[str],
    sources: Sequence[str],
    load_image: Callable[[int], np.ndarray | None] | None = None,
    split: str = "all",
    top_k: int = 5,
    gallery_size: int = 24,
    extra: dict | None = None,
    explain: Callable[[np.ndarray, int], np.ndarray] | None = None,
    likeness: np.ndarray | None = None,
    rule: UnknownRule | None = None,
) -> Evaluation:
    """Compute the metrics (plus `extra` entries) and write every evaluation output into `out_dir`.

    `explain(image, class_index)` → a heatmap (H×W, 0–1): the mistakes' gallery then shows where the
    model looked for the class it wrongly chose (Grad-CAM, `imgclf.inference.explain`).
    `likeness` (to the training images, N×2) and `rule`: the model's `unknown` answer, whose coverage
    and precision metrics.json reports, coverage_precision.png marks and predictions.csv shows.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    classes = list(classes)
    metrics = compute_metrics(probabilities, labels, classes)
    metrics["split"] = split
    metrics.update(extra or {})
    metrics.update(unknown_metrics(probabilities, labels, likeness, rule))
    unknown = rule.mask(probabilities, likeness) if rule is not None else None
    _write_coverage_figure(out_dir / COVERAGE_FILE, probabilities, labels, metrics.get("unknown"))
    write_text_atomic(out_dir / METRICS_FILE, json.dumps(_json_ready(metrics), indent=2))
    matrix = np.asarray(metrics["confusion_matrix"])
    save_figure(confusion_figure(matrix, classes), out_dir / CONFUSION_FILE)
    save_figure(confusion_figure(matrix, classes, normalize=True), out_dir / CONFUSION_NORMALIZED_FILE)
    save_figure(reliability_figure(metrics["calibration_bins"], metrics["ece"]), out_dir / RELIABILITY_FILE)
    _write_most_confused(out_dir / MOST_CONFUSED_FILE, matrix, classes)
    losses = _write_predictions(
        out_dir / PREDICTIONS_FILE, probabilities, labels, classes, sources, top_k, unknown, likeness
    )
    _write_gallery(
        out_dir / MISCLASSIFIED_FILE,
        probabilities,
        labels,
        classes,
        losses,
        load_image,
        gallery_size,
        explain,
    )
    return Evaluation(metrics, out_dir)


def _write_most_confused(path: Path, matrix: np.ndarray, classes: list[str]) -> None:
    from imgclf.evaluation.metrics import most_confused

    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["true", "predicted", "count"])
    writer.writerows(most_confused(matrix, classes))
    write_text_atomic(path, buffer.getvalue())


def _write_predictions(
    path: Path,
    probabilities: np.ndarray,
    labels: np.ndarray,
    classes: list[str],
    sources: Sequence[str],
    top_k: int,
    unknown: np.ndarray | None = None,
    likeness: np.ndarray | None = None,
) -> np.ndarray:
    """One row per image; with an `unknown` rule, its `answer` (the class or unknown) too, and the
    `similarity` and `distance` to the training images when the model has a feature bank."""
    k = min(top_k, len(classes))
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    picked = probabilities[np.arange(len(labels)), labels]
    losses = -np.log(np.clip(picked, 1e-12, 1.0))
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    header = ["path", "true", "predicted", "confidence", "loss", "correct"]
    for rank in range(1, k + 1):
        header += [f"label_{rank}", f"prob_{rank}"]
    header += ["answer"] if unknown is not None else []
    header += ["similarity", "distance"] if likeness is not None else []
    writer.writerow(header)
    for row, source in enumerate(sources):
        top = order[row]
        predicted = top[0]
        line = [
            source,
            classes[labels[row]],
            classes[predicted],
            f"{probabilities[row, predicted]:.6f}",
            f"{losses[row]:.6f}",
            int(predicted == labels[row]),
        ]
        for index in top:
            line += [classes[index], f"{probabilities[row, index]:.6f}"]
        if unknown is not None:
            line.append(UNKNOWN if unknown[row] else classes[predicted])
        if likeness is not None:
            line += [f"{likeness[row, 0]:.6f}", f"{likeness[row, 1]:.6f}"]
        writer.writerow(line)
    write_text_atomic(path, buffer.getvalue())
    return losses


def _write_coverage_figure(
    path: Path, probabilities: np.ndarray, labels: np.ndarray, unknown: dict[str, Any] | None
) -> None:
    confidence = probabilities.max(axis=1)
    _, coverage, precision = coverage_precision(confidence, probabilities.argmax(axis=1) == labels)
    point = (unknown["coverage"], unknown["precision"]) if unknown and unknown["answered"] else None
    title = "Coverage–precision by confidence"
    save_figure(coverage_precision_figure(coverage, precision, point, title), path)


def _write_gallery(
    path: Path,
    probabilities: np.ndarray,
    labels: np.ndarray,
    classes: list[str],
    losses: np.ndarray,
    load_image: Callable[[int], np.ndarray | None] | None,
    size: int,
    explain: Callable[[np.ndarray, int], np.ndarray] | None = None,
) -> None:
    predicted = probabilities.argmax(axis=1)
    wrong = np.flatnonzero(predicted != labels)
    wrong = wrong[np.argsort(-losses[wrong], kind="stable")][:size]
    images, captions = [], []
    for index in wrong:
        image = load_image(int(index)) if load_image is not None else None
        if image is None:
            continue
        if explain is not None:
            from imgclf.inference.explain import overlay

            image = overlay(image, explain(image, int(predicted[index])))
        images.append(image)
        captions.append(
            f"true {classes[labels[index]]}\npred {classes[predicted[index]]} "
            f"({probabilities[index, predicted[index]]:.2f})"
        )
    if images:
        title = "Highest-loss mistakes" + (": where the model looked for its answer" if explain else "")
        figure = image_grid_figure(images, captions, columns=6, title=title)
    else:
        from matplotlib.figure import Figure

        figure = Figure(figsize=(4, 1.2))
        figure.text(0.5, 0.5, "no misclassified images", ha="center", va="center")
    save_figure(figure, path)
