"""The REST JSON codec: the fast (pysimdjson) decoder gives exactly the reference decoder's
arrays or 400s on every body, and takes the bodies real clients send."""

from __future__ import annotations

import json

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loadtest.record.payload import rest_body
from serving.errors import ServingError
from serving.runtimes import Signature, TensorSpec
from serving.transport import rest_json

IMAGES = TensorSpec("images", np.dtype(np.float32), (-1, 28, 28, 1))
ONE_INPUT = Signature("serving_default", {"images": IMAGES}, {})
TWO_INPUTS = Signature(
    "pair",
    {
        "a": TensorSpec("a", np.dtype(np.float32), (-1, 2)),
        "b": TensorSpec("b", np.dtype(np.float16), (-1,)),
    },
    {},
)
INTS = Signature("ints", {"ids": TensorSpec("ids", np.dtype(np.int64), (-1,))}, {})
SIGNATURES = [ONE_INPUT, TWO_INPUTS, INTS]


def _outcome(arrays: dict[str, np.ndarray], row_format: bool) -> tuple:
    return (
        "ok",
        row_format,
        {k: (v.dtype.str, v.shape, v.tobytes()) for k, v in sorted(arrays.items())},
    )


def reference(raw: bytes, signature: Signature) -> tuple:
    """What the server answered before the fast decoder: orjson + np.array."""
    try:
        body = rest_json.parse_json(raw)
        name = rest_json._signature_name(body)
        return (name, *_outcome(*rest_json.request_inputs(body, signature)))
    except ServingError as exc:
        return ("error", exc.code, exc.message)


def decoded(raw: bytes, signature: Signature) -> tuple:
    try:
        body = rest_json.decode_predict(raw)
        return (body.signature_name, *_outcome(*body.inputs(signature)))
    except ServingError as exc:
        return ("error", exc.code, exc.message)


def assert_same(raw: bytes) -> None:
    for signature in SIGNATURES:
        assert decoded(raw, signature) == reference(raw, signature), raw[:200]


ROW = [[[0.5]] * 28] * 28
CASES = [
    # valid, fast
    json.dumps({"instances": [ROW]}),
    json.dumps({"instances": [ROW, ROW], "signature_name": "serving_default"}),
    json.dumps({"signature_name": "x", "inputs": [ROW]}),
    json.dumps({"inputs": {"images": [ROW]}}),
    json.dumps({"inputs": {"a": [[1, 2.5]], "b": [3]}}),
    json.dumps({"inputs": {"b": [3, 4], "a": [[1, 2], [3, 4]]}}),
    '{"instances": [[1, 2], [3, 4]]}',
    '{"instances": [-0, -0.0, 0, 1e-400, 5E3]}',
    '{"instances": [1.5, 2]}',
    '{ "instances" : [ [ 1 , 2 ] ] , "signature_name" : "a b" }',
    '{"inst\\u0061nces": [1.0]}',
    '{"instances": [16777217, 9007199254740993, 9007199254740992]}',
    '{"instances": [3.5e38, 1e39, -3.4028235e38]}',
    '{"instances": [65504, 65520, 1e5]}',
    '{"instances": [18446744073709551615]}',
    '{"instances": [[1e300]]}',
    # ragged, empty, mixed
    '{"instances": [[1, 2], [3]]}',
    '{"instances": [[1, 2], [3, 4, 5], [6]]}',
    '{"instances": [[1.5], [[2.5]]]}',
    '{"instances": [[1], 2]}',
    '{"instances": [2, [1]]}',
    '{"instances": []}',
    '{"instances": [[]]}',
    '{"instances": [[], []]}',
    '{"inputs": [[], [1]]}',
    '{"instances": [1.5, true]}',
    '{"instances": [true]}',
    '{"instances": [null]}',
    '{"instances": ["a"]}',
    '{"instances": [{"images": [1]}]}',
    '{"instances": [{"images": 1}, 2]}',
    '{"inputs": {"images": [1], "extra": [2]}}',
    '{"inputs": {"images": [1], "images": [2]}}',
    '{"inputs": 3}',
    '{"inputs": "x"}',
    # top level
    '{"instances": [1], "instances": [[2]]}',
    '{"instances": [1], "inputs": [1]}',
    "{}",
    "[]",
    "[1, 2]",
    "3",
    '"x"',
    "null",
    '{"instances": [1], "other": 1}',
    '{"instances": [1], "signature_name": 3}',
    '{"instances": [1], "signature_name": "a[b],c"}',
    '{"instances": [1], "signature_name": "\\ud800"}',
    '{"instances": [1], "signature_name": "\\u005b"}',
    '{"instances": [1], "signature_name": null}',
    # malformed
    '{"instances": [NaN]}',
    '{"inputs": Infinity}',
    '{"instances": [-Infinity]}',
    '{"instances": [1e400]}',
    '{"instances": [' + "9" * 400 + "]}",
    '{"instances": [1,]}',
    '{"instances": [01]}',
    '{"instances": [1] } x',
    "{instances: ",
    "",
    "   ",
    '{"instances": [' + "[" * 2000 + "1" + "]" * 2000 + "]}",
    '{"instances": [' + "[" * 1030 + "1" + "]" * 1030 + "]}",
    '{"instances": [' + "[" * 1020 + "1" + "]" * 1020 + "]}",
]
RAW_CASES = [
    b'{"instances": "\xff\xfe"}',
    b'\xef\xbb\xbf{"instances": [1.0]}',
    b'{"instances": [1.0]}\x00',
    b'{"instances": [1.0]}\n',
    b'{"instances": [1.0], "signature_name": "\xc3\xa9"}',
]


@pytest.mark.parametrize("raw", [c.encode() for c in CASES] + RAW_CASES)
def test_same_outcome_as_reference(raw):
    assert_same(raw)


def test_images_take_the_fast_path():
    images = np.random.default_rng(0).random((32, 28, 28, 1), dtype=np.float32)
    for raw in (
        json.dumps({"instances": images.tolist()}).encode(),
        orjson.dumps({"inputs": {"images": images.tolist()}, "signature_name": "serving_default"}),
        rest_body(np.random.default_rng(1).integers(0, 256, (8, 28, 28), dtype=np.uint8)),
    ):
        body = rest_json.decode_predict(raw)
        assert body.fast
        inputs, _ = body.inputs(ONE_INPUT)
        assert inputs["images"].dtype == np.float32
        assert_same(raw)
    assert not rest_json.decode_predict(b'{"instances": [[1], [2, 3]]}').fast


def test_parser_reused_across_documents():
    # A parser holds one document; each decode must release it before the next parse.
    for n in (1, 3, 2):
        raw = json.dumps({"instances": [ROW] * n}).encode()
        assert rest_json.decode_predict(raw).inputs(ONE_INPUT)[0]["images"].shape[0] == n


def test_large_bodies_get_their_own_parser(monkeypatch):
    # Above the threshold a fresh parser is used (and dropped), the thread's one is kept small.
    monkeypatch.setattr(rest_json, "_REUSE_PARSER_BYTES", 1000)
    small = b'{"instances": [[1.5]]}'
    large = json.dumps({"instances": [ROW, ROW]}).encode()
    assert rest_json._parser(len(large)) is not rest_json._parser(len(large))
    assert rest_json._parser(len(small)) is rest_json._parser(len(small))
    for raw in (large, small, large):
        assert rest_json.decode_predict(raw).fast
        assert_same(raw)


_numbers = st.one_of(
    st.integers(-(2**64), 2**64),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
)
_nested = st.recursive(
    _numbers | st.none() | st.text(max_size=3),
    lambda children: st.lists(children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    key=st.sampled_from(["instances", "inputs"]),
    value=st.one_of(
        _nested,
        st.dictionaries(st.sampled_from(["a", "b", "images", "x"]), _nested, max_size=3),
    ),
    signature_name=st.one_of(st.none(), st.text(max_size=4), st.integers()),
)
def test_generated_bodies_same_outcome(key, value, signature_name):
    body: dict = {key: value}
    if signature_name is not None:
        body["signature_name"] = signature_name
    assert_same(json.dumps(body).encode())


@settings(max_examples=200, deadline=None)
@given(shape=st.lists(st.integers(1, 3), min_size=1, max_size=4), data=st.data())
def test_generated_rectangles_and_near_misses(shape, data):
    values = data.draw(
        st.lists(
            st.one_of(st.integers(-100, 100), st.floats(-1e6, 1e6)),
            min_size=int(np.prod(shape)),
            max_size=int(np.prod(shape)),
        )
    )
    nested = np.array(values, dtype=object).reshape(shape).tolist()
    assert_same(json.dumps({"instances": nested}).encode())
    # Drop one leaf somewhere: ragged, the reference decoder's 400 (or its shape) must win.
    text = json.dumps({"instances": nested})
    cut = text.rfind(",")
    if cut > 0:
        end = min(i for i in (text.find(",", cut + 1), text.find("]", cut + 1)) if i > 0)
        assert_same((text[:cut] + text[end:]).encode())


def test_response_encoding():
    probabilities = np.array([[0.1, 0.9], [0.75, 0.25]], np.float32)
    classes = np.array([1, 0], np.int64)
    outputs: dict[str, np.ndarray] = {"probabilities": probabilities, "classes": classes}
    rows = json.loads(rest_json.encode_response(outputs, True))["predictions"]
    assert [r["classes"] for r in rows] == [1, 0]
    assert np.array_equal(np.array([r["probabilities"] for r in rows], np.float32), probabilities)
    columns = json.loads(rest_json.encode_response(outputs, False))["outputs"]
    assert columns["classes"] == [1, 0]
    assert np.array_equal(np.float32(columns["probabilities"]), probabilities)
    # float32 values in their shortest form, as TF Serving writes them.
    assert rest_json.encode_response({"p": probabilities}, True) == (
        b'{"predictions":[[0.1,0.9],[0.75,0.25]]}'
    )
    # Also with several outputs (our models' answer), where each row is an object.
    assert rest_json.encode_response(outputs, True) == (
        b'{"predictions":[{"probabilities":[0.1,0.9],"classes":1},'
        b'{"probabilities":[0.75,0.25],"classes":0}]}'
    )
    # ONNX Runtime answers int64 as numpy.longlong, whose scalars orjson cannot write itself.
    longlong: dict[str, np.ndarray] = {
        "probabilities": probabilities,
        "classes": classes.astype(np.longlong),
    }
    assert rest_json.encode_response(longlong, True) == rest_json.encode_response(outputs, True)
    strided_rows = np.arange(12, dtype=np.float32).reshape(3, 4)[:, ::2]
    strided_answer = rest_json.encode_response({"p": strided_rows, "c": np.arange(3)}, True)
    assert json.loads(strided_answer)["predictions"][2] == {"p": [8.0, 10.0], "c": 2}
    strided = np.arange(12, dtype=np.float32).reshape(3, 4)[:, ::2]
    assert json.loads(rest_json.encode_response({"p": strided}, False)) == {
        "outputs": strided.tolist()
    }
