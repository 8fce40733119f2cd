"""Replay of ``assets.extra/tf_serving_warmup_requests`` (a TFRecord of ``PredictionLog``).

TFRecord framing: uint64 length, uint32 masked CRC of the length, data, uint32 masked CRC of the
data (little-endian). Read here without TensorFlow so every runtime can warm up. Record sizes are
bounded and each record must parse as a ``PredictionLog``; anything else stops the warm-up.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path

from contract.protos import ensure_light

ensure_light()
from tensorflow_serving.apis import prediction_log_pb2  # noqa: E402

MAX_RECORD_BYTES = 64 * 1024 * 1024
MAX_RECORDS = 1000  # TF Serving's own limit on warm-up records


class WarmupError(ValueError):
    """The warm-up file is malformed."""


def read_prediction_logs(path: Path) -> Iterator[prediction_log_pb2.PredictionLog]:
    """Yield the ``PredictionLog`` records of a warm-up TFRecord file."""
    with path.open("rb") as handle:
        for index in range(MAX_RECORDS + 1):
            header = handle.read(12)
            if not header:
                return
            if index == MAX_RECORDS:
                raise WarmupError(f"{path}: more than {MAX_RECORDS} warm-up records")
            if len(header) != 12:
                raise WarmupError(f"{path}: truncated record header at record {index}")
            (length,) = struct.unpack("<Q", header[:8])
            if length > MAX_RECORD_BYTES:
                raise WarmupError(f"{path}: record {index} claims {length} bytes")
            data = handle.read(length)
            footer = handle.read(4)
            if len(data) != length or len(footer) != 4:
                raise WarmupError(f"{path}: truncated record {index}")
            log = prediction_log_pb2.PredictionLog()
            try:
                log.ParseFromString(data)
            except Exception as exc:
                raise WarmupError(f"{path}: record {index} is not a PredictionLog") from exc
            yield log
