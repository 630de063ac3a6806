"""Data ready to train on or evaluate: a source scanned, split and decoded once for one preprocessing.

`load_data` reads any source into an `ImageSet`; `prepare_data` decodes every image once (into RAM,
a memory map, or not at all when streaming) and leaves out the ones that fail; `PreparedData` hands
out each split's loader.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from imgclf.config import AugmentConfig, DataConfig
from imgclf.data.augment import crops
from imgclf.data.cache import allocate, check_ram_budget, load_cached, memory_budget, plan_cache, store
from imgclf.data.decode import ImageDecodeError
from imgclf.data.imageset import ImageSet, Problem, from_arrays
from imgclf.data.loader import Shard, create_loader, decode_all
from imgclf.data.preprocess import PreprocessSpec, prepare_image
from imgclf.data.sources import scan_source, sources_phrase
from imgclf.data.split import apply_manifest
from imgclf.data.tables import refuse_multi_label, scan_dataframe
from imgclf.errors import DataError, UsageError

logger = logging.getLogger(__name__)


class ProgressListener(Protocol):
    """Anything told how far long work before training has come (a training `Callback` is one)."""

    def on_progress(self, stage: str, done: int, total: int) -> None: ...


def report_progress(listeners: Sequence[ProgressListener], stage: str, done: int, total: int) -> None:
    """`done` of `total` items of `stage` (decode, features) are finished."""
    for listener in listeners:
        listener.on_progress(stage, done, total)


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


def load_data(
    data: Any,
    cfg: DataConfig,
    *,
    labels: Any = None,
    class_names: Sequence[str] | None = None,
    multi_label_ok: bool = False,
) -> ImageSet:
    """Any supported source (path, DataFrame, or arrays with `labels`) → ImageSet; a multi-label
    table stops here with its summary (`refuse_multi_label`) unless the caller reads such sets
    (`multi_label_ok`: training and evaluation)."""
    image_set = _load_data(data, cfg, labels=labels, class_names=class_names)
    if not multi_label_ok:
        refuse_multi_label(image_set)
    if cfg.review is not None:  # a review's decisions, read over the data
        from imgclf.data.decisions import read_overlay

        image_set = read_overlay(image_set, cfg.review)
    return image_set


def _load_data(
    data: Any, cfg: DataConfig, *, labels: Any = None, class_names: Sequence[str] | None = None
) -> ImageSet:
    if labels is not None:
        return from_arrays(np.asarray(data), labels, class_names=class_names, classes=cfg.classes)
    columns = {"path_col": cfg.path_col, "label_col": cfg.label_col, "classes": cfg.classes}
    found = {"images": cfg.images, "multi_label": cfg.multi_label}
    if hasattr(data, "columns"):  # a pandas DataFrame
        return scan_dataframe(data, root=cfg.source, **columns, **found)
    if data is None:
        raise UsageError(f"no data given: pass {sources_phrase()}")
    return scan_source(data, splits=cfg.splits, **columns, **found)


def check_classes(image_set: ImageSet, splits: np.ndarray, what: str = "training") -> None:
    if len(image_set) == 0:
        raise DataError("no usable image found in the data")
    if image_set.multi_label:
        check_labels(image_set, splits, what)
        return
    train_labels = image_set.labels[splits == "train"] if what == "training" else image_set.labels
    counts = np.bincount(train_labels, minlength=len(image_set.classes))
    empty = [name for name, count in zip(image_set.classes, counts) if count == 0]
    if empty:
        raise DataError(
            f"class {empty[0]!r} has no usable image for {what}; add images or leave it out with --classes"
        )
    if len(image_set.classes) < 2 and what == "training":
        raise DataError(f"only one class found ({image_set.classes[0]!r}); a classifier needs at least two")


def check_labels(image_set: ImageSet, splits: np.ndarray, what: str = "training") -> None:
    """A multi-label set trains when every label has an image for training (its label sets need
    not: an image may hold any combination), and there are at least two labels."""
    names = image_set.label_names or []
    targets = image_set.targets if what != "training" else image_set.targets[splits == "train"]
    counts = targets.sum(axis=0)
    empty = [name for name, count in zip(names, counts) if count == 0]
    if empty and what == "training":
        raise DataError(f"label {empty[0]!r} has no usable image for {what}; add images that carry it")
    if len(names) < 2 and what == "training":
        raise DataError(f"only one label found ({names[0]!r}); a multi-label classifier needs at least two")


def prepare_data(
    image_set: ImageSet,
    splits: np.ndarray,
    spec: PreprocessSpec,
    cache: str,
    workers: int | None,
    callbacks: Sequence[ProgressListener] = (),
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
        report_progress(callbacks, "decode", done_before + done, total)

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


def header_workers(count: int, workers: int | None) -> int:
    """Threads that read image headers: none for small sets, where starting them costs more."""
    if workers is not None:
        return workers
    return min(os.cpu_count() or 1, 8) if count > 4000 else 0


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


def image_loader(prepared: PreparedData, indices: np.ndarray):
    """index within `indices` → uint8 image prepared at `prepared.spec`, as prediction prepares it:
    from the decoded rows, or decoded now (streaming, or a training sample decoded at `train_spec`
    into rows of its own); None if unreadable."""

    def load(position: int) -> np.ndarray | None:
        index = int(indices[position])
        if prepared.images is not None and prepared.rows[index] >= 0:
            return prepared.images[prepared.rows[index]]
        try:
            image = prepared.image_set.reader.open(prepared.image_set.keys[index])
        except (ImageDecodeError, OSError):
            return None
        return prepare_image(image, prepared.spec)

    return load


def select_data(
    data: Any,
    cfg: DataConfig,
    split: str,
    manifest: str | Path | None,
    labels: Any = None,
    classes: Sequence[str] | None = None,
    multi_label: bool = False,
) -> tuple[Any, np.ndarray]:
    """The samples of one split of any source, with their headers read; says the layout it found.
    `classes`: the model's, in its order; with `multi_label`, the labels of a multi-label model
    (single-label data then gives each image its class as its one label)."""
    from imgclf.data.headers import read_headers
    from imgclf.data.label_sets import relabel_for_model

    image_set = load_data(data, cfg, labels=labels, multi_label_ok=multi_label)
    if image_set.description:
        logger.info("layout: %s", image_set.description)
    if multi_label and classes is not None:
        image_set = relabel_for_model(image_set, classes)
    elif classes is not None:  # the model's classes, in its order
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
