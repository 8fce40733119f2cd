"""report.md and the terminal summary of a run: tables, plots and the verdict."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from loadtest.flops import macs_ratio
from loadtest.report.agreement import AGREE_WITHIN
from loadtest.report.analysis import (
    BOOTSTRAP_RESAMPLES,
    RATIOS_CSV,
    STABLE_WITHIN,
    RatioRow,
    Speedup,
    compute_ratios,
    fmt_interval,
    speedups,
    write_ratios,
)
from loadtest.report.breakdown import (
    Breakdown,
    KindShare,
    Overhead,
    breakdowns,
    overheads,
    profiles,
)
from loadtest.report.data import (
    PLOTS_DIR,
    SEPARABLE,
    STANDARD,
    Index,
    Run,
    fmt_ms,
    fmt_pct,
    fmt_rate,
    fmt_x,
    load_run,
    protocol_name,
    row_key,
    saturated_cells,
)
from loadtest.report.gap import fastest_lines, first_table_lines
from loadtest.report.plots import (
    plot_flops_vs_reality,
    plot_latency_vs_concurrency,
    plot_throughput_vs_batch,
)
from loadtest.report.plots_time import plot_opprofile, plot_server_breakdown, plot_serving_overhead
from loadtest.report.runtimes import (
    kernel_lines,
    read_executed_graph,
    served_floor_lines,
)
from loadtest.report.tables import (
    agreement_lines,
    breakdown_lines,
    machine_lines,
    overhead_lines,
    pivot_latency,
    pivot_throughput,
    profile_lines,
    ratio_lines,
    sort_key,
    speedup_lines,
    summary_lines,
)
from loadtest.report.verdict import verdict

REPORT_NAME = "report.md"


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
        "throughput samples over complete, equal windows only (Locust's whole seconds inside the "
        "measurement, the partial first and last dropped; in-process: ten equal slices of the "
        "window). A cell measured once shows its value and `(1 run)`, no interval. "
        'An interval containing 1 reads "no measurable difference". Tables show flag codes '
        "with a legend under them; `ratios.csv`'s flag column has the full text.",
        f"- Stability (as perf_analyzer): a model's repetitions are `unstable` unless three in a "
        f"row lie within ±{STABLE_WITHIN:.0%} of their mean.",
        "- A served ratio above the in-process ratio beyond its interval is flagged "
        "`suspect: interference` and never headlined. In every served cell, the in-process p50 "
        "per call (the floor), the server's mean inference phase and the op-profile sum must "
        f"agree within {AGREE_WITHIN:.0%}, else the cell is flagged with the measured numbers; a "
        "longer inference phase comes with the inferences in flight (infer ms × requests/s) and "
        "the server's CPU time per request (its CPU % ÷ requests/s) against the floor's call.",
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
        *machine_lines(run.machine),
        f"- Device: {run.meta.get('device', '?')}; grid: {grid_text}",
        _pinning_line(run),
        f"- Command: `{run.command or '?'}`",
        "- Raw data: `results.csv` (one row per repetition), `ratios.csv`, `opprofile.csv`, "
        "`results.json`, `run.json` (per-cell details, Locust commands, throughput samples), "
        "`machine.json`, Locust's CSV/HTML/logs under `locust/`, server logs `server-*.log`, "
        "in-process measurements `inprocess-*.json`.",
    ]


@dataclass(frozen=True)
class _Derived:
    """What ``report.md`` shows of a run, computed once."""

    run: Run
    index: Index
    ratio: float  # MACs standard ÷ separable
    ratios: list[RatioRow]
    table: list[Speedup]
    over: list[Overhead]
    breakdown: list[Breakdown]
    shares: dict[str, list[KindShare]]
    plots: dict[str, Path | None]


def _derive(run_dir: Path) -> _Derived:
    """Ratios (``ratios.csv`` written), speedups, overheads, breakdowns, profiles and plots."""
    run = load_run(run_dir)
    index = Index(run.rows)
    ratio = macs_ratio(run.costs)
    ratios = write_ratios(run_dir, compute_ratios(run))
    table = speedups(ratios, ratio)
    over = overheads(index)
    breakdown = breakdowns(index, run.opprofile)
    shares = profiles(run)
    plots = _make_plots(run_dir, index, table, over, breakdown, shares)
    return _Derived(run, index, ratio, ratios, table, over, breakdown, shares, plots)


def _notes(run: Run) -> list[str]:
    cell_notes = [
        f"`{c['cell']}`: {note}" for c in run.meta.get("cells", []) for note in c.get("notes", [])
    ]
    return list(run.meta.get("notes", [])) + cell_notes


def _headline_block(
    run: Run,
    index: Index,
    ratios: Sequence[RatioRow],
    shares: Mapping[str, Sequence[KindShare]],
    breakdown: Sequence[Breakdown],
) -> list[str]:
    """The first table, the fastest runtimes and the verdict: report.md's verdict section and
    README's headline (``--headline``), the same lines."""
    ratio = macs_ratio(run.costs)
    return [
        f"Separable ÷ standard images/s per runtime ({ratio:.2f}x fewer multiply-adds on paper): "
        "in-process and served over gRPC at the lowest concurrency measured, each as a share of "
        f"{ratio:.2f}x, and the layer kinds whose time keeps the gap.",
        "",
        *first_table_lines(ratios, shares, ratio),
        "",
        "Fastest runtime for each model (images/s; served: its best concurrency):",
        "",
        *fastest_lines(index),
        "",
        verdict(ratios, run.costs, shares=shares, breakdown=breakdown),
    ]


def _verdict_sections(d: _Derived) -> list[str]:
    """The question, the verdict, the method, FLOPs vs reality."""
    return [
        f"# Load test report — {d.run.name}",
        "",
        f"Does the separable model's {d.ratio:.2f}x saving in multiply-adds survive deployment?",
        "",
        "## Verdict",
        "",
        *_headline_block(d.run, d.index, d.ratios, d.shares, d.breakdown),
        "",
        "## Method",
        "",
        *_method_lines(d.run, d.ratios),
        "",
        "## FLOPs vs reality",
        "",
        f"Theoretical speedup = MACs(standard) ÷ MACs(separable) = "
        f"{int(d.run.costs[STANDARD]['macs']):,} ÷ {int(d.run.costs[SEPARABLE]['macs']):,} = "
        f"{d.ratio:.2f}x. "
        "Measured = separable ÷ standard images/s with its 95% interval, in-process and served "
        "at the lowest concurrency.",
        "",
        *speedup_lines(d.table),
        *_image(d.plots, "flops", "FLOPs vs reality"),
    ]


def _cell_sections(d: _Derived) -> list[str]:
    """Ratios per cell, the summary, latency and throughput."""
    return [
        "## Ratios per cell",
        "",
        f"Every cell of `{RATIOS_CSV}`.",
        "",
        *ratio_lines(d.ratios),
        "",
        "## Summary per runtime",
        "",
        "Medians over repetitions (runs); latencies from microsecond HDR histograms over the "
        "measurement window; CPU in % of one core (generator = all Locust processes, server = "
        "the server's process tree, in-process rows: the measuring process). ⚠ = the load "
        "generator was saturated. No accuracy where no request completed.",
        *summary_lines(d.index, saturated_cells(d.run.meta)),
        "",
        "## Latency vs concurrency",
        "",
        *pivot_latency(d.index),
        *_image(d.plots, "latency", "Latency vs concurrency"),
        "## Throughput vs batch size",
        "",
        "Images per second; served columns take the best throughput over the measured "
        "concurrency levels.",
        "",
        *pivot_throughput(d.index),
        *_image(d.plots, "throughput", "Throughput vs batch size"),
    ]


def _time_sections(d: _Derived) -> list[str]:
    """Where the time goes: overhead, the server's phases, operators."""
    return [
        "## Serving overhead",
        "",
        "Served p50 at the lowest concurrency minus in-process p50: server, transport, "
        "serialization and the network stack, per request.",
        "",
        *(overhead_lines(d.over) if d.over else ["(no in-process rows to compare with)"]),
        *_image(d.plots, "overhead", "Serving overhead"),
        "## Three views of inference time",
        "",
        "Per served cell and model: the in-process p50 per call (the floor), the server's mean "
        "`infer` phase, the op-profile sum (ms per call); each beyond "
        f"{AGREE_WITHIN:.0%} of the floor is flagged `[g]` with its numbers: for the inference "
        "phase, the inferences in flight and the server's CPU time per request against the floor "
        "(`CPU +38%`: 38% more CPU per request than the floor's call; ratios.csv says what ran).",
        "",
        *agreement_lines(d.index, d.run.opprofile),
        "",
        "## Kernels",
        "",
        "What the separable model's depthwise and pointwise convolutions became in each runtime "
        "(`executed-graph.json`), next to the rate the operator profile measured.",
        "",
        *kernel_lines(read_executed_graph(d.run.path), d.shares, [g[0] for g in d.index.groups()]),
        "",
        "## Served vs in-process at batch 256",
        "",
        "Served gRPC images/s at batch 256 and the highest concurrency measured ÷ the same "
        "runtime's in-process images/s (the same pinned cores); target ≥ 0.9x. Server RSS: the "
        "server's resident memory after the cell.",
        "",
        *served_floor_lines(d.index),
        "",
        "## Server breakdown",
        "",
        "Mean ms per request at the lowest concurrency, from the server's "
        "`serving_request_phase_seconds` histogram scraped before and after each cell; the "
        "client's mean is users ÷ requests/s. ⚠ = the in-process floor, the server's inference "
        f"time and the op-profile sum differ by more than {AGREE_WITHIN:.0%}.",
        "",
        *(
            breakdown_lines(d.breakdown)
            if d.breakdown
            else ["(the server exposed no per-phase histogram in this run)"]
        ),
        *_image(d.plots, "breakdown", "Server breakdown"),
        "## Per-operator profile",
        "",
        "Each runtime's own profiler (`opprofile.csv`; ONNX Runtime's kernel times, TensorFlow's "
        "op self-times): time per call by layer kind, multiply-adds from the graph, GMAC/s "
        "achieved; `call overhead` is the call's time that no operator accounts for.",
        "",
        *(profile_lines(d.shares) if d.shares else ["(no per-operator profile in this run)"]),
        *_image(d.plots, "opprofile", "Per-operator profile"),
    ]


def _closing_sections(d: _Derived) -> list[str]:
    """Notes and setup."""
    return [
        "## Notes",
        "",
        *([f"- {n}" for n in _notes(d.run)] or ["- none"]),
        "",
        "## Setup",
        "",
        *_setup_lines(d.run),
        "",
    ]


def render(run_dir: Path) -> Path:
    """Write ``report.md``, ``ratios.csv`` and ``plots/*.png`` in ``run_dir``; returns the
    report's path."""
    d = _derive(run_dir)
    lines = [*_verdict_sections(d), *_cell_sections(d), *_time_sections(d), *_closing_sections(d)]
    report = run_dir / REPORT_NAME
    report.write_text("\n".join(lines))
    return report


def headline(run_dir: Path) -> str:
    """The README's account of a run: report.md's first table and its generated verdict,
    recomputed from the run's saved results exactly as ``render`` does (nothing is written).
    ``python -m loadtest.report --headline RUN_DIR`` prints it; a test holds the README to it."""
    run = load_run(run_dir)
    index = Index(run.rows)
    ratios = compute_ratios(run)
    block = _headline_block(run, index, ratios, profiles(run), breakdowns(index, run.opprofile))
    return "\n".join(block)


# --- terminal summary -----------------------------------------------------------------------------


_SUMMARY_COLUMNS = (
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


def _runtime_table(index: Index, runtime: str, device: str) -> Table:
    table = Table(title=f"{runtime} on {device}", title_justify="left")
    for column in _SUMMARY_COLUMNS:
        table.add_column(column, justify="left" if column in ("model", "protocol") else "right")
    for r in sorted(
        (r for r in index.rows if (r["runtime"], r["device"]) == (runtime, device)),
        key=sort_key,
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
    return table


def _speedup_table(run: Run) -> Table:
    speed = speedups(compute_ratios(run), macs_ratio(run.costs))
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
    return table


def print_summary(run_dir: Path, console: Console) -> None:
    """The per-runtime summary and the FLOPs-vs-reality table, for the end of a sweep."""
    run = load_run(run_dir)
    index = Index(run.rows)
    for runtime, device in index.groups():
        console.print(_runtime_table(index, runtime, device))
    console.print(_speedup_table(run))
