"""The batcher on a manual clock (TF Serving tests its scheduler with a fake clock): a batch
closes exactly at ``batch_timeout_micros`` and not a tick before, queue waits are exact, and no
test sleeps for a timeout. The real-timer and real-server cases stay in tests/test_batching.py
and tests/test_faults_batching.py.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest

from serving.errors import ServingError
from serving.metrics import PhaseTimes
from serving.model.batching import Batcher
from serving.settings import BatchingSettings


class ManualClock:
    """Time moves only when the test says so; due timers fire in order on ``advance``."""

    def __init__(self) -> None:
        self.time = 100.0
        self._timers: list[_Timer] = []

    def now(self) -> float:
        return self.time

    def call_later(self, delay: float, callback: Callable[[], None]) -> _Timer:
        timer = _Timer(self.time + delay, callback)
        self._timers.append(timer)
        return timer

    @property
    def pending(self) -> int:
        return sum(not t.cancelled for t in self._timers)

    async def advance(self, seconds: float) -> None:
        self.time += seconds
        due = sorted((t for t in self._timers if t.when <= self.time + 1e-12), key=lambda t: t.when)
        for timer in due:
            self._timers.remove(timer)
            if not timer.cancelled:
                timer.callback()
        await settle()


class _Timer:
    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


async def settle() -> None:
    """Let the loop run every ready callback (submits enqueue, closed batches start)."""
    for _ in range(5):
        await asyncio.sleep(0)


class Recorder:
    """A runtime stand-in: doubles its input and records each batch's rows."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.batches: list[list[float]] = []
        self.gate = gate

    def __call__(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.gate is not None:
            self.gate.wait(timeout=30)
        self.batches.append(inputs["x"][:, 0].tolist())
        return {"y": inputs["x"] * 2}


def row(value: float, rows: int = 1) -> dict[str, np.ndarray]:
    return {"x": np.full((rows, 2), value, np.float32)}


def batcher(run: Recorder, clock: ManualClock, **params: int | tuple[int, ...]) -> Batcher:
    settings = BatchingSettings.model_validate(
        {"max_batch_size": 4, "batch_timeout_micros": 10_000, "num_batch_threads": 1, **params}
    )
    return Batcher(run, settings, ThreadPoolExecutor(1), model="m", version=1, clock=clock)


async def result_of(task: asyncio.Future[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return await asyncio.wait_for(task, timeout=10)


def test_batch_closes_exactly_at_the_timeout_with_exact_queue_waits():
    async def scenario():
        clock, run = ManualClock(), Recorder()
        b = batcher(run, clock)
        first_times, second_times = PhaseTimes(), PhaseTimes()
        first = asyncio.ensure_future(b.submit(row(1.0), 1, first_times))
        await settle()
        await clock.advance(0.004)
        second = asyncio.ensure_future(b.submit(row(2.0), 1, second_times))
        await settle()
        await clock.advance(0.0059)
        assert run.batches == [] and not first.done()  # 9.9 ms: still open
        await clock.advance(0.0001)
        one, two = await result_of(first), await result_of(second)
        assert run.batches == [[1.0, 2.0]]  # one merged run at exactly 10 ms
        assert one["y"].tolist() == [[2.0, 2.0]] and two["y"].tolist() == [[4.0, 4.0]]
        assert first_times.queue == pytest.approx(0.010)
        assert second_times.queue == pytest.approx(0.006)
        # The manual clock does not move during the run: the batch's infer time is 0 for both.
        assert first_times.infer == second_times.infer == 0.0
        assert clock.pending == 0

    asyncio.run(scenario())


def test_a_full_batch_runs_without_waiting_and_cancels_its_timer():
    async def scenario():
        clock, run = ManualClock(), Recorder()
        b = batcher(run, clock)
        calls = [asyncio.ensure_future(b.submit(row(float(i)), 1)) for i in range(4)]
        results = [await result_of(c) for c in calls]  # no advance: 4 rows fill the batch
        assert run.batches == [[0.0, 1.0, 2.0, 3.0]]
        assert [r["y"][0, 0] for r in results] == [0.0, 2.0, 4.0, 6.0]
        assert clock.pending == 0

    asyncio.run(scenario())


def test_a_request_that_does_not_fit_closes_the_open_batch():
    async def scenario():
        clock, run = ManualClock(), Recorder()
        b = batcher(run, clock)
        small = asyncio.ensure_future(b.submit(row(1.0, 3), 3))
        await settle()
        large = asyncio.ensure_future(b.submit(row(2.0, 2), 2))  # 3 + 2 > 4: closes the first
        await result_of(small)
        assert run.batches == [[1.0, 1.0, 1.0]] and not large.done()
        await clock.advance(0.010)
        assert (await result_of(large))["y"].shape == (2, 2)
        assert run.batches[-1] == [2.0, 2.0]

    asyncio.run(scenario())


def test_padding_to_allowed_sizes_and_each_caller_gets_its_rows():
    async def scenario():
        clock, run = ManualClock(), Recorder()
        b = batcher(run, clock, max_batch_size=8, allowed_batch_sizes=(2, 4, 8))
        calls = [asyncio.ensure_future(b.submit(row(float(i), i), i)) for i in (1, 2)]
        await settle()
        await clock.advance(0.010)
        results = [await result_of(c) for c in calls]
        assert run.batches == [[1.0, 2.0, 2.0, 0.0]]  # 3 rows padded to 4 with zeros
        assert [r["y"].shape[0] for r in results] == [1, 2]

    asyncio.run(scenario())


def test_a_larger_than_max_request_runs_alone_with_its_infer_time():
    async def scenario():
        clock, run = ManualClock(), Recorder()
        b = batcher(run, clock)
        times = PhaseTimes()
        result = await asyncio.wait_for(b.submit(row(3.0, 6), 6, times), 10)
        assert result["y"].shape == (6, 2) and run.batches == [[3.0] * 6]
        assert times.queue == 0.0 and clock.pending == 0

    asyncio.run(scenario())


def test_cancelled_callers_are_skipped():
    async def scenario():
        clock, run = ManualClock(), Recorder()
        b = batcher(run, clock)
        gone = asyncio.ensure_future(b.submit(row(1.0), 1))
        kept = asyncio.ensure_future(b.submit(row(2.0), 1))
        await settle()
        gone.cancel()
        await clock.advance(0.010)
        assert (await result_of(kept))["y"][0, 0] == 4.0
        assert run.batches == [[2.0]]  # the cancelled caller's row never ran
        alone = asyncio.ensure_future(b.submit(row(5.0), 1))
        await settle()
        alone.cancel()
        await clock.advance(0.010)
        await b.drain()
        assert run.batches == [[2.0]]  # a batch of only cancelled callers does not run

    asyncio.run(scenario())


def test_full_queue_is_unavailable_until_a_batch_finishes():
    async def scenario():
        clock, gate = ManualClock(), threading.Event()
        run = Recorder(gate)
        b = batcher(run, clock, max_batch_size=1, max_enqueued_batches=1)
        running = asyncio.ensure_future(b.submit(row(1.0), 1))  # full: runs, blocked on gate
        await settle()
        waiting = asyncio.ensure_future(b.submit(row(2.0), 1))  # waits for the one thread
        await settle()
        assert b.queued_batches == 1
        with pytest.raises(ServingError) as error:
            await b.submit(row(3.0), 1)
        assert error.value.code == grpc.StatusCode.UNAVAILABLE
        gate.set()
        await result_of(running)
        await result_of(waiting)
        assert (await asyncio.wait_for(b.submit(row(4.0), 1), 10))["y"][0, 0] == 8.0
        assert b.queued_batches == 0

    asyncio.run(scenario())


def test_drain_runs_the_open_batch_without_its_timeout():
    async def scenario():
        clock, run = ManualClock(), Recorder()
        b = batcher(run, clock)
        pending = asyncio.ensure_future(b.submit(row(7.0), 1))
        await settle()
        await b.drain()  # shutdown: the open batch runs now, the clock never moved
        assert (await result_of(pending))["y"][0, 0] == 14.0
        assert clock.pending == 0

    asyncio.run(scenario())


def test_a_runtime_failure_fails_that_batch_only():
    async def scenario():
        clock = ManualClock()
        calls = {"n": 0}

        def run(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
            calls["n"] += 1
            if calls["n"] == 1:
                raise RuntimeError("forced failure")
            return {"y": inputs["x"]}

        b = Batcher(
            run,
            BatchingSettings(max_batch_size=2, batch_timeout_micros=10_000, num_batch_threads=1),
            ThreadPoolExecutor(1),
            model="m",
            version=1,
            clock=clock,
        )
        failed = await asyncio.gather(
            *(b.submit(row(1.0), 1) for _ in range(2)), return_exceptions=True
        )
        assert all(
            isinstance(e, ServingError) and e.code == grpc.StatusCode.INTERNAL for e in failed
        )
        ok = asyncio.ensure_future(b.submit(row(1.0), 1))
        await settle()
        await clock.advance(0.010)
        assert (await result_of(ok))["y"].shape == (1, 2)

    asyncio.run(scenario())
