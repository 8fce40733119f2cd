"""``python -m serving.healthcheck`` against a real grpc.health.v1 server on a loopback port.

The model server's own health is exercised by the entrypoint smoke test; here a plain gRPC server
with grpcio-health-checking's servicer sets every status the client must tell apart.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from harness import free_port
from serving.healthcheck import check, main


@pytest.fixture
def health_server() -> Iterator[tuple[str, health.HealthServicer]]:
    servicer = health.HealthServicer()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}", servicer
    finally:
        server.stop(0)


def test_serving_and_not_serving(health_server):
    target, servicer = health_server
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    servicer.set("standard", health_pb2.HealthCheckResponse.NOT_SERVING)
    assert check(target).healthy
    result = check(target, "standard")
    assert not result.healthy
    assert result.status == "NOT_SERVING"


def test_unknown_service(health_server):
    target, servicer = health_server
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    result = check(target, "no-such-model")
    assert not result.healthy
    assert result.status == "SERVICE_UNKNOWN"


def test_unreachable_fails_fast():
    target = f"127.0.0.1:{free_port()}"
    result = check(target, timeout_s=5)
    assert not result.healthy
    assert result.status == "UNREACHABLE"
    assert "UNAVAILABLE" in result.detail


def test_cli_exit_codes_and_one_line(health_server, capsys):
    target, servicer = health_server
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    assert main(["--target", target]) == 0
    assert capsys.readouterr().out == f"SERVING {target} service=''\n"
    servicer.enter_graceful_shutdown()  # what the server does on SIGTERM: NOT_SERVING
    assert main(["--target", target, "--timeout", "2"]) == 1
    out = capsys.readouterr().out
    assert out.startswith("NOT_SERVING ")
    assert out.count("\n") == 1


def test_cli_as_a_module_process(health_server):
    """The exact HEALTHCHECK form: a fresh interpreter running the module."""
    target, servicer = health_server
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    result = subprocess.run(
        [sys.executable, "-m", "serving.healthcheck", "--target", target, "--timeout", "4"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("SERVING")


def test_rejects_a_non_positive_timeout():
    with pytest.raises(SystemExit):
        main(["--timeout", "0"])
