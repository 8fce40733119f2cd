"""Locust users for the soak test (``python -m loadtest.soak``): the Predict users of
``loadtest/locustfile.py`` (same arguments, clients and HDR results), paced to a fixed total rate
instead of a closed loop, with a latency histogram per time window.

Environment: ``SOAK_RATE`` (total requests per second over all users; 0 = closed loop),
``SOAK_WINDOW_S`` (window length, default 60) and ``SOAK_WINDOWS_OUTPUT`` (JSON file written when
Locust exits: one entry per window with requests, failures and latency percentiles). Run it in a
single Locust process (no ``--processes``): the windows are kept per process.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path
from typing import Any

from hdrh.histogram import HdrHistogram
from locust import events
from locust.env import Environment

from loadtest import locustfile as base  # gevent-enabled gRPC, arguments, clients, HDR results
from loadtest.record import hdr
from loadtest.record.recorder import write_json_atomically

RATE = float(os.environ.get("SOAK_RATE", "0"))
WINDOW_S = float(os.environ.get("SOAK_WINDOW_S", "60"))
OUTPUT = os.environ.get("SOAK_WINDOWS_OUTPUT", "")


MAX_BACKLOG_S = 1.0  # a user this far behind its schedule gives the backlog up


class SoakUser(base.PredictUser):
    """A Predict user sending one request every ``users / SOAK_RATE`` seconds on a schedule: a
    slow answer shortens the next waits until the user is back on time (so the average rate is
    the target), but a user more than ``MAX_BACKLOG_S`` behind starts afresh rather than
    bursting."""

    def on_start(self) -> None:
        super().on_start()
        users = max(int(self.environment.parsed_options.num_users or 1), 1)
        self.interval = users / RATE if RATE > 0 else 0.0
        # Users start spread over one interval so the requests do not arrive in waves.
        self.next_start = time.perf_counter() + random.uniform(0, self.interval)

    def wait_time(self) -> float:
        if self.interval <= 0:
            return 0.0
        now = time.perf_counter()
        self.next_start += self.interval
        if self.next_start < now - MAX_BACKLOG_S:
            self.next_start = now
        return max(self.next_start - now, 0.0)


class _Windows:
    """Latency histogram and failure count per window since the test started."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.histograms: dict[int, HdrHistogram] = {}
        self.failures: dict[int, int] = {}

    def record(self, milliseconds: float, failed: bool) -> None:
        index = int((time.perf_counter() - self.start) // WINDOW_S)
        if failed:
            self.failures[index] = self.failures.get(index, 0) + 1
            return
        histogram = self.histograms.get(index)
        if histogram is None:
            histogram = self.histograms[index] = hdr.new_histogram()
        hdr.record_us(histogram, milliseconds * 1000.0)

    def summary(self) -> list[dict[str, Any]]:
        rows = []
        for index in sorted(set(self.histograms) | set(self.failures)):
            latency = hdr.summarize(self.histograms.get(index, hdr.new_histogram()))
            rows.append(
                {
                    "window": index,
                    "start_s": index * WINDOW_S,
                    "seconds": WINDOW_S,
                    "requests": latency.count,
                    "failures": self.failures.get(index, 0),
                    **{k: v for k, v in latency.as_dict().items() if k != "count"},
                }
            )
        return rows


WINDOWS = _Windows()


@events.test_start.add_listener
def _on_test_start(environment: Environment, **_: Any) -> None:
    global WINDOWS  # noqa: PLW0603 - one set of windows per test run
    WINDOWS = _Windows()


@events.request.add_listener
def _on_request(response_time: float, exception: BaseException | None, **_: Any) -> None:
    WINDOWS.record(response_time, exception is not None)


@events.quitting.add_listener
def _on_quitting(environment: Environment, **_: Any) -> None:
    if OUTPUT:
        write_json_atomically(
            Path(OUTPUT), {"rate": RATE, "window_s": WINDOW_S, "windows": WINDOWS.summary()}
        )
