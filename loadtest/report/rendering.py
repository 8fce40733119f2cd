"""report.md and the terminal summary of a run: tables, plots and the verdict."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from loadtest.cells import IN_PROCESS_PROTOCOL, Row
from loadtest.flops import macs_ratio
from loadtest.report.analysis import (
    BOOTSTRAP_RESAMPLES,
    RATIOS_CSV,
    STABLE_WITHIN,
    Breakdown,
    KindShare,
    Overhead,
    RatioRow,
    Speedup,
    breakdowns,
    compute_ratios,
    fmt_interval,
    overheads,
    profiles,
    speedups,
    write_ratios,
)
from loadtest.report.data import (
    PLOTS_DIR,
    SEPARABLE,
    STANDARD,
    Index,
    Run,
    cell_slug,
    completed,
    fmt_ms,
    fmt_pct,
    fmt_rate,
    fmt_x,
    load_run,
    protocol_name,
    row_key,
    saturated_cells,
)
from loadtest.report.plots import (
    best_cell,
    plot_flops_vs_reality,
    plot_latency_vs_concurrency,
    plot_opprofile,
    plot_server_breakdown,
    plot_serving_overhead,
    plot_throughput_vs_batch,
)
from loadtest.report.verdict import verdict

REPORT_NAME = "report.md"


def md_table(header: Sequence[str], rows: Iterable[Sequence[str]], align: str = "") -> list[str]:
    align = align or "l" + "r" * (len(header) - 1)
    marks = {"l": ":---", "r": "---:", "c": ":---:"}
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(marks[a] for a in align) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


def _sort_key(row: Row) -> tuple[Any, ...]:
    return (
        row["mode"] != "in-process",
        row["model"] != STANDARD,
        row["protocol"] != "grpc",
        row["protocol"],
        row["batch_size"],
        row["concurrency"],
    )


def _summary_lines(index: Index, saturated: set[str]) -> list[str]:
    lines: list[str] = []
    for runtime, device in index.groups():
        lines += ["", f"### {runtime} on {device}", ""]
        rows = sorted(
            (r for r in index.rows if (r["runtime"], r["device"]) == (runtime, device)),
            key=_sort_key,
        )
        body = []
        for r in rows:
            slugs = {cell_slug(x) for x in index.repetitions.get(row_key(r), [])}
            mark = " ⚠" if slugs & saturated else ""
            repeats = len(index.repetitions.get(row_key(r), []))
            body.append(
                [
                    r["model"],
                    protocol_name(r["protocol"]),
                    str(r["batch_size"]),
                    str(r["concurrency"]),
                    str(repeats),
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
            )
        lines += md_table(
            [
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
            ],
            body,
            "llrrr" + "r" * 11,
        )
    return lines


def _pivot_latency(index: Index) -> list[str]:
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


def _pivot_throughput(index: Index) -> list[str]:
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


def _overhead_lines(items: Sequence[Overhead]) -> list[str]:
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


def _machine_lines(machine: dict[str, Any]) -> list[str]:
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


def _speedup_lines(table: Sequence[Speedup]) -> list[str]:
    protocols = sorted({p for s in table for p in s.served}, key=lambda p: (p != "grpc", p))
    header = ["runtime", "device", "batch", "MACs ratio", "in-process"]
    header += [f"served {protocol_name(p)}" for p in protocols]
    header += ["flags"]
    body = []
    for s in table:
        flags = sorted(
            {
                f"{name}: {row['flag']}"
                for name, row in [
                    ("in-process", s.in_process),
                    *[(protocol_name(p), s.served.get(p)) for p in protocols],
                ]
                if row and row["flag"]
            }
        )
        body.append(
            [
                s.runtime,
                s.device,
                str(s.batch_size),
                fmt_x(s.macs_ratio),
                fmt_interval(s.in_process),
            ]
            + [fmt_interval(s.served.get(p)) for p in protocols]
            + ["; ".join(flags) or "—"]
        )
    return md_table(header, body, "llr" + "r" * (len(header) - 4) + "l")


def _ratio_lines(ratios: Sequence[RatioRow]) -> list[str]:
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
            r["flag"] or "—",
        ]
        for r in ratios
    ]
    return md_table(
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


def _breakdown_lines(items: Sequence[Breakdown]) -> list[str]:
    body = []
    for b in items:
        check = (
            "—"
            if b.check is None
            else f"{b.check[0]:.3f}–{b.check[1]:.3f} vs {b.check[2]:.3f}–{b.check[3]:.3f}"
            + ("" if b.agrees else " ⚠")
        )
        body.append(
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
                check,
            ]
        )
    return md_table(
        [
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
            "inference vs in-process ms",
        ],
        body,
        "lllrrrrrrrrr",
    )


def _profile_lines(by_runtime: Mapping[str, Sequence[KindShare]]) -> list[str]:
    lines: list[str] = []
    for runtime, shares in by_runtime.items():
        lines += [f"### {runtime}", "", *_opprofile_lines(shares), ""]
    return lines


def _opprofile_lines(shares: Sequence[KindShare]) -> list[str]:
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


def _pinning_line(run: Run) -> str:
    pinning = run.pinning
    server, generator = pinning["server_cpus"], pinning["generator_cpus"]
    if not server and not generator:
        return (
            "- CPU split: none — the server, the in-process floor and Locust shared all "
            f"{run.machine.get('usable_cores', '?')} cores."
        )

    def cpus(value: list[int] | None) -> str:
        return ",".join(map(str, value)) if value else "all"

    return (
        f"- CPU split: server and in-process floor on CPU {cpus(server)}, Locust on CPU "
        f"{cpus(generator)} (`--server-cpus` / `--generator-cpus`)."
    )


def _method_lines(run: Run, ratios: Sequence[RatioRow]) -> list[str]:
    repeats = max((r["repeats"] for r in ratios), default=1)
    return [
        f"- Repetitions: each cell measured {repeats} time(s), the two models alternating "
        "(A B B A …) so that drift hits both; tables show the median over repetitions.",
        "- Ratios are separable ÷ standard images/s (above 1x the separable model is faster), "
        "the median of the paired repetitions; the interval is a 95% percentile bootstrap "
        f"({BOOTSTRAP_RESAMPLES:,} resamples) over repetitions and, within each, its "
        "per-second throughput samples (in-process: ten slices of the window). "
        'An interval containing 1 reads "no measurable difference".',
        f"- Stability (as perf_analyzer): a model's repetitions are `unstable` unless three in a "
        f"row lie within ±{STABLE_WITHIN:.0%} of their mean.",
        "- A served ratio above the in-process ratio beyond its interval is flagged "
        "`suspect: interference` and never headlined; the server's inference time at one user "
        "(mean) must match the in-process p50 of the same call (intervals over repetitions, "
        "widened by 10%), else the cell is flagged.",
        _pinning_line(run),
    ]


def _image(plots: dict[str, Path | None], key: str, alt: str) -> list[str]:
    path = plots.get(key)
    return ["", f"![{alt}]({PLOTS_DIR}/{path.name})", ""] if path else ["", "(no data)", ""]


def _make_plots(
    run_dir: Path,
    index: Index,
    table: Sequence[Speedup],
    over: Sequence[Overhead],
    breakdown: Sequence[Breakdown],
    shares: Mapping[str, Sequence[KindShare]],
) -> dict[str, Path | None]:
    plots_dir = run_dir / PLOTS_DIR
    plots_dir.mkdir(exist_ok=True)
    for old in plots_dir.glob("*.png"):
        old.unlink()
    return {
        "flops": plot_flops_vs_reality(table, plots_dir / "flops_vs_reality.png"),
        "latency": plot_latency_vs_concurrency(index, plots_dir / "latency_vs_concurrency.png"),
        "throughput": plot_throughput_vs_batch(index, plots_dir / "throughput_vs_batch.png"),
        "overhead": plot_serving_overhead(over, plots_dir / "serving_overhead.png"),
        "breakdown": plot_server_breakdown(breakdown, plots_dir / "server_breakdown.png"),
        "opprofile": plot_opprofile(shares, plots_dir / "opprofile.png"),
    }


def _setup_lines(run: Run) -> list[str]:
    grid = run.meta.get("grid", {})
    grid_text = (
        ", ".join(
            f"{k}={','.join(map(str, v)) if isinstance(v, list) else v}" for k, v in grid.items()
        )
        if grid
        else "?"
    )
    return [
        *_machine_lines(run.machine),
        f"- Device: {run.meta.get('device', '?')}; grid: {grid_text}",
        _pinning_line(run),
        f"- Command: `{run.command or '?'}`",
        "- Raw data: `results.csv` (one row per repetition), `ratios.csv`, `opprofile.csv`, "
        "`results.json`, `run.json` (per-cell details, Locust commands, throughput samples), "
        "`machine.json`, Locust's CSV/HTML/logs under `locust/`, server logs `server-*.log`, "
        "in-process measurements `inprocess-*.json`.",
    ]


def render(run_dir: Path) -> Path:
    """Write ``report.md``, ``ratios.csv`` and ``plots/*.png`` in ``run_dir``; returns the
    report's path."""
    run = load_run(run_dir)
    index = Index(run.rows)
    costs = run.costs
    ratio = macs_ratio(costs)
    ratios = write_ratios(run_dir, compute_ratios(run))
    table = speedups(ratios, ratio)
    over = overheads(index)
    breakdown = breakdowns(index)
    shares = profiles(run)
    plots = _make_plots(run_dir, index, table, over, breakdown, shares)
    saturated = saturated_cells(run.meta)
    cell_notes = [
        f"`{c['cell']}`: {note}" for c in run.meta.get("cells", []) for note in c.get("notes", [])
    ]
    notes = list(run.meta.get("notes", [])) + cell_notes
    lines = [
        f"# Load test report — {run.name}",
        "",
        f"Does the separable model's {ratio:.2f}x saving in multiply-adds survive deployment?",
        "",
        "## Verdict",
        "",
        verdict(ratios, costs, shares=shares, breakdown=breakdown),
        "",
        "## Method",
        "",
        *_method_lines(run, ratios),
        "",
        "## FLOPs vs reality",
        "",
        f"Theoretical speedup = MACs(standard) ÷ MACs(separable) = "
        f"{int(costs[STANDARD]['macs']):,} ÷ {int(costs[SEPARABLE]['macs']):,} = {ratio:.2f}x. "
        "Measured = separable ÷ standard images/s with its 95% interval, in-process and served "
        "at the lowest concurrency.",
        "",
        *_speedup_lines(table),
        *_image(plots, "flops", "FLOPs vs reality"),
        "## Ratios per cell",
        "",
        f"Every cell of `{RATIOS_CSV}`.",
        "",
        *_ratio_lines(ratios),
        "",
        "## Summary per runtime",
        "",
        "Medians over repetitions (runs); latencies from microsecond HDR histograms over the "
        "measurement window; CPU in % of one core (generator = all Locust processes, server = "
        "the server's process tree, in-process rows: the measuring process). ⚠ = the load "
        "generator was saturated. No accuracy where no request completed.",
        *_summary_lines(index, saturated),
        "",
        "## Latency vs concurrency",
        "",
        *_pivot_latency(index),
        *_image(plots, "latency", "Latency vs concurrency"),
        "## Throughput vs batch size",
        "",
        "Images per second; served columns take the best throughput over the measured "
        "concurrency levels.",
        "",
        *_pivot_throughput(index),
        *_image(plots, "throughput", "Throughput vs batch size"),
        "## Serving overhead",
        "",
        "Served p50 at the lowest concurrency minus in-process p50: server, transport, "
        "serialization and the network stack, per request.",
        "",
        *(_overhead_lines(over) if over else ["(no in-process rows to compare with)"]),
        *_image(plots, "overhead", "Serving overhead"),
        "## Server breakdown",
        "",
        "Mean ms per request at the lowest concurrency, from the server's "
        "`serving_request_phase_seconds` histogram scraped before and after each cell; the "
        "client's mean is users ÷ requests/s. ⚠ = the server's inference time and the "
        "in-process call time disagree beyond the interval.",
        "",
        *(
            _breakdown_lines(breakdown)
            if breakdown
            else ["(the server exposed no per-phase histogram in this run)"]
        ),
        *_image(plots, "breakdown", "Server breakdown"),
        "## Per-operator profile",
        "",
        "Each runtime's own profiler (`opprofile.csv`; ONNX Runtime's kernel times, TensorFlow's "
        "op self-times): time per call by layer kind, multiply-adds from the graph, GMAC/s "
        "achieved; `call overhead` is the call's time that no operator accounts for.",
        "",
        *(_profile_lines(shares) if shares else ["(no per-operator profile in this run)"]),
        *_image(plots, "opprofile", "Per-operator profile"),
        "## Notes",
        "",
        *([f"- {n}" for n in notes] or ["- none"]),
        "",
        "## Setup",
        "",
        *_setup_lines(run),
        "",
    ]
    report = run_dir / REPORT_NAME
    report.write_text("\n".join(lines))
    return report


def headline(run_dir: Path) -> str:
    """The README's account of a run: its generated verdict and its FLOPs-vs-reality table,
    recomputed from the run's saved results exactly as ``render`` does (nothing is written).
    ``python -m loadtest.report --headline RUN_DIR`` prints it; a test holds the README to it."""
    run = load_run(run_dir)
    index = Index(run.rows)
    costs = run.costs
    ratios = compute_ratios(run)
    table = speedups(ratios, macs_ratio(costs))
    return "\n".join(
        [
            verdict(ratios, costs, shares=profiles(run), breakdown=breakdowns(index)),
            "",
            *_speedup_lines(table),
        ]
    )


# --- terminal summary -----------------------------------------------------------------------------


def print_summary(run_dir: Path, console: Console) -> None:
    """The per-runtime summary and the FLOPs-vs-reality table, for the end of a sweep."""
    run = load_run(run_dir)
    index = Index(run.rows)
    for runtime, device in index.groups():
        table = Table(title=f"{runtime} on {device}", title_justify="left")
        columns = (
            "model",
            "protocol",
            "batch",
            "users",
            "runs",
            "images/s",
            "p50 ms",
            "p99 ms",
            "errors",
            "gen CPU",
            "srv CPU",
        )
        for column in columns:
            table.add_column(column, justify="left" if column in ("model", "protocol") else "right")
        for r in sorted(
            (r for r in index.rows if (r["runtime"], r["device"]) == (runtime, device)),
            key=_sort_key,
        ):
            table.add_row(
                r["model"],
                protocol_name(r["protocol"]),
                str(r["batch_size"]),
                str(r["concurrency"]),
                str(len(index.repetitions.get(row_key(r), []))),
                fmt_rate(r["images_per_s"]),
                fmt_ms(r["p50_ms"]),
                fmt_ms(r["p99_ms"]),
                str(r["errors"]),
                fmt_pct(r["generator_cpu"]),
                fmt_pct(r["server_cpu"]),
            )
        console.print(table)
    ratio = macs_ratio(run.costs)
    speed = speedups(compute_ratios(run), ratio)
    protocols = sorted({p for s in speed for p in s.served}, key=lambda p: (p != "grpc", p))
    table = Table(
        title="FLOPs vs reality: separable ÷ standard images/s [95% interval]",
        title_justify="left",
    )
    for column in (
        "runtime",
        "device",
        "batch",
        "MACs ratio",
        "in-process",
        *[f"served {protocol_name(p)}" for p in protocols],
    ):
        table.add_column(column, justify="left" if column in ("runtime", "device") else "right")
    for s in speed:
        table.add_row(
            s.runtime,
            s.device,
            str(s.batch_size),
            fmt_x(s.macs_ratio),
            fmt_interval(s.in_process),
            *[fmt_interval(s.served.get(p)) for p in protocols],
        )
    console.print(table)
