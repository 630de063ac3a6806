"""Classification metrics from probabilities and labels."""

from __future__ import annotations

from typing import Any

import numpy as np


def top_k_accuracy(probabilities: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Fraction of samples whose true class is among the k most probable."""
    top = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    return float((top == labels[:, None]).any(axis=1).mean())


def expected_calibration_error(
    probabilities: np.ndarray, labels: np.ndarray, bins: int = 15
) -> dict[str, Any]:
    """ECE over equal-width confidence bins, with the per-bin numbers for the reliability diagram."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    rows = []
    ece = 0.0
    for b in range(bins):
        members = index == b
        count = int(members.sum())
        if count:
            accuracy = float(correct[members].mean())
            mean_confidence = float(confidence[members].mean())
            ece += count / len(labels) * abs(accuracy - mean_confidence)
        else:
            accuracy = mean_confidence = float("nan")
        rows.append(
            {
                "low": float(edges[b]),
                "high": float(edges[b + 1]),
                "count": count,
                "accuracy": accuracy,
                "confidence": mean_confidence,
            }
        )
    return {"ece": float(ece), "bins": rows}


def confusion_counts(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """counts[true, predicted]."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (labels, predicted), 1)
    return matrix


def most_confused(
    matrix: np.ndarray, classes: list[str], limit: int | None = None
) -> list[tuple[str, str, int]]:
    """(true, predicted, count) off the diagonal, most frequent first."""
    pairs = [
        (classes[t], classes[p], int(matrix[t, p]))
        for t in range(len(classes))
        for p in range(len(classes))
        if t != p and matrix[t, p] > 0
    ]
    pairs.sort(key=lambda row: (-row[2], row[0], row[1]))
    return pairs[:limit] if limit else pairs


def precision_recall_f1(matrix: np.ndarray) -> dict[str, dict[str, float]]:
    """Per-class precision, recall and F1 from a confusion matrix (rows true, columns predicted), and
    their macro (unweighted) and weighted (by support) means: what scikit-learn's
    `classification_report(..., zero_division=0)` gives, 0 where a ratio has nothing to divide by,
    without importing scikit-learn (a second of every run's final evaluation)."""
    matrix = np.asarray(matrix, dtype=np.float64)
    right = np.diag(matrix)
    predicted, support = matrix.sum(axis=0), matrix.sum(axis=1)

    def ratio(top: np.ndarray, bottom: np.ndarray) -> np.ndarray:
        return np.divide(top, bottom, out=np.zeros_like(top), where=bottom > 0)

    precision, recall = ratio(right, predicted), ratio(right, support)
    f1 = ratio(2 * precision * recall, precision + recall)
    rows = {"precision": precision, "recall": recall, "f1": f1}
    total = support.sum()
    return {
        "per_class": {key: values.tolist() for key, values in rows.items()} | {"support": support.tolist()},
        "macro": {key: float(values.mean()) if len(values) else 0.0 for key, values in rows.items()},
        "weighted": {
            key: float((values * support).sum() / total) if total else 0.0 for key, values in rows.items()
        },
    }


def compute_metrics(probabilities: np.ndarray, labels: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """Everything metrics.json holds: accuracy, top-k, loss, macro/weighted/per-class P/R/F1, ECE."""
    count = len(labels)
    predicted = probabilities.argmax(axis=1)
    picked = probabilities[np.arange(count), labels]
    loss = float(-np.log(np.clip(picked, 1e-12, 1.0)).mean()) if count else float("nan")
    matrix = confusion_counts(labels, predicted, len(classes))
    report = precision_recall_f1(matrix)
    rows = report["per_class"]
    per_class = {
        name: {
            "precision": rows["precision"][index],
            "recall": rows["recall"][index],
            "f1": rows["f1"][index],
            "support": int(rows["support"][index]),
        }
        for index, name in enumerate(classes)
    }
    top_k = {str(k): top_k_accuracy(probabilities, labels, k) for k in (3, 5) if k < len(classes)}
    calibration = expected_calibration_error(probabilities, labels)
    return {
        "count": int(count),
        "accuracy": float((predicted == labels).mean()) if count else float("nan"),
        "top_k_accuracy": top_k,
        "loss": loss,
        "macro": report["macro"],
        "weighted": report["weighted"],
        "per_class": per_class,
        "ece": calibration["ece"],
        "calibration_bins": calibration["bins"],
        "classes": list(classes),
        "confusion_matrix": matrix.tolist(),
        "most_confused": [list(row) for row in most_confused(matrix, classes, 20)],
    }
