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

import grpc.experimental.gevent as grpc_gevent
from hdrh.histogram import HdrHistogram
from locust import events
from locust.env import Environment

from loadtest.record import hdr, users
from loadtest.record.options import add_arguments
from loadtest.record.plugin import LoadtestPlugin
from loadtest.record.recorder import write_json_atomically

RATE = float(os.environ.get("SOAK_RATE", "0"))
WINDOW_S = float(os.environ.get("SOAK_WINDOW_S", "60"))
OUTPUT = os.environ.get("SOAK_WINDOWS_OUTPUT", "")


MAX_BACKLOG_S = 1.0  # a user this far behind its schedule gives the backlog up


class SoakUser(users.PredictUser):
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


class SoakWindows:
    """The per-window histograms of one Environment's soak run, and the listeners that fill and
    write them."""

    def __init__(self, environment: Environment) -> None:
        self.environment = environment
        self.windows = _Windows()

    @classmethod
    def install(cls, environment: Environment, **_: Any) -> SoakWindows:
        """The ``events.init`` listener: windows for ``environment``, listeners registered."""
        soak = cls(environment)
        environment.events.test_start.add_listener(soak.on_test_start)
        environment.events.request.add_listener(soak.on_request)
        environment.events.quitting.add_listener(soak.on_quitting)
        return soak

    def on_test_start(self, **_: Any) -> None:
        """One set of windows per test run."""
        self.windows = _Windows()

    def on_request(self, response_time: float, exception: BaseException | None, **_: Any) -> None:
        """Every request, ours or not, lands in its window."""
        self.windows.record(response_time, exception is not None)

    def on_quitting(self, **_: Any) -> None:
        """Write ``SOAK_WINDOWS_OUTPUT``."""
        if OUTPUT:
            write_json_atomically(
                Path(OUTPUT),
                {"rate": RATE, "window_s": WINDOW_S, "windows": self.windows.summary()},
            )


# gRPC must use gevent's event loop before any user creates a channel (as in locustfile.py).
grpc_gevent.init_gevent()

events.init_command_line_parser.add_listener(add_arguments)
events.init.add_listener(LoadtestPlugin.install)
events.init.add_listener(SoakWindows.install)
