"""Request limits a client cannot get around: the request deadline (the server's own and the
client's) and the number of concurrent HTTP/2 streams per connection. Oversize requests
(``--max_request_bytes``: RESOURCE_EXHAUSTED / 413 before the body is read) are covered in
tests/test_serving_bad_input.py.

One batching server whose batches wait 2 s for company: a lone small request outlives the
1 s ``--request_timeout_seconds``, while a full batch (64 rows) runs at once.
"""

from __future__ import annotations

import http.client
import json
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest

from contract.protos import prediction_service_pb2_grpc
from harness import ServerProcess
from serving.client import predict_request

FULL = np.zeros((64, 28, 28, 1), np.float32)
LONE = np.zeros((1, 28, 28, 1), np.float32)
SERVER_TIMEOUT_S = 1.0


@pytest.fixture(scope="module")
def limited_server(tmp_path_factory, exported_repository):
    from tests.conftest import copy_repository

    root = tmp_path_factory.mktemp("limits")
    repo = copy_repository(exported_repository, root / "models")
    batching = root / "batching.config"
    batching.write_text(
        "max_batch_size { value: 64 } batch_timeout_micros { value: 2000000 } "
        "num_batch_threads { value: 2 }"
    )
    server = ServerProcess(
        repo / "models.config",
        [
            "--enable_batching",
            f"--batching_parameters_file={batching}",
            f"--request_timeout_seconds={SERVER_TIMEOUT_S}",
            "--grpc_max_concurrent_streams=1",
        ],
        log_path=root / "server.log",
    )
    with server:
        yield server


@pytest.fixture(scope="module")
def stub(limited_server):
    with grpc.insecure_channel(limited_server.grpc_target) as channel:
        yield prediction_service_pb2_grpc.PredictionServiceStub(channel)


def timed_predict(stub, images: np.ndarray, timeout: float) -> tuple[str, float]:
    started = time.monotonic()
    try:
        stub.Predict(predict_request("standard", images), timeout=timeout)
        code = "OK"
    except grpc.RpcError as error:
        code = error.code().name
    return code, time.monotonic() - started


def flush(stub) -> None:
    """Close the open batch a timed-out lone request left behind (a full request closes it and
    runs at once), so the next lone request starts a batch of its own."""
    assert timed_predict(stub, FULL, timeout=30)[0] == "OK"


def test_server_deadline_is_honoured(limited_server, stub):
    flush(stub)
    code, seconds = timed_predict(stub, LONE, timeout=30)
    assert code == "DEADLINE_EXCEEDED"
    assert SERVER_TIMEOUT_S * 0.9 <= seconds < SERVER_TIMEOUT_S + 1.0
    flush(stub)
    connection = http.client.HTTPConnection("127.0.0.1", limited_server.rest_port, timeout=30)
    started = time.monotonic()
    connection.request(
        "POST", "/v1/models/standard:predict", body=json.dumps({"instances": LONE.tolist()})
    )
    response = connection.getresponse()
    reply = json.loads(response.read())
    connection.close()
    assert response.status == 504 and "deadline" in reply["error"]
    assert time.monotonic() - started < SERVER_TIMEOUT_S + 1.0
    flush(stub)  # and it keeps serving


def test_client_deadline_is_honoured(stub):
    flush(stub)
    code, seconds = timed_predict(stub, LONE, timeout=0.3)
    assert code == "DEADLINE_EXCEEDED"
    assert seconds < 0.3 + 0.5
    flush(stub)


def test_concurrent_streams_per_connection_are_limited(stub):
    # With one stream per connection, three lone requests on one channel run one after the
    # other, each ending at its deadline or when the batch it joined closes: about 3 s in all.
    # Without the limit they would share one batch and all end after one deadline (1 s).
    flush(stub)
    started = time.monotonic()
    with ThreadPoolExecutor(3) as pool:
        codes = list(pool.map(lambda _: timed_predict(stub, LONE, 30)[0], range(3)))
    elapsed = time.monotonic() - started
    assert set(codes) <= {"DEADLINE_EXCEEDED", "OK"} and "DEADLINE_EXCEEDED" in codes, codes
    assert elapsed >= 2.5 * SERVER_TIMEOUT_S, elapsed
    flush(stub)
