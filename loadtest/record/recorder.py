"""Per-process measurement state of a Locust run, and the exact merge of all processes' states.

Each Locust process (the local runner, or every worker) keeps one :class:`Recorder`. Samples are
keyed by (model, protocol, batch size). Only requests that start after the warm-up and finish
before the test stops enter the latency histogram and the throughput window; failures and the
accuracy check count over the whole run. A worker sends :meth:`Recorder.snapshot` (cumulative, so
a lost message loses nothing) with every Locust report to the master, which keeps the latest
snapshot per worker and combines them with :func:`merge_snapshots`.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hdrh.histogram import HdrHistogram

from loadtest.record import hdr

SNAPSHOT_KEY = "loadtest_hdr"  # our entry in the data dict of Locust's worker reports


def key_string(model: str, protocol: str, batch_size: int) -> str:
    """``model|protocol|batch`` (msgpack and JSON need string keys)."""
    return f"{model}|{protocol}|{batch_size}"


def parse_key(key: str) -> tuple[str, str, int]:
    """Inverse of :func:`key_string`."""
    model, protocol, batch = key.split("|")
    return model, protocol, int(batch)


@dataclass
class KeyStats:
    """Counters of one (model, protocol, batch size) in one process."""

    histogram: HdrHistogram = field(default_factory=hdr.new_histogram)
    window_requests: int = 0  # successful requests inside the measurement window
    answered: int = 0  # successful requests over the whole run
    failures: int = 0  # failed requests over the whole run (warm-up included)
    images: int = 0  # images whose class was checked
    correct: int = 0


class Recorder:
    """Latency histograms and counters of one process for the current test."""

    def __init__(self) -> None:
        self.reset(warmup_s=0.0)

    def reset(self, warmup_s: float, generation: int = 0) -> None:
        """Start a new test now; the measurement window opens ``warmup_s`` seconds later.

        ``generation`` counts the web UI's "Reset" clicks in the test: snapshots carry it, so the
        master can drop a report a worker sent before it saw the latest reset.
        """
        self.generation = generation
        self.stats: dict[str, KeyStats] = {}
        now_perf, now_wall = time.perf_counter(), time.time()
        self.window_start_perf = now_perf + warmup_s
        self.window_start_wall = now_wall + warmup_s
        self.window_end_perf: float | None = None
        self.window_end_wall: float | None = None

    def stop(self) -> None:
        """Close the measurement window (the test is stopping)."""
        if self.window_end_perf is None:
            self.window_end_perf = time.perf_counter()
            self.window_end_wall = time.time()

    @property
    def stopped(self) -> bool:
        """Whether :meth:`stop` was called for the current test."""
        return self.window_end_perf is not None

    def record(
        self,
        key: str,
        started_perf: float,
        elapsed_s: float,
        *,
        ok: bool,
        images: int = 0,
        correct: int = 0,
    ) -> None:
        """Account one request that started at ``started_perf`` and took ``elapsed_s``."""
        stats = self.stats.get(key)
        if stats is None:
            stats = self.stats[key] = KeyStats()
        if not ok:
            stats.failures += 1
            return
        stats.answered += 1
        stats.images += images
        stats.correct += correct
        in_window = started_perf >= self.window_start_perf and (
            self.window_end_perf is None or started_perf + elapsed_s <= self.window_end_perf
        )
        if in_window:
            stats.window_requests += 1
            hdr.record_us(stats.histogram, elapsed_s * 1e6)

    def snapshot(self) -> dict[str, Any]:
        """Everything measured so far, as plain data (JSON- and msgpack-safe)."""
        end = self.window_end_wall if self.window_end_wall is not None else time.time()
        return {
            "pid": os.getpid(),
            "generation": self.generation,
            "final": self.stopped,
            "window_start": self.window_start_wall,
            "window_end": max(end, self.window_start_wall),
            "keys": {
                key: {
                    "histogram": hdr.encode(s.histogram),
                    "window_requests": s.window_requests,
                    "answered": s.answered,
                    "failures": s.failures,
                    "images": s.images,
                    "correct": s.correct,
                }
                for key, s in self.stats.items()
            },
        }


_COUNTERS = ("window_requests", "answered", "failures", "images", "correct")


@dataclass
class _Totals:
    """One key's counters summed over processes."""

    histograms: list[str] = field(default_factory=list)  # encoded, one per process
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(_COUNTERS, 0))
    requests_per_s: float = 0.0


def _sum_keys(snapshots: Sequence[Mapping[str, Any]]) -> dict[str, _Totals]:
    """Every key's totals; throughput is each process's requests over its own window."""
    keys: dict[str, _Totals] = {}
    for snap in snapshots:
        window_s = float(snap["window_end"]) - float(snap["window_start"])
        for key, entry in snap["keys"].items():
            totals = keys.setdefault(key, _Totals())
            totals.histograms.append(entry["histogram"])
            for counter in _COUNTERS:
                totals.counts[counter] += int(entry[counter])
            if window_s > 0:
                totals.requests_per_s += int(entry["window_requests"]) / window_s
    return keys


def _result(key: str, totals: _Totals) -> dict[str, Any]:
    """The merged result of one key: counts, throughput, accuracy and latency percentiles."""
    model, protocol, batch_size = parse_key(key)
    merged = hdr.merge(totals.histograms)
    counts = totals.counts
    return {
        "model": model,
        "protocol": protocol,
        "batch_size": batch_size,
        "requests": counts["window_requests"],
        "answered": counts["answered"],
        "failures": counts["failures"],
        "requests_per_s": totals.requests_per_s,
        "images_per_s": totals.requests_per_s * batch_size,
        "accuracy": counts["correct"] / counts["images"] if counts["images"] else math.nan,
        **hdr.summarize(merged).as_dict(),
        "histogram": hdr.encode(merged),
    }


def merge_snapshots(snapshots: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Combine the snapshots of all processes into one result per key.

    Histograms are added (exact); throughput is the sum over processes of each one's requests
    divided by its own window, so processes whose windows differ slightly are each counted right.
    """
    snapshots = list(snapshots)
    keys = _sum_keys(snapshots)
    starts = [float(s["window_start"]) for s in snapshots]
    ends = [float(s["window_end"]) for s in snapshots]
    return {
        "processes": len(snapshots),
        "final_snapshots": sum(1 for s in snapshots if s.get("final")),
        "window_start": min(starts) if starts else math.nan,
        "window_end": max(ends) if ends else math.nan,
        "results": [_result(key, totals) for key, totals in sorted(keys.items())],
    }


def worker_output_path(output: Path, pid: int) -> Path:
    """Where a worker process writes its final snapshot next to the master's ``output``."""
    return output.with_name(f"{output.name}.worker-{pid}.json")


def write_json_atomically(path: Path, data: Any) -> None:
    """Write ``data`` as JSON so that a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def read_run_output(output: Path) -> dict[str, Any]:
    """The merged results of a Locust run from the master's ``--hdr-output`` file and the final
    snapshots its local worker processes wrote next to it.

    Locust's master stops listening half a second after telling workers to quit, so on a busy
    machine a worker's last report can miss it; the worker's own file (same pid) then takes the
    place of the last snapshot the master received.
    """
    master = json.loads(output.read_text())
    by_pid = {int(s["pid"]): s for s in master.get("snapshots", [])}
    for path in sorted(output.parent.glob(f"{output.name}.worker-*.json")):
        try:
            snapshot = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        by_pid[int(snapshot["pid"])] = snapshot
    merged = merge_snapshots(by_pid.values())
    merged["settings"] = master.get("settings", {})
    return merged
