"""Calibration of a trained model, at the end of training (`calibrate_model`) or later on a saved one
(`recalibrate_model`, `imgclf calibrate`): its temperature, and with a minimum precision the
feature bank and the `unknown` rule (`imgclf.inference.unknown`), fitted on the validation split.
The arithmetic (temperature scaling, thresholds, ECE) is `imgclf.evaluation.calibration`'s."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from imgclf import runs
from imgclf.artifact import resolve_artifact_path, update_artifact_info
from imgclf.config import DataConfig
from imgclf.data.prepared import PreparedData, image_loader, prepare_data, select_data
from imgclf.errors import DataError, ModelError, UsageError
from imgclf.evaluation.calibration import calibrate_answers, ece, unknown_metrics
from imgclf.evaluation.evaluate import Predicted, predict_split
from imgclf.inference.predictor import Predictor, with_temperature
from imgclf.inference.unknown import BANK_FILE, BANK_IMAGES, FeatureBank, UnknownRule

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


def recalibrate_model(
    model: str | Path,
    data: Any,
    cfg: DataConfig,
    *,
    min_precision: float | None = None,
    split: str = "val",
    manifest: str | Path | None = None,
    batch_size: int = 128,
    device: str = "auto",
    labels: Any = None,
) -> dict[str, Any]:
    """`imgclf calibrate`: a saved model's temperature fitted again on labelled data (`data`, read as
    `cfg` says; default: the data it was trained on, split by its run's manifest) and, with
    `min_precision`, its `unknown` answer; a multi-label model's thresholds chosen again instead.
    Rewrites the model's imgclf.json (and novelty.safetensors) and returns its new calibration."""
    if min_precision is not None and not 0.0 <= min_precision <= 1.0:
        raise UsageError("--min-precision is a share of right answers, in [0, 1]: e.g. 0.95")
    artifact_dir = resolve_artifact_path(model)
    predictor = Predictor.from_path(artifact_dir, device=device, backend="torch")
    own_bank = predictor.bank
    predictor.temperature, predictor.unknown_rule, predictor.bank = 1.0, None, None  # raw answers
    info = predictor.info
    if data is None:
        data = (info.dataset or {}).get("source")
        if not data or not Path(data).exists():
            raise DataError(
                f"the data the model was trained on ({data or 'unknown'}) is not there: give DATA"
            )
        run_manifest = artifact_dir.parent / runs.MANIFEST_FILE
        if manifest is None and run_manifest.is_file():
            manifest = run_manifest
    image_set, split_names = select_data(
        data, cfg, "all", manifest, labels=labels, classes=info.classes, multi_label=info.multi_label
    )
    if split == "all":
        split_names = np.where(split_names == "train", "train", "all").astype(object)
    elif split not in set(split_names.tolist()):
        raise UsageError(f"the data has no {split!r} split; use --split all (or give --manifest)")
    prepared = prepare_data(image_set, split_names, info.preprocessing, "auto", None)
    if info.multi_label:
        return _choose_thresholds_again(predictor, prepared, split, batch_size, min_precision, artifact_dir)
    bank = None  # built from the data's train split
    if not len(prepared.indices("train")):
        bank = own_bank
        if min_precision is not None and bank is None:
            bank = _training_bank(predictor, artifact_dir, batch_size)
    report, _, bank = calibrate_model(
        predictor, prepared, split, batch_size, min_precision, strict=True, bank=bank
    )
    if bank is not None:
        bank.save(artifact_dir)
    elif (artifact_dir / BANK_FILE).is_file():
        (artifact_dir / BANK_FILE).unlink()  # no rule, no bank: the model answers as before
    info.calibration = report
    update_artifact_info(artifact_dir, info)
    return report


def _choose_thresholds_again(
    predictor: Predictor,
    prepared: Any,
    split: str,
    batch_size: int,
    min_precision: float | None,
    artifact_dir: Path,
) -> dict[str, Any]:
    """A multi-label model's calibration: each label's threshold chosen again on `split` (F1-best,
    or the lowest that keeps precision ≥ `min_precision`), written into its imgclf.json."""
    from imgclf.evaluation.multi_label import choose_thresholds, multi_label_metrics, predict_targets

    probabilities, targets, _ = predict_targets(predictor, prepared, split, batch_size)
    before = multi_label_metrics(
        probabilities, targets, [float(t) for t in predictor.thresholds], predictor.classes
    )
    info = predictor.info
    info.thresholds = choose_thresholds(probabilities, targets, min_precision)
    after = multi_label_metrics(probabilities, targets, info.thresholds, predictor.classes)
    update_artifact_info(artifact_dir, info)
    return {
        "task": "multi-label",
        "fitted_on": f"{split} ({len(targets):,} images)",
        "min_precision": min_precision,
        "thresholds": dict(zip(predictor.classes, info.thresholds)),
        "macro_f1_before": before["macro_f1"],
        "macro_f1_after": after["macro_f1"],
        "per_label": after["per_label"],
    }


def _training_bank(predictor: Predictor, artifact_dir: Path, batch_size: int) -> Any:
    """The feature bank of the training split of the data the model was trained on (its run's
    manifest.csv), for calibrating on data without a train split; a DataError when it is gone."""
    info = predictor.info
    source = (info.dataset or {}).get("source")
    manifest = artifact_dir.parent / runs.MANIFEST_FILE
    if not source or not Path(source).exists() or not manifest.is_file():
        raise DataError(
            "--min-precision compares images with the training images, and neither DATA (no train "
            "split) nor the model's run (its data and manifest.csv) has them: give the training data "
            "with --manifest"
        )
    image_set, split_names = select_data(source, DataConfig(), "train", manifest, classes=info.classes)
    training = prepare_data(image_set, split_names, info.preprocessing, "auto", None)
    return FeatureBank.from_images(predictor.features, bank_images(training), batch_size)
