"""The two Predict clients a Locust user drives: gRPC ``PredictionService/Predict`` and REST
``POST /v1/models/<model>:predict``, each with its request prepared outside the timed call."""

from __future__ import annotations

from typing import Any

import grpc
import numpy as np
from geventhttpclient import HTTPClient

from loadtest.record import payload
from serving.client import RECONNECT_OPTIONS

REST_BODY_CACHE_BYTES = 64 * 1024 * 1024  # encoded JSON bodies kept per process


class GrpcPredictClient:
    """``PredictionService/Predict`` over one gRPC channel (gevent-cooperative once the
    locustfile has called ``grpc.experimental.gevent.init_gevent``)."""

    def __init__(self, target: str, model: str, timeout_s: float) -> None:
        from contract.protos import prediction_service_pb2_grpc

        self.model = model
        self.timeout_s = timeout_s
        unlimited = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
        # The typed client's reconnect back-off: back within ~1 s of a restart or a network cut
        # (docs/reliability.md, Faults in the deployment).
        self.channel = grpc.insecure_channel(target, options=[*unlimited, *RECONNECT_OPTIONS])
        self.stub = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self._prepared: Any = None

    def prepare(self, images: np.ndarray, batch_index: int) -> None:
        """Build the request outside the timed section (a real client has its tensor ready)."""
        self._prepared = payload.predict_request(self.model, images)

    def call(self) -> tuple[np.ndarray, int]:
        """Send the prepared request; (predicted classes, response size in bytes)."""
        response = self.stub.Predict(self._prepared, timeout=self.timeout_s)
        return payload.classes_from_predict_response(response), response.ByteSize()

    def close(self) -> None:
        """Close the channel."""
        self.channel.close()


class RestError(RuntimeError):
    """A REST answer with a non-200 status."""


class BodyCache:
    """Encoded REST bodies by (batch size, batch index), up to a byte budget per process."""

    def __init__(self, budget_bytes: int) -> None:
        self.budget = budget_bytes
        self.used = 0
        self.bodies: dict[tuple[int, int], bytes] = {}

    def get(self, ring: payload.ImageRing, batch_index: int, images: np.ndarray) -> bytes:
        """The body of batch ``batch_index`` of ``ring`` (encoded now if not kept)."""
        key = (ring.batch_size, batch_index % ring.period)
        body = self.bodies.get(key)
        if body is None:
            body = payload.rest_body(images)
            if self.used + len(body) <= self.budget:
                self.bodies[key] = body
                self.used += len(body)
        return body


class RestPredictClient:
    """``POST /v1/models/<model>:predict`` with TF Serving's row format, on a kept-alive socket."""

    # One cache for all users of the process: the budget is per process, and users of the same
    # batch size send the same bodies.
    bodies = BodyCache(REST_BODY_CACHE_BYTES)

    def __init__(self, base_url: str, model: str, timeout_s: float, ring: payload.ImageRing):
        self.client = HTTPClient.from_url(
            base_url,
            concurrency=1,
            connection_timeout=timeout_s,
            network_timeout=timeout_s,
            headers={"Content-Type": "application/json"},
        )
        self.path = payload.rest_path(model)
        self.ring = ring
        self._prepared = b""

    def prepare(self, images: np.ndarray, batch_index: int) -> None:
        """Encode (or fetch the cached) JSON body outside the timed section."""
        self._prepared = self.bodies.get(self.ring, batch_index, images)

    def call(self) -> tuple[np.ndarray, int]:
        """Send the prepared body; (predicted classes, response size in bytes)."""
        response = self.client.post(self.path, body=self._prepared)
        body = response.read()
        if response.status_code != 200:
            raise RestError(f"HTTP {response.status_code}: {body[:300]!r}")
        return payload.classes_from_rest_response(body), len(body)

    def close(self) -> None:
        """Close the connection pool."""
        self.client.close()
