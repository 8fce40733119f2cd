"""Memory a request costs while it is decoded and run, per byte of its body: the factors
``serving/model/admission.py`` charges (issue #22, item 4).

    python -m benchmarks.admission_expansion [--images 4096]

Each case decodes a body the way the server does (REST: the JSON read whole, then the fast
simdjson decoder or the reference orjson one; gRPC: the message bytes copied out of gRPC core,
parsed, converted to numpy) in a fresh process and reports the peak of that process's resident
memory above its baseline (VmHWM - VmRSS before), divided by the body's size. Resident memory,
not tracemalloc: simdjson's and protobuf's C buffers are not traced.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
from typing import Any

import numpy as np


def _vm(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def _reset_peak() -> None:
    # Linux >= 4.0: writing 5 to clear_refs resets VmHWM to the current RSS.
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")


def _bodies(images: int) -> dict[str, bytes]:
    from contract.protos import predict_pb2, tensor_pb2, types_pb2

    rng = np.random.default_rng(0)
    x = rng.random((images, 28, 28, 1), dtype=np.float32)
    # The row format as Locust and the README send it: 8-digit decimals.
    rows = json.dumps({"instances": np.round(x, 8).tolist()}).encode()
    # The worst body per byte: one-digit integers in nested lists ("0," is 2 bytes per value);
    # the fast decoder takes it, so the same numbers with a bool-free twist go the reference way.
    digits = json.dumps({"instances": (x > 0.5).astype(int).tolist()}).encode()
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "standard"
    tensor: Any = request.inputs["images"]
    tensor.dtype = types_pb2.DT_FLOAT
    for size in x.shape:
        tensor.tensor_shape.dim.add().size = size
    tensor.tensor_content = x.tobytes()
    content = request.SerializeToString()
    listed = predict_pb2.PredictRequest()
    listed.model_spec.name = "standard"
    t2: tensor_pb2.TensorProto = listed.inputs["images"]
    t2.CopyFrom(tensor)
    t2.ClearField("tensor_content")
    t2.float_val.extend(x.reshape(-1).tolist())
    return {
        "rest_rows_fast": rows,
        "rest_digits_fast": digits,
        "rest_rows_reference": rows,
        "rest_digits_reference": digits,
        "grpc_tensor_content": content,
        "grpc_float_val": listed.SerializeToString(),
    }


def _case(name: str, body: bytes, queue: Any) -> None:
    from serving.runtimes import Signature, TensorSpec
    from serving.transport import rest_json

    signature = Signature(
        "serving_default",
        {"images": TensorSpec("images", np.dtype(np.float32), (-1, 28, 28, 1))},
        {},
        "tensorflow/serving/predict",
    )
    before = _vm("VmRSS")
    _reset_peak()
    if name.startswith("rest"):
        raw = bytes(body)  # the body as aiohttp hands it over
        reference = "reference" in name
        decode = rest_json.decode_predict_reference if reference else rest_json.decode_predict
        inputs, _ = decode(raw).inputs(signature)
    else:
        from contract.protos import predict_pb2
        from serving.transport.tensor_codec import to_numpy

        raw = bytes(body)  # gRPC's copy out of its byte buffer
        request = predict_pb2.PredictRequest.FromString(raw)
        inputs = {k: to_numpy(request.inputs[k], k, 1 << 40) for k in request.inputs}
    peak = _vm("VmHWM") - before
    queue.put((name, len(body), peak, sum(a.nbytes for a in inputs.values())))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4096)
    args = parser.parse_args()
    context = mp.get_context("spawn")
    rows = []
    for name, body in _bodies(args.images).items():
        queue = context.Queue()
        process = context.Process(target=_case, args=(name, body, queue))
        process.start()
        rows.append(queue.get(timeout=300))
        process.join()
    print(
        json.dumps(
            [
                {
                    "case": n,
                    "body_bytes": b,
                    "peak_bytes": p,
                    "arrays_bytes": a,
                    "factor": round(p / b, 2),
                }
                for n, b, p, a in rows
            ],
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
