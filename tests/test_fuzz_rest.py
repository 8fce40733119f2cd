"""Property-based fuzzing of REST ``:predict`` against a real server.

Generated bodies: JSON of any shape and type, image batches with a value, a row or a level
changed, NaN / Infinity literals, huge numbers, deep nesting, long strings, invalid UTF-8 and
random bytes; generated URLs: model names, versions, labels and verbs. Every answer must be a
JSON error with a client status (never 500) or a correct prediction, and the server must still
answer a valid request afterwards.
"""

from __future__ import annotations

import http.client
import json
import urllib.parse
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from fuzz.common import REST_CLIENT_ERRORS, TALLY, fuzz_settings

MODELS = ("standard", "separable")
OUTPUTS = ("probabilities", "classes")
IMAGE_DIMS = (28, 28, 1)

JSON_LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(-(2**70), 2**70),
    st.floats(),  # NaN and ±inf are written as the NaN / Infinity literals
    st.text(max_size=20),
)
JSON_VALUES = st.recursive(
    JSON_LEAVES,
    lambda children: st.one_of(
        st.lists(children, max_size=5), st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=30,
)
HUGE_LITERALS = [
    b"1e999",
    b"-1e999",
    b"1e-999",
    b"9" * 400,
    b"9" * 5000,  # over Python's int-from-string digit limit
    b"-0",
    b"0.0000000000000000000000000000000000000000000001",
    b"340282366920938463463374607431768211457",
    b"NaN",
    b"-Infinity",
    b"Infinity",
    b"true",
    b"null",
    b'"0.5"',
    b'"\\ud800"',  # a lone surrogate
]
INVALID_UTF8 = [b"\xff", b"\xfe\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\x80"]


@dataclass
class RestCase:
    """A request; ``images`` and ``row_format`` are set when it is valid (must succeed)."""

    path: str
    body: bytes
    model: str
    images: np.ndarray | None
    row_format: bool
    output_keys: tuple[str, ...] = OUTPUTS


@st.composite
def image_batches(draw: st.DrawFn) -> np.ndarray:
    rows = draw(st.integers(0, 3))
    seed = draw(st.integers(0, 2**32 - 1))
    return np.random.default_rng(seed).random((rows, *IMAGE_DIMS), dtype=np.float32)


def _leaf_paths(value: Any, prefix: tuple[int, ...] = ()) -> list[tuple[int, ...]]:
    if isinstance(value, list) and value:
        # Only a few branches: a batch has thousands of leaves.
        return [p for i in (0, len(value) - 1) for p in _leaf_paths(value[i], (*prefix, i))]
    return [prefix]


def _replace(value: Any, path: tuple[int, ...], new: Any) -> Any:
    if not path:
        return new
    copy = list(value)
    copy[path[0]] = _replace(value[path[0]], path[1:], new)
    return copy


@st.composite
def image_json(draw: st.DrawFn, images: np.ndarray) -> tuple[Any, bool]:
    """The images as nested lists, maybe changed; returns (value, still valid)."""
    value: Any = images.tolist()
    change = draw(
        st.sampled_from(["none", "none", "leaf", "drop", "wrap", "unwrap", "flatten", "replace"])
    )
    if change == "none" or not value:
        return value, True
    if change == "leaf":
        path = draw(st.sampled_from(_leaf_paths(value)))
        return _replace(value, path, draw(JSON_VALUES)), False
    if change == "drop":  # one row or pixel fewer: ragged or a wrong dimension
        path = draw(st.sampled_from(_leaf_paths(value)))
        depth = draw(st.integers(1, max(len(path) - 1, 1)))  # never a whole row: still valid
        cut = path[:depth]
        node = value
        for index in cut:
            node = node[index]
        return _replace(value, cut, node[1:] if isinstance(node, list) else []), False
    if change == "wrap":
        return [value], False
    if change == "unwrap":
        return value[0], False
    if change == "flatten":
        return images.ravel().tolist(), False
    return draw(JSON_VALUES), False


@st.composite
def bodies(draw: st.DrawFn) -> tuple[Any, np.ndarray | None, bool]:
    """A request object: (object, images when valid, row format)."""
    images = draw(image_batches())
    value, valid = draw(image_json(images))
    layout = draw(st.sampled_from(["instances", "inputs", "inputs_named", "instances_named"]))
    if not len(images) and layout != "instances":
        valid = False  # only the row format has a way to say "no rows"
    if layout == "instances":
        body: dict[str, Any] = {"instances": value}
    elif layout == "inputs":
        body = {"inputs": value}
    elif layout == "inputs_named":
        body = {"inputs": {draw(st.sampled_from(["images", "image"])): value}}
        valid = valid and "images" in body["inputs"]
    else:
        rows = value if isinstance(value, list) else [value]
        body = {"instances": [{"images": row} for row in rows]}
        valid = valid and len(rows) > 0
    if draw(st.booleans()):
        signature = draw(st.one_of(st.sampled_from(["serving_default", ""]), JSON_VALUES))
        body["signature_name"] = signature
        valid = valid and signature in ("serving_default", "")
    if draw(st.integers(0, 4)) == 0:
        body[draw(st.sampled_from(["instances", "inputs", "extra"]))] = draw(JSON_VALUES)
        valid = False
    if draw(st.integers(0, 6)) == 0:
        return draw(JSON_VALUES), None, True
    row_format = "instances" in body
    return body, images if valid else None, row_format


def _splice(draw: st.DrawFn, data: bytes, insert: bytes) -> bytes:
    position = draw(st.integers(0, len(data)))
    return data[:position] + insert + data[position:]


@st.composite
def raw_bodies(draw: st.DrawFn) -> bytes:
    """Bytes that are not (or not quite) a valid body."""
    kind = draw(
        st.sampled_from(["bytes", "deep", "deep_in_body", "long_string", "utf8", "literal", "cut"])
    )
    if kind == "bytes":
        return draw(st.binary(max_size=2048))
    if kind == "deep":
        depth = draw(st.sampled_from([10, 63, 64, 65, 100, 1000, 5000, 100_000, 1_000_000]))
        opener = draw(st.sampled_from([b"[", b'{"a":']))
        closer = b"]" if opener == b"[" else b"}"
        return opener * depth + closer * depth
    if kind == "deep_in_body":
        depth = draw(st.sampled_from([5, 32, 33, 63, 64, 65, 200, 3000, 100_000]))
        key = draw(st.sampled_from([b"instances", b"inputs"]))
        return b'{"' + key + b'": ' + b"[" * depth + b"0.5" + b"]" * depth + b"}"
    if kind == "long_string":
        length = draw(st.sampled_from([1000, 100_000, 1_000_000, 3_000_000]))
        field = draw(st.sampled_from([b"instances", b"signature_name", b"x" * 1000]))
        return b'{"' + field + b'": "' + b"a" * length + b'"}'
    body = json.dumps({"instances": draw(image_batches()).tolist()}).encode()
    if kind == "utf8":
        return _splice(draw, body, draw(st.sampled_from(INVALID_UTF8)))
    if kind == "literal":
        # A number of the batch replaced by something no float32 can hold.
        index = body.find(b"0.", draw(st.integers(0, max(len(body) - 1, 0))))
        if index < 0:
            return body + draw(st.sampled_from(HUGE_LITERALS))
        end = index + 2
        while end < len(body) and body[end : end + 1].isdigit():
            end += 1
        return body[:index] + draw(st.sampled_from(HUGE_LITERALS)) + body[end:]
    return body[: draw(st.integers(0, len(body)))]


@st.composite
def paths(draw: st.DrawFn) -> tuple[str, str, bool]:
    """(path, model, valid): a valid path two times in three, so that most bodies reach the
    signature-dependent decoding."""
    if draw(st.integers(0, 2)):
        model = draw(st.sampled_from(MODELS))
        suffix = draw(st.sampled_from(["", "/versions/1"]))
        verb = draw(st.sampled_from(["predict", "PREDICT", "Predict"]))
        return f"/v1/models/{model}{suffix}:{verb}", model, True
    model = draw(
        st.one_of(
            st.sampled_from([*MODELS, *MODELS, "..", "standard/..", "%2e%2e"]),
            st.text(min_size=1, max_size=12),
        )
    )
    where = draw(st.sampled_from(["", "", "version1", "version", "label"]))
    suffix = ""
    if where == "version1":
        suffix = "/versions/1"
    elif where == "version":
        number = draw(
            st.one_of(
                st.integers(0, 2**70).map(str), st.sampled_from(["9" * 5000, "0" * 50 + "1", "٣"])
            )
        )
        suffix = f"/versions/{urllib.parse.quote(number)}"
    elif where == "label":
        suffix = "/labels/" + urllib.parse.quote(draw(st.text(min_size=1, max_size=12)), safe="")
    verb = draw(st.sampled_from(["predict", "predict", "classify", "regress", "PREDICT", "x"]))
    path = f"/v1/models/{urllib.parse.quote(model, safe='')}{suffix}:{verb}"
    valid = model in MODELS and where in ("", "version1") and verb.lower() == "predict"
    return path, model, valid


@st.composite
def rest_cases(draw: st.DrawFn) -> RestCase:
    path, model, path_ok = draw(paths())
    if draw(st.integers(0, 3)) == 0:
        return RestCase(path, draw(raw_bodies()), model, None, True)
    body, images, row_format = draw(bodies())
    encoded = json.dumps(body).encode()
    return RestCase(path, encoded, model, images if path_ok else None, row_format)


# ---- fixtures and checks ------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def _tally():
    yield
    TALLY.flush()


def post(server, path: str, body: bytes) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", server.rest_port, timeout=60)
    try:
        connection.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


VALID_BODY = json.dumps({"instances": np.full((1, *IMAGE_DIMS), 0.25).tolist()}).encode()


def assert_alive(server) -> None:
    assert server.process.poll() is None, "the server process died"
    status, payload = post(server, "/v1/models/separable:predict", VALID_BODY)
    assert status == 200, payload[:300]
    assert len(json.loads(payload)["predictions"]) == 1


def check_prediction(reply: Any, case: RestCase, reference: dict[str, Any]) -> None:
    """A 200 answer is TF Serving's format and, for a known valid request, correct."""
    assert isinstance(reply, dict)
    if case.row_format:
        assert set(reply) == {"predictions"}
        rows = reply["predictions"]
        assert isinstance(rows, list)
        columns = {k: [row[k] for row in rows] for k in OUTPUTS} if rows else {}
        for row in rows:
            assert set(row) == set(OUTPUTS)
    else:
        assert set(reply) == {"outputs"}
        columns = reply["outputs"]
        assert set(columns) == set(OUTPUTS)
    if case.images is None or not len(case.images):
        return
    expected = reference[case.model].predict("serving_default", {"images": case.images})
    np.testing.assert_allclose(
        np.asarray(columns["probabilities"], np.float32),
        expected["probabilities"],
        rtol=1e-5,
        atol=1e-6,
    )
    np.testing.assert_array_equal(np.asarray(columns["classes"]), expected["classes"])


# A version number past Python's int-from-string digit limit was a 500 before the fix.
@example(
    case=RestCase(
        "/v1/models/standard/versions/" + "9" * 5000 + ":predict",
        VALID_BODY,
        "standard",
        None,
        True,
    )
)
@fuzz_settings()
@given(case=rest_cases())
def test_fuzz_rest_predict(onnx_server, onnx_reference, case):
    status, payload = post(onnx_server, case.path, case.body)
    TALLY.add("rest_predict", str(status))
    reply = json.loads(payload)  # always JSON, errors included
    if status == 200:
        check_prediction(reply, case, onnx_reference)
    else:
        assert status in REST_CLIENT_ERRORS, f"HTTP {status} for {case.path}: {reply}"
        assert set(reply) == {"error"} and isinstance(reply["error"], str) and reply["error"]
        assert case.images is None, f"a valid request failed: HTTP {status}: {reply}"
    assert_alive(onnx_server)
