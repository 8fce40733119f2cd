"""Three views of one call's inference time, which must agree for a served cell's numbers to be
read together: the in-process floor (``Runtime.predict`` timed alone, p50 ms per call), the
server's ``infer`` phase (its mean per request in that served cell) and the runtime's own
profiler (the sum of ``opprofile.csv``'s layer kinds, call overhead included, per call at that
batch size).

Each view is compared with the floor: within ±10 % it agrees; otherwise the cell is flagged with
the measured reason, the numbers and the direction of each view that differs (and, for the
operator profile, its two largest parts). A server inference phase longer than the floor is
explained by two measured figures of the cell: how many inferences ran at once (infer ms ×
requests/s: above 1.1 they shared the server's cores) and the server process's CPU time per
request (``server_cpu`` % ÷ requests/s) against the floor's call: with about one inference in
flight and more CPU per request than the floor, the rest of the server's work (gRPC transport,
decode, encode of the other requests in flight) ran on the same CPUs during inferences.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from loadtest.cells import SERVED, CellKey
from loadtest.report.data import Index, Key, num
from loadtest.run.opprofile import OpRow

AGREE_WITHIN = 0.10  # the tolerance between the three views
OVERLAP = 1.1  # more than this many inferences at once on average: requests overlap in the server


@dataclass(frozen=True)
class Agreement:
    """The three views of one served cell's (one model's) inference time per call, in ms."""

    model: str
    floor_ms: float
    infer_ms: float | None
    profile_ms: float | None
    profile_parts: tuple[tuple[str, float], ...] = ()
    in_flight: float | None = None  # server infer ms × requests/s: inferences running at once
    server_cpu_ms: float | None = None  # the server process's CPU ms per request over the cell

    def _off(self) -> list[tuple[str, float, float]]:
        """(view, ms, relative difference to the floor) of each view beyond the tolerance."""
        views = [("server infer", self.infer_ms), ("op profile", self.profile_ms)]
        return [
            (name, ms, ms / self.floor_ms - 1)
            for name, ms in views
            if ms is not None and abs(ms / self.floor_ms - 1) > AGREE_WITHIN
        ]

    @property
    def ok(self) -> bool:
        """Every view present within ±10 % of the floor."""
        return not self._off()

    def reason(self) -> str:
        """``standard: floor 0.123 ms vs server infer 0.158 ms (+28%): server infer slower``."""
        off = self._off()
        if not off:
            return ""
        numbers = ", ".join(f"{name} {ms:.3f} ms ({delta:+.0%})" for name, ms, delta in off)
        slower = [name for name, _, delta in off if delta > 0]
        faster = [name for name, _, delta in off if delta < 0]
        verdicts = [f"{' and '.join(slower)} slower"] if slower else []
        verdicts += [f"{' and '.join(faster)} faster"] if faster else []
        text = f"{self.model}: floor {self.floor_ms:.3f} ms vs {numbers}: {', '.join(verdicts)}"
        text += " than the floor"
        names = {name for name, _, _ in off}
        if "server infer" in names and self.in_flight is not None:
            overlap = ", sharing the server's cores" if self.in_flight >= OVERLAP else ""
            text += (
                f"; {self.in_flight:.1f} inferences in flight on average "
                f"(infer ms × requests/s){overlap}"
            )
        if "server infer" in names and self.server_cpu_ms is not None:
            extra = self.server_cpu_ms - self.floor_ms
            text += (
                f"; the server used {self.server_cpu_ms:.3f} ms of CPU per request, "
                f"{extra:+.3f} ms against the floor's call"
            )
            if self._cpu_shared():
                text += (
                    ": its other work (gRPC transport, decode and encode of the requests in "
                    "flight) ran on the same CPUs while an inference was in flight"
                )
        if "op profile" in names and self.profile_parts:
            parts = sorted(self.profile_parts, key=lambda p: -p[1])[:2]
            listed = ", ".join(f"{kind} {ms:.3f} ms" for kind, ms in parts)
            text += f"; op profile's largest parts: {listed}"
        return text

    def _cpu_shared(self) -> bool:
        # About one inference always in flight and more CPU per request than the floor's call:
        # the difference ran on the server's CPUs during inference phases.
        return (
            self.server_cpu_ms is not None
            and self.in_flight is not None
            and self.in_flight >= 1 - AGREE_WITHIN
            and self.server_cpu_ms > self.floor_ms * (1 + AGREE_WITHIN)
        )

    def short(self) -> str:
        """``ok``, or ``[g] server infer +89% (1.8 in flight, CPU +95%), op profile +145%`` for a
        table (the full reason goes to ratios.csv); CPU: the server's CPU time per request
        against the floor's call."""
        off = self._off()
        if not off:
            return "ok"
        parts = []
        for name, _, delta in off:
            extra = ""
            if name == "server infer" and self.in_flight is not None:
                cpu = ""
                if self.server_cpu_ms is not None:
                    cpu = f", CPU {self.server_cpu_ms / self.floor_ms - 1:+.0%}"
                extra = f" ({self.in_flight:.1f} in flight{cpu})"
            parts.append(f"{name} {delta:+.0%}{extra}")
        return "[g] " + ", ".join(parts)

    def cells(self) -> list[str]:
        """floor, server infer, op profile (``—`` when absent)."""
        return [
            f"{value:.3f}" if value is not None else "—"
            for value in (self.floor_ms, self.infer_ms, self.profile_ms)
        ]


def profile_parts(opprofile: Sequence[OpRow], key: Key) -> tuple[tuple[str, float], ...]:
    """(layer kind, ms per call) of ``key``'s runtime, device, model and batch size."""
    return tuple(
        (r["op_kind"], r["ms"])
        for r in opprofile
        if (r["runtime"], r["device"], r["model"], r["batch_size"])
        == (key.runtime, key.device, key.model, key.batch_size)
        and r["ms"] > 0
    )


def agreement(index: Index, key: Key, opprofile: Sequence[OpRow] = ()) -> Agreement | None:
    """The three views of a served cell (one model); ``None`` without a floor or a second view."""
    if key.mode != SERVED:
        return None
    floor_key = CellKey.in_process(key.runtime, key.device, key.model, key.batch_size)
    floor_row, served_row = index.by_key(floor_key), index.by_key(key)
    floor = num(floor_row["p50_ms"]) if floor_row else None
    infer = num(served_row["server_infer_ms"]) if served_row else None
    parts = profile_parts(opprofile, key)
    profile = sum(ms for _, ms in parts) if parts else None
    if not floor or (infer is None and profile is None):
        return None
    rate = num(served_row["requests_per_s"]) if served_row else None
    in_flight = infer * rate / 1000.0 if infer is not None and rate else None
    server_cpu = num(served_row["server_cpu"]) if served_row else None
    # server_cpu is % of one core over the measurement window, as requests_per_s is.
    cpu_ms = 10.0 * server_cpu / rate if server_cpu and rate else None
    return Agreement(key.model, floor, infer, profile, parts, in_flight, cpu_ms)
