"""`run_training`: one training run, top to bottom, as a short sequence of named steps.

    set up the hardware → prepare the data → create or resume the run folder → decode the images →
    build the network → the loaders → the optimisation → fit → finish the run

Each step is a function of this module; what a step hands to the next is a small dataclass. Under
torchrun every rank runs the whole sequence; rank 0 alone writes files and reports.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from imgclf import runs
from imgclf.artifact import ModelInfo, load_artifact, save_artifact, update_artifact_info
from imgclf.config import Config, config_to_dict
from imgclf.data.augment import BatchAugment, BatchMix, is_identity
from imgclf.data.headers import read_headers
from imgclf.data.imageset import ImageSet, Problem
from imgclf.data.label_map import load_label_map
from imgclf.data.loader import Shard
from imgclf.data.prepared import (
    PreparedData,
    check_classes,
    header_workers,
    image_loader,
    load_data,
    prepare_data,
)
from imgclf.data.preprocess import PreprocessSpec
from imgclf.data.split import apply_manifest, assign_splits
from imgclf.device import configure_backends, resolve_device, resolve_precision
from imgclf.errors import UsageError
from imgclf.evaluation.calibrate import calibrate_model
from imgclf.evaluation.evaluate import (
    Predicted,
    evaluate_split,
    split_metrics,
    write_samples,
)
from imgclf.evaluation.multi_label import (
    choose_thresholds,
    multi_label_metrics,
    predict_targets,
    run_metrics,
    write_multi_label_evaluation,
)
from imgclf.inference.predictor import Predictor
from imgclf.models.factory import create_model, model_args
from imgclf.models.pretrained import load_pretrained
from imgclf.models.spec import resolve_spec
from imgclf.models.summary import summarize_model
from imgclf.runs import RunFolder
from imgclf.training.checkpoint import SaveCheckpoint, load_checkpoint, restore_checkpoint
from imgclf.training.distributed import (
    DistInfo,
    barrier,
    broadcast_object,
    init_distributed,
    rank_device,
    shutdown,
)
from imgclf.training.events import Callback, KeepBest, MetricsLog, RunInfo, TimeLimit, TrainState, emit
from imgclf.training.loop import StepContext, compile_for_training, fit, wrap_for_ranks
from imgclf.training.optim import class_weights, create_loss, positive_weights, scale_lr
from imgclf.training.recipe import resolve_recipe
from imgclf.training.strategies import StageInputs, Strategy, create_strategy

logger = logging.getLogger(__name__)


@dataclass
class Run:
    """The outcome of `train`: where everything went and how it did."""

    run_dir: Path
    artifact: Path
    best_epoch: int | None
    metrics: dict[str, float]
    problems: list[Problem] = field(default_factory=list)
    stop_reason: str = ""

    @property
    def history(self):
        """metrics.csv as a pandas DataFrame (one row per epoch)."""
        import pandas as pd

        return pd.read_csv(self.run_dir / runs.METRICS_FILE)

    def predictor(self, device: str = "cpu") -> Predictor:
        return Predictor.from_path(self.artifact, device=device)


@dataclass
class Hardware:
    """Where this process trains: its device and, under torchrun, its rank."""

    device: torch.device
    dist: DistInfo


@dataclass
class TrainingData:
    """The samples, their split, and the preprocessing and network they are read for."""

    image_set: ImageSet
    splits: np.ndarray
    val_name: str  # "val", or "test" when there is no validation split
    spec: PreprocessSpec
    args: dict[str, Any]  # the network's architecture (model_args)
    display_names: list[str]


@dataclass
class Network:
    """The network being trained and how it runs."""

    model: torch.nn.Module
    trained: torch.nn.Module  # what the optimizer steps: the model, or its head for --head-only
    frozen_norm: list[torch.nn.Module]
    channels_last: bool
    summary: Any
    weights_source: str | None


@dataclass
class Loaders:
    train: Any
    val: Any | None
    steps_per_epoch: int


@dataclass
class Optimisation:
    """How the network learns: the loop's state (optimizer, schedule), batches to input, the loss."""

    state: TrainState
    ctx: StepContext
    loss_fn: torch.nn.Module
    lr: float  # the head's learning rate, scaled for the global batch


def run_training(
    cfg: Config,
    data: Any = None,
    *,
    labels: Any = None,
    class_names: Sequence[str] | None = None,
    resume: Path | None = None,
    callbacks: Sequence[Callback] = (),
) -> Run:
    """Train as `cfg` says (resolved here where it says `auto`) and return the finished run.

    `data`: a source other than a path (DataFrame, arrays with `labels`); paths come from
    `cfg.data.source`. `resume`: the run folder to continue.
    """
    started = time.perf_counter()
    torch.manual_seed(cfg.seed)
    hardware = set_up_hardware(cfg)
    callbacks = list(callbacks) if hardware.dist.is_main else []
    source = data if data is not None and not isinstance(data, (str, Path)) else cfg.data.source
    image_set, splits = find_samples(cfg, source, labels, class_names, resume)
    cfg = resolve_choices(cfg, image_set, hardware)  # frozen from here on
    data = describe_training_data(cfg, image_set, splits)
    strategy = create_strategy(cfg)  # the recipe's hooks: which layers learn, how, in what stages
    strategy.check(hardware.dist)
    folder = create_run_folder(cfg, data, resume, hardware)
    prepared = decode_images(cfg, data, folder, hardware, callbacks, strategy)
    loaders = build_loaders(cfg, prepared, data.val_name, hardware)
    network = build_network(cfg, data, hardware, strategy)
    loaders = strategy.loaders(loaders, network.model, prepared, data.val_name, hardware, callbacks)
    epochs = planned_epochs(cfg, folder, resume)
    optimisation = build_optimisation(cfg, network, prepared, loaders, hardware, strategy, epochs)
    state, ctx = optimisation.state, optimisation.ctx
    state.info = RunInfo(
        started=started,
        run_dir=folder.path,
        layout=data.image_set.description,
        classes=data.image_set.output_names,
        counts={split: int((prepared.splits == split).sum()) for split in ("train", "val", "test")},
        validation_split=data.val_name if loaders.val is not None else None,
        problems=prepared.image_set.problems,
        spec=data.spec,
        device=str(hardware.device),
        cache=prepared.cache_mode,
        summary=network.summary,
        recipe=cfg.train.recipe,
    )
    info = model_info(cfg, data, prepared, network, state)
    save_best = SaveBest(folder.model, network.model, info, hardware.dist.is_main)
    loop_callbacks: list[Callback] = []  # filled below; the stages add to it as they run
    stage_inputs = StageInputs(
        model=network.model,
        prepared=prepared,
        ctx=ctx,
        val_name=data.val_name if loaders.val is not None else None,
        callbacks=loop_callbacks,
        record_plan=folder.write_plan if hardware.dist.is_main else None,
        steps_per_epoch=loaders.steps_per_epoch,
        lr=optimisation.lr,
        global_batch=cfg.train.batch_size * hardware.dist.world_size,
    )
    loop_callbacks += training_callbacks(
        cfg, folder, state, strategy, stage_inputs, save_best, hardware, callbacks
    )
    if resume is not None:
        resume_state(folder, state, strategy)
        state.info.resumed_from = state.epoch
    first_stage = strategy.first_stage(stage_inputs) if resume is None else None
    fit(state, loaders.train, loaders.val, ctx, optimisation.loss_fn, loop_callbacks, first_stage=first_stage)
    barrier(hardware.dist)
    if not hardware.dist.is_main:  # rank 0 evaluates the best model and writes the rest
        shutdown(hardware.dist)
        return Run(
            folder.path, folder.model, state.best_epoch, {}, prepared.image_set.problems, state.stop_reason
        )
    run = finish_run(cfg, folder, prepared, data, state, info, hardware, loaders.val is not None)
    shutdown(hardware.dist)
    emit(callbacks, "on_run_end", run)
    return run


def set_up_hardware(cfg: Config) -> Hardware:
    """The device (and, under torchrun, this rank's), with its backend switches set."""
    device = resolve_device(cfg.train.device)
    dist = init_distributed(device)
    device = rank_device(device, dist)
    configure_backends(device)
    return Hardware(device, dist)


def find_samples(
    cfg: Config,
    source: Any,
    labels: Any,
    class_names: Sequence[str] | None,
    resume: Path | None,
) -> tuple[ImageSet, np.ndarray]:
    """Every sample with its headers read, and its split (made, or reused from a manifest), the
    classes checked."""
    image_set = load_data(source, cfg.data, labels=labels, class_names=class_names, multi_label_ok=True)
    image_set = read_headers(image_set, workers=header_workers(len(image_set), cfg.data.workers))
    manifest = (resume / runs.MANIFEST_FILE) if resume is not None else cfg.data.manifest
    if manifest is not None:
        image_set, splits = apply_manifest(image_set, manifest)
    else:
        splits = assign_splits(image_set, cfg.data.val_split, cfg.data.test_split, cfg.seed)
    check_classes(image_set, splits)
    return image_set, splits


def resolve_choices(cfg: Config, image_set: ImageSet, hardware: Hardware) -> Config:
    """What imgclf chooses where the user did not (model, recipe, settings), one line each: the
    config's last resolution; the config that comes back is frozen for the rest of the run."""
    cfg, lines = resolve_recipe(cfg, image_set, hardware.device.type, distributed=hardware.dist.enabled)
    for line in lines:
        if hardware.dist.is_main:
            logger.info("%s", line)
    return cfg


def describe_training_data(cfg: Config, image_set: ImageSet, splits: np.ndarray) -> TrainingData:
    """The split validated on, and the preprocessing and network fixed once for training,
    evaluation and prediction."""
    val_name = "val"
    if not (splits == "val").any() and (splits == "test").any():
        val_name = "test"
        logger.warning(
            "no validation split: validating on the test split, as the tutorials do; "
            "its accuracy is then no unbiased estimate"
        )
    pretrained = cfg.model.pretrained or bool(cfg.model.weights)
    spec = resolve_spec(cfg.data, cfg.model.name, image_set, pretrained=pretrained)
    outputs = image_set.output_names  # the classes, or a multi-label set's labels
    display_names = list(outputs)
    if cfg.data.label_map is not None:
        mapping = load_label_map(cfg.data.label_map, outputs)
        display_names = [mapping[name] for name in outputs]
    args = model_args(cfg.model, len(outputs), spec.channels, [spec.height, spec.width])
    return TrainingData(image_set, splits, val_name, spec, args, display_names)


def planned_epochs(cfg: Config, folder: RunFolder, resume: Path | None) -> int | None:
    """The epochs to train: as configured; when imgclf plans them (transfer), None until it has,
    or on resume the number the run recorded (plan.json)."""
    if cfg.train.epochs is not None:
        return cfg.train.epochs
    return folder.read_plan() if resume is not None else None


def create_run_folder(cfg: Config, data: TrainingData, resume: Path | None, hardware: Hardware) -> RunFolder:
    """A new run folder with the config and the split written before any training; or the one resumed."""
    if resume is not None:
        return RunFolder(resume)
    path = None
    if hardware.dist.is_main:
        folder = RunFolder.create(cfg.output.project, cfg.output.name)
        folder.write_config(cfg)
        folder.write_manifest(data.image_set, data.splits)
        path = str(folder.path)
    return RunFolder(Path(broadcast_object(path, hardware.dist)))


def decode_images(
    cfg: Config,
    data: TrainingData,
    folder: RunFolder,
    hardware: Hardware,
    callbacks: Sequence[Callback],
    strategy: Strategy,
) -> PreparedData:
    """Decode every image once (into RAM when it fits); the files that fail are listed and left out."""
    train_set = data.image_set.subset(np.flatnonzero(data.splits == "train"))
    train_spec = strategy.train_cache_spec(data.spec, train_set)
    prepared = prepare_data(
        data.image_set,
        data.splits,
        data.spec,
        cfg.data.cache,
        cfg.data.workers,
        callbacks,
        cfg.data.cache_budget_gb,
        train_spec,
    )
    check_classes(prepared.image_set, prepared.splits)
    if hardware.dist.is_main:
        folder.write_problems(prepared.image_set.problems)
    return prepared


def build_loaders(cfg: Config, prepared: PreparedData, val_name: str, hardware: Hardware) -> Loaders:
    """The training loader (this rank's shard, shuffled) and the validation loader, if there is one."""
    dist = hardware.dist
    remainder = len(prepared.indices("train")) % cfg.train.batch_size
    train = prepared.loader(
        "train",
        cfg.train.batch_size,
        shuffle=True,
        seed=cfg.seed,
        workers=cfg.data.workers,
        drop_last=remainder == 1,
        shard=Shard(dist.rank, dist.world_size, even=True),
        device=hardware.device,
    )
    val = None
    if len(prepared.indices(val_name)):
        val = prepared.loader(
            val_name,
            cfg.train.batch_size * 2,
            shuffle=False,
            workers=cfg.data.workers,
            shard=Shard(dist.rank, dist.world_size),
            device=hardware.device,
        )
    return Loaders(train, val, max(1, len(train)))


def build_network(cfg: Config, data: TrainingData, hardware: Hardware, strategy: Strategy) -> Network:
    """The network with its weights, the layers that train, and its memory format on the device."""
    model = create_model(data.args)
    weights_source = None
    if cfg.model.pretrained or cfg.model.weights:
        weights_source = load_pretrained(model, cfg.model.name, cfg.model.weights)
    frozen_norm = strategy.set_trainable(model)
    spec = data.spec
    summary = summarize_model(model, (spec.channels, spec.height, spec.width))
    channels_last = strategy.channels_last()
    model.to(hardware.device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    trained = strategy.trained_module(model)
    return Network(model, trained, frozen_norm, channels_last, summary, weights_source)


def build_optimisation(
    cfg: Config,
    network: Network,
    prepared: PreparedData,
    loaders: Loaders,
    hardware: Hardware,
    strategy: Strategy,
    epochs: int | None,
) -> Optimisation:
    """Optimizer, schedule and loss (as the strategy makes them); how batches become input
    (augmentation, precision)."""
    train = cfg.train
    global_batch = train.batch_size * hardware.dist.world_size
    lr = scale_lr(train.lr, global_batch, train.lr_scaling, train.lr_base_batch)
    if lr != train.lr:
        logger.info(
            "learning rate %.3g scaled to %.3g for batches of %d (%s scaling from %d)",
            train.lr, lr, global_batch, train.lr_scaling, train.lr_base_batch,
        )  # fmt: skip
    optimizer = strategy.create_optimizer(network.model, network.trained, lr, global_batch)
    schedule = strategy.create_schedule(optimizer, loaders.steps_per_epoch, lr, epochs)
    image_set = prepared.image_set
    train_labels = image_set.labels[prepared.indices("train")]
    set_targets = None
    if image_set.multi_label:  # binary cross-entropy per label; positive weights for rare labels
        set_targets = torch.from_numpy(image_set.set_targets()).to(hardware.device)
        train_targets = image_set.set_targets()[train_labels]
        weights = positive_weights(train_targets) if train.class_weight == "auto" else None
    else:
        num_classes = len(image_set.classes)
        weights = class_weights(train_labels, num_classes) if train.class_weight == "auto" else None
    loss_fn = create_loss(train, weights.to(hardware.device) if weights is not None else None, set_targets)
    ctx = step_context(cfg, network, prepared, hardware, strategy)
    ctx.set_targets = set_targets
    wrap_for_ranks(network.model, ctx)
    compile_for_training(network.model, ctx, train.compile)
    monitor = train.monitor if loaders.val is not None else "train_loss"
    state = TrainState(
        epochs=epochs or 0,
        model=network.trained,
        optimizer=optimizer,
        schedule=schedule,
        monitor=monitor,
    )
    return Optimisation(state, ctx, loss_fn, lr)


def step_context(
    cfg: Config, network: Network, prepared: PreparedData, hardware: Hardware, strategy: Strategy
) -> StepContext:
    """How a uint8 batch becomes the network's input on this hardware while training."""
    size = strategy.train_size(prepared.spec)
    augment = None
    full_size = (prepared.spec.height, prepared.spec.width)
    if not (is_identity(cfg.augment) and prepared.train_spec is None and size == full_size):
        augment = BatchAugment(cfg.augment, cfg.seed, size=size)
    mix = None
    if cfg.augment.mixup or cfg.augment.cutmix:
        mix = BatchMix(cfg.augment.mixup, cfg.augment.cutmix, cfg.seed)
    features = strategy.feature_batches
    return StepContext(
        device=hardware.device,
        spec=prepared.spec,
        augment=augment,
        mix=mix,
        autocast_dtype=resolve_precision(cfg.train.precision, hardware.device),
        channels_last=network.channels_last and not features,
        seed=cfg.seed,
        normalize=not features,
        frozen_norm=network.frozen_norm,
        dist=hardware.dist,
    )


def resume_state(folder: RunFolder, state: TrainState, strategy: Strategy) -> None:
    """Continue from the run folder's last checkpoint: weights, optimizer, schedule, history."""
    if state.schedule is None:  # the epochs were never planned
        raise UsageError(f"{folder.path} stopped before its first epoch; start it again instead of resuming")
    payload = load_checkpoint(folder.checkpoint)
    strategy.resume(state, payload["epoch"])
    restore_checkpoint(state, payload)
    if state.epoch < state.epochs and state.stop_reason.startswith("early stop"):
        state.stop = False  # more epochs were asked for explicitly


def model_info(
    cfg: Config, data: TrainingData, prepared: PreparedData, network: Network, state: TrainState
) -> ModelInfo:
    """What the saved model carries besides its weights: classes, preprocessing, how it was trained."""
    image_set = data.image_set
    counts = prepared.image_set.class_counts()
    if image_set.multi_label:  # images per label
        per_label = prepared.image_set.targets.sum(axis=0)
        counts = {name: int(count) for name, count in zip(image_set.output_names, per_label)}
    return ModelInfo(
        architecture=data.args,
        classes=image_set.output_names,
        multi_label=image_set.multi_label,
        preprocessing=data.spec,
        display_names=data.display_names,
        training={
            "config": config_to_dict(cfg),
            "monitor": state.monitor,
            "pretrained": network.weights_source,
        },
        dataset={
            "source": str(image_set.source),
            "fingerprint": image_set.fingerprint(),
            "layout": image_set.layout,
            "class_counts": counts,
            "split_counts": state.info.counts,
        },
    )


class SaveBest:
    """KeepBest's action: save the whole network as the run's model (also when only its head trains),
    with the epoch and its metrics. Rank 0 alone writes."""

    def __init__(self, artifact_dir: Path, model: torch.nn.Module, info: ModelInfo, is_main: bool) -> None:
        self.artifact_dir, self.model, self.info, self.is_main = artifact_dir, model, info, is_main

    def __call__(self, state: TrainState) -> None:
        if not self.is_main:
            return
        self.info.training.update(
            best_epoch=state.best_epoch, epochs_completed=state.epoch, epochs_planned=state.epochs
        )
        self.info.metrics = {k: v for k, v in state.last.items() if k != "epoch"}
        save_artifact(self.artifact_dir, self.model, self.info)


def training_callbacks(
    cfg: Config,
    folder: RunFolder,
    state: TrainState,
    strategy: Strategy,
    stage_inputs: StageInputs,
    save_best: SaveBest,
    hardware: Hardware,
    callbacks: Sequence[Callback],
) -> list[Callback]:
    """In order: the strategy's stages, the best model kept, the strategy's rules for when to stop,
    the time limit; on rank 0 the metrics log, the checkpoint and the caller's callbacks."""
    chosen = [*strategy.stage_callbacks(stage_inputs), KeepBest(save_best), *strategy.stop_rules()]
    if cfg.train.time_limit:
        chosen.append(TimeLimit(cfg.train.time_limit * 60, state.info.started))
    if hardware.dist.is_main:
        chosen += [MetricsLog(folder.metrics, folder.curves), SaveCheckpoint(folder.checkpoint), *callbacks]
    return chosen


def finish_run(
    cfg: Config,
    folder: RunFolder,
    prepared: PreparedData,
    data: TrainingData,
    state: TrainState,
    info: ModelInfo,
    hardware: Hardware,
    has_val: bool,
) -> Run:
    """Restore the best weights, evaluate them on validation and test through the same `Predictor`
    that `predict` uses (float32, whole images, every sample), and write the run's summaries."""
    best_model, _ = load_artifact(folder.model, device=hardware.device)
    predictor = Predictor(best_model, info, hardware.device)
    batch_size = cfg.train.batch_size * 2
    if prepared.image_set.multi_label:
        final = evaluate_multi_label_run(cfg, folder, prepared, data, predictor, info, has_val, batch_size)
    else:
        final = evaluate_single_label_run(cfg, folder, prepared, data, predictor, info, has_val, batch_size)
    folder.write_dataset(prepared)
    write_samples(folder.samples, prepared)
    info.metrics = {**info.metrics, **final}
    info.training.update(
        best_epoch=state.best_epoch,
        epochs_completed=state.epoch,
        epochs_planned=state.epochs,
        stop_reason=state.stop_reason,
    )
    update_artifact_info(folder.model, info)
    problems = prepared.image_set.problems
    folder.write_summary(state.epoch, state.best_epoch, state.monitor, state.stop_reason, final, problems)
    return Run(folder.path, folder.model, state.best_epoch, final, problems, state.stop_reason)


def evaluate_single_label_run(
    cfg: Config,
    folder: RunFolder,
    prepared: PreparedData,
    data: TrainingData,
    predictor: Predictor,
    info: ModelInfo,
    has_val: bool,
    batch_size: int,
) -> dict[str, float]:
    """Calibrate on validation (temperature, --min-precision's unknown rule, the feature bank), write
    its full evaluation into the run folder, and measure the test split: the run's final metrics."""
    final: dict[str, float] = {}
    predictions: dict[str, Predicted] = {}
    if cfg.train.min_precision is not None and not has_val:
        logger.warning(
            "--min-precision is chosen on the validation split, and this run has none: the model always "
            "answers a class (train with --val-split, or `imgclf calibrate MODEL DATA --split all` on "
            "labelled images it was not trained on)"
        )
    if has_val:
        info.calibration, predictions, bank = calibrate_model(
            predictor, prepared, data.val_name, batch_size, cfg.train.min_precision
        )
        if bank is not None:
            bank.save(folder.model)
        # the full evaluation of the validation split goes into the run folder
        evaluation = evaluate_split(
            predictor,
            prepared,
            data.val_name,
            folder.evaluation,
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
    return final


def evaluate_multi_label_run(
    cfg: Config,
    folder: RunFolder,
    prepared: PreparedData,
    data: TrainingData,
    predictor: Predictor,
    info: ModelInfo,
    has_val: bool,
    batch_size: int,
) -> dict[str, float]:
    """Choose each label's threshold on validation (F1-best, or --min-precision), write the
    validation split's multi-label evaluation into the run folder, and measure the test split at the
    same thresholds: the run's final metrics (mAP, macro F1, subset accuracy; val_acc is subset
    accuracy too)."""
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
            folder.evaluation,
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
