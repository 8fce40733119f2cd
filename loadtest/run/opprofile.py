"""Per-operator profile: where each model's time goes, by layer kind, and the MAC rate achieved.

``python -m loadtest.run.opprofile`` runs a model with ONNX Runtime's own profiler
(``SessionOptions.enable_profiling``), reads back the JSON trace it writes, and sums the kernel
time of every node per layer kind: ``standard conv``, ``depthwise``, ``pointwise``, ``dense``,
``pooling`` and ``rest`` (reshapes, layout reorders, softmax, argmax...), plus ``call overhead``:
the time of a whole ``run()`` call that no kernel accounts for (input/output binding, scheduling).
Multiply-adds per kind come from the unoptimised graph (shape inference: a convolution costs
``C_out·H_out·W_out·(C_in/group)·k_h·k_w`` per image, a MatMul/Gemm ``K·N``), so
``gmacs_per_s = macs / ms`` is the arithmetic rate each kind of layer achieves.

Every profiler runs the model as the server started with the sweep's ``--server-args`` would
(:func:`loadtest.run.floor.server_way`): its runtime options, threads sized from the CPU set the
process is given (ONNX Runtime's default pool would pin a thread to every core of the machine,
outside it) and calls of more than ``--max_rows_per_run`` rows in runs of that many rows
(``serving.model.runs.run_slices``, as the server's ``predict_in_runs``): a profiled call is
the server's call, so its sum compares with the in-process floor. The ONNX session is opened as
the server's ONNX runtime opens it (all graph optimisations, no thread spinning, one intra-op
thread up to :data:`serving.runtimes.onnx.SMALL_BATCH_ROWS` rows).

The TensorFlow runtime is profiled with ``tf.profiler`` around the runtime's own ``predict``
calls, on TF's default executor at every batch size (the server's single-threaded executor for
small batches runs the same kernels, but the profiler records none of them); TensorFlow's
profiler plugin turns the XPlane trace into its "framework op stats" (self time per op), and op
types map to kinds (``DepthwiseConv2dNative``: depthwise; a convolution in a layer that also has
a depthwise one: pointwise; other convolutions: standard; ``MatMul``: dense;
``MaxPool``/``AvgPool``: pooling). Its multiply-adds come from the same version's ONNX graph (the
same weights). OpenVINO is profiled from its CPU plugin's per-node performance counters
(:mod:`loadtest.run.opprofile_ov`). LiteRT's per-operator profiler is not reachable from Python:
its rows are whole-model times only (the in-process floor), and the sweep records
:data:`LITERT_NOTE`. The torch runtime is not profiled; the sweep records that.

Rows (``opprofile.csv``): ``runtime, device, model, batch_size, op_kind, ms, macs, gmacs_per_s``
where ``ms`` is the mean time per call and ``macs`` the multiply-adds per call (whole batch).
"""

from __future__ import annotations

import argparse
import csv
import json
import shlex
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypedDict, get_type_hints

import numpy as np

from loadtest.cli import MAX_BATCH_SIZE, comma_list, ints
from loadtest.run.cpu import pin_from_flag

PROFILED_RUNTIMES = ("onnx", "tensorflow", "openvino")
# LiteRT's per-operator profiler (the C++ benchmark tool's op profiling) is not reachable from
# Python: ai_edge_litert's Interpreter exposes no profiler. Its times are whole-model ones.
LITERT_NOTE = (
    "litert: no per-operator profile: LiteRT's op profiler is not reachable from Python "
    "(ai_edge_litert's Interpreter exposes none); whole-model times only (the in-process floor)"
)
DEFAULT_BATCH_SIZES = (1, 32, 256)
OP_KINDS = (
    "standard conv",
    "depthwise",
    "pointwise",
    "dense",
    "pooling",
    "rest",
    "call overhead",
)
OPPROFILE_CSV = "opprofile.csv"
MIN_CALLS = 5
_DENSE_OPS = frozenset({"Gemm", "FusedGemm", "MatMul", "FusedMatMul", "MatMulInteger"})
_POOL_OPS = frozenset(
    {"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool", "MaxRoiPool"}
)
_CONV_OPS = frozenset({"Conv", "FusedConv", "ConvInteger", "QLinearConv"})
# Ops that an optimiser fuses into the convolution or matmul before them (their output names
# the fused node): walked through to find the layer a fused node came from.
_FUSABLE = frozenset({"Relu", "Add", "Clip", "Sigmoid", "LeakyRelu", "HardSigmoid", "Tanh"})


class OpRow(TypedDict):
    """One row of ``opprofile.csv``."""

    runtime: str
    device: str
    model: str
    batch_size: int
    op_kind: str
    ms: float
    macs: int
    gmacs_per_s: float | None


OP_COLUMNS: tuple[str, ...] = tuple(get_type_hints(OpRow))


def conv_kind(weight_shape: Sequence[int], group: int) -> str:
    """``pointwise`` (1x1), ``depthwise`` (one input channel per group, one filter per group)
    or ``standard conv`` from an ONNX Conv's weight shape ``[C_out, C_in/group, k_h, k_w]``."""
    c_out, per_group, *kernel = (int(d) for d in weight_shape)
    if all(k == 1 for k in kernel):
        return "pointwise"
    if per_group == 1 and c_out == group:
        return "depthwise"
    return "standard conv"


def _dims(value_info: Any) -> list[int]:
    # A symbolic dimension (the batch) counts as 1: MACs are computed per image.
    return [
        d.dim_value if d.HasField("dim_value") else 1 for d in value_info.type.tensor_type.shape.dim
    ]


class GraphCosts:
    """Layer kind and per-image MACs of every node of an (unoptimised) ONNX model."""

    def __init__(self, model_path: Path) -> None:
        import onnx
        from onnx import helper, shape_inference

        model = shape_inference.infer_shapes(onnx.load(str(model_path)))
        graph = model.graph
        shapes = {v.name: _dims(v) for v in [*graph.value_info, *graph.input, *graph.output]}
        shapes.update({init.name: [int(d) for d in init.dims] for init in graph.initializer})
        self.kind: dict[str, str] = {}  # node name → kind
        self.macs: dict[str, int] = {}  # node name → MACs per image
        self.producer: dict[str, Any] = {}  # tensor name → node
        for node in graph.node:
            for output in node.output:
                self.producer[output] = node
            attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            kind, macs = "rest", 0
            if node.op_type in _CONV_OPS and len(node.input) > 1:
                weight = shapes.get(node.input[1], [])
                out = shapes.get(node.output[0], [])
                if len(weight) >= 3 and len(out) >= 3:
                    group = int(attributes.get("group", 1))
                    kind = conv_kind(weight, group)
                    macs = int(np.prod(out[1:])) * int(np.prod(weight[1:]))
            elif node.op_type in _DENSE_OPS and len(node.input) > 1:
                kind = "dense"
                weight = shapes.get(node.input[1], [])
                if len(weight) == 2:
                    transposed = node.op_type in ("Gemm", "FusedGemm") and attributes.get("transB")
                    k, n = (weight[1], weight[0]) if transposed else (weight[0], weight[1])
                    macs = int(k) * int(n)
            elif node.op_type in _POOL_OPS:
                kind = "pooling"
            self.kind[node.name] = kind
            self.macs[node.name] = macs

    def macs_by_kind(self) -> dict[str, int]:
        """Per-image MACs summed per layer kind."""
        totals: dict[str, int] = dict.fromkeys(OP_KINDS, 0)
        for name, macs in self.macs.items():
            totals[self.kind[name]] += macs
        return totals

    def origin_kind(self, optimized_name: str, op_type: str) -> str:
        """The layer kind of a node of the optimised graph, named after a tensor or node of the
        original one (``<tensor>_nchwc``, ``fused <node>/MatMulAddFusion``, or unchanged)."""
        if op_type in _DENSE_OPS:
            return "dense"
        if op_type in _POOL_OPS:
            return "pooling"
        if optimized_name in self.kind:
            return self.kind[optimized_name]
        if op_type not in _CONV_OPS:
            return "rest"
        # The longest original tensor name the optimised node's name starts with.
        candidates = [t for t in self.producer if optimized_name.startswith(t)]
        if not candidates:
            return "standard conv"
        node = self.producer[max(candidates, key=len)]
        for _ in range(4):  # walk back through activations fused into the convolution
            if node.op_type not in _FUSABLE:
                break
            previous = next((self.producer[i] for i in node.input if i in self.producer), None)
            if previous is None:
                break
            node = previous
        kind = self.kind.get(node.name, "rest")
        return kind if kind in ("standard conv", "depthwise", "pointwise") else "standard conv"


def _session(model_path: Path, rows: int, intra_op_threads: int, profile_prefix: str) -> Any:
    import onnxruntime as ort

    from serving.runtimes.onnx import SMALL_BATCH_ROWS

    options = ort.SessionOptions()
    options.enable_profiling = True
    options.profile_file_prefix = profile_prefix
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Explicit counts, as the server's runtime sets them: 0 would give ORT's default pool, a
    # thread pinned to every core of the machine, outside the CPU set.
    options.intra_op_num_threads = 1 if rows <= SMALL_BATCH_ROWS else intra_op_threads
    # The inter-op pool exists only in parallel execution mode; sized all the same (its default
    # would pin its threads like the intra-op one).
    options.inter_op_num_threads = intra_op_threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])


def kind_times(
    trace: Sequence[Mapping[str, Any]],
    costs: GraphCosts,
    measured_runs: int,
    calls: int | None = None,
) -> dict[str, float]:
    """Mean milliseconds per call per layer kind over the last ``measured_runs`` runs of an ONNX
    Runtime profiler trace (earlier runs are the warm-up), ``call overhead`` included; a call is
    ``measured_runs / calls`` runs (the server's slices of one request; default one run)."""
    runs = sorted(
        (e for e in trace if e.get("cat") == "Session" and e.get("name") == "model_run"),
        key=lambda e: float(e["ts"]),
    )[-measured_runs:]
    if not runs:
        raise ValueError("the profiler trace has no model_run event")
    windows = [(float(r["ts"]), float(r["ts"]) + float(r["dur"])) for r in runs]
    totals: dict[str, float] = dict.fromkeys(OP_KINDS, 0.0)
    for event in trace:
        if event.get("cat") != "Node" or not str(event.get("name", "")).endswith("_kernel_time"):
            continue
        start = float(event["ts"])
        if not any(low <= start <= high for low, high in windows):
            continue
        name = str(event["name"])[: -len("_kernel_time")]
        op_type = str(event.get("args", {}).get("op_name", ""))
        totals[costs.origin_kind(name, op_type)] += float(event["dur"])
    run_total = sum(float(r["dur"]) for r in runs)
    kernels = sum(totals.values())
    totals["call overhead"] = max(run_total - kernels, 0.0)
    per_call = calls or len(runs)
    return {kind: us / 1000.0 / per_call for kind, us in totals.items()}


def profile_model(
    model_path: Path,
    batch_size: int,
    *,
    intra_op_threads: int = 0,
    max_rows: int = 0,
    min_seconds: float = 0.5,
    warmup_calls: int = 3,
) -> dict[str, tuple[float, int]]:
    """{kind: (ms per call, MACs per call)} for ``model_path`` at ``batch_size``, a call being
    the server's runs of at most ``max_rows`` rows; ``intra_op_threads`` 0: one per CPU of the
    process's CPU set."""
    from serving.model.runs import run_slices
    from serving.runtimes.cpuset import threads_or_cpu_count

    costs = GraphCosts(model_path)
    runs = run_slices(batch_size, max_rows)
    threads = threads_or_cpu_count(intra_op_threads)
    with tempfile.TemporaryDirectory(prefix="opprofile-") as tmp:
        first_rows = runs[0].stop - runs[0].start
        session = _session(model_path, first_rows, threads, str(Path(tmp) / "trace"))
        meta = session.get_inputs()[0]
        shape = [batch_size, *(d if isinstance(d, int) else 1 for d in meta.shape[1:])]
        rng = np.random.default_rng(0)
        images = rng.random(shape, dtype=np.float32)

        def call() -> None:
            for run in runs:
                session.run(None, {meta.name: images[run]})

        for _ in range(warmup_calls):
            call()
        calls, deadline = 0, time.perf_counter() + min_seconds
        while calls < MIN_CALLS or time.perf_counter() < deadline:
            call()
            calls += 1
        trace = json.loads(Path(session.end_profiling()).read_text())
    times = kind_times(trace, costs, calls * len(runs), calls)
    per_image = costs.macs_by_kind()
    return {kind: (times[kind], per_image[kind] * batch_size) for kind in OP_KINDS}


def profile_rows(
    runtime: str,
    models_dir: Path,
    models: Iterable[str],
    batch_sizes: Iterable[int],
    device: str = "cpu",
    server_args: Sequence[str] = (),
) -> list[OpRow]:
    """Profile every model at every batch size as the server started with ``server_args`` runs
    it; rows for ``opprofile.csv``."""
    from contract import ONNX_FILENAME
    from loadtest.run.floor import latest_version_dir, server_way
    from loadtest.run.opprofile_ov import profile_openvino
    from loadtest.run.opprofile_tf import profile_tensorflow

    if runtime not in PROFILED_RUNTIMES:
        raise ValueError(f"no per-operator profiler for runtime {runtime!r}")
    way = server_way(runtime, models_dir, device, server_args)
    way.close()  # only its settings are used: each profiler calls the runtime on this thread
    options, max_rows = way.options, way.max_rows_per_run
    profilers = {
        "onnx": lambda v, b: profile_model(
            v / ONNX_FILENAME,
            b,
            intra_op_threads=options.intra_op_threads,
            max_rows=max_rows,
        ),
        "tensorflow": lambda v, b: profile_tensorflow(v, b, options=options, max_rows=max_rows),
        "openvino": lambda v, b: profile_openvino(v, b, options=options, max_rows=max_rows),
    }
    rows: list[OpRow] = []
    for model in models:
        version_dir = latest_version_dir(models_dir, model)
        for batch_size in batch_sizes:
            profile = profilers[runtime](version_dir, batch_size)
            for kind, (ms, macs) in profile.items():
                rows.append(
                    OpRow(
                        runtime=runtime,
                        device=device,
                        model=model,
                        batch_size=batch_size,
                        op_kind=kind,
                        ms=ms,
                        macs=macs,
                        gmacs_per_s=macs / ms / 1e6 if macs and ms > 0 else None,
                    )
                )
    return rows


def write_opprofile(path: Path, rows: Iterable[Mapping[str, Any]]) -> None:
    """Append-or-create ``opprofile.csv`` (one header) with ``rows``."""
    new = not path.is_file()
    with open(path, "a", newline="") as handle:
        writer = csv.writer(handle)
        if new:
            writer.writerow(OP_COLUMNS)
        for row in rows:
            writer.writerow(
                [
                    ""
                    if row[c] is None
                    else (f"{row[c]:.6g}" if isinstance(row[c], float) else row[c])
                    for c in OP_COLUMNS
                ]
            )


def read_opprofile(path: Path) -> list[OpRow]:
    """Rows of an ``opprofile.csv`` (empty when the file does not exist)."""
    if not path.is_file():
        return []
    with open(path, newline="") as handle:
        return [
            OpRow(
                runtime=r["runtime"],
                device=r["device"],
                model=r["model"],
                batch_size=int(r["batch_size"]),
                op_kind=r["op_kind"],
                ms=float(r["ms"]),
                macs=int(r["macs"]),
                gmacs_per_s=float(r["gmacs_per_s"]) if r["gmacs_per_s"] else None,
            )
            for r in csv.DictReader(handle)
        ]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m loadtest.run.opprofile``: profile one runtime's models, append to a CSV."""
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.run.opprofile",
        description="Per-operator profile (time and MACs per layer kind) of the exported models.",
    )
    parser.add_argument("--runtime", default="onnx", choices=PROFILED_RUNTIMES)
    parser.add_argument("--models-dir", type=Path, required=True)
    parser.add_argument("--models", default="standard,separable", help="comma-separated")
    parser.add_argument(
        "--batch-sizes", default=",".join(map(str, DEFAULT_BATCH_SIZES)), help="comma-separated"
    )
    parser.add_argument("--output", type=Path, required=True, help="opprofile.csv to append to")
    parser.add_argument("--cpus", help="pin this process to these CPU ids (comma-separated)")
    parser.add_argument(
        "--server-args", default="", help="the server's extra flags, to configure it the same way"
    )
    args = parser.parse_args(argv)
    pin_from_flag(args.cpus)
    try:
        rows = profile_rows(
            args.runtime,
            args.models_dir,
            comma_list(args.models, "--models"),
            list(ints(args.batch_sizes, "--batch-sizes", MAX_BATCH_SIZE)),
            server_args=shlex.split(args.server_args),
        )
    except (OSError, ValueError, RuntimeError) as exc:
        print(f"per-operator profile failed: {exc}", file=sys.stderr)
        return 1
    write_opprofile(args.output, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
