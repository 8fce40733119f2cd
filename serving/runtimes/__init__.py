"""Inference back ends behind one interface; ``load_runtime`` picks one by name.

Each implementation is imported only when chosen, so the ONNX server never imports TensorFlow.
"""

from __future__ import annotations

from pathlib import Path

from contract import RUNTIMES
from serving.runtimes.base import (
    Runtime,
    RuntimeLoadError,
    RuntimeOptions,
    Signature,
    TensorSpec,
)

RUNTIME_KINDS: tuple[str, ...] = RUNTIMES  # one list for server and load tests (contract)

__all__ = [
    "RUNTIME_KINDS",
    "Runtime",
    "RuntimeLoadError",
    "RuntimeOptions",
    "Signature",
    "TensorSpec",
    "load_runtime",
]


def load_runtime(kind: str, version_dir: Path, options: RuntimeOptions | None = None) -> Runtime:
    """Load ``version_dir`` with the runtime ``kind`` (one of ``RUNTIME_KINDS``)."""
    options = options or RuntimeOptions()
    if kind == "onnx":
        from serving.runtimes.onnx import OnnxRuntime

        return OnnxRuntime(version_dir, options)
    if kind == "tensorflow":
        from serving.runtimes.tensorflow import TensorFlowRuntime

        return TensorFlowRuntime(version_dir, options)
    if kind == "torch":
        try:
            from serving.runtimes.torch import TorchRuntime
        except ImportError as exc:
            raise RuntimeLoadError(
                f"the torch runtime needs PyTorch and onnx2torch (pip install .[torch]): {exc}"
            ) from exc
        return TorchRuntime(version_dir, options)
    if kind == "openvino":
        try:
            from serving.runtimes.openvino import OpenVinoRuntime
        except ImportError as exc:
            raise RuntimeLoadError(
                f"the openvino runtime needs OpenVINO (pip install .[openvino]): {exc}"
            ) from exc
        return OpenVinoRuntime(version_dir, options)
    if kind == "litert":
        try:
            from serving.runtimes.litert import LiteRtRuntime
        except ImportError as exc:
            raise RuntimeLoadError(
                f"the litert runtime needs ai-edge-litert (pip install .[litert]): {exc}"
            ) from exc
        return LiteRtRuntime(version_dir, options)
    raise RuntimeLoadError(f"unknown runtime {kind!r}; expected one of {RUNTIME_KINDS}")
