"""OpenVINO's operator profile: its CPU plugin's per-node performance counters
(:func:`serving.runtimes.openvino.node_profile`'s ``PERF_COUNT``), each node classified into the
layer kinds of ONNX Runtime's profile from the layer it was compiled from.

A node keeps the friendly name of the layer it came from (``.../conv2_1/separable_conv2d/
depthwise``), so the kind comes from that layer in the graph OpenVINO reads from ``model.onnx``: a
``GroupConvolution`` whose groups each see one channel and make one is depthwise, a 1x1
``Convolution`` pointwise, any other convolution standard, ``MatMul`` dense, ``MaxPool``/``AvgPool``
pooling. A node renamed by a fusion falls back on its type and kernel (``FullyConnected``: dense;
a ``_dw_`` kernel: depthwise; a ``1x1`` kernel: pointwise). Multiply-adds come from the ONNX graph
as for ONNX Runtime (:class:`loadtest.run.opprofile.GraphCosts`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

_DENSE = frozenset({"FullyConnected", "MatMul", "Gemm"})
_POOLING = frozenset({"MaxPool", "AvgPool", "Pooling", "AdaptiveAvgPool", "AdaptiveMaxPool"})
_CONV = frozenset({"Convolution", "GroupConvolution"})


@dataclass(frozen=True)
class OvNode:
    """One executed node: its name, OpenVINO layer type, kernel, layer kind, mean µs per call."""

    name: str
    layer_type: str
    exec_type: str
    kind: str
    us: float


def layer_kinds(onnx_path: Path) -> dict[str, str]:
    """Layer kind by friendly name for the convolutions, matmuls and poolings of the graph
    OpenVINO reads from ``onnx_path``."""
    import openvino as ov

    from loadtest.run.opprofile import conv_kind

    kinds: dict[str, str] = {}
    for op in ov.Core().read_model(str(onnx_path)).get_ordered_ops():
        kind_of = op.get_type_name()
        if kind_of in _CONV and op.input(1).get_partial_shape().is_static:
            shape = [int(d) for d in op.input(1).get_shape()]
            if kind_of == "GroupConvolution":  # [groups, C_out/groups, C_in/groups, k_h, k_w]
                groups, per_out, per_in, *kernel = shape
                onnx_shape = [groups * per_out, per_in, *kernel]
                kinds[op.get_friendly_name()] = conv_kind(onnx_shape, groups)
            else:
                kinds[op.get_friendly_name()] = conv_kind(shape, 1)
        elif kind_of in _DENSE:
            kinds[op.get_friendly_name()] = "dense"
        elif kind_of in _POOLING:
            kinds[op.get_friendly_name()] = "pooling"
    return kinds


def node_kind(name: str, layer_type: str, exec_type: str, kinds: dict[str, str]) -> str:
    """The layer kind of a compiled node (its source layer's, else from type and kernel)."""
    if layer_type in _DENSE:
        return "dense"
    if name in kinds:
        return kinds[name]
    if layer_type in _POOLING:
        return "pooling"
    if layer_type in _CONV:
        if "_dw" in exec_type:
            return "depthwise"
        return "pointwise" if "1x1" in exec_type else "standard conv"
    return "rest"


def _add_counters(request: Any, infos: dict[str, Any], totals: dict[str, float]) -> None:
    for info in request.profiling_info:
        if info.status.name == "EXECUTED":
            infos.setdefault(info.node_name, info)
            totals[info.node_name] = (
                totals.get(info.node_name, 0.0) + info.real_time.total_seconds() * 1e6
            )


def profile_nodes(
    version_dir: Path,
    batch_size: int,
    *,
    options: Any = None,
    max_rows: int = 0,
    min_seconds: float = 0.5,
    warmup_calls: int = 3,
) -> tuple[list[OvNode], float]:
    """The executed nodes of ``version_dir``'s model compiled as the server compiles it (threads
    from the CPU set, f32; ``options``: the server's ``RuntimeOptions``), with their mean time
    per call, and the mean wall ms of a call; a call is the server's runs of at most
    ``max_rows`` rows (0: one run)."""
    from contract import ONNX_FILENAME, SIGNATURE_NAME
    from loadtest.run.opprofile import MIN_CALLS
    from serving.model.runs import run_slices
    from serving.runtimes import RuntimeOptions
    from serving.runtimes.openvino import OpenVinoRuntime

    runtime = OpenVinoRuntime(version_dir, options or RuntimeOptions(), perf_count=True)
    request = runtime.compiled.create_infer_request()
    name = next(iter(runtime.signatures[SIGNATURE_NAME].inputs))
    images = np.random.default_rng(0).random((batch_size, 28, 28, 1), dtype=np.float32)
    runs = run_slices(batch_size, max_rows)
    totals: dict[str, float] = {}
    infos: dict[str, Any] = {}

    def call(record: bool) -> float:
        """One server call (its runs); the seconds spent in ``infer``."""
        seconds = 0.0
        for run in runs:
            started = time.perf_counter()
            request.infer({name: images[run]})
            seconds += time.perf_counter() - started
            if record:
                # The counters are those of the last infer: summed run by run, outside the timing.
                _add_counters(request, infos, totals)
        return seconds

    for _ in range(warmup_calls):
        call(record=False)
    calls, wall = 0, 0.0
    deadline = time.perf_counter() + min_seconds
    while calls < MIN_CALLS or time.perf_counter() < deadline:
        wall += call(record=True)
        calls += 1
    kinds = layer_kinds(version_dir / ONNX_FILENAME)
    nodes = [
        OvNode(
            name=node,
            layer_type=info.node_type,
            exec_type=info.exec_type,
            kind=node_kind(node, info.node_type, info.exec_type, kinds),
            us=totals[node] / calls,
        )
        for node, info in infos.items()
    ]
    return nodes, wall * 1000.0 / calls


def profile_openvino(
    version_dir: Path, batch_size: int, *, options: Any = None, max_rows: int = 0
) -> dict[str, tuple[float, int]]:
    """{kind: (ms per call, MACs per call)} of OpenVINO's CPU plugin called as the server calls
    it (:func:`profile_nodes`), ``call overhead``: a call's wall time that no node's counter
    accounts for."""
    from contract import ONNX_FILENAME
    from loadtest.run.opprofile import OP_KINDS, GraphCosts

    nodes, wall_ms = profile_nodes(version_dir, batch_size, options=options, max_rows=max_rows)
    times = dict.fromkeys(OP_KINDS, 0.0)
    for node in nodes:
        times[node.kind] += node.us / 1000.0
    times["call overhead"] = max(wall_ms - sum(times.values()), 0.0)
    per_image = GraphCosts(version_dir / ONNX_FILENAME).macs_by_kind()
    return {kind: (times[kind], per_image[kind] * batch_size) for kind in OP_KINDS}
