"""What the CLI and notebooks call: `train`, `evaluate`, `calibrate`, `features`, `load_model`.

Each entry point resolves its arguments and hands over to the layer that does the work: `train` to
`imgclf.training.pipeline.run_training`, `evaluate` to `imgclf.evaluation.evaluate`, `calibrate` to
`imgclf.evaluation.calibrate`, `features` to
`imgclf.features.bottleneck`, `load_model` to `imgclf.inference.predictor.Predictor`. The training and
evaluation layers are imported when called, so that loading a model to predict imports neither.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from imgclf import runs
from imgclf.config import Config, DataConfig, load_config, resolve_config, setting_section
from imgclf.errors import DataError, UsageError
from imgclf.inference.predictor import EXPORT_SUFFIXES, Predictor

if TYPE_CHECKING:
    from imgclf.evaluation.outputs import Evaluation
    from imgclf.training.events import Callback
    from imgclf.training.pipeline import Run

logger = logging.getLogger(__name__)


def __getattr__(name: str) -> Any:
    if name == "Run":  # the outcome of `train`, defined with the pipeline that makes it
        from imgclf.training.pipeline import Run

        return Run
    raise AttributeError(f"module 'imgclf.api' has no attribute {name!r}")


def train(
    data: Any = None,
    *,
    config: Config | str | Path | None = None,
    labels: Any = None,
    class_names: Sequence[str] | None = None,
    resume: str | Path | None = None,
    callbacks: Sequence[Callback] = (),
    verbose: bool = False,
    **overrides: Any,
) -> Run:
    """Train a classifier and return the run (history, best metrics, artifact path).

    Args:
        data: a folder, CSV/TSV, archive or IDX path; a pandas DataFrame (path and label columns);
            or an image array (N, H, W[, C]) together with `labels`.
        config: a Config, or a YAML file; keyword overrides win over it (e.g. `epochs=5`,
            `model="cnn-small"`, `train={"lr": 3e-4}` or `"train.lr": 3e-4`).
        resume: a run folder to continue where it stopped (its config and split are reused).
        callbacks: extra event handlers (see `imgclf.training.events.Callback`).
        verbose: print progress to the terminal, as the CLI does (useful in notebooks).
    """
    from imgclf.training.pipeline import run_training

    run_dir = None
    if resume is not None:
        run_dir = Path(resume)
        if not (run_dir / runs.CONFIG_FILE).is_file():
            raise UsageError(f"{run_dir} is not a run folder to resume (no {runs.CONFIG_FILE})")
        saved = load_config(run_dir / runs.CONFIG_FILE)
        changed: dict[str, Any] = {}
        if saved.train.recipe == "auto":  # a run folder from before recipes trained as configured
            changed["train.recipe"] = "plain"
        if "epochs" in overrides or "train.epochs" in overrides:  # more epochs than first asked for
            changed["train.epochs"] = int(overrides.get("epochs", overrides.get("train.epochs")))
        cfg = resolve_config(None, changed, base=saved) if changed else saved
    else:
        cfg = _config_from(config, data, overrides)
        if cfg.data.source is None and (data is None or isinstance(data, (str, Path))):
            raise UsageError("give the DATA to train on (or a --config that names data.source)")
    if verbose:
        from imgclf.console import ConsoleReporter

        callbacks = [*callbacks, ConsoleReporter()]
    return run_training(
        cfg, data, labels=labels, class_names=class_names, resume=run_dir, callbacks=callbacks
    )


def _config_from(config: Config | str | Path | None, data: Any, overrides: dict[str, Any]) -> Config:
    """Defaults < config (object or YAML) < keyword overrides.

    Keywords may be dotted ("train.lr"), a section dict (train={...}), or a bare setting name
    (lr=1e-3, epochs=5); `model="x"` is short for model.name, `augment="light"` for augment.preset.
    """
    flat: dict[str, Any] = {}
    for key, value in overrides.items():
        if key == "model" and isinstance(value, str):
            flat["model.name"] = value
        elif key == "augment" and isinstance(value, str):
            flat["augment.preset"] = value
        elif key == "name":  # the run's name; the model is chosen with model=
            flat["output.name"] = value
        elif "." in key or key in ("data", "augment", "model", "train", "output", "seed"):
            flat[key] = value
        else:
            flat[f"{setting_section(key)}.{key}"] = value
    if isinstance(data, (str, Path)):
        flat["data.source"] = str(data)
    if isinstance(config, Config):
        return resolve_config(None, flat, base=config)
    return resolve_config(config, flat)


def load_model(path: str | Path, device: str = "cpu", backend: str = "auto", tta: bool = False) -> Predictor:
    """Load a saved model (artifact folder, run folder or exported .onnx file) ready to predict.

    `tta`: average each image's probabilities with its mirror image's (test-time augmentation).
    """
    return Predictor.from_path(path, device=device, backend=backend, tta=tta)


def _select_data(
    data: Any,
    cfg: DataConfig,
    split: str,
    manifest: str | Path | None,
    labels: Any = None,
    classes: Sequence[str] | None = None,
) -> tuple[Any, np.ndarray]:
    """The samples of one split of any source, with their headers read; says the layout it found."""
    from imgclf.data.headers import read_headers
    from imgclf.data.prepared import header_workers, load_data, select_split

    image_set = load_data(data, cfg, labels=labels)
    if image_set.description:
        logger.info("layout: %s", image_set.description)
    if classes is not None:  # the model's classes, in its order
        unknown = sorted(set(image_set.classes) - set(classes))
        if unknown:
            raise DataError(f"the data has class {unknown[0]!r}, which the model does not know")
        remap = [list(classes).index(name) for name in image_set.classes]
        image_set.labels = np.asarray(remap, dtype=np.int64)[image_set.labels]
        image_set.classes = list(classes)
    image_set, split_names = select_split(image_set, split, manifest)
    image_set = read_headers(image_set, workers=header_workers(len(image_set), None))
    if len(image_set) == 0:
        raise DataError("no usable image found in the data")
    return image_set, split_names


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
    `splits` says which folders are splits, as `train --splits` does.
    """
    from imgclf.data.prepared import prepare_data
    from imgclf.evaluation.evaluate import evaluate_split

    if isinstance(model, Predictor):
        predictor = model
        if tta and not model.tta:  # the caller's Predictor stays as it was
            predictor = copy.copy(model)
            predictor.tta = True
    else:
        onnx = Path(model).suffix.lower() in EXPORT_SUFFIXES
        backend = "onnxruntime" if onnx else "torch"
        predictor = Predictor.from_path(model, device="cpu" if onnx else device, backend=backend, tta=tta)
    info = predictor.info
    cfg = DataConfig(path_col=path_col, label_col=label_col, splits=splits)
    image_set, _ = _select_data(data, cfg, split, manifest, labels=labels, classes=info.classes)
    everything = np.full(len(image_set), "all", dtype=object)  # evaluated as one set, named `split`
    prepared = prepare_data(image_set, everything, info.preprocessing, "auto", None)
    out_dir = Path(out) if out is not None else runs.create_run_dir("runs", "evaluate")
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
    labels: Any = None,
    splits: str = "auto",
) -> dict[str, Any]:
    """Fit a saved model's temperature again and, with `min_precision`, its `unknown` answer, on
    labelled data; rewrites the model's imgclf.json (and novelty.safetensors) and returns its new
    `calibration`.

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
    cfg = DataConfig(path_col=path_col, label_col=label_col, splits=splits)
    image_set, split_names = _select_data(data, cfg, "all", manifest, labels=labels, classes=info.classes)
    if split == "all":
        split_names = np.where(split_names == "train", "train", "all").astype(object)
    elif split not in set(split_names.tolist()):
        raise UsageError(f"the data has no {split!r} split; use --split all (or give --manifest)")
    prepared = prepare_data(image_set, split_names, info.preprocessing, "auto", None)
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
    image_set, split_names = _select_data(source, DataConfig(), "train", manifest, classes=info.classes)
    training = prepare_data(image_set, split_names, info.preprocessing, "auto", None)
    return FeatureBank.from_images(predictor.features, bank_images(training), batch_size)


def features(
    model_or_backbone: str | Path,
    data: Any,
    out: str | Path,
    *,
    weights: str | Path | None = None,
    split: str = "all",
    manifest: str | Path | None = None,
    batch_size: int = 64,
    device: str = "auto",
    path_col: str | None = None,
    label_col: str | None = None,
    callbacks: Sequence[Callback] = (),
    splits: str = "auto",
) -> Path:
    """Bottleneck features of every image: a saved model's penultimate layer, or a pretrained backbone's.

    Writes `features.npy` (N×D float32), `labels.npy` (N int64), `samples.csv` (path, label, split)
    and `classes.json` into `out`.
    """
    from imgclf.data.prepared import prepare_data
    from imgclf.device import resolve_device
    from imgclf.features.bottleneck import feature_network, write_features

    cfg = DataConfig(path_col=path_col, label_col=label_col, splits=splits)
    image_set, split_names = _select_data(data, cfg, split, manifest)
    resolved = resolve_device(device)
    model, spec = feature_network(model_or_backbone, weights, cfg, image_set, resolved)
    prepared = prepare_data(image_set, split_names, spec, "auto", None, callbacks)
    return write_features(model, prepared, Path(out), resolved, batch_size, callbacks)
