"""Multi-label models judged and tuned: per-label thresholds chosen on validation, the metrics
(mAP, micro and macro F1, per-label precision, recall, F1 and AP, subset accuracy, Hamming loss),
and the evaluation folder written from one array of probabilities (samples × labels).

A label counts as answered when its probability reaches its threshold. Thresholds are chosen per
label on the validation split (the F1-best cut by default; with `min_precision`, the lowest cut
whose precision reaches it), because a single 0.5 suits few labels: rare labels' probabilities stay
low, and frequent ones' high.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from imgclf.evaluation.outputs import METRICS_FILE, PREDICTIONS_FILE, Evaluation, _json_ready
from imgclf.evaluation.plots import confusion_figure, image_grid_figure, save_figure
from imgclf.io import write_text_atomic

# a label with no positive image in validation keeps this threshold (nothing to choose it by)
DEFAULT_THRESHOLD = 0.5
PER_LABEL_FILE = "per_label.csv"
MISSED_TOGETHER_FILE = "missed_together.png"
COOCCURRENCE_FILE = "label_cooccurrence.png"
MISTAKES_FILE = "misclassified.png"
LABEL_JOIN = "|"  # between the labels of one image in CSV columns ("cat|dog")


def join_labels(names: Sequence[str]) -> str:
    return LABEL_JOIN.join(names)


def average_precision(scores: np.ndarray, positives: np.ndarray) -> float:
    """Area under the precision–recall curve of one label, as scikit-learn's
    `average_precision_score` (NaN when the label has no positive image)."""
    if not positives.any():
        return float("nan")
    from sklearn.metrics import average_precision_score

    return float(average_precision_score(positives.astype(np.int64), scores))


def mean_average_precision(probabilities: np.ndarray, targets: np.ndarray) -> float:
    """mAP: the mean of the per-label APs over the labels that have a positive image."""
    values = [average_precision(probabilities[:, j], targets[:, j] > 0) for j in range(targets.shape[1])]
    values = [v for v in values if np.isfinite(v)]
    return float(np.mean(values)) if values else float("nan")


def choose_threshold(scores: np.ndarray, positives: np.ndarray, min_precision: float | None = None) -> float:
    """The cut for one label: the F1-best one, or with `min_precision` the lowest whose precision
    reaches it (1.0, never answered, when none does). The cut lies halfway between the last score
    taken and the next, so it generalizes to scores between them."""
    if not positives.any():
        return DEFAULT_THRESHOLD
    order = np.argsort(-scores, kind="stable")
    sorted_scores = scores[order]
    hits = np.cumsum(positives[order])
    taken = np.arange(1, len(scores) + 1)
    precision = hits / taken
    recall = hits / positives.sum()
    # only where the next score differs: ties are taken together
    last_of_tie = np.append(sorted_scores[1:] < sorted_scores[:-1], True)
    if min_precision is None:
        f1 = np.where(last_of_tie, 2 * precision * recall / np.maximum(precision + recall, 1e-12), -1.0)
        best = int(np.argmax(f1))
    else:
        good = np.flatnonzero(last_of_tie & (precision >= min_precision))
        if not len(good):
            return 1.0
        best = int(good[np.argmax(recall[good])])
    below = sorted_scores[best + 1] if best + 1 < len(scores) else 0.0
    return float((sorted_scores[best] + below) / 2.0)


def choose_thresholds(
    probabilities: np.ndarray, targets: np.ndarray, min_precision: float | None = None
) -> list[float]:
    """One threshold per label (see `choose_threshold`)."""
    return [
        choose_threshold(probabilities[:, j], targets[:, j] > 0, min_precision)
        for j in range(targets.shape[1])
    ]


def answered(probabilities: np.ndarray, thresholds: Sequence[float]) -> np.ndarray:
    """samples × labels: True where the label's probability reaches its threshold."""
    return probabilities >= np.asarray(thresholds, dtype=probabilities.dtype)[None, :]


def multi_label_metrics(
    probabilities: np.ndarray,
    targets: np.ndarray,
    thresholds: Sequence[float],
    label_names: Sequence[str],
) -> dict[str, Any]:
    """Every metric of a multi-label evaluation, per label and overall."""
    truth = targets > 0
    chosen = answered(probabilities, thresholds)
    true_positive = (chosen & truth).sum(0).astype(np.float64)
    false_positive = (chosen & ~truth).sum(0).astype(np.float64)
    false_negative = (~chosen & truth).sum(0).astype(np.float64)
    precision = np.divide(true_positive, true_positive + false_positive, out=np.zeros_like(true_positive),
                          where=(true_positive + false_positive) > 0)  # fmt: skip
    recall = np.divide(true_positive, true_positive + false_negative, out=np.zeros_like(true_positive),
                       where=(true_positive + false_negative) > 0)  # fmt: skip
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(precision),
                   where=(precision + recall) > 0)  # fmt: skip
    has_positive = truth.sum(0) > 0
    ap = [average_precision(probabilities[:, j], truth[:, j]) for j in range(truth.shape[1])]
    micro_tp, micro_fp, micro_fn = true_positive.sum(), false_positive.sum(), false_negative.sum()
    micro_precision = micro_tp / max(micro_tp + micro_fp, 1.0)
    micro_recall = micro_tp / max(micro_tp + micro_fn, 1.0)
    micro_f1 = 2 * micro_precision * micro_recall / max(micro_precision + micro_recall, 1e-12)
    per_label = {
        name: {
            "precision": float(precision[j]),
            "recall": float(recall[j]),
            "f1": float(f1[j]),
            "ap": ap[j],
            "threshold": float(thresholds[j]),
            "support": int(truth[:, j].sum()),
            "answered": int(chosen[:, j].sum()),
        }
        for j, name in enumerate(label_names)
    }
    clipped = np.clip(probabilities.astype(np.float64), 1e-7, 1 - 1e-7)
    loss = -(truth * np.log(clipped) + ~truth * np.log(1 - clipped)).mean() if len(truth) else float("nan")
    return {
        "task": "multi-label",
        "count": len(targets),
        "loss": float(loss),  # mean binary cross-entropy per label
        "map": mean_average_precision(probabilities, targets),
        "macro_f1": float(f1[has_positive].mean()) if has_positive.any() else float("nan"),
        "micro_f1": float(micro_f1),
        "micro_precision": float(micro_precision),
        "micro_recall": float(micro_recall),
        "subset_accuracy": float((chosen == truth).all(1).mean()) if len(truth) else float("nan"),
        "hamming_loss": float((chosen != truth).mean()) if len(truth) else float("nan"),
        "labels_per_image": float(truth.sum(1).mean()) if len(truth) else float("nan"),
        "answered_per_image": float(chosen.sum(1).mean()) if len(truth) else float("nan"),
        "per_label": per_label,
        "missed_together": missed_together(chosen, truth).tolist(),
        "cooccurrence": (truth.T.astype(np.int64) @ truth.astype(np.int64)).tolist(),
    }


def missed_together(chosen: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """labels × labels: how often label i was missed (diagonal) and how often it was missed in an
    image that also missed label j — the labels the model loses together."""
    missed = (truth & ~chosen).astype(np.int64)
    return missed.T @ missed


def predict_targets(
    predictor: Any, prepared: Any, split: str, batch_size: int = 128
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(probabilities samples × labels, 0/1 targets, sample indices) of one split of a prepared
    multi-label set, through the `Predictor` (the preprocessing and backend of `predict`)."""
    from imgclf.evaluation.evaluate import predict_split

    probabilities, _, indices, _ = predict_split(predictor, prepared, split, batch_size)
    return probabilities, prepared.image_set.targets[indices].astype(np.float32), indices


# the final metrics a multi-label run reports, as `{split}_{name}` (val_acc: subset accuracy)
RUN_METRICS = {
    "map": "map",
    "macro_f1": "macro_f1",
    "micro_f1": "micro_f1",
    "acc": "subset_accuracy",
    "hamming_loss": "hamming_loss",
    "loss": "loss",
    "count": "count",
}


def run_metrics(metrics: dict[str, Any], prefix: str) -> dict[str, float]:
    """A multi-label evaluation's headline numbers as a run's final metrics (`val_map`, …)."""
    return {f"{prefix}_{name}": float(metrics[key]) for name, key in RUN_METRICS.items()}


def write_multi_label_evaluation(
    out_dir: str | Path,
    probabilities: np.ndarray,
    targets: np.ndarray,
    thresholds: Sequence[float],
    label_names: Sequence[str],
    sources: Sequence[str],
    load_image: Callable[[int], np.ndarray | None] | None = None,
    split: str = "all",
    extra: dict | None = None,
    gallery_size: int = 24,
) -> Evaluation:
    """metrics.json, per_label.csv, predictions.csv (true, answered, missed and extra labels),
    label_cooccurrence.png, missed_together.png and the mistakes' gallery (images with missed or
    extra labels, worst first)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = list(label_names)
    metrics = multi_label_metrics(probabilities, targets, thresholds, names)
    metrics["split"] = split
    metrics.update(extra or {})
    write_text_atomic(out_dir / METRICS_FILE, json.dumps(_json_ready(metrics), indent=2))
    _write_per_label(out_dir / PER_LABEL_FILE, metrics["per_label"])
    chosen = answered(probabilities, thresholds)
    truth = targets > 0
    errors = _write_predictions(out_dir / PREDICTIONS_FILE, probabilities, truth, chosen, names, sources)
    cooccurrence = np.asarray(metrics["cooccurrence"])
    figure = confusion_figure(cooccurrence, names)
    figure.axes[0].set_title("Label co-occurrence (true labels, images with both)")
    figure.axes[0].set_xlabel("label")
    figure.axes[0].set_ylabel("label")
    save_figure(figure, out_dir / COOCCURRENCE_FILE)
    figure = confusion_figure(missed_together(chosen, truth), names)
    figure.axes[0].set_title("Missed together (diagonal: images that missed the label)")
    figure.axes[0].set_xlabel("also missed")
    figure.axes[0].set_ylabel("missed")
    save_figure(figure, out_dir / MISSED_TOGETHER_FILE)
    _write_gallery(
        out_dir / MISTAKES_FILE, probabilities, truth, chosen, names, errors, load_image, gallery_size
    )
    return Evaluation(metrics, out_dir)


def _write_per_label(path: Path, per_label: dict[str, dict[str, Any]]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["label", "precision", "recall", "f1", "ap", "threshold", "support", "answered"])
    for name, row in per_label.items():
        ap = "" if not np.isfinite(row["ap"]) else f"{row['ap']:.6f}"
        writer.writerow([name, f"{row['precision']:.6f}", f"{row['recall']:.6f}", f"{row['f1']:.6f}", ap,
                         f"{row['threshold']:.6f}", row["support"], row["answered"]])  # fmt: skip
    write_text_atomic(path, buffer.getvalue())


def _write_predictions(
    path: Path,
    probabilities: np.ndarray,
    truth: np.ndarray,
    chosen: np.ndarray,
    names: list[str],
    sources: Sequence[str],
) -> np.ndarray:
    """One row per image: its true and answered labels, the ones missed and added, and every
    label's probability; returns each image's error (the summed probability gap of its wrong labels)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["path", "true", "predicted", "missed", "extra", "correct", *[f"p_{n}" for n in names]])
    errors = np.where(truth, 1.0 - probabilities, probabilities) * (chosen != truth)
    for row, source in enumerate(sources):

        def pick(mask: np.ndarray) -> str:
            return join_labels([names[j] for j in np.flatnonzero(mask)])

        writer.writerow([
            source,
            pick(truth[row]),
            pick(chosen[row]),
            pick(truth[row] & ~chosen[row]),
            pick(chosen[row] & ~truth[row]),
            int((chosen[row] == truth[row]).all()),
            *[f"{p:.6f}" for p in probabilities[row]],
        ])  # fmt: skip
    write_text_atomic(path, buffer.getvalue())
    return errors.sum(1)


def _write_gallery(
    path: Path,
    probabilities: np.ndarray,
    truth: np.ndarray,
    chosen: np.ndarray,
    names: list[str],
    errors: np.ndarray,
    load_image: Callable[[int], np.ndarray | None] | None,
    size: int,
) -> None:
    wrong = np.flatnonzero((chosen != truth).any(1))
    wrong = wrong[np.argsort(-errors[wrong], kind="stable")][:size]
    images, captions = [], []
    for index in wrong:
        image = load_image(int(index)) if load_image is not None else None
        if image is None:
            continue
        missed = [names[j] for j in np.flatnonzero(truth[index] & ~chosen[index])]
        extra = [
            f"{names[j]} ({probabilities[index, j]:.2f})"
            for j in np.flatnonzero(chosen[index] & ~truth[index])
        ]
        images.append(image)
        captions.append(f"missed {', '.join(missed) or '-'}\nextra {', '.join(extra) or '-'}")
    if images:
        figure = image_grid_figure(images, captions, columns=6, title="Images with missed or extra labels")
    else:
        from matplotlib.figure import Figure

        figure = Figure(figsize=(4, 1.2))
        figure.text(0.5, 0.5, "no image with a wrong label", ha="center", va="center")
    save_figure(figure, path)
