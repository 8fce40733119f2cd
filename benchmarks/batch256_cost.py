"""Where the served batch-256 images/s go (issue #21, item 8): the server's pinned core
profiled with ``perf`` while it serves gRPC, beside the in-process floor profiled the same way,
each as CPU microseconds per request (per call for the floor) by library.

    python -m benchmarks.batch256_cost --models-dir models [--runtimes onnx,openvino,...]
        [--models separable,standard] [--batch 256] [--concurrency 8] [--seconds 6]
        [--repeats 2] [--server-cpu 0] [--generator-cpu 1]

For each runtime and model, the floor (the runtime loaded and called as the server would,
``loadtest.run.floor.server_way``, in a process pinned to the server's CPU) and the server
(``python -m serving`` pinned there, driven from the generator's CPU by
``benchmarks.serving.drive``) alternate A B B A. ``perf record -C <server cpu>`` samples
everything that runs on that core (the server's threads, the kernel's work for its sockets), so
the difference between the two columns is what serving adds to the core per request, library
by library, and the ratio of the two rates is the served ÷ in-process figure of item 8.
``--minimal`` adds, for onnx, the least a Python grpc.aio server does for the same request
(``benchmarks.minimal_server``: decode, ONNX Runtime inline, encode) as a third column.
Needs Linux ``perf`` and root (or ``perf_event_paranoid`` <= 0 for CPU-wide sampling).
OpenVINO's kernels and oneDNN's (TensorFlow's) are compiled at run time into anonymous memory,
which perf names ``[unknown]``: they count under ``other``.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

FREQUENCY_HZ = 1999
_MODULE = "benchmarks.batch256_cost"

# Libraries grouped by what they do, first match wins; anything else is "other".
GROUPS = [
    ("runtime", re.compile(r"onnxruntime|openvino|tensorflow|_pywrap|tflite|litert|xnnpack")),
    ("gRPC core", re.compile(r"cygrpc|grpc")),
    ("protobuf", re.compile(r"_message\.abi3|protobuf")),
    ("Python interpreter", re.compile(r"libpython|python3|_asyncio|uvloop|loop\.cpython")),
    ("numpy", re.compile(r"_multiarray|numpy")),
    ("libc (memcpy, malloc)", re.compile(r"libc\.so|libc-|ld-linux|libstdc\+\+|libgcc|libm\.")),
    ("kernel (sockets, scheduling)", re.compile(r"\[kernel|\[vdso")),
]


def group_of(library: str) -> str:
    """The group of a shared object's name (``GROUPS``), else ``other``."""
    for name, pattern in GROUPS:
        if pattern.search(library):
            return name
    return "other"


def samples_by_group(report: str) -> dict[str, int]:
    """Samples per library group from ``perf report --sort comm,dso -n --stdio`` text (columns:
    overhead %, samples, command, object); the idle task (``swapper``) is left out."""
    counts: collections.Counter[str] = collections.Counter()
    for line in report.splitlines():
        fields = line.split(None, 3)
        if len(fields) < 4 or not fields[0].endswith("%"):
            continue
        try:
            samples = int(fields[1])
        except ValueError:
            continue
        if fields[2].startswith("swapper"):
            continue
        counts[group_of(fields[3])] += samples
    return dict(counts)


def _perf(cpu: int, seconds: float, output: Path) -> dict[str, int]:
    subprocess.run(
        [
            *("perf", "record", "-F", str(FREQUENCY_HZ), "-C", str(cpu), "-o", str(output)),
            *("--", "sleep", str(seconds)),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    report = subprocess.run(
        [
            *("perf", "report", "-i", str(output), "--no-children", "--sort", "comm,dso"),
            *("-n", "--stdio"),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return samples_by_group(report)


def floor_child(runtime: str, models_dir: Path, model: str, batch: int, seconds: float) -> None:
    """The floor's process: the runtime as the server configures it, called in a loop on fresh
    arrays; prints ``ready`` after its warm-up, then ``rate <calls per second>``."""
    import numpy as np

    from contract import INPUT_NAME, SIGNATURE_NAME
    from loadtest.run.floor import latest_version_dir, server_way
    from serving.runtimes import load_runtime

    way = server_way(runtime, models_dir, "cpu", [])
    loaded = load_runtime(runtime, latest_version_dir(models_dir, model), way.options)
    images = np.random.default_rng(0).random((batch, 28, 28, 1), dtype=np.float32)

    def call() -> None:
        # A fresh array per call, as a request's tensor is (the copy is counted, under numpy).
        way.run(loaded, SIGNATURE_NAME, {INPUT_NAME: images.copy()}, batch)

    warm_until = time.perf_counter() + 2.0
    while time.perf_counter() < warm_until:
        call()
    print("ready", flush=True)
    calls, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        call()
        calls += 1
    print(f"rate {calls / (time.perf_counter() - started)}", flush=True)
    way.close()


def _profile_floor(args: argparse.Namespace, runtime: str, model: str, out: Path) -> dict[str, Any]:
    from loadtest.run.cpu import pinned

    with pinned({args.server_cpu}):
        child = subprocess.Popen(
            [
                *(sys.executable, "-m", _MODULE, "--floor-child", runtime),
                *("--models-dir", str(args.models_dir), "--models", model),
                *("--batch", str(args.batch), "--seconds", str(args.seconds + 1.5)),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
    assert child.stdout is not None
    if child.stdout.readline().strip() != "ready":
        raise RuntimeError(f"the floor for {runtime}/{model} did not start")
    time.sleep(0.5)
    groups = _perf(args.server_cpu, args.seconds, out)
    rate = float(child.stdout.readline().split()[1])
    child.wait()
    return {"rate": rate, "groups": groups}


def _profile_served(
    args: argparse.Namespace, runtime: str, model: str, out: Path, minimal: bool = False
) -> dict[str, Any]:
    from benchmarks.serving import _minimal_server, drive, latest_version
    from harness import ServerProcess
    from loadtest.run.cpu import pinned

    with contextlib.ExitStack() as stack:
        # Only the server starts on the server's CPU (it and its threads inherit it); this
        # process and the load stay on the generator's.
        with pinned({args.server_cpu}):
            if minimal:
                # The yardstick: grpc.aio decoding tensor_content, ONNX Runtime inline.
                onnx = latest_version(args.models_dir / model) / "model.onnx"
                target = stack.enter_context(_minimal_server(onnx, []))
            else:
                flags = ["--runtime", runtime, "--log_level", "warning"]
                server = ServerProcess(args.models_dir / "models.config", flags)
                target = stack.enter_context(server).grpc_target
        drive("grpc", target, model, args.batch, args.concurrency, 2.0)  # warm
        result: dict[str, Any] = {}
        # The load runs a little longer than perf on both sides (the client process's start
        # included), so perf sees only steady load.
        load = threading.Thread(
            target=lambda: result.update(
                drive("grpc", target, model, args.batch, args.concurrency, args.seconds + 3.0)
            )
        )
        load.start()
        time.sleep(2.0)
        groups = _perf(args.server_cpu, args.seconds, out)
        load.join()
    return {"rate": result["rps"], "groups": groups, "errors": result["errors"]}


def _us_per_request(measured: dict[str, Any], seconds: float) -> dict[str, float]:
    # Samples / frequency / seconds is the core's busy share; / rate, CPU seconds per request.
    return {
        group: samples / FREQUENCY_HZ / seconds / measured["rate"] * 1e6
        for group, samples in measured["groups"].items()
    }


def _table(runtime: str, model: str, measured: dict[str, list[dict[str, Any]]], args: Any) -> str:
    names = [g for g, _ in GROUPS] + ["other"]
    columns = list(measured)  # floor, served[, minimal]
    floors = measured["floor"]
    lines = [
        f"{runtime} / {model}, batch {args.batch}, {args.concurrency} users, "
        f"{len(floors)} alternating repeats (medians)"
    ]
    for column in columns[1:]:
        pairs = [s["rate"] / f["rate"] for f, s in zip(floors, measured[column], strict=True)]
        floor_ips = statistics.median(m["rate"] for m in floors) * args.batch
        column_ips = statistics.median(m["rate"] for m in measured[column]) * args.batch
        lines.append(
            f"  images/s: in-process {floor_ips:,.0f}, {column} {column_ips:,.0f}"
            f"; {column} / in-process {statistics.median(pairs):.2f}x "
            f"(repeats: {', '.join(f'{p:.2f}' for p in pairs)})"
        )
    header = "".join(f"{c:>9}" for c in columns)
    lines.append(f"  {'CPU us per request on the server core':<38}{header}{'added':>9}")
    us = {c: [_us_per_request(m, args.seconds) for m in measured[c]] for c in columns}
    totals = dict.fromkeys(columns, 0.0)
    for name in names:
        values = {c: statistics.median(u.get(name, 0.0) for u in us[c]) for c in columns}
        for c in columns:
            totals[c] += values[c]
        if any(values.values()):
            cells = "".join(f"{values[c]:9.0f}" for c in columns)
            lines.append(f"  {name:<38}{cells}{values['served'] - values['floor']:+9.0f}")
    cells = "".join(f"{totals[c]:9.0f}" for c in columns)
    lines.append(f"  {'total':<38}{cells}{totals['served'] - totals['floor']:+9.0f}")
    lines.append("  (added: served - floor)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Profile floor and server per runtime and model; print the tables."""
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.batch256_cost", description=__doc__.splitlines()[0]
    )
    p.add_argument("--models-dir", type=Path, default=Path("models"))
    p.add_argument("--runtimes", default="onnx,openvino,litert,tensorflow")
    p.add_argument("--models", default="separable,standard")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--seconds", type=float, default=6.0, help="profiled seconds per measurement")
    p.add_argument("--repeats", type=int, default=2, help="A B B A pairs of floor and server")
    p.add_argument("--server-cpu", type=int, default=0)
    p.add_argument("--generator-cpu", type=int, default=1)
    p.add_argument(
        "--minimal",
        action="store_true",
        help="for onnx, also the yardstick server (benchmarks.minimal_server) in its column",
    )
    p.add_argument("--floor-child", metavar="RUNTIME", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.floor_child:
        floor_child(args.floor_child, args.models_dir, args.models, args.batch, args.seconds)
        return 0
    from loadtest.run.cpu import pinned

    # This process and the load's client processes (spawned from it) on the generator's CPU;
    # its own CPU set back afterwards (the tests call main in the test process).
    with pinned({args.generator_cpu}), tempfile.TemporaryDirectory(prefix="batch256-") as work:
        _measure_all(args, Path(work))
    return 0


def _measure_all(args: argparse.Namespace, work: Path) -> None:
    print(
        f"CPU {args.server_cpu}: server or floor (perf -C {args.server_cpu}, {FREQUENCY_HZ} Hz); "
        f"CPU {args.generator_cpu}: load generator",
        flush=True,
    )
    for runtime in args.runtimes.split(","):
        for model in args.models.split(","):
            kinds = [
                "floor",
                "served",
                *(["minimal"] if args.minimal and runtime == "onnx" else []),
            ]
            measured: dict[str, list[dict[str, Any]]] = {k: [] for k in kinds}
            for i in range(args.repeats):
                for what in kinds if i % 2 == 0 else kinds[::-1]:
                    out = work / f"{runtime}-{model}-{what}-{i}.perf"
                    if what == "floor":
                        measured[what].append(_profile_floor(args, runtime, model, out))
                    else:
                        measured[what].append(
                            _profile_served(args, runtime, model, out, minimal=what == "minimal")
                        )
            print(_table(runtime, model, measured, args), flush=True)


if __name__ == "__main__":
    sys.exit(main())
