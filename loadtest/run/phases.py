"""The server's own time per request phase, from its Prometheus histogram.

The server observes ``serving_request_phase_seconds`` (labels ``model, version, api, runtime,
phase``; phase ``decode``, ``queue``, ``infer`` or ``encode``) once per successful request and
phase. The sweep scrapes ``/monitoring/prometheus/metrics`` before and after a cell; the mean
time per request of a phase over the cell is ``Δ_sum / Δ_count``, summed over versions and
runtimes of the cell's model and API.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from loadtest.cells import SERVER_PHASES

PHASE_METRIC = "serving_request_phase_seconds"
METRICS_PATH = "/monitoring/prometheus/metrics"

# (model, api, phase) → (sum of seconds, count)
Totals = dict[tuple[str, str, str], tuple[float, float]]


def parse_phase_totals(exposition: str) -> Totals:
    """Cumulative ``_sum`` and ``_count`` of the phase histogram per (model, api, phase)."""
    sums: dict[tuple[str, str, str], float] = {}
    counts: dict[tuple[str, str, str], float] = {}
    for family in text_string_to_metric_families(exposition):
        if family.name != PHASE_METRIC:
            continue
        for sample in family.samples:
            labels = sample.labels
            if not {"model", "api", "phase"} <= set(labels):
                continue
            key = (labels["model"], labels["api"], labels["phase"])
            if sample.name == f"{PHASE_METRIC}_sum":
                sums[key] = sums.get(key, 0.0) + sample.value
            elif sample.name == f"{PHASE_METRIC}_count":
                counts[key] = counts.get(key, 0.0) + sample.value
    return {key: (sums.get(key, 0.0), counts[key]) for key in counts}


def scrape(rest_url: str, timeout_s: float = 5.0) -> Totals | None:
    """The phase totals of a running server (``None`` when its metrics cannot be read)."""
    try:
        with urllib.request.urlopen(rest_url + METRICS_PATH, timeout=timeout_s) as response:
            text = response.read().decode("utf-8", errors="replace")
    except (OSError, urllib.error.URLError, ValueError):
        return None
    return parse_phase_totals(text)


@dataclass(frozen=True)
class PhaseMeans:
    """Mean milliseconds per request of each phase over a window (``None``: not observed)."""

    decode: float | None
    queue: float | None
    infer: float | None
    encode: float | None

    def columns(self) -> dict[str, float | None]:
        """As results columns: ``server_decode_ms`` …"""
        return {f"server_{phase}_ms": getattr(self, phase) for phase in SERVER_PHASES}


NO_PHASES = PhaseMeans(None, None, None, None)


def phase_means(
    before: Mapping[tuple[str, str, str], tuple[float, float]] | None,
    after: Mapping[tuple[str, str, str], tuple[float, float]] | None,
    model: str,
    api: str,
) -> PhaseMeans:
    """Mean ms per request of each phase of ``model`` over ``api`` between two scrapes."""
    if before is None or after is None:
        return NO_PHASES
    means: dict[str, float | None] = {}
    for phase in SERVER_PHASES:
        key = (model, api, phase)
        total_after, count_after = after.get(key, (0.0, 0.0))
        total_before, count_before = before.get(key, (0.0, 0.0))
        requests = count_after - count_before
        means[phase] = 1000.0 * (total_after - total_before) / requests if requests > 0 else None
    return PhaseMeans(**means)
