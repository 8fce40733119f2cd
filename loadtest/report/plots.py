"""The report's plots (matplotlib, Agg): PNGs under ``plots/``; every function returns the path,
or ``None`` when there is nothing to draw. Error bars are the 95 % intervals of ``ratios.csv``
for ratios and the lowest…highest value over repetitions for per-model figures."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from loadtest.cells import IN_PROCESS_PROTOCOL, Row
from loadtest.report.analysis import Speedup
from loadtest.report.data import MODEL_COLORS, SEPARABLE, STANDARD, Index, Key, num, protocol_name


def best_cell(
    index: Index, runtime: str, device: str, model: str, protocol: str, batch: int
) -> Key | None:
    """The cell of (runtime, device, model, protocol, batch) with the most images/s: the
    in-process one, or the best served one over the concurrency levels measured."""
    if protocol == IN_PROCESS_PROTOCOL:
        key = index.key((runtime, device), model, protocol, batch, 1)
        return key if key in index.repetitions else None
    best: tuple[float, Key] | None = None
    for concurrency in index.values(
        "concurrency", runtime=runtime, device=device, protocol=protocol, batch_size=batch
    ):
        row = index.get((runtime, device), model, protocol, batch, concurrency)
        value = num(row["images_per_s"]) if row else None
        if value is not None and (best is None or value > best[0]):
            best = (value, index.key((runtime, device), model, protocol, batch, concurrency))
    return best[1] if best else None


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plain(value: float, _position: Any = None) -> str:
    return f"{value:g}"


def _log2_x(ax: Any, values: Sequence[float]) -> None:
    """Log-2 x axis with ticks at exactly the measured values, written plainly (1, 8, 32)."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    ax.set_xscale("log", base=2)
    ticks = sorted(set(values))
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_major_formatter(FuncFormatter(_plain))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlim(ticks[0] / 1.5, ticks[-1] * 1.5)


def _log10_y(ax: Any) -> None:
    """Log-10 y axis labelled 1, 2, 5, 10, 20, 50… instead of powers of ten."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullLocator

    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(_plain))
    ax.yaxis.set_minor_locator(NullLocator())


def panel_grid(rows: int, columns: int, figsize: tuple[float, float]) -> tuple[Any, Any]:
    """A figure of ``rows`` x ``columns`` axes (always 2-D) in the constrained layout that
    ``finish`` needs for its title and legend."""
    return pyplot().subplots(rows, columns, figsize=figsize, squeeze=False, layout="constrained")


def finish(fig: Any, title: str, path: Path, dpi: int = 100) -> Path:
    """Title above the panels, one legend (from the first axes with labelled artists) below.

    The figure must use the constrained layout, which makes room for both.
    """
    plt = pyplot()
    fig.suptitle(title)
    for ax in fig.axes:
        handles, labels = ax.get_legend_handles_labels()
        if handles:
            fig.legend(
                handles, labels, loc="outside lower center", ncols=min(len(handles), 4), fontsize=8
            )
            break
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def _speedup_series(table: Sequence[Speedup]) -> dict[str, list[Any]]:
    """The ratio rows per bar series (in-process, then each protocol), measured ones only."""
    protocols = sorted({p for s in table for p in s.served}, key=lambda p: (p != "grpc", p))
    series: dict[str, list[Any]] = {"in-process": [s.in_process for s in table]}
    for protocol in protocols:
        series[f"served {protocol_name(protocol)}"] = [s.served.get(protocol) for s in table]
    return {k: v for k, v in series.items() if any(r and r["ratio_median"] is not None for r in v)}


def _ratio_bars(ax: Any, x: Any, series: dict[str, list[Any]]) -> float:
    """Grouped bars with 95 % intervals; the highest interval end."""
    import numpy as np

    width = 0.8 / len(series)
    top = 0.0
    for i, (name, rows) in enumerate(series.items()):
        values = [
            r["ratio_median"] if r and r["ratio_median"] is not None else np.nan for r in rows
        ]
        low = [
            v - r["ratio_low"] if r and r["ratio_low"] is not None else 0
            for v, r in zip(values, rows, strict=True)
        ]
        high = [
            r["ratio_high"] - v if r and r["ratio_high"] is not None else 0
            for v, r in zip(values, rows, strict=True)
        ]
        bars = ax.bar(
            x + (i - (len(series) - 1) / 2) * width,
            values,
            width,
            yerr=[low, high],
            capsize=3,
            label=name,
        )
        ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=1)
        top = max(
            [top] + [r["ratio_high"] or r["ratio_median"] or 0.0 for r in rows if r is not None]
        )
    return top


def plot_flops_vs_reality(table: Sequence[Speedup], path: Path) -> Path | None:
    """Grouped bars of measured ratios per (runtime, device, batch) with their 95 % intervals
    as error bars and the MACs ratio as a line."""
    if not table:
        return None
    plt = pyplot()
    import numpy as np

    series = _speedup_series(table)
    if not series:
        return None
    labels = [f"{s.runtime}/{s.device}\nbatch {s.batch_size}" for s in table]
    x = np.arange(len(table))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.4 * len(table) + 2), 4.5))
    top = max(table[0].macs_ratio, _ratio_bars(ax, x, series))
    ratio = table[0].macs_ratio
    ax.axhline(
        ratio,
        color="black",
        linestyle="--",
        linewidth=1.2,
        label=f"theory: {ratio:.2f}x fewer MACs",
    )
    ax.axhline(1.0, color="grey", linestyle=":", linewidth=1, label="no difference (1x)")
    ax.set_xticks(x, labels, fontsize=8)
    ax.set_ylabel("separable ÷ standard images/s (×)")
    ax.set_title("FLOPs vs reality: measured speedup, 95% intervals")
    ax.set_ylim(0, top * 1.15)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncols=3)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _latency_points(
    index: Index, key: Key, levels: Sequence[int]
) -> list[tuple[int, Row, tuple[float, float]]]:
    """(users, combined row, lowest and highest p50 over repetitions) at each level measured."""
    points = []
    for users in levels:
        at = replace(key, concurrency=users)
        found = index.by_key(at)
        if found and num(found["p50_ms"]) is not None:
            p50 = float(found["p50_ms"] or 0.0)
            points.append((users, found, index.spread(at, "p50_ms") or (p50, p50)))
    return points


def _latency_lines(ax: Any, model: str, points: list[tuple[int, Row, tuple[float, float]]]) -> None:
    """p50 with its spread over repetitions as error bars, and p99 dashed."""
    xs = [users for users, _, _ in points]
    p50 = [float(row["p50_ms"] or 0.0) for _, row, _ in points]
    color = MODEL_COLORS[model]
    ax.errorbar(
        xs,
        p50,
        yerr=[
            [v - spread[0] for v, (_, _, spread) in zip(p50, points, strict=True)],
            [spread[1] - v for v, (_, _, spread) in zip(p50, points, strict=True)],
        ],
        fmt="o-",
        color=color,
        capsize=3,
        label=f"{model} p50",
    )
    ax.plot(
        xs,
        [row["p99_ms"] for _, row, _ in points],
        "s--",
        color=color,
        alpha=0.7,
        label=f"{model} p99",
    )


def _latency_panel(
    ax: Any, index: Index, runtime: str, device: str, protocol: str, batch: int
) -> None:
    """One panel: p50 with its spread over repetitions, and p99, per model against users."""
    levels_seen: list[int] = []
    for model in (STANDARD, SEPARABLE):
        levels = index.values(
            "concurrency",
            runtime=runtime,
            device=device,
            model=model,
            protocol=protocol,
            batch_size=batch,
            mode="served",
        )
        points = _latency_points(
            index, index.key((runtime, device), model, protocol, batch, 1), levels
        )
        if points:
            _latency_lines(ax, model, points)
            levels_seen += [users for users, _, _ in points]
    ax.set_title(f"{runtime}/{device} {protocol_name(protocol)}, batch {batch}", fontsize=9)
    ax.set_xlabel("concurrent users")
    ax.set_ylabel("latency (ms)")
    if levels_seen:
        _log2_x(ax, levels_seen)
        _log10_y(ax)
    else:
        ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes)
    ax.grid(alpha=0.3, which="both")


def plot_latency_vs_concurrency(index: Index, path: Path) -> Path | None:
    """p50 (solid) and p99 (dashed) against users, both models, per runtime×protocol and batch."""
    panels = [
        (runtime, device, protocol)
        for runtime, device in index.groups()
        for protocol in index.protocols(runtime, device)
    ]
    batches = index.values("batch_size", mode="served")
    if not panels or not batches:
        return None
    fig, axes = panel_grid(len(panels), len(batches), (4.2 * len(batches), 3.2 * len(panels)))
    for i, (runtime, device, protocol) in enumerate(panels):
        for j, batch in enumerate(batches):
            _latency_panel(axes[i][j], index, runtime, device, protocol, batch)
    return finish(fig, "Latency vs concurrency (log scales)", path)


def _throughput_points(
    index: Index, runtime: str, device: str, model: str, protocol: str
) -> tuple[list[int], list[float], list[float], list[float]]:
    """(batch sizes, best images/s, distance down and up to the repetitions' extremes)."""
    xs: list[int] = []
    ys: list[float] = []
    low: list[float] = []
    high: list[float] = []
    for batch in index.values("batch_size", runtime=runtime, device=device):
        key = best_cell(index, runtime, device, model, protocol, batch)
        found = index.by_key(key) if key else None
        value = num(found["images_per_s"]) if found else None
        if key is None or value is None:
            continue
        spread = index.spread(key, "images_per_s") or (value, value)
        xs.append(batch)
        ys.append(value)
        low.append(value - spread[0])
        high.append(spread[1] - value)
    return xs, ys, low, high


def _throughput_panel(ax: Any, index: Index, runtime: str, device: str, column: str) -> None:
    """One panel: images/s per model against batch size, in-process or one protocol."""
    protocol = IN_PROCESS_PROTOCOL if column == "in-process" else column
    batches_seen: list[int] = []
    for model in (STANDARD, SEPARABLE):
        xs, ys, low, high = _throughput_points(index, runtime, device, model, protocol)
        if xs:
            ax.errorbar(
                xs,
                ys,
                yerr=[low, high],
                fmt="o-",
                capsize=3,
                color=MODEL_COLORS[model],
                label=model,
            )
            batches_seen += xs
    title = (
        "in-process"
        if column == "in-process"
        else (f"served {protocol_name(column)} (best concurrency)")
    )
    ax.set_title(f"{runtime}/{device}: {title}", fontsize=9)
    ax.set_xlabel("batch size (images per request)")
    ax.set_ylabel("throughput (images/s)")
    if batches_seen:
        _log2_x(ax, batches_seen)
        ax.set_ylim(bottom=0)
    else:
        ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes)
    ax.grid(alpha=0.3)


def plot_throughput_vs_batch(index: Index, path: Path) -> Path | None:
    """Images/s against batch size, both models: in-process and each protocol (best users)."""
    groups = index.groups()
    if not groups:
        return None
    columns = [
        "in-process",
        *sorted(
            {r["protocol"] for r in index.rows if r["mode"] == "served"},
            key=lambda p: (p != "grpc", p),
        ),
    ]
    fig, axes = panel_grid(len(groups), len(columns), (4.2 * len(columns), 3.3 * len(groups)))
    for i, (runtime, device) in enumerate(groups):
        for j, column in enumerate(columns):
            _throughput_panel(axes[i][j], index, runtime, device, column)
    return finish(fig, "Throughput vs batch size", path)
