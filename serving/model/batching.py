"""Server-side batching with TF Serving's ``BatchingParameters`` semantics.

Requests for the same model version and signature are merged into one runtime call (rows
concatenated along axis 0, padded up to the next ``allowed_batch_sizes`` entry) and each caller
gets exactly its own rows back. A batch closes when it is full or ``batch_timeout_micros`` after
its first request; ``num_batch_threads`` batches run at once; when ``max_enqueued_batches``
batches are already waiting, a request that needs a new batch is refused with UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from serving import metrics
from serving.errors import ServingError, internal, unavailable
from serving.metrics import PhaseTimes
from serving.settings import BatchingSettings

RunFn = Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]


class Cancellable(Protocol):
    """A scheduled callback (``asyncio.TimerHandle`` is one)."""

    def cancel(self) -> None:
        """Do not run the callback."""


class Clock(Protocol):
    """Time and timers for the batcher: the event loop's in production, a manual one in tests
    (as TF Serving tests its scheduler with a fake clock) so batch timeouts are exact."""

    def now(self) -> float:
        """Seconds on a monotonic clock."""

    def call_later(self, delay: float, callback: Callable[[], None]) -> Cancellable:
        """Run ``callback`` on the event loop thread ``delay`` seconds from now."""


class LoopClock:
    """``time.perf_counter`` and the running event loop's ``call_later``."""

    def now(self) -> float:
        """``time.perf_counter()``."""
        return time.perf_counter()

    def call_later(self, delay: float, callback: Callable[[], None]) -> Cancellable:
        """``loop.call_later`` on the running loop."""
        return asyncio.get_running_loop().call_later(delay, callback)


@dataclass(slots=True)
class _Task:
    inputs: Mapping[str, np.ndarray]
    rows: int
    future: asyncio.Future[dict[str, np.ndarray]]
    enqueued: float
    times: PhaseTimes | None


class Batcher:
    """The batching queue of one (model version, signature)."""

    def __init__(
        self,
        run: RunFn,
        params: BatchingSettings,
        executor: Executor,
        *,
        model: str,
        version: int,
        clock: Clock | None = None,
    ) -> None:
        self._run = run
        self._params = params
        self._executor = executor
        self._clock = clock or LoopClock()
        labels = (model, str(version))
        # Observed once per request on the loop thread: deferred, like the request metrics.
        self._queue_seconds = metrics.deferred_latency(metrics.BATCH_QUEUE_SECONDS.labels(*labels))
        self._batch_size = metrics.BATCH_SIZE.labels(*labels)
        self._run_seconds = metrics.BATCH_RUN_SECONDS.labels(*labels)
        self._open: list[_Task] = []
        self._open_rows = 0
        self._timer: Cancellable | None = None
        self._waiting = 0  # closed batches not yet running
        self._slots = asyncio.Semaphore(params.num_batch_threads)
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def queued_batches(self) -> int:
        """Batches waiting for a thread, the open one included."""
        return self._waiting + (1 if self._open else 0)

    async def submit(
        self, inputs: Mapping[str, np.ndarray], rows: int, times: PhaseTimes | None = None
    ) -> dict[str, np.ndarray]:
        """Queue ``rows`` rows; returns this request's rows of every output. ``times`` receives
        the request's queue wait and its batch's runtime time."""
        loop = asyncio.get_running_loop()
        max_rows = self._params.max_batch_size
        if rows > max_rows:
            # Larger than any batch: it runs alone rather than being refused (TF Serving with
            # enable_large_batch_splitting would split it; the result is the same).
            outputs, seconds = await loop.run_in_executor(self._executor, self._timed_run, inputs)
            if times is not None:
                times.infer = seconds
            return outputs
        if self._open and self._open_rows + rows > max_rows:
            self._close_open_batch()
        if not self._open and self._waiting >= self._params.max_enqueued_batches:
            raise unavailable(
                f"batching queue is full ({self._waiting} batches waiting); retry later"
            )
        task = _Task(inputs, rows, loop.create_future(), self._clock.now(), times)
        self._open.append(task)
        self._open_rows += rows
        if self._open_rows >= max_rows:
            self._close_open_batch()
        elif self._timer is None:
            delay = self._params.batch_timeout_micros / 1e6
            self._timer = self._clock.call_later(delay, self._close_open_batch)
        return await task.future

    def _close_open_batch(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._open:
            return
        batch, self._open, self._open_rows = self._open, [], 0
        self._waiting += 1
        task = asyncio.get_running_loop().create_task(self._execute(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _padded_size(self, rows: int) -> int:
        for size in self._params.allowed_batch_sizes:
            if size >= rows:
                return size
        return rows

    async def _execute(self, batch: list[_Task]) -> None:
        async with self._slots:
            self._waiting -= 1
            live = [t for t in batch if not t.future.done()]  # callers may have gone away
            if not live:
                return
            started = self._clock.now()
            for task in live:
                waited = started - task.enqueued
                self._queue_seconds.observe(waited)
                if task.times is not None:
                    task.times.queue = waited
            rows = sum(t.rows for t in live)
            self._batch_size.observe(rows)
            merged = self._merge(live, rows)
            try:
                outputs, seconds = await asyncio.get_running_loop().run_in_executor(
                    self._executor, self._timed_run, merged
                )
            except ServingError as exc:
                self._fail(live, exc)
                return
            except Exception as exc:  # noqa: BLE001 - a runtime fault fails this batch only
                self._fail(live, internal(f"batch of {rows} rows failed in the runtime: {exc}"))
                return
            finally:
                self._run_seconds.observe(self._clock.now() - started)
            offset = 0
            for task in live:
                if task.times is not None:
                    task.times.infer = seconds
                part = {k: v[offset : offset + task.rows] for k, v in outputs.items()}
                offset += task.rows
                if not task.future.done():
                    task.future.set_result(part)

    def _timed_run(self, inputs: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], float]:
        # Timed on the batch thread: the runtime's own time, without the hop to the thread.
        start = self._clock.now()
        outputs = self._run(inputs)
        return outputs, self._clock.now() - start

    def _merge(self, tasks: list[_Task], rows: int) -> dict[str, np.ndarray]:
        padded = self._padded_size(rows)
        merged = {}
        for name in tasks[0].inputs:
            parts = [t.inputs[name] for t in tasks]
            if padded > rows:
                first = parts[0]
                parts.append(np.zeros((padded - rows, *first.shape[1:]), dtype=first.dtype))
            merged[name] = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)
        return merged

    @staticmethod
    def _fail(tasks: list[_Task], error: ServingError) -> None:
        for task in tasks:
            if not task.future.done():
                task.future.set_exception(error)

    async def drain(self) -> None:
        """Close the open batch and wait for every batch to finish (shutdown, unload)."""
        self._close_open_batch()
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
