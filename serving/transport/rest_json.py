"""TF Serving's REST JSON ↔ numpy: the ``:predict`` body in the row (``instances``) and columnar
(``inputs``) formats, named or unnamed, and the ``predictions``/``outputs`` answer.

Two decoders give the same result:

- the fast path (pysimdjson): numeric arrays go from JSON text into one flat float64 buffer in C
  (``as_buffer``), never one Python float per value. A 256-image body (4.5 MB) became an array
  in ~8 ms instead of ~110 ms with orjson + ``np.asarray`` (issue #11). It only accepts bodies
  whose outcome it can prove equal to the reference decoder's: a JSON object with no other keys
  than ``instances``/``inputs``/``signature_name``, rectangular arrays of numbers of a float
  input, every value exactly representable as it would be through an int64 or float64 array;
- the reference path (orjson + ``np.array``): everything else, which includes every malformed
  or refused body, so each error keeps its status and message exactly.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
import orjson
import simdjson

from serving.errors import invalid_argument
from serving.runtimes import Signature, TensorSpec

_FAST_KEYS = frozenset({"instances", "inputs", "signature_name"})
# Bytes that are not array structure; deleting them leaves the skeleton ("[[,],[,]]").
_NOT_STRUCTURE = bytes(c for c in range(256) if c not in b"[],")
_STRUCTURE = frozenset("[],")
_UTF8_BOM = b"\xef\xbb\xbf"
# Beyond 2**53 an integer literal could round differently through float64 than through int64
# (the reference decoder's dtype for all-integer lists); such bodies take the reference path.
_EXACT_LIMIT = float(2**53)
_MAX_RANK = 32


# --- the reference decoder -------------------------------------------------------------------


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a valid JSON number")


def _describe_json_error(body: bytes, fallback: str) -> str:
    """The standard library's account of what is wrong (it names NaN, Infinity, the bad byte);
    orjson's where only orjson refuses (lone surrogates, numbers beyond float64)."""
    try:
        json.loads(body, parse_constant=_reject_constant)
    except RecursionError:
        return "nesting too deep"
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return str(exc)
    return fallback


def parse_json(body: bytes) -> Any:
    """Strict JSON (orjson): NaN/Infinity literals, numbers beyond float64, invalid UTF-8, lone
    surrogates and nesting deeper than 1024 are 400s.

    orjson rather than the standard library: a 1-image body (784 numbers) decodes in ~70 µs
    instead of ~370 µs.
    """
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        reason = _describe_json_error(body, str(exc))
        raise invalid_argument(f"JSON Parse error: {reason}") from None


def _to_array(value: Any, spec: TensorSpec) -> np.ndarray:
    try:
        array = np.array(value)
    except (ValueError, TypeError, OverflowError) as exc:
        raise invalid_argument(
            f"input '{spec.name}': not a rectangular array of numbers ({exc})"
        ) from None
    kind = array.dtype.kind
    wanted = spec.dtype.kind
    allowed = {"f": "iuf", "i": "iu", "u": "iu", "b": "b"}.get(wanted, "iuf")
    if kind not in allowed or (kind == "b" and wanted != "b"):
        what = {"U": "strings", "O": "mixed or out-of-range values", "b": "booleans"}.get(
            kind, kind
        )
        raise invalid_argument(
            f"input '{spec.name}' must hold numbers of type {spec.dtype}, got {what}"
        )
    with np.errstate(over="ignore", invalid="ignore"):
        converted = array.astype(spec.dtype)
    if wanted == "f" and not np.all(np.isfinite(converted)):
        raise invalid_argument(f"input '{spec.name}' has a value outside the {spec.dtype} range")
    if wanted in "iu" and not np.array_equal(converted, array):
        raise invalid_argument(f"input '{spec.name}' has a value outside the {spec.dtype} range")
    return converted


def _empty(spec: TensorSpec) -> np.ndarray:
    return np.zeros((0, *[max(d, 0) for d in spec.shape[1:]]), dtype=spec.dtype)


def request_inputs(body: Any, signature: Signature) -> tuple[dict[str, np.ndarray], bool]:
    """Decode a parsed predict body into inputs (the reference path); returns
    (inputs, row_format)."""
    if not isinstance(body, dict):
        raise invalid_argument("request body must be a JSON object")
    has_rows, has_columns = "instances" in body, "inputs" in body
    if has_rows == has_columns:
        raise invalid_argument("request must have exactly one of 'instances' or 'inputs'")
    if has_rows:
        return _row_inputs(body["instances"], signature.inputs), True
    return _columnar_inputs(body["inputs"], signature.inputs), False


def _row_inputs(instances: Any, specs: Mapping[str, TensorSpec]) -> dict[str, np.ndarray]:
    """The row format (``instances``): a list of values, or of objects keyed by input name."""
    names = list(specs)
    if not isinstance(instances, list):
        raise invalid_argument("'instances' must be a list")
    if not instances:
        return {n: _empty(specs[n]) for n in names}
    if all(isinstance(i, dict) for i in instances):
        columns: dict[str, list[Any]] = {n: [] for n in names}
        for index, instance in enumerate(instances):
            if set(instance) != set(names):
                raise invalid_argument(
                    f"instance {index} has keys {sorted(instance)}; expected {sorted(names)}"
                )
            for n in names:
                columns[n].append(instance[n])
        return {n: _to_array(columns[n], specs[n]) for n in names}
    if any(isinstance(i, dict) for i in instances):
        raise invalid_argument("instances mix objects and values")
    if len(names) != 1:
        raise invalid_argument(f"the signature has inputs {names}: each instance must be an object")
    return {names[0]: _to_array(instances, specs[names[0]])}


def _columnar_inputs(columnar: Any, specs: Mapping[str, TensorSpec]) -> dict[str, np.ndarray]:
    """The columnar format (``inputs``): one value, or an object keyed by input name."""
    names = list(specs)
    if isinstance(columnar, dict):
        unknown = sorted(set(columnar) - set(names))
        missing = sorted(set(names) - set(columnar))
        if unknown or missing:
            raise invalid_argument(
                f"'inputs' has keys {sorted(columnar)}; expected {sorted(names)}"
            )
        return {n: _to_array(columnar[n], specs[n]) for n in names}
    if len(names) != 1:
        raise invalid_argument(f"the signature has inputs {names}: 'inputs' must be an object")
    return {names[0]: _to_array(columnar, specs[names[0]])}


def _signature_name(body: Any) -> str:
    if isinstance(body, dict) and "signature_name" in body:
        if not isinstance(body["signature_name"], str):
            raise invalid_argument("'signature_name' must be a string")
        return str(body["signature_name"])
    return ""


# --- the fast decoder ------------------------------------------------------------------------


@lru_cache(maxsize=128)
def _skeleton(shape: tuple[int, ...]) -> bytes:
    """The structural characters of a rectangular array of ``shape``: (2, 2) -> ``[[,],[,]]``."""
    inner = b"[" + b"," * (shape[-1] - 1) + b"]"
    for size in reversed(shape[:-1]):
        inner = b"[" + b",".join([inner] * size) + b"]"
    return inner


class _NeedsReferenceError(Exception):
    """The body needs the reference decoder (it may be valid or not)."""


_parsers = threading.local()
# A parser keeps buffers sized for the largest document it parsed (~3x its size: 115 MB
# after a 36 MB body):
# bodies above this size get a parser of their own, freed with the request.
_REUSE_PARSER_BYTES = 8 * 1024 * 1024


def _parser(size: int) -> simdjson.Parser:
    # One parser per thread: a parser holds one document at a time and reuses its buffers.
    if size > _REUSE_PARSER_BYTES:
        return simdjson.Parser()
    parser: simdjson.Parser | None = getattr(_parsers, "parser", None)
    if parser is None:
        parser = _parsers.parser = simdjson.Parser()
    return parser


def _numeric_array(value: Any) -> tuple[np.ndarray, bytes]:
    """A simdjson array of numbers as a float64 ndarray of its nested shape, and the skeleton
    that shape implies (the caller compares it with the body's)."""
    if not isinstance(value, simdjson.Array):
        raise _NeedsReferenceError
    shape: list[int] = []
    probe: Any = value
    while isinstance(probe, simdjson.Array):
        shape.append(len(probe))
        # Empty arrays: the reference decoder knows their shapes; past numpy's 64 dimensions,
        # its error message.
        if not shape[-1] or len(shape) > _MAX_RANK:
            raise _NeedsReferenceError
        probe = probe[0]
    try:
        flat = np.frombuffer(value.as_buffer(of_type="d"), np.float64)
    except (TypeError, ValueError):  # booleans, strings, objects, nulls among the numbers
        raise _NeedsReferenceError from None
    # as_buffer flattens any nesting; the skeleton comparison proves the nesting rectangular,
    # and a leaf count equal to the shape's product proves no inner array is empty.
    if flat.size != int(np.prod(shape)):
        raise _NeedsReferenceError
    return flat.reshape(shape), _skeleton(tuple(shape))


def _fast_parse(raw: bytes) -> FastBody:
    """The fast decoder: simdjson's numeric buffers, taken only when the body's structure
    proves them the arrays the reference decoder would build; _NeedsReferenceError otherwise."""
    if raw.startswith(_UTF8_BOM):  # simdjson skips a BOM, orjson refuses it
        raise _NeedsReferenceError
    try:
        document = _parser(len(raw)).parse(raw)
    except (ValueError, RuntimeError):
        raise _NeedsReferenceError from None
    try:
        signature_name, row_format, data = _fast_header(document)
        arrays, skeletons = _fast_arrays(data, row_format)
        del data
    finally:
        del document  # the parser can take the next document only once this one is dropped
    # Members are separated by commas outside any array; strings hold none of "[],".
    # At most two members (one of them a string), so at most one comma outside the arrays.
    if raw.translate(None, _NOT_STRUCTURE).strip(b",") != b",".join(skeletons):
        raise _NeedsReferenceError
    return FastBody(signature_name, row_format, arrays)


def _fast_header(document: Any) -> tuple[str, bool, Any]:
    """The body's ``signature_name``, whether it is in the row format, and its ``instances``
    or ``inputs``."""
    if not isinstance(document, simdjson.Object):
        raise _NeedsReferenceError
    keys = list(document.keys())
    # Duplicate keys: orjson keeps the last, simdjson finds the first.
    if len(set(keys)) != len(keys) or not set(keys) <= _FAST_KEYS:
        raise _NeedsReferenceError
    if ("instances" in keys) == ("inputs" in keys):
        raise _NeedsReferenceError
    signature_name = ""
    if "signature_name" in keys:
        name = document["signature_name"]
        # Brackets or commas in the string would upset the skeleton comparison.
        if not isinstance(name, str) or not _STRUCTURE.isdisjoint(name):
            raise _NeedsReferenceError
        signature_name = name
    row_format = "instances" in keys
    return signature_name, row_format, document["instances" if row_format else "inputs"]


def _fast_arrays(data: Any, row_format: bool) -> tuple[dict[str | None, np.ndarray], list[bytes]]:
    """The arrays of ``instances`` or ``inputs`` (keyed by input name, None: unnamed) and the
    skeleton each implies, in the body's order."""
    arrays: dict[str | None, np.ndarray] = {}
    skeletons: list[bytes] = []
    if isinstance(data, simdjson.Object):
        if row_format:
            raise _NeedsReferenceError
        names = list(data.keys())
        if len(set(names)) != len(names) or not all(_STRUCTURE.isdisjoint(n) for n in names):
            raise _NeedsReferenceError
        for input_name in names:
            array, skeleton = _numeric_array(data[input_name])
            arrays[input_name] = array
            skeletons.append(skeleton)
    else:
        array, skeleton = _numeric_array(data)
        arrays[None] = array
        skeletons.append(skeleton)
    return arrays, skeletons


@dataclass
class FastBody:
    """A body the fast decoder took: float64 arrays keyed by input name (None: unnamed)."""

    signature_name: str
    row_format: bool
    arrays: dict[str | None, np.ndarray] = field(default_factory=dict)


def _fast_cast(array: np.ndarray, spec: TensorSpec) -> np.ndarray:
    if spec.dtype.kind != "f":
        raise _NeedsReferenceError
    limit = min(_EXACT_LIMIT, float(np.finfo(spec.dtype).max))
    # Larger values: outside the dtype's range (the reference path words the 400), or integers
    # whose rounding only the reference path reproduces exactly.
    if float(np.abs(array).max()) > limit:
        raise _NeedsReferenceError
    return array.astype(spec.dtype)


class PredictBody:
    """A decoded ``:predict`` body: ``signature_name`` now, the inputs once the signature is
    known (``inputs``)."""

    def __init__(self, raw: bytes, fast: FastBody | None) -> None:
        self._raw = raw
        self._fast = fast
        self._parsed: Any = None
        if self._fast is None:
            self._parsed = parse_json(raw)
            self.signature_name = _signature_name(self._parsed)
        else:
            self.signature_name = self._fast.signature_name

    @property
    def fast(self) -> bool:
        """Whether the fast decoder took this body (for tests and benchmarks)."""
        return self._fast is not None

    def inputs(self, signature: Signature) -> tuple[dict[str, np.ndarray], bool]:
        """The inputs for ``signature`` and whether the body was in the row format; the same
        arrays and the same 400s as :func:`request_inputs` on the orjson-parsed body."""
        if self._fast is not None:
            try:
                return self._fast_inputs(self._fast, signature), self._fast.row_format
            except _NeedsReferenceError:
                pass
        if self._parsed is None:
            self._parsed = parse_json(self._raw)
        return request_inputs(self._parsed, signature)

    @staticmethod
    def _fast_inputs(body: FastBody, signature: Signature) -> dict[str, np.ndarray]:
        specs = signature.inputs
        if None in body.arrays:
            if len(specs) != 1:
                raise _NeedsReferenceError
            (name,) = specs
            return {name: _fast_cast(body.arrays[None], specs[name])}
        if set(body.arrays) != set(specs):
            raise _NeedsReferenceError
        return {n: _fast_cast(body.arrays[n], specs[n]) for n in specs}


def _try_fast(raw: bytes) -> FastBody | None:
    try:
        return _fast_parse(raw)
    except _NeedsReferenceError:
        return None


def decode_predict(raw: bytes) -> PredictBody:
    """Parse a ``:predict`` body; 400 for malformed JSON or a non-string ``signature_name``."""
    return PredictBody(raw, _try_fast(raw))


def decode_predict_fast(raw: bytes) -> PredictBody | None:
    """The body when the fast decoder takes it (milliseconds even for megabytes), else None:
    then :func:`decode_predict_reference`, which may take a hundred milliseconds."""
    fast = _try_fast(raw)
    return None if fast is None else PredictBody(raw, fast)


def decode_predict_reference(raw: bytes) -> PredictBody:
    """:func:`decode_predict` without trying the fast decoder (it already declined)."""
    return PredictBody(raw, None)


# --- the answer ------------------------------------------------------------------------------


def _numpy_default(value: Any) -> Any:
    # Arrays orjson cannot write natively (non-contiguous, object or string dtypes).
    if isinstance(value, np.ndarray | np.generic):
        return value.tolist()
    raise TypeError


def encode_json(body: Any) -> bytes:
    """JSON bytes; numpy arrays and scalars are written by orjson directly (float32 values in
    their shortest float32 form, as TF Serving writes them)."""
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY, default=_numpy_default)


def response_body(outputs: Mapping[str, np.ndarray], row_format: bool) -> dict[str, Any]:
    """TF Serving's answer: ``predictions`` (rows) or ``outputs`` (columns), ready for
    :func:`encode_json`."""
    if not row_format:
        if len(outputs) == 1:
            return {"outputs": next(iter(outputs.values()))}
        return {"outputs": dict(outputs)}
    if len(outputs) == 1:
        return {"predictions": next(iter(outputs.values()))}
    # Float rows stay numpy slices and scalars, which orjson writes as the single-output and
    # columnar answers are written (float32 in its shortest form; .tolist() would widen it to
    # float64 digits, 0.1 -> 0.10000000149011612). Other kinds print the same through Python
    # values, and orjson has no native path for some numpy scalars (ONNX Runtime's int64
    # outputs are numpy.longlong).
    names = list(outputs)
    columns = [
        list(np.ascontiguousarray(v)) if v.dtype.kind == "f" else v.tolist()
        for v in outputs.values()
    ]
    # The outer zip checks the lengths once; strict=True on every row's zip (a keyword call)
    # cost ~60 µs more for 256 rows.
    rows = zip(*columns, strict=True)
    return {"predictions": [dict(zip(names, row)) for row in rows]}  # noqa: B905 - same length


def encode_response(outputs: Mapping[str, np.ndarray], row_format: bool) -> bytes:
    """The JSON bytes of :func:`response_body`."""
    return encode_json(response_body(outputs, row_format))


__all__ = [
    "PredictBody",
    "decode_predict",
    "decode_predict_fast",
    "decode_predict_reference",
    "encode_json",
    "encode_response",
    "parse_json",
    "request_inputs",
    "response_body",
]
