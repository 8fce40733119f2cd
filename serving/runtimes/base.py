"""The one interface every inference back end implements."""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class TensorSpec:
    """A signature tensor: numpy dtype and shape (``-1`` for a dynamic dimension)."""

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    tensor_name: str = ""  # the graph tensor's name, as SignatureDef TensorInfo.name reports it


@dataclass(frozen=True)
class Signature:
    """A callable signature: named inputs and outputs (TF Serving's SignatureDef)."""

    name: str
    inputs: Mapping[str, TensorSpec]
    outputs: Mapping[str, TensorSpec]
    method_name: str = "tensorflow/serving/predict"


@dataclass(frozen=True)
class RuntimeOptions:
    """Per-runtime settings derived from the server's settings."""

    intra_op_threads: int = 0  # 0 = the library's default
    inter_op_threads: int = 0
    device: str = "cpu"  # "cpu" or "cuda"
    batch_sizes_hint: tuple[int, ...] = field(default=())  # sizes a runtime may pre-compile
    cudnn_benchmark: bool = True  # torch on cuda: torch.backends.cudnn.benchmark


class RuntimeLoadError(RuntimeError):
    """A version directory could not be loaded by this runtime."""


class Runtime(abc.ABC):
    """A loaded model version able to run its signatures on numpy arrays.

    ``predict`` must be thread-safe: the server may call it from several threads at once.
    """

    kind: str = ""

    def __init__(self, version_dir: Path, options: RuntimeOptions) -> None:
        self.version_dir = version_dir
        self.options = options

    def model_file(self, filename: str) -> Path:
        """``filename`` in the version directory; ``RuntimeLoadError`` when it is missing."""
        path = self.version_dir / filename
        if not path.is_file():
            raise RuntimeLoadError(f"{path} not found")
        return path

    @property
    @abc.abstractmethod
    def signatures(self) -> Mapping[str, Signature]:
        """Signatures by name (``serving_default`` at least)."""

    @abc.abstractmethod
    def predict(
        self,
        signature_name: str,
        inputs: Mapping[str, np.ndarray],
        output_names: Sequence[str] | None = None,
    ) -> dict[str, np.ndarray]:
        """Run ``signature_name`` on validated ``inputs``; return the requested outputs (all by
        default), each with the leading batch dimension of the inputs."""

    def close(self) -> None:  # noqa: B027 - optional hook, most runtimes free on GC
        """Release resources held by the runtime (sessions, device memory)."""

    def describe(self) -> dict[str, str]:
        """A few facts for logs and reports (providers, device, library version)."""
        return {"runtime": self.kind}


def empty_outputs(signature: Signature, names: Sequence[str]) -> dict[str, np.ndarray]:
    """Zero-row outputs shaped by ``signature``: for runtimes that cannot run an empty batch
    (OpenVINO answers one row for it; XNNPACK is not asked)."""
    result = {}
    for name in names:
        spec = signature.outputs[name]
        result[name] = np.zeros((0, *(max(d, 0) for d in spec.shape[1:])), spec.dtype)
    return result
