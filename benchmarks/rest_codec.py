"""Server time of the REST JSON codec: a ``:predict`` body to input arrays (decode) and the
outputs to the answer's JSON (encode), per batch size, the fast decoder against the reference one
(orjson + ``np.array``, what the server used before), interleaved so both see the same machine.

    python -m benchmarks.rest_codec [--batches 1,32,256] [--repeats 30]

Bodies are the load test's (``loadtest.record.payload.rest_body``: uint8 images as shortest
decimals) and ``json.dumps`` of float32 images (17 significant digits, the worst case for
size); outputs are the MNIST models' (``probabilities`` float32 [B,10], ``classes`` int64 [B]).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import orjson

from loadtest.record.payload import rest_body
from serving.runtimes import Signature, TensorSpec
from serving.transport import rest_json

SIGNATURE = Signature(
    "serving_default",
    {"images": TensorSpec("images", np.dtype(np.float32), (-1, 28, 28, 1))},
    {},
)


def _reference_encode(outputs: Mapping[str, np.ndarray]) -> bytes:
    # The answer as the server wrote it before: .tolist() per output, rows built in Python.
    columns = {k: v.tolist() for k, v in outputs.items()}
    rows = len(next(iter(columns.values())))
    return orjson.dumps(
        {"predictions": [{k: col[i] for k, col in columns.items()} for i in range(rows)]}
    )


def reference(raw: bytes, outputs: Mapping[str, np.ndarray]) -> None:
    """The reference codec: decode, then encode."""
    rest_json.request_inputs(rest_json.parse_json(raw), SIGNATURE)
    _reference_encode(outputs)


def fast(raw: bytes, outputs: Mapping[str, np.ndarray]) -> None:
    """The codec the server uses: decode, then encode."""
    body = rest_json.decode_predict(raw)
    _, row_format = body.inputs(SIGNATURE)
    rest_json.encode_response(outputs, row_format)
    assert body.fast


def _timed(codec: Callable[..., None], *args: Any) -> tuple[float, float]:
    # CPU time of this thread besides wall time: on a shared machine the wall clock also counts
    # the time other processes held the cores.
    wall, cpu = time.perf_counter(), time.thread_time()
    codec(*args)
    return time.perf_counter() - wall, time.thread_time() - cpu


def main(argv: list[str] | None = None) -> int:
    """Print decode + encode milliseconds per codec and body."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.rest_codec", description=__doc__)
    p.add_argument("--batches", default="1,32,256")
    p.add_argument("--repeats", type=int, default=30)
    args = p.parse_args(argv)
    rng = np.random.default_rng(0)
    print(f"{'body':<34} {'codec':<10} {'wall ms p50':>12} {'CPU ms p50':>12} {'min wall':>10}")
    for batch in (int(b) for b in args.batches.split(",")):
        outputs = {
            "probabilities": rng.random((batch, 10), dtype=np.float32),
            "classes": rng.integers(0, 10, batch),
        }
        bodies = {
            "loadtest": rest_body(rng.integers(0, 256, (batch, 28, 28), dtype=np.uint8)),
            "float32 json.dumps": json.dumps(
                {"instances": rng.random((batch, 28, 28, 1), dtype=np.float32).tolist()}
            ).encode(),
        }
        for label, raw in bodies.items():
            codecs: dict[str, Callable[..., Any]] = {"reference": reference, "fast": fast}
            times: dict[str, list[tuple[float, float]]] = {name: [] for name in codecs}
            for _ in range(args.repeats):  # interleaved: A, B, A, B, ...
                for name, codec in codecs.items():
                    times[name].append(_timed(codec, raw, outputs))
            for name, samples in times.items():
                wall = statistics.median(s[0] for s in samples) * 1e3
                cpu = statistics.median(s[1] for s in samples) * 1e3
                best = min(s[0] for s in samples) * 1e3
                title = f"{batch} x {label} ({len(raw) / 1e6:.2f} MB)"
                print(f"{title:<34} {name:<10} {wall:>12.3f} {cpu:>12.3f} {best:>10.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
