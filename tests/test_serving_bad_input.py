"""Every malformed request gets its precise status, and the server keeps serving afterwards."""

from __future__ import annotations

import http.client
import json
import socket
from typing import Any

import grpc
import numpy as np
import pytest

from contract.protos import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    types_pb2,
)
from serving.client import ServingClient, predict_request

C = grpc.StatusCode
IMAGE = np.zeros((1, 28, 28, 1), np.float32)


@pytest.fixture(scope="module")
def stub(onnx_server):
    with grpc.insecure_channel(
        onnx_server.grpc_target, options=[("grpc.max_send_message_length", 64 * 1024 * 1024)]
    ) as channel:
        yield prediction_service_pb2_grpc.PredictionServiceStub(channel)


def assert_still_serves(server) -> None:
    with ServingClient(server.grpc_target) as client:
        result = client.predict("separable", IMAGE)
    assert result.classes.shape == (1,)


def request_with(mutate) -> predict_pb2.PredictRequest:
    request = predict_request("separable", IMAGE)
    mutate(request)
    return request


def _set_shape(tensor, dims) -> None:
    del tensor.tensor_shape.dim[:]
    for size in dims:
        tensor.tensor_shape.dim.add(size=size)


def _float_tensor(tensor, dims, content: bytes | None = None) -> Any:
    tensor.dtype = types_pb2.DT_FLOAT
    _set_shape(tensor, dims)
    tensor.tensor_content = content if content is not None else b""
    return tensor


GRPC_CASES = {
    "unknown model": (lambda r: setattr(r.model_spec, "name", "nope"), C.NOT_FOUND, "nope"),
    "unknown version": (lambda r: r.model_spec.version.__setattr__("value", 99), C.NOT_FOUND, "99"),
    "unknown label": (
        lambda r: setattr(r.model_spec, "version_label", "canary"),
        C.NOT_FOUND,
        "canary",
    ),
    "missing model name": (lambda r: setattr(r.model_spec, "name", ""), C.INVALID_ARGUMENT, "name"),
    "unknown signature": (
        lambda r: setattr(r.model_spec, "signature_name", "classify_x"),
        C.FAILED_PRECONDITION,
        "classify_x",
    ),
    "wrong input name": (
        lambda r: r.inputs["pixels"].CopyFrom(r.inputs.pop("images")),
        C.INVALID_ARGUMENT,
        "pixels",
    ),
    "missing input": (lambda r: r.inputs.pop("images"), C.INVALID_ARGUMENT, "images"),
    "extra input": (
        lambda r: r.inputs["extra"].CopyFrom(r.inputs["images"]),
        C.INVALID_ARGUMENT,
        "extra",
    ),
    "wrong dtype": (
        lambda r: setattr(r.inputs["images"], "dtype", types_pb2.DT_DOUBLE),
        C.INVALID_ARGUMENT,
        "",
    ),
    "unsupported dtype": (
        lambda r: setattr(r.inputs["images"], "dtype", types_pb2.DT_STRING),
        C.INVALID_ARGUMENT,
        "DT_STRING",
    ),
    "wrong rank": (
        lambda r: _float_tensor(r.inputs["images"], [1, 784], IMAGE.tobytes()),
        C.INVALID_ARGUMENT,
        "rank",
    ),
    "wrong dimension": (
        lambda r: _float_tensor(r.inputs["images"], [1, 28, 28, 3], bytes(28 * 28 * 3 * 4)),
        C.INVALID_ARGUMENT,
        "dimension 3",
    ),
    "content shorter than shape": (
        lambda r: _float_tensor(r.inputs["images"], [2, 28, 28, 1], IMAGE.tobytes()),
        C.INVALID_ARGUMENT,
        "tensor_content",
    ),
    "content not a multiple": (
        lambda r: _float_tensor(r.inputs["images"], [1, 28, 28, 1], IMAGE.tobytes() + b"x"),
        C.INVALID_ARGUMENT,
        "tensor_content",
    ),
    "negative dimension": (
        lambda r: _float_tensor(r.inputs["images"], [-1, 28, 28, 1], IMAGE.tobytes()),
        C.INVALID_ARGUMENT,
        "negative",
    ),
    "absurd dimension": (
        lambda r: _float_tensor(r.inputs["images"], [2**40, 28, 28, 1], IMAGE.tobytes()),
        C.INVALID_ARGUMENT,
        "bytes",
    ),
    "absurd dimension broadcast": (
        lambda r: (
            _float_tensor(r.inputs["images"], [2**40, 28, 28, 1]),
            r.inputs["images"].float_val.append(0.5),
        ),
        C.INVALID_ARGUMENT,
        "bytes",
    ),
    "unknown rank": (
        lambda r: setattr(r.inputs["images"].tensor_shape, "unknown_rank", True),
        C.INVALID_ARGUMENT,
        "rank",
    ),
    "scalar input": (
        lambda r: (_float_tensor(r.inputs["images"], []), r.inputs["images"].float_val.append(1)),
        C.INVALID_ARGUMENT,
        "rank",
    ),
    "typed values count mismatch": (
        lambda r: (
            _float_tensor(r.inputs["images"], [1, 28, 28, 1]),
            r.inputs["images"].float_val.extend([0.0] * 5),
        ),
        C.INVALID_ARGUMENT,
        "784",
    ),
    "content and typed values": (
        lambda r: r.inputs["images"].float_val.append(1.0),
        C.INVALID_ARGUMENT,
        "both",
    ),
    "values in the wrong typed field": (
        lambda r: (
            _float_tensor(r.inputs["images"], [1, 28, 28, 1]),
            r.inputs["images"].int_val.extend([0] * 784),
        ),
        C.INVALID_ARGUMENT,
        "int_val",
    ),
    "unknown output filter": (
        lambda r: r.output_filter.append("logits"),
        C.INVALID_ARGUMENT,
        "logits",
    ),
}


@pytest.mark.parametrize("case", list(GRPC_CASES))
def test_grpc_bad_predict(stub, onnx_server, case):
    mutate, code, fragment = GRPC_CASES[case]
    with pytest.raises(grpc.RpcError) as error:
        stub.Predict(request_with(mutate), timeout=10)
    assert error.value.code() == code, error.value.details() or ""
    assert fragment in (error.value.details() or "")
    assert_still_serves(onnx_server)


def test_grpc_message_over_max_request_bytes(stub, onnx_server):
    # The fixture server runs with --max_request_bytes=4194304.
    big = np.zeros((1400, 28, 28, 1), np.float32)  # 4.4 MB
    with pytest.raises(grpc.RpcError) as error:
        stub.Predict(predict_request("separable", big), timeout=10)
    assert error.value.code() == C.RESOURCE_EXHAUSTED
    assert_still_serves(onnx_server)


def test_grpc_random_bytes_as_message(onnx_server):
    with grpc.insecure_channel(onnx_server.grpc_target) as channel:
        raw = channel.unary_unary(
            "/tensorflow.serving.PredictionService/Predict",
            request_serializer=None,
            response_deserializer=None,
        )
        with pytest.raises(grpc.RpcError) as error:
            raw(b"\xff\xff\xff\xff garbage", timeout=5)
    assert error.value.code() == C.INVALID_ARGUMENT
    assert "PredictRequest" in (error.value.details() or "")
    assert_still_serves(onnx_server)


def test_grpc_metadata_and_status_errors(onnx_server):
    with grpc.insecure_channel(onnx_server.grpc_target) as channel:
        predict = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        models = model_service_pb2_grpc.ModelServiceStub(channel)
        cases: list[tuple[Any, Any, str, list[str]]] = [
            (predict.GetModelMetadata, get_model_metadata_pb2.GetModelMetadataRequest(), "x", []),
            (
                predict.GetModelMetadata,
                get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"]),
                "nope",
                [],
            ),
            (
                predict.GetModelMetadata,
                get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["graph"]),
                "standard",
                [],
            ),
        ]
        expected = [C.INVALID_ARGUMENT, C.NOT_FOUND, C.INVALID_ARGUMENT]
        for (call, request, name, _), code in zip(cases, expected, strict=True):
            request.model_spec.name = name
            with pytest.raises(grpc.RpcError) as error:
                call(request, timeout=5)
            assert error.value.code() == code
        status = get_model_status_pb2.GetModelStatusRequest()
        status.model_spec.name = "standard"
        status.model_spec.version.value = 7
        with pytest.raises(grpc.RpcError) as error:
            models.GetModelStatus(status, timeout=5)
        assert error.value.code() == C.NOT_FOUND
    assert_still_serves(onnx_server)


def rest(server, method: str, path: str, body: bytes | None, headers=None) -> tuple[int, dict]:
    connection = http.client.HTTPConnection("127.0.0.1", server.rest_port, timeout=10)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        payload = response.read()
    finally:
        connection.close()
    return response.status, json.loads(payload)


def _body(obj) -> bytes:
    return json.dumps(obj).encode()


_ROW = np.zeros((28, 28, 1)).tolist()
REST_CASES = {
    "malformed JSON": ("/v1/models/separable:predict", b"{instances: ", 400, "JSON"),
    "invalid UTF-8": ("/v1/models/separable:predict", b'{"instances": "\xff\xfe"}', 400, "JSON"),
    "NaN literal": ("/v1/models/separable:predict", b'{"instances": [NaN]}', 400, "NaN"),
    "Infinity literal": ("/v1/models/separable:predict", b'{"inputs": Infinity}', 400, "Infinity"),
    "deep nesting": ("/v1/models/separable:predict", b"[" * 100000 + b"]" * 100000, 400, ""),
    "not an object": ("/v1/models/separable:predict", _body([1, 2]), 400, "object"),
    "neither instances nor inputs": ("/v1/models/separable:predict", _body({}), 400, "exactly one"),
    "both instances and inputs": (
        "/v1/models/separable:predict",
        _body({"instances": [], "inputs": []}),
        400,
        "exactly one",
    ),
    "instances not a list": (
        "/v1/models/separable:predict",
        _body({"instances": 3}),
        400,
        "list",
    ),
    "strings": (
        "/v1/models/separable:predict",
        _body({"instances": [[["a"] * 1] * 28] * 28}),
        400,
        "numbers",
    ),
    "booleans": (
        "/v1/models/separable:predict",
        _body({"instances": [[[[True]] * 28] * 28]}),
        400,
        "numbers",
    ),
    "ragged": (
        "/v1/models/separable:predict",
        _body({"instances": [[1, 2], [3]]}),
        400,
        "rectangular",
    ),
    "huge number": (
        "/v1/models/separable:predict",
        b'{"instances": [' + json.dumps([[[1e300]] * 28] * 28).encode() + b"]}",
        400,
        "range",
    ),
    "huge integer": (
        "/v1/models/separable:predict",
        b'{"inputs": [' + str(10**400).encode() + b"]}",
        400,
        "",
    ),
    "wrong shape": (
        "/v1/models/separable:predict",
        _body({"instances": [[1.0, 2.0]]}),
        400,
        "rank",
    ),
    "wrong named input": (
        "/v1/models/separable:predict",
        _body({"instances": [{"pixels": _ROW}]}),
        400,
        "pixels",
    ),
    "signature_name not a string": (
        "/v1/models/separable:predict",
        _body({"signature_name": 3, "instances": [_ROW]}),
        400,
        "signature_name",
    ),
    "unknown signature": (
        "/v1/models/separable:predict",
        _body({"signature_name": "nope", "instances": [_ROW]}),
        400,
        "nope",
    ),
    "unknown model": ("/v1/models/nope:predict", _body({"instances": [_ROW]}), 404, "nope"),
    "unknown version": (
        "/v1/models/separable/versions/9:predict",
        _body({"instances": [_ROW]}),
        404,
        "9",
    ),
    "unknown label": (
        "/v1/models/separable/labels/stable:predict",
        _body({"instances": [_ROW]}),
        404,
        "stable",
    ),
    "unknown path": ("/v2/anything", _body({}), 404, "Malformed"),
    "classify": ("/v1/models/separable:classify", _body({"examples": []}), 501, "Predict"),
}


@pytest.mark.parametrize("case", list(REST_CASES))
def test_rest_bad_predict(onnx_server, case):
    path, body, status, fragment = REST_CASES[case]
    got, reply = rest(onnx_server, "POST", path, body)
    assert got == status, reply
    assert set(reply) == {"error"} and fragment in reply["error"]
    assert_still_serves(onnx_server)


def test_rest_get_errors(onnx_server):
    for path, status in (
        ("/v1/models/nope", 404),
        ("/v1/models/standard/versions/5", 404),
        ("/v1/models/standard/labels/x/metadata", 404),
        ("/v1/models/nope/metadata", 404),
    ):
        got, reply = rest(onnx_server, "GET", path, None)
        assert got == status and "error" in reply, path
    assert_still_serves(onnx_server)


def test_rest_body_over_max_request_bytes_refused_before_reading(onnx_server):
    # Only the headers are sent: a declared length over the limit is refused without the body.
    with socket.create_connection(("127.0.0.1", onnx_server.rest_port), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/models/separable:predict HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nContent-Length: 50000000\r\n\r\n"
        )
        reply = sock.recv(65536).decode()
    assert reply.startswith("HTTP/1.1 413")
    assert '"error"' in reply
    assert_still_serves(onnx_server)


def test_rest_chunked_body_over_limit(onnx_server):
    def chunks():
        for _ in range(5):
            yield b"[" + b"0," * 500_000 + b"0]"

    connection = http.client.HTTPConnection("127.0.0.1", onnx_server.rest_port, timeout=10)
    connection.request("POST", "/v1/models/separable:predict", body=chunks(), encode_chunked=True)
    response = connection.getresponse()
    assert response.status == 413
    assert "error" in json.loads(response.read())
    connection.close()
    assert_still_serves(onnx_server)
