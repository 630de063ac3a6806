"""Temperature scaling (Guo et al., 2017): one number T, fitted on the validation split, that makes
the answers' confidence match their accuracy (probabilities softmax(log p / T)); the top class never
changes. `Predictor` applies the stored T to every backend's answers."""

from __future__ import annotations

import math

import numpy as np

from imgclf.evaluation.metrics import expected_calibration_error
from imgclf.inference.predictor import with_temperature

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
