"""Bottleneck features: the backbone's penultimate-layer output for every image, computed once and
kept in the cache folder. The transfer recipe's head, `check --labels` and `imgclf features` read
them; nothing here loads the training loop."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL
import torch

from imgclf.config import Config, DataConfig, ModelConfig
from imgclf.data.imageset import ImageSet
from imgclf.data.loader import MemoryLoader
from imgclf.data.prepared import PreparedData, ProgressListener, report_progress
from imgclf.data.preprocess import PreprocessSpec, normalize_batch
from imgclf.features.store import remember_features, store_path
from imgclf.inference.predictor import Predictor
from imgclf.io import save_arrays, write_atomic, write_text_atomic
from imgclf.models.anatomy import penultimate_features
from imgclf.models.factory import create_model, model_args
from imgclf.models.pretrained import load_pretrained
from imgclf.models.spec import resolve_spec
from imgclf.paths import cache_dir


@dataclass
class FeatureContext:
    """Where and how features are computed: the device, the preprocessing, the autocast dtype (bf16
    where the hardware has it: twice the images/s on such a CPU) and the memory format. The training
    loop's StepContext has the same fields and serves as one."""

    device: torch.device
    spec: PreprocessSpec
    autocast_dtype: torch.dtype | None = None
    channels_last: bool = False


def _inputs(images: torch.Tensor, ctx: FeatureContext) -> torch.Tensor:
    inputs = normalize_batch(images.to(ctx.device).float(), ctx.spec)
    if ctx.channels_last:
        inputs = inputs.contiguous(memory_format=torch.channels_last)
    return inputs


def _autocast(ctx: FeatureContext):
    if ctx.autocast_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=ctx.device.type, dtype=ctx.autocast_dtype)


def compute_features(
    model: torch.nn.Module,
    prepared: PreparedData,
    split: str,
    ctx: FeatureContext,
    batch_size: int = 64,
    callbacks: Sequence[ProgressListener] = (),
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
            inputs, targets = _inputs(batch.images, ctx), batch.labels
            if tuple(inputs.shape[-2:]) != size:
                inputs = torch.nn.functional.interpolate(inputs, size=size, mode="bilinear", antialias=True)
            with _autocast(ctx):
                features.append(penultimate_features(model, inputs).float().cpu().numpy())
            labels.append(targets.cpu().numpy())
            done += len(targets)
            report_progress(callbacks, "features", done, loader.num_samples)
    if not features:
        return np.zeros((0, 0), np.float32), np.zeros(0, np.int64)
    return np.concatenate(features), np.concatenate(labels)


def feature_loader(
    model: torch.nn.Module,
    backbone: str,
    prepared: PreparedData,
    split: str,
    ctx: FeatureContext,
    cfg: Config,
    callbacks: Sequence[ProgressListener],
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
    ctx: FeatureContext,
    cfg: Config,
    callbacks: Sequence[ProgressListener],
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
    computed = not path.is_file()
    if not computed:
        stored = np.load(path)
        features, labels, speed = stored["features"], stored["labels"], None
    else:
        started = time.perf_counter()
        features, labels = compute_features(model, prepared, split, ctx, cfg.train.batch_size, callbacks)
        speed = len(labels) / max(time.perf_counter() - started, 1e-9)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, lambda tmp: save_arrays(tmp, features=features, labels=labels))
    # the run's backbone on each image at the model's size: what `update` refits on, kept when
    # computed now (or when the per-image store is gone), not on every run that reads them. Features
    # a bf16 run computed are kept too: a float32 head answers 3 of 1,000 flowers5 training images
    # differently on them, and a head fitted on half bf16, half float32 features as well as on
    # float32 alone (0.744 and 0.740 on validation); float32 features already stored stay.
    model_size = prepared.view(split)[0] == prepared.spec
    if model_size and (computed or not store_path(backbone, prepared.spec).is_file()):
        locations = [prepared.image_set.location(int(i)) for i in prepared.indices(split)]
        remember_features(backbone, prepared.spec, locations, features)
    return features, labels, speed


def feature_network(
    model_or_backbone: str | Path,
    weights: str | Path | None,
    cfg: DataConfig,
    image_set: ImageSet,
    device: torch.device,
) -> tuple[torch.nn.Module, PreprocessSpec]:
    """The network whose penultimate layer gives the features, and its preprocessing: a saved model
    (a path), else a pretrained backbone by name (its own weights, or `weights`)."""
    path = Path(model_or_backbone).expanduser()
    if path.exists():
        predictor = Predictor.from_path(path, device=str(device), backend="torch")
        return predictor.model, predictor.spec
    name = str(model_or_backbone)
    spec = resolve_spec(cfg, name, image_set, pretrained=True)
    model = create_model(
        model_args(ModelConfig(name=name, pretrained=True), 2, spec.channels, [spec.height, spec.width])
    )
    load_pretrained(model, name, weights)
    return model.to(device), spec


def write_features(
    model: torch.nn.Module,
    prepared: PreparedData,
    out: Path,
    device: torch.device,
    batch_size: int = 64,
    callbacks: Sequence[ProgressListener] = (),
) -> Path:
    """features.npy (N×D float32), labels.npy, samples.csv (path, label, split) and classes.json."""
    ctx = FeatureContext(device=device, spec=prepared.spec)
    values, labels = compute_features(model, prepared, "all", ctx, batch_size, callbacks)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "features.npy", lambda tmp: save_arrays(tmp, features=values))
    write_atomic(out / "labels.npy", lambda tmp: save_arrays(tmp, labels=labels))
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["path", "label", "split"])
    for key, label, split_name in zip(prepared.image_set.keys, prepared.image_set.labels, prepared.splits):
        writer.writerow([key, prepared.image_set.classes[label], split_name])
    write_text_atomic(out / "samples.csv", buffer.getvalue())
    write_text_atomic(out / "classes.json", json.dumps(prepared.image_set.classes, indent=2))
    return out
