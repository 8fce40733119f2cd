"""The report's first table: per runtime, separable ÷ standard at batch 1, 32 and 256,
in-process and served over gRPC, how far each stands from the multiply-adds ratio, and which
layer kinds keep the gap; then the fastest runtime for each model.

The gap's reason is an exact decomposition of the operator profile (``opprofile.csv``) at that
batch size. Let the standard model's time per multiply-add be c = T_std ÷ MACs_std (its whole
profiled time per call over its multiply-adds). Were the separable model's multiply-adds as
cheap, it would take c × MACs_sep, which is exactly T_std ÷ (the MACs ratio). Its measured time
exceeds that by Σ over layer kinds of (ms_kind − c × MACs_kind): a kind without multiply-adds
(pooling, reshapes, call overhead) adds all its time, a kind with them what it costs beyond the
standard model's rate. The kinds with the largest excess are the ones that keep the gap.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from loadtest.cells import IN_PROCESS, IN_PROCESS_PROTOCOL, SERVED
from loadtest.report.analysis import RatioRow, flag_codes, flag_legend, fmt_interval
from loadtest.report.breakdown import KindShare
from loadtest.report.data import SEPARABLE, STANDARD, Index, fmt_rate, num
from loadtest.report.plots import best_cell
from loadtest.report.tables import md_table

FIRST_BATCHES = (1, 32, 256)
GAP_KINDS_SHOWN = 3


def _row_at(
    ratios: Sequence[RatioRow], group: tuple[str, str], batch: int, mode: str
) -> RatioRow | None:
    """The in-process ratio, or the gRPC ratio at the lowest concurrency measured."""
    mine = [
        r
        for r in ratios
        if (r["runtime"], r["device"], r["batch_size"], r["mode"]) == (*group, batch, mode)
        and (mode == IN_PROCESS or r["protocol"] == "grpc")
    ]
    return min(mine, key=lambda r: r["concurrency"], default=None)


def gap_excess(
    shares: Sequence[KindShare], batch: int
) -> tuple[float, float, list[tuple[float, KindShare]]] | None:
    """(separable ms, the ms its MACs would take at the standard model's cost per MAC, each
    kind's excess ms largest first) at ``batch`` (the module's decomposition); ``None`` without
    a profile of both models there."""
    std = [s for s in shares if (s.model, s.batch_size) == (STANDARD, batch)]
    sep = [s for s in shares if (s.model, s.batch_size) == (SEPARABLE, batch)]
    std_ms, std_macs = sum(s.ms for s in std), sum(s.macs for s in std)
    if not sep or std_ms <= 0 or std_macs <= 0:
        return None
    per_mac = std_ms / std_macs
    ideal = per_mac * sum(s.macs for s in sep)
    excess = sorted(((s.ms - per_mac * s.macs, s) for s in sep), key=lambda e: -e[0])
    return sum(s.ms for s in sep), ideal, [e for e in excess if e[0] > 0]


def gap_kinds(excess: Sequence[tuple[float, KindShare]]) -> list[str]:
    """``pooling +1.061`` … for the kinds that keep the gap most (with GMAC/s where they have
    multiply-adds)."""
    return [
        f"{s.kind} +{extra:.3f}"
        + (f" ({s.gmacs_per_s:.1f} GMAC/s)" if s.macs and s.gmacs_per_s else "")
        for extra, s in excess[:GAP_KINDS_SHOWN]
    ]


def gap_reason(shares: Sequence[KindShare], batch: int) -> str:
    """Which layer kinds keep the separable model from the MACs ratio at ``batch``, from the
    operator profile; ``no op profile`` without one."""
    found = gap_excess(shares, batch)
    if found is None:
        return "no op profile"
    sep_ms, ideal, excess = found
    return (
        f"{sep_ms:.3f} ms vs {ideal:.3f} ms at the standard model's cost per MAC; "
        f"excess ms: {', '.join(gap_kinds(excess)) or 'none'}"
    )


def _users(count: int) -> str:
    return f" at {count} user{'s' if count > 1 else ''}"


def _of_macs(row: RatioRow | None, macs_ratio: float) -> str:
    value = num(row["ratio_median"]) if row else None
    return "—" if value is None else f"{value / macs_ratio:.0%}"


def first_table_lines(
    ratios: Sequence[RatioRow],
    shares: Mapping[str, Sequence[KindShare]],
    macs_ratio: float,
) -> list[str]:
    """The first table: one row per (runtime, device) and batch 1, 32, 256 (``—`` where the run
    has no such cell), with the flag codes' legend under it."""
    groups = list(dict.fromkeys((r["runtime"], r["device"]) for r in ratios))
    body, flags = [], []
    for group in groups:
        for batch in FIRST_BATCHES:
            in_process = _row_at(ratios, group, batch, IN_PROCESS)
            served = _row_at(ratios, group, batch, SERVED)
            used = [r["flag"] for r in (in_process, served) if r and r["flag"]]
            flags += used
            body.append(
                [
                    f"{group[0]}/{group[1]}",
                    str(batch),
                    fmt_interval(in_process),
                    fmt_interval(served) + (_users(served["concurrency"]) if served else ""),
                    f"{_of_macs(in_process, macs_ratio)} / {_of_macs(served, macs_ratio)}",
                    gap_reason(shares.get(group[0], ()), batch),
                    flag_codes("; ".join(used)),
                ]
            )
    header = [
        "runtime",
        "batch",
        "in-process",
        "served gRPC",
        f"of {macs_ratio:.2f}x (in-process / gRPC)",
        "what keeps the gap (op profile, ms per call)",
        "flags",
    ]
    return md_table(header, body, "lrrrrll") + flag_legend(flags)


def _fastest(index: Index, model: str, protocol: str, batch: int) -> str:
    best: tuple[float, str] | None = None
    for runtime, device in index.groups():
        key = best_cell(index, runtime, device, model, protocol, batch)
        row = index.by_key(key) if key else None
        value = num(row["images_per_s"]) if row else None
        if value is not None and value > 0 and (best is None or value > best[0]):
            best = (value, f"{runtime}/{device}")
    return "—" if best is None else f"{best[1]} ({fmt_rate(best[0])} img/s)"


def fastest_lines(index: Index) -> list[str]:
    """The fastest runtime for each model at batch 1, 32, 256: in-process and served gRPC (its
    best concurrency)."""
    body = [
        [
            str(batch),
            *(
                _fastest(index, model, protocol, batch)
                for protocol in (IN_PROCESS_PROTOCOL, "grpc")
                for model in (STANDARD, SEPARABLE)
            ),
        ]
        for batch in FIRST_BATCHES
    ]
    header = ["batch", "standard in-process", "separable in-process"]
    header += ["standard gRPC", "separable gRPC"]
    return md_table(header, body, "rllll")
