"""Run ``python -m serving`` as a child process on free ports: used by tests, benchmarks, the
load-test sweep and soak, and the container smoke test."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_until_serving(target: str, timeout_s: float, service: str = "") -> float:
    """Poll ``grpc.health.v1`` at ``target`` until SERVING; return seconds waited.

    Raises ``TimeoutError`` when it is not SERVING within ``timeout_s``.
    """
    start = time.monotonic()
    deadline = start + timeout_s
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=0.5)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return time.monotonic() - start
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"server at {target} not SERVING after {timeout_s:.0f}s")
            time.sleep(0.05)


class ServerProcess:
    """``python -m serving`` on free loopback ports; a context manager that waits for health.

    ``args`` are extra server flags (``--runtime onnx``, ``--enable_batching``...); ``cwd`` is
    the directory the server runs in, and ``python -m serving`` imports the packages found there
    first (benchmarks.ab_trees runs another source tree's server that way).
    """

    def __init__(
        self,
        model_config_file: Path,
        args: Sequence[str] = (),
        *,
        host: str = "127.0.0.1",
        startup_timeout_s: float = 120.0,
        env: dict[str, str] | None = None,
        log_path: Path | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.host = host
        self.grpc_port = free_port(host)
        self.rest_port = free_port(host)
        self.command = [
            sys.executable,
            "-m",
            "serving",
            f"--host={host}",
            f"--port={self.grpc_port}",
            f"--rest_api_port={self.rest_port}",
            f"--model_config_file={model_config_file}",
            *args,
        ]
        self.startup_timeout_s = startup_timeout_s
        self.env = {**os.environ, **(env or {})}
        self.log_path = log_path
        self.cwd = cwd
        self.process: subprocess.Popen[bytes] | None = None
        self._own_log: IO[bytes] | None = None
        self.startup_seconds = 0.0

    @property
    def grpc_target(self) -> str:
        """``host:port`` of the gRPC API."""
        return f"{self.host}:{self.grpc_port}"

    @property
    def rest_url(self) -> str:
        """Base URL of the REST API."""
        return f"http://{self.host}:{self.rest_port}"

    def start(self) -> ServerProcess:
        """Start the server and block until its health check says SERVING.

        A server that exits during start-up raises ``RuntimeError`` quoting the end of its log.
        """
        # Without a log path the output still goes to a file: a failed start must say why.
        if self.log_path is None:
            self._own_log = tempfile.NamedTemporaryFile(prefix="serving-", suffix=".log")  # noqa: SIM115
            log_file = Path(self._own_log.name)
        else:
            log_file = self.log_path
        start = time.monotonic()
        with open(log_file, "wb") as log:
            self.process = subprocess.Popen(
                self.command, env=self.env, stdout=log, stderr=log, cwd=self.cwd
            )
        try:
            deadline = start + self.startup_timeout_s
            while True:
                if self.process.poll() is not None:
                    lines = log_file.read_text(errors="replace").strip().splitlines()[-15:]
                    raise RuntimeError(
                        f"server exited with {self.process.returncode} during start-up"
                        + (f" (log: {self.log_path})" if self.log_path else "")
                        + "".join(f"\n  | {line}" for line in lines)
                    )
                try:
                    wait_until_serving(self.grpc_target, timeout_s=1.0)
                    break
                except TimeoutError:
                    if time.monotonic() > deadline:
                        raise
            self.startup_seconds = time.monotonic() - start
        except BaseException:
            self.kill()
            raise
        return self

    def stop(self, timeout_s: float = 30.0) -> int:
        """SIGTERM, wait for the drain, return the exit code (SIGKILL after ``timeout_s``)."""
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
        self._close_log()
        return int(self.process.returncode or 0)

    def kill(self) -> None:
        """Kill at once (clean-up path)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._close_log()

    def _close_log(self) -> None:
        if self._own_log is not None:
            self._own_log.close()  # deletes the temporary log
            self._own_log = None

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
