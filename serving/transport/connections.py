"""Connection limits that keep the server below its file descriptor limit (issue #22, item 5).

Measured on the host before these limits: with ``ulimit -n 256``, 400 idle connections that
never sent a byte locked a new gRPC client out for 20 s, REST runs got hundreds of errors, and
gRPC core spun at 97% CPU retrying ``accept`` ("File descriptor limit reached. Retrying.")
until the idle connections went away. No server can accept past its descriptor limit, so the
server never gets there: each port has a connection cap, their sum below ``RLIMIT_NOFILE``
less a reserve for everything else the process opens; beyond the cap, connections wait in the
kernel's listen backlog (no descriptor) or are closed.

- REST (``RestConnectionCap``): a new connection over the cap closes an idle one (idle:
  waiting for a request's headers, which covers slowloris sockets that trickle them): one that
  never sent a whole request first, the longest idle first. A flood of idle sockets cannot lock
  good clients out, nor push out their keep-alive connections; when none is idle, the new one is
  closed. ``--rest_keepalive_timeout_seconds`` closes idle and slow-header connections anyway.
- gRPC: gRPC core's ``grpc.max_allowed_incoming_connections`` closes new connections over the
  cap (it cannot pick the idle ones); ``grpc.server_handshake_timeout_ms`` closes connections
  that never complete the handshake, ``grpc.max_connection_idle_ms`` those without calls.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from serving import metrics

log = logging.getLogger("serving.connections")

# Descriptors the process needs besides connections: the ONNX server holds about 40 with both
# models loaded (stdio, listening sockets, epoll and eventfds of uvloop and gRPC core, model
# files while loading, the metrics), measured with ls /proc/<pid>/fd; the rest is headroom for
# version loads and the health check.
RESERVED_DESCRIPTORS = 128


def raise_descriptor_limit() -> int:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit (as Go's runtime does since 1.19:
    the soft limit is often 1024 where the hard one is far higher) and return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:
            log.warning("cannot raise RLIMIT_NOFILE %d to %d: %s", soft, hard, exc)
    return int(soft)


# Memory an idle connection costs the server: 8,000 idle connections raised its RSS from 133 to
# 195 MB (issue #22, measured on the host), ~8 KB each. Connections may take a tenth of the
# memory limit, so a high descriptor limit (containerd's 1,048,576) cannot turn into an OOM.
MEMORY_PER_CONNECTION = 8 * 1024
CONNECTIONS_MEMORY_SHARE = 0.1


def connection_cap(flag_value: int, descriptor_limit: int, memory_bytes: int = 0) -> int:
    """The per-port connection cap: the flag when set, else half of what the descriptor limit
    leaves after the reserve (two ports), and no more than half of what a tenth of
    ``memory_bytes`` pays for; at least 16."""
    if flag_value:
        return flag_value
    cap = (descriptor_limit - RESERVED_DESCRIPTORS) // 2
    if memory_bytes:
        cap = min(cap, int(memory_bytes * CONNECTIONS_MEMORY_SHARE) // MEMORY_PER_CONNECTION // 2)
    return max(16, cap)


def _idle(handler: RequestHandler) -> bool:
    # aiohttp 3.14 (pinned): a handler waits on _waiter between requests and while a request's
    # headers are incomplete (tests/test_connection_limits.py fails when that changes).
    waiter = handler._waiter
    return waiter is not None and not waiter.done()


def _shedding_order(handler: RequestHandler) -> tuple[bool, float]:
    # Connections that never sent a whole request (idle floods, slowloris) go first, then the
    # longest idle: _next_keepalive_close_time is set at connection and after each answer to
    # now + keepalive_timeout (a constant). A good client's keep-alive connection, idle a few
    # milliseconds between requests, outlasts any number of newer sockets that never sent one.
    return handler._request_count > 0, float(handler._next_keepalive_close_time)


class RestConnectionCap:
    """Keeps an aiohttp server's open connections at ``cap`` (see the module docstring)."""

    def __init__(self, server: web.Server, cap: int) -> None:
        self.cap = cap
        self.shed = 0
        self.refused = 0
        self._server = server
        self._connection_made = server.connection_made
        # The low-level server's hook, called by each RequestHandler as it is connected.
        server.connection_made = self._on_connection  # type: ignore[method-assign]

    def _on_connection(self, handler: RequestHandler, transport: asyncio.Transport) -> None:
        self._connection_made(handler, transport)
        connections: dict[RequestHandler, Any] = self._server._connections
        if len(connections) <= self.cap:
            return
        # Closed handlers stay listed until their task ends: count the open ones.
        open_handlers = [h for h in connections if h.transport is not None]
        if len(open_handlers) <= self.cap:
            return
        idle = [h for h in open_handlers if h is not handler and _idle(h)]
        if idle:
            oldest = min(idle, key=_shedding_order)
            oldest.force_close()
            self.shed += 1
            metrics.count_connection_closed("shed")
        else:
            handler.force_close()
            self.refused += 1
            metrics.count_connection_closed("refused")
        total = self.shed + self.refused
        if total & (total - 1) == 0:  # 1, 2, 4, 8...: a flood is logged, not every close
            log.warning(
                "REST connection cap %d reached: %d idle connections closed, %d new ones "
                "refused so far (--rest_max_connections)",
                self.cap,
                self.shed,
                self.refused,
            )
