"""Calibration of a trained model, at the end of training or later (`imgclf calibrate`): its
temperature, and with a minimum precision the feature bank and the `unknown` rule
(`imgclf.inference.unknown`), fitted on the validation split."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from imgclf.data.prepared import PreparedData, image_loader
from imgclf.errors import ModelError
from imgclf.evaluation.calibration import calibrate_answers, ece, unknown_metrics
from imgclf.evaluation.evaluate import Predicted, predict_split
from imgclf.inference.predictor import Predictor, with_temperature
from imgclf.inference.unknown import BANK_IMAGES, FeatureBank, UnknownRule

logger = logging.getLogger(__name__)


def bank_images(prepared: PreparedData, seed: int = 0) -> Iterator[np.ndarray]:
    """A seeded sample of up to BANK_IMAGES training images, prepared as prediction prepares them."""
    chosen = prepared.indices("train")
    if len(chosen) > BANK_IMAGES:
        chosen = np.sort(np.random.default_rng(seed).choice(chosen, BANK_IMAGES, replace=False))
    load = image_loader(prepared, chosen)
    images = (load(position) for position in range(len(chosen)))
    return (image for image in images if image is not None)


def calibrate_model(
    predictor: Predictor,
    prepared: PreparedData,
    val_name: str,
    batch_size: int,
    min_precision: float | None,
    strict: bool = False,
    bank: FeatureBank | None = None,
) -> tuple[dict[str, Any], dict[str, Predicted], FeatureBank | None]:
    """Temperature scaling fitted on the validation split, with the ECE before and after it (on the
    test split too, when there is one and it is not the validation split); with `min_precision`, the
    feature bank of training images (or the `bank` given) and the `unknown` rule too. Also the
    predictions it made, by split, calibrated, for the evaluation that follows. The predictor must
    give raw answers (temperature 1, no rule); its temperature, bank and rule are set here. `strict`:
    see `calibrate_answers`."""
    if min_precision is not None and bank is None:
        started = time.perf_counter()
        try:
            bank = FeatureBank.from_images(predictor.features, bank_images(prepared), batch_size)
        except ModelError as error:  # a network without a linear classifier, no training image read
            logger.warning("no likeness-to-the-training-images test: %s; confidence alone decides", error)
        else:
            logger.info(
                "feature bank: %d training images (%.1f s)", len(bank.vectors), time.perf_counter() - started
            )
    predictor.bank = None if min_precision is None or bank is None else bank.to(predictor.device)
    probabilities, labels, indices, likeness = predict_split(predictor, prepared, val_name, batch_size)
    report, calibrated = calibrate_answers(probabilities, labels, likeness, val_name, min_precision, strict)
    temperature = report.get("temperature", 1.0)
    rule = UnknownRule.from_calibration(report)
    predictions = {val_name: (calibrated, labels, indices, likeness)}
    if val_name != "test" and len(prepared.indices("test")):
        test_probabilities, test_labels, test_indices, test_likeness = predict_split(
            predictor, prepared, "test", batch_size
        )
        if report:
            report["test_ece_before"] = ece(test_probabilities, test_labels)
            test_probabilities = with_temperature(test_probabilities, temperature)
            report["test_ece_after"] = ece(test_probabilities, test_labels)
        predictions["test"] = (test_probabilities, test_labels, test_indices, test_likeness)
        if rule is not None and len(test_labels):
            measured = unknown_metrics(test_probabilities, test_labels, test_likeness, rule)["unknown"]
            report["threshold"].update(
                test_coverage=measured["coverage"], test_precision=measured["precision"]
            )
    # from here on the predictor answers as the model now will
    predictor.temperature, predictor.unknown_rule = temperature, rule
    if rule is None:
        bank = predictor.bank = None
    return report, predictions, bank
