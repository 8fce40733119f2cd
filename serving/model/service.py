"""Prediction and metadata, independent of the transport: validation, dispatch, batching.

``PredictionService`` is the data plane (MLServer's ``DataPlane``): both the gRPC and the REST
adapters call only its narrow facade (``predict``, ``input_signature``, ``metadata``,
``status``, ``unsupported``, ``readiness``, ``reload_config``) and never the model manager; they
only convert protos or JSON to numpy and back.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import NamedTuple, NoReturn

import numpy as np

from serving import metrics
from serving.errors import (
    ServingError,
    failed_precondition,
    internal,
    invalid_argument,
    not_found,
    status_of,
    unimplemented,
)
from serving.metrics import PhaseTimes
from serving.model.admission import Admission, Ticket, budget_from_memory, memory_limit_bytes
from serving.model.batching import Batcher
from serving.model.config import ModelConfig
from serving.model.manager import ModelManager
from serving.model.runs import predict_in_runs
from serving.model.versions import ServableVersion
from serving.runtimes import Runtime, Signature
from serving.settings import BatchingSettings

DEFAULT_SIGNATURE = "serving_default"


class ModelRef(NamedTuple):
    """Which model a request is for: a name plus an optional version or label (a named tuple:
    made once per request, and a frozen dataclass's ``__init__`` costs three times more)."""

    name: str
    version: int | None = None
    label: str | None = None
    signature_name: str = ""


class PredictResult(NamedTuple):
    """Outputs of one request and the version that produced them."""

    model: str
    version: int
    signature_name: str
    outputs: dict[str, np.ndarray]
    runtime: str = ""  # the runtime kind that ran it (a label of the phase histogram)


@dataclass(frozen=True)
class ModelMetadata:
    """What GetModelMetadata reports: the version that answers and its signatures."""

    name: str
    version: int
    signatures: Mapping[str, Signature]


class PredictionService:
    """Validates requests against the version's signature and runs them; the transports'
    only way into the models."""

    def __init__(
        self,
        manager: ModelManager,
        executor: Executor,
        *,
        batching: BatchingSettings | None = None,
        batch_executor: Executor | None = None,
        inline_max_rows: int = 0,
        admission: Admission | None = None,
        max_rows_per_run: int = 0,
    ) -> None:
        self._manager = manager
        # No budget given (tests, tools): the default of --max_inflight_request_bytes.
        self.admission = admission or Admission(budget_from_memory(memory_limit_bytes()[0]))
        # Larger requests run through the runtime in parts (serving/model/runs.py).
        self.max_rows_per_run = max_rows_per_run
        self._executor = executor
        self._batching = batching
        self._batch_executor = batch_executor or executor
        # Tiny requests run on the event loop thread: a thread hop costs more than the model.
        self._inline_max_rows = inline_max_rows
        # Predict calls between validation and answer (the transports ask whether the loop is
        # busy before deciding where to decode a large body).
        self.in_flight = 0

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

    # ---- the facade the transports call ------------------------------------------------
    def admit(self, body_bytes: int, bytes_per_byte: float, api: str) -> Ticket:
        """Charge a request's memory to the in-flight budget before it is decoded, or refuse
        it (serving/model/admission.py); the transport releases the ticket once answered."""
        return self.admission.admit(body_bytes, bytes_per_byte, api)

    def input_signature(self, ref: ModelRef) -> Signature:
        """The signature a request for ``ref`` will run (REST decodes JSON against it)."""
        servable = self._manager.resolve(ref.name, ref.version, ref.label)
        return self.signature(servable, ref.signature_name)

    def metadata(self, ref: ModelRef) -> ModelMetadata:
        """The answering version of ``ref`` and its signatures."""
        servable = self._manager.resolve(ref.name, ref.version, ref.label)
        assert servable.runtime is not None  # resolve returns AVAILABLE versions only
        return ModelMetadata(ref.name, servable.version, servable.runtime.signatures)

    def status(self, ref: ModelRef) -> list[ServableVersion]:
        """The versions of a model newest first: all it has had, or the one ``ref`` names (by
        number or label); NOT_FOUND when there is none."""
        version = ref.version
        if ref.label is not None:
            version = self._manager.resolve(ref.name, None, ref.label).version
        model = self._manager.model(ref.name)
        versions = sorted(model.versions.values(), key=lambda v: v.version, reverse=True)
        if version is None:
            return versions
        chosen = [v for v in versions if v.version == version]
        if not chosen:
            raise not_found(f"Could not find version {version} of model {ref.name}")
        return chosen

    def unsupported(self, ref: ModelRef, api: str) -> NoReturn:
        """Raise UNIMPLEMENTED for Classify/Regress/MultiInference (``api`` as the transport
        names it): the models here have Predict signatures only. NOT_FOUND / FAILED_PRECONDITION
        first when the model or signature does not exist, as for Predict."""
        servable = self._manager.resolve(ref.name, ref.version, ref.label)
        signature = self.signature(servable, ref.signature_name)
        raise unimplemented(
            f"{api} needs a classification or regression signature; model '{ref.name}' version "
            f"{servable.version} signature '{signature.name}' is a Predict signature "
            f"({signature.method_name}): use Predict (REST :predict)"
        )

    def readiness(self) -> tuple[bool, dict[str, bool]]:
        """Whether every model can answer, and each model's own readiness."""
        manager = self._manager
        return manager.all_available(), {n: manager.is_available(n) for n in manager.model_names}

    async def reload_config(self, configs: list[ModelConfig]) -> None:
        """Serve exactly ``configs`` (ModelService.HandleReloadConfigRequest); waits for the new
        loads. ``ConfigError`` (nothing changed) when a base path is outside the allowed roots."""
        await self._manager.apply_config(configs, wait=True)

    async def predict(
        self,
        ref: ModelRef,
        inputs: Mapping[str, np.ndarray],
        output_filter: Sequence[str] = (),
        api: str = "grpc",
        timeout_s: float | None = None,
        times: PhaseTimes | None = None,
    ) -> PredictResult:
        """Run one Predict request; raises ``ServingError`` with the precise status.

        ``timeout_s`` bounds the time spent waiting (batching queue, inference thread).
        ``times`` receives the request's queue wait and inference time.
        """
        started = time.perf_counter()
        version_label = "unknown"
        code = "OK"
        servable = None
        self.in_flight += 1
        try:
            servable = self._manager.resolve(ref.name, ref.version, ref.label)
            servable.acquire()
            version_label = str(servable.version)
            return await self._predict_on(servable, ref, inputs, output_filter, timeout_s, times)
        except asyncio.CancelledError:
            code = "CANCELLED"  # the client went away
            raise
        except Exception as exc:
            code = status_of(exc).code.name
            raise
        finally:
            self.in_flight -= 1
            if servable is not None:
                servable.release()
            self._observe(ref, servable, version_label, api, code, started)

    async def _predict_on(
        self,
        servable: ServableVersion,
        ref: ModelRef,
        inputs: Mapping[str, np.ndarray],
        output_filter: Sequence[str],
        timeout_s: float | None,
        times: PhaseTimes | None,
    ) -> PredictResult:
        """The request on the version it resolved to (acquired by the caller): validate, run
        inline, on a thread or through the batcher, filter the outputs."""
        signature = self.signature(servable, ref.signature_name)
        rows = validate_inputs(signature, inputs)
        output_names = validate_output_filter(signature, output_filter)
        runtime = servable.runtime
        assert runtime is not None
        if rows == 0:
            outputs = empty_outputs(signature)
        elif self._batching is None and rows <= self._inline_max_rows:
            # Tiny requests run on the event loop thread: a thread hop costs more than the
            # model. Never suspends, so there is no deadline to enforce.
            outputs = self._timed_predict(runtime, signature, inputs, rows, times)
        else:
            outputs = await self._run(servable, signature, inputs, rows, timeout_s, times)
        if output_names:
            outputs = {k: outputs[k] for k in output_names}
        return PredictResult(ref.name, servable.version, signature.name, outputs, runtime.kind)

    def _observe(
        self,
        ref: ModelRef,
        servable: ServableVersion | None,
        version_label: str,
        api: str,
        code: str,
        started: float,
    ) -> None:
        """The request's count and latency, labelled without letting clients invent models."""
        if servable is not None:
            model_label = ref.name  # it resolved, so it is a configured model
        else:
            model_label = ref.name if self._manager.serves(ref.name) else "_unknown_"
        metrics.observe_request(
            model_label, version_label, api, code, time.perf_counter() - started
        )

    def _timed_predict(
        self,
        runtime: Runtime,
        signature: Signature,
        inputs: Mapping[str, np.ndarray],
        rows: int,
        times: PhaseTimes | None,
    ) -> dict[str, np.ndarray]:
        # Timed where it runs (the loop or an inference thread): the runtime's own time,
        # without the thread hop.
        start = time.perf_counter()
        try:
            outputs = predict_in_runs(runtime, signature.name, inputs, rows, self.max_rows_per_run)
        except ServingError:
            raise
        except Exception as exc:
            raise internal(f"the {runtime.kind} runtime failed: {exc}") from exc
        if times is not None:
            times.infer = time.perf_counter() - start
        check_outputs(signature, outputs, rows)
        return outputs

    async def _run(
        self,
        servable: ServableVersion,
        signature: Signature,
        inputs: Mapping[str, np.ndarray],
        rows: int,
        timeout_s: float | None,
        times: PhaseTimes | None,
    ) -> dict[str, np.ndarray]:
        runtime = servable.runtime
        assert runtime is not None
        try:
            if self._batching is None:
                loop = asyncio.get_running_loop()
                return await _bounded(
                    loop.run_in_executor(
                        self._executor, self._timed_predict, runtime, signature, inputs, rows, times
                    ),
                    timeout_s,
                )
            batcher = servable.batchers.get(signature.name)
            if batcher is None:
                max_rows = self.max_rows_per_run

                def run(batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
                    rows = len(next(iter(batch.values())))
                    return predict_in_runs(runtime, signature.name, batch, rows, max_rows)

                batcher = Batcher(
                    run,
                    self._batching,
                    self._batch_executor,
                    model=servable.model,
                    version=servable.version,
                )
                servable.batchers[signature.name] = batcher
            outputs = await _bounded(batcher.submit(inputs, rows, times), timeout_s)
        except (ServingError, TimeoutError):
            raise  # TimeoutError is the request deadline (errors.status_of), not a fault
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
    if inputs.keys() != expected.keys():
        _refuse_names(signature, inputs)
    batch: int | None = None
    for name, spec in expected.items():
        array = inputs[name]
        if array.dtype != spec.dtype:
            raise invalid_argument(
                f"Expects arg '{name}' to be {_tf_dtype(spec.dtype)} but {_tf_dtype(array.dtype)} "
                "is provided"
            )
        _check_shape(name, array.shape, spec.shape)
        rows = _batch_dim(name, array)
        if batch is not None and rows != batch:
            raise invalid_argument(f"inputs have different batch sizes ({batch} and {rows})")
        batch = rows
    return batch or 0


def _refuse_names(signature: Signature, inputs: Mapping[str, np.ndarray]) -> NoReturn:
    expected = signature.inputs
    missing = sorted(set(expected) - set(inputs))
    extra = sorted(set(inputs) - set(expected))
    if extra:
        raise invalid_argument(
            f"input tensor alias not found in signature: {', '.join(extra)}. "
            f"Inputs expected to be in the set {{{', '.join(sorted(expected))}}}."
        )
    raise invalid_argument(f"missing input(s) {', '.join(missing)} of signature '{signature.name}'")


# Shapes found to match are remembered: the check is a Python loop per dimension, the lookup one
# hash of short tuples. Bounded whatever shapes clients send; a mismatch raises, not remembered.
@functools.lru_cache(maxsize=1024)
def _check_shape(name: str, shape: tuple[int, ...], want: tuple[int, ...]) -> None:
    if len(shape) != len(want):
        raise invalid_argument(
            f"input '{name}' has rank {len(shape)} (shape {list(shape)}); the signature "
            f"expects rank {len(want)} {list(want)}"
        )
    for axis, (got, size) in enumerate(zip(shape, want, strict=True)):
        if size >= 0 and got != size:
            raise invalid_argument(
                f"input '{name}' has shape {list(shape)}; dimension {axis} must be "
                f"{size} (signature shape {list(want)})"
            )


def validate_output_filter(signature: Signature, output_filter: Sequence[str]) -> list[str]:
    """Names from ``output_filter`` (all outputs when empty); unknown names are rejected."""
    if not output_filter:
        return []
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
