"""Per-runtime facts of a run: what the separable model's convolutions became (the sweep's
``executed-graph.json``) next to their GMAC/s, and served gRPC at batch 256 against the runtime's
own in-process throughput with the server's resident memory after the cell.

Both read files the sweep may not have written (runs before they existed): absent, the report
says "not recorded in this run".
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

from loadtest.cells import IN_PROCESS_PROTOCOL
from loadtest.report.breakdown import KindShare
from loadtest.report.data import SEPARABLE, STANDARD, Index, Key, fmt_rate, num
from loadtest.report.tables import md_table

EXECUTED_GRAPH = "executed-graph.json"
NOT_RECORDED = "not recorded in this run"
SERVED_FLOOR_TARGET = 0.9  # served gRPC at batch 256 ≥ 0.9x the runtime's in-process images/s
TARGET_BATCH = 256


def read_executed_graph(run_dir: Path) -> dict[str, Any]:
    """``executed-graph.json``: {runtime: {model: {"nodes": [...], "summary": {...}}}}; ``{}``
    when absent or unreadable."""
    try:
        data = json.loads((run_dir / EXECUTED_GRAPH).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _gmacs(shares: Sequence[KindShare], kind: str) -> str:
    found = [s for s in shares if s.model == SEPARABLE and s.kind == kind and s.gmacs_per_s]
    return ", ".join(f"{s.gmacs_per_s:.1f} at batch {s.batch_size}" for s in found) or "—"


def kernel_lines(
    graph: Mapping[str, Any], shares: Mapping[str, Sequence[KindShare]], runtimes: Sequence[str]
) -> list[str]:
    """Per runtime: the depthwise and pointwise convolutions of the separable model, fused or
    with dedicated kernels (as executed), next to their GMAC/s from the operator profile."""
    body = []
    for runtime in runtimes:
        summary = ((graph.get(runtime) or {}).get(SEPARABLE) or {}).get("summary") or {}
        mine = shares.get(runtime, ())
        body.append(
            [
                runtime,
                str(summary.get("depthwise") or NOT_RECORDED),
                _gmacs(mine, "depthwise"),
                str(summary.get("pointwise") or NOT_RECORDED),
                _gmacs(mine, "pointwise"),
                str(summary.get("delegated") or "—"),
            ]
        )
    header = ["runtime", "depthwise became", "depthwise GMAC/s", "pointwise became"]
    header += ["pointwise GMAC/s", "delegated"]
    return md_table(header, body, "llrlrl")


def _rss(index: Index, key: Key | None) -> str:
    """The server's resident memory after a cell (``server_rss_mb``, median over repetitions),
    read from the raw rows so that a column the sweep adds later is found as it appears."""
    rows = index.repetitions.get(key, []) if key else []
    values = [
        v
        for v in (num(cast(Mapping[str, Any], r).get("server_rss_mb")) for r in rows)
        if v is not None
    ]
    return f"{statistics.median(values):,.0f} MB" if values else "not recorded"


def _served_floor_row(index: Index, group: tuple[str, str], model: str) -> list[str] | None:
    levels = index.values(
        "concurrency", runtime=group[0], device=group[1], protocol="grpc", batch_size=TARGET_BATCH
    )
    served_key = index.key(group, model, "grpc", TARGET_BATCH, levels[-1]) if levels else None
    served = index.by_key(served_key) if served_key else None
    floor = index.get(group, model, IN_PROCESS_PROTOCOL, TARGET_BATCH, 1)
    if served is None and floor is None:
        return None
    served_ips = num(served["images_per_s"]) if served else None
    floor_ips = num(floor["images_per_s"]) if floor else None
    ratio = served_ips / floor_ips if served_ips is not None and floor_ips else None
    met = "—" if ratio is None else ("met" if ratio >= SERVED_FLOOR_TARGET else "not met")
    return [
        f"{group[0]}/{group[1]}",
        model,
        str(levels[-1]) if levels else "—",
        fmt_rate(served_ips),
        fmt_rate(floor_ips),
        "—" if ratio is None else f"{ratio:.2f}x",
        met,
        _rss(index, served_key),
    ]


def served_floor_lines(index: Index) -> list[str]:
    """Per runtime and model: served gRPC at batch 256 (highest concurrency) ÷ in-process
    images/s, against 0.9x, and the server's resident memory after the cell."""
    body = [
        line
        for group in index.groups()
        for model in (STANDARD, SEPARABLE)
        if (line := _served_floor_row(index, group, model)) is not None
    ]
    if not body:
        return [f"(no batch {TARGET_BATCH} cells in this run)"]
    header = ["runtime", "model", "users", "served gRPC img/s", "in-process img/s"]
    header += ["served ÷ in-process", f"≥ {SERVED_FLOOR_TARGET}x", "server RSS after the cell"]
    return md_table(header, body, "llrrrrll")
