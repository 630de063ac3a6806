"""Entry points over a trained model and labelled data: `evaluate`, `calibrate`, and a run's
`report`."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from imgclf import runs
from imgclf.api.data import select_data
from imgclf.config import DataConfig
from imgclf.errors import DataError, UsageError
from imgclf.inference.predictor import Predictor, export_suffixes

if TYPE_CHECKING:
    from imgclf.evaluation.outputs import Evaluation


def evaluate(
    model: str | Path | Predictor,
    data: Any,
    *,
    split: str = "all",
    manifest: str | Path | None = None,
    out: str | Path | None = None,
    batch_size: int = 128,
    device: str = "auto",
    top_k: int = 5,
    path_col: str | None = None,
    label_col: str | None = None,
    images: str | None = None,
    multi_label: bool | None = None,
    labels: Any = None,
    tta: bool = False,
    splits: str = "auto",
) -> Evaluation:
    """Evaluate a saved model on any data source, with the model's own preprocessing.

    `model` is a model or run folder (run with PyTorch), an exported `.onnx` or `.ort` file (float
    or int8, run with ONNX Runtime), or a `Predictor`: every image goes through `Predictor`, as in
    `predict` and `serve`.
    `split` picks the layout's (or the manifest's) split: train, val, test, or all. Writes
    metrics.json, the confusion matrices, most_confused.csv, predictions.csv, misclassified.png and
    reliability.png into `out` (default: a new folder runs/evaluate[-N]). `tta` averages each image's
    probabilities with its mirror image's (test-time augmentation; also on with a Predictor's `tta`).
    `splits` says which folders are splits, as `train --splits` does. A multi-label model writes
    metrics.json, per_label.csv, predictions.csv, label_cooccurrence.png, missed_together.png and
    misclassified.png (see `imgclf.evaluation.multi_label`).
    """
    from imgclf.data.prepared import prepare_data
    from imgclf.evaluation.evaluate import evaluate_split

    if isinstance(model, Predictor):
        predictor = model
        if tta and not model.tta:  # the caller's Predictor stays as it was
            predictor = copy.copy(model)
            predictor.tta = True
    else:
        onnx = Path(model).suffix.lower() in export_suffixes()
        backend = "onnxruntime" if onnx else "torch"
        predictor = Predictor.from_path(model, device="cpu" if onnx else device, backend=backend, tta=tta)
    info = predictor.info
    cfg = DataConfig(
        path_col=path_col, label_col=label_col, images=images, multi_label=multi_label, splits=splits
    )
    image_set, _ = select_data(
        data, cfg, split, manifest, labels=labels, classes=info.classes, multi_label=info.multi_label
    )
    everything = np.full(len(image_set), "all", dtype=object)  # evaluated as one set, named `split`
    prepared = prepare_data(image_set, everything, info.preprocessing, "auto", None)
    out_dir = Path(out) if out is not None else runs.create_run_dir("runs", "evaluate")
    if info.multi_label:  # at the model's own thresholds
        from imgclf.data.prepared import image_loader
        from imgclf.evaluation.multi_label import predict_targets, write_multi_label_evaluation

        probabilities, targets, indices = predict_targets(predictor, prepared, "all", batch_size)
        evaluation = write_multi_label_evaluation(
            out_dir,
            probabilities,
            targets,
            [float(t) for t in predictor.thresholds],
            predictor.classes,
            [prepared.image_set.keys[i] for i in indices],
            image_loader(prepared, indices),
            split=split,
            extra={"tta": predictor.tta},
        )
    else:
        evaluation = evaluate_split(predictor, prepared, "all", out_dir, batch_size, top_k, name=split)
    evaluation.problems = list(prepared.image_set.problems)
    evaluation.metrics["skipped"] = [p.__dict__ for p in evaluation.problems]
    runs.write_problems(out_dir / runs.PROBLEMS_FILE, evaluation.problems)  # every file: evaluated or listed
    return evaluation


def calibrate(
    model: str | Path,
    data: Any = None,
    *,
    min_precision: float | None = None,
    split: str = "val",
    manifest: str | Path | None = None,
    batch_size: int = 128,
    device: str = "auto",
    path_col: str | None = None,
    label_col: str | None = None,
    images: str | None = None,
    multi_label: bool | None = None,
    labels: Any = None,
    splits: str = "auto",
) -> dict[str, Any]:
    """Fit a saved model's temperature again and, with `min_precision`, its `unknown` answer, on
    labelled data; rewrites the model's imgclf.json (and novelty.safetensors) and returns its new
    `calibration`. A multi-label model has each label's threshold chosen again instead (F1-best, or
    the lowest keeping precision ≥ `min_precision`).

    `data` defaults to the data the model was trained on, split by the run's manifest.csv;
    `split` names the split fitted on (val; `all` for a labelled set of its own). The feature bank
    comes from the data's train split, or stays the model's own when it has one and the data has no
    train split. Exports made before carry the old calibration: export again.
    """
    from imgclf.artifact import resolve_artifact_path, update_artifact_info
    from imgclf.data.prepared import prepare_data
    from imgclf.evaluation.calibrate import calibrate_model
    from imgclf.inference.unknown import BANK_FILE

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
    cfg = DataConfig(
        path_col=path_col, label_col=label_col, images=images, multi_label=multi_label, splits=splits
    )
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
    from imgclf.artifact import update_artifact_info
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
    from imgclf.data.prepared import prepare_data
    from imgclf.evaluation.calibrate import bank_images
    from imgclf.inference.unknown import FeatureBank

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


def report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write one self-contained report.html (images embedded, opens offline) for a run folder."""
    from imgclf.evaluation.report import write_report

    return write_report(run_dir, out)
