"""PyTorch back end: ``model.onnx`` converted to a PyTorch module, run on CUDA or the CPU.

On CUDA, the batch sizes the server expects are captured as CUDA graphs when the model loads
(fixed shapes: one replay per request instead of a dozen kernel launches from Python); other
batch sizes run eagerly. On the CPU every batch runs eagerly. Needs ``pip install .[torch]``.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from contract import ONNX_FILENAME, SIGNATURE_NAME
from serving.runtimes.base import Runtime, RuntimeLoadError, RuntimeOptions, Signature, TensorSpec
from serving.runtimes.cpuset import threads_or_cpu_count
from serving.runtimes.onnx_torch_converters import ConvertedModel, convert_model, onnx2torch_version

# Captured on CUDA when the server gives no batch sizes: powers of two cover what a batcher makes.
DEFAULT_CUDA_GRAPH_BATCH_SIZES: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256)
_WARMUP_RUNS = 3  # before capture: lets cudnn.benchmark pick its kernels and allocations settle

# The ONNX tensor types the server's codecs handle (ONNX Runtime's back end accepts the same).
_ONNX_TYPES: dict[int, type[np.generic]] = {
    onnx.TensorProto.FLOAT: np.float32,
    onnx.TensorProto.DOUBLE: np.float64,
    onnx.TensorProto.INT64: np.int64,
    onnx.TensorProto.INT32: np.int32,
    onnx.TensorProto.UINT8: np.uint8,
    onnx.TensorProto.INT8: np.int8,
    onnx.TensorProto.BOOL: np.bool_,
    onnx.TensorProto.FLOAT16: np.float16,
}


def tensor_spec(value: onnx.ValueInfoProto) -> TensorSpec:
    """A signature tensor from an ONNX graph input or output, as ONNX Runtime reports it."""
    elem_type = value.type.tensor_type.elem_type
    if elem_type not in _ONNX_TYPES:
        name = onnx.TensorProto.DataType.Name(elem_type)
        raise RuntimeLoadError(f"unsupported ONNX tensor type {name} for {value.name}")
    shape = tuple(
        int(d.dim_value) if d.HasField("dim_value") else -1
        for d in value.type.tensor_type.shape.dim
    )
    return TensorSpec(value.name, np.dtype(_ONNX_TYPES[elem_type]), shape, tensor_name=value.name)


# Graph capture (torch.cuda.graph synchronizes the device and empties the allocator's cache on
# entry) and device-wide calls must not overlap a capture on another thread: two versions loading
# at once, or one unloading while another loads, broke captures on the GPU machine ("operation
# not permitted when stream is capturing"). Requests are not serialized by it: they replay
# graphs on their own non-blocking streams or run eagerly, neither of which disturbs a capture.
_CUDA_DEVICE_LOCK = threading.Lock()


class _CudaGraph:
    """One fixed batch size captured as a CUDA graph, with pinned host buffers for its copies.

    Replays are serialized by a lock: the graph's input and output buffers are shared state.
    """

    def __init__(self, module: nn.Module, examples: Sequence[torch.Tensor]) -> None:
        with _CUDA_DEVICE_LOCK:
            self._capture(module, examples)

    def _capture(self, module: nn.Module, examples: Sequence[torch.Tensor]) -> None:
        self.lock = threading.Lock()
        self.stream = torch.cuda.Stream()
        self.static_inputs = [torch.empty_like(e) for e in examples]
        self.host_inputs = [torch.empty(e.shape, dtype=e.dtype, pin_memory=True) for e in examples]
        for buffer, example in zip(self.static_inputs, examples, strict=True):
            buffer.copy_(example)
        warmup = torch.cuda.Stream()
        warmup.wait_stream(torch.cuda.current_stream())
        with torch.inference_mode(), torch.cuda.stream(warmup):
            for _ in range(_WARMUP_RUNS):
                module(*self.static_inputs)
        torch.cuda.current_stream().wait_stream(warmup)
        self.graph = torch.cuda.CUDAGraph()
        # thread_local: requests running eagerly on other threads do not break this capture.
        with (
            torch.inference_mode(),
            torch.cuda.graph(self.graph, capture_error_mode="thread_local"),
        ):
            self.static_outputs = list(module(*self.static_inputs))
        self.host_outputs = [
            torch.empty(o.shape, dtype=o.dtype, pin_memory=True) for o in self.static_outputs
        ]
        self.host_input_arrays = [h.numpy() for h in self.host_inputs]
        self.host_output_arrays = [h.numpy() for h in self.host_outputs]

    def run(self, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
        with self.lock:
            for staging, array in zip(self.host_input_arrays, arrays, strict=True):
                np.copyto(staging, array, casting="no")
            with torch.cuda.stream(self.stream):
                for static, pinned in zip(self.static_inputs, self.host_inputs, strict=True):
                    static.copy_(pinned, non_blocking=True)
                self.graph.replay()
                for pinned, static in zip(self.host_outputs, self.static_outputs, strict=True):
                    pinned.copy_(static, non_blocking=True)
            self.stream.synchronize()
            # Copies: the pinned buffers are overwritten by the next request.
            return [a.copy() for a in self.host_output_arrays]


class TorchExecutor:
    """Runs a module that maps tensors to a tuple of tensors on numpy arrays, on one device.

    On CUDA, batch sizes in ``graph_batch_sizes`` replay CUDA graphs captured at construction;
    others run eagerly. Modules with 2-D convolutions run channels-last unless asked not to.
    Thread-safe. Shared by :class:`TorchRuntime` and the benchmark's native
    reference so both are measured through the same machinery.
    """

    def __init__(
        self,
        module: nn.Module,
        input_specs: Sequence[TensorSpec],
        device: str,
        graph_batch_sizes: Sequence[int] = (),
        channels_last: bool = True,
    ) -> None:
        self.device = torch.device(device)
        self.module = module.to(self.device).eval().requires_grad_(False)
        self.channels_last = channels_last and any(p.dim() == 4 for p in module.parameters())
        if self.channels_last:
            # 2-D convolutions with NHWC weights run NHWC end to end (oneDNN and cuDNN kernels
            # for it, no layout copies): what a native module fed NHWC images gets, and a
            # ONNX graph's Transpose back to NHWC before its Flatten becomes a free view.
            _to_channels_last(self.module)
        self.input_specs = tuple(input_specs)
        self.graphs: dict[int, _CudaGraph] = {}
        if self.device.type == "cuda":
            for batch in sorted({b for b in graph_batch_sizes if b > 0}):
                self.graphs[batch] = _CudaGraph(self.module, self._examples(batch))

    def _examples(self, batch: int) -> list[torch.Tensor]:
        examples = []
        for spec in self.input_specs:
            if any(d < 0 for d in spec.shape[1:]):
                raise RuntimeLoadError(
                    f"input {spec.name} has dynamic non-batch dimensions {spec.shape}: "
                    "CUDA graphs need fixed shapes (leave the batch sizes hint empty)"
                )
            shape = (batch, *spec.shape[1:])
            examples.append(torch.zeros(shape, dtype=_torch_dtype(spec.dtype), device=self.device))
        return examples

    def run(self, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Run the module on ``arrays`` (one per input, same batch); numpy outputs in order."""
        batch = arrays[0].shape[0] if arrays and arrays[0].ndim else -1
        graph = self.graphs.get(batch)
        if graph is not None:
            return graph.run(arrays)
        with torch.inference_mode():
            # Read-only arrays (views of request bytes) are copied: torch wants writable memory.
            tensors = [
                torch.from_numpy(a if a.flags.writeable else a.copy()).to(self.device)
                for a in arrays
            ]
            outputs = self.module(*tensors)
            return [o.cpu().numpy() for o in outputs]

    def close(self) -> None:
        """Free the captured graphs and, on CUDA, the cached device memory."""
        self.graphs.clear()
        if self.device.type == "cuda":
            with _CUDA_DEVICE_LOCK:
                torch.cuda.synchronize(self.device)
                torch.cuda.empty_cache()


def _to_channels_last(module: nn.Module) -> None:
    """4-D parameters and buffers to NHWC strides (``module.to(memory_format=...)``, typed)."""
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            if tensor.dim() != 4:
                continue
            # A fresh NHWC copy, not .contiguous(): a weight with one input channel or a 1x1
            # kernel counts as NHWC already, yet keeps NCHW strides that steer the kernel
            # choice (and the next layer's input) back to NCHW.
            nhwc = torch.empty_like(tensor, memory_format=torch.channels_last)
            # Idempotent: replacing the storage of weights that a captured CUDA graph reads
            # would leave the graph reading freed memory.
            if tensor.stride() != nhwc.stride():
                tensor.data = nhwc.copy_(tensor.data)


def _torch_dtype(dtype: np.dtype) -> torch.dtype:
    return torch.from_numpy(np.empty(0, dtype=dtype)).dtype


def resolve_device(device: str) -> str:
    """Check that ``device`` (``cpu`` or ``cuda``) is usable here; return it."""
    if device == "cpu":
        return device
    if device == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeLoadError(
                f"device cuda asked for, but PyTorch {torch.__version__} sees no CUDA device "
                f"(built for CUDA {torch.version.cuda or 'none: a CPU-only build'})"
            )
        return device
    raise RuntimeLoadError(f"unknown device {device!r}; expected cpu or cuda")


class TorchRuntime(Runtime):
    """``model.onnx`` converted by onnx2torch and run by PyTorch (CUDA graphs on a GPU)."""

    kind = "torch"

    def __init__(self, version_dir: Path, options: RuntimeOptions) -> None:
        super().__init__(version_dir, options)
        path = self.model_file(ONNX_FILENAME)
        device = resolve_device(options.device)
        # Process-wide, like the server's flag; by default one per CPU of the process's CPU set
        # (libgomp binds no thread unless OMP_PROC_BIND asks it to).
        torch.set_num_threads(threads_or_cpu_count(options.intra_op_threads))
        if device == "cuda":
            # Let cuDNN time its kernels once per shape (unless --cudnn_benchmark=false), and keep
            # fp32 exact (no TF32) so answers match the other runtimes; all process-wide.
            torch.backends.cudnn.benchmark = options.cudnn_benchmark
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cuda.matmul.allow_tf32 = False
        try:
            model = onnx.load(str(path))
            self._converted: ConvertedModel = convert_model(model)
        except Exception as exc:  # onnx and onnx2torch raise many unrelated types
            raise RuntimeLoadError(f"cannot convert {path} to PyTorch: {exc}") from exc
        inputs = {v.name: tensor_spec(v) for v in model.graph.input}
        inputs = {name: inputs[name] for name in self._converted.input_names}
        outputs = {v.name: tensor_spec(v) for v in model.graph.output}
        # ONNX has one graph; it stands for the SavedModel's serving_default signature.
        self._signatures = {SIGNATURE_NAME: Signature(SIGNATURE_NAME, inputs, outputs)}
        self._output_index = {name: i for i, name in enumerate(self._converted.output_names)}
        sizes = options.batch_sizes_hint or DEFAULT_CUDA_GRAPH_BATCH_SIZES
        try:
            self._executor = TorchExecutor(
                self._converted.module,
                list(inputs.values()),
                device,
                graph_batch_sizes=sizes if device == "cuda" else (),
            )
        except RuntimeLoadError:
            raise
        except RuntimeError as exc:  # CUDA errors: out of memory, capture of an unsupported op
            raise RuntimeLoadError(f"cannot prepare {path} on {device}: {exc}") from exc

    @property
    def signatures(self) -> Mapping[str, Signature]:
        return self._signatures

    @property
    def graph_batch_sizes(self) -> tuple[int, ...]:
        """The batch sizes replayed as CUDA graphs (empty on the CPU)."""
        return tuple(sorted(self._executor.graphs))

    @property
    def module(self) -> nn.Module:
        """The converted PyTorch module (outputs in the ONNX graph's order)."""
        return self._converted.module

    def predict(
        self,
        signature_name: str,
        inputs: Mapping[str, np.ndarray],
        output_names: Sequence[str] | None = None,
    ) -> dict[str, np.ndarray]:
        arrays = [inputs[name] for name in self._converted.input_names]
        results = self._executor.run(arrays)
        names = list(output_names) if output_names else list(self._converted.output_names)
        return {name: results[self._output_index[name]] for name in names}

    def close(self) -> None:
        self._executor.close()

    def describe(self) -> dict[str, str]:
        device = str(self._executor.device)
        if self._executor.device.type == "cuda":
            device += f" ({torch.cuda.get_device_name(self._executor.device)})"
        return {
            "runtime": self.kind,
            "torch": torch.__version__,
            "onnx2torch": onnx2torch_version(),
            "device": device,
            "cuda_graph_batch_sizes": ",".join(str(b) for b in self.graph_batch_sizes) or "none",
            "memory_format": "channels_last" if self._executor.channels_last else "contiguous",
            "intra_op_threads": str(torch.get_num_threads()),
            "cudnn_benchmark": str(torch.backends.cudnn.benchmark).lower()
            if self._executor.device.type == "cuda"
            else "n/a",
        }
