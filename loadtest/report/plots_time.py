"""Plots of where the time goes: serving overhead, the server's own phases, and the operator
profile by layer kind (the measured-speed plots are :mod:`loadtest.report.plots`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from loadtest.report.breakdown import Breakdown, KindShare, Overhead
from loadtest.report.data import MODEL_COLORS, SEPARABLE, STANDARD, protocol_name
from loadtest.report.plots import finish, panel_grid, pyplot

_BREAKDOWN_PARTS: tuple[tuple[str, Callable[[Breakdown], float], float], ...] = (
    ("model inference", lambda b: b.infer_ms, 1.0),
    ("server decode + queue + encode", lambda b: b.framework_ms, 0.55),
    ("client + transport", lambda b: b.client_transport_ms, 0.25),
)


def _overhead_panel(
    ax: Any, items: Sequence[Overhead], runtime: str, device: str, batch: int
) -> None:
    """One panel: per protocol, each model's in-process p50 with the serving overhead on top."""
    import numpy as np

    width = 0.38
    mine = [o for o in items if (o.runtime, o.device, o.batch_size) == (runtime, device, batch)]
    protocols = list(dict.fromkeys(o.protocol for o in mine))
    x = np.arange(len(protocols))
    for k, model in enumerate((STANDARD, SEPARABLE)):
        lookup = {o.protocol: o for o in mine if o.model == model}
        found = [lookup.get(p) for p in protocols]
        # The bar's height is always the served p50; when noise puts the in-process p50
        # above it, the whole bar is compute and the overhead is shown as zero.
        compute = [min(o.in_process_ms, o.served_ms) if o else np.nan for o in found]
        extra = [max(o.overhead_ms, 0.0) if o else np.nan for o in found]
        offset = (k - 0.5) * width
        color = MODEL_COLORS[model]
        ax.bar(x + offset, compute, width, color=color, label=f"{model}: in-process p50")
        ax.bar(
            x + offset,
            extra,
            width,
            bottom=compute,
            color=color,
            alpha=0.35,
            hatch="//",
            label=f"{model}: serving overhead",
        )
    ax.set_xticks(x, [protocol_name(p) for p in protocols])
    ax.set_ylabel("p50 latency (ms)")
    ax.set_title(f"{runtime}/{device}, batch {batch}", fontsize=10)
    ax.grid(axis="y", alpha=0.3)


def _breakdown_panel(
    ax: Any, items: Sequence[Breakdown], group: tuple[str, str, str], batch: int
) -> None:
    """One panel: per served cell, inference, the server's framework time and the client's."""
    import numpy as np

    runtime, device, protocol = group
    mine = [
        b
        for b in items
        if (b.runtime, b.device, b.protocol, b.batch_size) == (runtime, device, protocol, batch)
    ]
    x = np.arange(len(mine))
    bottom = np.zeros(len(mine))
    for label, value, alpha in _BREAKDOWN_PARTS:
        heights = np.array([value(b) for b in mine])
        ax.bar(
            x,
            heights,
            0.6,
            bottom=bottom,
            color=[MODEL_COLORS.get(b.model, "grey") for b in mine],
            alpha=alpha,
            edgecolor="black",
            linewidth=0.5,
            label=label,
        )
        bottom += heights
    ax.set_xticks(x, [f"{b.model}\n{b.concurrency} user(s)" for b in mine], fontsize=8)
    ax.set_ylabel("mean ms per request")
    ax.set_title(f"{runtime}/{device} {protocol_name(protocol)}, batch {batch}", fontsize=9)
    ax.grid(axis="y", alpha=0.3)


def _opprofile_panel(
    ax: Any, runtime: str, shares: Sequence[KindShare], batch: int, colors: dict[str, Any]
) -> None:
    """One panel: per model, ms per call stacked by layer kind."""
    import numpy as np

    kinds = list(colors)
    models = [
        m
        for m in (STANDARD, SEPARABLE)
        if any(s.model == m and s.batch_size == batch for s in shares)
    ]
    x = np.arange(len(models))
    bottom = np.zeros(len(models))
    for kind in kinds:
        heights = np.array(
            [
                sum(s.ms for s in shares if (s.model, s.batch_size, s.kind) == (m, batch, kind))
                for m in models
            ]
        )
        ax.bar(x, heights, 0.6, bottom=bottom, color=colors[kind], label=kind)
        bottom += heights
    ax.set_xticks(x, models)
    ax.set_ylabel("ms per call")
    ax.set_title(f"{runtime}, batch {batch}", fontsize=10)
    ax.grid(axis="y", alpha=0.3)


def plot_serving_overhead(items: Sequence[Overhead], path: Path) -> Path | None:
    """Stacked bars per runtime and batch size: in-process p50 + serving overhead = served p50."""
    if not items:
        return None

    groups = list(dict.fromkeys((o.runtime, o.device) for o in items))
    batches = sorted({o.batch_size for o in items})
    fig, axes = panel_grid(
        len(groups), len(batches), (max(4.5 * len(batches), 6.0), 3.4 * len(groups) + 0.6)
    )
    for i, (runtime, device) in enumerate(groups):
        for j, batch in enumerate(batches):
            _overhead_panel(axes[i][j], items, runtime, device, batch)
    return finish(fig, "Serving overhead: served p50 = in-process p50 + overhead", path)


def plot_server_breakdown(items: Sequence[Breakdown], path: Path) -> Path | None:
    """Stacked bars per served cell: model inference, server framework (decode + queue +
    encode), client + transport = the client's mean latency."""
    if not items:
        return None

    groups = list(dict.fromkeys((b.runtime, b.device, b.protocol) for b in items))
    batches = sorted({b.batch_size for b in items})
    fig, axes = panel_grid(
        len(groups), len(batches), (max(4.0 * len(batches), 6.0), 3.2 * len(groups) + 0.6)
    )
    for i, (runtime, device, protocol) in enumerate(groups):
        for j, batch in enumerate(batches):
            _breakdown_panel(axes[i][j], items, (runtime, device, protocol), batch)
    return finish(
        fig,
        "Where a served request's time goes",
        path,
    )


def plot_opprofile(by_runtime: Mapping[str, Sequence[KindShare]], path: Path) -> Path | None:
    """Stacked bars of ms per call by layer kind, per model; one row of panels per runtime, one
    panel per batch size."""
    groups = [(runtime, shares) for runtime, shares in by_runtime.items() if shares]
    if not groups:
        return None
    plt = pyplot()

    batches = sorted({s.batch_size for _, shares in groups for s in shares})
    kinds = list(dict.fromkeys(s.kind for _, shares in groups for s in shares))
    colors = dict(zip(kinds, plt.get_cmap("tab10").colors, strict=False))
    fig, axes = panel_grid(
        len(groups), len(batches), (3.6 * len(batches) + 1, 3.6 * len(groups) + 0.8)
    )
    for i, (runtime, shares) in enumerate(groups):
        for j, batch in enumerate(batches):
            _opprofile_panel(axes[i][j], runtime, shares, batch, colors)
    return finish(fig, "Per-operator profile: time per call by layer kind", path)
