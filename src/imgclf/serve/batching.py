"""Micro-batching: requests that arrive close together share one forward pass.

Each request puts its prepared images on a queue and awaits a future. One task takes the first
waiting request, gathers more until `max_batch` images or until `wait_s` has passed since it took the
first, runs the model once on all of them in a worker thread (so the event loop keeps accepting
requests), and hands each request its rows. While the model runs, new requests queue up and form the
next batch. With `max_batch=1` every request runs alone, one at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

logger = logging.getLogger(__name__)


@dataclass
class _Job:
    images: np.ndarray
    future: asyncio.Future


@dataclass
class BatchStats:
    """Counters for /model and the load test: how many forward passes served how many images."""

    batches: int = 0
    images: int = 0
    largest: int = 0
    sizes: dict[int, int] = field(default_factory=dict)

    def record(self, size: int) -> None:
        self.batches += 1
        self.images += size
        self.largest = max(self.largest, size)
        self.sizes[size] = self.sizes.get(size, 0) + 1

    @property
    def mean(self) -> float:
        return self.images / self.batches if self.batches else 0.0


class MicroBatcher:
    """Gathers concurrent `predict` calls into batches for `run` (uint8 N×H×W×C → probabilities N×K)."""

    def __init__(self, run: Callable[[np.ndarray], np.ndarray], max_batch: int = 32, wait_s: float = 0.002):
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.run = run
        self.max_batch = max_batch
        self.wait_s = max(0.0, wait_s)
        self.stats = BatchStats()
        self._queue: asyncio.Queue[_Job] | None = None
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # One thread: forward passes run one after another; the runtime uses the cores inside each.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="imgclf-model")

    def _ensure_started(self) -> asyncio.Queue[_Job]:
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done() or self._loop is not loop:
            self._queue = asyncio.Queue()
            self._loop = loop
            self._task = loop.create_task(self._serve())
        assert self._queue is not None
        return self._queue

    async def predict(self, images: np.ndarray) -> np.ndarray:
        """Probabilities for `images`, computed in a batch with whatever else is waiting."""
        queue = self._ensure_started()
        future = asyncio.get_running_loop().create_future()
        await queue.put(_Job(images, future))
        return await future

    async def _gather(self, queue: asyncio.Queue[_Job]) -> list[_Job]:
        jobs = [await queue.get()]
        count = len(jobs[0].images)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait_s
        while count < self.max_batch:
            try:
                job = queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    job = await asyncio.wait_for(queue.get(), remaining)
                except TimeoutError:
                    break
            jobs.append(job)
            count += len(job.images)
        return jobs

    async def _serve(self) -> None:
        assert self._queue is not None
        queue = self._queue
        loop = asyncio.get_running_loop()
        while True:
            jobs = await self._gather(queue)
            jobs = [job for job in jobs if not job.future.done()]  # a client that went away
            if not jobs:
                continue
            batch = np.concatenate([job.images for job in jobs]) if len(jobs) > 1 else jobs[0].images
            try:
                probabilities = await loop.run_in_executor(self._executor, self.run, batch)
            except Exception as error:  # the requests in this batch fail; the server goes on
                logger.exception("prediction failed for a batch of %d images", len(batch))
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(error)
                continue
            self.stats.record(len(batch))
            start = 0
            for job in jobs:
                rows = probabilities[start : start + len(job.images)]
                start += len(job.images)
                if not job.future.done():
                    job.future.set_result(rows)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, RuntimeError):
                await self._task
            self._task = None
