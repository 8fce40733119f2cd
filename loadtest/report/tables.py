"""The Markdown tables of report.md (and of --compare): results, pivots, speedups,
ratios, overhead and the server's breakdown, the operator profile."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from loadtest.cells import IN_PROCESS_PROTOCOL, Row
from loadtest.report.agreement import agreement
from loadtest.report.analysis import RatioRow, Speedup, flag_codes, flag_legend, fmt_interval
from loadtest.report.breakdown import Breakdown, KindShare, Overhead
from loadtest.report.data import (
    SEPARABLE,
    STANDARD,
    Index,
    cell_slug,
    completed,
    fmt_ms,
    fmt_pct,
    fmt_rate,
    fmt_x,
    protocol_name,
    row_key,
)
from loadtest.report.plots import best_cell


def md_table(header: Sequence[str], rows: Iterable[Sequence[str]], align: str = "") -> list[str]:
    align = align or "l" + "r" * (len(header) - 1)
    marks = {"l": ":---", "r": "---:", "c": ":---:"}
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(marks[a] for a in align) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


def sort_key(row: Row) -> tuple[Any, ...]:
    return (
        row["mode"] != "in-process",
        row["model"] != STANDARD,
        row["protocol"] != "grpc",
        row["protocol"],
        row["batch_size"],
        row["concurrency"],
    )


_SUMMARY_HEADER = [
    "model",
    "protocol",
    "batch",
    "users",
    "runs",
    "req/s",
    "images/s",
    "p50 ms",
    "p90 ms",
    "p99 ms",
    "p99.9 ms",
    "max ms",
    "errors",
    "accuracy",
    "generator CPU",
    "server CPU",
]


def _summary_cells(index: Index, r: Row, saturated: set[str]) -> list[str]:
    repetitions = index.repetitions.get(row_key(r), [])
    mark = " ⚠" if {cell_slug(x) for x in repetitions} & saturated else ""
    return [
        r["model"],
        protocol_name(r["protocol"]),
        str(r["batch_size"]),
        str(r["concurrency"]),
        str(len(repetitions)),
        fmt_rate(r["requests_per_s"]),
        fmt_rate(r["images_per_s"]),
        fmt_ms(r["p50_ms"]),
        fmt_ms(r["p90_ms"]),
        fmt_ms(r["p99_ms"]),
        fmt_ms(r["p999_ms"]),
        fmt_ms(r["max_ms"]),
        str(r["errors"]),
        # No completed request: nothing was classified in the window.
        f"{r['accuracy']:.4f}" if completed(r) and r["accuracy"] is not None else "—",
        fmt_pct(r["generator_cpu"]) + mark,
        fmt_pct(r["server_cpu"]),
    ]


def summary_lines(index: Index, saturated: set[str]) -> list[str]:
    """Per (runtime, device): every combined cell with its latencies, errors, accuracy, CPU."""
    lines: list[str] = []
    for runtime, device in index.groups():
        lines += ["", f"### {runtime} on {device}", ""]
        rows = sorted(
            (r for r in index.rows if (r["runtime"], r["device"]) == (runtime, device)),
            key=sort_key,
        )
        body = [_summary_cells(index, r, saturated) for r in rows]
        lines += md_table(_SUMMARY_HEADER, body, "llrrr" + "r" * 11)
    return lines


def pivot_latency(index: Index) -> list[str]:
    levels = index.values("concurrency", mode="served")
    if not levels:
        return []
    body = []
    for runtime, device in index.groups():
        for protocol in index.protocols(runtime, device):
            for batch in index.values("batch_size", runtime=runtime, device=device, mode="served"):
                for model in (STANDARD, SEPARABLE):
                    cells = []
                    for c in levels:
                        r = index.get((runtime, device), model, protocol, batch, c)
                        cells.append(f"{fmt_ms(r['p50_ms'])} / {fmt_ms(r['p99_ms'])}" if r else "—")
                    if all(c == "—" for c in cells):
                        continue
                    body.append(
                        [f"{runtime}/{device}", protocol_name(protocol), str(batch), model, *cells]
                    )
    return md_table(
        ["runtime", "protocol", "batch", "model", *[f"{c} users: p50 / p99 ms" for c in levels]],
        body,
        "llrl" + "r" * len(levels),
    )


def pivot_throughput(index: Index) -> list[str]:
    batches = index.values("batch_size")
    body = []
    for runtime, device in index.groups():
        modes = [IN_PROCESS_PROTOCOL, *index.protocols(runtime, device)]
        for protocol in modes:
            for model in (STANDARD, SEPARABLE):
                cells = []
                for batch in batches:
                    key = best_cell(index, runtime, device, model, protocol, batch)
                    found = index.by_key(key) if key else None
                    cells.append(fmt_rate(found["images_per_s"] if found else None))
                if all(c == "—" for c in cells):
                    continue
                body.append([f"{runtime}/{device}", protocol_name(protocol), model, *cells])
    return md_table(
        ["runtime", "mode", "model", *[f"batch {b}" for b in batches]],
        body,
        "lll" + "r" * len(batches),
    )


def overhead_lines(items: Sequence[Overhead]) -> list[str]:
    body = [
        [
            f"{o.runtime}/{o.device}",
            o.model,
            protocol_name(o.protocol),
            str(o.batch_size),
            str(o.concurrency),
            fmt_ms(o.in_process_ms),
            fmt_ms(o.served_ms),
            fmt_ms(o.overhead_ms),
            f"{o.share:.0%}",
        ]
        for o in items
    ]
    return md_table(
        [
            "runtime",
            "model",
            "protocol",
            "batch",
            "users",
            "in-process p50 ms",
            "served p50 ms",
            "overhead ms",
            "overhead share",
        ],
        body,
        "lllrrrrrr",
    )


def machine_lines(machine: dict[str, Any]) -> list[str]:
    if not machine:
        return ["(machine.json not found)"]
    gpus = ", ".join(f"{g['name']} ({g['memory']})" for g in machine.get("gpus", [])) or "none"
    libraries = ", ".join(f"{k} {v}" for k, v in machine.get("libraries", {}).items())
    return [
        f"- CPU: {machine.get('cpu_model', '?')} — {machine.get('usable_cores', '?')} usable "
        f"cores ({machine.get('physical_cores', '?')} physical, "
        f"{machine.get('logical_cores', '?')} logical), {machine.get('memory_gib', '?')} GiB RAM",
        f"- GPU: {gpus}",
        f"- OS: {machine.get('os', '?')}, Python {machine.get('python', '?')}",
        f"- Libraries: {libraries}",
        f"- Load average at start: {machine.get('load_average', '?')}",
    ]


def speedup_lines(table: Sequence[Speedup]) -> list[str]:
    protocols = sorted({p for s in table for p in s.served}, key=lambda p: (p != "grpc", p))
    header = ["runtime", "device", "batch", "MACs ratio", "in-process"]
    header += [f"served {protocol_name(p)}" for p in protocols]
    header += ["flags"]
    body, used = [], []
    for s in table:
        flags = [
            row["flag"]
            for row in [s.in_process, *[s.served.get(p) for p in protocols]]
            if row and row["flag"]
        ]
        used += flags
        body.append(
            [
                s.runtime,
                s.device,
                str(s.batch_size),
                fmt_x(s.macs_ratio),
                fmt_interval(s.in_process),
            ]
            + [fmt_interval(s.served.get(p)) for p in protocols]
            + [flag_codes("; ".join(flags))]
        )
    return md_table(header, body, "llr" + "r" * (len(header) - 4) + "l") + flag_legend(used)


def ratio_lines(ratios: Sequence[RatioRow]) -> list[str]:
    body = [
        [
            f"{r['runtime']}/{r['device']}",
            protocol_name(r["protocol"]),
            str(r["batch_size"]),
            str(r["concurrency"]),
            str(r["repeats"]),
            fmt_rate(r["standard_images_per_s"]),
            fmt_rate(r["separable_images_per_s"]),
            fmt_interval(r),
            flag_codes(r["flag"]),
        ]
        for r in ratios
    ]
    lines = md_table(
        [
            "runtime",
            "mode",
            "batch",
            "users",
            "runs",
            "standard img/s",
            "separable img/s",
            "separable ÷ standard [95%]",
            "flag",
        ],
        body,
        "llrrrrrrl",
    )
    return lines + flag_legend([r["flag"] for r in ratios])


_BREAKDOWN_HEADER = [
    "runtime",
    "model",
    "protocol",
    "batch",
    "users",
    "client mean ms",
    "client + transport",
    "decode",
    "queue",
    "encode",
    "inference",
    "floor / infer / op profile ms",
]


def _check_text(b: Breakdown) -> str:
    if b.check is None:
        return "—"
    return " / ".join(b.check.cells()) + ("" if b.agrees else " ⚠")


def breakdown_lines(items: Sequence[Breakdown]) -> list[str]:
    """The server's breakdown table: client mean, transport, each phase, the inference check."""
    body = [
        [
            f"{b.runtime}/{b.device}",
            b.model,
            protocol_name(b.protocol),
            str(b.batch_size),
            str(b.concurrency),
            fmt_ms(b.latency_ms),
            fmt_ms(b.client_transport_ms),
            fmt_ms(b.decode_ms),
            fmt_ms(b.queue_ms),
            fmt_ms(b.encode_ms),
            fmt_ms(b.infer_ms),
            _check_text(b),
        ]
        for b in items
    ]
    return md_table(_BREAKDOWN_HEADER, body, "lllrrrrrrrrr")


def agreement_lines(index: Index, opprofile: Sequence[Any]) -> list[str]:
    """Every served cell's three views of its inference time, per model, and the verdict."""
    body = []
    for key in sorted(k for k in index.repetitions if k.mode == "served"):
        found = agreement(index, key, opprofile)
        if found is None:
            continue
        body.append(
            [
                f"{key.runtime}/{key.device}",
                key.model,
                protocol_name(key.protocol),
                str(key.batch_size),
                str(key.concurrency),
                *found.cells(),
                found.short(),
            ]
        )
    if not body:
        return ["(no served cell with an in-process floor and a second view in this run)"]
    header = ["runtime", "model", "protocol", "batch", "users", "floor ms", "server infer ms"]
    header += ["op profile ms", "within 10% of the floor"]
    legend = [
        "",
        "[g]: each view beyond 10% of the floor and by how much; in flight = server infer ms × "
        "requests/s, the inferences running at once on average. The full reasons are in "
        "ratios.csv's flag column.",
    ]
    return md_table(header, body, "lllrrrrrl") + legend


def profile_lines(by_runtime: Mapping[str, Sequence[KindShare]]) -> list[str]:
    lines: list[str] = []
    for runtime, shares in by_runtime.items():
        lines += [f"### {runtime}", "", *opprofile_lines(shares), ""]
    return lines


def opprofile_lines(shares: Sequence[KindShare]) -> list[str]:
    body = [
        [
            s.model,
            str(s.batch_size),
            s.kind,
            fmt_ms(s.ms),
            f"{s.share:.0%}",
            f"{s.macs:,}" if s.macs else "—",
            f"{s.gmacs_per_s:.1f}" if s.gmacs_per_s else "—",
        ]
        for s in shares
        if s.ms > 0 or s.macs > 0
    ]
    return md_table(
        ["model", "batch", "layer kind", "ms per call", "share", "MACs per call", "GMAC/s"],
        body,
        "lrlrrrr",
    )
