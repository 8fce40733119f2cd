"""Where the time goes, from a run: serving overhead (served p50 minus in-process p50), the
server's own per-phase breakdown, and the per-operator profile by layer kind."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from loadtest.cells import IN_PROCESS_PROTOCOL, SERVED, SERVER_PHASES, Row
from loadtest.report.agreement import Agreement, agreement
from loadtest.report.data import SEPARABLE, STANDARD, Index, Run, completed, num, row_key
from loadtest.run.opprofile import OpRow

# --- serving overhead and the server's breakdown -------------------------------------------------


@dataclass(frozen=True)
class Overhead:
    """Served p50 minus in-process p50 for one (runtime, device, model, protocol, batch)."""

    runtime: str
    device: str
    model: str
    protocol: str
    batch_size: int
    concurrency: int
    in_process_ms: float
    served_ms: float

    @property
    def overhead_ms(self) -> float:
        """What the server, the network stack and serialization add."""
        return self.served_ms - self.in_process_ms

    @property
    def share(self) -> float:
        """Overhead as a fraction of the served latency."""
        return max(self.overhead_ms, 0.0) / self.served_ms if self.served_ms > 0 else 0.0


def _lowest_concurrency(
    index: Index, runtime: str, device: str, protocol: str, batch: int
) -> int | None:
    levels = index.values(
        "concurrency",
        runtime=runtime,
        device=device,
        protocol=protocol,
        batch_size=batch,
        mode="served",
    )
    return levels[0] if levels else None


def overheads(index: Index) -> list[Overhead]:
    """Serving overhead at the lowest measured concurrency, wherever both rows exist."""
    out = []
    for runtime, device in index.groups():
        for model in (STANDARD, SEPARABLE):
            for protocol in index.protocols(runtime, device):
                for batch in index.values("batch_size", runtime=runtime, device=device):
                    lowest = _lowest_concurrency(index, runtime, device, protocol, batch)
                    if lowest is None:
                        continue
                    base = index.get((runtime, device), model, IN_PROCESS_PROTOCOL, batch, 1)
                    served = index.get((runtime, device), model, protocol, batch, lowest)
                    base_ms = num(base["p50_ms"]) if base else None
                    served_ms = num(served["p50_ms"]) if served else None
                    if base_ms is None or served_ms is None:
                        continue
                    out.append(
                        Overhead(
                            runtime, device, model, protocol, batch, lowest, base_ms, served_ms
                        )
                    )
    return out


@dataclass(frozen=True)
class Breakdown:
    """Where a served request's time goes (means per request, ms): client + transport (the
    client's mean latency minus the server's phases), server framework (decode + queue + encode)
    and model inference.

    The client's mean latency is users ÷ requests/s (Little's law for Locust's closed loop
    without waiting time), so it counts every request of the window like the server's means.
    """

    runtime: str
    device: str
    model: str
    protocol: str
    batch_size: int
    concurrency: int
    latency_ms: float
    decode_ms: float
    queue_ms: float
    infer_ms: float
    encode_ms: float
    check: Agreement | None

    @property
    def framework_ms(self) -> float:
        """Decode + queue + encode inside the server."""
        return self.decode_ms + self.queue_ms + self.encode_ms

    @property
    def client_transport_ms(self) -> float:
        """What the server does not see: client, network stack, HTTP/2 or HTTP framing."""
        return max(self.latency_ms - self.framework_ms - self.infer_ms, 0.0)

    @property
    def agrees(self) -> bool | None:
        """In-process floor, server inference and op-profile sum within 10 % (``None``: no
        check)."""
        return None if self.check is None else self.check.ok


def _breakdown(index: Index, row: Row, opprofile: Sequence[OpRow]) -> Breakdown | None:
    """The server's breakdown of a served row at its lowest concurrency with phases, else None."""
    if row["mode"] != SERVED or not completed(row):
        return None
    lowest = _lowest_concurrency(
        index, row["runtime"], row["device"], row["protocol"], row["batch_size"]
    )
    phases = [num(row[f"server_{p}_ms"]) for p in SERVER_PHASES]  # type: ignore[literal-required]
    rate = num(row["requests_per_s"])
    if row["concurrency"] != lowest or any(p is None for p in phases) or not rate:
        return None
    decode, queue, infer, encode = (float(p or 0.0) for p in phases)
    return Breakdown(
        row["runtime"],
        row["device"],
        row["model"],
        row["protocol"],
        row["batch_size"],
        row["concurrency"],
        1000.0 * row["concurrency"] / rate,
        decode,
        queue,
        infer,
        encode,
        agreement(index, row_key(row), opprofile),
    )


def breakdowns(index: Index, opprofile: Sequence[OpRow] = ()) -> list[Breakdown]:
    """The server's breakdown of every served cell at its lowest concurrency that has phases,
    with the three views of its inference time (:mod:`loadtest.report.agreement`)."""
    rows = (_breakdown(index, row, opprofile) for row in index.rows)
    out = [b for b in rows if b is not None]
    out.sort(
        key=lambda b: (b.runtime, b.device, b.protocol != "grpc", b.batch_size, b.model != STANDARD)
    )
    return out


# --- per-operator profile -------------------------------------------------------------------------


@dataclass(frozen=True)
class KindShare:
    """One layer kind of one model at one batch size."""

    model: str
    batch_size: int
    kind: str
    ms: float
    macs: int
    gmacs_per_s: float | None
    share: float  # of the model's total time per call


def kind_shares(run: Run, runtime: str = "onnx") -> list[KindShare]:
    """The operator profile of ``runtime`` with each kind's share of its model's time."""
    rows = [r for r in run.opprofile if r["runtime"] == runtime]
    totals: dict[tuple[str, int], float] = {}
    for r in rows:
        totals[(r["model"], r["batch_size"])] = (
            totals.get((r["model"], r["batch_size"]), 0.0) + r["ms"]
        )
    return [
        KindShare(
            r["model"],
            r["batch_size"],
            r["op_kind"],
            r["ms"],
            r["macs"],
            r["gmacs_per_s"],
            r["ms"] / totals[(r["model"], r["batch_size"])]
            if totals[(r["model"], r["batch_size"])] > 0
            else 0.0,
        )
        for r in rows
    ]


def profiles(run: Run) -> dict[str, list[KindShare]]:
    """The operator profile of every profiled runtime, by runtime."""
    return {
        runtime: kind_shares(run, runtime)
        for runtime in dict.fromkeys(r["runtime"] for r in run.opprofile)
    }
