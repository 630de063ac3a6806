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
    load_data,
    prepare_data,
)
from imgclf.data.preprocess import PreprocessSpec
from imgclf.data.split import apply_manifest, assign_splits
from imgclf.device import configure_backends, resolve_device, resolve_precision
from imgclf.errors import UsageError
from imgclf.evaluation.evaluate import write_samples
from imgclf.inference.predictor import Predictor
from imgclf.models.anatomy import depthwise_gradients_in_float32
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
from imgclf.training.events import Callback, KeepBest, RunInfo, TimeLimit, TrainState, emit
from imgclf.training.final import evaluate_run
from imgclf.training.loggers import create_loggers
from imgclf.training.loop import StepContext, compile_for_training, fit, wrap_for_ranks
from imgclf.training.optim import class_weights, create_loss, positive_weights, scale_lr
from imgclf.training.phases import Phases
from imgclf.training.recipe import resolve_recipe
from imgclf.training.strategy import check_recipe, create_strategy

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
    phases: list[tuple[str, float]] = field(default_factory=list)  # where the time went (phases.csv)

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
    trainer = Trainer(cfg, data, labels=labels, class_names=class_names, resume=resume, callbacks=callbacks)
    return trainer.run()


class Trainer:
    """One training run and everything it holds: the config, the hardware, the data and its loaders,
    the run folder, the network, the optimisation state, and the recipe (`strategy`) whose hooks decide
    which layers learn, how and in what stages. `run` reads top to bottom as named steps; each step
    is a method that sets what it made on the trainer, where the recipe's hooks read it."""

    def __init__(
        self,
        cfg: Config,
        data: Any = None,
        *,
        labels: Any = None,
        class_names: Sequence[str] | None = None,
        resume: Path | None = None,
        callbacks: Sequence[Callback] = (),
    ) -> None:
        self.cfg = cfg
        self.source = data if data is not None and not isinstance(data, (str, Path)) else cfg.data.source
        self.labels, self.class_names, self.resume_from = labels, class_names, resume
        self.user_callbacks = list(callbacks)
        self.loop_callbacks: list[Callback] = []  # filled by `build_callbacks`; the stages add to it
        self.loggers: list[Callback] = []  # the run's loggers (rank 0): they also hear on_run_end
        self.started = time.perf_counter()

    @property
    def callbacks(self) -> list[Callback]:
        """The caller's callbacks (rank 0 alone reports)."""
        return self.user_callbacks if self.hardware.dist.is_main else []

    @property
    def validation_split(self) -> str | None:
        """The split validated on, or None when the run has none."""
        return self.data.val_name if self.loaders.val is not None else None

    def run(self) -> Run:
        """Train: the named steps, in order, each timed (`self.phases`, the run folder's phases.csv)."""
        phases = self.phases = Phases()
        torch.manual_seed(self.cfg.seed)
        check_recipe(self.cfg.train)  # an unknown recipe or logger is an error before any work
        with phases.time("scan, headers and split"):
            self.hardware = set_up_hardware(self.cfg)
            self.image_set, self.splits = self.find_samples()
            self.cfg = self.resolve_choices()  # frozen from here on
            self.data = describe_training_data(self.cfg, self.image_set, self.splits)
            self.strategy = create_strategy(self.cfg)  # the recipe: which layers learn, how, in what stages
            self.strategy.check(self)
            self.folder = self.create_run_folder()
        with phases.time("decode and cache"):
            self.prepared = self.decode_images()
        with phases.time("network, loaders, optimizer"):
            self.loaders = self.build_loaders()
            self.network = self.build_network()
            self.loaders = self.strategy.loaders(self)
            self.optimisation = self.build_optimisation(
                planned_epochs(self.cfg, self.folder, self.resume_from)
            )
            self.state = self.optimisation.state
            self.state.info = self.run_info()
            self.info = model_info(self.cfg, self.data, self.prepared, self.network, self.state)
            self.loop_callbacks += self.build_callbacks()
            if self.resume_from is not None:
                self.resume_state()
        first_stage = self.strategy.first_stage(self) if self.resume_from is None else None
        ctx, loss_fn = self.optimisation.ctx, self.optimisation.loss_fn
        before = sum(phases.rows.values())
        fit_started = time.perf_counter()
        fit(
            self.state,
            self.loaders.train,
            self.loaders.val,
            ctx,
            loss_fn,
            self.loop_callbacks,
            first_stage=first_stage,
        )
        phases.add_epochs(
            self.state.history, time.perf_counter() - fit_started, sum(phases.rows.values()) - before
        )
        barrier(self.hardware.dist)
        if not self.hardware.dist.is_main:  # rank 0 evaluates the best model and writes the rest
            shutdown(self.hardware.dist)
            state = self.state
            return Run(
                self.folder.path, self.folder.model, state.best_epoch, {}, self.problems, state.stop_reason
            )
        run = self.finish_run()
        shutdown(self.hardware.dist)
        run.phases = phases.write(self.folder.path)  # the loggers record it too
        emit([*self.loggers, *self.callbacks], "on_run_end", run)
        return run

    @property
    def problems(self) -> list[Problem]:
        return self.prepared.image_set.problems

    def find_samples(self) -> tuple[ImageSet, np.ndarray]:
        """Every sample with its headers read, and its split (made, or reused from a manifest), the
        classes checked."""
        cfg, resume = self.cfg, self.resume_from
        image_set = load_data(
            self.source, cfg.data, labels=self.labels, class_names=self.class_names, multi_label_ok=True
        )
        image_set = read_headers(image_set, workers=header_workers(len(image_set), cfg.data.workers))
        manifest = (resume / runs.MANIFEST_FILE) if resume is not None else cfg.data.manifest
        if manifest is not None:
            image_set, splits = apply_manifest(image_set, manifest)
        else:
            splits = assign_splits(image_set, cfg.data.val_split, cfg.data.test_split, cfg.seed)
        check_classes(image_set, splits)
        return image_set, splits

    def resolve_choices(self) -> Config:
        """What imgclf chooses where the user did not (model, recipe, settings), one line each: the
        config's last resolution; the config that comes back is frozen for the rest of the run."""
        hardware = self.hardware
        cfg, lines = resolve_recipe(
            self.cfg, self.image_set, hardware.device.type, distributed=hardware.dist.enabled
        )
        for line in lines:
            if hardware.dist.is_main:
                logger.info("%s", line)
        return cfg

    def create_run_folder(self) -> RunFolder:
        """A new run folder with the config and the split written before any training; or the one resumed."""
        if self.resume_from is not None:
            return RunFolder(self.resume_from)
        path = None
        if self.hardware.dist.is_main:
            folder = RunFolder.create(self.cfg.output.project, self.cfg.output.name)
            folder.write_config(self.cfg)
            folder.write_manifest(self.data.image_set, self.data.splits)
            path = str(folder.path)
        return RunFolder(Path(broadcast_object(path, self.hardware.dist)))

    def decode_images(self) -> PreparedData:
        """Decode every image once (into RAM when it fits); the files that fail are listed and left out."""
        cfg, data = self.cfg, self.data
        train_set = data.image_set.subset(np.flatnonzero(data.splits == "train"))
        train_spec = self.strategy.train_cache_spec(data.spec, train_set)
        prepared = prepare_data(
            data.image_set,
            data.splits,
            data.spec,
            cfg.data.cache,
            cfg.data.workers,
            self.callbacks,
            cfg.data.cache_budget_gb,
            train_spec,
        )
        check_classes(prepared.image_set, prepared.splits)
        if self.hardware.dist.is_main:
            self.folder.write_problems(prepared.image_set.problems)
        return prepared

    def build_loaders(self) -> Loaders:
        """The training loader (this rank's shard, shuffled) and the validation loader, if there is one."""
        cfg, prepared, dist, device = self.cfg, self.prepared, self.hardware.dist, self.hardware.device
        remainder = len(prepared.indices("train")) % cfg.train.batch_size
        train = prepared.loader(
            "train",
            cfg.train.batch_size,
            shuffle=True,
            seed=cfg.seed,
            workers=cfg.data.workers,
            drop_last=remainder == 1,
            shard=Shard(dist.rank, dist.world_size, even=True),
            device=device,
        )
        val = None
        val_name = self.data.val_name
        if len(prepared.indices(val_name)):
            val = prepared.loader(
                val_name,
                cfg.train.batch_size * 2,
                shuffle=False,
                workers=cfg.data.workers,
                shard=Shard(dist.rank, dist.world_size),
                device=device,
            )
        return Loaders(train, val, max(1, len(train)))

    def build_network(self) -> Network:
        """The network with its weights, the layers that train, and its memory format on the device."""
        cfg, strategy, spec = self.cfg, self.strategy, self.data.spec
        model = create_model(self.data.args)
        weights_source = None
        if cfg.model.pretrained or cfg.model.weights:
            weights_source = load_pretrained(model, cfg.model.name, cfg.model.weights)
        frozen_norm = strategy.set_trainable(model)
        summary = summarize_model(model, (spec.channels, spec.height, spec.width))
        channels_last = strategy.channels_last()
        model.to(self.hardware.device)
        if channels_last:
            model.to(memory_format=torch.channels_last)
        trained = strategy.trained_module(model)
        return Network(model, trained, frozen_norm, channels_last, summary, weights_source)

    def build_optimisation(self, epochs: int | None) -> Optimisation:
        """Optimizer, schedule and loss (as the recipe makes them); how batches become input
        (augmentation, precision)."""
        train, network = self.cfg.train, self.network
        global_batch = train.batch_size * self.hardware.dist.world_size
        lr = scale_lr(train.lr, global_batch, train.lr_scaling, train.lr_base_batch)
        if lr != train.lr:
            logger.info(
                "learning rate %.3g scaled to %.3g for batches of %d (%s scaling from %d)",
                train.lr, lr, global_batch, train.lr_scaling, train.lr_base_batch,
            )  # fmt: skip
        optimizer = self.strategy.create_optimizer(self, lr)
        schedule = self.strategy.create_schedule(optimizer, self.loaders.steps_per_epoch, lr, epochs)
        loss_fn, set_targets = self.create_loss()
        ctx = self.step_context()
        ctx.set_targets = set_targets
        wrap_for_ranks(network.model, ctx)
        compile_for_training(network.model, ctx, train.compile)
        monitor = train.monitor if self.loaders.val is not None else "train_loss"
        state = TrainState(
            epochs=epochs or 0, model=network.trained, optimizer=optimizer, schedule=schedule, monitor=monitor
        )
        return Optimisation(state, ctx, loss_fn, lr)

    def create_loss(self) -> tuple[torch.nn.Module, torch.Tensor | None]:
        """The loss, with class weights (or multi-label positive weights) when asked for, and the
        multi-label set's target table (None for one label per image)."""
        train, device, prepared = self.cfg.train, self.hardware.device, self.prepared
        image_set = prepared.image_set
        train_labels = image_set.labels[prepared.indices("train")]
        set_targets = None
        if image_set.multi_label:  # binary cross-entropy per label; positive weights for rare labels
            set_targets = torch.from_numpy(image_set.set_targets()).to(device)
            train_targets = image_set.set_targets()[train_labels]
            weights = positive_weights(train_targets) if train.class_weight == "auto" else None
        else:
            num_classes = len(image_set.classes)
            weights = class_weights(train_labels, num_classes) if train.class_weight == "auto" else None
        loss_fn = create_loss(train, weights.to(device) if weights is not None else None, set_targets)
        return loss_fn, set_targets

    def step_context(self) -> StepContext:
        """How a uint8 batch becomes the network's input on this hardware while training."""
        cfg, prepared, strategy = self.cfg, self.prepared, self.strategy
        size = strategy.train_size(prepared.spec)
        augment = None
        full_size = (prepared.spec.height, prepared.spec.width)
        if not (is_identity(cfg.augment) and prepared.train_spec is None and size == full_size):
            augment = BatchAugment(cfg.augment, cfg.seed, size=size)
        mix = None
        if cfg.augment.mixup or cfg.augment.cutmix:
            mix = BatchMix(cfg.augment.mixup, cfg.augment.cutmix, cfg.seed)
        features = strategy.feature_batches
        autocast_dtype = resolve_precision(cfg.train.precision, self.hardware.device)
        if autocast_dtype == torch.bfloat16 and self.hardware.device.type == "cpu":
            # oneDNN's bf16 depthwise weight gradient is its slow generic kernel: those convolutions
            # train in float32 (1.4× the images/s of Lite0's last 3 blocks, benchmarks/finetune_speed.py)
            depthwise_gradients_in_float32(self.network.model)
        return StepContext(
            device=self.hardware.device,
            spec=prepared.spec,
            augment=augment,
            mix=mix,
            autocast_dtype=autocast_dtype,
            channels_last=self.network.channels_last and not features,
            seed=cfg.seed,
            normalize=not features,
            frozen_norm=self.network.frozen_norm,
            dist=self.hardware.dist,
        )

    def run_info(self) -> RunInfo:
        """What the events report about the run (layout, classes, counts, device, recipe …)."""
        data, prepared, hardware = self.data, self.prepared, self.hardware
        return RunInfo(
            started=self.started,
            run_dir=self.folder.path,
            layout=data.image_set.description,
            classes=data.image_set.output_names,
            counts={split: int((prepared.splits == split).sum()) for split in ("train", "val", "test")},
            validation_split=self.validation_split,
            problems=prepared.image_set.problems,
            spec=data.spec,
            device=str(hardware.device),
            cache=prepared.cache_mode,
            summary=self.network.summary,
            recipe=self.cfg.train.recipe,
        )

    def build_callbacks(self) -> list[Callback]:
        """In order: the recipe's stages, the best model kept, the recipe's rules for when to stop,
        the time limit; on rank 0 the run's loggers, the checkpoint and the caller's callbacks."""
        is_main = self.hardware.dist.is_main
        save_best = SaveBest(self.folder.model, self.network.model, self.info, is_main)
        chosen = [*self.strategy.stage_callbacks(self), KeepBest(save_best), *self.strategy.stop_rules()]
        if self.cfg.train.time_limit:
            chosen.append(TimeLimit(self.cfg.train.time_limit * 60, self.started))
        if is_main:
            self.loggers = create_loggers(self.cfg, self.folder)
            chosen += [*self.loggers, SaveCheckpoint(self.folder.checkpoint), *self.callbacks]
        return chosen

    def resume_state(self) -> None:
        """Continue from the run folder's last checkpoint: weights, optimizer, schedule, history."""
        state, folder = self.state, self.folder
        if state.schedule is None:  # the epochs were never planned
            raise UsageError(
                f"{folder.path} stopped before its first epoch; start it again instead of resuming"
            )
        payload = load_checkpoint(folder.checkpoint)
        self.strategy.resume(state, payload["epoch"])
        restore_checkpoint(state, payload)
        if state.epoch < state.epochs and state.stop_reason.startswith("early stop"):
            state.stop = False  # more epochs were asked for explicitly
        state.info.resumed_from = state.epoch

    def finish_run(self) -> Run:
        """Restore the best weights, evaluate them on validation and test through the same `Predictor`
        that `predict` uses (float32, whole images, every sample), and write the run's summaries."""
        folder, info = self.folder, self.info
        best_model, _ = load_artifact(folder.model, device=self.hardware.device)
        predictor = Predictor(best_model, info, self.hardware.device)
        final = evaluate_run(self, predictor)  # times its calibration and evaluation itself
        with self.phases.time("writing (dataset, samples, model info, summary)"):
            return self._write_results(final)

    def _write_results(self, final: dict[str, float]) -> Run:
        folder, prepared, state, info = self.folder, self.prepared, self.state, self.info
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
        problems = self.problems
        folder.write_summary(state.epoch, state.best_epoch, state.monitor, state.stop_reason, final, problems)
        return Run(folder.path, folder.model, state.best_epoch, final, problems, state.stop_reason)


def set_up_hardware(cfg: Config) -> Hardware:
    """The device (and, under torchrun, this rank's), with its backend switches set."""
    device = resolve_device(cfg.train.device)
    dist = init_distributed(device)
    device = rank_device(device, dist)
    configure_backends(device)
    return Hardware(device, dist)


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
