"""A small typed client for the TF Serving APIs (gRPC and REST), used by people, tests and the
load tests. It speaks to our server and to ``tensorflow_model_server`` alike."""

from __future__ import annotations

import http.client
import json
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any, Literal

import grpc
import numpy as np

from contract import INPUT_NAME, OUTPUT_CLASSES, OUTPUT_PROBABILITIES, SIGNATURE_NAME
from contract.protos import (
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    types_pb2,
)

Protocol = Literal["grpc", "rest"]

# How a channel gets back to a server that restarted, froze or was cut off the network
# (docs/reliability.md, "Faults in the deployment", where tests/test_containers_faults.py measures
# them). gRPC's defaults retry a refused connection after 1 s, growing 1.6x to 120 s, and give a
# connection attempt 20 s: after a 10 s restart a channel could wait tens of seconds more. Here it
# retries 0.1 s after the first failure, growing to at most 1 s, so it is back within about 1 s of
# the server listening; an attempt still gets 1 s (the TCP and HTTP/2 handshakes). Keepalive pings
# while calls are outstanding (never on an idle connection: the server's default ping policy
# answers those with GOAWAY) find a connection whose peer vanished without a reset (a network cut)
# in 10 s + 5 s instead of TCP's minutes, and the channel connects afresh.
RECONNECT_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 1000),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
)


class ClientError(RuntimeError):
    """A request failed; ``code`` is the gRPC status name or the HTTP status."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Prediction:
    """The answer for a batch of images."""

    classes: np.ndarray  # int64 [N]
    probabilities: np.ndarray  # float32 [N, 10]
    model: str
    version: int | None
    latency_s: float


def predict_request(
    model: str,
    images: np.ndarray,
    *,
    version: int | None = None,
    label: str | None = None,
    signature_name: str = SIGNATURE_NAME,
) -> predict_pb2.PredictRequest:
    """A ``PredictRequest`` carrying ``images`` (float32 [N,28,28,1]) as ``tensor_content``."""
    images = np.ascontiguousarray(images, dtype=np.float32)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature_name
    if version is not None:
        request.model_spec.version.value = version
    elif label is not None:
        request.model_spec.version_label = label
    tensor = request.inputs[INPUT_NAME]
    tensor.dtype = types_pb2.DT_FLOAT
    for size in images.shape:
        tensor.tensor_shape.dim.add(size=size)
    tensor.tensor_content = images.tobytes()
    return request


def _tensor_values(tensor: Any, dtype: type) -> np.ndarray:
    shape = [d.size for d in tensor.tensor_shape.dim]
    if tensor.tensor_content:
        return np.frombuffer(tensor.tensor_content, dtype=dtype).reshape(shape)
    field = tensor.float_val if dtype is np.float32 else tensor.int64_val
    return np.asarray(field, dtype=dtype).reshape(shape)


class ServingClient:
    """Predict, status and metadata over gRPC (default) or REST."""

    def __init__(
        self,
        target: str,
        protocol: Protocol = "grpc",
        *,
        timeout_s: float = 10.0,
        root_certificates: bytes | None = None,
    ) -> None:
        self.target = target
        self.protocol = protocol
        self.timeout_s = timeout_s
        self._channel: grpc.Channel | None = None
        self._http: http.client.HTTPConnection | None = None
        if protocol == "grpc":
            if root_certificates is not None:
                creds = grpc.ssl_channel_credentials(root_certificates=root_certificates)
                self._channel = grpc.secure_channel(target, creds, options=RECONNECT_OPTIONS)
            else:
                self._channel = grpc.insecure_channel(target, options=RECONNECT_OPTIONS)
            self._predict_stub = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
            self._model_stub = model_service_pb2_grpc.ModelServiceStub(self._channel)
        elif protocol != "rest":
            raise ValueError(f"protocol must be grpc or rest, not {protocol!r}")

    def close(self) -> None:
        """Close the connection."""
        if self._channel is not None:
            self._channel.close()
        if self._http is not None:
            self._http.close()

    def __enter__(self) -> ServingClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- REST plumbing ------------------------------------------------------------------
    def _rest(self, method: str, path: str, body: Any = None) -> Any:
        payload = None if body is None else json.dumps(body).encode()
        for attempt in range(2):  # one retry on a keep-alive connection the server closed
            if self._http is None:
                parsed = urllib.parse.urlsplit(f"http://{self.target}")
                self._http = http.client.HTTPConnection(
                    parsed.hostname or "localhost", parsed.port or 8501, timeout=self.timeout_s
                )
            try:
                self._http.request(
                    method, path, body=payload, headers={"Content-Type": "application/json"}
                )
                response = self._http.getresponse()
                data = response.read()
                break
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self._http.close()
                self._http = None
                if attempt:
                    raise
            except (OSError, http.client.HTTPException):
                # A timeout (a frozen server) leaves the connection mid-request, where every later
                # request raised CannotSendRequest: drop it so the next call connects afresh.
                self._http.close()
                self._http = None
                raise
        try:
            decoded = json.loads(data) if data else {}
        except ValueError:
            decoded = {"error": data.decode(errors="replace")}
        if response.status != 200:
            raise ClientError(str(response.status), str(decoded.get("error", decoded)))
        return decoded

    @staticmethod
    def _model_path(model: str, version: int | None, label: str | None) -> str:
        path = f"/v1/models/{urllib.parse.quote(model, safe='')}"
        if version is not None:
            path += f"/versions/{version}"
        elif label is not None:
            path += f"/labels/{urllib.parse.quote(label, safe='')}"
        return path

    # ---- API ----------------------------------------------------------------------------
    def predict(
        self,
        model: str,
        images: np.ndarray,
        *,
        version: int | None = None,
        label: str | None = None,
    ) -> Prediction:
        """Classify ``images`` (float32 [N,28,28,1] in [0,1])."""
        start = time.perf_counter()
        if self.protocol == "grpc":
            request = predict_request(model, images, version=version, label=label)
            try:
                response = self._predict_stub.Predict(request, timeout=self.timeout_s)
            except grpc.RpcError as exc:
                raise ClientError(exc.code().name, exc.details() or "") from exc
            latency = time.perf_counter() - start
            return Prediction(
                classes=_tensor_values(response.outputs[OUTPUT_CLASSES], np.int64),
                probabilities=_tensor_values(response.outputs[OUTPUT_PROBABILITIES], np.float32),
                model=response.model_spec.name,
                version=response.model_spec.version.value,
                latency_s=latency,
            )
        body = {"signature_name": SIGNATURE_NAME, "instances": np.asarray(images).tolist()}
        reply = self._rest("POST", self._model_path(model, version, label) + ":predict", body)
        latency = time.perf_counter() - start
        rows = reply["predictions"]
        return Prediction(
            classes=np.asarray([r[OUTPUT_CLASSES] for r in rows], dtype=np.int64),
            probabilities=np.asarray(
                [r[OUTPUT_PROBABILITIES] for r in rows], dtype=np.float32
            ).reshape(len(rows), -1),
            model=model,
            version=version,
            latency_s=latency,
        )

    def status(self, model: str, version: int | None = None) -> list[dict[str, Any]]:
        """``[{"version": 1, "state": "AVAILABLE", "error": ""}, ...]``."""
        if self.protocol == "grpc":
            request = get_model_status_pb2.GetModelStatusRequest()
            request.model_spec.name = model
            if version is not None:
                request.model_spec.version.value = version
            try:
                response = self._model_stub.GetModelStatus(request, timeout=self.timeout_s)
            except grpc.RpcError as exc:
                raise ClientError(exc.code().name, exc.details() or "") from exc
            return [
                {
                    "version": s.version,
                    "state": get_model_status_pb2.ModelVersionStatus.State.Name(s.state),
                    "error": s.status.error_message,
                }
                for s in response.model_version_status
            ]
        reply = self._rest("GET", self._model_path(model, version, None))
        return [
            {
                "version": int(s["version"]),
                "state": s["state"],
                "error": s.get("status", {}).get("error_message", ""),
            }
            for s in reply["model_version_status"]
        ]
