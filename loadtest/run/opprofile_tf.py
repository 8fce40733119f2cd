"""The TensorFlow side of the operator profile: TF's profiler's op self-times (XPlane traces)
classified into the same layer kinds as ONNX Runtime's kernels, whatever oneDNN or grappler
renamed the kernels to."""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from loadtest.run.opprofile import MIN_CALLS, OP_KINDS, GraphCosts

# oneDNN builds (AVX-512 machines) rename TensorFlow's CPU kernels:
# `_MklNativeDepthwiseConv2dNative`, `_MklNativeFusedConv2D`, `_MklFusedMatMul`,
# `_MklNativeMaxPool`, `_MklSoftmax`; grappler's fusions add `_Fused`/`Fused`.
# Strip those prefixes and classify what remains.
_TF_KERNEL_PREFIXES = ("_MklNative", "_Mkl", "_Fused", "Fused", "_")
_TF_POOLING = ("MaxPool", "AvgPool", "MaxPoolV2", "AvgPoolV2")


def tf_kernel_base(op_type: str) -> str:
    """``op_type`` without oneDNN's and grappler's prefixes (``_MklNativeFusedConv2D`` ->
    ``Conv2D``)."""
    base = op_type
    stripped = True
    while stripped:
        stripped = False
        for prefix in _TF_KERNEL_PREFIXES:
            if base.startswith(prefix) and len(base) > len(prefix):
                base = base[len(prefix) :]
                stripped = True
                break
    return base


def tf_kind(op_type: str, layer_is_depthwise: bool) -> str:
    """The layer kind a TensorFlow kernel computes, whatever prefix oneDNN or a fusion gave it;
    ``layer_is_depthwise``: the kernel sits in a layer that also runs a depthwise kernel (its 2-D
    convolution is then the pointwise one)."""
    base = tf_kernel_base(op_type)
    if base.startswith("DepthwiseConv2d"):
        return "depthwise"
    if base.startswith(("Conv2D", "Conv3D")):
        return "pointwise" if layer_is_depthwise else "standard conv"
    if base.startswith(("MatMul", "BatchMatMul")):
        return "dense"
    if base in _TF_POOLING:
        return "pooling"
    return "rest"


def _layer(op_name: str) -> str:
    # ".../separable_1/conv1_1/separable_conv2d/depthwise" and ".../separable_1/conv1_1/Relu"
    # share the layer ".../separable_1/conv1_1".
    parts = op_name.split("/")
    return "/".join(parts[:3]) if len(parts) >= 3 else op_name


def framework_ops(xplane_paths: Sequence[str]) -> list[tuple[str, str, float]]:
    """(kernel type, op name, self µs) of every op in TensorFlow profiler traces
    (``.xplane.pb``), from the profiler plugin's "framework op stats"."""
    from tensorflow.python.profiler.internal import _pywrap_profiler_plugin

    data, ok = _pywrap_profiler_plugin.xspace_to_tools_data(
        list(xplane_paths), "framework_op_stats", {}
    )
    if not ok:
        raise ValueError(f"TensorFlow's profiler plugin could not read the trace: {data[:200]!r}")
    table = json.loads(data)[0]
    columns = [c["id"] for c in table["cols"]]
    ops = []
    for row in table["rows"]:
        values = dict(
            zip(columns, [cell.get("v") if cell else None for cell in row["c"]], strict=False)
        )
        if values.get("type") in ("IDLE", None):
            continue
        ops.append(
            (str(values["type"]), str(values["operation"]), float(values["total_self_time"]))
        )
    return ops


def op_kinds(ops: Sequence[tuple[str, str, float]]) -> list[str]:
    """The layer kind of each of ``ops`` (a convolution in a layer that also runs a depthwise
    kernel is pointwise)."""
    depthwise_layers = {
        _layer(name) for op_type, name, _ in ops if tf_kind(op_type, False) == "depthwise"
    }
    return [tf_kind(op_type, _layer(name) in depthwise_layers) for op_type, name, _ in ops]


def framework_op_times(xplane_paths: Sequence[str], calls: int) -> dict[str, float]:
    """Mean ms per call per layer kind from TensorFlow profiler traces (``.xplane.pb``)."""
    ops = framework_ops(xplane_paths)
    totals: dict[str, float] = dict.fromkeys(OP_KINDS, 0.0)
    for (_, _, self_us), kind in zip(ops, op_kinds(ops), strict=True):
        totals[kind] += self_us
    return {kind: us / 1000.0 / calls for kind, us in totals.items()}


def profiled_calls(
    version_dir: Path,
    batch_size: int,
    *,
    options: Any = None,
    max_rows: int = 0,
    min_seconds: float = 0.5,
    warmup_calls: int = 3,
) -> tuple[list[tuple[str, str, float]], int, float]:
    """The TensorFlow runtime's ``predict`` under TF's profiler: its ops (kernel type, name,
    self µs summed over the calls), the calls and their wall seconds. ``options``: the server's
    ``RuntimeOptions`` (default: the defaults); a call is the server's runs of at most
    ``max_rows`` rows (0: one run)."""
    import tensorflow as tf

    from contract import INPUT_NAME, SIGNATURE_NAME
    from serving.model.runs import predict_in_runs
    from serving.runtimes import RuntimeOptions, load_runtime
    from serving.runtimes.tensorflow import TensorFlowRuntime

    runtime = load_runtime("tensorflow", version_dir, options or RuntimeOptions())
    # The server runs up to 8 rows on TF's single-threaded executor, whose kernels TF's
    # profiler does not record: the default executor here, same kernels, its own overhead.
    assert isinstance(runtime, TensorFlowRuntime)
    runtime.single_threaded_max_rows = 0
    images = np.random.default_rng(0).random((batch_size, 28, 28, 1), dtype=np.float32)

    def call() -> None:
        predict_in_runs(runtime, SIGNATURE_NAME, {INPUT_NAME: images}, batch_size, max_rows)

    try:
        for _ in range(warmup_calls):
            call()
        with tempfile.TemporaryDirectory(prefix="tfprofile-") as tmp:
            tf.profiler.experimental.start(tmp)
            try:
                calls, wall = _timed_calls(call, min_seconds)
            finally:
                tf.profiler.experimental.stop()
            ops = framework_ops([str(p) for p in Path(tmp).rglob("*.xplane.pb")])
    finally:
        runtime.close()
    return ops, calls, wall


def _timed_calls(call: Callable[[], None], min_seconds: float) -> tuple[int, float]:
    """Call at least ``MIN_CALLS`` times and ``min_seconds``; (calls, seconds in them)."""
    calls, wall = 0, 0.0
    deadline = time.perf_counter() + min_seconds
    while calls < MIN_CALLS or time.perf_counter() < deadline:
        started = time.perf_counter()
        call()
        wall += time.perf_counter() - started
        calls += 1
    return calls, wall


def profile_tensorflow(
    version_dir: Path,
    batch_size: int,
    *,
    options: Any = None,
    max_rows: int = 0,
    min_seconds: float = 0.5,
    warmup_calls: int = 3,
) -> dict[str, tuple[float, int]]:
    """{kind: (ms per call, MACs per call)} of the TensorFlow runtime's ``predict``, called as
    the server calls it (``options``, runs of ``max_rows``: :func:`profiled_calls`)."""
    from contract import ONNX_FILENAME

    ops, calls, wall = profiled_calls(
        version_dir,
        batch_size,
        options=options,
        max_rows=max_rows,
        min_seconds=min_seconds,
        warmup_calls=warmup_calls,
    )
    times: dict[str, float] = dict.fromkeys(OP_KINDS, 0.0)
    for (_, _, self_us), kind in zip(ops, op_kinds(ops), strict=True):
        times[kind] += self_us / 1000.0 / calls
    # What the ops' self time does not cover: the runtime's Python side, feeding and fetching.
    times["call overhead"] = max(wall * 1000.0 / calls - sum(times.values()), 0.0)
    per_image = GraphCosts(version_dir / ONNX_FILENAME).macs_by_kind()
    return {kind: (times[kind], per_image[kind] * batch_size) for kind in OP_KINDS}
