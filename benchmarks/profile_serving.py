"""Sampling profiles of the served paths (py-spy), summarised as where the server's time goes.

    python -m benchmarks.profile_serving --models-dir models --output results/profiles \\
        [--cases grpc1_onnx,rest32_onnx,grpc1_tensorflow] [--duration 10] [--rate 500]

Each case starts a real server (``python -m serving``), attaches ``py-spy record`` to it, drives
closed-loop load from another process (``benchmarks.serving.drive``, concurrency 1) and writes
``<case>.txt`` (collapsed stacks, for speedscope or flamegraph.pl) and ``<case>.summary.txt``:
the share of samples per function, inclusive and self, and per area of the code. py-spy counts
only threads that are running (not idle), so the shares are of the server's CPU time.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.serving import drive, latest_version
from harness import ServerProcess, free_port

CASES = {
    # name: (runtime, api, batch, concurrency); runtime "minimal": benchmarks.minimal_server
    # (on asyncio; "minimal_uvloop" on uvloop)
    "grpc1_onnx": ("onnx", "grpc", 1, 1),
    "rest32_onnx": ("onnx", "rest", 32, 1),
    "grpc1_tensorflow": ("tensorflow", "grpc", 1, 1),
    "rest256_onnx": ("onnx", "rest", 256, 1),
    "grpc1c8_onnx": ("onnx", "grpc", 1, 8),
    "grpc1c8_minimal": ("minimal", "grpc", 1, 8),
    "grpc1c8_minimal_uvloop": ("minimal_uvloop", "grpc", 1, 8),
}

# Areas of the code, first match wins (py-spy frames read "function (file:line)").
AREAS = [
    ("inference: ONNX Runtime", re.compile(r"onnxruntime")),
    ("inference: TensorFlow", re.compile(r"tensorflow|keras")),
    ("REST JSON codec", re.compile(r"rest_json\.py|orjson|simdjson")),
    ("tensor proto codec", re.compile(r"tensor_codec\.py")),
    ("metrics", re.compile(r"prometheus_client|serving/metrics\.py")),
    ("protobuf (de)serialisation", re.compile(r"google/protobuf|_pb2")),
    ("batching", re.compile(r"batching\.py")),
    ("service / manager", re.compile(r"serving/model/")),
    ("gRPC handlers", re.compile(r"grpc_api\.py")),
    ("REST handlers", re.compile(r"rest_api\.py")),
    ("aiohttp", re.compile(r"aiohttp")),
    ("gRPC core (grpc._cython)", re.compile(r"grpc/")),
    # uvloop's loop is compiled: without --native its samples end in uvloop's run().
    ("event loop (asyncio, uvloop)", re.compile(r"asyncio/|uvloop")),
    ("thread pools", re.compile(r"concurrent/futures|threading\.py")),
]


def _area(stack: list[str]) -> str:
    # The innermost frame that belongs to a known area names the sample's area.
    for frame in reversed(stack):
        for name, pattern in AREAS:
            if pattern.search(frame):
                return name
    return "other"


def wait_until_connectable(target: str, timeout_s: float = 60.0) -> None:
    """Block until a gRPC channel to ``target`` is ready."""
    import grpc

    with grpc.insecure_channel(target) as channel:
        grpc.channel_ready_future(channel).result(timeout=timeout_s)


def summarise(collapsed: str, top: int = 25) -> str:
    """Shares of samples per area, per function (inclusive) and per function (self)."""
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    areas: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.splitlines():
        stack_text, _, count_text = line.rpartition(" ")
        if not stack_text:
            continue
        count = int(count_text)
        # The first frame is py-spy's "process/thread" label.
        stack = [f for f in stack_text.split(";")[1:] if f]
        total += count
        if not stack:
            continue
        own[stack[-1]] += count
        for frame in set(stack):
            inclusive[frame] += count
        areas[_area(stack)] += count
    if not total:
        return "no samples\n"
    lines = [f"{total} samples", "", "by area (innermost known frame):"]
    lines += [f"  {100 * n / total:5.1f}%  {name}" for name, n in areas.most_common()]
    lines += ["", f"top {top} functions, inclusive:"]
    lines += [f"  {100 * n / total:5.1f}%  {name}" for name, n in inclusive.most_common(top)]
    lines += ["", f"top {top} functions, self:"]
    lines += [f"  {100 * n / total:5.1f}%  {name}" for name, n in own.most_common(top)]
    return "\n".join(lines) + "\n"


def profile_case(
    name: str,
    config: Path,
    model: str,
    output: Path,
    duration: float,
    rate: int,
    py_spy: str,
    gil: bool = False,
) -> str:
    """Profile one case; the summary text."""
    runtime, api, batch, concurrency = CASES[name]
    with contextlib.ExitStack() as stack:
        if runtime.startswith("minimal"):
            port = free_port()
            version_dir = latest_version(config.parent / model)
            process = stack.enter_context(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "benchmarks.minimal_server",
                        str(version_dir / "model.onnx"),
                        str(port),
                        *(["--uvloop"] if runtime == "minimal_uvloop" else []),
                    ]
                )
            )
            stack.callback(process.terminate)
            target = f"127.0.0.1:{port}"
            wait_until_connectable(target)
            pid = process.pid
        else:
            server = stack.enter_context(ServerProcess(config, [f"--runtime={runtime}"]))
            assert server.process is not None
            target = server.grpc_target if api == "grpc" else server.rest_url
            pid = server.process.pid
        drive(api, target, model, batch, 1, 2.0)  # warm-up, not profiled
        raw = output / f"{name}.txt"
        recorder = subprocess.Popen(
            [
                py_spy,
                "record",
                "--pid",
                str(pid),
                "--rate",
                str(rate),
                "--duration",
                str(int(duration)),
                "--format",
                "raw",
                "--output",
                str(raw),
                "--nonblocking",
                *(["--gil"] if gil else []),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        time.sleep(1.0)  # py-spy attached
        figures = drive(api, target, model, batch, concurrency, duration - 1.5)
        _, errors = recorder.communicate(timeout=duration + 60)
        if recorder.returncode != 0:
            raise RuntimeError(f"py-spy failed: {errors.decode(errors='replace')}")
    head = (
        f"{name}: {api}, {batch}-image requests, concurrency {concurrency}, {runtime}; "
        f"p50 {figures['p50_ms']:.3f} ms, {figures['rps']:.0f} req/s while profiled "
        f"(py-spy {rate} Hz{', GIL holders only' if gil else ''})\n"
    )
    text = head + summarise(raw.read_text())
    (output / f"{name}.summary.txt").write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    """Profile the selected cases and print their summaries."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.profile_serving", description=__doc__)
    p.add_argument("--models-dir", type=Path, default=Path("models"))
    p.add_argument("--model", default="separable")
    p.add_argument("--output", type=Path, default=Path("results/profiles"))
    p.add_argument("--cases", default="grpc1_onnx,rest32_onnx,grpc1_tensorflow")
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--rate", type=int, default=500, help="py-spy samples per second")
    p.add_argument(
        "--gil",
        action="store_true",
        help="sample only the thread holding the GIL (Python CPU time, without threads that "
        "wait for the GIL or sit in native calls)",
    )
    args = p.parse_args(argv)
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(py_spy).exists():
        print("error: py-spy not found (pip install py-spy)", file=sys.stderr)
        return 2
    config = (args.models_dir / "models.config").resolve()
    args.output.mkdir(parents=True, exist_ok=True)
    for name in args.cases.split(","):
        print(
            profile_case(
                name, config, args.model, args.output, args.duration, args.rate, py_spy, args.gil
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
