"""A model server speaking the TensorFlow Serving gRPC and REST APIs.

Layers: ``transport`` (gRPC and REST adapters: proto/JSON conversion only), ``model`` (repository,
versions, batching), ``runtimes`` (TensorFlow, ONNX Runtime, PyTorch behind one interface).
"""
