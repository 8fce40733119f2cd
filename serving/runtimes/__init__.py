"""Inference back ends behind one interface; ``load_runtime`` picks one by name.

Each implementation is imported only when chosen, so the ONNX server never imports TensorFlow.
"""

from __future__ import annotations

import importlib
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


# Each runtime's module and class, and for the optional ones what to install when its import fails
# (the message names the extra). Imported only when chosen.
_IMPLEMENTATIONS: dict[str, tuple[str, str, str]] = {
    "onnx": ("serving.runtimes.onnx", "OnnxRuntime", ""),
    "tensorflow": ("serving.runtimes.tensorflow", "TensorFlowRuntime", ""),
    "torch": ("serving.runtimes.torch", "TorchRuntime", "PyTorch and onnx2torch"),
    "openvino": ("serving.runtimes.openvino", "OpenVinoRuntime", "OpenVINO"),
    "litert": ("serving.runtimes.litert", "LiteRtRuntime", "ai-edge-litert"),
}


def load_runtime(kind: str, version_dir: Path, options: RuntimeOptions | None = None) -> Runtime:
    """Load ``version_dir`` with the runtime ``kind`` (one of ``RUNTIME_KINDS``)."""
    if kind not in _IMPLEMENTATIONS:
        raise RuntimeLoadError(f"unknown runtime {kind!r}; expected one of {RUNTIME_KINDS}")
    module_name, class_name, needs = _IMPLEMENTATIONS[kind]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        if not needs:
            raise
        raise RuntimeLoadError(
            f"the {kind} runtime needs {needs} (pip install .[{kind}]): {exc}"
        ) from exc
    runtime_class: type[Runtime] = getattr(module, class_name)
    return runtime_class(version_dir, options or RuntimeOptions())
