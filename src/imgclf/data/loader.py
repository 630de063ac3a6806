"""Batches of uint8 N×C×H×W tensors and labels, decoded once into RAM or streamed by worker processes.

Decoding failures never stop an epoch: the file is recorded as a `Problem`, left out, and never
read again.
"""

from __future__ import annotations

import logging
import mmap
import multiprocessing
import multiprocessing.context
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from imgclf.data.decode import ImageDecodeError
from imgclf.data.imageset import FileReader, ImageSet, Problem
from imgclf.data.preprocess import PreprocessSpec, load_prepared, prepare_image

logger = logging.getLogger(__name__)

Progress = Callable[[int, int], None]


def available_memory() -> int:
    """Bytes of memory available to new allocations (MemAvailable on Linux)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 2 << 30


def default_workers(num_samples: int | None = None) -> int:
    """Worker processes for decoding: the cores present (at most 8), none for tiny sets."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if num_samples is not None and num_samples < 256:
        return 0
    return max(0, min(cores, 8))


class _DecodeDataset(Dataset):
    """Index → (index, prepared uint8 H×W×C array or None, error message)."""

    def __init__(self, image_set: ImageSet, spec: PreprocessSpec) -> None:
        self.reader = image_set.reader
        self.keys = image_set.keys
        self.spec = spec

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, index: int) -> tuple[int, np.ndarray | None, str]:
        key = self.keys[index]
        try:
            if isinstance(self.reader, FileReader):
                return index, load_prepared(self.reader.location(key), self.spec), ""
            return index, prepare_image(self.reader.open(key), self.spec), ""
        except ImageDecodeError as error:
            return index, None, str(error)
        except OSError as error:
            return index, None, f"cannot read: {error}"


def _keep_list(batch: list) -> list:
    return batch


DECODE_CHUNK = 64


def shared_rows(shape: tuple[int, ...]) -> np.ndarray:
    """A zeroed uint8 array in anonymous shared memory: decode workers forked after this write into it."""
    size = int(np.prod(shape, dtype=np.int64))
    if size == 0:
        return np.zeros(shape, dtype=np.uint8)
    return np.frombuffer(mmap.mmap(-1, size), dtype=np.uint8).reshape(shape)


def _is_shared(array: np.ndarray) -> bool:
    """True when a forked process writing into `array` writes into this process's memory too."""
    base = array
    while isinstance(base, np.ndarray):
        if isinstance(base, np.memmap):
            return base.mode in ("r+", "w+")  # "c" maps copy-on-write: the writes would stay private
        base = base.base
    if isinstance(base, memoryview):
        base = base.obj
    return isinstance(base, mmap.mmap)  # shared_rows: MAP_SHARED anonymous memory


def _fork_context() -> multiprocessing.context.BaseContext | None:
    return multiprocessing.get_context("fork") if "fork" in multiprocessing.get_all_start_methods() else None


class _DecodeChunks(Dataset):
    """Chunk c → (first index, failures [(index, error)], rows or None).

    With `target` (shared memory or a shared memory map, inherited by forking) the worker writes each
    prepared row into it and sends back only the failures; without, the rows travel back by pickle.
    """

    def __init__(self, image_set: ImageSet, spec: PreprocessSpec, target: np.ndarray | None) -> None:
        self.decode = _DecodeDataset(image_set, spec)
        self.target = target

    def __len__(self) -> int:
        return -(-len(self.decode) // DECODE_CHUNK)

    def __getitem__(self, chunk: int) -> tuple[int, list[tuple[int, str]], list[np.ndarray | None] | None]:
        start = chunk * DECODE_CHUNK
        failures: list[tuple[int, str]] = []
        rows: list[np.ndarray | None] = []
        for index in range(start, min(start + DECODE_CHUNK, len(self.decode))):
            _, array, error = self.decode[index]
            if array is None:
                failures.append((index, error))
            elif self.target is not None:
                self.target[index] = array
            if self.target is None:
                rows.append(array)
        return start, failures, rows if self.target is None else None


def decode_all(
    image_set: ImageSet,
    spec: PreprocessSpec,
    workers: int | None = None,
    progress: Progress | None = None,
    out: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, list[Problem]]:
    """Decode and prepare every image once, in parallel (into `out` when given, e.g. a memory map).

    Returns (images N×H×W×C uint8, ok mask N, problems for the files that failed). Where processes
    can be forked, worker processes write the rows straight into shared memory (or the shared memory
    map `out`), so no pixel crosses a pipe and the main process only counts.
    """
    count = len(image_set)
    shape = (count, spec.height, spec.width, spec.channels)
    workers = default_workers(count) if workers is None else workers
    context = _fork_context() if workers > 0 else None
    if out is None:
        out = shared_rows(shape) if context is not None else np.zeros(shape, dtype=np.uint8)
    images = out
    target = images if workers == 0 or (context is not None and _is_shared(images)) else None
    ok = np.zeros(count, dtype=bool)
    problems: list[Problem] = []
    loader = DataLoader(
        _DecodeChunks(image_set, spec, target),
        batch_size=None,
        num_workers=workers,
        collate_fn=_keep_list,
        multiprocessing_context=context if target is not None else None,
        persistent_workers=False,
        generator=torch.Generator(),  # its own: decoding or not must not change the global RNG (init)
    )
    done = 0
    for start, failures, rows in loader:
        stop = min(start + DECODE_CHUNK, count)
        ok[start:stop] = True
        for index, error in failures:
            problems.append(Problem(image_set.keys[index], "corrupt", error))
            ok[index] = False
        if rows is not None:
            for index, array in enumerate(rows, start):
                if array is not None:
                    images[index] = array
        done += stop - start
        if progress is not None:
            progress(done, count)
    return images, ok, problems


@dataclass
class Batch:
    images: torch.Tensor  # uint8 N×C×H×W
    labels: torch.Tensor  # int64 N


@dataclass(frozen=True)
class Shard:
    """This rank's part of every epoch: positions rank, rank + world_size, … of the epoch's order.

    `even` (training) cuts every rank to the same length so that all ranks take the same number of
    steps; evaluation keeps every sample exactly once.
    """

    rank: int = 0
    world_size: int = 1
    even: bool = False

    def size(self, count: int) -> int:
        if self.world_size == 1:
            return count
        if self.even:
            return count // self.world_size
        return len(range(self.rank, count, self.world_size))

    def take(self, order: torch.Tensor) -> torch.Tensor:
        if self.world_size == 1:
            return order
        return order[self.rank :: self.world_size][: self.size(len(order))]


def _batches(count: int, batch_size: int, drop_last: bool) -> int:
    full, rest = divmod(count, batch_size)
    return full if drop_last or rest == 0 else full + 1


def _epoch_order(count: int, shuffle: bool, seed: int, epoch: int) -> torch.Tensor:
    """The same permutation on every rank: seeded by (seed, epoch) only."""
    if shuffle:
        return torch.randperm(count, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    return torch.arange(count)


class MemoryLoader:
    """Batches from decoded images (a uint8 array N×H×W×C in RAM or memory-mapped), or feature rows (N×D).

    `rows` maps sample i to row rows[i] of `images`, so that a split reads the shared cache without
    copying it.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        drop_last: bool = False,
        shard: Shard = Shard(),
        rows: np.ndarray | None = None,
        device: torch.device | None = None,
    ) -> None:
        self.images = torch.from_numpy(images)
        self.rows = torch.from_numpy(np.asarray(rows, dtype=np.int64)) if rows is not None else None
        self.device = device if device is not None and device.type == "cuda" else None
        self.resident = False
        self.labels = torch.from_numpy(np.asarray(labels, dtype=np.int64))
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.shard = shard
        self.drop_last = drop_last and self.num_samples > batch_size
        self.problems: list[Problem] = []
        if self.device is not None:
            self._move_to_gpu_if_small()

    def _move_to_gpu_if_small(self) -> None:
        """Data that takes at most a quarter of the free GPU memory lives there: batches never cross
        the bus and augmentation runs where they are. Larger data goes batch by batch from pinned memory."""
        free, _ = torch.cuda.mem_get_info(self.device)
        if self.images.numel() * self.images.element_size() > free // 4:
            logger.info("data larger than a quarter of the free GPU memory: streaming it from pinned memory")
            return
        self.images = self.images.to(self.device)
        self.labels = self.labels.to(self.device)
        if self.rows is not None:
            self.rows = self.rows.to(self.device)
        self.resident = True

    def __len__(self) -> int:
        return _batches(self.num_samples, self.batch_size, self.drop_last)

    @property
    def num_samples(self) -> int:
        return self.shard.size(len(self.labels))

    def epoch(self, epoch: int = 0) -> Iterator[Batch]:
        order = self.shard.take(_epoch_order(len(self.labels), self.shuffle, self.seed, epoch))
        if self.resident:
            order = order.to(self.device)
        count = len(order)
        for start in range(0, count, self.batch_size):
            index = order[start : start + self.batch_size]
            if self.drop_last and len(index) < self.batch_size:
                break
            batch = self.images[self.rows[index] if self.rows is not None else index]
            labels = self.labels[index]
            if self.device is not None and not self.resident:  # pinned: the copy to the GPU is async
                batch, labels = batch.pin_memory(), labels.pin_memory()
            yield Batch(batch.permute(0, 3, 1, 2) if batch.ndim == 4 else batch, labels)


class _StreamDataset(Dataset):
    def __init__(self, image_set: ImageSet, spec: PreprocessSpec) -> None:
        self.decode = _DecodeDataset(image_set, spec)
        self.labels = image_set.labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[int, np.ndarray | None, str, int]:
        position, array, error = self.decode[index]
        return position, array, error, int(self.labels[index])


def _collate_stream(batch: list) -> tuple[torch.Tensor | None, torch.Tensor | None, list[tuple[int, str]]]:
    good = [item for item in batch if item[1] is not None]
    failed = [(item[0], item[2]) for item in batch if item[1] is None]
    if not good:
        return None, None, failed
    images = torch.from_numpy(np.stack([item[1] for item in good])).permute(0, 3, 1, 2)
    labels = torch.tensor([item[3] for item in good], dtype=torch.int64)
    return images, labels, failed


class StreamLoader:
    """Batches decoded on the fly by worker processes (for data that does not fit in RAM)."""

    def __init__(
        self,
        image_set: ImageSet,
        spec: PreprocessSpec,
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        workers: int | None = None,
        drop_last: bool = False,
        shard: Shard = Shard(),
    ) -> None:
        self.shard = shard
        self.image_set = image_set
        self.dataset = _StreamDataset(image_set, spec)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.workers = default_workers(len(image_set)) if workers is None else workers
        self.drop_last = drop_last and len(image_set) > batch_size
        self.bad: set[int] = set()
        self.problems: list[Problem] = []

    def __len__(self) -> int:
        return _batches(self.num_samples, self.batch_size, self.drop_last)

    @property
    def num_samples(self) -> int:
        if self.shard.world_size > 1:  # files found unreadable stay in the shard's count, as in every rank
            return self.shard.size(len(self.image_set))
        return len(self.image_set) - len(self.bad)

    def epoch(self, epoch: int = 0) -> Iterator[Batch]:
        # Unreadable files stay in the order (so every rank cuts the same shards) and are skipped.
        order = self.shard.take(_epoch_order(len(self.image_set), self.shuffle, self.seed, epoch))
        indices = [i for i in order.tolist() if i not in self.bad]
        loader = DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            sampler=indices,
            num_workers=self.workers,
            collate_fn=_collate_stream,
            drop_last=self.drop_last,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=False,
            generator=torch.Generator(),  # leaves the global RNG to the model and the training loop
        )
        for images, labels, failed in loader:
            for index, error in failed:
                if index not in self.bad:
                    self.bad.add(index)
                    problem = Problem(self.image_set.keys[index], "corrupt", error)
                    self.problems.append(problem)
                    logger.warning("skipped unreadable image %s: %s", problem.path, error)
            if images is not None:
                yield Batch(images, labels)


def create_loader(
    image_set: ImageSet,
    spec: PreprocessSpec,
    *,
    batch_size: int,
    shuffle: bool,
    seed: int = 0,
    cached: tuple[np.ndarray, np.ndarray, np.ndarray | None] | None = None,
    workers: int | None = None,
    drop_last: bool = False,
    shard: Shard = Shard(),
    device: torch.device | None = None,
) -> MemoryLoader | StreamLoader:
    """A loader over decoded images (`cached` = (images, labels, rows)) or streamed from the source."""
    if cached is not None:
        images, labels, rows = cached
        return MemoryLoader(images, labels, batch_size, shuffle, seed, drop_last, shard, rows, device)
    return StreamLoader(image_set, spec, batch_size, shuffle, seed, workers, drop_last, shard)
