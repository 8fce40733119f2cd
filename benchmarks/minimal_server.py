"""The yardstick for serving overhead: the least a Python grpc.aio server must do to answer a
TF Serving ``Predict`` for one model (decode ``tensor_content``, run ONNX Runtime inline, encode
``float_val``/``int64_val``), with none of the model server's checks, metrics or features.

    python -m benchmarks.minimal_server MODEL_ONNX PORT [--noop]

``--noop`` answers an empty ``PredictResponse`` without running the model: the floor of the
transport itself.
"""

from __future__ import annotations

import argparse
import asyncio

import grpc
import numpy as np
import onnxruntime as ort

from contract.protos import predict_pb2


async def serve(model_path: str, port: int, noop: bool) -> None:
    """Serve until killed."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model_path, options, providers=["CPUExecutionProvider"])

    async def predict(
        request: predict_pb2.PredictRequest, context: grpc.aio.ServicerContext
    ) -> predict_pb2.PredictResponse:
        response = predict_pb2.PredictResponse()
        if noop:
            return response
        tensor = request.inputs["images"]
        images = np.frombuffer(tensor.tensor_content, np.float32).reshape(
            [d.size for d in tensor.tensor_shape.dim]
        )
        probabilities, classes = session.run(["probabilities", "classes"], {"images": images})
        for name, array, field in (
            ("probabilities", probabilities, "float_val"),
            ("classes", classes, "int64_val"),
        ):
            out = response.outputs[name]
            out.dtype = 1 if field == "float_val" else 9
            for size in array.shape:
                out.tensor_shape.dim.add(size=size)
            getattr(out, field).extend(array.ravel().tolist())
        return response

    server = grpc.aio.server()
    handler = grpc.method_handlers_generic_handler(
        "tensorflow.serving.PredictionService",
        {
            "Predict": grpc.unary_unary_rpc_method_handler(
                predict,
                request_deserializer=predict_pb2.PredictRequest.FromString,
                response_serializer=predict_pb2.PredictResponse.SerializeToString,
            )
        },
    )
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


def main() -> None:
    """Command line."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.minimal_server")
    parser.add_argument("model")
    parser.add_argument("port", type=int)
    parser.add_argument("--noop", action="store_true")
    args = parser.parse_args()
    asyncio.run(serve(args.model, args.port, args.noop))


if __name__ == "__main__":
    main()
