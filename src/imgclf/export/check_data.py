"""The images an export is calibrated and checked on: a split of the data the model was trained on,
read through the run's manifest and prepared exactly as prediction prepares them."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from imgclf.artifact import ModelInfo
from imgclf.data.decode import ImageDecodeError
from imgclf.data.preprocess import load_prepared, prepare_image
from imgclf.data.sources import scan_source
from imgclf.data.split import apply_manifest
from imgclf.errors import DataError, UsageError
from imgclf.inference.inputs import iter_inputs
from imgclf.runs import MANIFEST_FILE

logger = logging.getLogger(__name__)


@dataclass
class CheckImages:
    """Prepared float images (N×C×H×W, 0–1), their class indices when known, and where they came from."""

    images: np.ndarray
    labels: np.ndarray | None
    source: str

    def __len__(self) -> int:
        return len(self.images)


def _to_batch(arrays: list[np.ndarray]) -> np.ndarray:
    batch = np.stack(arrays).transpose(0, 3, 1, 2).astype(np.float32) / 255.0
    return np.ascontiguousarray(batch)


def given_images(info: ModelInfo, paths: Any, count: int, option: str) -> CheckImages:
    """Up to `count` of the images the user named with `option` (files, folders, globs); unreadable
    ones are skipped, like everywhere else, and named in a warning."""
    items = [paths] if isinstance(paths, (str, Path)) else list(paths)
    arrays = []
    for path in iter_inputs(items):
        try:
            arrays.append(load_prepared(path, info.preprocessing))
        except Exception as error:  # Pillow plug-ins raise assorted errors on odd files
            logger.warning("export %s: skipping %s (%s)", option, path, error)
        if len(arrays) >= count:
            break
    if not arrays:
        raise UsageError(f"none of the {option} could be read")
    return CheckImages(_to_batch(arrays), None, f"{len(arrays)} given images")


def training_split(info: ModelInfo, artifact_dir: Path, split: str, count: int, seed: int = 0) -> CheckImages:
    """Up to `count` images (a seeded sample) of one split of the training data, with their labels.

    The split comes from the run folder's manifest.csv; without one, "train" means every image of
    the data source. A DataError says what is missing when the data is not there any more.
    """
    source = (info.dataset or {}).get("source")
    if not source or not Path(source).exists():
        raise DataError(
            f"the training data ({source or 'unknown'}) is not there any more: give the images to use "
            "(--calibration-images, --check-images)"
        )
    image_set = scan_source(source)
    manifest = artifact_dir.parent / MANIFEST_FILE
    if manifest.is_file():
        image_set, splits = apply_manifest(image_set, manifest)
        chosen = np.flatnonzero(splits == split)
    elif split == "train":
        chosen = np.arange(len(image_set))
    else:
        raise DataError(
            f"no {MANIFEST_FILE} beside {artifact_dir} to find the {split} split: give --check-images"
        )
    if not len(chosen):
        raise DataError(f"the training data has no {split} split: give --check-images")
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.permutation(chosen)[:count])
    spec = info.preprocessing

    def read(index: int) -> np.ndarray | None:
        try:
            return prepare_image(image_set.reader.open(image_set.keys[index]), spec)
        except (ImageDecodeError, OSError):
            return None

    with ThreadPoolExecutor(max_workers=4) as pool:  # Pillow decodes without holding the GIL
        arrays = list(pool.map(read, chosen.tolist()))
    kept = [i for i, array in enumerate(arrays) if array is not None]
    if not kept:
        raise DataError(f"no image of the {split} split could be read")
    what = f"{len(kept)} {split} images of {source}"
    if info.multi_label:  # label sets: the int8 check compares the answered labels, not a top class
        return CheckImages(_to_batch([arrays[i] for i in kept]), None, what)
    model_index = {name: i for i, name in enumerate(info.classes)}
    labels = np.asarray(
        [model_index.get(image_set.classes[image_set.labels[chosen[i]]], -1) for i in kept], dtype=np.int64
    )
    return CheckImages(_to_batch([arrays[i] for i in kept]), labels, what)
