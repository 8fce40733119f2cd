"""In-process TensorFlow batch-1 call p50, the runtime's single-threaded executor against TF's
default one, back to back and with 2 ms of sleep between calls (200 calls x 6 alternating blocks).

    python results/cpu-2core/data-plane-2026-11-30c/tf_single_threaded_idle.py VERSION_DIR

Run from the repository root (it imports serving).
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, ".")

from serving.runtimes import RuntimeOptions
from serving.runtimes.tensorflow import TensorFlowRuntime


def main() -> None:
    """Print the p50 of each executor per gap."""
    import tensorflow as tf

    runtime = TensorFlowRuntime(Path(sys.argv[1]), RuntimeOptions())
    image = np.random.default_rng(0).random((1, 28, 28, 1), dtype=np.float32)
    function = runtime._functions["serving_default"]

    def single() -> None:
        runtime.predict("serving_default", {"images": image})

    def default() -> None:
        results = function(images=tf.constant(image))
        {k: v.numpy() for k, v in results.items()}

    calls: dict[str, Callable[[], None]] = {"single": single, "default": default}
    for gap in (0.0, 0.002):
        p50s: dict[str, list[float]] = {name: [] for name in calls}
        for block in range(6):
            for name in calls if block % 2 == 0 else list(reversed(calls)):
                times = []
                for _ in range(200):
                    if gap:
                        time.sleep(gap)
                    started = time.perf_counter()
                    calls[name]()
                    times.append(time.perf_counter() - started)
                p50s[name].append(statistics.median(times) * 1e3)
        medians = ", ".join(f"{k} {statistics.median(v):.3f} ms" for k, v in p50s.items())
        print(f"gap {gap * 1e3:.0f} ms: p50 {medians}")


if __name__ == "__main__":
    main()
