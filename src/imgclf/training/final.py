"""The run's final evaluation: the best weights, through the same `Predictor` that `predict` uses,
calibrated and measured on validation (its full evaluation written into the run folder) and on test.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np

from imgclf.data.prepared import image_loader
from imgclf.evaluation.evaluate import Predicted, evaluate_split, split_metrics
from imgclf.evaluation.model_calibration import calibrate_model
from imgclf.evaluation.multi_label import (
    choose_thresholds,
    multi_label_metrics,
    predict_targets,
    run_metrics,
    write_multi_label_evaluation,
)
from imgclf.inference.predictor import Predictor

if TYPE_CHECKING:
    from imgclf.training.trainer import Trainer

logger = logging.getLogger(__name__)


def evaluate_run(trainer: Trainer, predictor: Predictor) -> dict[str, float]:
    """The run's final metrics (val_*, test_*), its calibration or thresholds set on `trainer.info`."""
    if trainer.prepared.image_set.multi_label:
        with trainer.phases.time("final evaluation"):
            return evaluate_multi_label_run(trainer, predictor)
    return evaluate_single_label_run(trainer, predictor)


def evaluate_single_label_run(trainer: Trainer, predictor: Predictor) -> dict[str, float]:
    """Calibrate on validation (temperature, --min-precision's unknown rule, the feature bank), write
    its full evaluation into the run folder, and measure the test split: the run's final metrics."""
    cfg, prepared, data, info = trainer.cfg, trainer.prepared, trainer.data, trainer.info
    has_val, batch_size = trainer.validation_split is not None, cfg.train.batch_size * 2
    final: dict[str, float] = {}
    predictions: dict[str, Predicted] = {}
    if cfg.train.min_precision is not None and not has_val:
        logger.warning(
            "--min-precision is chosen on the validation split, and this run has none: the model always "
            "answers a class (train with --val-split, or `imgclf calibrate MODEL DATA --split all` on "
            "labelled images it was not trained on)"
        )
    if has_val:
        with trainer.phases.time("calibration (predicts validation and test)"):
            info.calibration, predictions, bank = calibrate_model(
                predictor, prepared, data.val_name, batch_size, cfg.train.min_precision
            )
        if bank is not None:
            bank.save(trainer.folder.model)
    with trainer.phases.time("final evaluation"):
        _evaluate_splits(trainer, predictor, predictions, final)
    return final


def _evaluate_splits(
    trainer: Trainer, predictor: Predictor, predictions: dict[str, Predicted], final: dict[str, float]
) -> None:
    """The validation split's full evaluation (into the run folder) and the test split's metrics."""
    cfg, prepared, data = trainer.cfg, trainer.prepared, trainer.data
    has_val, batch_size = trainer.validation_split is not None, cfg.train.batch_size * 2
    if has_val:
        # the full evaluation of the validation split goes into the run folder
        evaluation = evaluate_split(
            predictor,
            prepared,
            data.val_name,
            trainer.folder.evaluation,
            batch_size,
            predicted=predictions[data.val_name],
        )
        final.update(
            val_loss=evaluation.metrics["loss"],
            val_acc=evaluation.metrics["accuracy"],
            val_count=float(evaluation.metrics["count"]),
        )
    if data.val_name != "test" and len(prepared.indices("test")):
        test = predictions.get("test")
        final.update(split_metrics(predictor, prepared, "test", batch_size, prefix="test", predicted=test))
    elif data.val_name == "test" and has_val:
        final.update({k.replace("val_", "test_"): v for k, v in final.items()})


def evaluate_multi_label_run(trainer: Trainer, predictor: Predictor) -> dict[str, float]:
    """Choose each label's threshold on validation (F1-best, or --min-precision), write the
    validation split's multi-label evaluation into the run folder, and measure the test split at the
    same thresholds: the run's final metrics (mAP, macro F1, subset accuracy; val_acc is subset
    accuracy too)."""
    cfg, prepared, data, info = trainer.cfg, trainer.prepared, trainer.data, trainer.info
    has_val, batch_size = trainer.validation_split is not None, cfg.train.batch_size * 2
    names = prepared.image_set.output_names
    final: dict[str, float] = {}
    if has_val:
        probabilities, targets, indices = predict_targets(predictor, prepared, data.val_name, batch_size)
        info.thresholds = choose_thresholds(probabilities, targets, cfg.train.min_precision)
        never = [name for name, t in zip(names, info.thresholds) if t >= 1.0]
        if never:
            logger.warning(
                "no threshold keeps precision ≥ %g on validation for %s: the model never answers %s",
                cfg.train.min_precision, ", ".join(never), "them" if len(never) > 1 else "it",
            )  # fmt: skip
        predictor.thresholds = np.asarray(info.thresholds, dtype=np.float32)
        evaluation = write_multi_label_evaluation(
            trainer.folder.evaluation,
            probabilities,
            targets,
            info.thresholds,
            names,
            [prepared.image_set.keys[i] for i in indices],
            image_loader(prepared, indices),
            split=data.val_name,
        )
        final.update(run_metrics(evaluation.metrics, "val"))
    else:
        logger.warning(
            "no validation split: every label is answered at probability 0.5 (train with --val-split "
            "for thresholds chosen per label)"
        )
        info.thresholds = [0.5] * len(names)
    if data.val_name != "test" and len(prepared.indices("test")):
        probabilities, targets, _ = predict_targets(predictor, prepared, "test", batch_size)
        metrics = multi_label_metrics(probabilities, targets, info.thresholds, names)
        final.update(run_metrics(metrics, "test"))
    elif data.val_name == "test" and has_val:
        final.update({k.replace("val_", "test_"): v for k, v in final.items()})
    return final
