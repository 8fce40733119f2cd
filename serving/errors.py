"""The one place that maps serving errors to gRPC status codes and HTTP status codes.

Every layer raises ``ServingError`` with a gRPC-style code; each transport converts it with
``grpc_status`` / ``http_status``. A client's mistake never becomes INTERNAL / 500.
"""

from __future__ import annotations

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

# tensorflow.error.Code names, as TF Serving's StatusProto / REST status report them.
ERROR_CODE_NAMES: dict[grpc.StatusCode, str] = {code: code.name for code in grpc.StatusCode}


class ServingError(Exception):
    """An error with a gRPC status code and a message naming the problem."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def http_status(self) -> int:
        """The HTTP status the REST API answers with."""
        return http_status(self.code)


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
