"""Coverage-guided fuzzing (atheris, libFuzzer) of the ``TensorProto`` decoder
``serving.transport.tensor_codec.to_numpy``: the one function that turns a client's tensor bytes
into an array, run on every gRPC request.

Each input is either a serialized ``TensorProto`` (parsed by protobuf, then decoded) or, half of
the time, a tensor built field by field from the input bytes (dtype, dimensions including
negative and huge ones, ``tensor_content``, typed values), which reaches the decoder's checks far
more often than random bytes that happen to parse. The decoder may answer only with an array or a
``ServingError`` (INVALID_ARGUMENT); anything else is a crash, which libFuzzer reports with the
input that caused it. Used by ``python -m fuzz`` (``make fuzz``); by hand::

    python -m fuzz.atheris_codec -runs=200000          # libFuzzer flags
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    import numpy as np
    from google.protobuf.message import DecodeError

    from contract.protos import tensor_pb2, types_pb2
    from serving.errors import ServingError
    from serving.transport.tensor_codec import to_numpy

MAX_BYTES = 1 << 20
_TYPED_FIELDS = sorted(
    name for name in tensor_pb2.TensorProto.DESCRIPTOR.fields_by_name if name.endswith("_val")
)
_DTYPES = sorted(types_pb2.DataType.values())
_SPECIAL_DIMS = [0, 1, 2, 28, -1, 2**31, 2**40, 2**62, 2**63 - 1, -(2**63)]


def _structured(fdp: atheris.FuzzedDataProvider) -> tensor_pb2.TensorProto:
    tensor = tensor_pb2.TensorProto()
    if fdp.ConsumeBool():
        tensor.dtype = fdp.PickValueInList(_DTYPES)
    else:
        tensor.dtype = fdp.ConsumeIntInRange(-(2**31), 2**31 - 1)
    for _ in range(fdp.ConsumeIntInRange(0, 6)):
        if fdp.ConsumeBool():
            size = fdp.PickValueInList(_SPECIAL_DIMS)
        else:
            size = fdp.ConsumeIntInRange(-(2**63), 2**63 - 1)
        tensor.tensor_shape.dim.add(size=size)
    tensor.tensor_shape.unknown_rank = fdp.ConsumeIntInRange(0, 15) == 0
    if fdp.ConsumeBool():
        tensor.tensor_content = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 4096))
    for _ in range(fdp.ConsumeIntInRange(0, 2)):
        name = fdp.PickValueInList(_TYPED_FIELDS)
        field = getattr(tensor, name)
        count = fdp.ConsumeIntInRange(0, 64)
        try:
            if name in ("float_val", "double_val", "scomplex_val", "dcomplex_val"):
                field.extend(fdp.ConsumeRegularFloat() for _ in range(count))
            elif name == "bool_val":
                field.extend(fdp.ConsumeBool() for _ in range(count))
            elif name in ("string_val",):
                field.extend(fdp.ConsumeBytes(8) for _ in range(count))
            elif name in ("uint32_val", "uint64_val"):
                bits = 32 if name == "uint32_val" else 64
                field.extend(fdp.ConsumeIntInRange(0, 2**bits - 1) for _ in range(count))
            elif name in ("int64_val",):
                field.extend(fdp.ConsumeIntInRange(-(2**63), 2**63 - 1) for _ in range(count))
            elif name in ("int_val", "half_val"):
                field.extend(fdp.ConsumeIntInRange(-(2**31), 2**31 - 1) for _ in range(count))
        except (TypeError, ValueError, AttributeError):
            pass  # a message-typed repeated field (resource handles, variants): left empty
    return tensor


def test_one_input(data: bytes) -> None:
    """libFuzzer's entry point: decode one generated tensor."""
    fdp = atheris.FuzzedDataProvider(data)
    if fdp.ConsumeBool():
        try:
            tensor = tensor_pb2.TensorProto.FromString(fdp.ConsumeBytes(len(data)))
        except DecodeError:
            return
    else:
        tensor = _structured(fdp)
    try:
        array = to_numpy(tensor, "x", MAX_BYTES)
    except ServingError:
        return
    assert isinstance(array, np.ndarray)
    assert array.nbytes <= MAX_BYTES, (array.shape, array.dtype)
    assert list(array.shape) == [d.size for d in tensor.tensor_shape.dim]


def main(argv: list[str] | None = None) -> None:
    """Run libFuzzer with ``argv`` (e.g. ``-runs=100000``, ``-max_total_time=60``)."""
    atheris.Setup([sys.argv[0], *(sys.argv[1:] if argv is None else argv)], test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
