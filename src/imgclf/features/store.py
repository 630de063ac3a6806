"""Features of a trained network per image, kept in the cache folder between calls: a review's
`update` refits the head of a run again and again on the same images, and only images it has not
seen (new ones, or files changed since) are decoded and go through the network.

One file per network and preprocessing (`features/images-<digest>.npz`), holding each image's key
(its location, size and modification time) and its feature vector.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from imgclf.data.decode import ImageDecodeError
from imgclf.data.imageset import ImageSet
from imgclf.data.preprocess import PreprocessSpec, prepare_image
from imgclf.io import save_arrays, write_atomic
from imgclf.paths import cache_dir


def image_key(location: str) -> str:
    """An image's identity in the store: where it is, its size and when it last changed."""
    try:
        stat = os.stat(location)
    except OSError:
        return location
    return f"{location}\0{stat.st_size}\0{stat.st_mtime_ns}"


def stored_features(
    network_digest: str,
    spec: PreprocessSpec,
    image_set: ImageSet,
    features_of: Callable[[np.ndarray], np.ndarray],
    batch_size: int = 64,
    workers: int = 4,
) -> tuple[np.ndarray, np.ndarray, int]:
    """(features N×D of every sample of `image_set`, which samples were readable, how many were
    computed now). `features_of` maps prepared uint8 images (N×H×W×C) to features."""
    name = hashlib.sha256(json.dumps([network_digest, spec.to_dict()]).encode()).hexdigest()[:24]
    path = cache_dir() / "features" / f"images-{name}.npz"
    known: dict[str, np.ndarray] = {}
    if path.is_file():
        with np.load(path, allow_pickle=False) as stored:
            known = dict(zip(stored["keys"].tolist(), stored["features"]))
    keys = [image_key(image_set.location(i)) for i in range(len(image_set))]
    missing = [i for i, key in enumerate(keys) if key not in known]

    def read(index: int) -> np.ndarray | None:
        try:
            return prepare_image(image_set.reader.open(image_set.keys[index]), spec)
        except (ImageDecodeError, OSError):
            return None

    with ThreadPoolExecutor(max_workers=workers) as pool:  # Pillow decodes without holding the GIL
        for start in range(0, len(missing), batch_size):
            chunk = missing[start : start + batch_size]
            good = [(i, image) for i, image in zip(chunk, pool.map(read, chunk)) if image is not None]
            if good:
                vectors = features_of(np.stack([image for _, image in good]))
                for (i, _), vector in zip(good, vectors):
                    known[keys[i]] = vector.astype(np.float32)
    if missing and known:
        ordered = sorted(known)
        vectors = np.stack([known[k] for k in ordered])
        write_atomic(path, lambda tmp: save_arrays(tmp, keys=np.asarray(ordered), features=vectors))
    readable = np.asarray([key in known for key in keys], dtype=bool)
    width = len(next(iter(known.values()))) if known else 0
    features = np.zeros((len(keys), width), np.float32)
    for i, key in enumerate(keys):
        if readable[i]:
            features[i] = known[key]
    return features, readable, len(missing)
