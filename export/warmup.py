"""``assets.extra/tf_serving_warmup_requests``: a TFRecord of ``PredictionLog`` Predict requests.

``tensorflow_model_server`` replays these before marking a version AVAILABLE; our server does too
(``--enable_model_warmup``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

from contract import INPUT_NAME, SIGNATURE_NAME

WARMUP_BATCH_SIZES = (1, 8, 32)


def warmup_requests(model_name: str, images: np.ndarray) -> list[prediction_log_pb2.PredictionLog]:
    """One Predict request per batch size in ``WARMUP_BATCH_SIZES``, built from real images."""
    logs = []
    for batch_size in WARMUP_BATCH_SIZES:
        request = predict_pb2.PredictRequest(
            model_spec=model_pb2.ModelSpec(name=model_name, signature_name=SIGNATURE_NAME)
        )
        batch = np.resize(images, (batch_size, 28, 28, 1)).astype(np.float32)
        request.inputs[INPUT_NAME].CopyFrom(tf.make_tensor_proto(batch))
        logs.append(
            prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request)
            )
        )
    return logs


def write_warmup_file(path: Path, model_name: str, images: np.ndarray) -> None:
    """Write the warm-up TFRecord at ``path`` (normally ``<version>/assets.extra/...``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for log in warmup_requests(model_name, images):
            writer.write(log.SerializeToString())


def read_warmup_file(path: Path) -> list[prediction_log_pb2.PredictionLog]:
    """Parse a warm-up TFRecord back into ``PredictionLog`` messages."""
    logs = []
    for record in tf.data.TFRecordDataset(str(path)):
        log = prediction_log_pb2.PredictionLog()
        log.ParseFromString(record.numpy())
        logs.append(log)
    return logs
