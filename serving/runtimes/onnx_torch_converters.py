"""ONNX → PyTorch conversion with onnx2torch, made capturable by CUDA graphs and ``torch.compile``.

onnx2torch converts a Reshape into a module that calls ``torch.any`` on the shape tensor, and the
Keras ``Flatten`` in our graphs computes that shape at run time (Shape → Gather → Cast → Slice →
Concat → Cast → Reshape). Both are data-dependent: CUDA-graph capture fails ("operation not
permitted when stream is capturing") and ``torch.compile`` cannot trace ``torch.Size(tensor)``.

General steps fix this for any ONNX graph, without knowing the network:

1. :func:`freeze_reshape_targets` rewrites the ONNX graph: every Reshape whose target shape ONNX
   shape inference (with data propagation) can pin down — up to dimensions copied from the input,
   such as the batch — gets that target as a constant initializer; the shape-computing nodes left
   unused are removed. The result is still standard ONNX (ONNX Runtime runs it; tests check it).
2. :func:`register_converters` installs a converter for Reshape with a constant shape that builds
   :class:`StaticReshape`, whose target is a tuple of Python ints; Reshapes with a computed shape
   still go to onnx2torch's own converter.
3. :func:`drop_identity_reshapes` removes Reshapes that keep their input's shape, so that a
   channels-last layout flows through the convolutions (``serving.runtimes.torch`` uses it).

onnx2torch imports torchvision for its NonMaxSuppression and RoiAlign converters only. Where
torchvision is missing or broken (PyPI's CUDA torchvision beside a CPU-only torch), those two
converters are left out: models using them fail to load with onnx2torch's "not implemented" error.
"""

from __future__ import annotations

import importlib
import sys
import threading
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import torch
from onnx import numpy_helper, shape_inference
from torch import nn

STATIC_SHAPE_SUFFIX = "__static_shape"

# Submodules of onnx2torch.node_converters that import torchvision at import time.
_TORCHVISION_CONVERTERS = ("nms", "roialign")

_register_lock = threading.Lock()
_registered = threading.Event()

Dim = int | str | None  # a static size, a symbolic size (dim_param) or unknown


class StaticReshape(nn.Module):
    """ONNX Reshape with a target known at conversion time.

    ``0`` copies the input's size at that position (unless ``allowzero``), ``-1`` is inferred: the
    same semantics as ONNX, evaluated on Python ints so tracing and graph capture see no data.
    """

    def __init__(self, shape: Sequence[int], allowzero: bool = False) -> None:
        super().__init__()
        self.shape = tuple(int(d) for d in shape)
        self.allowzero = allowzero
        self._copied = () if allowzero else tuple(i for i, d in enumerate(self.shape) if d == 0)

    def forward(self, data: torch.Tensor) -> torch.Tensor:
        """Reshape ``data`` to the static target."""
        if not self._copied:
            return torch.reshape(data, self.shape)
        shape = list(self.shape)
        for i in self._copied:
            shape[i] = data.shape[i]
        return torch.reshape(data, shape)

    def extra_repr(self) -> str:
        return f"shape={self.shape}, allowzero={self.allowzero}"


@dataclass(frozen=True)
class ConvertedModel:
    """A converted graph: the module, its positional inputs and its outputs, by ONNX name."""

    module: nn.Module
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    frozen_reshapes: int  # Reshapes whose computed target was turned into a constant
    dropped_reshapes: int  # Reshapes that changed nothing, removed


class OrderedOutputs(nn.Module):
    """Wraps onnx2torch's GraphModule so that it returns a tuple in the ONNX graph's output order.

    onnx2torch returns one value per distinct producing node (a bare tensor when there is only
    one), so a node with several graph outputs comes back as a tuple: ``picks`` undoes that.
    """

    def __init__(
        self, graph_module: nn.Module, picks: Sequence[tuple[int, int | None]], bare: bool
    ) -> None:
        super().__init__()
        self.graph_module = graph_module
        self.picks = tuple(picks)
        self.bare = bare

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Run the graph; outputs in the ONNX graph's order."""
        result = self.graph_module(*inputs)
        values = (result,) if self.bare else tuple(result)
        return tuple(
            values[node] if position is None else values[node][position]
            for node, position in self.picks
        )


def _dims(value: onnx.ValueInfoProto) -> list[Dim] | None:
    if not value.type.HasField("tensor_type") or not value.type.tensor_type.HasField("shape"):
        return None
    dims: list[Dim] = []
    for d in value.type.tensor_type.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param") and d.dim_param:
            dims.append(d.dim_param)
        else:
            dims.append(None)
    return dims


def static_reshape_target(
    input_dims: Sequence[Dim], output_dims: Sequence[Dim], allowzero: bool = False
) -> list[int] | None:
    """The constant Reshape target that maps ``input_dims`` to ``output_dims``, or ``None``.

    An output size equal (same symbol) to the input's at the same position becomes ``0`` (copy),
    static sizes stay, and at most one unknown size becomes ``-1``, resolved to a number when the
    input's other sizes are static (so an empty batch still reshapes: torch rejects ``[0, -1]``).
    """
    target: list[int] = []
    unknown: list[int] = []
    for j, d in enumerate(output_dims):
        if isinstance(d, int):
            if d == 0 and not allowzero:
                return None  # a literal 0 would mean "copy"; cannot express it without allowzero
            target.append(d)
        elif isinstance(d, str) and not allowzero and j < len(input_dims) and input_dims[j] == d:
            target.append(0)
        else:
            unknown.append(j)
            target.append(-1)
    if len(unknown) > 1:
        return None
    if unknown:
        copied = set() if allowzero else {j for j, d in enumerate(target) if d == 0}
        rest = [d for j, d in enumerate(input_dims) if j not in copied]
        known = [d for j, d in enumerate(target) if j not in copied and d != -1]
        if all(isinstance(d, int) for d in rest) and all(d > 0 for d in known):
            numel = int(np.prod([int(d) for d in rest if isinstance(d, int)], dtype=np.int64))
            size = int(np.prod(known, dtype=np.int64))
            if numel % size == 0:
                target[unknown[0]] = numel // size
    return target


def _constant_values(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    values = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            for attribute in node.attribute:
                if attribute.name == "value":
                    values[node.output[0]] = numpy_helper.to_array(attribute.t)
    return values


def remove_dead_nodes(graph: onnx.GraphProto) -> int:
    """Drop nodes and initializers that no graph output depends on; return how many nodes."""
    used = {o.name for o in graph.output}
    kept: list[onnx.NodeProto] = []
    for node in reversed(graph.node):
        if any(name in used for name in node.output):
            kept.append(node)
            used.update(name for name in node.input if name)
            for attribute in node.attribute:  # subgraphs (If, Loop) read outer names too
                for sub in [attribute.g, *attribute.graphs]:
                    for sub_node in sub.node:
                        used.update(sub_node.input)
    removed = len(graph.node) - len(kept)
    if removed:
        del graph.node[:]
        graph.node.extend(reversed(kept))
    unused = [init for init in graph.initializer if init.name not in used]
    for init in unused:
        graph.initializer.remove(init)
    unused_names = {init.name for init in unused}
    for value in [v for v in graph.input if v.name in unused_names]:
        graph.input.remove(value)
    return removed


def freeze_reshape_targets(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """A copy of ``model`` whose Reshapes have constant targets wherever shape inference allows.

    Returns the new model and the number of Reshapes whose target was computed at run time
    before. Reshapes that already read a constant, or whose target cannot be pinned down, are
    left as they are.
    """
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    inferred = shape_inference.infer_shapes(model, data_prop=True)
    shapes = {
        v.name: dims
        for v in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]
        if (dims := _dims(v)) is not None
    }
    constants = _constant_values(graph)
    names = {n for node in graph.node for n in (*node.input, *node.output)}
    names.update(init.name for init in graph.initializer)
    frozen = 0
    for node in graph.node:
        if node.op_type != "Reshape" or node.domain not in ("", "ai.onnx") or len(node.input) < 2:
            continue
        if node.input[1] in constants:
            continue
        allowzero = any(a.name == "allowzero" and a.i == 1 for a in node.attribute)
        input_dims, output_dims = shapes.get(node.input[0]), shapes.get(node.output[0])
        if input_dims is None or output_dims is None:
            continue
        target = static_reshape_target(input_dims, output_dims, allowzero)
        if target is None:
            continue
        name = node.output[0] + STATIC_SHAPE_SUFFIX
        while name in names:
            name += "_"
        names.add(name)
        graph.initializer.append(numpy_helper.from_array(np.array(target, np.int64), name))
        node.input[1] = name
        frozen += 1
    if frozen:
        remove_dead_nodes(graph)
    return model, frozen


def is_identity_reshape(input_dims: Sequence[Dim], target: Sequence[int], allowzero: bool) -> bool:
    """Whether Reshape to ``target`` leaves a tensor of ``input_dims`` as it is.

    Every position must keep its size (equal number, or ``0`` = copy); one ``-1`` may remain,
    which then has to be the input's size there, the element count being unchanged.
    """
    if len(input_dims) != len(target):
        return False
    inferred = 0
    for d, t in zip(input_dims, target, strict=True):
        if (t == 0 and not allowzero) or (isinstance(d, int) and t == d):
            continue
        if t == -1:
            inferred += 1
            continue
        return False
    return inferred <= 1


def drop_identity_reshapes(model: onnx.ModelProto) -> int:
    """Remove Reshapes (in place) that keep their input's shape; return how many.

    Converters emit them around layout changes of one-channel tensors (NHWC ↔ NCHW). In PyTorch
    such a reshape is a view that forgets a channels-last layout, so the next convolution and
    every layer after it run in the slower NCHW layout: dropping it keeps the layout flowing.
    """
    graph = model.graph
    if any(
        a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
        for n in graph.node
        for a in n.attribute
    ):
        return 0  # subgraphs may read the names we would rewire: leave such graphs alone
    inferred = shape_inference.infer_shapes(model, data_prop=True)
    shapes = {
        v.name: dims
        for v in [*inferred.graph.value_info, *inferred.graph.input]
        if (dims := _dims(v)) is not None
    }
    constants = _constant_values(graph)
    outputs = {o.name for o in graph.output}
    renamed: dict[str, str] = {}
    kept: list[onnx.NodeProto] = []
    for node in graph.node:
        for k, name in enumerate(node.input):
            if name in renamed:
                node.input[k] = renamed[name]
        if (
            node.op_type == "Reshape"
            and node.domain in ("", "ai.onnx")
            and len(node.input) == 2
            and node.input[1] in constants
            and node.output[0] not in outputs
            and (dims := shapes.get(node.input[0])) is not None
        ):
            allowzero = any(a.name == "allowzero" and a.i == 1 for a in node.attribute)
            target = [int(v) for v in constants[node.input[1]].reshape(-1)]
            if is_identity_reshape(dims, target, allowzero):
                renamed[node.output[0]] = node.input[0]
                continue
        kept.append(node)
    dropped = len(graph.node) - len(kept)
    if dropped:
        del graph.node[:]
        graph.node.extend(kept)
        remove_dead_nodes(graph)
    return dropped


def _static_reshape_converter(fallback: Callable[..., Any] | None) -> Callable[..., Any]:
    from onnx2torch.utils.common import OnnxMapping, OperationConverterResult

    def convert(node: Any, graph: Any) -> Any:
        shape_name = node.input_values[1] if len(node.input_values) > 1 else ""
        if shape_name in graph.initializers:
            shape = graph.initializers[shape_name].to_numpy().astype(np.int64).tolist()
            return OperationConverterResult(
                torch_module=StaticReshape(shape, bool(node.attributes.get("allowzero", 0))),
                # The shape is baked into the module: it is no input of the traced graph.
                onnx_mapping=OnnxMapping(
                    inputs=(node.input_values[0],), outputs=tuple(node.output_values)
                ),
            )
        if fallback is None:
            raise NotImplementedError(
                f"Reshape {node.name!r} with a computed shape at this opset version"
            )
        return fallback(node, graph)

    convert.static_reshape = True  # type: ignore[attr-defined]  # marks ours: idempotent install
    return convert


def _import_onnx2torch() -> types.ModuleType:
    """Import onnx2torch; without a working torchvision, skip the two converters needing it."""
    if "onnx2torch" in sys.modules:
        return sys.modules["onnx2torch"]
    try:
        import torchvision  # noqa: F401
    except Exception:  # noqa: BLE001 - missing, or PyPI's CUDA build beside a CPU-only torch
        placeholders = [f"onnx2torch.node_converters.{name}" for name in _TORCHVISION_CONVERTERS]
        for name in placeholders:
            sys.modules.setdefault(name, types.ModuleType(name))
        try:
            return importlib.import_module("onnx2torch")
        finally:
            for name in placeholders:
                sys.modules.pop(name, None)
    return importlib.import_module("onnx2torch")


def register_converters() -> None:
    """Install the constant-shape Reshape converter for every ONNX Reshape version (once)."""
    with _register_lock:
        if _registered.is_set():
            return
        _import_onnx2torch()
        from onnx2torch.node_converters import registry

        table = getattr(registry, "_CONVERTER_REGISTRY", None)
        if not isinstance(table, dict):
            raise RuntimeError("unsupported onnx2torch: its converter registry was not found")
        versions = sorted(
            {
                schema.since_version
                for schema in onnx.defs.get_all_schemas_with_history()
                if schema.name == "Reshape" and schema.domain == ""
            }
        )
        for version in versions:
            if version < 5:  # Reshape-1 takes its shape as an attribute; onnx2torch lacks it
                continue
            key = registry.OperationDescription(
                domain=onnx.defs.ONNX_DOMAIN, operation_type="Reshape", version=version
            )
            previous = table.get(key)
            if getattr(previous, "static_reshape", False):
                continue
            # add_converter refuses a second converter for a key: ours replaces and wraps it.
            table.pop(key, None)
            registry.add_converter(operation_type="Reshape", version=version)(
                _static_reshape_converter(previous)
            )
        _registered.set()


def _output_picks(graph: onnx.GraphProto) -> tuple[list[tuple[int, int | None]], bool]:
    producers: dict[str, tuple[int, int, int]] = {}
    for index, node in enumerate(graph.node):
        for position, name in enumerate(node.output):
            producers[name] = (index, position, len(node.output))
    order: list[int] = []
    picks: list[tuple[int, int | None]] = []
    for output in graph.output:
        if output.name not in producers:
            raise ValueError(f"graph output {output.name!r} is not produced by a node")
        index, position, count = producers[output.name]
        if index not in order:
            order.append(index)
        picks.append((order.index(index), position if count > 1 else None))
    return picks, len(order) == 1


def convert_model(model: onnx.ModelProto) -> ConvertedModel:
    """Convert ``model`` to a PyTorch module free of data-dependent shape code where possible."""
    register_converters()
    onnx2torch = _import_onnx2torch()
    frozen_model, frozen = freeze_reshape_targets(model)
    dropped = drop_identity_reshapes(frozen_model)
    graph_module = onnx2torch.convert(frozen_model)
    initializers = {init.name for init in frozen_model.graph.initializer}
    input_names = tuple(v.name for v in frozen_model.graph.input if v.name not in initializers)
    picks, bare = _output_picks(frozen_model.graph)
    module = OrderedOutputs(graph_module, picks, bare)
    module.eval()
    return ConvertedModel(
        module=module,
        input_names=input_names,
        output_names=tuple(v.name for v in frozen_model.graph.output),
        frozen_reshapes=frozen,
        dropped_reshapes=dropped,
    )


def onnx2torch_version() -> str:
    """The installed onnx2torch's version, for logs and reports."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("onnx2torch")
    except PackageNotFoundError:
        return "unknown"
