"""OpenVINO back end: ``model.onnx`` read directly by OpenVINO's CPU plugin (no IR conversion step).

Compiled with every setting that changes answers or placement spelled out:

- ``INFERENCE_PRECISION_HINT`` f32. OpenVINO's CPU default is bf16 wherever the CPU has AVX-512
  BF16 or AMX (``core.get_property("CPU", "INFERENCE_PRECISION_HINT")`` answered bfloat16 on this
  project's Xeon): other numbers than TensorFlow's and, near a tie, other classes. ``precision=
  "bf16"`` asks for it explicitly, for a labelled measurement only.
- ``INFERENCE_NUM_THREADS`` from ``--tensorflow_intra_op_parallelism``, by default one per CPU of
  the process's CPU set; ``NUM_STREAMS`` from ``--tensorflow_inter_op_parallelism`` (default 1:
  one stream using all those threads per call, as ONNX Runtime's one pool does).
- ``ENABLE_CPU_PINNING`` off. Its default (on) pinned one of OpenVINO's threads to CPU 1 in an
  unpinned process on this 2-CPU machine (``/proc/<pid>/task/*/status``); off, every thread
  inherits the CPU set the process was given.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov

from contract import ONNX_FILENAME, SIGNATURE_NAME
from serving.runtimes.base import (
    Runtime,
    RuntimeLoadError,
    RuntimeOptions,
    Signature,
    TensorSpec,
    empty_outputs,
)
from serving.runtimes.cpuset import threads_or_cpu_count

PRECISIONS: dict[str, str] = {"f32": "f32", "bf16": "bf16"}
# One model loads at a time. The server loads a configuration's models on two loader threads at
# once; once (a sweep's server pinned to one CPU, machine load ~10, OpenVINO 2026.4) both hung
# for good inside ``port.get_element_type().to_dtype()`` (py-spy: both threads idle in ``_spec``,
# futex waits) and the server never finished starting. Not reproduced in 5 starts since, with or
# without this lock; the lock rules out that state for the price of loading models one by one.
_LOADING = threading.Lock()


def compile_config(threads: int, streams: int, precision: str, perf_count: bool) -> dict[str, Any]:
    """The CPU plugin's properties for ``compile_model``."""
    if precision not in PRECISIONS:
        raise RuntimeLoadError(
            f"unknown precision {precision!r}; expected one of {list(PRECISIONS)}"
        )
    return {
        "INFERENCE_PRECISION_HINT": PRECISIONS[precision],
        "INFERENCE_NUM_THREADS": threads,
        "NUM_STREAMS": streams,
        "ENABLE_CPU_PINNING": False,
        "PERF_COUNT": perf_count,
    }


def _spec(port: Any) -> TensorSpec:
    shape = tuple(d.get_length() if d.is_static else -1 for d in port.get_partial_shape())
    name = port.get_any_name()
    return TensorSpec(name, np.dtype(port.get_element_type().to_dtype()), shape, tensor_name=name)


class OpenVinoRuntime(Runtime):
    """``model.onnx`` compiled by OpenVINO for the CPU; one infer request per concurrent call."""

    kind = "openvino"

    def __init__(
        self,
        version_dir: Path,
        options: RuntimeOptions,
        *,
        precision: str = "f32",
        perf_count: bool = False,
    ) -> None:
        super().__init__(version_dir, options)
        path = self.model_file(ONNX_FILENAME)
        if options.device != "cpu":
            raise RuntimeLoadError(f"the openvino runtime runs on cpu only, not {options.device}")
        self.threads = threads_or_cpu_count(options.intra_op_threads)
        self.streams = options.inter_op_threads or 1
        config = compile_config(self.threads, self.streams, precision, perf_count)
        with _LOADING:
            try:
                self._compiled = ov.Core().compile_model(str(path), "CPU", config)
            except Exception as exc:
                raise RuntimeLoadError(f"OpenVINO cannot load {path}: {exc}") from exc
            inputs = {port.get_any_name(): _spec(port) for port in self._compiled.inputs}
            outputs = {port.get_any_name(): _spec(port) for port in self._compiled.outputs}
        # One graph, as in ONNX: it stands for the SavedModel's serving_default signature.
        self._signature = Signature(SIGNATURE_NAME, inputs, outputs)
        self._signatures = {SIGNATURE_NAME: self._signature}
        self._output_names = list(outputs)
        # An infer request is not re-entrant: each call takes an idle one or makes one, and puts
        # it back; there are never more than the calls that ran at once.
        self._idle: queue.SimpleQueue[ov.InferRequest] = queue.SimpleQueue()

    @property
    def compiled(self) -> ov.CompiledModel:
        """The compiled model (for profiling and inspection)."""
        return self._compiled

    @property
    def signatures(self) -> Mapping[str, Signature]:
        return self._signatures

    def predict(
        self,
        signature_name: str,
        inputs: Mapping[str, np.ndarray],
        output_names: Sequence[str] | None = None,
    ) -> dict[str, np.ndarray]:
        names = list(output_names) if output_names else self._output_names
        rows = next(iter(inputs.values())).shape[0] if inputs else 0
        if rows == 0:
            return empty_outputs(self._signature, names)  # OpenVINO answers one row for none
        try:
            request = self._idle.get_nowait()
        except queue.Empty:
            request = self._compiled.create_infer_request()
        try:
            results = request.infer(dict(inputs))  # outputs copied out (share_outputs=False)
            return {name: results[name] for name in names}
        finally:
            self._idle.put(request)

    def describe(self) -> dict[str, str]:
        return {
            "runtime": self.kind,
            "openvino": ov.get_version(),
            "precision": self._compiled.get_property("INFERENCE_PRECISION_HINT").to_string(),
            "threads": str(self._compiled.get_property("INFERENCE_NUM_THREADS")),
            "streams": str(self._compiled.get_property("NUM_STREAMS")),
            "cpu_pinning": str(self._compiled.get_property("ENABLE_CPU_PINNING")),
        }


@dataclass(frozen=True)
class NodeTime:
    """One node of the compiled graph: its type and the kernel OpenVINO ran it with."""

    name: str
    layer_type: str  # OpenVINO's operation: Convolution, GroupConvolution, FullyConnected...
    exec_type: str  # the implementation: brgconv_avx512_dw_f32, jit_avx512_f32, gemm_mlas_f32...
    real_time_us: float  # mean wall time per call
    executed: bool  # False for nodes fused into another (their time counts there)


def node_profile(
    version_dir: Path,
    images: np.ndarray,
    options: RuntimeOptions | None = None,
    *,
    precision: str = "f32",
    repeats: int = 10,
) -> list[NodeTime]:
    """OpenVINO's per-node performance counters over ``repeats`` calls on ``images`` (after one
    warm-up call), in execution order. ``PERF_COUNT`` is compiled in for this only."""
    runtime = OpenVinoRuntime(
        version_dir, options or RuntimeOptions(), precision=precision, perf_count=True
    )
    request = runtime.compiled.create_infer_request()
    feeds = {next(iter(runtime.signatures[SIGNATURE_NAME].inputs)): images}
    request.infer(feeds)
    totals: dict[str, float] = {}
    infos: dict[str, Any] = {}
    for _ in range(repeats):
        request.infer(feeds)
        for info in request.profiling_info:
            infos.setdefault(info.node_name, info)
            totals[info.node_name] = totals.get(info.node_name, 0.0) + (
                info.real_time.total_seconds() * 1e6
            )
    return [
        NodeTime(
            name=name,
            layer_type=info.node_type,
            exec_type=info.exec_type,
            real_time_us=totals[name] / max(repeats, 1),
            executed=info.status == ov.ProfilingInfo.Status.EXECUTED,
        )
        for name, info in infos.items()
    ]
