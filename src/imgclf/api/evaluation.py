"""Entry points over a trained model and labelled data: `evaluate`, `calibrate`, and a run's
`report`."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from imgclf import runs
from imgclf.api.data import select_data
from imgclf.config import DataConfig, resolve_data_config
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
    labels: Any = None,
    tta: bool = False,
    data_config: DataConfig | None = None,
    **data_options: Any,
) -> Evaluation:
    """Evaluate a saved model on any data source, with the model's own preprocessing.

    `model` is a model or run folder (run with PyTorch), an exported `.onnx` or `.ort` file (float
    or int8, run with ONNX Runtime), or a `Predictor`: every image goes through `Predictor`, as in
    `predict` and `serve`.
    `split` picks the layout's (or the manifest's) split: train, val, test, or all. Writes
    metrics.json, the confusion matrices, most_confused.csv, predictions.csv, misclassified.png and
    reliability.png into `out` (default: a new folder runs/evaluate[-N]). `tta` averages each image's
    probabilities with its mirror image's (test-time augmentation; also on with a Predictor's `tta`).
    `data_config` (or its fields as keywords: `path_col`, `label_col`, `images`, `multi_label`,
    `splits` …) says how the data is read, as `train`'s data settings do. A multi-label model writes
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
    cfg = resolve_data_config(data_config, data_options)
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
    labels: Any = None,
    data_config: DataConfig | None = None,
    **data_options: Any,
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
    from imgclf.evaluation.model_calibration import recalibrate_model

    cfg = resolve_data_config(data_config, data_options)
    return recalibrate_model(
        model, data, cfg, min_precision=min_precision, split=split, manifest=manifest,
        batch_size=batch_size, device=device, labels=labels,
    )  # fmt: skip


def report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write one self-contained report.html (images embedded, opens offline) for a run folder."""
    from imgclf.evaluation.report import write_report

    return write_report(run_dir, out)
