"""The public contract shared by training, export, serving and load tests.

Kept free of heavy imports (no TensorFlow) so the ONNX-only server and the load generator can
use it.
"""

from __future__ import annotations

from contract.runtimes import RUNTIMES as RUNTIMES

MODEL_NAMES: tuple[str, ...] = ("standard", "separable")
# The two Predict APIs every server here speaks (TF Serving's gRPC and REST).
PROTOCOLS: tuple[str, ...] = ("grpc", "rest")
SIGNATURE_NAME = "serving_default"
INPUT_NAME = "images"
INPUT_SHAPE: tuple[int, ...] = (28, 28, 1)
OUTPUT_PROBABILITIES = "probabilities"
OUTPUT_CLASSES = "classes"
NUM_CLASSES = 10

# Repository layout:
# models/<name>/<version>/{saved_model.pb, variables/, assets.extra/, model.onnx, model.tflite}
ONNX_FILENAME = "model.onnx"
TFLITE_FILENAME = "model.tflite"
SAVED_MODEL_FILENAME = "saved_model.pb"
WARMUP_RELATIVE_PATH = "assets.extra/tf_serving_warmup_requests"
TRITON_CONFIG_FILENAME = "config.pbtxt"
MODELS_CONFIG_FILENAME = "models.config"
EXPORT_REPORT_FILENAME = "export_report.json"
