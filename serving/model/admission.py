"""Admission by bytes in flight: the server takes a request only while the memory that requests
already taken will use, plus this one's, fits a budget (issue #22, item 4).

A request is charged before its body is decoded into arrays: its size times the memory that
decoding and running it was measured to take per byte of body (``benchmarks/
admission_expansion.py``, 4,096 images, resident memory above the baseline):

- REST, 26 x: the JSON body read whole, then parsed. A row-format body of 8-digit decimals
  peaks at 3.8 x through the fast decoder (simdjson's tape, float64, float32) but one-digit
  integers reach 13.5 x there and 25.4 x through the reference decoder (orjson's Python lists),
  which any client can pick (a BOM or a duplicate key is enough); the worst case is charged.
- gRPC, 3.5 x: gRPC core's buffer, the bytes copied out of it, the parsed message (2.3 x
  measured without core's copy; core frees its buffer once the copy is made).

Over the budget a request is refused with UNAVAILABLE / 503 and a message, as TF Serving's full
batching queue is (``shared_batch_scheduler.h``: "The batch scheduling queue ... is full") and
Triton's ``max_queue_size`` is: the client may retry later, other requests go on being served.
A request that cannot fit even alone (its charge exceeds the whole budget) is refused with
RESOURCE_EXHAUSTED / 413: retrying cannot help.

The budget comes from ``--max_inflight_request_bytes``; its default, from the memory the
process may use (``memory_limit_bytes``: the cgroup's limit, read once at start-up) minus a
measured reserve (``budget_from_memory``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from types import TracebackType

from serving import metrics
from serving.errors import resource_exhausted, unavailable

log = logging.getLogger("serving.admission")

# Bytes of memory per byte of request body while the request is decoded and run (measured, see
# the module docstring).
REST_BYTES_PER_BODY_BYTE = 26
GRPC_BYTES_PER_MESSAGE_BYTE = 3.5
# What the process needs besides requests in flight: the ONNX image idles at 117 MiB with both
# models loaded (docker stats), and answers, thread stacks, allocator slack and gRPC core's
# buffers take the rest of this reserve (measured peaks: docs/reliability.md, "Squeezed").
RESERVE_BYTES = 160 * 1024 * 1024
# Of what remains, the share the budget takes. gRPC messages that gRPC core has read but
# admission has not yet seen are held besides the budget: ``GRPC_MESSAGES_IN_CORE`` of them,
# each at most budget / (2 x that), take half a budget (``grpc_max_message_bytes``), so 0.4 x 1.5
# leaves 40 % of the memory above the reserve for the allocator's slack. Measured under
# --memory 2g: at 0.6 with 32 messages the peak was 1,820-1,976 MB, at 0.5 one run was
# OOM-killed by 64 concurrent 12.8 MB messages (docs/reliability.md, Squeezed).
BUDGET_SHARE = 0.4
# No cgroup limit (a host, a container without --memory): the budget is a share of the
# machine's memory.
_CGROUP_V2 = Path("/sys/fs/cgroup/memory.max")
_CGROUP_V1 = Path("/sys/fs/cgroup/memory/memory.limit_in_bytes")
_NO_LIMIT_V1 = 1 << 60  # cgroup v1 reports "no limit" as a huge page-aligned number


def memory_limit_bytes(
    cgroup_v2: Path = _CGROUP_V2, cgroup_v1: Path = _CGROUP_V1
) -> tuple[int, str]:
    """The memory this process may use and where that figure comes from: the cgroup v2 or v1
    limit when one is set, else the machine's physical memory."""
    for path in (cgroup_v2, cgroup_v1):
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < _NO_LIMIT_V1:
            return int(text), str(path)
    pages = os.sysconf("SC_PHYS_PAGES")
    return pages * os.sysconf("SC_PAGE_SIZE"), "physical memory"


def budget_from_memory(limit_bytes: int) -> int:
    """The default budget for ``limit_bytes`` of memory: (limit - reserve) x share, at least
    one 256-image gRPC request's charge (so a tiny limit still serves something)."""
    floor = int(256 * 28 * 28 * 4 * GRPC_BYTES_PER_MESSAGE_BYTE)
    return max(floor, int((limit_bytes - RESERVE_BYTES) * BUDGET_SHARE))


# Largest-size gRPC messages that gRPC core may hold at once before admission sees them: the
# largest message is capped so that this many fit in half a budget. --grpc_max_concurrent_rpcs
# makes it a hard bound; unset (the default), it is an assumption the container tests check (64
# concurrent requests). grpc.aio's limit is not on by default because it counts calls whose
# answer waits for the client's flow-control window: 32 calls a client never read locked every
# other gRPC client out.
GRPC_MESSAGES_IN_CORE = 64


def grpc_max_message_bytes(budget_bytes: int, max_request_bytes: int, max_rpcs: int) -> int:
    """The largest gRPC message: ``--max_request_bytes``, and no more than
    ``budget / (2 x N)``, N = ``max_rpcs`` or ``GRPC_MESSAGES_IN_CORE`` (``BUDGET_SHARE``)."""
    messages = max_rpcs or GRPC_MESSAGES_IN_CORE
    return max(1024, min(max_request_bytes, budget_bytes // (2 * messages)))


class Ticket:
    """Bytes charged to the budget until ``release`` (or the ``with`` block's end)."""

    __slots__ = ("_admission", "charged")

    def __init__(self, admission: Admission, charged: int) -> None:
        self._admission = admission
        self.charged = charged

    def resize(self, charged: int) -> None:
        """Charge ``charged`` bytes from now on (a decoded request holds less than decoding
        took); only ever lowers the charge."""
        charged = min(charged, self.charged)
        self._admission._return(self.charged - charged)
        self.charged = charged

    def release(self) -> None:
        """Return the charge (idempotent)."""
        self._admission._return(self.charged)
        self.charged = 0

    def __enter__(self) -> Ticket:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


class Admission:
    """The budget of bytes in flight, shared by both transports (one event loop: no lock)."""

    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = budget_bytes
        self.in_flight_bytes = 0
        self.refused = 0

    def admit(self, body_bytes: int, bytes_per_byte: float, api: str) -> Ticket:
        """Charge ``body_bytes * bytes_per_byte`` or refuse: RESOURCE_EXHAUSTED when the charge
        exceeds the whole budget, UNAVAILABLE when it does not fit beside those in flight."""
        charge = int(body_bytes * bytes_per_byte)
        if charge > self.budget_bytes:
            self._count_refusal(api, "too_large")
            raise resource_exhausted(
                f"a {body_bytes}-byte {api} request needs about {charge} bytes of memory to "
                f"decode and run, more than this server's whole in-flight budget of "
                f"{self.budget_bytes} bytes (--max_inflight_request_bytes): send fewer rows "
                "per request"
            )
        if self.in_flight_bytes + charge > self.budget_bytes:
            self._count_refusal(api, "busy")
            raise unavailable(
                f"server busy: requests in flight hold {self.in_flight_bytes} of "
                f"{self.budget_bytes} bytes of memory (--max_inflight_request_bytes) and this "
                f"{body_bytes}-byte {api} request needs {charge}; retry later"
            )
        self.in_flight_bytes += charge
        metrics.set_inflight_bytes(self.in_flight_bytes)
        return Ticket(self, charge)

    def _return(self, charged: int) -> None:
        self.in_flight_bytes -= charged
        metrics.set_inflight_bytes(self.in_flight_bytes)

    def _count_refusal(self, api: str, reason: str) -> None:
        self.refused += 1
        metrics.count_admission_refusal(api, reason)
