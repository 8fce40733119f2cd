"""Running Locust for one served cell: its command line (the one builder, also used by the tests
and the soak test), its worker processes, CPU sampling while it runs, and its results as a row."""

from __future__ import annotations

import math
import shlex
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loadtest.cells import CellDetails, CellKey, Row, empty_row, history_samples, measured_row
from loadtest.plan import Grid, SweepConfig, Target
from loadtest.record.recorder import read_run_output
from loadtest.run.cpu import CpuSampler, pinned, usable_cpus
from loadtest.run.phases import PhaseMeans, phase_means, scrape

LOCUSTFILE = Path(__file__).parents[1] / "locustfile.py"
GENERATOR_SATURATED_PERCENT = 90.0  # Locust's own per-process CPU warning threshold
MACHINE_SATURATED_PERCENT = 95.0


def locust_worker_processes(
    concurrency: int, requested: int | None, cores: int | None = None
) -> int:
    """Locust worker processes for a cell: one per core (``cores``: the generator's, default
    all usable), never more than users (0 = Locust's local runner, for a single user)."""
    if requested is not None:
        return min(requested, concurrency)
    if cores is None:
        cores = len(usable_cpus())
    count = min(concurrency, cores or 1)
    return 0 if count <= 1 else count


def locust_command(
    prefix: Path,
    rest_url: str,
    grpc_target: str,
    options: Sequence[str] = (),
    *,
    locustfile: Path = LOCUSTFILE,
    csv: bool = True,
) -> list[str]:
    """``python -m locust`` headless against one server: statistics as CSV next to ``prefix``
    (unless ``csv`` is false), the merged HDR results in ``<prefix>_hdr.json``, then ``options``
    (users, run time, …)."""
    return [
        *(sys.executable, "-m", "locust", "-f", str(locustfile)),
        *("--headless", "--only-summary", "--stop-timeout", "0"),
        *("--host", rest_url, "--grpc-target", grpc_target),
        *(("--csv", str(prefix)) if csv else ()),
        *("--hdr-output", f"{prefix}_hdr.json"),
        *options,
    ]


def cell_locust_command(
    cell: CellKey, target: Target, grid: Grid, processes: int, prefix: Path
) -> list[str]:
    """The ``locust`` command line of one cell (also an HTML report next to ``prefix``)."""
    users = str(cell.concurrency)
    options = [
        *("-u", users, "-r", users, "-t", f"{grid.warmup_s + grid.duration_s}s"),
        *("--exit-code-on-error", "0", "--html", f"{prefix}.html"),
        *("--model", cell.model, "--protocol", cell.protocol),
        *("--batch-size", str(cell.batch_size), "--warmup", str(grid.warmup_s)),
    ]
    if processes > 0:
        options += ["--processes", str(processes)]
    return locust_command(prefix, target.rest_url, target.grpc, options)


@dataclass
class CellOutcome:
    """The row of a served cell, what else was learnt running it, and its throughput samples."""

    row: Row
    details: CellDetails
    samples: list[float]


def _find_entry(merged: Mapping[str, Any], cell: CellKey) -> Mapping[str, Any] | None:
    return next(
        (
            r
            for r in merged["results"]
            if r["model"] == cell.model
            and r["protocol"] == cell.protocol
            and r["batch_size"] == cell.batch_size
        ),
        None,
    )


def _run_locust(
    command: list[str],
    log_path: Path,
    timeout: float,
    sampler: CpuSampler,
    cpus: tuple[int, ...] | None,
) -> tuple[int, str | None]:
    """Run one Locust command (pinned to ``cpus``) while sampling its CPU; (exit code, note)."""
    with open(log_path, "wb") as log:
        with pinned(cpus):
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        sampler.track("generator", process.pid)
        try:
            return process.wait(timeout=timeout), None
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            return -9, f"Locust did not finish within {timeout} s and was killed"


def _window_facts(
    merged: Mapping[str, Any], sampler: CpuSampler, processes: int, details: CellDetails
) -> tuple[float, float]:
    """CPU use over the measurement window into ``details``; (generator %, server %)."""
    start, end = float(merged["window_start"]), float(merged["window_end"])
    busiest = sampler.busiest_process_percent("generator", start, end)
    machine = sampler.machine_percent(start, end)
    details["window_s"] = end - start
    details["generator_busiest_process_cpu"] = busiest
    details["machine_cpu_percent"] = machine
    details["final_snapshots"] = merged.get("final_snapshots")
    details["snapshots"] = merged.get("processes")
    expected = max(processes, 1)
    if merged.get("final_snapshots", 0) < expected:
        details["notes"].append(
            f"{expected - merged.get('final_snapshots', 0)} Locust process(es) left no final "
            "snapshot; up to their last 3 s are missing"
        )
    saturated = busiest is not None and busiest >= GENERATOR_SATURATED_PERCENT
    details["generator_saturated"] = saturated
    if saturated:
        details["notes"].append(
            f"load generator saturated: a Locust process used {busiest:.0f}% of a core"
        )
    details["machine_saturated"] = machine is not None and machine >= MACHINE_SATURATED_PERCENT
    return (
        _or_nan(sampler.percent("generator", start, end)),
        _or_nan(sampler.percent("server", start, end)),
    )


def _or_nan(value: float | None) -> float:
    return math.nan if value is None else value


def _no_completed_request(cell: CellKey, cpu: tuple[float, float]) -> Row:
    """Locust ran but no request finished (or failed) before the end: each one takes longer than
    the run at this concurrency. That is a measurement (zero throughput), not an error."""
    row = empty_row(cell, errors=0)
    row["requests_per_s"] = row["images_per_s"] = 0.0
    row["generator_cpu"], row["server_cpu"] = cpu
    return row


def _measure(
    cell: CellKey, command: list[str], config: SweepConfig, target: Target, sampler: CpuSampler
) -> tuple[int, str | None, PhaseMeans]:
    """Run Locust, scraping the server's phase histogram before and after; (exit code, note,
    mean phase times)."""
    run_s = config.grid.warmup_s + config.grid.duration_s
    before = scrape(target.rest_url)
    log_path = Path(f"{command[command.index('--csv') + 1]}.log")
    returncode, note = _run_locust(command, log_path, run_s + 120, sampler, config.generator_cpus)
    return returncode, note, phase_means(before, scrape(target.rest_url), cell.model, cell.protocol)


def _outcome(
    cell: CellKey,
    merged: Mapping[str, Any],
    prefix: Path,
    cpu: tuple[float, float],
    phases: PhaseMeans,
    details: CellDetails,
    run_s: int,
) -> CellOutcome:
    """The row of a cell whose Locust run left results."""
    entry = _find_entry(merged, cell)
    if entry is None:
        details["notes"].append(
            f"no request completed within the {run_s} s run: at this "
            "concurrency every request took longer than that"
        )
        return CellOutcome(_no_completed_request(cell, cpu), details, [])
    row = measured_row(
        cell,
        entry,
        errors=int(entry["failures"]),
        generator_cpu=cpu[0],
        server_cpu=cpu[1],
        server_ms=phases.columns(),
    )
    details["requests"] = entry["requests"]
    if not entry["requests"]:
        # Answers came only during the warm-up: no request completed in the measured window,
        # so the cell has no throughput to speak of and reports no accuracy either.
        row["accuracy"] = math.nan
    samples = history_samples(
        Path(f"{prefix}_stats_history.csv"),
        float(merged["window_start"]),
        float(merged["window_end"]),
        cell.batch_size,
        distributed=bool(details["processes"]),
    )
    return CellOutcome(row, details, samples)


def run_cell(
    cell: CellKey, config: SweepConfig, target: Target, run_dir: Path, sampler: CpuSampler
) -> CellOutcome:
    """Run Locust for one cell and turn its HDR results, CPU samples and the server's phase
    histogram into a row."""
    cores = len(config.generator_cpus) if config.generator_cpus else None
    processes = locust_worker_processes(cell.concurrency, config.processes, cores)
    prefix = run_dir / "locust" / cell.slug
    prefix.parent.mkdir(parents=True, exist_ok=True)
    command = cell_locust_command(cell, target, config.grid, processes, prefix)
    details = CellDetails(
        cell=cell.slug, repeat=cell.repeat, processes=processes, command=shlex.join(command)
    )
    details["notes"] = []
    returncode, note, phases = _measure(cell, command, config, target, sampler)
    if note:
        details["notes"].append(note)
    details["returncode"] = returncode
    hdr_path = Path(f"{prefix}_hdr.json")
    if not hdr_path.is_file():
        details["notes"].append(
            f"Locust wrote no results (exit {returncode}); see {prefix.name}.log"
        )
        return CellOutcome(empty_row(cell, errors=-1), details, [])
    merged = read_run_output(hdr_path)
    cpu = _window_facts(merged, sampler, processes, details)
    run_s = config.grid.warmup_s + config.grid.duration_s
    return _outcome(cell, merged, prefix, cpu, phases, details, run_s)
