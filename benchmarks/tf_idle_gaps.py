"""TensorFlow's call time back to back and after idling: the in-process p50 of a SavedModel's
``serving_default`` at batch 1 and 32, with no pause and with 2 ms of sleep between calls, on
TensorFlow's default function executor and its single-threaded one (blocks alternate A B B A).

    python -m benchmarks.tf_idle_gaps VERSION_DIR INTRA_OP_THREADS INTER_OP_THREADS  (0 = default)

Produced results/cpu-2core/data-plane-2026-11-30b/tf-idle-gaps.txt (there as
``python tf_idle_gaps.py``, run beside its output).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

# (batch, gap in seconds, single-threaded executor) -> each block's p50 in ms
P50s = dict[tuple[int, float, bool], list[float]]


def _caller(version_dir: str, intra: int, inter: int) -> Callable[[np.ndarray, bool], Any]:
    """The SavedModel's ``serving_default`` as a function of (images, single_threaded)."""
    import tensorflow as tf
    from tensorflow.python.eager import context

    # Thread pools are fixed when TensorFlow initialises: set them before loading anything.
    if intra:
        tf.config.threading.set_intra_op_parallelism_threads(intra)
    if inter:
        tf.config.threading.set_inter_op_parallelism_threads(inter)
    function = tf.saved_model.load(version_dir).signatures["serving_default"]

    def call(images: np.ndarray, single_threaded: bool) -> dict[str, Any]:
        if single_threaded:
            with context.function_executor_type("SINGLE_THREADED_EXECUTOR"):
                outputs = function(images=tf.constant(images))
        else:
            outputs = function(images=tf.constant(images))
        return {name: tensor.numpy() for name, tensor in outputs.items()}

    return call


def measure(call: Callable[[np.ndarray, bool], Any], calls: int = 200, warmup: int = 20) -> P50s:
    """Blocks of ``calls`` timed calls per (batch, gap, executor), executors in A B B A order,
    twice: each block's p50."""
    p50s: P50s = {}
    for batch in (1, 32):
        images = np.random.default_rng(0).random((batch, 28, 28, 1), dtype=np.float32)
        for _ in range(warmup):
            call(images, False)
            call(images, True)
        for gap in (0.0, 0.002):
            for _ in range(2):
                for single_threaded in (False, True, True, False):
                    latencies = []
                    for _ in range(calls):
                        start = time.perf_counter()
                        call(images, single_threaded)
                        latencies.append(time.perf_counter() - start)
                        if gap:
                            time.sleep(gap)
                    key = (batch, gap, single_threaded)
                    p50s.setdefault(key, []).append(statistics.median(latencies) * 1e3)
    return p50s


def main(argv: list[str] | None = None) -> int:
    """Print one line per (batch, gap, executor): the median of the blocks' p50s, and each."""
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.tf_idle_gaps", description=__doc__.splitlines()[0]
    )
    p.add_argument("version_dir", help="a SavedModel version directory (models/separable/1)")
    p.add_argument("intra", type=int, help="intra-op threads (0: TensorFlow's default)")
    p.add_argument("inter", type=int, help="inter-op threads (0: TensorFlow's default)")
    p.add_argument("--calls", type=int, default=200, help="timed calls per block")
    p.add_argument("--warmup", type=int, default=20, help="untimed calls per batch size")
    args = p.parse_args(argv)
    call = _caller(args.version_dir, args.intra, args.inter)
    for (batch, gap, single_threaded), values in measure(call, args.calls, args.warmup).items():
        executor = "single " if single_threaded else "default"
        each = ", ".join(f"{value:.3f}" for value in values)
        print(
            f"intra={args.intra} inter={args.inter} batch={batch} gap={gap * 1e3:.0f}ms "
            f"{executor} p50 {statistics.median(values):.3f} ms  ({each})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
