"""``python -m serving.healthcheck``: ask a server's ``grpc.health.v1`` service whether it serves.

Exit status 0 when the answer is SERVING, 1 otherwise (NOT_SERVING, unknown service, unreachable,
timeout); one line on stdout says which. It is the container ``HEALTHCHECK`` and the compose
health check, so it imports only gRPC (no NumPy, no runtimes) and starts in a fraction of a second.

    python -m serving.healthcheck                                   # 127.0.0.1:8500, service ""
    python -m serving.healthcheck --target 10.0.0.5:8500 --service standard --timeout 2
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

DEFAULT_TARGET = "127.0.0.1:8500"
DEFAULT_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class HealthResult:
    """The outcome of one health check: ``status`` is a ServingStatus name or UNREACHABLE."""

    healthy: bool
    status: str
    detail: str

    def line(self, target: str, service: str) -> str:
        """The single line printed for operators and ``docker inspect``."""
        where = f"{target} service={service!r}"
        return f"{self.status} {where}" + (f": {self.detail}" if self.detail else "")


def check(target: str, service: str = "", timeout_s: float = DEFAULT_TIMEOUT_S) -> HealthResult:
    """One ``Health.Check`` call; never raises for server-side or network problems."""
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            # Not wait_for_ready: a refused connection should fail now, saying so, rather than
            # as a bare deadline; the first connection attempt itself is still awaited.
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
        except grpc.RpcError as exc:
            code = exc.code() if isinstance(exc, grpc.Call) else None
            details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
            if code == grpc.StatusCode.NOT_FOUND:
                return HealthResult(False, "SERVICE_UNKNOWN", details or "")
            name = code.name if code is not None else "ERROR"
            return HealthResult(False, "UNREACHABLE", f"{name}: {details}")
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return HealthResult(reply.status == health_pb2.HealthCheckResponse.SERVING, status, "")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line flags."""
    parser = argparse.ArgumentParser(
        prog="python -m serving.healthcheck",
        description="grpc.health.v1 client: exit 0 if SERVING, 1 otherwise.",
    )
    parser.add_argument(
        "--target", default=DEFAULT_TARGET, help=f"host:port (default {DEFAULT_TARGET})"
    )
    parser.add_argument(
        "--service", default="", help='service name; "" (default) is the whole server'
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        help=f"seconds before giving up (default {DEFAULT_TIMEOUT_S:g})",
    )
    args = parser.parse_args(argv)
    if args.timeout <= 0:
        parser.error("--timeout must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Print the health line; 0 when SERVING, else 1."""
    args = parse_args(argv)
    result = check(args.target, args.service, args.timeout)
    print(result.line(args.target, args.service), flush=True)
    return 0 if result.healthy else 1


if __name__ == "__main__":
    sys.exit(main())
