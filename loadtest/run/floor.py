"""In-process measurement: the runtime called directly, without server, network or serialization.

This is the floor that serving overhead is measured against: one caller running
``Runtime.predict`` back to back on the same MNIST test batches the load test sends. The sweep runs
it in a child process per runtime (``python -m loadtest.run.floor``) so that a runtime's threads
and memory (TensorFlow's especially) never share a process with the load generator or the server.

The floor runs each runtime as the server configures it (issue #21): the settings come from the
same flags the sweep gives the server (``--server-args``, parsed by
:func:`serving.settings.parse_settings`), the runtime options from
:func:`serving.server.runtime_options` (threads sized from the CPU set the child is pinned to,
the same sessions per row count, such as ONNX Runtime's one-thread session up to 8 rows), and a
request runs on the calling thread up to :func:`serving.server.inline_max_rows` rows and on an
inference thread above, as the server's service does. With ``--enable_batching`` the server goes
through its batcher, which the floor does not model. Each measurement records the process's
threads and allowed CPUs, the busy seconds per CPU and the RSS (:mod:`loadtest.run.threads`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loadtest.cli import MAX_BATCH_SIZE, comma_list, ints
from loadtest.plan import interleaved
from loadtest.record import hdr, payload
from loadtest.run.cpu import pin_from_flag, usable_cpus
from loadtest.run.threads import busy_between, cpu_busy, process_threads

MIN_CALLS = 5  # measured calls per cell even when one call outlasts the duration
SAMPLE_BINS = 10  # throughput samples per measurement window (for the report's intervals)


class RepositoryError(RuntimeError):
    """The model repository lacks what a measurement needs."""


def latest_version_dir(models_dir: Path, model: str) -> Path:
    """The highest numbered version directory of ``model`` (what TF Serving's default policy
    serves)."""
    base = models_dir / model
    versions = (
        [p for p in base.iterdir() if p.is_dir() and p.name.isdigit()] if base.is_dir() else []
    )
    if not versions:
        raise RepositoryError(f"no version of {model!r} under {base} (run `python -m export`)")
    return max(versions, key=lambda p: int(p.name))


@dataclass
class ServerWay:
    """How the server would run a request: its runtime options, the rows it runs inline (on the
    event loop thread) and its inference threads for the rest."""

    options: Any  # serving.runtimes.RuntimeOptions
    inline_max_rows: int
    executor: ThreadPoolExecutor | None = None
    max_rows_per_run: int = 0  # --max_rows_per_run: the server's slices of large requests

    def run(self, runtime: Any, signature_name: str, inputs: Any, rows: int) -> Any:
        """``runtime.predict`` where and as the server would run it for ``rows`` rows: inline or
        on an inference thread, in ``--max_rows_per_run`` slices (serving.model.runs, the
        server's own function)."""
        from serving.model.runs import predict_in_runs

        def predict() -> Any:
            return predict_in_runs(runtime, signature_name, inputs, rows, self.max_rows_per_run)

        if rows <= self.inline_max_rows or self.executor is None:
            return predict()
        return self.executor.submit(predict).result()

    def close(self) -> None:
        if self.executor is not None:
            self.executor.shutdown()


def server_way(kind: str, models_dir: Path, device: str, server_args: Sequence[str]) -> ServerWay:
    """The server's configuration of runtime ``kind`` for the flags the sweep gives it."""
    from contract import MODELS_CONFIG_FILENAME
    from serving.server import inline_max_rows, runtime_options
    from serving.settings import SettingsError, parse_settings

    try:
        settings = parse_settings(
            [
                *("--model_config_file", str(models_dir / MODELS_CONFIG_FILENAME)),
                *("--runtime", kind, "--device", device, *server_args),
            ]
        )
    except SettingsError as exc:
        raise RepositoryError(f"the server's flags do not parse: {exc}") from exc
    executor = ThreadPoolExecutor(settings.inference_threads, thread_name_prefix="infer")
    return ServerWay(
        runtime_options(settings), inline_max_rows(settings), executor, settings.max_rows_per_run
    )


class _Caller:
    """``runtime.predict`` on consecutive test-set batches, as the server would call it."""

    def __init__(self, runtime: Any, ring: payload.ImageRing, way: ServerWay | None) -> None:
        self.runtime = runtime
        self.ring = ring
        self.way = way
        self.batch_index = 0

    def call(self, histogram: Any | None) -> tuple[int, int]:
        """One call (its latency into ``histogram`` when given); (correct, images)."""
        from contract import INPUT_NAME, OUTPUT_CLASSES, SIGNATURE_NAME

        images, labels = self.ring.batch(self.batch_index)
        self.batch_index += 1
        inputs = {INPUT_NAME: payload.to_float(images)}
        started = time.perf_counter()
        if self.way is None:
            outputs = self.runtime.predict(SIGNATURE_NAME, inputs)
        else:
            outputs = self.way.run(self.runtime, SIGNATURE_NAME, inputs, len(labels))
        elapsed = time.perf_counter() - started
        if histogram is not None:
            hdr.record_us(histogram, elapsed * 1e6)
        classes = outputs[OUTPUT_CLASSES].astype("int64").reshape(-1)
        return payload.count_correct(classes, labels), len(labels)


@dataclass
class _Window:
    """What the measurement window saw."""

    calls: int = 0
    images: int = 0
    correct: int = 0
    finished: list[float] = field(default_factory=list)  # seconds since it opened, per call
    wall_s: float = 0.0
    cpu_s: float = 0.0
    cpu_busy_s: str = ""  # busy seconds per CPU over the window (threads.busy_between)


def _warm_up(caller: _Caller, warmup_s: float) -> None:
    deadline = time.perf_counter() + warmup_s
    calls = 0
    while time.perf_counter() < deadline or calls < 2:
        caller.call(None)
        calls += 1


def _measure_window(caller: _Caller, histogram: Any, duration_s: float) -> _Window:
    window = _Window()
    busy = cpu_busy()
    cpu_start, wall_start = time.process_time(), time.perf_counter()
    deadline = wall_start + duration_s
    while time.perf_counter() < deadline or window.calls < MIN_CALLS:
        ok, count = caller.call(histogram)
        window.finished.append(time.perf_counter() - wall_start)
        window.correct += ok
        window.images += count
        window.calls += 1
    window.wall_s = time.perf_counter() - wall_start
    window.cpu_s = time.process_time() - cpu_start
    window.cpu_busy_s = busy_between(busy, cpu_busy())
    return window


def measure_model(
    runtime: Any,
    *,
    model: str,
    batch_size: int,
    duration_s: float,
    warmup_s: float,
    test_set: payload.TestSet,
    way: ServerWay | None = None,
    cpu_set: frozenset[int] | None = None,
) -> dict[str, Any]:
    """Call ``runtime.predict`` back to back (as the server would when ``way`` is given);
    latency percentiles, throughput, accuracy, CPU, and this process's threads against
    ``cpu_set`` (default: the CPUs it may use now)."""
    caller = _Caller(runtime, payload.ImageRing(test_set, batch_size), way)
    histogram = hdr.new_histogram()
    _warm_up(caller, warmup_s)
    window = _measure_window(caller, histogram, duration_s)
    wall = window.wall_s
    return {
        "model": model,
        "batch_size": batch_size,
        "requests": window.calls,
        "requests_per_s": window.calls / wall,
        "images_per_s": window.calls * batch_size / wall,
        "accuracy": window.correct / window.images if window.images else math.nan,
        "cpu_percent": 100.0 * window.cpu_s / wall,
        "samples": throughput_samples(window.finished, wall, batch_size),
        "cpu_busy_s": window.cpu_busy_s,
        "threads": process_threads(os.getpid(), cpu_set or frozenset(usable_cpus())),
        **hdr.summarize(histogram).as_dict(),
        "histogram": hdr.encode(histogram),
    }


def throughput_samples(
    finished: list[float], wall_s: float, batch_size: int, bins: int = SAMPLE_BINS
) -> list[float]:
    """Images/s in ``bins`` equal slices of the window, from each call's finishing time; the
    report bootstraps over them. Fewer calls than bins: one sample per call's share instead."""
    if not finished or wall_s <= 0:
        return []
    bins = max(1, min(bins, len(finished)))
    width = wall_s / bins
    counts = [0] * bins
    for t in finished:
        counts[min(int(t / width), bins - 1)] += 1
    return [count * batch_size / width for count in counts]


def _load_all(
    kind: str, models_dir: Path, models: Sequence[str], options: Any
) -> tuple[dict[str, tuple[Any, int]], dict[str, str]]:
    """Every model's latest version loaded at once with the server's ``options`` (closed again
    if one fails); the runtimes with their versions by model, and the runtime's description."""
    from serving.runtimes import load_runtime

    loaded: dict[str, tuple[Any, int]] = {}
    described: dict[str, str] = {}
    try:
        for model in models:
            version_dir = latest_version_dir(models_dir, model)
            runtime = load_runtime(kind, version_dir, options)
            loaded[model] = (runtime, int(version_dir.name))
            described = dict(runtime.describe())
    except BaseException:
        for runtime, _ in loaded.values():
            runtime.close()
        raise
    return loaded, described


def measure_runtime(
    kind: str,
    models_dir: Path,
    models: Sequence[str],
    batch_sizes: Sequence[int],
    *,
    duration_s: float,
    warmup_s: float,
    device: str = "cpu",
    repeats: int = 1,
    server_args: Sequence[str] = (),
) -> dict[str, Any]:
    """Measure every (model, batch size) ``repeats`` times with runtime ``kind`` configured and
    called as the server started with ``server_args`` would; runtime facts and one entry per
    measurement (``repeat`` 0, 1, …), model-major.

    All models are loaded at once and, per batch size, measured in A B B A … order, so that
    drift (thermal, a noisy neighbour) hits every model alike.
    """
    # The CPU set this process was given, read before any runtime starts a thread.
    cpu_set = frozenset(usable_cpus())
    test_set = payload.load_test_set()
    entries = []
    way = server_way(kind, models_dir, device, server_args)
    try:
        loaded, described = _load_all(kind, models_dir, models, way.options)
    except BaseException:
        way.close()
        raise
    try:
        for batch_size in batch_sizes:
            for repeat in range(repeats):
                for model in interleaved(models, repeat):
                    runtime, version = loaded[model]
                    entry = measure_model(
                        runtime,
                        model=model,
                        batch_size=batch_size,
                        duration_s=duration_s,
                        warmup_s=warmup_s,
                        test_set=test_set,
                        way=way,
                        cpu_set=cpu_set,
                    )
                    entries.append({**entry, "version": version, "repeat": repeat})
    finally:
        for runtime, _ in loaded.values():
            runtime.close()
        way.close()
    order = {model: i for i, model in enumerate(models)}
    entries.sort(key=lambda e: (order[e["model"]], e["batch_size"], e["repeat"]))
    return {
        "runtime": kind,
        "device": device,
        "describe": described,
        "cpu_set": sorted(cpu_set),
        "server_args": list(server_args),
        "inline_max_rows": way.inline_max_rows,
        "results": entries,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m loadtest.run.floor``: measure one runtime, write JSON (used by the sweep)."""
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.run.floor",
        description="Measure a runtime in-process (no server) on MNIST test batches.",
    )
    parser.add_argument("--runtime", required=True)
    parser.add_argument("--models-dir", type=Path, required=True)
    parser.add_argument("--models", required=True, help="comma-separated model names")
    parser.add_argument("--batch-sizes", required=True, help="comma-separated batch sizes")
    parser.add_argument("--duration", type=float, required=True, help="seconds per cell")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds per cell")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--output", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--repeats", type=int, default=1, help="measurements per cell")
    parser.add_argument("--cpus", help="pin this process to these CPU ids (comma-separated)")
    parser.add_argument(
        "--server-args", default="", help="the server's extra flags, to configure it the same way"
    )
    args = parser.parse_args(argv)
    pin_from_flag(args.cpus)
    try:
        result = measure_runtime(
            args.runtime,
            args.models_dir,
            list(comma_list(args.models, "--models")),
            list(ints(args.batch_sizes, "--batch-sizes", MAX_BATCH_SIZE)),
            duration_s=args.duration,
            warmup_s=args.warmup,
            device=args.device,
            repeats=max(1, args.repeats),
            server_args=shlex.split(args.server_args),
        )
    except (RepositoryError, RuntimeError, OSError, ValueError) as exc:
        print(f"in-process measurement failed: {exc}", file=sys.stderr)
        return 1
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
