"""Prediction and metadata, independent of the transport: validation, dispatch, batching.

Both the gRPC and the REST adapters call ``PredictionService``; they only convert protos or JSON
to numpy and back.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np

from serving import metrics
from serving.errors import (
    ServingError,
    failed_precondition,
    internal,
    invalid_argument,
)
from serving.model.batching import Batcher
from serving.model.manager import ModelManager
from serving.model.versions import ServableVersion
from serving.runtimes import Signature
from serving.settings import BatchingSettings

DEFAULT_SIGNATURE = "serving_default"


@dataclass(frozen=True)
class ModelRef:
    """Which model a request is for: a name plus an optional version or label."""

    name: str
    version: int | None = None
    label: str | None = None
    signature_name: str = ""


@dataclass(frozen=True)
class PredictResult:
    """Outputs of one request and the version that produced them."""

    model: str
    version: int
    signature_name: str
    outputs: dict[str, np.ndarray]


class PredictionService:
    """Validates requests against the version's signature and runs them."""

    def __init__(
        self,
        manager: ModelManager,
        executor: Executor,
        *,
        batching: BatchingSettings | None = None,
        batch_executor: Executor | None = None,
        inline_max_rows: int = 0,
    ) -> None:
        self.manager = manager
        self._executor = executor
        self._batching = batching
        self._batch_executor = batch_executor or executor
        # Tiny requests run on the event loop thread: a thread hop costs more than the model.
        self._inline_max_rows = inline_max_rows

    def signature(self, servable: ServableVersion, name: str) -> Signature:
        """The signature ``name`` (default ``serving_default``) of a loaded version."""
        assert servable.runtime is not None  # AVAILABLE versions always have one
        signatures = servable.runtime.signatures
        key = name or DEFAULT_SIGNATURE
        if key not in signatures:
            raise failed_precondition(
                f'Serving signature name: "{key}" not found in signature def; model '
                f"'{servable.model}' has {sorted(signatures)}"
            )
        return signatures[key]

    async def predict(
        self,
        ref: ModelRef,
        inputs: Mapping[str, np.ndarray],
        output_filter: Sequence[str] = (),
        api: str = "grpc",
        timeout_s: float | None = None,
    ) -> PredictResult:
        """Run one Predict request; raises ``ServingError`` with the precise status.

        ``timeout_s`` bounds the time spent waiting (batching queue, inference thread).
        """
        started = time.perf_counter()
        version_label = "unknown"
        code = "OK"
        servable = None
        try:
            servable = self.manager.resolve(ref.name, ref.version, ref.label)
            servable.acquire()
            version_label = str(servable.version)
            signature = self.signature(servable, ref.signature_name)
            rows = validate_inputs(signature, inputs)
            output_names = validate_output_filter(signature, output_filter)
            outputs = await self._run(servable, signature, inputs, rows, timeout_s)
            if output_names:
                outputs = {k: outputs[k] for k in output_names}
            return PredictResult(ref.name, servable.version, signature.name, outputs)
        except ServingError as exc:
            code = exc.code.name
            raise
        except TimeoutError:
            code = "DEADLINE_EXCEEDED"
            raise
        except asyncio.CancelledError:
            code = "CANCELLED"  # the client went away
            raise
        finally:
            if servable is not None:
                servable.release()
            model_label = ref.name if self.manager.serves(ref.name) else "_unknown_"
            metrics.observe_request(
                model_label, version_label, api, code, time.perf_counter() - started
            )

    async def _run(
        self,
        servable: ServableVersion,
        signature: Signature,
        inputs: Mapping[str, np.ndarray],
        rows: int,
        timeout_s: float | None,
    ) -> dict[str, np.ndarray]:
        if rows == 0:
            return empty_outputs(signature)
        runtime = servable.runtime
        assert runtime is not None

        def run(batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
            return runtime.predict(signature.name, batch)

        try:
            if self._batching is not None:
                batcher = servable.batchers.get(signature.name)
                if batcher is None:
                    batcher = Batcher(
                        run,
                        self._batching,
                        self._batch_executor,
                        model=servable.model,
                        version=servable.version,
                    )
                    servable.batchers[signature.name] = batcher
                outputs = await _bounded(batcher.submit(inputs, rows), timeout_s)
            elif rows <= self._inline_max_rows:
                outputs = run(inputs)  # never suspends, so no deadline to enforce
            else:
                loop = asyncio.get_running_loop()
                outputs = await _bounded(
                    loop.run_in_executor(self._executor, run, inputs), timeout_s
                )
        except (ServingError, TimeoutError):
            raise  # TimeoutError is the request deadline (DEADLINE_EXCEEDED), not a fault
        except Exception as exc:
            raise internal(f"the {runtime.kind} runtime failed: {exc}") from exc
        check_outputs(signature, outputs, rows)
        return outputs


async def _bounded(
    awaitable: Awaitable[dict[str, np.ndarray]], timeout_s: float | None
) -> dict[str, np.ndarray]:
    if timeout_s is None:
        return await awaitable
    async with asyncio.timeout(timeout_s):
        return await awaitable


def _batch_dim(name: str, array: np.ndarray) -> int:
    if array.ndim == 0:
        raise invalid_argument(f"input '{name}' is a scalar; a batch dimension is required")
    return int(array.shape[0])


def validate_inputs(signature: Signature, inputs: Mapping[str, np.ndarray]) -> int:
    """Check names, dtypes and shapes against the signature; return the batch size."""
    expected = signature.inputs
    missing = sorted(set(expected) - set(inputs))
    extra = sorted(set(inputs) - set(expected))
    if extra:
        raise invalid_argument(
            f"input tensor alias not found in signature: {', '.join(extra)}. "
            f"Inputs expected to be in the set {{{', '.join(sorted(expected))}}}."
        )
    if missing:
        raise invalid_argument(
            f"missing input(s) {', '.join(missing)} of signature '{signature.name}'"
        )
    batch: int | None = None
    for name, spec in expected.items():
        array = inputs[name]
        if array.dtype != spec.dtype:
            raise invalid_argument(
                f"Expects arg '{name}' to be {_tf_dtype(spec.dtype)} but {_tf_dtype(array.dtype)} "
                "is provided"
            )
        if array.ndim != len(spec.shape):
            raise invalid_argument(
                f"input '{name}' has rank {array.ndim} (shape {list(array.shape)}); the signature "
                f"expects rank {len(spec.shape)} {list(spec.shape)}"
            )
        for axis, (got, want) in enumerate(zip(array.shape, spec.shape, strict=True)):
            if want >= 0 and got != want:
                raise invalid_argument(
                    f"input '{name}' has shape {list(array.shape)}; dimension {axis} must be "
                    f"{want} (signature shape {list(spec.shape)})"
                )
        rows = _batch_dim(name, array)
        if batch is not None and rows != batch:
            raise invalid_argument(f"inputs have different batch sizes ({batch} and {rows})")
        batch = rows
    return batch or 0


def validate_output_filter(signature: Signature, output_filter: Sequence[str]) -> list[str]:
    """Names from ``output_filter`` (all outputs when empty); unknown names are rejected."""
    names = list(dict.fromkeys(output_filter))
    unknown = [n for n in names if n not in signature.outputs]
    if unknown:
        raise invalid_argument(
            f"output tensor alias not found in signature: {', '.join(unknown)}. Outputs "
            f"expected to be in the set {{{', '.join(sorted(signature.outputs))}}}."
        )
    return names


def empty_outputs(signature: Signature) -> dict[str, np.ndarray]:
    """Well-shaped empty outputs for a 0-row request (no runtime call)."""
    return {
        name: np.zeros((0, *[max(d, 0) for d in spec.shape[1:]]), dtype=spec.dtype)
        for name, spec in signature.outputs.items()
    }


def check_outputs(signature: Signature, outputs: Mapping[str, np.ndarray], rows: int) -> None:
    """A runtime must return every output with the request's rows: anything else is a fault."""
    for name, spec in signature.outputs.items():
        array = outputs.get(name)
        if (
            array is None
            or array.ndim != len(spec.shape)
            or (array.ndim and array.shape[0] != rows)
        ):
            got = None if array is None else list(array.shape)
            raise internal(f"runtime returned output '{name}' of shape {got} for {rows} rows")


def _tf_dtype(dtype: np.dtype) -> str:
    names = {
        np.dtype(np.float32): "float",
        np.dtype(np.float64): "double",
        np.dtype(np.int64): "int64",
        np.dtype(np.int32): "int32",
        np.dtype(np.uint8): "uint8",
        np.dtype(np.bool_): "bool",
        np.dtype(np.float16): "half",
    }
    return names.get(np.dtype(dtype), str(dtype))
