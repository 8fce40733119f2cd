"""What ran: the executed graph of each runtime × model (``executed-graph.json``, issue #21).

The same ONNX file becomes different kernels in each runtime, and the ratio between two models
depends on what their depthwise and pointwise convolutions became. ``python -m
loadtest.run.graphs`` writes, for one runtime, each model's executed nodes and a summary:

- onnx: the optimized model ONNX Runtime writes (``SessionOptions.optimized_model_filepath``)
  at the server's graph optimization level (all): node types with their domain (``FusedConv``,
  ``com.microsoft.nchwc`` Conv with a fused activation, ``ReorderInput``/``ReorderOutput`` layout
  changes, ``FusedGemm``);
- openvino: the CPU plugin's kernel per executed node (``brgconv_avx512_dw_f32``...) from its
  performance counters, the layers fused into another node listed as fused;
- litert: the interpreter's operators and which of them XNNPACK took over;
- tensorflow: the kernels TensorFlow's profiler saw (``_FusedConv2D``, ``DepthwiseConv2dNative``,
  oneDNN's ``_MklNative...``) at batch 32 on its default executor.

Each node: ``name``, ``op_type``, ``kernel``, ``kind`` (the operator profile's layer kinds) and
``fused`` (it runs inside another node, or carries a fused activation). ``summary``: per kind what
it became (``depthwise``, ``pointwise``, ``standard conv``, ``dense``) and runtime facts such as
``delegated`` (``7 of 12 (XNNPACK, 1 partition)``) or ``layout`` (reorder nodes).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypedDict

import numpy as np

from loadtest.cli import comma_list
from loadtest.run.cpu import pin_from_flag

EXECUTED_GRAPH_JSON = "executed-graph.json"
GRAPH_RUNTIMES = ("onnx", "openvino", "litert", "tensorflow")
SUMMARY_KINDS = ("depthwise", "pointwise", "standard conv", "dense")
BATCH_SIZE = 32  # the batch the graphs are built and run at


class GraphNode(TypedDict):
    """One executed node."""

    name: str
    op_type: str
    kernel: str
    kind: str
    fused: bool


class ExecutedGraph(TypedDict):
    """One runtime × model of ``executed-graph.json``."""

    nodes: list[GraphNode]
    summary: dict[str, str]


def summarize(nodes: Iterable[GraphNode]) -> dict[str, str]:
    """Per layer kind, the kernels its nodes became with their counts: ``Conv+Relu
    (com.microsoft.nchwc) x2``; ``none`` for a kind the model lacks."""
    by_kind: dict[str, Counter[str]] = {kind: Counter() for kind in SUMMARY_KINDS}
    for node in nodes:
        if node["kind"] in by_kind and not (node["fused"] and node["kernel"] == "fused"):
            by_kind[node["kind"]][node["kernel"]] += 1
    return {
        kind: ", ".join(f"{k} x{n}" for k, n in counts.most_common()) or "none"
        for kind, counts in by_kind.items()
    }


# --- ONNX Runtime ---------------------------------------------------------------------------------


def onnx_graph(version_dir: Path) -> ExecutedGraph:
    """The model ONNX Runtime executes, optimized as the server's sessions optimize it."""
    import onnx
    import onnxruntime as ort
    from onnx import helper

    from contract import ONNX_FILENAME
    from loadtest.run.opprofile import GraphCosts
    from serving.runtimes.cpuset import cpu_count

    # Kinds from the layer each optimized node came from (an NCHWc convolution keeps its source
    # tensor's name): what it computes, whatever blocking or padding ORT gave it.
    costs = GraphCosts(version_dir / ONNX_FILENAME)
    with tempfile.TemporaryDirectory(prefix="ort-optimized-") as tmp:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = cpu_count()
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(
            str(version_dir / ONNX_FILENAME), options, providers=["CPUExecutionProvider"]
        )
        model = onnx.load(options.optimized_model_filepath)
    nodes = []
    for node in model.graph.node:
        attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        activation = attributes.get("activation", b"")
        activation = activation.decode() if isinstance(activation, bytes) else str(activation)
        kernel = node.op_type + (f"+{activation}" if activation else "")
        if int(attributes.get("group", 1)) > 1:
            kernel += f" group={attributes['group']}"
        if node.domain:
            kernel += f" ({node.domain})"
        nodes.append(
            GraphNode(
                name=node.name,
                op_type=f"{node.domain}:{node.op_type}" if node.domain else node.op_type,
                kernel=kernel,
                kind=costs.origin_kind(node.name, node.op_type),
                fused=bool(activation) or node.op_type.startswith("Fused"),
            )
        )
    summary = summarize(nodes)
    reorders = sum(1 for n in nodes if n["op_type"].endswith(("ReorderInput", "ReorderOutput")))
    nchwc = sum(1 for n in nodes if n["op_type"].startswith("com.microsoft.nchwc:"))
    summary["layout"] = f"{nchwc} NCHWc nodes, {reorders} of them layout reorders"
    summary["nodes"] = str(len(nodes))
    return ExecutedGraph(nodes=nodes, summary=summary)


# --- OpenVINO ---------------------------------------------------------------------------------


def openvino_graph(version_dir: Path) -> ExecutedGraph:
    """The CPU plugin's kernel per node (compiled as the server compiles it)."""
    from contract import ONNX_FILENAME
    from loadtest.run.opprofile_ov import layer_kinds, node_kind
    from serving.runtimes.openvino import node_profile

    images = np.zeros((BATCH_SIZE, 28, 28, 1), np.float32)
    kinds = layer_kinds(version_dir / ONNX_FILENAME)
    nodes = []
    for node in node_profile(version_dir, images, repeats=2):
        if node.layer_type in ("Parameter", "Result", "Const"):
            continue
        nodes.append(
            GraphNode(
                name=node.name,
                op_type=node.layer_type,
                kernel=node.exec_type if node.executed else "fused",
                kind=node_kind(node.name, node.layer_type, node.exec_type, kinds),
                fused=not node.executed,
            )
        )
    summary = summarize(nodes)
    summary["nodes"] = f"{sum(1 for n in nodes if not n['fused'])} executed, " + (
        f"{sum(1 for n in nodes if n['fused'])} fused into them"
    )
    return ExecutedGraph(nodes=nodes, summary=summary)


# --- LiteRT -----------------------------------------------------------------------------------

_LITERT_KINDS = {
    "DEPTHWISE_CONV_2D": "depthwise",
    "FULLY_CONNECTED": "dense",
    "MAX_POOL_2D": "pooling",
    "AVERAGE_POOL_2D": "pooling",
}


def litert_graph(version_dir: Path) -> ExecutedGraph:
    """The interpreter's operators and which of them XNNPACK runs (the server's interpreter:
    ``model.tflite``, threads from the CPU set, XNNPACK by default)."""
    from ai_edge_litert.interpreter import Interpreter

    from contract import TFLITE_FILENAME
    from serving.runtimes.cpuset import cpu_count
    from serving.runtimes.litert import delegation_summary

    interpreter = Interpreter(
        model_path=str(version_dir / TFLITE_FILENAME), num_threads=cpu_count()
    )
    interpreter.allocate_tensors()
    interpreter.invoke()
    delegation = delegation_summary(interpreter)
    shapes = {
        int(t["index"]): [int(d) for d in t["shape"]] for t in interpreter.get_tensor_details()
    }
    pending = Counter(delegation.delegated)  # by name: XNNPACK takes every operator of a type
    nodes = []
    for op in interpreter._get_ops_details():
        if op["op_name"] == "DELEGATE":
            continue
        delegated = pending[op["op_name"]] > 0
        pending[op["op_name"]] -= 1 if delegated else 0
        kind = _LITERT_KINDS.get(op["op_name"], "rest")
        if op["op_name"] == "CONV_2D":  # filter [C_out, k_h, k_w, C_in]
            kernel = shapes.get(int(op["inputs"][1]), [0, 0, 0, 0])[1:3]
            kind = "pointwise" if kernel == [1, 1] else "standard conv"
        nodes.append(
            GraphNode(
                name=f"{op['index']}:{op['op_name']}",
                op_type=op["op_name"],
                kernel="XNNPACK" if delegated else "builtin",
                kind=kind,
                fused=delegated,
            )
        )
    summary = summarize(nodes)
    summary["delegated"] = (
        f"{len(delegation.delegated)} of {len(delegation.operators)} (XNNPACK, "
        f"{delegation.partitions} partition{'s' if delegation.partitions != 1 else ''})"
    )
    summary["not delegated"] = ", ".join(delegation.not_delegated) or "none"
    return ExecutedGraph(nodes=nodes, summary=summary)


# --- TensorFlow -------------------------------------------------------------------------------


def tensorflow_graph(version_dir: Path) -> ExecutedGraph:
    """The kernels TensorFlow's profiler saw running the runtime's ``predict``."""
    from loadtest.run.opprofile_tf import op_kinds, profiled_calls

    ops, _, _ = profiled_calls(version_dir, BATCH_SIZE, min_seconds=0.2)
    nodes = [
        GraphNode(
            name=name,
            op_type=op_type,
            kernel=op_type,
            kind=kind,
            fused=op_type.startswith(("_Fused", "_MklFused", "_MklNativeFused")),
        )
        for (op_type, name, _), kind in zip(ops, op_kinds(ops), strict=True)
    ]
    return ExecutedGraph(nodes=nodes, summary=summarize(nodes))


BUILDERS: dict[str, Callable[[Path], ExecutedGraph]] = {
    "onnx": onnx_graph,
    "openvino": openvino_graph,
    "litert": litert_graph,
    "tensorflow": tensorflow_graph,
}


def executed_graphs(
    runtime: str, models_dir: Path, models: Sequence[str]
) -> dict[str, ExecutedGraph | dict[str, str]]:
    """{model: executed graph, or {"error": why}} for ``runtime``."""
    from loadtest.run.floor import latest_version_dir

    out: dict[str, ExecutedGraph | dict[str, str]] = {}
    for model in models:
        try:
            out[model] = BUILDERS[runtime](latest_version_dir(models_dir, model))
        except Exception as exc:  # noqa: BLE001 - recorded, never fatal
            out[model] = {"error": f"{type(exc).__name__}: {exc}"}
    return out


def merge_into(path: Path, runtime: str, graphs: dict[str, Any]) -> None:
    """Add ``runtime``'s graphs to the ``executed-graph.json`` at ``path``."""
    data = json.loads(path.read_text()) if path.is_file() else {}
    data[runtime] = graphs
    path.write_text(json.dumps(data, indent=1) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m loadtest.run.graphs``: one runtime's executed graphs into a JSON file."""
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.run.graphs",
        description="Record what each runtime executes for each model (executed-graph.json).",
    )
    parser.add_argument("--runtime", required=True, choices=GRAPH_RUNTIMES)
    parser.add_argument("--models-dir", type=Path, required=True)
    parser.add_argument("--models", default="standard,separable", help="comma-separated")
    parser.add_argument("--output", type=Path, required=True, help="executed-graph.json to add to")
    parser.add_argument("--cpus", help="pin this process to these CPU ids (comma-separated)")
    args = parser.parse_args(argv)
    pin_from_flag(args.cpus)
    graphs = executed_graphs(args.runtime, args.models_dir, comma_list(args.models, "--models"))
    merge_into(args.output, args.runtime, dict(graphs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
