"""The one place that turns an exception into a status: a gRPC status code, an HTTP status code
and a length-capped message.

Every layer raises ``ServingError`` with a gRPC-style code. A transport hands whatever its
handler raised to ``status_of`` and answers with the result (as TF Serving converts a Status to
gRPC in one ``ToGRPCStatus`` and to HTTP in one ``ToHTTPStatusCode``). A client's mistake never
becomes INTERNAL / 500; anything unexpected does, and is flagged for the log.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc

# TF Serving's mapping (tensorflow_serving/util/net_http + model_servers/http_rest_api_handler),
# made precise where it is vague: RESOURCE_EXHAUSTED for an oversize body is 413.
_HTTP_BY_CODE: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 413,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.DATA_LOSS: 500,
}


# TF Serving's grpc_status_util.cc caps messages at 1024 characters: a message echoing a huge
# request field (a 4,000-digit version, a long model name) must not become a huge trailer.
MAX_MESSAGE_CHARS = 1024
_TRUNCATED = "...TRUNCATED"


class ServingError(Exception):
    """An error with a gRPC status code and a message naming the problem."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def http_status(code: grpc.StatusCode) -> int:
    """HTTP status code for a gRPC status code."""
    return _HTTP_BY_CODE.get(code, 500)


def invalid_argument(message: str) -> ServingError:
    """The request is malformed (wrong input name, dtype, shape, content...)."""
    return ServingError(grpc.StatusCode.INVALID_ARGUMENT, message)


def not_found(message: str) -> ServingError:
    """Unknown model, version or label."""
    return ServingError(grpc.StatusCode.NOT_FOUND, message)


def failed_precondition(message: str) -> ServingError:
    """The model exists but cannot answer this (unknown signature...)."""
    return ServingError(grpc.StatusCode.FAILED_PRECONDITION, message)


def unavailable(message: str) -> ServingError:
    """Try again later (full batching queue, shutting down)."""
    return ServingError(grpc.StatusCode.UNAVAILABLE, message)


def unimplemented(message: str) -> ServingError:
    """The API exists but this model does not support it."""
    return ServingError(grpc.StatusCode.UNIMPLEMENTED, message)


def resource_exhausted(message: str) -> ServingError:
    """A request over a configured limit."""
    return ServingError(grpc.StatusCode.RESOURCE_EXHAUSTED, message)


def internal(message: str) -> ServingError:
    """A fault on the server's side (a runtime failure), never a client's mistake."""
    return ServingError(grpc.StatusCode.INTERNAL, message)


def deadline_exceeded(message: str = "request deadline exceeded") -> ServingError:
    """The request's deadline (the client's, or ``--request_timeout_seconds``) passed."""
    return ServingError(grpc.StatusCode.DEADLINE_EXCEEDED, message)


def request_too_large(limit_bytes: int) -> ServingError:
    """A request body over ``--max_request_bytes`` (gRPC refuses oversize messages itself, with
    the same code)."""
    return resource_exhausted(f"request body larger than --max_request_bytes ({limit_bytes} bytes)")


# An HTTP library's own refusals (aiohttp raises these before a handler runs), mapped back to
# the gRPC code whose HTTP status they carry so that they take the same path as ours.
_CODE_BY_HTTP: dict[int, grpc.StatusCode] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.ABORTED,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    499: grpc.StatusCode.CANCELLED,
    501: grpc.StatusCode.UNIMPLEMENTED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def code_for_http(status: int) -> grpc.StatusCode:
    """The gRPC code of an HTTP error status raised by the HTTP library (4xx not listed:
    INVALID_ARGUMENT; 5xx: INTERNAL)."""
    code = _CODE_BY_HTTP.get(status)
    if code is not None:
        return code
    return grpc.StatusCode.INVALID_ARGUMENT if 400 <= status < 500 else grpc.StatusCode.INTERNAL


@dataclass(frozen=True)
class Status:
    """What a transport answers: both status codes and a capped message."""

    code: grpc.StatusCode
    message: str
    unexpected: bool = False  # a bug of ours: log it with its traceback

    @property
    def http(self) -> int:
        """The HTTP status the REST API answers with."""
        return http_status(self.code)


def cap_message(message: str) -> str:
    """``message`` cut to ``MAX_MESSAGE_CHARS`` (TF Serving's limit and marker)."""
    if len(message) <= MAX_MESSAGE_CHARS:
        return message
    return message[:MAX_MESSAGE_CHARS] + _TRUNCATED


def status_of(exc: BaseException) -> Status:
    """The status for any exception a handler raised: ``ServingError`` as it says, a timeout as
    DEADLINE_EXCEEDED (the only place a timeout is converted), a refusal by the HTTP library
    (``status`` attribute, as aiohttp's ``HTTPException``) as its status, anything else as
    INTERNAL with the exception's type only (its text may hold server internals)."""
    if isinstance(exc, ServingError):
        return Status(exc.code, cap_message(exc.message))
    if isinstance(exc, TimeoutError):
        error = deadline_exceeded()
        return Status(error.code, error.message)
    status = getattr(exc, "status", None)
    if isinstance(status, int) and status >= 400:
        reason = getattr(exc, "reason", "") or str(exc)
        return Status(code_for_http(status), cap_message(str(reason)))
    return Status(grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}", True)
