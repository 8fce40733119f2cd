"""Could a cheaper ONNX Runtime call pay for the gRPC handler's extra Python (issue #11 item 3)?
The ways onnxruntime's Python API offers to run the separable model on one image, timed in
alternating rounds on a one-thread session like the server's small-batch session.

    python -m benchmarks.ort_call_variants MODEL_ONNX [--rounds 6] [--calls 3000]

``iobinding, outputs bound per call`` is what a server must do (every answer needs buffers of
its own); ``iobinding, outputs bound once`` reuses one pair of output arrays for every call,
which a server with requests in flight on several threads cannot do safely.

Produced results/cpu-2core/data-plane-2026-11-30d/ort-call-variants.txt with the timing loop of
commit 24ef766 (it was then a script there, with its own loop); since f1bf007 the loop is
``benchmarks.rest_decode_floor.alternating_rounds``, which adds one untimed call per step and
round (results/README.md).
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable
from typing import Any

import numpy as np
import onnxruntime as ort

from benchmarks.rest_decode_floor import alternating_rounds

NAMES = ["probabilities", "classes"]


def _session(path: str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def variants(path: str) -> dict[str, Callable[[], Any]]:
    """Each way of running the model on one image, ready to call."""
    image = np.random.default_rng(0).random((1, 28, 28, 1), dtype=np.float32)
    feeds = {"images": image}
    plain, with_options, per_call, once, ort_values = (_session(path) for _ in range(5))
    run_options = ort.RunOptions()
    per_call_binding = per_call.io_binding()
    once_binding = once.io_binding()
    probabilities = np.empty((1, 10), np.float32)
    classes = np.empty((1,), np.int64)
    for name, array in (("probabilities", probabilities), ("classes", classes)):
        once_binding.bind_output(name, "cpu", 0, array.dtype, array.shape, array.ctypes.data)
    image_value = ort.OrtValue.ortvalue_from_numpy(image)

    def bound_per_call() -> tuple[np.ndarray, np.ndarray]:
        out_p = np.empty((1, 10), np.float32)
        out_c = np.empty((1,), np.int64)
        per_call_binding.bind_cpu_input("images", image)
        for name, array in (("probabilities", out_p), ("classes", out_c)):
            per_call_binding.bind_output(
                name, "cpu", 0, array.dtype, array.shape, array.ctypes.data
            )
        per_call.run_with_iobinding(per_call_binding)
        return out_p, out_c

    def bound_once() -> tuple[np.ndarray, np.ndarray]:
        once_binding.bind_cpu_input("images", image)
        once.run_with_iobinding(once_binding)
        return probabilities, classes

    return {
        "run (the minimal server's call)": lambda: plain.run(NAMES, feeds),
        "run with RunOptions (the server's call)": lambda: with_options.run(
            NAMES, feeds, run_options
        ),
        "iobinding, outputs bound per call": bound_per_call,
        "iobinding, outputs bound once": bound_once,
        "run_with_ort_values": lambda: ort_values.run_with_ort_values(
            NAMES, {"images": image_value}
        ),
    }


def main(argv: list[str] | None = None) -> int:
    """Print each variant's median µs per call over the rounds."""
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.ort_call_variants", description=__doc__.splitlines()[0]
    )
    p.add_argument("model", help="model.onnx of the separable model")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--calls", type=int, default=3000)
    p.add_argument("--warmup", type=int, default=300, help="untimed calls of each variant")
    args = p.parse_args(argv)
    calls = variants(args.model)
    for call in calls.values():  # warm-up
        for _ in range(args.warmup):
            call()
    timings = alternating_rounds(calls, args.rounds, args.calls)
    for name, values in timings.items():
        rounds = ", ".join(f"{v * 1e6:.1f}" for v in values)
        print(f"{name:42s} median {statistics.median(values) * 1e6:6.1f} µs  ({rounds})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
