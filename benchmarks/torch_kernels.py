"""Which kernels the torch runtime's layers run, and how fast, with cudnn.benchmark on and off.

For each model (``model.onnx`` converted by onnx2torch, channels-last, as the torch runtime runs
it) and batch size, four configurations: ``torch.backends.cudnn.benchmark`` on or off, times CUDA
graphs (captured under that setting) or eager calls. Milliseconds per call come from interleaved
rounds (each round runs every configuration of a batch size once, in turn, for a block of calls),
summarised as the median and the min-max over rounds. One profiled call per cell
(``torch.profiler``, CUDA activity where available) gives the kernels: in eager cells each
convolution and dense layer runs inside a ``record_function`` range, so every kernel is filed
under the layer it came from and that layer's class (depthwise, pointwise or standard
convolution, dense); a CUDA-graph replay has no ranges, so its kernels are listed as the replay
ran them, with the class of the eager layer that launched a kernel of the same name.

On the CPU, cuDNN and CUDA graphs do not apply (the cells still run, as eager calls) and the
"kernels" are the CPU ops under each layer (``aten::mkldnn_convolution`` ...).

    python -m benchmarks.torch_kernels --models-dir models --device cuda \\
        --json kernels.json --markdown kernels.md
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile, record_function

from contract import INPUT_SHAPE, MODEL_NAMES, ONNX_FILENAME
from serving.runtimes.onnx_torch_converters import convert_model
from serving.runtimes.torch import TorchExecutor, resolve_device, tensor_spec

LAYER_PREFIX = "layer:"
LAYER_CLASSES = ("depthwise", "pointwise", "standard conv", "dense")
# On the CPU, the ops under a layer that do its arithmetic (not allocations and views).
_CPU_COMPUTE_OPS = ("conv", "mm", "matmul", "linear")


def layer_class(name: str, module: nn.Module) -> str | None:
    """The class of a converted layer, or None for layers that are not measured."""
    if isinstance(module, nn.Conv2d):
        if "depthwise" in name or (module.groups > 1 and module.groups == module.in_channels):
            return "depthwise"
        if tuple(module.kernel_size) == (1, 1):
            return "pointwise"
        return "standard conv"
    if isinstance(module, nn.Linear) or type(module).__name__ in ("OnnxMatMul", "OnnxGemm"):
        return "dense"
    return None


def short_name(name: str) -> str:
    """``graph_module.StatefulPartitionedCall/separable_1/conv1_1/BiasAdd`` ->
    ``conv1_1/BiasAdd``."""
    parts = name.split("/")
    return "/".join(parts[2:]) if len(parts) > 2 else name


class LayerRanges:
    """Forward hooks that run each measured layer inside a ``record_function`` range."""

    def __init__(self, module: nn.Module) -> None:
        self.layers: dict[str, str] = {}  # short name -> class
        self._open: dict[str, record_function] = {}
        self._handles = []
        for name, sub in module.named_modules():
            kind = layer_class(name, sub)
            if kind is None:
                continue
            label = f"{LAYER_PREFIX}{kind}:{short_name(name)}"
            self.layers[short_name(name)] = kind
            self._handles.append(sub.register_forward_pre_hook(self._enter(label)))
            self._handles.append(sub.register_forward_hook(self._exit(label)))

    def _enter(self, label: str) -> Callable[..., None]:
        def hook(_module: nn.Module, _inputs: object) -> None:
            self._open[label] = record_function(label).__enter__()

        return hook

    def _exit(self, label: str) -> Callable[..., None]:
        def hook(_module: nn.Module, _inputs: object, _output: object) -> None:
            ctx = self._open.pop(label, None)
            if ctx is not None:
                ctx.__exit__(None, None, None)

        return hook

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


@dataclass
class Cell:
    """One configuration at one batch size."""

    model: str
    batch: int
    cudnn_benchmark: bool
    cuda_graph: bool  # asked for; on the CPU there is no graph (graph_replayed False)
    graph_replayed: bool
    rounds: int
    calls_per_round: int
    ms_median: float
    ms_min: float
    ms_max: float
    # layer class -> kernel (or CPU op) names seen under it, in order, without repeats
    kernels_by_class: dict[str, list[str]] = field(default_factory=dict)
    # short layer name -> kernel names (eager cells; empty for a graph replay)
    kernels_by_layer: dict[str, list[str]] = field(default_factory=dict)
    # a graph replay's kernels not matched to a layer class
    unattributed: list[str] = field(default_factory=list)


def _unique(names: Iterator[str]) -> list[str]:
    return list(dict.fromkeys(names))


def _descendants(event: Any) -> Iterator[Any]:
    for child in getattr(event, "cpu_children", []):
        yield child
        yield from _descendants(child)


def _layer_kernels(prof: profile, on_cuda: bool) -> dict[str, list[str]]:
    """Range label -> kernel names (CUDA) or leaf CPU op names (CPU) launched inside it."""
    found: dict[str, list[str]] = {}
    for event in prof.events():
        name = event.name
        if not name.startswith(LAYER_PREFIX) or event.device_type != DeviceType.CPU:
            continue
        if on_cuda:
            names = [k.name for e in [event, *_descendants(event)] for k in e.kernels]
        else:
            # The innermost op that computes: aten::mkldnn_convolution, not aten::conv2d.
            names = [
                e.name
                for e in _descendants(event)
                if _computes(e) and not any(_computes(d) for d in _descendants(e))
            ]
        found.setdefault(name, [])
        found[name] = _unique(iter([*found[name], *names]))
    return found


def _computes(event: Any) -> bool:
    name = str(getattr(event, "name", "")).lower()
    return any(op in name for op in _CPU_COMPUTE_OPS)


def _device_kernels(prof: profile) -> list[str]:
    return _unique(e.name for e in prof.events() if e.device_type == DeviceType.CUDA)


def profile_call(
    run: Callable[[], object], on_cuda: bool, module: nn.Module | None = None
) -> profile:
    """One profiled call; with ``module``, its measured layers run inside labelled ranges (the
    hooks are there only for this call, so the timed calls carry no profiling cost)."""
    activities = [ProfilerActivity.CPU]
    if on_cuda:
        activities.append(ProfilerActivity.CUDA)
    ranges = LayerRanges(module) if module is not None else None
    try:
        with profile(activities=activities) as prof:
            run()
            if on_cuda:
                torch.cuda.synchronize()
    finally:
        if ranges is not None:
            ranges.remove()
    return prof


def bench_model(
    *,
    model: str,
    version_dir: Path,
    device: str,
    batches: Sequence[int],
    rounds: int,
    seconds_per_round: float,
) -> list[Cell]:
    """Every configuration of ``model`` at every batch size (interleaved rounds)."""
    on_cuda = resolve_device(device) == "cuda"
    if on_cuda:  # fp32 exact, as the torch runtime runs (serving/runtimes/torch.py)
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    onnx_model = onnx.load(str(version_dir / ONNX_FILENAME))
    converted = convert_model(onnx_model)
    inputs = {v.name: tensor_spec(v) for v in onnx_model.graph.input}
    specs = [inputs[name] for name in converted.input_names]
    rng = np.random.default_rng(0)
    arrays = {b: rng.random((b, *INPUT_SHAPE), dtype=np.float32) for b in batches}
    configs = [(bench, graph) for bench in (True, False) for graph in (True, False)]
    # One module, shared: the eager executor, and per cudnn setting a graph executor whose
    # graphs are captured with that setting (the algorithm a graph replays is fixed at capture).
    eager = TorchExecutor(converted.module, specs, device)
    executors: dict[tuple[bool, bool], TorchExecutor] = {}
    for bench, graph in configs:
        if graph and on_cuda:
            torch.backends.cudnn.benchmark = bench
            executors[bench, graph] = TorchExecutor(
                converted.module, specs, device, graph_batch_sizes=batches
            )
        else:
            executors[bench, graph] = eager
    cells: list[Cell] = []
    try:
        for batch in batches:
            x = arrays[batch]
            times: dict[tuple[bool, bool], list[float]] = {c: [] for c in configs}
            calls: dict[tuple[bool, bool], int] = {}
            for config in configs:  # warm-up, and the calls per round from one timed call
                torch.backends.cudnn.benchmark = config[0]
                for _ in range(3):
                    executors[config].run([x])
                t0 = time.perf_counter()
                executors[config].run([x])
                one = max(time.perf_counter() - t0, 1e-6)
                calls[config] = max(1, min(1000, int(seconds_per_round / one)))
            for _ in range(rounds):
                for config in configs:
                    torch.backends.cudnn.benchmark = config[0]
                    n = calls[config]
                    t0 = time.perf_counter()
                    for _ in range(n):
                        executors[config].run([x])
                    times[config].append((time.perf_counter() - t0) / n * 1e3)
            for bench, graph in configs:
                torch.backends.cudnn.benchmark = bench
                executor = executors[bench, graph]
                replayed = batch in executor.graphs
                prof = profile_call(
                    functools.partial(executor.run, [x]),
                    on_cuda,
                    None if replayed else eager.module,
                )
                by_label = _layer_kernels(prof, on_cuda) if not replayed else {}
                by_layer = {label.split(":", 2)[2]: names for label, names in by_label.items()}
                by_class: dict[str, list[str]] = {}
                for label, names in by_label.items():
                    kind = label.split(":", 2)[1]
                    by_class[kind] = _unique(iter([*by_class.get(kind, []), *names]))
                unattributed: list[str] = []
                if replayed:
                    # Which layer class launches each kernel: an eager call, same setting.
                    eager_prof = profile_call(
                        functools.partial(eager.run, [x]), on_cuda, eager.module
                    )
                    eager_classes: dict[str, str] = {}
                    for label, names in _layer_kernels(eager_prof, on_cuda).items():
                        for kernel in names:
                            eager_classes.setdefault(kernel, label.split(":", 2)[1])
                    for kernel in _device_kernels(prof):
                        owner = eager_classes.get(kernel)
                        if owner is None:
                            unattributed.append(kernel)
                        else:
                            by_class[owner] = _unique(iter([*by_class.get(owner, []), kernel]))
                ms = times[bench, graph]
                cells.append(
                    Cell(
                        model=model,
                        batch=batch,
                        cudnn_benchmark=bench,
                        cuda_graph=graph,
                        graph_replayed=replayed,
                        rounds=rounds,
                        calls_per_round=calls[bench, graph],
                        ms_median=statistics.median(ms),
                        ms_min=min(ms),
                        ms_max=max(ms),
                        kernels_by_class={k: by_class[k] for k in LAYER_CLASSES if k in by_class},
                        kernels_by_layer=by_layer,
                        unattributed=unattributed,
                    )
                )
                print(_row(cells[-1]), flush=True)
    finally:
        for executor in {id(e): e for e in executors.values()}.values():
            executor.close()
    return cells


def _config(cell: Cell) -> str:
    graph = "graph" if cell.graph_replayed else "eager"
    if cell.cuda_graph and not cell.graph_replayed:
        graph += " (no graph here)"
    return f"cudnn.benchmark {'on' if cell.cudnn_benchmark else 'off'}, {graph}"


def _row(cell: Cell) -> str:
    return (
        f"{cell.model:<10} {cell.batch:>5} {_config(cell):<28} "
        f"{cell.ms_median:9.3f} ms ({cell.ms_min:.3f}-{cell.ms_max:.3f})"
    )


def _short_kernel(name: str, width: int = 60) -> str:
    name = name.replace("|", "\\|")
    return name if len(name) <= width else name[: width - 1] + "…"


def markdown(cells: Sequence[Cell], facts: dict[str, str]) -> str:
    """Two tables: ms per call per cell, and the kernels per layer class."""
    lines = [
        "# Torch runtime: kernels and cudnn.benchmark",
        "",
        f"`python -m benchmarks.torch_kernels` on {facts.get('device_name', facts['device'])}, "
        f"torch {facts['torch']}, cuDNN {facts['cudnn']}. Milliseconds per call (numpy in, "
        "numpy out): median over interleaved rounds, min-max in brackets.",
        "",
        "| model | batch | cudnn.benchmark | CUDA graph | ms per call | min-max |",
        "|---|---:|---|---|---:|---|",
    ]
    for c in cells:
        graph = "yes" if c.graph_replayed else ("no (CPU)" if c.cuda_graph else "no")
        lines.append(
            f"| {c.model} | {c.batch} | {'on' if c.cudnn_benchmark else 'off'} | {graph} | "
            f"{c.ms_median:.3f} | {c.ms_min:.3f}-{c.ms_max:.3f} |"
        )
    lines += [
        "",
        "Kernels (GPU) or CPU ops per layer class, from one profiled call per cell "
        "(`torch.profiler`); a graph replay's kernels are matched to the class of the eager "
        "layer that runs a kernel of the same name.",
        "",
        "| model | batch | configuration | layer class | kernels |",
        "|---|---:|---|---|---|",
    ]
    for c in cells:
        for kind, names in c.kernels_by_class.items():
            shown = "<br>".join(f"`{_short_kernel(n)}`" for n in names) or "-"
            lines.append(f"| {c.model} | {c.batch} | {_config(c)} | {kind} | {shown} |")
        if c.unattributed:
            shown = "<br>".join(f"`{_short_kernel(n)}`" for n in c.unattributed)
            lines.append(f"| {c.model} | {c.batch} | {_config(c)} | (other) | {shown} |")
    return "\n".join(lines) + "\n"


def machine_facts(device: str) -> dict[str, str]:
    facts = {
        "device": device,
        "torch": torch.__version__,
        "cuda": str(torch.version.cuda),
        "cudnn": str(torch.backends.cudnn.version()),
        "python": platform.python_version(),
        "threads": str(torch.get_num_threads()),
    }
    if device == "cuda":
        facts["device_name"] = torch.cuda.get_device_name(0)
    return facts


def main(argv: Sequence[str] | None = None) -> int:
    """Run the grid; print the cells; write ``--json`` and ``--markdown`` when given."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models-dir", type=Path, default=Path("models"))
    parser.add_argument("--models", default=",".join(MODEL_NAMES))
    parser.add_argument("--version", default="1", help="version directory to load (default 1)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--batches", default="1,32,256", help="comma-separated batch sizes")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds per cell")
    parser.add_argument(
        "--seconds-per-round", type=float, default=0.1, help="timed seconds per cell and round"
    )
    parser.add_argument("--json", type=Path, help="write every figure and kernel name here")
    parser.add_argument("--markdown", type=Path, help="write the tables here")
    args = parser.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",") if b]
    facts = machine_facts(args.device)
    saved = torch.backends.cudnn.benchmark
    cells: list[Cell] = []
    try:
        for model in [m for m in args.models.split(",") if m]:
            cells += bench_model(
                model=model,
                version_dir=args.models_dir / model / args.version,
                device=args.device,
                batches=batches,
                rounds=max(1, args.rounds),
                seconds_per_round=args.seconds_per_round,
            )
    finally:
        torch.backends.cudnn.benchmark = saved
    if args.json:
        payload = {"machine": facts, "cells": [asdict(c) for c in cells]}
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
    table = markdown(cells, facts)
    if args.markdown:
        args.markdown.write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
