"""Features of a trained network per image, kept in the cache folder between calls: a review's
`update` refits the head of a run again and again on the same images, and only images it has not
seen (new ones, or files changed since) are decoded and go through the network.

Images are known by their content (the sha256 of their bytes), not by where they are: the
corrected copy `review --apply` writes, or the same photos in another folder, find the features
their originals left. One file per network and preprocessing (`features/images-<digest>.npz`)
holds each image's content digest and its feature vector; `features/contents.npz` remembers the
digest of each file by its location, size and modification time, so that a file is read for its
digest once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from imgclf.data.decode import ImageDecodeError, read_bytes
from imgclf.data.imageset import ImageSet
from imgclf.data.preprocess import PreprocessSpec, prepare_image
from imgclf.io import save_arrays, write_atomic
from imgclf.paths import cache_dir

CONTENTS_FILE = "contents.npz"


def file_key(location: str) -> str | None:
    """A file's place in time: where it is, its size and when it last changed (None: no such file,
    as for a Parquet row, whose digest is then taken each time)."""
    try:
        stat = os.stat(location)
    except OSError:
        return None
    return f"{location}\0{stat.st_size}\0{stat.st_mtime_ns}"


def content_keys(locations: list[str], workers: int = 4) -> list[str | None]:
    """Each image's identity in the store: the sha256 of its bytes (None: unreadable), read once per
    file version (`features/contents.npz`)."""
    path = cache_dir() / "features" / CONTENTS_FILE
    known: dict[str, str] = {}
    if path.is_file():
        with contextlib.suppress(OSError, ValueError, KeyError), np.load(path, allow_pickle=False) as stored:
            known = dict(zip(stored["files"].tolist(), stored["digests"].tolist()))
    files = [file_key(location) for location in locations]

    def digest(index: int) -> str | None:
        if files[index] is not None and files[index] in known:
            return known[files[index]]
        try:
            return "sha256:" + hashlib.sha256(read_bytes(locations[index])).hexdigest()
        except OSError:
            return None

    with ThreadPoolExecutor(max_workers=workers) as pool:  # hashlib and reads release the GIL
        digests = list(pool.map(digest, range(len(locations))))
    fresh = {f: d for f, d in zip(files, digests) if f is not None and d is not None and f not in known}
    if fresh:
        known.update(fresh)
        names = sorted(known)
        write_atomic(
            path,
            lambda tmp: save_arrays(
                tmp, files=np.asarray(names), digests=np.asarray([known[n] for n in names])
            ),
        )
    return digests


def store_path(network_digest: str, spec: PreprocessSpec) -> Path:
    name = hashlib.sha256(json.dumps([network_digest, spec.to_dict()]).encode()).hexdigest()[:24]
    return cache_dir() / "features" / f"images-{name}.npz"


def load_store(path: Path) -> dict[str, np.ndarray]:
    """A store's features by content digest (a store from before, keyed by file, is left behind)."""
    if not path.is_file():
        return {}
    with np.load(path, allow_pickle=False) as stored:
        pairs = zip(stored["keys"].tolist(), stored["features"])
        return {key: vector for key, vector in pairs if key.startswith("sha256:")}


def save_store(path: Path, known: dict[str, np.ndarray]) -> None:
    ordered = sorted(known)
    vectors = np.stack([known[k] for k in ordered]).astype(np.float32)
    write_atomic(path, lambda tmp: save_arrays(tmp, keys=np.asarray(ordered), features=vectors))


def remember_features(
    network_digest: str, spec: PreprocessSpec, locations: list[str], features: np.ndarray, workers: int = 4
) -> int:
    """Keep features a step computed anyway (a head-only run's, the transfer head's, at the model's
    size, in float32 or bf16) for the `update` after it; returns how many were new to the store (an
    image already there keeps its features)."""
    if len(locations) != len(features) or not len(features):
        return 0
    path = store_path(network_digest, spec)
    known = load_store(path)
    fresh = {
        key: vector.astype(np.float32)
        for key, vector in zip(content_keys(locations, workers), features)
        if key is not None and key not in known
    }
    if fresh:
        known.update(fresh)
        save_store(path, known)
    return len(fresh)


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
    path = store_path(network_digest, spec)
    known = load_store(path)
    keys = content_keys([image_set.location(i) for i in range(len(image_set))], workers)
    first: dict[str, int] = {}  # the same photo twice is computed once
    for i, key in enumerate(keys):
        if key is not None and key not in known:
            first.setdefault(key, i)
    missing = list(first.values())

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
        save_store(path, known)
    readable = np.asarray([key in known for key in keys], dtype=bool)
    width = len(next(iter(known.values()))) if known else 0
    features = np.zeros((len(keys), width), np.float32)
    for i, key in enumerate(keys):
        if readable[i]:
            features[i] = known[key]
    return features, readable, len(missing)
