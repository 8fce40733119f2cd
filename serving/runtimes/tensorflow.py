"""TensorFlow back end: runs the SavedModel's signatures (imports TensorFlow only when chosen)."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from contract import SAVED_MODEL_FILENAME
from contract.protos import import_real_tensorflow
from serving.runtimes.base import Runtime, RuntimeLoadError, RuntimeOptions, Signature, TensorSpec
from serving.runtimes.cpuset import threads_or_cpu_count

_threads_configured = threading.Lock()
_threads_done = False


def _size_pool(setter: Any, requested: int) -> None:
    try:
        setter(threads_or_cpu_count(requested))
    except RuntimeError:
        # TensorFlow already runs in this process (an export or a test before the runtime): its
        # pools are fixed. Only a size the operator asked for is an error.
        if requested:
            raise


def _configure_threads(options: RuntimeOptions) -> None:
    """TF's thread pools are process-wide and fixed at first use: set them once, up front."""
    global _threads_done  # noqa: PLW0603 - process-wide TF state, set once
    tf = import_real_tensorflow()

    with _threads_configured:
        if _threads_done:
            return
        # Both pools sized from the process's CPU set, explicitly: TF sets no thread affinity
        # (tests/test_runtime_threads.py), and explicit sizes follow the CPU set whatever TF's
        # own default counts.
        _size_pool(tf.config.threading.set_intra_op_parallelism_threads, options.intra_op_threads)
        _size_pool(tf.config.threading.set_inter_op_parallelism_threads, options.inter_op_threads)
        if options.device != "cuda":
            tf.config.set_visible_devices([], "GPU")
        _threads_done = True


# Up to this many rows the graph runs on TensorFlow's single-threaded executor: at batch 1 the
# default executor's hand-offs between its thread pool and the caller cost more than the ops.
SMALL_BATCH_ROWS = 8


def _graph_tensor_names(version_dir: Path) -> dict[str, dict[str, str]]:
    """``{signature/input-or-output key: TensorInfo.name}`` from ``saved_model.pb``."""
    from tensorflow.core.protobuf import saved_model_pb2  # a proto module: no TF runtime

    saved_model = saved_model_pb2.SavedModel()
    saved_model.ParseFromString((version_dir / SAVED_MODEL_FILENAME).read_bytes())
    names: dict[str, dict[str, str]] = {}
    for meta_graph in saved_model.meta_graphs:
        for sig_name, sig in meta_graph.signature_def.items():
            entry = names.setdefault(sig_name, {})
            entry.update({f"in/{k}": v.name for k, v in sig.inputs.items()})
            entry.update({f"out/{k}": v.name for k, v in sig.outputs.items()})
    return names


class TensorFlowRuntime(Runtime):
    """A SavedModel loaded with ``tf.saved_model.load``; each signature is a concrete function."""

    kind = "tensorflow"

    def __init__(self, version_dir: Path, options: RuntimeOptions) -> None:
        super().__init__(version_dir, options)
        self.model_file(SAVED_MODEL_FILENAME)
        _configure_threads(options)
        tf = import_real_tensorflow()

        self._tf = tf
        try:
            self._loaded = tf.saved_model.load(str(version_dir), tags=["serve"])
            tensor_names = _graph_tensor_names(version_dir)
        except Exception as exc:
            raise RuntimeLoadError(f"TensorFlow cannot load {version_dir}: {exc}") from exc
        self._functions: dict[str, Any] = dict(self._loaded.signatures)
        if not self._functions:
            raise RuntimeLoadError(f"{version_dir} has no signatures")
        self._signatures = {
            name: self._signature(name, fn, tensor_names.get(name, {}))
            for name, fn in self._functions.items()
        }
        self._needs_default_executor: set[str] = set()
        # Up to this many rows, the single-threaded executor (0: never). TF's profiler records
        # no kernels run by it, so loadtest.run.opprofile_tf sets 0 to see them.
        self.single_threaded_max_rows = SMALL_BATCH_ROWS

    @staticmethod
    def _signature(name: str, fn: Any, tensor_names: dict[str, str]) -> Signature:
        def spec(key: str, tf_spec: Any, prefix: str) -> TensorSpec:
            dims = tuple(-1 if d is None else int(d) for d in tf_spec.shape.as_list())
            return TensorSpec(
                key,
                np.dtype(tf_spec.dtype.as_numpy_dtype),
                dims,
                tensor_name=tensor_names.get(f"{prefix}/{key}", ""),
            )

        inputs = {k: spec(k, s, "in") for k, s in fn.structured_input_signature[1].items()}
        outputs = {k: spec(k, s, "out") for k, s in fn.structured_outputs.items()}
        return Signature(name, inputs, outputs)

    @property
    def signatures(self) -> Mapping[str, Signature]:
        return self._signatures

    def predict(
        self,
        signature_name: str,
        inputs: Mapping[str, np.ndarray],
        output_names: Sequence[str] | None = None,
    ) -> dict[str, np.ndarray]:
        fn = self._functions[signature_name]
        tensors = {k: self._tf.constant(v) for k, v in inputs.items()}
        rows = next(iter(inputs.values())).shape[0] if inputs else 0
        if (
            rows <= self.single_threaded_max_rows
            and signature_name not in self._needs_default_executor
        ):
            results = self._call_single_threaded(signature_name, fn, tensors)
        else:
            results = fn(**tensors)
        names = list(output_names) if output_names else list(results)
        return {k: results[k].numpy() for k in names}

    def _call_single_threaded(self, signature_name: str, fn: Any, tensors: dict[str, Any]) -> Any:
        # The graph's kernels run one after the other on the calling thread: no hand-off to
        # the inter-op pool and back, whose threads have gone to sleep between requests.
        try:
            with self._tf.experimental.function_executor_type("SINGLE_THREADED_EXECUTOR"):
                return fn(**tensors)
        except self._tf.errors.OpError:
            # The default executor again: if it runs what that one refused (it refuses some
            # control flow and async kernels), it is this signature's from now on; an error of
            # the inputs or the model fails there too, and changes nothing.
            results = fn(**tensors)
            self._needs_default_executor.add(signature_name)
            return results

    def describe(self) -> dict[str, str]:
        return {"runtime": self.kind, "tensorflow": self._tf.__version__}
