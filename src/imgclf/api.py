"""What the CLI and notebooks call: `train`, `evaluate`, `predict`, `load_model`.

`train` reads top to bottom as the experiment it runs: resolve the config, find and split the data,
fix the preprocessing, decode once, build the model, fit, keep the best, evaluate it.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import PIL
import torch

from imgclf import runs
from imgclf.artifact import ModelInfo, load_artifact, save_artifact, update_artifact_info
from imgclf.config import (
    AugmentConfig,
    Config,
    DataConfig,
    config_to_dict,
    load_config,
    resolve_config,
    save_config,
    setting_section,
)
from imgclf.data.augment import BatchAugment, BatchMix, crops, is_identity
from imgclf.data.cache import allocate, check_ram_budget, load_cached, memory_budget, plan_cache, store
from imgclf.data.decode import ImageDecodeError
from imgclf.data.loader import (
    MemoryLoader,
    Shard,
    StreamLoader,
    create_loader,
    decode_all,
)
from imgclf.data.preprocess import PreprocessSpec, prepare_image, resolve_normalization
from imgclf.data.sources import (
    ImageSet,
    Problem,
    from_arrays,
    load_label_map,
    read_headers,
    scan_dataframe,
    scan_source,
)
from imgclf.data.split import apply_manifest, assign_splits, write_manifest
from imgclf.errors import ConfigError, DataError, UsageError
from imgclf.evaluation.outputs import Evaluation, write_evaluation
from imgclf.evaluation.plots import class_grid_figure, save_figure
from imgclf.io import write_atomic, write_text_atomic
from imgclf.models.factory import create_model, model_args, model_interpolation, model_mean_std
from imgclf.models.pretrained import load_pretrained, pretrained_resolution
from imgclf.models.summary import summarize_model
from imgclf.paths import cache_dir
from imgclf.predict import Predictor
from imgclf.training.checkpoint import SaveCheckpoint, load_checkpoint, restore_checkpoint
from imgclf.training.distributed import (
    DistInfo,
    barrier,
    broadcast_object,
    init_distributed,
    rank_device,
    shutdown,
)
from imgclf.training.events import Callback, EarlyStopping, KeepBest, MetricsLog, TimeLimit, TrainState, emit
from imgclf.training.finetune import (
    FineTuneStages,
    backbone_digest,
    classifier_of,
    penultimate_features,
    set_trainable,
)
from imgclf.training.loop import StepContext, autocast, fit, predict_logits, prepare_batch
from imgclf.training.loop import evaluate as evaluate_loader
from imgclf.training.optim import Schedule, class_weights, create_loss, create_optimizer, scale_lr
from imgclf.training.recipe import resolve_recipe
from imgclf.training.transfer import (
    BACKBONE_LR_SHARE,
    Replan,
    create_finetune_optimizer,
    fit_head,
    load_head,
    plan_finetune,
)

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
class PreparedData:
    """A data source scanned, split and decoded for one preprocessing spec.

    With random-resized crops the training split may be decoded larger (`train_spec`, see
    `crop_cache_spec`) into its own rows (`train_images`, `train_rows`); every other split is decoded at
    `spec`, exactly as prediction prepares an image.
    """

    image_set: ImageSet
    splits: np.ndarray
    spec: PreprocessSpec
    cache_mode: str
    images: np.ndarray | None = None  # decoded N×H×W×C uint8 (RAM or memory map) unless streaming
    problems: list[Problem] = field(default_factory=list)
    rows: np.ndarray | None = None  # sample i of image_set is row rows[i] of images (-1: in train_images)
    train_spec: PreprocessSpec | None = None
    train_images: np.ndarray | None = None
    train_rows: np.ndarray | None = None  # training sample i is row train_rows[i] of train_images

    def indices(self, split: str) -> np.ndarray:
        if split == "all":
            return np.arange(len(self.image_set))
        return np.flatnonzero(self.splits == split)

    def view(self, split: str) -> tuple[PreprocessSpec, np.ndarray | None, np.ndarray | None]:
        """(spec, decoded rows, row of each sample) that `split` is read from."""
        if self.train_spec is None:
            return self.spec, self.images, self.rows
        if split == "all":
            raise ValueError("the training split is decoded at another size: ask for one split")
        if split == "train":
            return self.train_spec, self.train_images, self.train_rows
        return self.spec, self.images, self.rows

    def loader(
        self,
        split: str,
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        workers: int | None = None,
        drop_last: bool = False,
        shard: Shard = Shard(),
        device: torch.device | None = None,
    ):
        """Batches of one split; with a CUDA `device`, small cached data moves to the GPU once."""
        index = self.indices(split)
        subset = self.image_set.subset(index)
        spec, images, rows = self.view(split)
        cached = (images, subset.labels, rows[index]) if images is not None and rows is not None else None
        return create_loader(
            subset,
            spec,
            batch_size=batch_size,
            shuffle=shuffle,
            seed=seed,
            cached=cached,
            workers=workers,
            drop_last=drop_last,
            shard=shard,
            device=device,
        )


CROP_CACHE_SCALE = 1.15
# --head-only without --dropout: half the cached features are dropped in each training step, as in
# the Keras tutorial's bottleneck head and fastai's default head. A linear head on fixed features
# overfits in 2–3 epochs otherwise (flowers5: 0.699 kept by validation loss, 0.736 with it).
HEAD_ONLY_DROPOUT = 0.5


def crop_cache_spec(
    spec: PreprocessSpec, augment: AugmentConfig, image_set: ImageSet
) -> PreprocessSpec | None:
    """The larger spec the training split is decoded at for random-resized crops, or None.

    A crop keeps an area share s of the image and is stretched to the model's size; taken from rows
    cached at the model's size, it is magnified by up to 1/sqrt(s) and blurs. Cached CROP_CACHE_SCALE
    times larger, a crop keeps that much more of the photo's detail, as torchvision's
    RandomResizedCrop on the full-size photo does, for 1.15² ≈ 1.3× the memory. Only when the photos
    have the detail: at least half of them must be that large on both sides (upscaling adds none).
    """
    if not crops(augment) or not image_set.headers:
        return None
    height = round(spec.height * CROP_CACHE_SCALE)
    width = round(spec.width * CROP_CACHE_SCALE)
    large = sum(1 for h in image_set.headers if h.height >= height and h.width >= width)
    if large * 2 < len(image_set.headers):
        return None
    return dataclasses.replace(spec, height=height, width=width)


def resolve_device(name: str = "auto") -> torch.device:
    """ "auto" → CUDA if present, else Apple MPS, else CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ConfigError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for, but no CUDA GPU is available")
    return device


def configure_backends(device: torch.device) -> None:
    """cuDNN picks the fastest kernels for the (fixed) input size; fp32 matmuls may use TF32."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def cpu_has_bf16() -> bool:
    """True when the processor computes bfloat16 natively (AVX-512 BF16 or AMX); elsewhere bf16 on the
    CPU is emulated and slower than fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="ascii", errors="replace")
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def resolve_precision(name: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype. "auto": bf16 on CUDA GPUs that support it and on processors with native bf16
    (AVX-512 BF16, AMX), else fp32; "bf16" wherever asked for; "fp32" never."""
    if name == "fp32":
        return None
    if name == "bf16":
        return torch.bfloat16
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    if device.type == "cpu" and cpu_has_bf16():
        return torch.bfloat16
    return None


def load_data(
    data: Any, cfg: DataConfig, *, labels: Any = None, class_names: Sequence[str] | None = None
) -> ImageSet:
    """Any supported source (path, DataFrame, or arrays with `labels`) → ImageSet."""
    if labels is not None:
        return from_arrays(np.asarray(data), labels, class_names=class_names, classes=cfg.classes)
    if hasattr(data, "columns"):  # a pandas DataFrame
        return scan_dataframe(
            data, root=cfg.source, path_col=cfg.path_col, label_col=cfg.label_col, classes=cfg.classes
        )
    if data is None:
        raise UsageError("no data given: pass a folder, CSV, archive or IDX file")
    return scan_source(
        data, path_col=cfg.path_col, label_col=cfg.label_col, classes=cfg.classes, splits=cfg.splits
    )


def _check_classes(image_set: ImageSet, splits: np.ndarray, what: str = "training") -> None:
    if len(image_set) == 0:
        raise DataError("no usable image found in the data")
    train_labels = image_set.labels[splits == "train"] if what == "training" else image_set.labels
    counts = np.bincount(train_labels, minlength=len(image_set.classes))
    empty = [name for name, count in zip(image_set.classes, counts) if count == 0]
    if empty:
        raise DataError(
            f"class {empty[0]!r} has no usable image for {what}; add images or leave it out with --classes"
        )
    if len(image_set.classes) < 2 and what == "training":
        raise DataError(f"only one class found ({image_set.classes[0]!r}); a classifier needs at least two")


def resolve_spec(
    cfg: DataConfig, model_name: str, image_set: ImageSet, pretrained: bool = False
) -> PreprocessSpec:
    """Size, channels and normalization from the flags, else from the data and the model.

    A pretrained backbone takes RGB (grayscale images are replicated to 3 channels) at its own
    resolution, normalized as it was trained.
    """
    headers = image_set.headers or []
    channels = cfg.channels
    if channels is None:
        channels = 3 if pretrained or not (headers and all(h.grayscale for h in headers)) else 1
    resolution = pretrained_resolution(model_name) if pretrained else None
    if cfg.image_size is not None:
        height, width = cfg.image_size
    elif resolution is not None:
        height = width = resolution
    else:
        sizes = {(h.height, h.width) for h in headers}
        if len(sizes) == 1 and max(next(iter(sizes))) <= 256:
            height, width = next(iter(sizes))
        else:
            short_sides = [min(h.height, h.width) for h in headers] or [224]
            side = int(np.clip(np.median(short_sides), 32, 224))
            height = width = side
    mean, std = resolve_normalization(cfg.normalize, channels, model_mean_std(model_name))
    interpolation = cfg.interpolation
    if interpolation == "auto":  # a pretrained backbone's own filter (as timm resolves it), else bilinear
        interpolation = (model_interpolation(model_name) if pretrained else None) or "bilinear"
    return PreprocessSpec(int(height), int(width), int(channels), cfg.resize, interpolation, mean, std)


def prepare_data(
    image_set: ImageSet,
    splits: np.ndarray,
    spec: PreprocessSpec,
    cache: str,
    workers: int | None,
    callbacks: Sequence[Callback] = (),
    cache_budget_gb: float | None = None,
    train_spec: PreprocessSpec | None = None,
) -> PreparedData:
    """Decode every image once (or read the rows an earlier run decoded); drop the ones that fail.

    See `imgclf.data.cache` for where the rows live (`cache`: auto, ram, disk or none). With
    `train_spec` the training split is decoded at that spec into rows of its own and the other splits
    at `spec`; the two share one memory budget in proportion to their size.
    """
    is_train = splits == "train"
    if train_spec is None or train_spec == spec or not is_train.any():
        train_spec = None
        parts = [(np.arange(len(image_set)), spec)]
    else:
        parts = [(np.flatnonzero(is_train), train_spec), (np.flatnonzero(~is_train), spec)]
        parts = [(rows, part_spec) for rows, part_spec in parts if len(rows)]
    needed = [len(rows) * s.height * s.width * s.channels for rows, s in parts]
    budget = memory_budget(cache_budget_gb)
    if cache == "ram":
        check_ram_budget(sum(needed), budget)
    total, done_before = len(image_set), 0

    def progress(done: int, _: int) -> None:
        for callback in callbacks:
            callback.on_progress("decode", done_before + done, total)

    ok = np.ones(len(image_set), dtype=bool)
    problems: list[Problem] = []
    decoded: list[tuple[str, np.ndarray | None, np.ndarray]] = []
    for (rows, part_spec), part_needed in zip(parts, needed):
        share_gb = budget * part_needed / max(1, sum(needed)) / 2**30
        mode, images, part_ok, part_problems = _decode_rows(
            image_set.subset(rows), part_spec, cache, workers, progress, share_gb
        )
        ok[rows] = part_ok
        problems += part_problems
        position = np.full(len(image_set), -1, dtype=np.int64)
        position[rows] = np.arange(len(rows))
        decoded.append((mode, images, position))
        done_before += len(rows)
    if problems:
        named = ", ".join(f"{p.path} ({p.reason})" for p in problems[:5])
        more = f" and {len(problems) - 5} more" if len(problems) > 5 else ""
        logger.warning("skipped %d unreadable images: %s%s", len(problems), named, more)
    keep = np.flatnonzero(ok)
    kept = image_set.subset(keep)
    kept.problems = image_set.problems + problems
    mode, images, position = decoded[-1]
    prepared = PreparedData(
        kept, splits[keep], spec, mode, images, problems, rows=position[keep] if mode != "none" else None
    )
    if train_spec is not None:
        train_mode, train_images, train_position = decoded[0]
        prepared.train_spec = train_spec
        prepared.train_images = train_images
        prepared.train_rows = train_position[keep] if train_mode != "none" else None
        if len(decoded) == 1:  # every sample is a training sample
            prepared.images, prepared.rows = None, None
        logger.info(
            "random-resized crops: training images cached at %d×%d (model input %d×%d)",
            train_spec.width, train_spec.height, spec.width, spec.height,
        )  # fmt: skip
    return prepared


def _decode_rows(
    image_set: ImageSet,
    spec: PreprocessSpec,
    cache: str,
    workers: int | None,
    progress: Callable[[int, int], None],
    budget_gb: float | None,
) -> tuple[str, np.ndarray | None, np.ndarray, list[Problem]]:
    """(cache mode, decoded rows or None when streaming, ok mask, problems) of one spec."""
    plan = plan_cache(cache, image_set, spec, budget_gb)
    if plan.mode == "none":
        return "none", None, np.ones(len(image_set), dtype=bool), []
    found = load_cached(plan, len(image_set), spec)
    if found is not None:
        images, ok, problems = found
        logger.info("read %d decoded images from the cache (no decoding)", len(images))
    else:
        shape = (len(image_set), spec.height, spec.width, spec.channels)
        out, staging = allocate(plan, shape)
        images, ok, problems = decode_all(image_set, spec, workers=workers, progress=progress, out=out)
        images = store(plan, images, ok, problems, staging)
    return plan.mode, images, ok, problems


def _write_problems(path: Path, problems: Sequence[Problem]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["path", "kind", "reason"])
    for problem in problems:
        writer.writerow([problem.path, problem.kind, problem.reason])
    write_text_atomic(path, buffer.getvalue())


def _display_names(cfg: DataConfig, classes: list[str]) -> list[str]:
    if cfg.label_map is None:
        return list(classes)
    mapping = load_label_map(cfg.label_map, classes)
    return [mapping[name] for name in classes]


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
    if resume is not None:
        run_dir = Path(resume)
        if not (run_dir / runs.CONFIG_FILE).is_file():
            raise UsageError(f"{run_dir} is not a run folder to resume (no {runs.CONFIG_FILE})")
        cfg = load_config(run_dir / runs.CONFIG_FILE)
        if cfg.train.recipe == "auto":  # a run folder from before recipes trained as configured
            cfg.train.recipe = "plain"
        if "epochs" in overrides or "train.epochs" in overrides:
            cfg.train.epochs = int(overrides.get("epochs", overrides.get("train.epochs")))
    else:
        cfg = _config_from(config, data, overrides)
        run_dir = None
    if verbose:
        from imgclf.console import ConsoleReporter

        callbacks = [*callbacks, ConsoleReporter()]
    started = time.perf_counter()
    seed = cfg.seed
    torch.manual_seed(seed)
    # Under torchrun every rank runs this function; rank 0 alone writes and reports.
    device = resolve_device(cfg.train.device)
    dist_info = init_distributed(device)
    device = rank_device(device, dist_info)
    configure_backends(device)
    if dist_info.enabled and cfg.train.head_only:
        raise ConfigError("--head-only runs in one process; start it without torchrun or --devices")
    if not dist_info.is_main:
        callbacks = []

    # 1. Data: find every sample, read headers, split (or reuse the split), check the classes.
    source = data if data is not None and not isinstance(data, (str, Path)) else cfg.data.source
    image_set = load_data(source, cfg.data, labels=labels, class_names=class_names)
    image_set = read_headers(image_set, workers=_header_workers(len(image_set), cfg.data.workers))
    manifest = (run_dir / runs.MANIFEST_FILE) if resume is not None else cfg.data.manifest
    if manifest is not None:
        image_set, splits = apply_manifest(image_set, manifest)
    else:
        splits = assign_splits(image_set, cfg.data.val_split, cfg.data.test_split, seed)
    _check_classes(image_set, splits)
    # What imgclf chooses where the user did not: the model, the recipe and its settings (one line each).
    for line in resolve_recipe(cfg, image_set, device.type, distributed=dist_info.enabled):
        if dist_info.is_main:
            logger.info("%s", line)
    transfer = cfg.train.recipe == "transfer"
    val_split_name = "val"
    if not (splits == "val").any() and (splits == "test").any():
        val_split_name = "test"
        logger.warning(
            "no validation split: validating on the test split, as the tutorials do; "
            "its accuracy is then no unbiased estimate"
        )

    # 2. Preprocessing, fixed once for training, evaluation and prediction.
    spec = resolve_spec(
        cfg.data, cfg.model.name, image_set, pretrained=cfg.model.pretrained or bool(cfg.model.weights)
    )
    display_names = _display_names(cfg.data, image_set.classes)
    args = model_args(
        cfg.model, len(image_set.classes), spec.channels, [spec.height, spec.width]
    )  # checks the name

    # 3. Run folder: config, split and skipped files are written before any training.
    if run_dir is None:
        if dist_info.is_main:
            run_dir = runs.create_run_dir(cfg.output.project, cfg.output.name)
            save_config(cfg, run_dir / runs.CONFIG_FILE)
            write_manifest(run_dir / runs.MANIFEST_FILE, image_set, splits)
        run_dir = Path(broadcast_object(str(run_dir) if run_dir else None, dist_info))

    # 4. Decode once (into RAM when it fits) and build the loaders.
    train_spec = (
        None
        if cfg.train.head_only
        else crop_cache_spec(spec, cfg.augment, image_set.subset(np.flatnonzero(splits == "train")))
    )
    prepared = prepare_data(
        image_set,
        splits,
        spec,
        cfg.data.cache,
        cfg.data.workers,
        callbacks,
        cfg.data.cache_budget_gb,
        train_spec,
    )
    _check_classes(prepared.image_set, prepared.splits)
    problems = prepared.image_set.problems
    if dist_info.is_main:
        _write_problems(run_dir / runs.PROBLEMS_FILE, problems)
    train_set = prepared.image_set.subset(prepared.indices("train"))
    remainder = len(train_set) % cfg.train.batch_size
    train_loader = prepared.loader(
        "train",
        cfg.train.batch_size,
        shuffle=True,
        seed=seed,
        workers=cfg.data.workers,
        drop_last=remainder == 1,
        shard=Shard(dist_info.rank, dist_info.world_size, even=True),
        device=device,
    )
    has_val = len(prepared.indices(val_split_name)) > 0
    val_loader = (
        prepared.loader(
            val_split_name,
            cfg.train.batch_size * 2,
            shuffle=False,
            workers=cfg.data.workers,
            shard=Shard(dist_info.rank, dist_info.world_size),
            device=device,
        )
        if has_val
        else None
    )

    # 5. Model, optimizer, schedule, loss.
    model = create_model(args)
    weights_source = None
    if cfg.model.pretrained or cfg.model.weights:
        weights_source = load_pretrained(model, cfg.model.name, cfg.model.weights)
    frozen_bn = cfg.train.finetune_bn == "frozen"
    if transfer:  # after the head stage the network (or its last --unfreeze blocks) trains on; BatchNorm
        # keeps its statistics (--finetune-bn frozen)
        frozen_norm = set_trainable(model, cfg.train.unfreeze, frozen_bn)
    elif cfg.train.freeze_epochs or cfg.train.head_only:
        frozen_norm = set_trainable(model, None)
    else:  # fine-tuning from the first epoch
        frozen_norm = set_trainable(model, "all", frozen_bn) if frozen_bn else []
    summary = summarize_model(model, (spec.channels, spec.height, spec.width))
    channels_last = (
        cfg.train.channels_last if cfg.train.channels_last is not None else cfg.model.name != "mlp"
    )
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if cfg.train.head_only:  # the tutorials' bottleneck features: the backbone runs once per image
        model.eval()
        feature_ctx = StepContext(device=device, spec=spec, channels_last=channels_last)
        backbone = backbone_digest(model)  # the weights themselves, wherever they came from
        train_loader, val_loader = (
            _feature_loader(
                model, backbone, prepared, split, feature_ctx, cfg, callbacks, shuffle=split == "train"
            )
            if split == "train" or has_val
            else None
            for split in ("train", val_split_name)
        )
    trained = classifier_of(model) if cfg.train.head_only else model
    if cfg.train.head_only:  # dropout on the cached features, as the network's own would drop them
        rate = HEAD_ONLY_DROPOUT if cfg.model.dropout is None else cfg.model.dropout
        trained = torch.nn.Sequential(torch.nn.Dropout(rate), trained) if rate else trained
    steps_per_epoch = max(1, len(train_loader))
    global_batch = cfg.train.batch_size * dist_info.world_size
    lr = scale_lr(cfg.train.lr, global_batch, cfg.train.lr_scaling, cfg.train.lr_base_batch)
    if lr != cfg.train.lr:
        logger.info(
            "learning rate %.3g scaled to %.3g for batches of %d (%s scaling from %d)",
            cfg.train.lr, lr, global_batch, cfg.train.lr_scaling, cfg.train.lr_base_batch,
        )  # fmt: skip
    if transfer:  # the backbone learns more slowly than the head
        backbone_lr = scale_lr(
            cfg.train.finetune_lr or lr * BACKBONE_LR_SHARE, global_batch, "none", cfg.train.lr_base_batch
        )
        optimizer = create_finetune_optimizer(model, lr, backbone_lr, cfg.train.weight_decay)
    else:
        optimizer = create_optimizer(trained, cfg.train, lr=lr)
    schedule = (
        None  # planned after the head stage, from the measured speed and the time left
        if cfg.train.epochs is None
        else Schedule(optimizer, cfg.train, steps_per_epoch, epochs=cfg.train.freeze_epochs or None, lr=lr)
    )
    weights = (
        class_weights(train_set.labels, len(image_set.classes)) if cfg.train.class_weight == "auto" else None
    )
    loss_fn = create_loss(cfg.train, weights.to(device) if weights is not None else None)
    ctx = StepContext(
        device=device,
        spec=spec,
        augment=(
            None
            if is_identity(cfg.augment) and prepared.train_spec is None
            else BatchAugment(cfg.augment, seed, size=(spec.height, spec.width))
        ),
        mix=(
            BatchMix(cfg.augment.mixup, cfg.augment.cutmix, seed)
            if cfg.augment.mixup or cfg.augment.cutmix
            else None
        ),
        autocast_dtype=resolve_precision(cfg.train.precision, device),
        channels_last=channels_last and not cfg.train.head_only,
        seed=seed,
        normalize=not cfg.train.head_only,
        frozen_norm=frozen_norm,
        dist=dist_info,
    )
    wrap_for_ranks(model, ctx)
    compile_for_training(model, ctx, cfg.train.compile)
    monitor = cfg.train.monitor if has_val else "train_loss"
    state = TrainState(
        epochs=cfg.train.epochs or 0, model=trained, optimizer=optimizer, schedule=schedule, monitor=monitor
    )
    stages = None
    if cfg.train.freeze_epochs:
        finetune_lr = scale_lr(
            cfg.train.finetune_lr or cfg.train.lr / 10,
            global_batch,
            cfg.train.lr_scaling,
            cfg.train.lr_base_batch,
        )

        def rebuild(current: TrainState) -> None:
            wrap_for_ranks(model, ctx)  # DistributedDataParallel must see the newly trainable weights
            compile_for_training(model, ctx, cfg.train.compile)
            current.optimizer = create_optimizer(current.model, cfg.train, lr=finetune_lr)
            current.schedule = Schedule(
                current.optimizer,
                cfg.train,
                steps_per_epoch,
                epochs=max(1, cfg.train.finetune_epochs),
                lr=finetune_lr,
            )
            logger.info(
                "fine-tuning from epoch %d: unfroze %s, learning rate %.2e",
                current.epoch + 1,
                "all layers" if cfg.train.unfreeze == "all" else f"the last {cfg.train.unfreeze} blocks",
                finetune_lr,
            )

        stages = FineTuneStages(
            cfg.train.freeze_epochs,
            cfg.train.unfreeze,
            ctx.frozen_norm,
            rebuild,
            frozen_bn=frozen_bn,
        )
    if resume is not None:
        if cfg.train.epochs is None:
            raise UsageError(f"{run_dir} stopped before its first epoch; start it again instead of resuming")
        payload = load_checkpoint(run_dir / runs.CHECKPOINT_FILE)
        if stages is not None and payload["epoch"] >= cfg.train.freeze_epochs:
            stages.enter_stage_two(state)  # the optimizer state saved belongs to stage 2
        restore_checkpoint(state, payload)
        if state.epoch < state.epochs and state.stop_reason.startswith("early stop"):
            state.stop = False  # more epochs were asked for explicitly
    state.context.update(
        started=started,
        run_dir=run_dir,
        summary=summary,
        device=str(device),
        spec=spec,
        cache=prepared.cache_mode,
        counts={split: int((prepared.splits == split).sum()) for split in ("train", "val", "test")},
        classes=image_set.classes,
        problems=problems,
        resumed_from=state.epoch if resume is not None else None,
        validation_split=val_split_name if has_val else None,
        layout=image_set.description,
        recipe=cfg.train.recipe,
    )

    info = ModelInfo(
        architecture=args,
        classes=image_set.classes,
        preprocessing=spec,
        display_names=display_names,
        training={"config": config_to_dict(cfg), "monitor": monitor, "pretrained": weights_source},
        dataset={
            "source": str(image_set.source),
            "fingerprint": image_set.fingerprint(),
            "layout": image_set.layout,
            "class_counts": prepared.image_set.class_counts(),
            "split_counts": state.context["counts"],
        },
    )
    artifact_dir = run_dir / runs.MODEL_DIR

    def save_best(current: TrainState) -> None:
        if not dist_info.is_main:
            return
        info.training.update(best_epoch=current.best_epoch, epochs_completed=current.epoch)
        info.metrics = {k: v for k, v in current.last.items() if k != "epoch"}
        save_artifact(artifact_dir, model, info)  # the whole network, also when only its head trains

    # 6. Fit: best model kept, early stop, last checkpoint and logs every epoch.
    loop_callbacks: list[Callback] = [stages] if stages is not None else []
    loop_callbacks.append(KeepBest(save_best))
    if cfg.train.patience is not None:
        loop_callbacks.append(EarlyStopping(cfg.train.patience))
    if cfg.train.time_limit:
        loop_callbacks.append(TimeLimit(cfg.train.time_limit * 60, started))
    if dist_info.is_main:
        loop_callbacks += [
            MetricsLog(run_dir / runs.METRICS_FILE, run_dir / runs.CURVES_FILE),
            SaveCheckpoint(run_dir / runs.CHECKPOINT_FILE),
            *callbacks,
        ]
    head_stage = None
    if transfer and resume is None:
        head_stage = HeadStage(
            model=model,
            prepared=prepared,
            ctx=StepContext(
                device=device,
                spec=spec,
                channels_last=channels_last,
                autocast_dtype=ctx.autocast_dtype,
                frozen_norm=ctx.frozen_norm,
            ),
            cfg=cfg,
            val_split=val_split_name if has_val else None,
            callbacks=loop_callbacks,
            config_path=run_dir / runs.CONFIG_FILE if dist_info.is_main else None,
            steps_per_epoch=steps_per_epoch,
            lr=lr,
        )
    fit(state, train_loader, val_loader, ctx, loss_fn, loop_callbacks, first_stage=head_stage)
    barrier(dist_info)
    if not dist_info.is_main:  # rank 0 evaluates the best model and writes the rest
        shutdown(dist_info)
        return Run(run_dir, artifact_dir, state.best_epoch, {}, problems, state.stop_reason)

    # 7. Restore the best weights and evaluate them on validation and test.
    best_model, _ = load_artifact(artifact_dir, device=device)
    # rank 0 alone, on whole images, over every sample
    # The saved model predicts in float32 (Predictor, ONNX Runtime): the metrics the run reports
    # come from the same numerics, not from the bf16 autocast that training and its per-epoch
    # validation may use.
    image_ctx = dataclasses.replace(
        ctx, normalize=True, augment=None, frozen_norm=[], dist=DistInfo(), wrapped=None, autocast_dtype=None
    )
    if channels_last:
        best_model.to(memory_format=torch.channels_last)
    final: dict[str, float] = {}
    if has_val:  # the full evaluation of the validation split goes into the run folder
        evaluation = evaluate_split(
            best_model,
            prepared,
            val_split_name,
            image_ctx,
            run_dir / runs.EVALUATION_DIR,
            cfg.train.batch_size * 2,
        )
        final.update(
            val_loss=evaluation.metrics["loss"],
            val_acc=evaluation.metrics["accuracy"],
            val_count=float(evaluation.metrics["count"]),
        )
    if val_split_name != "test" and len(prepared.indices("test")):
        test_loader = prepared.loader(
            "test", cfg.train.batch_size * 2, shuffle=False, workers=cfg.data.workers
        )
        final.update(evaluate_loader(best_model, test_loader, image_ctx, prefix="test"))
    elif val_split_name == "test" and has_val:
        final.update({k.replace("val_", "test_"): v for k, v in final.items()})
    write_dataset_summary(run_dir, prepared)
    info.metrics = {**info.metrics, **final}
    info.training.update(
        best_epoch=state.best_epoch, epochs_completed=state.epoch, stop_reason=state.stop_reason
    )
    update_artifact_info(artifact_dir, info)
    _write_summary(run_dir, state, final, problems)
    run = Run(run_dir, artifact_dir, state.best_epoch, final, problems, state.stop_reason)
    shutdown(dist_info)
    for callback in callbacks:
        if hasattr(callback, "on_run_end"):
            callback.on_run_end(run)
    return run


@dataclass
class HeadStage:
    """The transfer recipe's first stage, recorded as epoch 0: a linear head fitted on the backbone's
    cached features; then the fine-tuning epochs are planned (unless given) from the measured speed
    and the time left, and the schedule is made for them."""

    model: torch.nn.Module
    prepared: PreparedData
    ctx: StepContext
    cfg: Config
    val_split: str | None
    callbacks: list[Callback]
    config_path: Path | None
    steps_per_epoch: int
    lr: float

    def __call__(self, state: TrainState) -> None:
        started = time.perf_counter()
        self.model.eval()
        backbone = backbone_digest(self.model)
        features = [
            cached_features(self.model, backbone, self.prepared, split, self.ctx, self.cfg, self.callbacks)
            if split is not None
            else (None, None, None)
            for split in ("train", self.val_split)
        ]
        (train_x, train_y, train_speed), (val_x, val_y, val_speed) = features
        fit = fit_head(
            train_x,
            train_y,
            val_x,
            val_y,
            len(self.prepared.image_set.classes),
            label_smoothing=self.cfg.train.label_smoothing or 0.0,
        )
        load_head(self.model, fit)
        seconds = time.perf_counter() - started
        logger.info(
            "head on cached features: L2 %.3g chosen by %s, %.1f s",
            fit.l2,
            "validation" if val_x is not None else "3-fold cross-validation",
            seconds,
        )
        if self.cfg.train.epochs is None:
            self._plan(state, len(train_y), 0 if val_y is None else len(val_y), train_speed or val_speed)
        state.epochs = self.cfg.train.epochs
        state.schedule = Schedule(
            state.optimizer, self.cfg.train, self.steps_per_epoch, epochs=max(1, state.epochs), lr=self.lr
        )
        row = {
            "epoch": 0,
            "train_loss": fit.train_loss,
            "train_acc": fit.train_acc,
            "val_loss": fit.val_loss,
            "val_acc": fit.val_acc,
            "val_count": float(0 if val_y is None else len(val_y)),
            "lr": 0.0,
            "seconds": seconds,
            "images_per_s": len(train_y) / max(seconds, 1e-9),
            "elapsed": time.perf_counter() - state.context.get("started", started),
            "stage": "head",
        }
        state.history.append(row)
        emit(self.callbacks, "on_epoch_end", state)  # kept as the best so far, logged, checkpointed
        if val_x is None:  # no validation: the fine-tuned network replaces the head, as trained last
            state.best_value = None

    def _plan(self, state: TrainState, train_count: int, val_count: int, speed: float | None) -> None:
        if speed is None:  # features read from the cache: time the backbone on one batch
            speed = _inference_speed(self.model, self.ctx, self.cfg.train.batch_size)
        train_speed = _training_speed(self.model, self.ctx, self.cfg.train.batch_size)
        limit = self.cfg.train.time_limit
        elapsed = time.perf_counter() - state.context.get("started", time.perf_counter())
        plan = plan_finetune(
            train_count,
            val_count,
            len(self.prepared.image_set.classes),
            self.cfg.train.batch_size,
            train_speed,
            speed,
            limit * 60 - elapsed if limit else None,
        )
        self.cfg.train.epochs = plan.epochs
        if plan.epochs and limit:  # the first epoch's real duration corrects the probe's estimate
            replan = Replan(
                limit * 60, state.context["started"], plan.wanted, plan.validation_seconds, self._record
            )
            self.callbacks.insert(0, replan)
        if plan.epochs:
            logger.info(
                "fine-tuning %d epochs of about %.0f s (%s; %.0f images/s training, %.0f inference)",
                plan.epochs, plan.seconds_per_epoch, plan.reason, train_speed, speed,
            )  # fmt: skip
        else:
            logger.info("no fine-tuning: %s; the head is the model", plan.reason)
        self._record(plan.epochs)

    def _record(self, epochs: int) -> None:
        """The planned epochs go into config.yaml: --resume continues with them."""
        self.cfg.train.epochs = epochs
        if self.config_path is not None:
            save_config(self.cfg, self.config_path)


def _probe_batch(ctx: StepContext, batch_size: int) -> torch.Tensor:
    size = max(2, min(batch_size, 32))
    inputs = torch.randn(size, ctx.spec.channels, ctx.spec.height, ctx.spec.width, device=ctx.device)
    return inputs.contiguous(memory_format=torch.channels_last) if ctx.channels_last else inputs


def _inference_speed(model: torch.nn.Module, ctx: StepContext, batch_size: int) -> float:
    """Images per second through the network in inference mode, timed on one random batch."""
    inputs = _probe_batch(ctx, batch_size)
    model.eval()
    with torch.no_grad(), autocast(ctx):
        model(inputs[:2])  # warm-up
        started = time.perf_counter()
        model(inputs)
    return len(inputs) / max(time.perf_counter() - started, 1e-9)


def _training_speed(model: torch.nn.Module, ctx: StepContext, batch_size: int) -> float:
    """Images per second of forward and backward passes over the trainable weights: the fastest of
    two random batches after a warm-up one (a burst of other work on a shared machine slows one step,
    not the run). Nothing is learnt (no optimizer step, gradients cleared); frozen BatchNorm layers
    stay in inference mode, so no statistic moves."""
    inputs = _probe_batch(ctx, batch_size)
    model.train()
    for module in ctx.frozen_norm:
        module.eval()
    seconds = []
    rng = torch.get_rng_state()  # dropout draws must not shift the run's random stream
    for _ in range(3):
        started = time.perf_counter()
        with autocast(ctx):
            loss = model(inputs).float().logsumexp(1).mean()
        loss.backward()
        seconds.append(time.perf_counter() - started)
    model.zero_grad(set_to_none=True)
    torch.set_rng_state(rng)
    model.eval()
    return len(inputs) / max(min(seconds[1:]), 1e-9)


def compute_features(
    model: torch.nn.Module,
    prepared: PreparedData,
    split: str,
    ctx: StepContext,
    batch_size: int = 64,
    callbacks: Sequence[Callback] = (),
) -> tuple[np.ndarray, np.ndarray]:
    """Penultimate-layer features (N×D float32) and labels of one split, in its order.

    A split cached larger than the model's input (for random-resized crops) is resized to it first.
    """
    loader = prepared.loader(split, batch_size, shuffle=False)
    features, labels = [], []
    done = 0
    model.eval()
    size = (ctx.spec.height, ctx.spec.width)
    with torch.no_grad():
        for batch in loader.epoch(0):
            inputs, targets = prepare_batch(batch, ctx, train=False)
            if tuple(inputs.shape[-2:]) != size:
                inputs = torch.nn.functional.interpolate(inputs, size=size, mode="bilinear", antialias=True)
            with autocast(ctx):  # bf16 where the hardware has it: twice the images/s on such a CPU
                features.append(penultimate_features(model, inputs).float().cpu().numpy())
            labels.append(targets.cpu().numpy())
            done += len(targets)
            for callback in callbacks:
                callback.on_progress("features", done, loader.num_samples)
    if not features:
        return np.zeros((0, 0), np.float32), np.zeros(0, np.int64)
    return np.concatenate(features), np.concatenate(labels)


def _feature_loader(
    model: torch.nn.Module,
    backbone: str,
    prepared: PreparedData,
    split: str,
    ctx: StepContext,
    cfg: Config,
    callbacks: Sequence[Callback],
    shuffle: bool,
) -> MemoryLoader:
    """Features of one split as batches (see `cached_features`)."""
    features, labels, _ = cached_features(model, backbone, prepared, split, ctx, cfg, callbacks)
    return MemoryLoader(features, labels, cfg.train.batch_size, shuffle, cfg.seed)


def cached_features(
    model: torch.nn.Module,
    backbone: str,
    prepared: PreparedData,
    split: str,
    ctx: StepContext,
    cfg: Config,
    callbacks: Sequence[Callback],
) -> tuple[np.ndarray, np.ndarray, float | None]:
    """(features, labels, images per second or None when read from the cache) of one split, computed
    once and kept in the cache folder for the next run, under a key that names the network by
    `backbone`, its `backbone_digest`."""
    key = hashlib.sha256(
        json.dumps(
            [
                prepared.image_set.fingerprint(),
                split,
                cfg.model.name,
                backbone,
                prepared.spec.to_dict(),
                prepared.splits.tolist(),
                PIL.__version__,  # the pixels the features come from
                torch.__version__,
            ]
            + ([prepared.view(split)[0].to_dict()] if prepared.view(split)[0] != prepared.spec else [])
            + ([str(ctx.autocast_dtype)] if ctx.autocast_dtype is not None else [])
        ).encode()
    ).hexdigest()[:24]
    path = cache_dir() / "features" / f"{key}.npz"
    if path.is_file():
        stored = np.load(path)
        return stored["features"], stored["labels"], None
    started = time.perf_counter()
    features, labels = compute_features(model, prepared, split, ctx, cfg.train.batch_size, callbacks)
    speed = len(labels) / max(time.perf_counter() - started, 1e-9)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda tmp: _save_arrays(tmp, features=features, labels=labels))
    return features, labels, speed


def compile_for_training(model: torch.nn.Module, ctx: StepContext, enabled: bool) -> None:
    """With --compile, training steps run through torch.compile (evaluation stays eager).

    The saved weights always come from `model` itself, so the artifact has no compiler traces.
    """
    if not enabled:
        return
    if ctx.device.type == "cpu" and not (shutil.which("cc") or shutil.which("gcc") or shutil.which("g++")):
        raise ConfigError("--compile on the CPU needs a C/C++ compiler (gcc); install it or drop --compile")
    ctx.wrapped = torch.compile(ctx.wrapped if ctx.wrapped is not None else model)


def wrap_for_ranks(model: torch.nn.Module, ctx: StepContext) -> None:
    """Under torchrun, train through a DistributedDataParallel wrapper (gradients averaged over ranks)."""
    if not ctx.dist.enabled:
        return
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    ctx.wrapped = DistributedDataParallel(model, device_ids=device_ids)


def _save_arrays(path: Path, **arrays: np.ndarray) -> None:
    """One array → .npy content, several → .npz content, at exactly `path` (numpy would add a suffix)."""
    with path.open("wb") as handle:
        if len(arrays) == 1:
            np.save(handle, next(iter(arrays.values())))
        else:
            np.savez(handle, **arrays)


def _header_workers(count: int, workers: int | None) -> int:
    if workers is not None:
        return workers
    return min(os.cpu_count() or 1, 8) if count > 4000 else 0


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


def _write_summary(
    run_dir: Path, state: TrainState, final: dict[str, float], problems: Sequence[Problem]
) -> None:
    lines = [f"epochs completed: {state.epoch}", f"best epoch: {state.best_epoch} ({state.monitor})"]
    if state.stop_reason:
        lines.append(state.stop_reason)
    lines += [f"{key}: {value:.4f}" for key, value in final.items() if not key.endswith("_count")]
    lines.append(f"skipped files: {len(problems)} (see {runs.PROBLEMS_FILE})")
    write_text_atomic(run_dir / runs.SUMMARY_FILE, "\n".join(lines) + "\n")


def _image_loader(prepared: PreparedData, indices: np.ndarray):
    """index within `indices` → prepared uint8 image (from RAM, or decoded now), None if unreadable."""

    def load(position: int) -> np.ndarray | None:
        index = int(indices[position])
        if prepared.images is not None:
            return prepared.images[prepared.rows[index]]
        try:
            image = prepared.image_set.reader.open(prepared.image_set.keys[index])
        except (ImageDecodeError, OSError):
            return None
        return prepare_image(image, prepared.spec)

    return load


def evaluate_split(
    model: torch.nn.Module,
    prepared: PreparedData,
    split: str,
    ctx: StepContext,
    out_dir: Path,
    batch_size: int = 128,
    top_k: int = 5,
    name: str | None = None,
) -> Evaluation:
    """Predict one split and write the whole evaluation (metrics.json, plots, predictions.csv).

    `name` is the split's name in the outputs when it differs from the selector (e.g. "all").
    """
    indices = prepared.indices(split)
    loader = prepared.loader(split, batch_size, shuffle=False)
    logits, labels = predict_logits(model, loader, ctx)
    if isinstance(loader, StreamLoader) and loader.bad:  # unreadable files met now are left out
        keep = np.asarray([i for i in range(len(indices)) if i not in loader.bad], dtype=np.int64)
        indices = indices[keep]
    probabilities = torch.softmax(logits, dim=1).numpy()
    sources = [prepared.image_set.keys[i] for i in indices]
    return write_evaluation(
        out_dir,
        probabilities,
        labels.numpy(),
        prepared.image_set.classes,
        sources,
        _image_loader(prepared, indices),
        split=name or split,
        top_k=top_k,
        extra={"tta": ctx.tta},
    )


def write_dataset_summary(run_dir: Path, prepared: PreparedData, per_class: int = 8) -> None:
    """dataset.json (counts per split and class, image sizes and modes) and samples.png for the report."""
    image_set = prepared.image_set
    counts = {
        split: {
            name: int(n)
            for name, n in zip(
                image_set.classes,
                np.bincount(image_set.labels[prepared.splits == split], minlength=len(image_set.classes)),
            )
        }
        for split in ("train", "val", "test")
    }
    headers = image_set.headers or []
    sizes: dict[str, int] = {}
    modes: dict[str, int] = {}
    for header in headers:
        key = f"{header.width}x{header.height}"
        sizes[key] = sizes.get(key, 0) + 1
        modes[header.mode] = modes.get(header.mode, 0) + 1
    summary = {
        "source": image_set.source,
        "layout": image_set.layout,
        "classes": image_set.classes,
        "counts": counts,
        "sizes": sizes,
        "modes": modes,
        "skipped": len(image_set.problems),
        "preprocessing": prepared.spec.to_dict(),
    }
    write_text_atomic(run_dir / runs.DATASET_FILE, json.dumps(summary, indent=2))
    load = _image_loader(prepared, np.arange(len(image_set)))
    by_class: dict[str, list[np.ndarray]] = {}
    for label, name in enumerate(image_set.classes):
        chosen = np.flatnonzero(image_set.labels == label)[:per_class]
        by_class[name] = [image for image in (load(int(i)) for i in chosen) if image is not None]
    save_figure(class_grid_figure(by_class, per_class), run_dir / runs.SAMPLES_FILE)


def select_split(image_set: ImageSet, split: str, manifest: str | Path | None) -> tuple[ImageSet, np.ndarray]:
    """The samples of one split ("all" keeps every one) and their split names, taken from the
    manifest if given, else from the data's own layout (split folders, a split column)."""
    if manifest is not None:
        image_set, splits = apply_manifest(image_set, manifest)
    elif image_set.splits is not None:
        splits = np.asarray(image_set.splits, dtype=object)
    else:
        splits = np.full(len(image_set), "all", dtype=object)
    if split == "all":
        return image_set, splits
    if split not in set(splits.tolist()):
        raise UsageError(f"the data has no {split!r} split; use --split all (or give --manifest)")
    keep = np.flatnonzero(splits == split)
    return image_set.subset(keep), splits[keep]


def load_model(path: str | Path, device: str = "cpu", backend: str = "auto", tta: bool = False) -> Predictor:
    """Load a saved model (artifact folder, run folder or exported .onnx file) ready to predict.

    `tta`: average each image's probabilities with its mirror image's (test-time augmentation).
    """
    return Predictor.from_path(path, device=device, backend=backend, tta=tta)


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

    `split` picks the layout's (or the manifest's) split: train, val, test, or all. Writes
    metrics.json, the confusion matrices, most_confused.csv, predictions.csv, misclassified.png and
    reliability.png into `out` (default: a new folder runs/evaluate[-N]). `tta` averages each image's
    probabilities with its mirror image's (test-time augmentation; also on with a Predictor's `tta`).
    `splits` says which folders are splits, as `train --splits` does.
    """
    predictor = (
        model
        if isinstance(model, Predictor)
        else Predictor.from_path(model, device=device, backend="torch", tta=tta)
    )
    tta = tta or predictor.tta
    if predictor.model is None:
        raise UsageError("evaluate runs the PyTorch model; give the model folder, not an ONNX export")
    info = predictor.info
    cfg = DataConfig(path_col=path_col, label_col=label_col, splits=splits)
    image_set = load_data(data, cfg, labels=labels)
    if image_set.description:
        logger.info("layout: %s", image_set.description)
    unknown = sorted(set(image_set.classes) - set(info.classes))
    if unknown:
        raise DataError(f"the data has class {unknown[0]!r}, which the model does not know")
    remap = np.asarray([info.classes.index(name) for name in image_set.classes], dtype=np.int64)
    image_set.labels = remap[image_set.labels]
    image_set.classes = list(info.classes)
    image_set, _ = select_split(image_set, split, manifest)
    splits = np.full(len(image_set), "all", dtype=object)  # evaluated as one set, named `split`
    image_set = read_headers(image_set, workers=_header_workers(len(image_set), None))
    if len(image_set) == 0:
        raise DataError("no usable image found in the data")
    prepared = prepare_data(image_set, splits, info.preprocessing, "auto", None)
    ctx = StepContext(device=predictor.device, spec=info.preprocessing, tta=tta)
    out_dir = Path(out) if out is not None else runs.create_run_dir("runs", "evaluate")
    evaluation = evaluate_split(predictor.model, prepared, "all", ctx, out_dir, batch_size, top_k, name=split)
    evaluation.problems = list(prepared.image_set.problems)
    evaluation.metrics["skipped"] = [p.__dict__ for p in evaluation.problems]
    _write_problems(out_dir / runs.PROBLEMS_FILE, evaluation.problems)  # every file: evaluated or listed
    return evaluation


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
    cfg = DataConfig(path_col=path_col, label_col=label_col, splits=splits)
    image_set = load_data(data, cfg)
    if image_set.description:
        logger.info("layout: %s", image_set.description)
    image_set, split_names = select_split(
        read_headers(image_set, _header_workers(len(image_set), None)), split, manifest
    )
    if len(image_set) == 0:
        raise DataError("no usable image found in the data")
    resolved = resolve_device(device)
    path = Path(model_or_backbone).expanduser()
    if path.exists():
        predictor = Predictor.from_path(path, device=str(resolved), backend="torch")
        model, spec = predictor.model, predictor.spec
    else:
        from imgclf.config import ModelConfig

        name = str(model_or_backbone)
        spec = resolve_spec(cfg, name, image_set, pretrained=True)
        model = create_model(
            model_args(ModelConfig(name=name, pretrained=True), 2, spec.channels, [spec.height, spec.width])
        )
        load_pretrained(model, name, weights)
        model.to(resolved)
    prepared = prepare_data(image_set, split_names, spec, "auto", None, callbacks)
    ctx = StepContext(device=resolved, spec=spec)
    values, labels = compute_features(model, prepared, "all", ctx, batch_size, callbacks)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "features.npy", lambda tmp: _save_arrays(tmp, features=values))
    write_atomic(out / "labels.npy", lambda tmp: _save_arrays(tmp, labels=labels))
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["path", "label", "split"])
    for key, label, split_name in zip(prepared.image_set.keys, prepared.image_set.labels, prepared.splits):
        writer.writerow([key, prepared.image_set.classes[label], split_name])
    write_text_atomic(out / "samples.csv", buffer.getvalue())
    write_text_atomic(out / "classes.json", json.dumps(prepared.image_set.classes, indent=2))
    return out
