"""``--compare``: two runs side by side (ratios, per-cell images/s and latency, verdicts)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from loadtest.cells import CellKey, Row
from loadtest.flops import macs_ratio
from loadtest.report.analysis import RatioRow, Speedup, compute_ratios, fmt_interval, speedups
from loadtest.report.breakdown import profiles
from loadtest.report.data import (
    PLOTS_DIR,
    Index,
    Run,
    fmt_ms,
    fmt_rate,
    fmt_x,
    load_run,
    num,
    protocol_name,
)
from loadtest.report.plots import pyplot
from loadtest.report.tables import md_table
from loadtest.report.verdict import verdict

COMPARE_NAME = "compare.md"


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b <= 0:
        return None
    return a / b


def _ips(row: Row | None) -> float | None:
    return num(row["images_per_s"]) if row else None


def _compared_key(row: Row, runtime: str | None = None) -> CellKey:
    """The cell a row is compared under: all repetitions and devices alike (a CPU run lines up
    with a GPU run), under ``runtime`` when it is paired with another."""
    key = CellKey.from_row(row)
    return replace(key, runtime=runtime or key.runtime, device="", repeat=0)


def _order(key: CellKey) -> tuple[str, ...]:
    # As text, the order the table has always had (batch "256" before "32").
    return tuple(
        str(v)
        for v in (key.runtime, key.model, key.protocol, key.mode, key.batch_size, key.concurrency)
    )


def _devices(run: Run) -> str:
    return ",".join(sorted({r["device"] for r in run.rows})) or "?"


def _machine_lines(a: Run, b: Run) -> list[str]:
    gpus = " | ".join(
        ", ".join(g["name"] for g in m.machine.get("gpus", [])) or "none" for m in (a, b)
    )
    return [
        f"# Comparison — A: {a.name} vs B: {b.name}",
        "",
        "| | A | B |",
        "|:---|:---|:---|",
        f"| run | `{a.path}` | `{b.path}` |",
        f"| CPU | {a.machine.get('cpu_model', '?')} | {b.machine.get('cpu_model', '?')} |",
        f"| cores | {a.machine.get('usable_cores', '?')} | {b.machine.get('usable_cores', '?')} |",
        f"| GPU | {gpus} |",
        f"| device | {_devices(a)} | {_devices(b)} |",
        "",
    ]


SpeedKey = tuple[str, int]  # (runtime, batch size)


def _speedup_table(
    keys: list[SpeedKey], speed_a: dict[SpeedKey, Speedup], speed_b: dict[SpeedKey, Speedup]
) -> list[str]:
    protocols = sorted(
        {p for s in [*speed_a.values(), *speed_b.values()] for p in s.served},
        key=lambda p: (p != "grpc", p),
    )
    header = ["runtime", "batch", "in-process A", "in-process B"]
    for p in protocols:
        header += [f"{protocol_name(p)} A", f"{protocol_name(p)} B"]
    body = []
    for key in keys:
        sa, sb = speed_a.get(key), speed_b.get(key)
        cells = [
            key[0],
            str(key[1]),
            fmt_interval(sa.in_process if sa else None),
            fmt_interval(sb.in_process if sb else None),
        ]
        for p in protocols:
            cells += [
                fmt_interval(sa.served.get(p) if sa else None),
                fmt_interval(sb.served.get(p) if sb else None),
            ]
        body.append(cells)
    return md_table(header, body, "lr" + "r" * (len(header) - 2))


def _cell_cells(key: CellKey, ra: Row | None, rb: Row | None, pairs: dict[str, str]) -> list[str]:
    runtime = key.runtime
    if runtime in pairs:
        runtime = f"{runtime} / {pairs[runtime]}"
    return [
        runtime,
        key.model,
        protocol_name(key.protocol),
        str(key.batch_size),
        str(key.concurrency),
        fmt_rate(_ips(ra)),
        fmt_rate(_ips(rb)),
        fmt_x(_ratio(_ips(rb), _ips(ra))),
        fmt_ms(ra["p50_ms"] if ra else None),
        fmt_ms(rb["p50_ms"] if rb else None),
        fmt_ms(ra["p99_ms"] if ra else None),
        fmt_ms(rb["p99_ms"] if rb else None),
    ]


_CELL_HEADER = [
    "runtime",
    "model",
    "protocol",
    "batch",
    "users",
    "images/s A",
    "images/s B",
    "B ÷ A",
    "p50 ms A",
    "p50 ms B",
    "p99 ms A",
    "p99 ms B",
]


def _per_cell_lines(a: Run, b: Run, pairs: dict[str, str]) -> list[str]:
    # B's cells keyed under the A runtime they are paired with.
    b_to_a = {runtime_b: runtime_a for runtime_a, runtime_b in pairs.items()}
    rows_a = {_compared_key(r): r for r in Index(a.rows).rows}
    rows_b = {_compared_key(r, b_to_a.get(r["runtime"])): r for r in Index(b.rows).rows}
    lines = ["## Per cell", "", "B ÷ A above 1 means B is faster (images/s).", ""]
    if pairs:
        paired = ", ".join(f"{ra} in A with {rb} in B" for ra, rb in pairs.items())
        lines += [f"Runtimes paired: {paired} (shown as `A / B`).", ""]
    body = [
        _cell_cells(key, rows_a.get(key), rows_b.get(key), pairs)
        for key in sorted(set(rows_a) | set(rows_b), key=_order)
    ]
    return lines + md_table(_CELL_HEADER, body, "lllrrrrrrrrr")


def compare(
    run_a: Path,
    run_b: Path,
    output: Path | None = None,
    pair_runtimes: dict[str, str] | None = None,
) -> Path:
    """Write a side-by-side comparison of two runs; returns the path of ``compare.md``.

    ``pair_runtimes`` ({runtime in A: runtime in B}) lines up cells of different runtimes in the
    per-cell table, e.g. ONNX Runtime on a CPU machine against the torch runtime on a GPU.
    """
    a, b = load_run(run_a), load_run(run_b)
    output = output or run_a.parent / f"compare-{a.name}-vs-{b.name}"
    (output / PLOTS_DIR).mkdir(parents=True, exist_ok=True)
    ratios_a, ratios_b = compute_ratios(a), compute_ratios(b)
    lines = [
        *_machine_lines(a, b),
        *_flops_lines(a, b, ratios_a, ratios_b, output / PLOTS_DIR / "speedup_compare.png"),
        *_per_cell_lines(a, b, pair_runtimes or {}),
        "",
        "## Verdicts",
        "",
        f"**A** ({a.name}): {verdict(ratios_a, a.costs, shares=profiles(a))}",
        "",
        f"**B** ({b.name}): {verdict(ratios_b, b.costs, shares=profiles(b))}",
        "",
    ]
    path = output / COMPARE_NAME
    path.write_text("\n".join(lines))
    return path


def _flops_lines(
    a: Run, b: Run, ratios_a: list[RatioRow], ratios_b: list[RatioRow], plot_path: Path
) -> list[str]:
    """The speedups of both runs side by side, and their plot."""
    ratio = macs_ratio(a.costs)
    speed_a = {(s.runtime, s.batch_size): s for s in speedups(ratios_a, ratio)}
    speed_b = {(s.runtime, s.batch_size): s for s in speedups(ratios_b, macs_ratio(b.costs))}
    keys = sorted(set(speed_a) | set(speed_b))
    lines = [
        "## FLOPs vs reality",
        "",
        f"Speedup of separable over standard (theory {ratio:.2f}x).",
        "",
        *_speedup_table(keys, speed_a, speed_b),
    ]
    plot = _plot_compare(
        keys,
        speed_a=speed_a,
        speed_b=speed_b,
        ratio=ratio,
        name_a=a.name,
        name_b=b.name,
        path=plot_path,
    )
    if plot:
        lines += ["", f"![speedup A vs B]({PLOTS_DIR}/{plot.name})", ""]
    return lines


def _best(s: Speedup | None) -> tuple[float, float]:
    """(in-process ratio, best served ratio) of one (runtime, batch); NaN where missing."""
    nan = float("nan")
    if s is None:
        return nan, nan
    served = [r["ratio_median"] for r in s.served.values() if r["ratio_median"] is not None]
    in_process = s.in_process["ratio_median"] if s.in_process else None
    return (
        in_process if in_process is not None else nan,
        max(served) if served else nan,
    )


def _plot_compare(
    keys: Sequence[tuple[str, int]],
    *,
    speed_a: dict[tuple[str, int], Speedup],
    speed_b: dict[tuple[str, int], Speedup],
    ratio: float,
    name_a: str,
    name_b: str,
    path: Path,
) -> Path | None:
    if not keys:
        return None
    plt = pyplot()
    import numpy as np

    x = np.arange(len(keys))
    width = 0.2
    fig, ax = plt.subplots(figsize=(max(6.0, 1.5 * len(keys) + 2), 4.5))
    series = [
        (f"A in-process ({name_a})", [_best(speed_a.get(k))[0] for k in keys]),
        (f"B in-process ({name_b})", [_best(speed_b.get(k))[0] for k in keys]),
        (f"A served, best protocol ({name_a})", [_best(speed_a.get(k))[1] for k in keys]),
        (f"B served, best protocol ({name_b})", [_best(speed_b.get(k))[1] for k in keys]),
    ]
    for i, (label, values) in enumerate(series):
        ax.bar(x + (i - 1.5) * width, values, width, label=label)
    ax.axhline(ratio, color="black", linestyle="--", label=f"theory {ratio:.2f}x")
    ax.axhline(1.0, color="grey", linestyle=":")
    ax.set_xticks(x, [f"{r}\nbatch {b}" for r, b in keys], fontsize=8)
    ax.set_ylabel("speedup of separable over standard (×)")
    ax.set_title("FLOPs vs reality: run A vs run B")
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
