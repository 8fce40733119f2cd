"""The server's own time breakdown through a real server: ``serving_request_phase_seconds``
(decode, queue, infer, encode per model, version, API and runtime) counts every successful
request once per phase, with plausible sums, in one process and across ``--workers``."""

from __future__ import annotations

import time
import urllib.request

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from harness import ServerProcess
from serving.client import ServingClient
from serving.metrics import FLUSH_SECONDS

PHASES = ("decode", "queue", "infer", "encode")
N = 12


def scrape(server: ServerProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    url = f"{server.rest_url}/monitoring/prometheus/metrics"
    with urllib.request.urlopen(url, timeout=10) as reply:
        text = reply.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def phase(samples, suffix: str, api: str, name: str, model: str = "separable") -> float:
    labels = {"model": model, "version": "1", "api": api, "runtime": "onnx", "phase": name}
    return samples.get(
        (f"serving_request_phase_seconds_{suffix}", tuple(sorted(labels.items()))), 0.0
    )


def latency_sum(samples, api: str, model: str = "separable") -> float:
    labels = {"model": model, "version": "1", "api": api}
    return samples.get(("serving_request_latency_seconds_sum", tuple(sorted(labels.items()))), 0.0)


def run_requests(server: ServerProcess, images: np.ndarray, *, new_connections: bool) -> dict:
    """N requests per API; the client-side seconds of each API's requests."""
    spent = {}
    for api, target in (("grpc", server.grpc_target), ("rest", f"127.0.0.1:{server.rest_port}")):
        client = ServingClient(target, api)  # type: ignore[arg-type]
        start = time.perf_counter()
        for _ in range(N):
            if new_connections:  # --workers: the kernel spreads connections, not requests
                client.close()
                client = ServingClient(target, api)  # type: ignore[arg-type]
            assert client.predict("separable", images).classes.shape == (len(images),)
        spent[api] = time.perf_counter() - start
        client.close()
    return spent


def check_phases(before, after, spent, *, queued: bool) -> None:
    for api in ("grpc", "rest"):
        deltas = {p: phase(after, "sum", api, p) - phase(before, "sum", api, p) for p in PHASES}
        for name in PHASES:
            counted = phase(after, "count", api, name) - phase(before, "count", api, name)
            assert counted == N, (api, name, counted)
        assert deltas["decode"] > 0 and deltas["infer"] > 0 and deltas["encode"] > 0, deltas
        assert (deltas["queue"] > 0) if queued else deltas["queue"] == 0, deltas
        # infer (and queue) lie inside the request latency the server measures, all of it
        # inside what the client waited.
        latency = latency_sum(after, api) - latency_sum(before, api)
        assert deltas["infer"] + deltas["queue"] <= latency * 1.0001, (deltas, latency)
        assert sum(deltas.values()) <= spent[api], (deltas, spent[api])


def test_phase_histogram_counts_each_request_once(onnx_server, mnist):
    images = (mnist.x_test[:2].astype(np.float32) / 255.0)[..., None]
    before = scrape(onnx_server)
    spent = run_requests(onnx_server, images, new_connections=False)
    check_phases(before, scrape(onnx_server), spent, queued=False)


def test_failed_requests_are_not_phased(onnx_server):
    before = scrape(onnx_server)
    with ServingClient(onnx_server.grpc_target) as client, pytest.raises(Exception):  # noqa: B017
        client.predict("separable", np.zeros((1, 5), np.float32))
    after = scrape(onnx_server)
    for name in PHASES:
        assert phase(after, "count", "grpc", name) == phase(before, "count", "grpc", name)


def test_phases_across_workers_with_batching(model_repository, mnist):
    images = (mnist.x_test[:3].astype(np.float32) / 255.0)[..., None]
    with ServerProcess(
        model_repository / "models.config", ["--workers=2", "--enable_batching"]
    ) as server:
        before = scrape(server)
        spent = run_requests(server, images, new_connections=True)
        time.sleep(3 * FLUSH_SECONDS)  # every worker has written its deferred observations
        check_phases(before, scrape(server), spent, queued=True)
