"""The REST API of TF Serving (aiohttp): status, metadata and ``:predict`` in the row
(``instances``) and columnar (``inputs``) formats, errors as ``{"error": "..."}``.

JSON ↔ numpy conversion is serving/transport/rest_json.py; the model layer does the rest.
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import numpy as np
from aiohttp import web
from google.protobuf import json_format

from contract.protos import get_model_status_pb2
from serving import metrics
from serving.errors import (
    ServingError,
    http_status,
    invalid_argument,
    not_found,
    request_too_large,
    status_of,
)
from serving.metrics import PhaseTimes
from serving.model.admission import REST_BYTES_PER_BODY_BYTE, Ticket
from serving.model.service import ModelRef, PredictionService
from serving.transport.connections import RestConnectionCap
from serving.transport.model_protos import signature_def_map, version_statuses
from serving.transport.rest_json import (
    PredictBody,
    decode_predict,
    decode_predict_fast,
    decode_predict_reference,
    encode_json,
    encode_response,
)

log = logging.getLogger("serving.rest")

# TF Serving's own URL grammar (http_rest_api_handler.cc), case-insensitive.
_PREDICT_PATH = re.compile(
    r"(?i)^/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)$"
)
_STATUS_PATH = re.compile(
    r"(?i)^/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?$"
)
METRICS_PATH = "/monitoring/prometheus/metrics"
OFFLOAD_BYTES = 64 * 1024
_INT64_MAX = 2**63 - 1
_JSON = "application/json"


def _version_number(text: str) -> int:
    """A URL's version as TF Serving reads it (an int64); 400 otherwise. ``int()`` alone would
    accept non-ASCII digits and raise ValueError past 4300 digits (a 500)."""
    if not (text.isascii() and len(text) <= 19 and int(text) <= _INT64_MAX):
        shown = text if len(text) <= 40 else text[:40] + "..."
        raise invalid_argument(f"Failed to convert version: {shown} to numeric.")
    return int(text)


def _json_response(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=encode_json(body), status=status, content_type=_JSON)


def error_response(status: int, message: str) -> web.Response:
    """``{"error": message}`` with ``status``."""
    return _json_response({"error": message}, status)


class RestApi:
    """Request handlers; ``app()`` builds the aiohttp application."""

    def __init__(
        self,
        service: PredictionService,
        max_request_bytes: int,
        timeout_s: float,
        body_timeout_s: float = 30.0,
    ) -> None:
        self._service = service
        self._codec = ThreadPoolExecutor(2, thread_name_prefix="json")
        self._max_bytes = max_request_bytes
        self._timeout_s = timeout_s
        self._body_timeout_s = body_timeout_s
        self._decoding = 0  # :predict bodies being decoded (on the loop or a codec thread)

    def app(self) -> web.Application:
        """The aiohttp application (body size capped at ``max_request_bytes``)."""
        app = web.Application(client_max_size=self._max_bytes, middlewares=[self._errors])
        app.router.add_get(METRICS_PATH, self._metrics)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        return app

    @web.middleware
    async def _errors(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        try:
            return await handler(request)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # errors.status_of converts every kind, a bug of ours to 500
            status = status_of(exc)
            if status.unexpected:
                log.exception("unexpected error in a REST handler")
            return error_response(status.http, status.message)

    async def _metrics(self, request: web.Request) -> web.Response:
        body, content_type = metrics.exposition()
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        if request.method == "POST":
            match = _PREDICT_PATH.match(path)
            if match:
                return await self._predict(request, match)
        elif request.method == "GET":
            match = _STATUS_PATH.match(path)
            if match:
                return await self._status_or_metadata(match)
        raise not_found(f"Malformed request: {request.method} {path}")

    @staticmethod
    def _ref(match: re.Match[str], signature_name: str = "") -> ModelRef:
        name, version, label = match.group(1), match.group(2), match.group(3)
        return ModelRef(name, _version_number(version) if version else None, label, signature_name)

    async def _predict(self, request: web.Request, match: re.Match[str]) -> web.Response:
        """``:predict``: the body's bytes admitted (before it is read when its length is
        declared), then read, decoded, run and encoded (``_answer``)."""
        declared = request.content_length
        if declared is not None and declared > self._max_bytes:
            # Refuse before reading: the body never enters memory.
            raise request_too_large(self._max_bytes)
        if declared is not None:
            # Charged before the body is read, at the measured worst case (lowered once
            # decoded): a refused body is never read into memory.
            with self._service.admit(declared, REST_BYTES_PER_BODY_BYTE, "rest") as ticket:
                raw = await self._read_body(request, declared)
                return await self._answer(raw, match, ticket)
        # Chunked (rare: TF Serving's and Locust's clients send a Content-Length): the size is
        # known once read. Up to --max_request_bytes may arrive; a quarter of the budget at most
        # is charged meanwhile, so that small containers still take chunked bodies at all.
        reading = min(self._max_bytes, self._service.admission.budget_bytes // 4)
        with self._service.admit(reading, 1.0, "rest"):
            raw = await self._read_body(request, None)
        with self._service.admit(len(raw), REST_BYTES_PER_BODY_BYTE, "rest") as ticket:
            return await self._answer(raw, match, ticket)

    async def _answer(self, raw: bytes, match: re.Match[str], ticket: Ticket) -> web.Response:
        """Decode ``raw`` against the signature, run the model, encode the answer; the decode
        and encode times go to the phase metrics."""
        started = time.perf_counter()
        ref, inputs, row_format = await self._decode(raw, match)
        # Decoded: the body and the arrays are what the request holds from now on.
        ticket.resize(len(raw) + sum(array.nbytes for array in inputs.values()))
        # decode: JSON parse and conversion to arrays, the thread hops included.
        times = PhaseTimes(decode=time.perf_counter() - started)
        result = await self._service.predict(
            ref, inputs, (), "rest", timeout_s=self._timeout_s, times=times
        )
        encoding = time.perf_counter()
        response = await self._encode(result.outputs, row_format)
        times.encode = time.perf_counter() - encoding
        metrics.observe_phases(result.model, str(result.version), "rest", result.runtime, times)
        return response

    async def _read_body(self, request: web.Request, declared: int | None) -> bytes:
        """The whole body, read within ``--rest_body_timeout_seconds``."""
        try:
            async with asyncio.timeout(self._body_timeout_s):
                if declared is not None:
                    # The chunks joined once; request.read() grows a bytearray chunk by chunk
                    # and copies it again (a quarter of the server's time for a 4.5 MB body,
                    # profiled).
                    return await request.content.readexactly(declared)
                return await request.read()
        except web.HTTPRequestEntityTooLarge:  # a chunked body that grew past client_max_size
            raise request_too_large(self._max_bytes) from None
        except asyncio.IncompleteReadError:
            raise invalid_argument("the request body ended before its Content-Length") from None
        except TimeoutError:
            raise ServingError(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"request body not received within {self._body_timeout_s:g} s "
                "(--rest_body_timeout_seconds)",
            ) from None

    async def _decode(
        self, raw: bytes, match: re.Match[str]
    ) -> tuple[ModelRef, dict[str, np.ndarray], bool]:
        """The model reference, the input arrays and whether the request used the row format."""
        # Large bodies (a 256-image row-format body is ~4.5 MB of JSON) are decoded on a codec
        # thread while other requests are in flight, so the loop goes on answering them at
        # each GIL switch; alone, the body is decoded here, saving the two thread hand-offs.
        large = len(raw) > OFFLOAD_BYTES
        offload = large and bool(self._decoding or self._service.in_flight)
        self._decoding += 1
        try:
            body = await self._parse(raw, large=large, offload=offload)
            ref = self._ref(match, body.signature_name)
            verb = match.group(4).lower()
            if verb != "predict":
                self._service.unsupported(ref, f":{verb}")
            signature = self._service.input_signature(ref)
            # The fast decoder's arrays only need a cast: a second thread hop would cost more.
            if large and not body.fast:
                inputs, row_format = await self._off_loop(body.inputs, signature)
            else:
                inputs, row_format = body.inputs(signature)
        finally:
            self._decoding -= 1
        return ref, inputs, row_format

    async def _parse(self, raw: bytes, *, large: bool, offload: bool) -> PredictBody:
        """The parsed JSON body: on a codec thread when ``offload``, else the fast decoder on
        the loop, falling back to the reference decoder (off the loop when ``large``)."""
        if offload:
            body: PredictBody = await self._off_loop(decode_predict, raw)
            return body
        fast_body = decode_predict_fast(raw)
        if fast_body is not None:
            return fast_body
        if large:  # the reference decoder: ~100 ms for megabytes, never on the loop
            body = await self._off_loop(decode_predict_reference, raw)
            return body
        return decode_predict_reference(raw)

    async def _encode(self, outputs: Mapping[str, np.ndarray], row_format: bool) -> web.Response:
        """The JSON answer for ``outputs``."""
        # Answers are small next to requests here (10 numbers per image, ~0.3 ms for 256
        # images): off the loop only when the outputs are large.
        if sum(array.nbytes for array in outputs.values()) > OFFLOAD_BYTES:
            encoded = await self._off_loop(encode_response, outputs, row_format)
            return web.Response(body=encoded, content_type=_JSON)
        return web.Response(body=encode_response(outputs, row_format), content_type=_JSON)

    async def _off_loop(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._codec, fn, *args)

    async def _status_or_metadata(self, match: re.Match[str]) -> web.Response:
        ref = self._ref(match)
        if match.group(4):  # /metadata
            metadata = self._service.metadata(ref)
            return _json_response(
                {
                    "model_spec": {
                        "name": metadata.name,
                        "signature_name": "",
                        "version": str(metadata.version),
                    },
                    "metadata": {
                        "signature_def": json_format.MessageToDict(
                            signature_def_map(metadata.signatures),
                            preserving_proto_field_name=True,
                        )
                    },
                }
            )
        response = get_model_status_pb2.GetModelStatusResponse(
            model_version_status=version_statuses(self._service.status(ref))
        )
        return _json_response(
            json_format.MessageToDict(
                response,
                preserving_proto_field_name=True,
                always_print_fields_with_no_presence=True,
            )
        )


async def start_rest(
    api: RestApi,
    host: str,
    port: int,
    ssl_context: ssl.SSLContext | None,
    *,
    keepalive_timeout_s: float = 75.0,
    max_connections: int = 0,
) -> web.AppRunner:
    """Serve the REST API on ``host:port`` (SO_REUSEPORT so workers share it). Connections
    waiting for a request's headers longer than ``keepalive_timeout_s`` are closed (aiohttp's
    keep-alive timer runs from the connection's start and after each answer, so it covers
    sockets that never send a byte and slowloris ones alike); ``max_connections`` caps them
    (serving/transport/connections.py)."""
    runner = web.AppRunner(
        api.app(), access_log=None, handle_signals=False, keepalive_timeout=keepalive_timeout_s
    )
    await runner.setup()
    if max_connections:
        assert runner.server is not None
        RestConnectionCap(runner.server, max_connections)
    site = web.TCPSite(runner, host, port, ssl_context=ssl_context, reuse_port=True)
    await site.start()
    return runner


__all__ = ["RestApi", "error_response", "http_status", "start_rest"]
