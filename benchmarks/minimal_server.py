"""The yardstick for serving overhead: the least a Python grpc.aio server must do to answer a
TF Serving ``Predict`` for one model (decode ``tensor_content``, run ONNX Runtime inline, encode
``float_val``/``int64_val``), with none of the model server's checks, metrics or features.

    python -m benchmarks.minimal_server MODEL_ONNX PORT [--noop] [--sync | --uvloop]

``--noop`` answers an empty ``PredictResponse`` without running the model: the floor of the
transport itself. ``--sync`` uses grpcio's thread-pool server instead of grpc.aio (the other
server design Python gRPC offers).
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable
from concurrent import futures
from typing import Any

import grpc
import numpy as np
import onnxruntime as ort

from contract.protos import predict_pb2


def _predictor(model_path: str, noop: bool) -> Callable[..., predict_pb2.PredictResponse]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model_path, options, providers=["CPUExecutionProvider"])
    if noop:
        return lambda request, context: predict_pb2.PredictResponse()
    return predictor_for(session)


def predictor_for(session: Any) -> Callable[..., predict_pb2.PredictResponse]:
    """The minimal Predict around ``session`` (anything with ONNX Runtime's ``run``):
    ``predict(request, context) -> response`` (benchmarks.handler_cost stubs the session)."""

    def predict(request: predict_pb2.PredictRequest, context: Any) -> predict_pb2.PredictResponse:
        response = predict_pb2.PredictResponse()
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

    return predict


def _handler(predict: Callable[..., Any]) -> grpc.GenericRpcHandler:
    return grpc.method_handlers_generic_handler(
        "tensorflow.serving.PredictionService",
        {
            "Predict": grpc.unary_unary_rpc_method_handler(
                predict,
                request_deserializer=predict_pb2.PredictRequest.FromString,
                response_serializer=predict_pb2.PredictResponse.SerializeToString,
            )
        },
    )


async def serve(model_path: str, port: int, noop: bool) -> None:
    """Serve with grpc.aio until killed (the model runs inline on the event loop)."""
    predict = _predictor(model_path, noop)

    async def predict_async(
        request: predict_pb2.PredictRequest, context: grpc.aio.ServicerContext
    ) -> predict_pb2.PredictResponse:
        return predict(request, context)

    server = grpc.aio.server()
    server.add_generic_rpc_handlers((_handler(predict_async),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


def serve_sync(model_path: str, port: int, noop: bool) -> None:
    """Serve with grpcio's thread-pool server until killed."""
    server = grpc.server(futures.ThreadPoolExecutor(4))
    server.add_generic_rpc_handlers((_handler(_predictor(model_path, noop)),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    server.wait_for_termination()


def main() -> None:
    """Command line."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.minimal_server")
    parser.add_argument("model")
    parser.add_argument("port", type=int)
    parser.add_argument("--noop", action="store_true")
    parser.add_argument("--sync", action="store_true")
    parser.add_argument("--uvloop", action="store_true", help="run grpc.aio on uvloop")
    args = parser.parse_args()
    if args.sync:
        serve_sync(args.model, args.port, args.noop)
    elif args.uvloop:
        import uvloop

        uvloop.run(serve(args.model, args.port, args.noop))
    else:
        asyncio.run(serve(args.model, args.port, args.noop))


if __name__ == "__main__":
    main()
