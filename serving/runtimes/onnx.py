"""ONNX Runtime back end: loads ``model.onnx`` from a version directory; no TensorFlow needed."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from contract import ONNX_FILENAME, SIGNATURE_NAME
from serving.runtimes.base import Runtime, RuntimeLoadError, RuntimeOptions, Signature, TensorSpec
from serving.runtimes.cpuset import threads_or_cpu_count

_ONNX_TYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
    "tensor(bool)": np.bool_,
    "tensor(float16)": np.float16,
}


def _spec(arg: ort.NodeArg) -> TensorSpec:
    if arg.type not in _ONNX_TYPES:
        raise RuntimeLoadError(f"unsupported ONNX tensor type {arg.type} for {arg.name}")
    shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in arg.shape)
    return TensorSpec(arg.name, np.dtype(_ONNX_TYPES[arg.type]), shape, tensor_name=arg.name)


# Up to this many rows a single-threaded session is faster: waking a thread pool costs more
# than splitting a few images' work saves.
SMALL_BATCH_ROWS = 8


class OnnxRuntime(Runtime):
    """``model.onnx`` run by ONNX Runtime, on CUDA when onnxruntime-gpu provides it."""

    kind = "onnx"

    def __init__(self, version_dir: Path, options: RuntimeOptions) -> None:
        super().__init__(version_dir, options)
        path = self.model_file(ONNX_FILENAME)
        available = ort.get_available_providers()
        providers = ["CPUExecutionProvider"]
        if options.device == "cuda":
            if "CUDAExecutionProvider" not in available:
                raise RuntimeLoadError(
                    "device cuda asked for, but this onnxruntime has no CUDAExecutionProvider "
                    f"(available: {available}); install onnxruntime-gpu"
                )
            providers.insert(0, "CUDAExecutionProvider")
        # Never intra_op_num_threads = 0: ORT's default pool pins each of its threads to one core
        # of the machine, outside the CPU set the process was given. In a process pinned to CPU 0
        # of 2 (standard model, batch 32) its worker ran pinned to CPU 1 (/proc Cpus_allowed_list);
        # an explicit count makes no affinity calls, and every thread inherits the process's set.
        self.intra_op_threads = threads_or_cpu_count(options.intra_op_threads)
        try:
            self._session = self._open(path, self.intra_op_threads, providers)
            # On CPU with several intra-op threads, small requests get their own 1-thread
            # session (same model, a few hundred KB more memory).
            self._small_session = (
                self._open(path, 1, providers)
                if options.device == "cpu" and self.intra_op_threads != 1
                else self._session
            )
        except Exception as exc:
            raise RuntimeLoadError(f"ONNX Runtime cannot load {path}: {exc}") from exc
        inputs = {a.name: _spec(a) for a in self._session.get_inputs()}
        outputs = {a.name: _spec(a) for a in self._session.get_outputs()}
        # ONNX has one graph; it stands for the SavedModel's serving_default signature.
        self._signatures = {SIGNATURE_NAME: Signature(SIGNATURE_NAME, inputs, outputs)}
        self._output_names = list(outputs)
        self._run_options = ort.RunOptions()

    def _open(
        self, path: Path, intra_op_threads: int, providers: list[str]
    ) -> ort.InferenceSession:
        session_options = ort.SessionOptions()
        session_options.intra_op_num_threads = intra_op_threads
        # The inter-op pool exists only in parallel execution mode; sized explicitly all the same,
        # as its default would pin its threads like the intra-op one.
        session_options.inter_op_num_threads = threads_or_cpu_count(self.options.inter_op_threads)
        session_options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Idle ORT threads spin for a while by default: on a server sharing cores with the
        # network stack (and here with the load generator) that burns the CPU requests need.
        session_options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session_options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        return ort.InferenceSession(str(path), sess_options=session_options, providers=providers)

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
        session = self._session
        if session is not self._small_session:
            rows = next(iter(inputs.values())).shape[0] if inputs else 0
            if rows <= SMALL_BATCH_ROWS:
                session = self._small_session
        feeds = inputs if isinstance(inputs, dict) else dict(inputs)
        return dict(zip(names, session.run(names, feeds, self._run_options), strict=True))

    def describe(self) -> dict[str, str]:
        return {
            "runtime": self.kind,
            "onnxruntime": ort.__version__,
            "providers": ",".join(self._session.get_providers()),
            "intra_op_threads": str(self.intra_op_threads),
        }
