"""Property-based fuzzing of gRPC ``Predict`` against a real server.

Generated ``PredictRequest``s (random dtypes, shapes with 0 and huge dimensions, ``tensor_content``
of the wrong length, typed fields of every kind and mixed, missing / extra / renamed inputs,
random model specs and output filters) and random or mutated bytes sent as the message. Every
answer must be a well-formed client error or a correct prediction; after each case the server
must still answer a valid request. The number of cases comes from ``fuzz.common`` (bounded in
``make test``, large in ``make fuzz``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from contract.protos import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    predict_pb2,
    prediction_service_pb2_grpc,
    tensor_pb2,
    types_pb2,
)
from fuzz.common import GRPC_CLIENT_ERRORS, TALLY, fuzz_settings
from serving.client import predict_request
from serving.transport.tensor_codec import to_numpy

MODELS = ("standard", "separable")
OUTPUTS = ("probabilities", "classes")
IMAGE_DIMS = (28, 28, 1)
SEND_LIMIT = 64 * 1024 * 1024  # the client may send more than the server accepts

INT32 = st.integers(-(2**31), 2**31 - 1)
INT64 = st.integers(-(2**63), 2**63 - 1)
DIM = st.one_of(
    st.sampled_from([0, 1, 2, 3, 28, -1, 2**31, 2**40, 2**62, 2**63 - 1, -(2**63)]),
    st.integers(-3, 64),
    INT64,
)
DTYPE = st.one_of(st.sampled_from(sorted(types_pb2.DataType.values())), INT32)
TYPED_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "float_val": st.floats(width=32),
    "double_val": st.floats(),
    "int_val": INT32,
    "int64_val": INT64,
    "uint32_val": st.integers(0, 2**32 - 1),
    "uint64_val": st.integers(0, 2**64 - 1),
    "bool_val": st.booleans(),
    "half_val": INT32,
    "string_val": st.binary(max_size=16),
    "scomplex_val": st.floats(width=32),
    "dcomplex_val": st.floats(),
}
TYPED_FIELD = {
    types_pb2.DT_FLOAT: "float_val",
    types_pb2.DT_DOUBLE: "double_val",
    types_pb2.DT_INT32: "int_val",
    types_pb2.DT_INT16: "int_val",
    types_pb2.DT_INT8: "int_val",
    types_pb2.DT_UINT8: "int_val",
    types_pb2.DT_UINT16: "int_val",
    types_pb2.DT_INT64: "int64_val",
    types_pb2.DT_UINT32: "uint32_val",
    types_pb2.DT_UINT64: "uint64_val",
    types_pb2.DT_BOOL: "bool_val",
    types_pb2.DT_HALF: "half_val",
}
DTYPE = st.one_of(st.sampled_from(sorted(TYPED_FIELD)), DTYPE)
NAMES = st.one_of(st.sampled_from(["images", "image", "", "probabilities"]), st.text(max_size=12))
MODEL_NAMES = st.one_of(st.sampled_from([*MODELS, "", "../standard", "standard\x00"]), st.text())
EXTREMES = np.array(
    [np.nan, np.inf, -np.inf, 3.4e38, -3.4e38, 1e-45, -0.0, 0.5, 1.0], dtype=np.float32
)


def _itemsize(dtype: int) -> int:
    sizes = {
        types_pb2.DT_FLOAT: 4,
        types_pb2.DT_DOUBLE: 8,
        types_pb2.DT_INT32: 4,
        types_pb2.DT_INT16: 2,
        types_pb2.DT_INT8: 1,
        types_pb2.DT_UINT8: 1,
        types_pb2.DT_UINT16: 2,
        types_pb2.DT_INT64: 8,
        types_pb2.DT_UINT32: 4,
        types_pb2.DT_UINT64: 8,
        types_pb2.DT_BOOL: 1,
        types_pb2.DT_HALF: 2,
    }
    return sizes.get(dtype, 4)


@st.composite
def tensors(draw: st.DrawFn) -> tensor_pb2.TensorProto:
    """Any ``TensorProto``: a random dtype and shape, content that may or may not fit them."""
    tensor = tensor_pb2.TensorProto(dtype=draw(DTYPE))
    dims = draw(st.lists(DIM, max_size=6))
    for size in dims:
        tensor.tensor_shape.dim.add(size=size)
    if draw(st.integers(0, 15)) == 0:
        tensor.tensor_shape.unknown_rank = True
    elements = math.prod(dims) if all(d >= 0 for d in dims) else -1
    fitting = 0 <= elements * _itemsize(tensor.dtype) <= 65536
    mode = draw(
        st.sampled_from(["none", "content", "content_exact", "typed", "typed_for_dtype", "both"])
    )
    if mode in ("content", "both"):
        tensor.tensor_content = draw(st.binary(min_size=1, max_size=512))
    if mode == "content_exact" and fitting and elements > 0:
        tensor.tensor_content = draw(
            st.binary(
                min_size=elements * _itemsize(tensor.dtype),
                max_size=elements * _itemsize(tensor.dtype),
            )
        )
    if mode in ("typed", "both"):
        fields = draw(st.lists(st.sampled_from(sorted(TYPED_VALUES)), min_size=1, max_size=3))
        for name in dict.fromkeys(fields):
            count = draw(
                st.sampled_from(
                    [1, elements] if fitting and 0 < elements <= 4096 else [0, 1, 2, 17]
                )
            )
            getattr(tensor, name).extend(
                draw(st.lists(TYPED_VALUES[name], min_size=count, max_size=count))
            )
    if mode == "typed_for_dtype" and tensor.dtype in TYPED_FIELD:
        # The dtype's own field, with values from the whole range of the field's type (an
        # int_val of 300 for DT_INT8, a half_val bit pattern...).
        name = TYPED_FIELD[tensor.dtype]
        count = draw(st.sampled_from([1, elements] if fitting and 0 < elements <= 4096 else [1]))
        getattr(tensor, name).extend(
            draw(st.lists(TYPED_VALUES[name], min_size=count, max_size=count))
        )
    return tensor


@st.composite
def image_batches(draw: st.DrawFn) -> np.ndarray:
    """float32 [N,28,28,1]: zeros, uniform in [0,1), or full of extreme values."""
    rows = draw(st.integers(0, 6))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    kind = draw(st.sampled_from(["zeros", "uniform", "uniform", "extreme"]))
    shape = (rows, *IMAGE_DIMS)
    if kind == "zeros":
        return np.zeros(shape, np.float32)
    if kind == "uniform":
        return rng.random(shape, dtype=np.float32)
    return rng.choice(EXTREMES, size=shape)


@dataclass
class Case:
    """A request and what it must produce: ``images`` when it is valid (then it must succeed
    and match the reference runtime), else ``None`` (any client error, or a well-formed answer).
    """

    request: predict_pb2.PredictRequest
    images: np.ndarray | None
    mutations: list[str]


def _typed_images(tensor: tensor_pb2.TensorProto, images: np.ndarray, broadcast: bool) -> None:
    tensor.tensor_content = b""
    if broadcast:
        tensor.float_val.append(float(images.flat[0]))
    else:
        tensor.float_val.extend(images.ravel().tolist())


Mutation = Callable[[st.DrawFn, predict_pb2.PredictRequest], None]


def _images_tensor(request: predict_pb2.PredictRequest) -> tensor_pb2.TensorProto:
    if "images" not in request.inputs:
        request.inputs["images"].dtype = types_pb2.DT_FLOAT
    return request.inputs["images"]


def _set_dims(draw: st.DrawFn, request: predict_pb2.PredictRequest) -> None:
    shape = _images_tensor(request).tensor_shape
    del shape.dim[:]
    for size in draw(st.lists(DIM, max_size=6)):
        shape.dim.add(size=size)


def _one_dim(draw: st.DrawFn, request: predict_pb2.PredictRequest) -> None:
    dims = _images_tensor(request).tensor_shape.dim
    if dims:
        dims[draw(st.integers(0, len(dims) - 1))].size = draw(DIM)


def _content_length(draw: st.DrawFn, request: predict_pb2.PredictRequest) -> None:
    tensor = _images_tensor(request)
    content = tensor.tensor_content
    cut = draw(st.integers(-8, 8))
    tensor.tensor_content = content[:cut] if cut < 0 else content + bytes(cut)


def _typed_extra(draw: st.DrawFn, request: predict_pb2.PredictRequest) -> None:
    name = draw(st.sampled_from(sorted(TYPED_VALUES)))
    values = draw(st.lists(TYPED_VALUES[name], min_size=1, max_size=4))
    getattr(_images_tensor(request), name).extend(values)


def _dtype(draw: st.DrawFn, request: predict_pb2.PredictRequest) -> None:
    _images_tensor(request).dtype = draw(DTYPE)


def _replace_tensor(draw: st.DrawFn, request: predict_pb2.PredictRequest) -> None:
    request.inputs["images"].CopyFrom(draw(tensors()))


def _extra_input(draw: st.DrawFn, request: predict_pb2.PredictRequest) -> None:
    name = draw(NAMES)
    request.inputs[name].CopyFrom(draw(tensors()))


def _drop_input(draw: st.DrawFn, request: predict_pb2.PredictRequest) -> None:
    request.inputs.pop("images", None)


def _rename_input(draw: st.DrawFn, request: predict_pb2.PredictRequest) -> None:
    if "images" in request.inputs:
        tensor = request.inputs.pop("images")
        request.inputs[draw(NAMES)].CopyFrom(tensor)


def _model_name(draw: st.DrawFn, request: predict_pb2.PredictRequest) -> None:
    request.model_spec.name = draw(MODEL_NAMES)


def _version(draw: st.DrawFn, request: predict_pb2.PredictRequest) -> None:
    request.model_spec.version.value = draw(st.one_of(st.sampled_from([0, 2, -1]), INT64))


def _label(draw: st.DrawFn, request: predict_pb2.PredictRequest) -> None:
    request.model_spec.version_label = draw(
        st.one_of(st.sampled_from(["stable", "canary", "..", "../1", ""]), st.text())
    )


def _signature(draw: st.DrawFn, request: predict_pb2.PredictRequest) -> None:
    request.model_spec.signature_name = draw(
        st.one_of(st.sampled_from(["classify", "predict", "serving_default\x00"]), st.text())
    )


def _output_filter(draw: st.DrawFn, request: predict_pb2.PredictRequest) -> None:
    request.output_filter.extend(
        draw(st.lists(st.one_of(st.sampled_from(OUTPUTS), st.text(max_size=8)), max_size=4))
    )


MUTATIONS: dict[str, Mutation] = {
    "dims": _set_dims,
    "one_dim": _one_dim,
    "content_length": _content_length,
    "typed_extra": _typed_extra,
    "dtype": _dtype,
    "replace_tensor": _replace_tensor,
    "extra_input": _extra_input,
    "drop_input": _drop_input,
    "rename_input": _rename_input,
    "model_name": _model_name,
    "version": _version,
    "label": _label,
    "signature": _signature,
    "output_filter": _output_filter,
}


@st.composite
def cases(draw: st.DrawFn) -> Case:
    """A valid Predict request, most often mutated into an invalid one."""
    images = draw(image_batches())
    model = draw(st.sampled_from(MODELS))
    version = draw(st.sampled_from([None, 1]))
    request = predict_request(model, images, version=version)
    request.model_spec.signature_name = draw(st.sampled_from(["", "serving_default"]))
    if len(images) and draw(st.integers(0, 3)) == 0:
        same = bool(np.all(images == images.flat[0])) and not np.isnan(images.flat[0])
        _typed_images(request.inputs["images"], images, broadcast=same and draw(st.booleans()))
    if draw(st.booleans()):
        request.output_filter.extend(draw(st.lists(st.sampled_from(OUTPUTS), max_size=3)))
    names = draw(st.lists(st.sampled_from(sorted(MUTATIONS)), max_size=3))
    for name in names:
        MUTATIONS[name](draw, request)
    return Case(request, None if names else images, names)


@st.composite
def mutated_bytes(draw: st.DrawFn) -> bytes:
    """A serialized valid request with bytes flipped, cut, inserted or spliced in."""
    data = bytearray(draw(cases()).request.SerializeToString())
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "cut", "insert", "varint"]))
        position = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[position] ^= draw(st.integers(1, 255))
        elif op == "cut":
            del data[position:]
        elif op == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=12))
        else:  # a huge varint: absurd lengths and field numbers
            data[position:position] = b"\xff" * draw(st.integers(1, 10)) + b"\x01"
    return bytes(data)


# ---- fixtures and checks ------------------------------------------------------------------


@pytest.fixture(scope="module")
def channel(onnx_server):
    options = [
        ("grpc.max_send_message_length", SEND_LIMIT),
        ("grpc.max_receive_message_length", SEND_LIMIT),
    ]
    with grpc.insecure_channel(onnx_server.grpc_target, options=options) as chan:
        yield chan


@pytest.fixture(scope="module")
def stub(channel):
    return prediction_service_pb2_grpc.PredictionServiceStub(channel)


@pytest.fixture(scope="module", autouse=True)
def _tally():
    yield
    TALLY.flush()


PROBE = predict_request("separable", np.full((1, *IMAGE_DIMS), 0.25, np.float32))


def assert_alive(server, stub) -> None:
    """The process runs and answers a valid request."""
    assert server.process.poll() is None, "the server process died"
    response = stub.Predict(PROBE, timeout=10)
    assert len(response.outputs["classes"].int64_val) == 1


def _decode(tensor: tensor_pb2.TensorProto) -> np.ndarray:
    dims = [d.size for d in tensor.tensor_shape.dim]
    if tensor.dtype == types_pb2.DT_FLOAT:
        return np.asarray(tensor.float_val, np.float32).reshape(dims)
    assert tensor.dtype == types_pb2.DT_INT64, tensor.dtype
    return np.asarray(tensor.int64_val, np.int64).reshape(dims)


def check_prediction(
    response: predict_pb2.PredictResponse,
    request: predict_pb2.PredictRequest,
    images: np.ndarray | None,
    reference: dict[str, Any],
) -> None:
    """A successful answer is well-formed and, for a known valid request, correct."""
    model = request.model_spec.name
    assert response.model_spec.name == model
    assert response.model_spec.version.value == 1
    assert response.model_spec.signature_name == "serving_default"
    wanted = set(request.output_filter) or set(OUTPUTS)
    assert set(response.outputs) == wanted
    outputs = {name: _decode(tensor) for name, tensor in response.outputs.items()}
    rows = next(iter(outputs.values())).shape[0]
    if "probabilities" in outputs:
        assert outputs["probabilities"].shape == (rows, 10)
    if "classes" in outputs:
        assert outputs["classes"].shape == (rows,)
        assert np.all((outputs["classes"] >= 0) & (outputs["classes"] < 10))
    if images is None:
        return
    assert rows == len(images)
    if rows == 0:
        return
    expected = reference[model].predict("serving_default", {"images": images})
    for name, got in outputs.items():
        np.testing.assert_allclose(got, expected[name], rtol=1e-5, atol=1e-6, equal_nan=True)


def _outcome(prop: str, code: str) -> None:
    TALLY.add(prop, code)


# ---- properties ---------------------------------------------------------------------------


def _tensor_case(dtype: int, dims: list[int], field: str = "", values: tuple = ()) -> Case:
    request = predict_request("separable", np.zeros((1, *IMAGE_DIMS), np.float32))
    tensor = tensor_pb2.TensorProto(dtype=dtype)
    for size in dims:
        tensor.tensor_shape.dim.add(size=size)
    if field:
        getattr(tensor, field).extend(values)
    request.inputs["images"].CopyFrom(tensor)
    return Case(request, None, ["regression"])


# Inputs the fuzzer found to crash the decoder (INTERNAL) before the fix in tensor_codec.
@example(case=_tensor_case(types_pb2.DT_UINT8, [28, 147], "int_val", (-1,)))
@example(case=_tensor_case(types_pb2.DT_INT8, [1, 2], "int_val", (300, -129)))
@example(case=_tensor_case(types_pb2.DT_FLOAT, [0, 2**62]))
@example(case=_tensor_case(types_pb2.DT_FLOAT, [0, 2**62, 2**62]))
@fuzz_settings()
@given(case=cases())
def test_fuzz_grpc_predict_requests(onnx_server, stub, onnx_reference, case):
    try:
        response = stub.Predict(case.request, timeout=30)
    except grpc.RpcError as error:
        code, details = error.code(), error.details() or ""
        _outcome("grpc_predict", code.name)
        assert code in GRPC_CLIENT_ERRORS, f"{code.name} for {case.mutations}: {details}"
        assert details, "an error must say what is wrong"
        assert case.images is None, f"a valid request failed: {code.name}: {details}"
    else:
        _outcome("grpc_predict", "OK")
        check_prediction(response, case.request, case.images, onnx_reference)
    assert_alive(onnx_server, stub)


RAW_METHODS = {
    "/tensorflow.serving.PredictionService/Predict": predict_pb2.PredictResponse,
    "/tensorflow.serving.PredictionService/GetModelMetadata": (
        get_model_metadata_pb2.GetModelMetadataResponse
    ),
    "/tensorflow.serving.PredictionService/Classify": None,
    "/tensorflow.serving.PredictionService/MultiInference": None,
    "/tensorflow.serving.ModelService/GetModelStatus": (
        get_model_status_pb2.GetModelStatusResponse
    ),
}


@fuzz_settings()
@given(
    method=st.sampled_from(sorted(RAW_METHODS)),
    payload=st.one_of(st.binary(max_size=4096), mutated_bytes()),
)
def test_fuzz_grpc_random_bytes(onnx_server, channel, stub, method, payload):
    # No request serializer: the bytes go on the wire as they are (HandleReloadConfigRequest is
    # left out: a random message that parses could reconfigure the shared server).
    call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
    try:
        answer = call(payload, timeout=30)
    except grpc.RpcError as error:
        code, details = error.code(), error.details() or ""
        _outcome("grpc_bytes", code.name)
        assert code in GRPC_CLIENT_ERRORS, f"{code.name} for {payload[:64]!r}: {details}"
        assert details
    else:
        _outcome("grpc_bytes", "OK")
        response_class = RAW_METHODS[method]
        assert response_class is not None, f"{method} answered OK"
        response_class.FromString(answer)  # well-formed
    assert_alive(onnx_server, stub)


def test_decoder_converts_typed_values_as_tensorflow_does():
    """int_val is truncated to narrower integer types (a C cast) and half_val carries IEEE
    bit patterns, as in TF's Tensor::FromProto."""
    cases = [
        (types_pb2.DT_INT8, "int_val", [300, -129, 5], np.int8, [44, 127, 5]),
        (types_pb2.DT_UINT8, "int_val", [-1, 256, 7], np.uint8, [255, 0, 7]),
        (types_pb2.DT_INT16, "int_val", [40000, 1, 2], np.int16, [-25536, 1, 2]),
        (types_pb2.DT_HALF, "half_val", [0x3C00, 0xC000, 0x7C00], np.float16, [1.0, -2.0, np.inf]),
    ]
    for dtype, field, values, numpy_type, expected in cases:
        tensor = tensor_pb2.TensorProto(dtype=dtype)
        tensor.tensor_shape.dim.add(size=3)
        getattr(tensor, field).extend(values)
        decoded = to_numpy(tensor, "x", 1024)
        assert decoded.dtype == numpy_type
        np.testing.assert_array_equal(decoded, np.asarray(expected, numpy_type))


def test_a_shape_seen_before_keeps_every_other_check():
    """to_numpy remembers validated shapes; the content, the typed fields and the byte limit are
    still checked for every tensor of that shape."""
    from serving.errors import ServingError
    from serving.transport import tensor_codec

    def tensor(content: bytes, *floats: float) -> tensor_pb2.TensorProto:
        proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_content=content)
        proto.tensor_shape.dim.add(size=2)
        proto.tensor_shape.dim.add(size=2)
        proto.float_val.extend(floats)
        return proto

    def refused(proto: tensor_pb2.TensorProto, max_bytes: int) -> str:
        with pytest.raises(ServingError) as caught:
            to_numpy(proto, "x", max_bytes)
        assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
        return str(caught.value)

    four = np.arange(4, dtype=np.float32)
    for _ in range(2):  # the first call validates the shape, the second finds it remembered
        np.testing.assert_array_equal(
            to_numpy(tensor(four.tobytes()), "x", 1024), four.reshape(2, 2)
        )
        assert "needs 16" in refused(tensor(four[:3].tobytes()), 1024)
        assert "sets both tensor_content and float_val" in refused(
            tensor(four.tobytes(), 1.0), 1024
        )
        assert "more than the request limit of 8" in refused(tensor(four.tobytes()), 8)
    # Bounded: every new (shape, limit) past its size replaces the least recent one rather than
    # growing with every shape clients send; refused shapes were never kept.
    remembered = tensor_codec._checked_shape
    limit = remembered.cache_info().maxsize
    assert limit == 1024
    for extra in range(limit + 100):
        to_numpy(tensor(four.tobytes()), "x", 2048 + extra)  # a shape not seen under this limit
    assert remembered.cache_info().currsize == limit
