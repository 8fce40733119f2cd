"""Prometheus metrics (prometheus-client), correct across ``--workers`` processes.

With several workers, ``PROMETHEUS_MULTIPROC_DIR`` is set before this module is imported and the
exposition aggregates every worker's files (prometheus-client's multiprocess mode).
"""

from __future__ import annotations

import os
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


def exposition() -> tuple[bytes, str]:
    """The metrics page body and its content type, aggregated over workers when there are
    several."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    from prometheus_client import REGISTRY

    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
