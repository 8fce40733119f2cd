"""HDR histograms and per-process recorders: merging across processes is exact."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loadtest.record import hdr
from loadtest.record.recorder import (
    Recorder,
    key_string,
    merge_snapshots,
    read_run_output,
    worker_output_path,
    write_json_atomically,
)


def _histogram_of(values):
    histogram = hdr.new_histogram()
    for value in values:
        hdr.record_us(histogram, value)
    return histogram


def _same(a, b) -> bool:
    """Bucket-by-bucket equality plus the summary values."""
    return (
        a.get_total_count() == b.get_total_count()
        and all(a.get_count_at_index(i) == b.get_count_at_index(i) for i in range(a.counts_len))
        and a.get_max_value() == b.get_max_value()
        and a.get_min_value() == b.get_min_value()
    )


def test_merge_of_process_histograms_equals_histogram_of_all_samples():
    rng = np.random.default_rng(7)
    # Sub-millisecond to multi-second latencies, as a serving load test sees them.
    samples = np.concatenate(
        [rng.lognormal(mean=5.5, sigma=1.2, size=20_000), rng.uniform(1, 3e6, size=200)]
    )
    processes = rng.integers(0, 4, size=len(samples))
    parts = [_histogram_of(samples[processes == p]) for p in range(4)]
    # Workers ship histograms encoded; the master decodes and adds them.
    merged = hdr.merge(hdr.encode(part) for part in parts)
    everything = _histogram_of(samples)
    assert _same(merged, everything)
    assert hdr.summarize(merged) == hdr.summarize(everything)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.floats(min_value=0.0, max_value=1e8, allow_nan=False), max_size=300),
    st.integers(min_value=1, max_value=5),
    st.randoms(use_true_random=False),
)
def test_merge_is_exact_for_any_split(values, parts, rnd):
    buckets: list[list[float]] = [[] for _ in range(parts)]
    for value in values:
        buckets[rnd.randrange(parts)].append(value)
    merged = hdr.merge([hdr.encode(_histogram_of(b)) for b in buckets])
    assert _same(merged, _histogram_of(values))


def test_record_clamps_out_of_range_values_instead_of_dropping_them():
    histogram = hdr.new_histogram()
    hdr.record_us(histogram, 0.2)
    hdr.record_us(histogram, 1e12)
    assert histogram.get_total_count() == 2
    assert histogram.get_max_value() >= hdr.HIGHEST_US


def test_summary_is_in_milliseconds_with_microsecond_resolution():
    summary = hdr.summarize(_histogram_of([150.0] * 98 + [900.0, 5000.0]))
    assert summary.count == 100
    assert summary.p50_ms == pytest.approx(0.150, abs=0.001)
    assert summary.p99_ms == pytest.approx(0.900, abs=0.001)
    assert summary.max_ms == pytest.approx(5.0, rel=0.001)
    empty = hdr.summarize(hdr.new_histogram())
    assert empty.count == 0 and math.isnan(empty.p50_ms)


def _fill(recorder: Recorder, latencies, key: str) -> None:
    start = recorder.window_start_perf
    for i, latency in enumerate(latencies):
        recorder.record(key, start + i * 1e-6, latency / 1e6, ok=True, images=2, correct=1)


def test_snapshots_of_several_processes_merge_into_one_result():
    key = key_string("separable", "grpc", 2)
    rng = random.Random(3)
    recorders, everything = [], []
    for _ in range(3):
        recorder = Recorder()
        latencies = [rng.uniform(50, 5000) for _ in range(rng.randint(100, 400))]
        _fill(recorder, latencies, key)
        recorder.record(key, recorder.window_start_perf, 0.001, ok=False)
        recorder.stop()
        everything += latencies
        recorders.append(recorder)
    # Every process counts its requests over its own window.
    for recorder in recorders:
        recorder.window_end_wall = recorder.window_start_wall + 2.0
    merged = merge_snapshots(json.loads(json.dumps(r.snapshot())) for r in recorders)
    (result,) = merged["results"]
    assert (result["model"], result["protocol"], result["batch_size"]) == ("separable", "grpc", 2)
    assert result["requests"] == len(everything)
    assert result["failures"] == 3
    assert result["accuracy"] == pytest.approx(0.5)
    assert result["requests_per_s"] == pytest.approx(len(everything) / 2.0)
    assert result["images_per_s"] == pytest.approx(2 * len(everything) / 2.0)
    assert _same(hdr.decode(result["histogram"]), _histogram_of(everything))
    assert merged["final_snapshots"] == 3


def test_samples_outside_the_window_count_for_accuracy_but_not_latency():
    recorder = Recorder()
    recorder.reset(warmup_s=100.0)  # the window opens far in the future
    key = key_string("standard", "rest", 1)
    recorder.record(key, recorder.window_start_perf - 1.0, 0.001, ok=True, images=1, correct=1)
    stats = recorder.stats[key]
    assert (stats.answered, stats.window_requests, stats.images) == (1, 0, 1)
    assert stats.histogram.get_total_count() == 0


def test_worker_files_replace_the_snapshots_the_master_received(tmp_path):
    key = key_string("standard", "grpc", 1)
    early, final = Recorder(), Recorder()
    _fill(early, [100.0] * 10, key)
    _fill(final, [100.0] * 50, key)
    final.stop()
    early_snapshot, final_snapshot = early.snapshot(), final.snapshot()
    early_snapshot["pid"] = final_snapshot["pid"] = 4242  # the same worker, seen twice
    other = Recorder()
    _fill(other, [200.0] * 5, key)
    other_snapshot = other.snapshot()
    other_snapshot["pid"] = 4343
    output = tmp_path / "cell_hdr.json"
    write_json_atomically(output, {"snapshots": [early_snapshot, other_snapshot], "settings": {}})
    write_json_atomically(worker_output_path(output, 4242), final_snapshot)
    (result,) = read_run_output(output)["results"]
    assert result["requests"] == 55
