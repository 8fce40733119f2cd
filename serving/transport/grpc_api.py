"""The gRPC API: ``tensorflow.serving.PredictionService`` and ``ModelService`` (the messages and
service names of tensorflow-serving-api), plus grpc.health.v1 and server reflection.

Only proto ↔ numpy conversion happens here; the model layer does the rest.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import grpc
from google.protobuf import any_pb2, message_factory
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import DecodeError
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from contract.protos import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_management_pb2,
    model_pb2,
    model_service_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2,
    prediction_service_pb2_grpc,
    status_pb2,
)
from serving import metrics
from serving.errors import invalid_argument, status_of
from serving.metrics import PhaseTimes
from serving.model.admission import GRPC_BYTES_PER_MESSAGE_BYTE
from serving.model.config import ConfigError, from_proto
from serving.model.service import ModelRef, PredictionService
from serving.transport.model_protos import signature_def_map, version_statuses
from serving.transport.tensor_codec import from_numpy, to_numpy

log = logging.getLogger("serving.grpc")

PREDICTION_SERVICE = "tensorflow.serving.PredictionService"
MODEL_SERVICE = "tensorflow.serving.ModelService"

Reply = TypeVar("Reply")


def model_ref(spec: model_pb2.ModelSpec) -> ModelRef:
    """``ModelSpec`` → ``ModelRef`` (version and label are a oneof)."""
    if not spec.name:
        raise invalid_argument("model_spec.name is required")
    which = spec.WhichOneof("version_choice")
    version = spec.version.value if which == "version" else None
    label = spec.version_label if which == "version_label" else None
    return ModelRef(spec.name, version, label, spec.signature_name)


@functools.lru_cache(maxsize=1024)  # bounded: versions come and go
def _answer_spec(model: str, version: int, signature_name: str) -> model_pb2.ModelSpec:
    """The ``model_spec`` a Predict answer carries, made once per model version and signature
    (one copy per answer instead of three field writes and a submessage; only copied from)."""
    spec = model_pb2.ModelSpec(name=model, signature_name=signature_name)
    spec.version.value = version
    return spec


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    """``tensorflow.serving.PredictionService``. Methods raise; ``add_service`` wraps each in
    ``_handled``, which answers what they raised."""

    def __init__(
        self, service: PredictionService, max_request_bytes: int, timeout_s: float
    ) -> None:
        self._service = service
        self._max_bytes = max_request_bytes
        self._timeout_s = timeout_s

    async def Predict(  # noqa: N802 - gRPC method name
        self, request: predict_pb2.PredictRequest, context: grpc.aio.ServicerContext
    ) -> predict_pb2.PredictResponse:
        # The message arrived whole (gRPC core read it): charged at its measured expansion
        # before its tensors are converted, returned once the answer is built.
        with self._service.admit(request.ByteSize(), GRPC_BYTES_PER_MESSAGE_BYTE, "grpc"):
            return await self._predict(request, context)

    async def _predict(
        self, request: predict_pb2.PredictRequest, context: grpc.aio.ServicerContext
    ) -> predict_pb2.PredictResponse:
        started = time.perf_counter()
        ref = model_ref(request.model_spec)
        tensors = request.inputs
        # Keys then lookups: the proto map's items() is the slow generic ItemsView.
        inputs = {name: to_numpy(tensors[name], name, self._max_bytes) for name in tensors}
        times = PhaseTimes(decode=time.perf_counter() - started)
        remaining = context.time_remaining()
        timeout = self._timeout_s if remaining is None else min(remaining, self._timeout_s)
        result = await self._service.predict(
            ref, inputs, request.output_filter, "grpc", timeout_s=timeout, times=times
        )
        encoding = time.perf_counter()
        response = predict_pb2.PredictResponse()
        response.model_spec.CopyFrom(
            _answer_spec(result.model, result.version, result.signature_name)
        )
        outputs = response.outputs
        for name, array in result.outputs.items():
            from_numpy(array, outputs[name])
        # Serialisation to bytes happens after the handler returns, inside gRPC; proto fields
        # are filled (the copy of the arrays) here.
        times.encode = time.perf_counter() - encoding
        metrics.observe_phases(result.model, str(result.version), "grpc", result.runtime, times)
        return response

    async def GetModelMetadata(  # noqa: N802
        self,
        request: get_model_metadata_pb2.GetModelMetadataRequest,
        context: grpc.aio.ServicerContext,
    ) -> get_model_metadata_pb2.GetModelMetadataResponse:
        ref = model_ref(request.model_spec)
        fields = list(request.metadata_field)
        if not fields:
            raise invalid_argument(
                "GetModelMetadataRequest must specify at least one metadata_field"
            )
        unsupported = [f for f in fields if f != "signature_def"]
        if unsupported:
            raise invalid_argument(f"Metadata field {unsupported[0]} is not supported")
        metadata = self._service.metadata(ref)
        packed = any_pb2.Any()
        packed.Pack(signature_def_map(metadata.signatures))
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = metadata.name
        response.model_spec.version.value = metadata.version
        response.metadata["signature_def"].CopyFrom(packed)
        return response

    async def Classify(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        self._service.unsupported(model_ref(request.model_spec), "Classify")

    async def Regress(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        self._service.unsupported(model_ref(request.model_spec), "Regress")

    async def MultiInference(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        if not request.tasks:
            raise invalid_argument("MultiInference request has no tasks")
        self._service.unsupported(model_ref(request.tasks[0].model_spec), "MultiInference")


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    """``tensorflow.serving.ModelService``: status and live reconfiguration (wrapped in
    ``_handled`` like ``PredictionServicer``)."""

    def __init__(self, service: PredictionService) -> None:
        self._service = service

    async def GetModelStatus(  # noqa: N802
        self, request: get_model_status_pb2.GetModelStatusRequest, context: grpc.aio.ServicerContext
    ) -> get_model_status_pb2.GetModelStatusResponse:
        spec = request.model_spec
        if not spec.name:
            raise invalid_argument("model_spec.name is required")
        version = spec.version.value if spec.HasField("version") else None
        versions = self._service.status(ModelRef(spec.name, version))
        return get_model_status_pb2.GetModelStatusResponse(
            model_version_status=version_statuses(versions)
        )

    async def HandleReloadConfigRequest(  # noqa: N802
        self, request: model_management_pb2.ReloadConfigRequest, context: grpc.aio.ServicerContext
    ) -> model_management_pb2.ReloadConfigResponse:
        try:
            configs = from_proto(request.config)
            # Refused, changing nothing, when a base path is outside the allowed roots.
            await self._service.reload_config(configs)
        except ConfigError as exc:
            raise invalid_argument(f"invalid model config: {exc}") from exc
        return model_management_pb2.ReloadConfigResponse(status=status_pb2.StatusProto())


class Health:
    """grpc.health.v1 statuses: overall (""), per gRPC service and per model name."""

    def __init__(self) -> None:
        self.servicer = health_aio.HealthServicer()
        self._serving = False

    async def update(self, service: PredictionService, shutting_down: bool = False) -> None:
        """Recompute from the models' state (NOT_SERVING until every model has a version)."""
        all_ready, models = service.readiness()
        ready = all_ready and not shutting_down
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if ready
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", PREDICTION_SERVICE, MODEL_SERVICE):
            await self.servicer.set(name, status)
        for name, model_ready in models.items():
            model_ready = model_ready and not shutting_down
            await self.servicer.set(
                name,
                health_pb2.HealthCheckResponse.SERVING
                if model_ready
                else health_pb2.HealthCheckResponse.NOT_SERVING,
            )


class MalformedMessage:
    """Stands in for a request whose bytes did not parse (answered INVALID_ARGUMENT)."""

    def __init__(self, type_name: str, error: Exception) -> None:
        self.message = f"request is not a valid {type_name}: {error}"


def _lenient_parser(message_class: type[Any]) -> Callable[[bytes], Any]:
    type_name = message_class.DESCRIPTOR.full_name

    def parse(data: bytes) -> Any:
        try:
            return message_class.FromString(data)
        except DecodeError as exc:
            return MalformedMessage(type_name, exc)

    return parse


def _handled(
    handler: Callable[[Any, grpc.aio.ServicerContext], Awaitable[Reply]],
) -> Callable[[Any, grpc.aio.ServicerContext], Awaitable[Reply]]:
    """One coroutine per RPC: refuse an undecodable request, run the handler, answer what it
    raised with ``errors.status_of``'s status (an unexpected exception is logged: it is a
    server bug, not the client's fault)."""

    async def call(request: Any, context: grpc.aio.ServicerContext) -> Reply:
        try:
            if isinstance(request, MalformedMessage):
                raise invalid_argument(request.message)
            return await handler(request, context)
        except asyncio.CancelledError:
            raise
        except grpc.aio.AbortError:
            raise  # context.abort was already called
        except Exception as exc:
            status = status_of(exc)
            if status.unexpected:
                log.exception("unexpected error in a gRPC handler")
            await context.abort(status.code, status.message)
        raise AssertionError("unreachable")  # context.abort always raises

    return call


def add_service(server: grpc.aio.Server, service: ServiceDescriptor, servicer: object) -> None:
    """Register ``servicer``'s methods for ``service`` like the generated ``add_*_to_server``,
    except that undecodable bytes become INVALID_ARGUMENT instead of gRPC's UNKNOWN."""
    handlers = {}
    for method in service.methods:
        request_class = message_factory.GetMessageClass(method.input_type)
        response_class = message_factory.GetMessageClass(method.output_type)
        handlers[method.name] = grpc.unary_unary_rpc_method_handler(
            _handled(getattr(servicer, method.name)),
            request_deserializer=_lenient_parser(request_class),
            response_serializer=response_class.SerializeToString,
        )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service.full_name, handlers),)
    )


def connection_options(
    *,
    max_connections: int,
    handshake_timeout_s: float,
    max_idle_s: float,
    max_age_s: float,
    max_age_grace_s: float,
) -> list[tuple[str, int]]:
    """gRPC core's channel arguments for the connection limits (``--grpc_max_connections``,
    ``--grpc_handshake_timeout_seconds``, ``--grpc_max_connection_idle_seconds``,
    ``--grpc_max_connection_age_seconds`` and its grace); 0 leaves core's default (none)."""
    options = [("grpc.server_handshake_timeout_ms", int(handshake_timeout_s * 1000))]
    if max_connections:
        options.append(("grpc.max_allowed_incoming_connections", max_connections))
    if max_idle_s:
        options.append(("grpc.max_connection_idle_ms", int(max_idle_s * 1000)))
    if max_age_s:
        options.append(("grpc.max_connection_age_ms", int(max_age_s * 1000)))
        options.append(("grpc.max_connection_age_grace_ms", int(max_age_grace_s * 1000)))
    return options


def build_server(
    service: PredictionService,
    health_status: Health,
    *,
    max_request_bytes: int,
    timeout_s: float,
    max_concurrent_streams: int = 0,
    max_concurrent_rpcs: int = 0,
    connection_options: Sequence[tuple[str, Any]] = (),
) -> grpc.aio.Server:
    """An aio gRPC server with all services registered (ports are added by the caller);
    ``connection_options``: the channel arguments ``connection_options()`` returns."""
    options: list[tuple[str, Any]] = [
        ("grpc.max_receive_message_length", max_request_bytes),
        ("grpc.max_send_message_length", -1),
        ("grpc.so_reuseport", 1),  # --workers: several processes share the port
        *connection_options,
    ]
    if max_concurrent_streams:
        options.append(("grpc.max_concurrent_streams", max_concurrent_streams))
    # Over max_concurrent_rpcs, grpc.aio answers RESOURCE_EXHAUSTED ("Concurrent RPC limit
    # exceeded!") without reading the message.
    server = grpc.aio.server(options=options, maximum_concurrent_rpcs=max_concurrent_rpcs or None)
    add_service(
        server,
        prediction_service_pb2.DESCRIPTOR.services_by_name["PredictionService"],
        PredictionServicer(service, max_request_bytes, timeout_s),
    )
    add_service(
        server,
        model_service_pb2.DESCRIPTOR.services_by_name["ModelService"],
        ModelServicer(service),
    )
    health_pb2_grpc.add_HealthServicer_to_server(health_status.servicer, server)
    reflection.enable_server_reflection(
        (PREDICTION_SERVICE, MODEL_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    return server
