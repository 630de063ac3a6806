"""Multi-label metrics and thresholds, checked against scikit-learn and by hand."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, f1_score, hamming_loss

from imgclf.evaluation.multi_label import (
    answered,
    choose_threshold,
    choose_thresholds,
    missed_together,
    multi_label_metrics,
    write_multi_label_evaluation,
)


def noisy_scores(seed: int = 0, samples: int = 400, labels: int = 4):
    """Targets with labels of different frequency, and scores that rank them imperfectly (a rare
    label's scores sit low, as a trained model's do)."""
    rng = np.random.default_rng(seed)
    frequency = np.asarray([0.5, 0.3, 0.1, 0.05])[:labels]
    targets = (rng.random((samples, labels)) < frequency).astype(np.float32)
    scores = np.clip(0.25 * targets + frequency * 0.6 + rng.normal(0, 0.12, targets.shape), 0, 1)
    return scores.astype(np.float32), targets


def test_metrics_agree_with_scikit_learn() -> None:
    scores, targets = noisy_scores()
    thresholds = choose_thresholds(scores, targets)
    metrics = multi_label_metrics(scores, targets, thresholds, ["a", "b", "c", "d"])
    predicted = answered(scores, thresholds)
    assert metrics["macro_f1"] == pytest.approx(f1_score(targets, predicted, average="macro"))
    assert metrics["micro_f1"] == pytest.approx(f1_score(targets, predicted, average="micro"))
    assert metrics["hamming_loss"] == pytest.approx(hamming_loss(targets, predicted))
    assert metrics["map"] == pytest.approx(average_precision_score(targets, scores, average="macro"))
    assert metrics["subset_accuracy"] == pytest.approx((predicted == (targets > 0)).all(1).mean())
    assert metrics["per_label"]["c"]["support"] == int(targets[:, 2].sum())


def test_thresholds_are_f1_best_per_label_and_beat_one_half() -> None:
    """Each label's cut is the F1-best one on its own scores: no other cut does better, and the rare
    labels, whose scores sit below 0.5, are answered at all."""
    scores, targets = noisy_scores()
    thresholds = choose_thresholds(scores, targets)
    for j, cut in enumerate(thresholds):
        best = f1_score(targets[:, j], scores[:, j] >= cut)
        for other in np.linspace(0.01, 0.99, 99):
            assert f1_score(targets[:, j], scores[:, j] >= other, zero_division=0) <= best + 1e-9
    assert thresholds[3] < 0.5
    tuned = multi_label_metrics(scores, targets, thresholds, list("abcd"))["macro_f1"]
    halves = multi_label_metrics(scores, targets, [0.5] * 4, list("abcd"))["macro_f1"]
    assert tuned > halves + 0.1


def test_min_precision_takes_the_lowest_cut_that_keeps_it() -> None:
    scores = np.asarray([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3])
    truth = np.asarray([1, 1, 0, 1, 0, 0, 1], dtype=bool)
    cut = choose_threshold(scores, truth, min_precision=0.75)  # top 4: 3 of 4 right
    assert 0.5 < cut < 0.6
    assert choose_threshold(scores, truth, min_precision=1.0) == pytest.approx(0.75)
    assert choose_threshold(scores, np.zeros(7, bool)) == 0.5  # no positive: the default
    assert choose_threshold(np.asarray([0.4, 0.3]), np.asarray([True, False]), min_precision=1.0) == 0.35
    # a label no cut makes precise enough is never answered
    assert choose_threshold(np.asarray([0.9, 0.1]), np.asarray([False, True]), min_precision=0.9) == 1.0


def test_missed_together_counts_labels_lost_in_the_same_image() -> None:
    truth = np.asarray([[1, 1, 0], [1, 1, 1], [0, 1, 1]], dtype=bool)
    chosen = np.asarray([[0, 0, 0], [1, 0, 0], [0, 0, 1]], dtype=bool)
    together = missed_together(chosen, truth)
    assert together.tolist() == [
        [1, 1, 0],
        [1, 3, 1],
        [0, 1, 1],
    ]  # b missed in all three, with a once, c once


def test_evaluation_folder(tmp_path) -> None:
    scores, targets = noisy_scores(samples=60)
    names = ["a", "b", "c", "d"]
    images = np.random.default_rng(0).integers(0, 255, (60, 16, 16, 3), dtype=np.uint8)
    evaluation = write_multi_label_evaluation(
        tmp_path, scores, targets, [0.5] * 4, names, [f"img{i}.png" for i in range(60)], lambda i: images[i]
    )
    for name in ("metrics.json", "per_label.csv", "predictions.csv", "label_cooccurrence.png",
                 "missed_together.png", "misclassified.png"):  # fmt: skip
        assert (tmp_path / name).stat().st_size > 0, name
    rows = (tmp_path / "predictions.csv").read_text().splitlines()
    assert rows[0].startswith("path,true,predicted,missed,extra,correct,p_a")
    assert len(rows) == 61
    assert evaluation.metrics["task"] == "multi-label"
