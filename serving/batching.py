"""Micro-batching: concurrent frames share one onnxruntime call, with bounded delay and queue.

A frame waits for company only while other frames are on their way (being read or decoded),
and never longer than ``max_delay_ms``: a lone client pays no batching delay, while under
load frames that arrive during a model call form the next batch naturally. The queue is
bounded; a full queue raises ``OverloadedError`` at once (503 + Retry-After, fail-safe reject)
instead of growing latency without bound.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from inspection.errors import ModelError, OverloadedError
from serving.model import LoadedModel
from serving.settings import BatchingSettings
from serving.telemetry import ServingMetrics

log = logging.getLogger(__name__)


class Arrival:
    """A frame on its way to the batcher; ``done()`` once it is queued or given up."""

    __slots__ = ("_batcher",)

    def __init__(self, batcher: MicroBatcher) -> None:
        self._batcher: MicroBatcher | None = batcher

    def done(self) -> None:
        if self._batcher is not None:
            self._batcher._arrived()
            self._batcher = None


@dataclass(slots=True)
class _Item:
    model: LoadedModel
    pixels: np.ndarray
    future: asyncio.Future[tuple[np.ndarray, np.ndarray | None, float]]


class MicroBatcher:
    """Groups frames per model into batches run on one worker thread."""

    def __init__(self, settings: BatchingSettings, metrics: ServingMetrics) -> None:
        self._settings = settings
        self._metrics = metrics
        self._queue: deque[_Item] = deque()
        self._running = 0
        self._arriving = 0
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ort-batch")
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._worker(), name="micro-batcher")

    async def close(self) -> None:
        """Finish what is queued, then stop the worker."""
        self._closed = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
        self._executor.shutdown(wait=True)

    @property
    def depth(self) -> int:
        return len(self._queue) + self._running

    def idle(self) -> bool:
        """No frame queued, being scored, or on its way (read or decoded) right now."""
        return not self._queue and not self._running and not self._arriving

    # -- producers ---------------------------------------------------------------------
    @contextmanager
    def arriving(self) -> Iterator[Arrival]:
        """Mark a frame as on its way (body being read or decoded) until ``Arrival.done()``
        or the end of the block, so a batch being formed may wait (bounded) for it."""
        arrival = Arrival(self)
        self._arriving += 1
        try:
            yield arrival
        finally:
            arrival.done()

    def _arrived(self) -> None:
        self._arriving -= 1
        if self._arriving == 0:
            self._wakeup.set()

    def check_capacity(self) -> None:
        """Raise ``OverloadedError`` now if a frame submitted next would not fit."""
        if self.depth >= self._settings.queue_size:
            raise OverloadedError(
                f"scoring queue full ({self.depth} frames waiting, queue_size={self._settings.queue_size}); "
                f"retry after {self._settings.retry_after_s:g} s",
                retry_after_s=self._settings.retry_after_s,
            )

    async def submit(self, model: LoadedModel, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, float]:
        """Score one ``uint8[C, H, W]`` frame; returns (probabilities [K], defect map [h, w] or None
        for a model without maps, model ms of its batch).

        Raises:
            OverloadedError: the queue is full.
            ModelError: the model failed on the batch holding this frame.
        """
        if self._closed:
            raise OverloadedError("server is shutting down; retry on another instance", retry_after_s=1.0)
        self.check_capacity()
        future: asyncio.Future[tuple[np.ndarray, np.ndarray | None, float]] = asyncio.get_running_loop().create_future()
        self._queue.append(_Item(model, pixels, future))
        self._metrics.queue_depth.set(self.depth)
        self._wakeup.set()
        return await future

    # -- the worker --------------------------------------------------------------------
    def _take_batch(self) -> list[_Item]:
        first = self._queue[0]
        batch: list[_Item] = []
        keep: deque[_Item] = deque()
        while self._queue and len(batch) < self._settings.max_batch:
            item = self._queue.popleft()
            # Frames for another model (another station, or the old/new side of a hot swap)
            # wait for their own batch; order within each model is kept.
            (batch if item.model is first.model and not item.future.cancelled() else keep).append(item)
        keep.extend(self._queue)
        self._queue = keep
        return [i for i in batch if not i.future.cancelled()]

    async def _gather(self) -> None:
        """Wait (bounded) for frames that are on their way to join the first queued one."""
        delay = self._settings.max_delay_ms / 1000.0
        if delay <= 0:
            return
        deadline = time.perf_counter() + delay
        while self._arriving > 0 and len(self._queue) < self._settings.max_batch:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                return
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                return

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                if self._closed:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            await self._gather()
            batch = self._take_batch()
            if not batch:
                continue
            self._running = len(batch)
            model = batch[0].model
            pixels = np.stack([i.pixels for i in batch]) if len(batch) > 1 else batch[0].pixels[np.newaxis]
            started = time.perf_counter()
            try:
                if len(batch) == 1 and not self._queue and self._arriving == 0:
                    # Nobody else is waiting or on the way: run on the loop's thread and save two
                    # thread hand-offs (they cost most on a busy 2-core line PC). Frames arriving
                    # meanwhile wait in the socket buffer for at most this one call.
                    probs, heat = model.score(pixels)
                else:
                    probs, heat = await loop.run_in_executor(self._executor,
                                                             functools.partial(model.score, pixels, busy=True))
            except ModelError as exc:
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(exc)
                continue
            except Exception as exc:  # never let the worker die: every frame gets an answer
                log.exception("model call failed unexpectedly")
                err = ModelError(f"{model.model_id}: {type(exc).__name__}: {exc}")
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(err)
                continue
            finally:
                self._running = 0
                self._metrics.queue_depth.set(self.depth)
            elapsed = time.perf_counter() - started
            self._metrics.child(self._metrics.model_latency, model.model_id).observe(elapsed)
            self._metrics.batch_size.observe(len(batch))
            for i, item in enumerate(batch):
                if not item.future.done():
                    item.future.set_result((probs[i], None if heat is None else heat[i], elapsed * 1000.0))
