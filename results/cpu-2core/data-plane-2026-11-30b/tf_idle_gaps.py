"""TensorFlow's call time back to back and after idling: the in-process p50 of a SavedModel's
``serving_default`` at batch 1 and 32, with no pause and with 2 ms of sleep between calls, on
TensorFlow's default function executor and its single-threaded one (blocks alternate A B B A).

    python tf_idle_gaps.py VERSION_DIR INTRA_OP_THREADS INTER_OP_THREADS   (0 = TF's default)
"""

from __future__ import annotations

import statistics
import sys
import time
from typing import Any

import numpy as np
import tensorflow as tf
from tensorflow.python.eager import context


def main() -> None:
    """Print one line per (batch, gap, executor): the median of the blocks' p50s, and each."""
    version_dir, intra, inter = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
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

    p50s: dict[tuple[int, float, bool], list[float]] = {}
    for batch in (1, 32):
        images = np.random.default_rng(0).random((batch, 28, 28, 1), dtype=np.float32)
        for _ in range(20):
            call(images, False)
            call(images, True)
        for gap in (0.0, 0.002):
            for _ in range(2):
                for single_threaded in (False, True, True, False):
                    latencies = []
                    for _ in range(200):
                        start = time.perf_counter()
                        call(images, single_threaded)
                        latencies.append(time.perf_counter() - start)
                        if gap:
                            time.sleep(gap)
                    key = (batch, gap, single_threaded)
                    p50s.setdefault(key, []).append(statistics.median(latencies) * 1e3)
    for (batch, gap, single_threaded), values in p50s.items():
        executor = "single " if single_threaded else "default"
        each = ", ".join(f"{value:.3f}" for value in values)
        print(
            f"intra={intra} inter={inter} batch={batch} gap={gap * 1e3:.0f}ms {executor} "
            f"p50 {statistics.median(values):.3f} ms  ({each})"
        )


if __name__ == "__main__":
    main()
