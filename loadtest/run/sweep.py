"""``python -m loadtest``: the grid sweep — servers, Locust runs, in-process floor, report.

For each runtime: measure it in-process (a child process, nothing else running) and profile its
operators, start ``python -m serving --runtime R`` on free loopback ports (unless ``--target``
names a running server), then run Locust headless for every (protocol, batch size, concurrency)
cell, ``--repeats`` times with the two models alternating (A B B A …) so that drift hits both,
while sampling the CPU of the Locust processes and of the server and scraping the server's own
per-phase time before and after each cell; stop the server with SIGTERM. ``--server-cpus`` and
``--generator-cpus`` pin the server (and the in-process floor) and Locust to disjoint cores.
Everything lands in ``<output>/<run-id>/`` and ``loadtest.report`` renders ``report.md``.
"""

from __future__ import annotations

import importlib.util
import json
import math
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypedDict

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from contract import MODELS_CONFIG_FILENAME
from loadtest.cells import (
    IN_PROCESS,
    SERVER_PHASES,
    THREADS_OUTSIDE,
    CellDetails,
    CellKey,
    Row,
    empty_row,
    write_results,
)
from loadtest.cli import UsageError, config_from_args
from loadtest.plan import SweepConfig, Target
from loadtest.run.children import FloorFacts, run_floor, run_graphs, run_opprofile
from loadtest.run.cpu import CpuSampler, pinned, usable_cpus
from loadtest.run.locust import run_cell
from loadtest.run.portable import portable
from loadtest.run.threads import (
    busy_between,
    cpu_busy,
    process_threads,
    threads_record,
    with_threads,
)

THREADS_JSON = "threads.json"


class RuntimeInfo(TypedDict, total=False):
    """What the sweep learnt about one runtime: an entry of ``run.json``'s ``runtimes``."""

    runtime: str
    in_process: FloorFacts
    server_error: str
    server_startup_s: float
    server_command: str
    server_exit_code: int


# --- the sweep ------------------------------------------------------------------------------------


def _fmt(value: Any, spec: str) -> str:
    missing = value is None or (isinstance(value, float) and math.isnan(value))
    return "—" if missing else format(value, spec)


def _cell_line(row: Row, details: CellDetails) -> str:
    """One line of the console log per measured cell."""
    flags = " [generator saturated]" if details.get("generator_saturated") else ""
    where = (
        "in-process" if row["mode"] == IN_PROCESS else f"{row['protocol']} c{row['concurrency']}"
    )
    repeat = f" r{row['repeat']}" if row["repeat"] else ""
    server = ""
    if row["server_infer_ms"] is not None and not math.isnan(row["server_infer_ms"]):
        phases = "/".join(_fmt(row[f"server_{p}_ms"], ".3f") for p in SERVER_PHASES)  # type: ignore[literal-required]
        server = f", server {phases} ms"
    return (
        f"{row['runtime']} {row['model']} {where} b{row['batch_size']}{repeat}: "
        f"{_fmt(row['images_per_s'], '.0f')} img/s, p50 {_fmt(row['p50_ms'], '.3f')} ms, "
        f"p99 {_fmt(row['p99_ms'], '.2f')} ms, {row['errors']} err, "
        f"CPU gen {_fmt(row['generator_cpu'], '.0f')}% srv {_fmt(row['server_cpu'], '.0f')}%"
        f"{server}{flags}"
    )


def _exited(server: Any) -> bool:
    return server is not None and server.process is not None and server.process.poll() is not None


@dataclass
class _Sweep:
    """What a sweep has measured so far, and its progress display."""

    config: SweepConfig
    run_dir: Path
    progress: Progress
    task: TaskID = field(default_factory=lambda: TaskID(0))
    rows: list[Row] = field(default_factory=list)
    cells: list[CellDetails] = field(default_factory=list)
    runtimes: list[RuntimeInfo] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    samples: dict[str, list[float]] = field(default_factory=dict)
    threads: list[dict[str, Any]] = field(default_factory=list)  # threads.json
    server_pid: int | None = None  # the server measured now (its threads are recorded per cell)

    def say(self, text: str) -> None:
        self.progress.console.print(text)

    def note(self, text: str) -> None:
        self.notes.append(text)
        self.say(f"[red]{text}")

    def remark(self, text: str | None) -> None:
        """A note that is no failure of the sweep (a runtime without a profile...)."""
        if text:
            self.notes.append(text)
            self.say(f"[yellow]{text}")

    def measure_floor(self, runtime: str, info: RuntimeInfo) -> None:
        """The in-process floor of ``runtime`` and its operator profile."""
        self.progress.update(self.task, description=f"{runtime}: in-process")
        floor = run_floor(runtime, self.config, self.run_dir)
        self.samples.update(floor.samples)
        self.threads += floor.threads
        info["in_process"] = floor.facts
        if "error" in floor.facts:
            self.note(f"{runtime}: in-process measurement failed: {floor.facts['error']}")
        for row in floor.rows:
            self.outside_note(row)
            self.say(_cell_line(row, {}))
            self.rows.append(row)
        if self.config.opprofile:
            self.progress.update(self.task, description=f"{runtime}: operator profile")
            self.remark(run_opprofile(runtime, self.config, self.run_dir))
        self.progress.update(self.task, description=f"{runtime}: executed graph")
        self.remark(run_graphs(runtime, self.config, self.run_dir))
        self.progress.advance(self.task, self.config.grid.floor_cells_per_runtime)

    def start_server(self, runtime: str, info: RuntimeInfo, sampler: CpuSampler) -> Any:
        """The started server, or ``None`` when it did not start (noted, its cells NaN)."""
        from harness import ServerProcess

        config = self.config
        self.progress.update(self.task, description=f"{runtime}: starting server")
        server = ServerProcess(
            config.models_dir / MODELS_CONFIG_FILENAME,
            ["--runtime", runtime, "--device", config.device, *config.server_args],
            startup_timeout_s=config.startup_timeout_s,
            log_path=self.run_dir / f"server-{runtime}.log",
        )
        try:
            with pinned(config.server_cpus):
                server.start()
        except (RuntimeError, TimeoutError) as exc:
            self.note(f"{runtime}: the server did not start: {exc}")
            info["server_error"] = str(exc)
            return None
        assert server.process is not None
        info["server_startup_s"] = round(server.startup_seconds, 2)
        info["server_command"] = shlex.join(server.command)
        sampler.track("server", server.process.pid)
        return server

    def skip(self, cells: Sequence[CellKey], why: str) -> None:
        """Record ``cells`` as not run (errors -1)."""
        for cell in cells:
            self.rows.append(empty_row(cell, errors=-1))
            self.cells.append(CellDetails(cell=cell.slug, repeat=cell.repeat, notes=[why]))
            self.progress.advance(self.task)

    def run_cells(
        self, cells: Sequence[CellKey], target: Target, server: Any, sampler: CpuSampler
    ) -> None:
        """Run ``cells`` against ``target``; the rest are skipped when the server exits."""
        for done, cell in enumerate(cells):
            self.progress.update(self.task, description=cell.slug)
            if _exited(server):
                why = (
                    f"the {cell.runtime} server exited with {server.process.returncode}"
                    f"; see server-{cell.runtime}.log"
                )
                self.note(why)
                self.skip(cells[done:], why)
                return
            busy = cpu_busy()
            outcome = run_cell(cell, self.config, target, self.run_dir, sampler)
            outcome.row = self.server_threads(cell, outcome.row, busy_between(busy, cpu_busy()))
            self.outside_note(outcome.row)
            self.rows.append(outcome.row)
            self.cells.append(outcome.details)
            if outcome.samples:
                self.samples[cell.sample_key] = outcome.samples
            self.say(_cell_line(outcome.row, outcome.details))
            for note in outcome.details["notes"]:
                if "saturated" not in note:
                    self.say(f"  [yellow]{note}")
            self.progress.advance(self.task)

    def outside_note(self, row: Row) -> None:
        """A note for a measurement whose threads may leave the CPU set (``threads.json``)."""
        if THREADS_OUTSIDE in row["flags"].split(";"):
            key = CellKey.from_row(row)
            self.note(
                f"{key.runtime} {key.mode} {key.model} b{key.batch_size} c{key.concurrency} "
                f"r{key.repeat}: {row['threads_outside']} of {row['threads']} threads may run "
                "outside the CPU set the process was given (threads.json)"
            )

    def server_threads(self, cell: CellKey, row: Row, busy: str) -> Row:
        """``row`` with the server's threads, CPU and memory after the cell (recorded in
        ``threads.json`` too); unchanged but for ``cpu_busy_s`` when no server pid is known."""
        if self.server_pid is None:
            return with_threads(row, None, busy)
        given = self.config.server_cpus or tuple(usable_cpus())
        record = process_threads(self.server_pid, given)
        self.threads.append(threads_record(cell, record, busy))
        return with_threads(row, record, busy)

    def measure_served(self, runtime: str, info: RuntimeInfo, sampler: CpuSampler) -> None:
        """Every served cell of ``runtime``, on a started server or on ``--target``."""
        config = self.config
        cells = [c for c in config.grid.served_cells(config.device) if c.runtime == runtime]
        server = None
        if config.target is None:
            server = self.start_server(runtime, info, sampler)
            if server is None:
                self.skip(cells, "server did not start")
                return
            target = Target(grpc=server.grpc_target, rest_url=server.rest_url)
            self.server_pid = server.process.pid
        else:
            target = config.target
            self.server_pid = config.server_pid
            if config.server_pid:
                sampler.track("server", config.server_pid)
        try:
            self.run_cells(cells, target, server, sampler)
        finally:
            sampler.untrack("server")
            self.server_pid = None
            if server is not None:
                self.progress.update(self.task, description=f"{runtime}: stopping server")
                code = server.stop()
                info["server_exit_code"] = code
                if code != 0:
                    self.notes.append(f"{runtime}: the server exited with {code} on SIGTERM")


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description:<44}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


def _machine(config: SweepConfig) -> dict[str, Any]:
    from loadtest.run.machine import machine_info

    info = machine_info()
    info["pinning"] = {
        "server_cpus": list(config.server_cpus) if config.server_cpus else None,
        "generator_cpus": list(config.generator_cpus) if config.generator_cpus else None,
    }
    return info


def _run_meta(sweep: _Sweep, started: float) -> dict[str, Any]:
    from loadtest.flops import model_costs

    config = sweep.config
    return {
        "run_id": config.run_id,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "elapsed_s": round(time.time() - started, 1),
        "grid": asdict(config.grid),
        "full": config.full,
        "device": config.device,
        "models_dir": str(config.models_dir),
        "target": asdict(config.target) if config.target else None,
        "server_args": list(config.server_args),
        "pinning": {
            "server_cpus": list(config.server_cpus) if config.server_cpus else None,
            "generator_cpus": list(config.generator_cpus) if config.generator_cpus else None,
        },
        "costs": model_costs(config.models_dir),
        "runtimes": sweep.runtimes,
        "cells": sweep.cells,
        "samples": sweep.samples,
        "notes": sweep.notes,
    }


def run_sweep(config: SweepConfig, console: Console | None = None) -> Path:
    """Run the whole sweep; returns the run directory (results, ratios and run facts written;
    ``loadtest.report.render`` writes the report)."""
    from loadtest.report.analysis import write_ratios

    console = console or Console(stderr=True)
    grid = config.grid
    run_dir = config.output / config.run_id
    run_dir.mkdir(parents=True, exist_ok=False)
    # Recorded without this machine's paths (results/README.md): relative to the repository,
    # <tmp>/, <work>/, <home>/.
    (run_dir / "command.txt").write_text(portable(shlex.join(config.command)) + "\n")
    (run_dir / "machine.json").write_text(portable(json.dumps(_machine(config), indent=1)) + "\n")
    sweep = _Sweep(config, run_dir, _progress(console))
    in_process_steps = len(grid.runtimes) * grid.floor_cells_per_runtime if config.in_process else 0
    started = time.time()
    with CpuSampler() as sampler, sweep.progress:
        sweep.task = sweep.progress.add_task(
            "starting", total=len(grid.served_cells()) + in_process_steps
        )
        for runtime in grid.runtimes:
            info = RuntimeInfo(runtime=runtime)
            if config.in_process:
                sweep.measure_floor(runtime, info)
            sweep.measure_served(runtime, info, sampler)
            sweep.runtimes.append(info)
        sweep.progress.update(sweep.task, description="done")
    write_results(run_dir, sweep.rows)
    (run_dir / "run.json").write_text(
        portable(json.dumps(_run_meta(sweep, started), indent=1, default=str)) + "\n"
    )
    (run_dir / THREADS_JSON).write_text(json.dumps(sweep.threads, indent=1) + "\n")
    write_ratios(run_dir)
    return run_dir


def _console(*, stderr: bool) -> Console:
    # Logs and pipes get wide lines instead of rich's 80-column default, so tables stay whole.
    console = Console(stderr=stderr)
    return console if console.is_terminal else Console(stderr=stderr, width=160)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m loadtest``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        config = config_from_args(argv)
    except UsageError as exc:
        print(f"python -m loadtest: error: {exc}", file=sys.stderr)
        return 2
    if importlib.util.find_spec("locust") is None:
        print(
            "python -m loadtest: error: Locust is not installed (pip install '.[loadtest]')",
            file=sys.stderr,
        )
        return 2
    if (config.output / config.run_id).exists():
        print(
            f"python -m loadtest: error: {config.output / config.run_id} already exists "
            "(choose another --run-id)",
            file=sys.stderr,
        )
        return 2
    from loadtest.report import print_summary, render

    console = _console(stderr=True)
    run_dir = run_sweep(config, console)
    report_path = render(run_dir)
    out = _console(stderr=False)
    print_summary(run_dir, out)
    out.print(f"report: {report_path}")
    rows = json.loads((run_dir / "results.json").read_text())
    failed = [r for r in rows if r["errors"] != 0]
    if failed:
        out.print(
            f"[red]{len(failed)} cell(s) had failed requests or did not run; see the report's notes"
        )
        return 1
    return 0
