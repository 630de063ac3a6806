"""Temperature scaling (Guo et al., 2017): one number T, fitted on the validation split, that makes
the answers' confidence match their accuracy (probabilities softmax(log p / T)); the top class never
changes. `Predictor` applies the stored T to every backend's answers."""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np

from imgclf.errors import UsageError
from imgclf.evaluation.metrics import expected_calibration_error
from imgclf.inference.predictor import with_temperature
from imgclf.inference.unknown import KEEP, UnknownRule

logger = logging.getLogger(__name__)

MIN_IMAGES = 20  # fewer validation images than this fit no temperature
BOUNDS = (0.05, 20.0)


def _nll(probabilities: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    scaled = with_temperature(probabilities.astype(np.float64), temperature)
    return float(-np.log(np.clip(scaled[np.arange(len(labels)), labels], 1e-12, None)).mean())


def fit_temperature(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """The T in BOUNDS that minimizes the negative log-likelihood (golden-section search on log T;
    the loss is convex in 1/T)."""
    low, high = (math.log(bound) for bound in BOUNDS)
    ratio = (math.sqrt(5) - 1) / 2
    a, b = high - ratio * (high - low), low + ratio * (high - low)
    fa, fb = _nll(probabilities, labels, math.exp(a)), _nll(probabilities, labels, math.exp(b))
    for _ in range(60):
        if fa <= fb:
            high, b, fb = b, a, fa
            a = high - ratio * (high - low)
            fa = _nll(probabilities, labels, math.exp(a))
        else:
            low, a, fa = a, b, fb
            b = low + ratio * (high - low)
            fb = _nll(probabilities, labels, math.exp(b))
    return float(math.exp((low + high) / 2))


def ece(probabilities: np.ndarray, labels: np.ndarray) -> float:
    return float(expected_calibration_error(probabilities, labels)["ece"])


def _bounded(temperature: float) -> float:
    """A fitted temperature, or 1.0 where the likelihood has no optimum inside BOUNDS: a split
    answered all right drives T toward 0 (every answer certain), which nothing else supports."""
    return temperature if BOUNDS[0] * 1.01 < temperature < BOUNDS[1] / 1.01 else 1.0


def _fitted(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """`fit_temperature` within BOUNDS (`_bounded`)."""
    return _bounded(fit_temperature(probabilities, labels))


def held_out_ece(probabilities: np.ndarray, labels: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """The ECE of the raw answers and of answers scaled by a temperature fitted elsewhere: the images
    are halved (seeded), each half scaled by the temperature fitted on the other, and the two halves'
    answers measured together. What temperature scaling would do to images it was not fitted on."""
    order = np.random.default_rng(seed).permutation(len(labels))
    halves = (order[: len(order) // 2], order[len(order) // 2 :])
    scaled = np.empty_like(probabilities, dtype=np.float64)
    for this, other in (halves, halves[::-1]):
        scaled[this] = with_temperature(
            probabilities[this].astype(np.float64), _fitted(probabilities[other], labels[other])
        )
    return ece(probabilities, labels), ece(scaled, labels)


def _unfitted(raw: float, split: str) -> str:
    """Why no temperature was fitted, in words: the likelihood's optimum `raw` lies at one of BOUNDS."""
    if raw <= BOUNDS[0] * 1.01:
        return f"the {split} split is answered too cleanly to fit a temperature"
    return (
        f"the {split} split's answers are so often confidently wrong that no temperature up to "
        f"{BOUNDS[1]:g} fits them"
    )


def choose_temperature(
    probabilities: np.ndarray, labels: np.ndarray, split: str
) -> tuple[float, dict[str, Any]]:
    """The temperature applied to a split's raw answers, and imgclf.json's record of it: the one
    fitted on the split, unless it would not lower the held-out ECE (`held_out_ece`), then 1 (none),
    and the line that says which and why."""
    raw = fit_temperature(probabilities, labels)
    temperature = _bounded(raw)
    held_out = held_out_ece(probabilities, labels)
    fitted = temperature
    if temperature != 1.0 and held_out[1] >= held_out[0]:
        temperature = 1.0  # a temperature that does not make calibration better is not applied
    calibrated = with_temperature(probabilities, temperature)
    report: dict[str, Any] = {
        "temperature": round(temperature, 6),
        "fitted_on": f"{len(labels)} {split} images",
        f"{split}_ece_before": ece(probabilities, labels),
        f"{split}_ece_after": ece(calibrated, labels),
        "held_out_ece_before": held_out[0],
        "held_out_ece_after": held_out[1],
    }
    if fitted == 1.0:
        report["note"] = _unfitted(raw, split)
        logger.info("no temperature scaling: %s", report["note"])
    elif temperature == 1.0:
        report["note"] = (
            f"T = {fitted:.3f} fitted on the {split} split would not lower its held-out ECE "
            f"({held_out[0]:.4f} → {held_out[1]:.4f}, each half fitted on the other)"
        )
        logger.info("no temperature scaling: %s; the model's own probabilities are kept", report["note"])
    else:
        logger.info(
            "temperature scaling: T = %.3f, fitted on the %s split; its held-out ECE %.4f → %.4f (each "
            "half fitted on the other)",
            temperature, split, held_out[0], held_out[1],
        )  # fmt: skip
    return temperature, report


def calibrate_answers(
    probabilities: np.ndarray,
    labels: np.ndarray,
    likeness: np.ndarray | None,
    split: str,
    min_precision: float | None = None,
    strict: bool = False,
) -> tuple[dict[str, Any], np.ndarray]:
    """imgclf.json's `calibration` fitted on one (validation) split's raw answers: the temperature,
    the ECE before and after it, and with `min_precision` the `unknown` rule (`threshold`); and the
    calibrated probabilities. Too few images fit nothing. Without a threshold reaching the precision,
    `strict` raises the ThresholdError, else a warning says so and no threshold is stored."""
    if len(labels) < MIN_IMAGES:
        if strict:
            raise UsageError(
                f"{len(labels)} labelled images are too few to calibrate on (at least {MIN_IMAGES})"
            )
        logger.info("no temperature scaling: %d validation images are too few to fit it", len(labels))
        return {}, probabilities
    temperature, report = choose_temperature(probabilities, labels, split)
    calibrated = with_temperature(probabilities, temperature)
    if min_precision is None:
        return report, calibrated
    try:
        report["threshold"] = choose_threshold(calibrated, labels, min_precision, likeness, KEEP)
    except ThresholdError as error:
        if strict:
            raise
        logger.warning("%s; the model always answers a class", error)
        return report, calibrated
    chosen = report["threshold"]
    logger.info(
        "unknown when %s: on the %s split, coverage %.1f%% at precision %.4f (asked ≥ %g)",
        UnknownRule.from_calibration(report).describe(), split, chosen["coverage"] * 100,
        chosen["precision"], min_precision,
    )  # fmt: skip
    return report, calibrated


def coverage_precision(
    confidence: np.ndarray, correct: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For every threshold at an answer's confidence, most confident first: (threshold, coverage —
    the share of images answered —, precision — the share of those answers that are right)."""
    order = np.argsort(-confidence, kind="stable")
    answered = np.arange(1, len(order) + 1)
    return (
        confidence[order],
        answered / max(len(order), 1),
        np.cumsum(correct[order]) / answered,
    )


def likeness_thresholds(likeness: np.ndarray, keep: float) -> tuple[float, float]:
    """(lowest similarity, largest distance) allowed: the same quantile of the two scores, the
    largest one at which both tests together still keep the `keep` share of these images."""
    count = len(likeness)
    similarity = np.sort(likeness[:, 0])
    distance = np.sort(likeness[:, 1])[::-1]
    best = 0
    for rank in range(int(np.ceil((1.0 - keep) * count)) + 1):
        low, high = similarity[min(rank, count - 1)], distance[min(rank, count - 1)]
        if ((likeness[:, 0] >= low) & (likeness[:, 1] <= high)).mean() < keep:
            break
        best = rank
    # halfway to the next image turned away, so that the thresholds do not sit on one image's
    # score (float noise between backends would move it across); a hair outside when none is
    low = similarity[best - 1] if best else similarity[0] - 1e-5 * max(1.0, abs(similarity[0]))
    high = distance[best - 1] if best else distance[0] + 1e-5 * max(1.0, abs(distance[0]))
    return float((similarity[best] + low) / 2.0), float((distance[best] + high) / 2.0)


def choose_threshold(
    probabilities: np.ndarray,
    labels: np.ndarray,
    min_precision: float,
    likeness: np.ndarray | None = None,
    keep: float = KEEP,
) -> dict[str, Any]:
    """The `unknown` rule for precision ≥ `min_precision` on these (validation) images.

    With a likeness to the training images (N×2: similarity, distance), its thresholds keep the
    `keep` share of the images first. Then the confidence threshold is the lowest one at which the
    answers given (confidence ≥ it, and alike enough) are right at least `min_precision` of the
    time: the largest coverage that keeps the precision. A ThresholdError when none reaches it.
    """
    count = len(labels)
    alike = np.ones(count, dtype=bool)
    similarity = distance = None
    if likeness is not None:
        similarity, distance = likeness_thresholds(likeness, keep)
        alike = (likeness[:, 0] >= similarity) & (likeness[:, 1] <= distance)
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    thresholds, _, precision = coverage_precision(confidence[alike], correct[alike])
    # ties: a threshold answers every image at its confidence, so only the last of equal ones counts
    last_of_ties = np.append(thresholds[1:] != thresholds[:-1], True)
    reached = np.flatnonzero((precision >= min_precision) & last_of_ties)
    if not len(reached):
        best = float(precision.max()) if len(precision) else 0.0
        raise ThresholdError(
            f"no confidence threshold reaches precision {min_precision:g} on the {count} validation "
            f"images (the best is {best:.4f}); ask for a lower --min-precision"
        )
    chosen = int(reached.max())
    answered = chosen + 1
    # halfway to the next answer down (to 0 when every answer is kept), so that the threshold does
    # not sit on one image's confidence
    below = float(thresholds[answered]) if answered < len(thresholds) else 0.0
    return {
        "min_precision": min_precision,
        "confidence": (float(thresholds[chosen]) + below) / 2.0,
        "similarity": similarity,
        "distance": distance,
        "coverage": answered / count,
        "precision": float(precision[chosen]),
        "answered": answered,
        "images": count,
    }


class ThresholdError(UsageError):
    """No threshold reaches the precision asked for."""


def unknown_metrics(
    probabilities: np.ndarray,
    labels: np.ndarray,
    likeness: np.ndarray | None,
    rule: UnknownRule | None,
) -> dict[str, Any]:
    """Coverage and precision at the model's `unknown` rule (when it has one), and the coverage–
    precision curve at 20 coverage levels (coverage, precision, confidence threshold)."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    thresholds, coverage, precision = coverage_precision(confidence, correct)
    levels = np.linspace(0.05, 1.0, 20)
    picks = np.minimum(np.ceil(levels * len(coverage)).astype(int) - 1, len(coverage) - 1)
    found: dict[str, Any] = {
        "coverage_precision": [
            [round(float(coverage[i]), 4), round(float(precision[i]), 4), round(float(thresholds[i]), 4)]
            for i in picks
            if i >= 0
        ]
    }
    if rule is not None and len(labels):
        answered = ~rule.mask(probabilities, likeness)
        unlike = rule.unlike(likeness)
        found["unknown"] = {
            "rule": rule.describe(),
            "confidence_threshold": rule.confidence,
            "similarity_threshold": rule.similarity,
            "distance_threshold": rule.distance,
            "min_precision": rule.min_precision,
            "coverage": float(answered.mean()),
            "precision": float(correct[answered].mean()) if answered.any() else float("nan"),
            "answered": int(answered.sum()),
            "unknown": int((~answered).sum()),
            "unlike_training_images": 0 if unlike is None else int(unlike.sum()),
        }
    return found
