"""The gRPC Predict handler's own cost, in process: our handler (parse, validation, versioning,
metrics, phase histograms, encode) against the minimal server's handler, with the model call
stubbed out so that only the Python around it is measured, on uvloop, without gRPC's transport.

    python -m benchmarks.handler_cost --models-dir /tmp/perf-models [--calls 3000] [--rounds 6]

Each round times ``--calls`` sequential calls of each handler (order reversed every other round)
and prints µs per call; the medians and their difference are what a change to the handler path
should move (the served figures then come from ``benchmarks.serving`` / ``benchmarks.ab_trees``).
``--with-model`` keeps ONNX Runtime's real call in both.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import uvloop

from benchmarks.minimal_server import predictor_for
from benchmarks.serving import latest_version
from contract.protos import predict_pb2
from serving.client import predict_request
from serving.model.config import ModelConfig
from serving.model.manager import ModelManager
from serving.model.service import PredictionService
from serving.runtimes import RuntimeOptions, load_runtime
from serving.runtimes.onnx import OnnxRuntime
from serving.transport import grpc_api

OUTPUTS = ["probabilities", "classes"]


class _Context:
    """What the handler asks of a ``grpc.aio.ServicerContext`` on success."""

    def time_remaining(self) -> float | None:
        return None

    async def abort(self, code: Any, message: str) -> None:
        raise RuntimeError(f"{code}: {message}")


class _FixedSession:
    """An ONNX Runtime session stand-in answering precomputed outputs."""

    def __init__(self, outputs: Mapping[str, np.ndarray]) -> None:
        self._outputs = outputs

    def run(self, names: Sequence[str], feeds: Any, *options: Any) -> list[np.ndarray]:
        return [self._outputs[name] for name in names]


def _minimal_handler(session: Any) -> Callable[[bytes], Awaitable[bytes]]:
    """benchmarks.minimal_server's Predict, bytes in and out."""
    predict = predictor_for(session)

    async def handle(data: bytes) -> bytes:
        request = predict_pb2.PredictRequest.FromString(data)
        return bytes(predict(request, None).SerializeToString())

    return handle


async def _measure(args: argparse.Namespace) -> dict[str, list[float]]:
    base_path = args.models_dir / args.model
    version_dir = latest_version(base_path)
    manager = ModelManager(lambda path: load_runtime("onnx", path, RuntimeOptions()))
    await manager.apply_config([ModelConfig(name=args.model, base_path=base_path)], wait=True)
    # The server's defaults: ONNX requests of up to 4 rows run inline.
    service = PredictionService(manager, ThreadPoolExecutor(1), inline_max_rows=4)
    servicer = grpc_api.PredictionServicer(service, 64 << 20, 30.0)
    ours = grpc_api._handled(servicer.Predict)
    parse = grpc_api._lenient_parser(predict_pb2.PredictRequest)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session: Any = ort.InferenceSession(
        str(version_dir / "model.onnx"), options, providers=["CPUExecutionProvider"]
    )
    runtime = manager.resolve(args.model).runtime
    assert isinstance(runtime, OnnxRuntime)
    if not args.with_model:
        image = np.zeros((1, 28, 28, 1), np.float32)
        outputs = session.run(OUTPUTS, {"images": image})
        session = _FixedSession(dict(zip(OUTPUTS, outputs, strict=True)))
        runtime._session = runtime._small_session = session
    context: Any = _Context()

    async def ours_bytes(data: bytes) -> bytes:
        response = await ours(parse(data), context)
        return bytes(response.SerializeToString())

    handlers = {"ours": ours_bytes, "minimal": _minimal_handler(session)}
    image = np.random.default_rng(0).random((1, 28, 28, 1), dtype=np.float32)
    data = predict_request(args.model, image).SerializeToString()
    timings: dict[str, list[float]] = {name: [] for name in handlers}
    for round_index in range(args.rounds):
        order = list(handlers) if round_index % 2 == 0 else list(reversed(handlers))
        for name in order:
            handle = handlers[name]
            started = time.perf_counter()
            for _ in range(args.calls):
                await handle(data)
            timings[name].append((time.perf_counter() - started) / args.calls * 1e6)
    return timings


def main(argv: list[str] | None = None) -> int:
    """Print each handler's µs per call per round, the medians and their difference."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.handler_cost", description=__doc__)
    p.add_argument("--models-dir", type=Path, default=Path("models"))
    p.add_argument("--model", default="separable")
    p.add_argument("--calls", type=int, default=3000)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--with-model", action="store_true", help="keep ONNX Runtime's real call")
    args = p.parse_args(argv)
    timings = uvloop.run(_measure(args))
    for name, values in timings.items():
        rounds = ", ".join(f"{v:.1f}" for v in values)
        print(f"{name:8s} median {statistics.median(values):6.1f} µs per call  ({rounds})")
    gap = statistics.median(timings["ours"]) - statistics.median(timings["minimal"])
    print(f"ours - minimal: {gap:.1f} µs per call")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
