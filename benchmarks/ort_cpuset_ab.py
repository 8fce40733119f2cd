"""ONNX Runtime in a pinned process: its default pool (``intra_op_num_threads = 0``, which pins
its threads one per core, outside the process's CPU set) against the pool the runtime now builds
(``serving.runtimes.cpuset.threads_or_cpu_count``: one thread per CPU of the set, no affinity).

Run it pinned, with and without a busy loop on the other CPU (a load generator's place):

    taskset -c 0 python -m benchmarks.ort_cpuset_ab --model models/standard/1/model.onnx
    taskset -c 0 python -m benchmarks.ort_cpuset_ab --model ... --hog-cpu 1

Prints the median ms per call of each session over alternating rounds, and where each session's
threads may run.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
from pathlib import Path

import numpy as np
import onnxruntime as ort

from benchmarks.rest_decode_floor import alternating_rounds
from serving.runtimes.cpuset import allowed_cpus, thread_affinities, threads_or_cpu_count


def _session(path: Path, intra_op_threads: int) -> ort.InferenceSession:
    # The session options of serving/runtimes/onnx.py, but for the thread count.
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def _hog(cpu: int) -> None:
    os.sched_setaffinity(0, {cpu})
    while True:
        pass


def main(argv: list[str] | None = None) -> int:
    """Measure both sessions; print one JSON object."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ort_cpuset_ab", description=__doc__)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--hog-cpu", type=int, default=None, help="keep this CPU busy meanwhile")
    args = parser.parse_args(argv)
    images = np.random.default_rng(0).random((args.batch, 28, 28, 1), dtype=np.float32)
    hog = None
    if args.hog_cpu is not None:
        hog = multiprocessing.Process(target=_hog, args=(args.hog_cpu,), daemon=True)
        hog.start()
    try:
        before_threads = set(t.tid for t in thread_affinities(os.getpid()))
        sessions = {
            "default (intra_op_num_threads=0)": _session(args.model, 0),
            f"cpu set (intra_op_num_threads={threads_or_cpu_count(0)})": _session(
                args.model, threads_or_cpu_count(0)
            ),
        }
        steps = {
            name: (lambda s=session: s.run(None, {"images": images}))
            for name, session in sessions.items()
        }
        per_round = alternating_rounds(steps, args.rounds, args.calls)
    finally:
        if hog is not None:
            hog.kill()
    threads = [t for t in thread_affinities(os.getpid()) if t.tid not in before_threads]
    result = {
        "process_cpus": sorted(allowed_cpus()),
        "hog_cpu": args.hog_cpu,
        "batch": args.batch,
        "rounds": args.rounds,
        "calls_per_round": args.calls,
        "ms_per_call_median": {k: statistics.median(v) * 1e3 for k, v in per_round.items()},
        "ms_per_call_rounds": {k: [round(x * 1e3, 3) for x in v] for k, v in per_round.items()},
        "new_threads_cpus": sorted(sorted(t.cpus) for t in threads),
        "loadavg": os.getloadavg(),
    }
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
