"""The typed client recovers on its own after a transport fault (docs/reliability.md, "Faults in
the deployment"): found by the frozen-server test of tests/test_containers_faults.py, where the
REST client, once timed out, raised ``CannotSendRequest`` on every later request."""

from __future__ import annotations

import socket
import threading

import pytest

from serving.client import RECONNECT_OPTIONS, ServingClient

STATUS_BODY = b'{"model_version_status": [{"version": "1", "state": "AVAILABLE", "status": {}}]}'


def _server(stall_first: int) -> tuple[socket.socket, int]:
    """A listener whose first ``stall_first`` connections never answer; later ones answer a
    model status."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    held: list[socket.socket] = []

    def serve() -> None:
        for index in range(16):
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            if index < stall_first:
                held.append(connection)  # frozen: reads nothing, answers nothing
                continue
            with connection:
                connection.recv(65536)
                connection.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
                    % (len(STATUS_BODY), STATUS_BODY)
                )

    threading.Thread(target=serve, daemon=True).start()
    return listener, listener.getsockname()[1]


def test_rest_client_connects_afresh_after_a_timeout():
    listener, port = _server(stall_first=1)
    try:
        with ServingClient(f"127.0.0.1:{port}", "rest", timeout_s=0.3) as client:
            with pytest.raises(TimeoutError):
                client.status("standard")
            assert client.status("standard") == [{"version": 1, "state": "AVAILABLE", "error": ""}]
    finally:
        listener.close()


def test_grpc_reconnect_options_are_bounded():
    options = dict(RECONNECT_OPTIONS)
    assert options["grpc.max_reconnect_backoff_ms"] <= 1000
    assert options["grpc.initial_reconnect_backoff_ms"] <= options["grpc.max_reconnect_backoff_ms"]
    # Keepalive only while calls are outstanding: the server's default policy (no pings without
    # calls) would answer idle pings with GOAWAY.
    assert "grpc.keepalive_permit_without_calls" not in options
