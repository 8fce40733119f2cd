"""Prometheus metrics (prometheus-client), correct across ``--workers`` processes.

With several workers, ``PROMETHEUS_MULTIPROC_DIR`` is set before this module is imported and the
exposition aggregates every worker's files (prometheus-client's multiprocess mode).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

_LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.00075,
    0.001,
    0.0015,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

REQUESTS = Counter(
    "serving_requests_total",
    "Requests answered, by model, version, API and status code.",
    ["model", "version", "api", "code"],
)
REQUEST_LATENCY = Histogram(
    "serving_request_latency_seconds",
    "Time from request decoded to response ready, by model, version and API.",
    ["model", "version", "api"],
    buckets=_LATENCY_BUCKETS,
)
BATCH_SIZE = Histogram(
    "serving_batch_size",
    "Rows per executed batch (server-side batching), before padding.",
    ["model", "version"],
    buckets=_BATCH_BUCKETS,
)
BATCH_QUEUE_SECONDS = Histogram(
    "serving_batch_queue_seconds",
    "Time a request waited in the batching queue.",
    ["model", "version"],
    buckets=_LATENCY_BUCKETS,
)
BATCH_RUN_SECONDS = Histogram(
    "serving_batch_run_seconds",
    "Time a batch took in the runtime.",
    ["model", "version"],
    buckets=_LATENCY_BUCKETS,
)
REQUEST_PHASE_SECONDS = Histogram(
    "serving_request_phase_seconds",
    "Server time of a successful request by phase: decode (proto/JSON to arrays), queue "
    "(waiting for a batch; 0 without batching), infer (runtime time of the batch the request "
    "ran in), encode (arrays to proto/JSON).",
    ["model", "version", "api", "runtime", "phase"],
    buckets=_LATENCY_BUCKETS,
)
PHASES = ("decode", "queue", "infer", "encode")
MODEL_VERSIONS = Gauge(
    "serving_model_versions",
    "Versions per model and state (1 when in that state).",
    ["model", "version", "state"],
    multiprocess_mode="max",
)


_REQUEST_SERIES: dict[tuple[str, str, str, str], tuple[Any, Any]] = {}


def observe_request(model: str, version: str, api: str, code: str, seconds: float) -> None:
    """Count a request and, when it succeeded, its latency.

    The labelled series are cached: prometheus-client's ``labels()`` lookup costs more than the
    increment itself on this hot path. Callers pass only configured model names, so the number
    of series stays bounded whatever names clients send.
    """
    key = (model, version, api, code)
    series = _REQUEST_SERIES.get(key)
    if series is None:
        series = (REQUESTS.labels(*key), REQUEST_LATENCY.labels(model, version, api))
        _REQUEST_SERIES[key] = series
    series[0].inc()
    if code == "OK":
        series[1].observe(seconds)


@dataclass(slots=True)
class PhaseTimes:
    """Where one request's server time went, in seconds; the model layer fills ``queue`` and
    ``infer``, the transport ``decode`` and ``encode``."""

    decode: float = 0.0
    queue: float = 0.0
    infer: float = 0.0
    encode: float = 0.0


_PHASE_SERIES: dict[tuple[str, str, str, str], tuple[Any, Any, Any, Any]] = {}


def observe_phases(model: str, version: str, api: str, runtime: str, times: PhaseTimes) -> None:
    """Record a successful request's four phases.

    Cached like ``observe_request``: four ``observe`` calls (~1 µs each) are what remains on
    the hot path. ``model`` is a served model's name (the request resolved), so the series stay
    bounded.
    """
    key = (model, version, api, runtime)
    series = _PHASE_SERIES.get(key)
    if series is None:
        decode, queue, infer, encode = (
            REQUEST_PHASE_SECONDS.labels(model, version, api, runtime, phase) for phase in PHASES
        )
        series = (decode, queue, infer, encode)
        _PHASE_SERIES[key] = series
    series[0].observe(times.decode)
    series[1].observe(times.queue)
    series[2].observe(times.infer)
    series[3].observe(times.encode)


def exposition() -> tuple[bytes, str]:
    """The metrics page body and its content type, aggregated over workers when there are
    several."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    from prometheus_client import REGISTRY

    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
