"""``python -m loadtest``: the grid sweep — servers, Locust runs, in-process floor, report.

For each runtime: measure it in-process (a child process, nothing else running), start
``python -m serving --runtime R`` on free loopback ports (unless ``--target`` names a running
server), then run Locust headless once per (model, protocol, batch size, concurrency) cell while
sampling the CPU of the Locust processes and of the server, and stop the server with SIGTERM.
Everything lands in ``<output>/<run-id>/`` and ``loadtest.report`` renders ``report.md``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, NoReturn

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from contract import MODEL_NAMES, MODELS_CONFIG_FILENAME
from loadtest.cpu import CpuSampler
from loadtest.recorder import read_run_output
from loadtest.results import IN_PROCESS_PROTOCOL, write_results

RUNTIMES: tuple[str, ...] = ("onnx", "tensorflow", "torch")
PROTOCOLS: tuple[str, ...] = ("grpc", "rest")
DEVICES: tuple[str, ...] = ("cpu", "cuda")
LOCUSTFILE = Path(__file__).with_name("locustfile.py")
GENERATOR_SATURATED_PERCENT = 90.0  # Locust's own per-process CPU warning threshold
MACHINE_SATURATED_PERCENT = 95.0
MAX_CONCURRENCY = 1024
MAX_BATCH_SIZE = 10_000  # the MNIST test set


@dataclass(frozen=True)
class Grid:
    """The axes of a sweep and the time spent per cell."""

    runtimes: tuple[str, ...]
    models: tuple[str, ...]
    batch_sizes: tuple[int, ...]
    concurrency: tuple[int, ...]
    protocols: tuple[str, ...]
    duration_s: int
    warmup_s: int

    def served_cells(self) -> list[Cell]:
        """Every served cell, runtime-major (one server start per runtime)."""
        return [
            Cell(r, m, p, b, c)
            for r in self.runtimes
            for m in self.models
            for p in self.protocols
            for b in self.batch_sizes
            for c in self.concurrency
        ]


# The demo grid: 2 runtimes x 2 models x 2 protocols x 2 batch sizes x 2 concurrency levels = 32
# Locust runs of 1 + 3 s (plus ~4 s of Locust start and stop each): about 5 minutes on 2 cores.
DEMO_GRID = Grid(
    runtimes=("onnx", "tensorflow"),
    models=MODEL_NAMES,
    batch_sizes=(1, 32),
    concurrency=(1, 8),
    protocols=PROTOCOLS,
    duration_s=3,
    warmup_s=1,
)


def _torch_available() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("torch", "onnx2torch"))


# The full grid: 2 models x 2 protocols x 3 batch sizes x 3 concurrency levels = 36 Locust runs of
# 2 + 10 s per runtime: about 12 minutes per runtime on 2 cores (torch joins when installed).
FULL_GRID = Grid(
    runtimes=("onnx", "tensorflow", *(("torch",) if _torch_available() else ())),
    models=MODEL_NAMES,
    batch_sizes=(1, 32, 256),
    concurrency=(1, 8, 32),
    protocols=PROTOCOLS,
    duration_s=10,
    warmup_s=2,
)


@dataclass(frozen=True)
class Cell:
    """One served measurement."""

    runtime: str
    model: str
    protocol: str
    batch_size: int
    concurrency: int

    @property
    def slug(self) -> str:
        """A file-name-safe id: ``onnx-standard-grpc-b32-c8``."""
        return f"{self.runtime}-{self.model}-{self.protocol}-b{self.batch_size}-c{self.concurrency}"


@dataclass(frozen=True)
class Target:
    """Where the server listens."""

    grpc: str  # host:port
    rest_url: str  # http://host:port


@dataclass
class SweepConfig:
    """Everything a sweep needs, validated."""

    grid: Grid
    models_dir: Path
    output: Path
    device: str
    target: Target | None = None
    server_pid: int | None = None
    processes: int | None = None
    in_process: bool = True
    server_args: tuple[str, ...] = ()
    run_id: str = ""
    startup_timeout_s: float = 180.0
    full: bool = False
    command: list[str] = field(default_factory=list)


class UsageError(ValueError):
    """A bad command line; the message is one line."""


# --- command line ---------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line as one line on stderr and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _split(text: str, flag: str) -> list[str]:
    items = [item.strip() for item in text.split(",")]
    if not text.strip() or any(not item for item in items):
        raise UsageError(f"{flag}: expected a comma-separated list, got {text!r}")
    return list(dict.fromkeys(items))  # drop repeats, keep order


def _choices(text: str, flag: str, allowed: Sequence[str]) -> tuple[str, ...]:
    items = _split(text, flag)
    unknown = [item for item in items if item not in allowed]
    if unknown:
        raise UsageError(f"{flag}: unknown {', '.join(unknown)}; choose from {', '.join(allowed)}")
    return tuple(items)


def _ints(text: str, flag: str, maximum: int) -> tuple[int, ...]:
    values = []
    for item in _split(text, flag):
        try:
            value = int(item)
        except ValueError:
            raise UsageError(f"{flag}: {item!r} is not an integer") from None
        if not 1 <= value <= maximum:
            raise UsageError(f"{flag}: {value} is out of range 1..{maximum}")
        values.append(value)
    return tuple(values)


def _host_port(text: str, flag: str) -> tuple[str, int]:
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise UsageError(f"{flag}: expected host:port, got {text!r}")
    return host, int(port_text)


def build_parser() -> argparse.ArgumentParser:
    """The sweep's command line."""
    demo, full = DEMO_GRID, FULL_GRID
    parser = _Parser(
        prog="python -m loadtest",
        description=(
            "Load-test the standard and separable models over gRPC and REST with Locust, per "
            "runtime, batch size and concurrency, measure each runtime in-process, and write "
            "reports/<run-id>/ (results.csv, results.json, report.md, plots)."
        ),
        epilog=(
            f"Without axis flags the demo grid runs (runtimes {','.join(demo.runtimes)}, batch "
            f"sizes {','.join(map(str, demo.batch_sizes))}, concurrency "
            f"{','.join(map(str, demo.concurrency))}, {demo.warmup_s}+{demo.duration_s} s per "
            f"cell); --full runs batch sizes {','.join(map(str, full.batch_sizes))}, concurrency "
            f"{','.join(map(str, full.concurrency))}, {full.warmup_s}+{full.duration_s} s per cell."
            " Axis flags override either."
        ),
    )
    parser.add_argument("--runtimes", help=f"comma-separated: {', '.join(RUNTIMES)}")
    parser.add_argument("--models", help=f"comma-separated: {', '.join(MODEL_NAMES)}")
    parser.add_argument("--batch-sizes", help="comma-separated images per request, e.g. 1,32,256")
    parser.add_argument("--concurrency", help="comma-separated Locust user counts, e.g. 1,8,32")
    parser.add_argument("--protocols", help="comma-separated: grpc, rest")
    parser.add_argument("--duration", help="measured seconds per cell (integer)")
    parser.add_argument("--warmup", help="warm-up seconds per cell, not measured (integer)")
    parser.add_argument("--full", action="store_true", help="the full grid (tens of minutes)")
    parser.add_argument(
        "--models-dir", default="models", help="the export's model repository (default: models/)"
    )
    parser.add_argument("--output", default="reports", help="reports root (default: reports/)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (server and in-process)")
    parser.add_argument(
        "--target",
        help="host:port of a running server's gRPC API to measure instead of starting one "
        "(give its runtime with --runtimes)",
    )
    parser.add_argument(
        "--rest-target", help="host:port of its REST API (default: the gRPC port + 1)"
    )
    parser.add_argument("--server-pid", help="pid of the --target server, to record its CPU")
    parser.add_argument(
        "--processes",
        help="Locust worker processes per cell (default: min(concurrency, CPU cores))",
    )
    parser.add_argument(
        "--in-process",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also measure each runtime in-process, the floor for serving overhead",
    )
    parser.add_argument(
        "--server-args",
        default="",
        help="extra flags for the started servers, e.g. '--enable_batching'",
    )
    parser.add_argument("--run-id", help="name of the run directory (default: date-time)")
    parser.add_argument(
        "--startup-timeout", default="180", help="seconds to wait for a server (default: 180)"
    )
    return parser


def _positive(text: str, flag: str, *, allow_zero: bool = False) -> int:
    try:
        value = int(text)
    except ValueError:
        raise UsageError(f"{flag}: expected whole seconds, got {text!r}") from None
    if value < 0 or (value == 0 and not allow_zero):
        raise UsageError(f"{flag}: must be {'≥ 0' if allow_zero else '≥ 1'}, got {value}")
    return value


def config_from_args(argv: Sequence[str]) -> SweepConfig:
    """Parse and validate; raises :class:`UsageError` with a one-line message."""
    args = build_parser().parse_args(argv)
    base = FULL_GRID if args.full else DEMO_GRID
    grid = replace(
        base,
        runtimes=_choices(args.runtimes, "--runtimes", RUNTIMES)
        if args.runtimes is not None
        else base.runtimes,
        models=_choices(args.models, "--models", MODEL_NAMES)
        if args.models is not None
        else base.models,
        batch_sizes=(
            _ints(args.batch_sizes, "--batch-sizes", MAX_BATCH_SIZE)
            if args.batch_sizes is not None
            else base.batch_sizes
        ),
        concurrency=(
            _ints(args.concurrency, "--concurrency", MAX_CONCURRENCY)
            if args.concurrency is not None
            else base.concurrency
        ),
        protocols=(
            _choices(args.protocols, "--protocols", PROTOCOLS)
            if args.protocols is not None
            else base.protocols
        ),
        duration_s=(
            _positive(args.duration, "--duration") if args.duration is not None else base.duration_s
        ),
        warmup_s=(
            _positive(args.warmup, "--warmup", allow_zero=True)
            if args.warmup is not None
            else base.warmup_s
        ),
    )
    if args.device not in DEVICES:
        raise UsageError(f"--device: expected cpu or cuda, got {args.device!r}")
    models_dir = Path(args.models_dir).expanduser().resolve()
    target = None
    server_pid = None
    if args.target:
        host, port = _host_port(args.target, "--target")
        if len(grid.runtimes) != 1:
            raise UsageError(
                "--target measures one running server: name its runtime with --runtimes "
                "(exactly one)"
            )
        rest_host, rest_port = (
            _host_port(args.rest_target, "--rest-target") if args.rest_target else (host, port + 1)
        )
        target = Target(grpc=f"{host}:{port}", rest_url=f"http://{rest_host}:{rest_port}")
        if args.server_pid:
            if not args.server_pid.isdigit():
                raise UsageError(f"--server-pid: expected a process id, got {args.server_pid!r}")
            server_pid = int(args.server_pid)
    else:
        for flag in ("rest_target", "server_pid"):
            if getattr(args, flag):
                raise UsageError(f"--{flag.replace('_', '-')} only goes with --target")
        if args.server_args and "--runtime" in args.server_args:
            raise UsageError("--server-args: give runtimes with --runtimes, not --runtime")
        config_file = models_dir / MODELS_CONFIG_FILENAME
        if not config_file.is_file():
            raise UsageError(
                f"--models-dir: {config_file} not found (export the models first: "
                "`python -m export` or `make export`)"
            )
    processes = None
    if args.processes is not None:
        processes = _positive(args.processes, "--processes")
    try:
        startup_timeout = float(args.startup_timeout)
    except ValueError:
        raise UsageError(
            f"--startup-timeout: expected seconds, got {args.startup_timeout!r}"
        ) from None
    try:
        server_args = tuple(shlex.split(args.server_args))
    except ValueError as exc:
        raise UsageError(f"--server-args: {exc}") from None
    run_id = args.run_id or time.strftime("%Y%m%d-%H%M%S")
    if "/" in run_id or run_id in (".", ".."):
        raise UsageError(f"--run-id: {run_id!r} is not a directory name")
    return SweepConfig(
        grid=grid,
        models_dir=models_dir,
        output=Path(args.output).expanduser().resolve(),
        device=args.device,
        target=target,
        server_pid=server_pid,
        processes=processes,
        in_process=args.in_process,
        server_args=server_args,
        run_id=run_id,
        startup_timeout_s=startup_timeout,
        full=args.full,
        command=["python", "-m", "loadtest", *argv],
    )


# --- measuring ------------------------------------------------------------------------------------


def worker_processes(concurrency: int, requested: int | None) -> int:
    """Locust worker processes for a cell: one per core, never more than users (0 = in-process
    runner, for a single user)."""
    if requested is not None:
        return min(requested, concurrency)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    count = min(concurrency, cores or 1)
    return 0 if count <= 1 else count


def locust_command(
    cell: Cell, target: Target, grid: Grid, processes: int, prefix: Path
) -> list[str]:
    """The ``locust`` command line of one cell (headless, CSV + HTML + HDR JSON next to prefix)."""
    users = str(cell.concurrency)
    command = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--headless",
        "--only-summary",
        "-u",
        users,
        "-r",
        users,
        "-t",
        f"{grid.warmup_s + grid.duration_s}s",
        "--stop-timeout",
        "0",
        "--exit-code-on-error",
        "0",
        "--csv",
        str(prefix),
        "--html",
        f"{prefix}.html",
        "--host",
        target.rest_url,
        "--grpc-target",
        target.grpc,
        "--model",
        cell.model,
        "--protocol",
        cell.protocol,
        "--batch-size",
        str(cell.batch_size),
        "--warmup",
        str(grid.warmup_s),
        "--hdr-output",
        f"{prefix}_hdr.json",
    ]
    if processes > 0:
        command += ["--processes", str(processes)]
    return command


@dataclass
class CellOutcome:
    """The row of a served cell and what else was learnt running it."""

    row: dict[str, Any]
    details: dict[str, Any]


def _nan_row(cell: Cell, device: str, *, errors: int = 0) -> dict[str, Any]:
    """The row of a served cell without measurements (``errors`` -1: it could not run)."""
    nan = math.nan
    return {
        "runtime": cell.runtime,
        "device": device,
        "model": cell.model,
        "protocol": cell.protocol,
        "mode": "served",
        "batch_size": cell.batch_size,
        "concurrency": cell.concurrency,
        "requests_per_s": nan,
        "images_per_s": nan,
        "p50_ms": nan,
        "p90_ms": nan,
        "p99_ms": nan,
        "p999_ms": nan,
        "max_ms": nan,
        "errors": errors,
        "accuracy": nan,
        "generator_cpu": nan,
        "server_cpu": nan,
    }


def run_cell(
    cell: Cell,
    config: SweepConfig,
    target: Target,
    run_dir: Path,
    sampler: CpuSampler,
) -> CellOutcome:
    """Run Locust for one cell and turn its HDR results and CPU samples into a row."""
    grid = config.grid
    processes = worker_processes(cell.concurrency, config.processes)
    locust_dir = run_dir / "locust"
    locust_dir.mkdir(parents=True, exist_ok=True)
    prefix = locust_dir / cell.slug
    command = locust_command(cell, target, grid, processes, prefix)
    details: dict[str, Any] = {
        "cell": cell.slug,
        "processes": processes,
        "command": shlex.join(command),
        "notes": [],
    }
    log_path = Path(f"{prefix}.log")
    timeout = grid.warmup_s + grid.duration_s + 120
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        sampler.track("generator", process.pid)
        try:
            returncode = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            returncode = -9
            details["notes"].append(f"Locust did not finish within {timeout} s and was killed")
    details["returncode"] = returncode
    hdr_path = Path(f"{prefix}_hdr.json")
    if not hdr_path.is_file():
        details["notes"].append(f"Locust wrote no results (exit {returncode}); see {log_path.name}")
        return CellOutcome(_nan_row(cell, config.device, errors=-1), details)
    merged = read_run_output(hdr_path)
    entry = next(
        (
            r
            for r in merged["results"]
            if r["model"] == cell.model
            and r["protocol"] == cell.protocol
            and r["batch_size"] == cell.batch_size
        ),
        None,
    )
    start, end = float(merged["window_start"]), float(merged["window_end"])
    generator_cpu = sampler.percent("generator", start, end)
    busiest = sampler.busiest_process_percent("generator", start, end)
    server_cpu = sampler.percent("server", start, end)
    machine = sampler.machine_percent(start, end)
    details.update(
        {
            "window_s": end - start,
            "generator_busiest_process_cpu": busiest,
            "machine_cpu_percent": machine,
            "final_snapshots": merged.get("final_snapshots"),
            "snapshots": merged.get("processes"),
        }
    )
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
    nan = math.nan
    if entry is None:
        # Locust ran but no request finished (or failed) before the end: each one takes longer
        # than the run at this concurrency. That is a measurement (zero throughput), not an error.
        details["notes"].append(
            f"no request completed within the {grid.warmup_s + grid.duration_s} s run: at this "
            "concurrency every request took longer than that"
        )
        row = _nan_row(cell, config.device, errors=0)
        row.update(
            requests_per_s=0.0,
            images_per_s=0.0,
            generator_cpu=generator_cpu if generator_cpu is not None else nan,
            server_cpu=server_cpu if server_cpu is not None else nan,
        )
        return CellOutcome(row, details)
    row = {
        "runtime": cell.runtime,
        "device": config.device,
        "model": cell.model,
        "protocol": cell.protocol,
        "mode": "served",
        "batch_size": cell.batch_size,
        "concurrency": cell.concurrency,
        **_measured_columns(entry),
        "errors": entry["failures"],
        "generator_cpu": generator_cpu if generator_cpu is not None else nan,
        "server_cpu": server_cpu if server_cpu is not None else nan,
    }
    details["requests"] = entry["requests"]
    return CellOutcome(row, details)


# The result columns a Locust cell's summary and an in-process measurement both report.
_MEASURED_COLUMNS = (
    "requests_per_s",
    "images_per_s",
    "p50_ms",
    "p90_ms",
    "p99_ms",
    "p999_ms",
    "max_ms",
    "accuracy",
)


def _measured_columns(entry: Mapping[str, Any]) -> dict[str, Any]:
    return {column: entry[column] for column in _MEASURED_COLUMNS}


def run_in_process(
    runtime: str, config: SweepConfig, run_dir: Path
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Measure ``runtime`` in-process in a child process; its rows and facts."""
    grid = config.grid
    output = run_dir / f"inprocess-{runtime}.json"
    command = [
        sys.executable,
        "-m",
        "loadtest.inprocess",
        "--runtime",
        runtime,
        "--models-dir",
        str(config.models_dir),
        "--models",
        ",".join(grid.models),
        "--batch-sizes",
        ",".join(map(str, grid.batch_sizes)),
        "--duration",
        str(grid.duration_s),
        "--warmup",
        str(grid.warmup_s),
        "--device",
        config.device,
        "--output",
        str(output),
    ]
    log_path = run_dir / f"inprocess-{runtime}.log"
    cells = len(grid.models) * len(grid.batch_sizes)
    timeout = 300 + cells * (grid.duration_s + grid.warmup_s + 30)
    with open(log_path, "wb") as log:
        try:
            returncode = subprocess.run(
                command, stdout=log, stderr=subprocess.STDOUT, timeout=timeout, check=False
            ).returncode
        except subprocess.TimeoutExpired:
            returncode = -9
    if returncode != 0 or not output.is_file():
        tail = log_path.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
        return [], {"runtime": runtime, "error": f"exit {returncode}: {tail[0]}"}
    measured = json.loads(output.read_text())
    rows = [
        {
            "runtime": runtime,
            "device": config.device,
            "model": entry["model"],
            "protocol": IN_PROCESS_PROTOCOL,
            "mode": "in-process",
            "batch_size": entry["batch_size"],
            "concurrency": 1,
            **_measured_columns(entry),
            "errors": 0,
            "generator_cpu": math.nan,
            "server_cpu": entry["cpu_percent"],
        }
        for entry in measured["results"]
    ]
    return rows, {"runtime": runtime, "describe": measured.get("describe", {})}


# --- the sweep ------------------------------------------------------------------------------------


def _cell_line(row: dict[str, Any], details: dict[str, Any]) -> str:
    def fmt(value: Any, spec: str) -> str:
        return (
            "—"
            if value is None or (isinstance(value, float) and math.isnan(value))
            else (format(value, spec))
        )

    flags = " [generator saturated]" if details.get("generator_saturated") else ""
    where = (
        "in-process" if row["mode"] == "in-process" else f"{row['protocol']} c{row['concurrency']}"
    )
    return (
        f"{row['runtime']} {row['model']} {where} b{row['batch_size']}: "
        f"{fmt(row['images_per_s'], '.0f')} img/s, p50 {fmt(row['p50_ms'], '.3f')} ms, "
        f"p99 {fmt(row['p99_ms'], '.2f')} ms, {row['errors']} err, "
        f"CPU gen {fmt(row['generator_cpu'], '.0f')}% srv {fmt(row['server_cpu'], '.0f')}%{flags}"
    )


def run_sweep(config: SweepConfig, console: Console | None = None) -> Path:
    """Run the whole sweep; returns the run directory (report included)."""
    from loadtest.flops import model_costs
    from loadtest.machine import machine_info

    console = console or Console(stderr=True)
    grid = config.grid
    run_dir = config.output / config.run_id
    run_dir.mkdir(parents=True, exist_ok=False)
    (run_dir / "command.txt").write_text(shlex.join(config.command) + "\n")
    (run_dir / "machine.json").write_text(json.dumps(machine_info(), indent=1) + "\n")

    rows: list[dict[str, Any]] = []
    cells_info: list[dict[str, Any]] = []
    runtimes_info: list[dict[str, Any]] = []
    notes: list[str] = []
    served = grid.served_cells()
    in_process_count = (
        len(grid.runtimes) * len(grid.models) * len(grid.batch_sizes) if config.in_process else 0
    )
    started = time.time()
    progress = Progress(
        TextColumn("[bold]{task.description:<44}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )
    with CpuSampler() as sampler, progress:
        task = progress.add_task("starting", total=len(served) + in_process_count)
        for runtime in grid.runtimes:
            info: dict[str, Any] = {"runtime": runtime}
            if config.in_process:
                progress.update(task, description=f"{runtime}: in-process")
                ip_rows, ip_info = run_in_process(runtime, config, run_dir)
                info["in_process"] = ip_info
                if "error" in ip_info:
                    notes.append(f"{runtime}: in-process measurement failed: {ip_info['error']}")
                    progress.console.print(f"[red]{notes[-1]}")
                for row in ip_rows:
                    progress.console.print(_cell_line(row, {}))
                rows.extend(ip_rows)
                progress.advance(task, len(grid.models) * len(grid.batch_sizes))
            runtime_cells = [c for c in served if c.runtime == runtime]
            server = None
            if config.target is None:
                from serving.process import ServerProcess

                progress.update(task, description=f"{runtime}: starting server")
                server = ServerProcess(
                    config.models_dir / MODELS_CONFIG_FILENAME,
                    ["--runtime", runtime, "--device", config.device, *config.server_args],
                    startup_timeout_s=config.startup_timeout_s,
                    log_path=run_dir / f"server-{runtime}.log",
                )
                try:
                    server.start()
                except (RuntimeError, TimeoutError) as exc:
                    notes.append(f"{runtime}: the server did not start: {exc}")
                    progress.console.print(f"[red]{notes[-1]}")
                    info["server_error"] = str(exc)
                    runtimes_info.append(info)
                    for cell in runtime_cells:
                        rows.append(_nan_row(cell, config.device, errors=-1))
                        cells_info.append({"cell": cell.slug, "notes": ["server did not start"]})
                    progress.advance(task, len(runtime_cells))
                    continue
                assert server.process is not None
                info["server_startup_s"] = round(server.startup_seconds, 2)
                info["server_command"] = shlex.join(server.command)
                sampler.track("server", server.process.pid)
                target = Target(grpc=server.grpc_target, rest_url=server.rest_url)
            else:
                target = config.target
                if config.server_pid:
                    sampler.track("server", config.server_pid)
            try:
                for cell in runtime_cells:
                    progress.update(task, description=cell.slug)
                    if (
                        server is not None
                        and server.process is not None
                        and server.process.poll() is not None
                    ):
                        raise RuntimeError(
                            f"the {runtime} server exited with {server.process.returncode}"
                            f"; see server-{runtime}.log"
                        )
                    outcome = run_cell(cell, config, target, run_dir, sampler)
                    rows.append(outcome.row)
                    cells_info.append(outcome.details)
                    progress.console.print(_cell_line(outcome.row, outcome.details))
                    for note in outcome.details["notes"]:
                        if "saturated" not in note:
                            progress.console.print(f"  [yellow]{note}")
                    progress.advance(task)
            except RuntimeError as exc:
                notes.append(str(exc))
                progress.console.print(f"[red]{exc}")
                done = {c["cell"] for c in cells_info}
                for cell in runtime_cells:
                    if cell.slug not in done:
                        rows.append(_nan_row(cell, config.device, errors=-1))
                        cells_info.append({"cell": cell.slug, "notes": [str(exc)]})
                        progress.advance(task)
            finally:
                sampler.untrack("server")
                if server is not None:
                    progress.update(task, description=f"{runtime}: stopping server")
                    code = server.stop()
                    info["server_exit_code"] = code
                    if code != 0:
                        notes.append(f"{runtime}: the server exited with {code} on SIGTERM")
            runtimes_info.append(info)
        progress.update(task, description="done")

    write_results(run_dir, rows)
    run_meta = {
        "run_id": config.run_id,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "elapsed_s": round(time.time() - started, 1),
        "grid": asdict(grid),
        "full": config.full,
        "device": config.device,
        "models_dir": str(config.models_dir),
        "target": asdict(config.target) if config.target else None,
        "server_args": list(config.server_args),
        "costs": model_costs(config.models_dir),
        "runtimes": runtimes_info,
        "cells": cells_info,
        "notes": notes,
    }
    (run_dir / "run.json").write_text(json.dumps(run_meta, indent=1, default=str) + "\n")
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
