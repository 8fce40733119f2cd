"""The deferred histograms of serving.metrics expose exactly what ``Histogram.observe`` would:
same buckets (a value on a bound counts in that bound's bucket), same sum and count."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram, generate_latest

from serving import metrics

VALUES = [0.0, 0.0001, 0.00010001, 0.0003, 0.001, 0.0015, 0.004, 0.7, 5.0, 12.0, 1e-9]


def _histogram(registry: CollectorRegistry, name: str) -> Histogram:
    return Histogram(name, "test", ["phase"], buckets=metrics._LATENCY_BUCKETS, registry=registry)


def _body(registry: CollectorRegistry, name: str) -> list[str]:
    lines = generate_latest(registry).decode().replace(name, "h").splitlines()
    return [line for line in lines if not line.startswith("# ") and "_created" not in line]


def test_deferred_histogram_matches_observe():
    direct_registry, deferred_registry = CollectorRegistry(), CollectorRegistry()
    direct = _histogram(direct_registry, "direct").labels("x")
    deferred_parent = _histogram(deferred_registry, "deferred")
    deferred = metrics._DeferredHistogram(deferred_parent.labels("x"))
    for round_ in range(3):
        for value in VALUES[round_:]:
            direct.observe(value)
            deferred.observe(value)
        deferred.flush()
        assert _body(direct_registry, "direct") == _body(deferred_registry, "deferred")
    deferred.flush()  # nothing pending: no change
    assert _body(direct_registry, "direct") == _body(deferred_registry, "deferred")


def test_phases_reach_the_exposition_with_every_scrape():
    times = metrics.PhaseTimes(decode=0.0002, queue=0.0, infer=0.003, encode=0.0001)

    def count(text: str, phase: str) -> float:
        prefix = (
            'serving_request_phase_seconds_count{api="grpc",model="m-test",phase="'
            f'{phase}",runtime="toy",version="7"}}'
        )
        line = next((row for row in text.splitlines() if row.startswith(prefix)), None)
        return 0.0 if line is None else float(line.rsplit(" ", 1)[1])

    before = metrics.exposition()[0].decode()
    for _ in range(5):
        metrics.observe_phases("m-test", "7", "grpc", "toy", times)
    after = metrics.exposition()[0].decode()  # exposition flushes first
    for phase in metrics.PHASES:
        assert count(after, phase) == count(before, phase) + 5
