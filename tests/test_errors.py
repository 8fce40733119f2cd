"""The error → status mapping is complete (as httpx's tests/test_exceptions.py proves for its
exception mapping): every kind of error the transports can see becomes one gRPC status and one
HTTP status, through ``serving.errors.status_of`` only, and both transports answer with them.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Mapping, Sequence

import grpc
import numpy as np
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from contract.protos import predict_pb2, prediction_service_pb2_grpc
from serving import errors
from serving.errors import MAX_MESSAGE_CHARS, ServingError, http_status, status_of
from serving.model.admission import Admission, Ticket
from serving.model.service import ModelRef
from serving.runtimes import Signature, TensorSpec
from serving.transport.grpc_api import Health, build_server
from serving.transport.rest_api import RestApi
from serving.transport.tensor_codec import from_numpy

C = grpc.StatusCode


def _all_subclasses(cls: type) -> list[type]:
    found: list[type] = []
    sub: type
    for sub in cls.__subclasses__():
        found += [sub, *_all_subclasses(sub)]
    return found


def serving_error_kinds() -> dict[str, ServingError]:
    """One instance of every ``ServingError`` the code can raise: each factory function of
    serving.errors and each subclass (none today; a new one is picked up here)."""
    kinds: dict[str, ServingError] = {}
    for name, function in inspect.getmembers(errors, inspect.isfunction):
        if inspect.signature(function).return_annotation in ("ServingError", ServingError):
            parameters = inspect.signature(function).parameters
            kinds[name] = function(4096) if "limit_bytes" in parameters else function("boom")
    for cls in _all_subclasses(ServingError):
        kinds[cls.__name__] = cls(C.INTERNAL, "boom")
    return kinds


def transport_exceptions() -> dict[str, BaseException]:
    """What else can reach a handler: timeouts, the HTTP library's own refusals (every aiohttp
    HTTP error class) and arbitrary bugs."""
    seen: dict[str, BaseException] = {
        "TimeoutError": TimeoutError(),
        "ConnectionResetError": ConnectionResetError("peer gone"),
        "ValueError": ValueError("a bug"),
        "KeyError": KeyError("a bug"),
        "MemoryError": MemoryError(),
        "OSError": OSError("disk"),
    }
    for cls in _all_subclasses(web.HTTPError):
        if getattr(cls, "status_code", 0) >= 400:
            if cls in (web.HTTPMethodNotAllowed,):
                seen[cls.__name__] = cls("POST", ["GET"])
            elif cls is web.HTTPRequestEntityTooLarge:
                seen[cls.__name__] = cls(max_size=1, actual_size=2)
            elif cls.__name__ == "HTTPUnavailableForLegalReasons":
                seen[cls.__name__] = cls(link="https://example.invalid")
            else:
                seen[cls.__name__] = cls()
    return seen


def test_every_grpc_code_has_an_http_status():
    for code in grpc.StatusCode:
        status = http_status(code)
        assert code in errors._HTTP_BY_CODE, code  # listed, not the fallback
        assert (status == 200) == (code == C.OK), code
        assert 400 <= status < 600 or code == C.OK


@pytest.mark.parametrize("kind", list(serving_error_kinds()))
def test_every_serving_error_kind_maps_to_its_code(kind):
    error = serving_error_kinds()[kind]
    status = status_of(error)
    assert status.code == error.code and status.code != C.OK
    assert status.http == http_status(error.code) and status.http >= 400
    assert not status.unexpected


def test_the_codes_clients_rely_on():
    expected = {
        "invalid_argument": (C.INVALID_ARGUMENT, 400),
        "not_found": (C.NOT_FOUND, 404),
        "failed_precondition": (C.FAILED_PRECONDITION, 400),
        "unavailable": (C.UNAVAILABLE, 503),
        "unimplemented": (C.UNIMPLEMENTED, 501),
        "resource_exhausted": (C.RESOURCE_EXHAUSTED, 413),
        "request_too_large": (C.RESOURCE_EXHAUSTED, 413),
        "deadline_exceeded": (C.DEADLINE_EXCEEDED, 504),
        "internal": (C.INTERNAL, 500),
    }
    kinds = serving_error_kinds()
    assert set(expected) <= set(kinds)
    for name, (code, http) in expected.items():
        status = status_of(kinds[name])
        assert (status.code, status.http) == (code, http), name


@pytest.mark.parametrize("name", list(transport_exceptions()))
def test_every_exception_a_transport_sees_maps_to_a_status(name):
    exc = transport_exceptions()[name]
    status = status_of(exc)
    assert status.code != C.OK and status.http >= 400
    if isinstance(exc, TimeoutError):
        assert (status.code, status.http, status.unexpected) == (C.DEADLINE_EXCEEDED, 504, False)
    elif isinstance(exc, web.HTTPException):
        # The HTTP library's refusal keeps its class: a client error stays a 4xx.
        assert not status.unexpected
        assert (status.http < 500) == (exc.status < 500), (exc.status, status)
        if exc.status == 413:
            assert status.code == C.RESOURCE_EXHAUSTED
    else:
        # A bug of ours: INTERNAL, logged, and its text (server internals) not sent.
        assert (status.code, status.http, status.unexpected) == (C.INTERNAL, 500, True)
        assert str(exc) not in status.message or not str(exc)


def test_messages_are_capped_like_tf_serving():
    status = status_of(errors.not_found("x" * 5000))
    assert status.message == "x" * MAX_MESSAGE_CHARS + "...TRUNCATED"
    assert status_of(errors.not_found("short")).message == "short"


# ---- both transports answer every kind with its codes ----------------------------------------


SIGNATURE = Signature(
    "serving_default",
    {"x": TensorSpec("x", np.dtype(np.float32), (-1, 2))},
    {"y": TensorSpec("y", np.dtype(np.float32), (-1, 2))},
)


class RaisingService:
    """A data plane whose ``predict`` raises the exception under test."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc
        self.admission = Admission(1 << 30)

    def admit(self, body_bytes: int, bytes_per_byte: float, api: str) -> Ticket:
        return self.admission.admit(body_bytes, bytes_per_byte, api)

    def input_signature(self, ref: ModelRef) -> Signature:
        return SIGNATURE

    async def predict(
        self,
        ref: ModelRef,
        inputs: Mapping[str, np.ndarray],
        output_filter: Sequence[str] = (),
        api: str = "grpc",
        timeout_s: float | None = None,
        times: object = None,
    ) -> object:
        raise self.exc


CASES = {**serving_error_kinds(), **transport_exceptions()}


def test_both_transports_answer_every_kind():
    async def scenario():
        for name, exc in CASES.items():
            expected = status_of(exc)
            service = RaisingService(exc)
            server = build_server(service, Health(), max_request_bytes=1 << 20, timeout_s=5)  # type: ignore[arg-type]
            port = server.add_insecure_port("127.0.0.1:0")
            await server.start()
            try:
                async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
                    request = predict_pb2.PredictRequest()
                    request.model_spec.name = "m"
                    from_numpy(np.zeros((1, 2), np.float32), request.inputs["x"])
                    with pytest.raises(grpc.aio.AioRpcError) as error:
                        await stub.Predict(request, timeout=10)
                    assert error.value.code() == expected.code, name
                    assert error.value.details() == expected.message, name
            finally:
                await server.stop(0)
            api = RestApi(service, 1 << 20, 5.0)  # type: ignore[arg-type]
            async with TestClient(TestServer(api.app())) as client:
                reply = await client.post("/v1/models/m:predict", json={"instances": [[1, 2]]})
                assert reply.status == expected.http, name
                assert await reply.json() == {"error": expected.message}, name

    asyncio.run(scenario())
