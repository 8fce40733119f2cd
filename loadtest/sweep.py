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

import argparse
import importlib.util
import json
import math
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
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from contract import MODEL_NAMES, MODELS_CONFIG_FILENAME
from loadtest.cpu import CpuSampler, pinned, usable_cpus
from loadtest.inprocess import interleaved
from loadtest.phases import NO_PHASES, PhaseMeans, phase_means, scrape
from loadtest.recorder import read_run_output
from loadtest.results import (
    IN_PROCESS_PROTOCOL,
    SERVER_PHASES,
    Row,
    history_samples,
    sample_key,
    write_results,
)

RUNTIMES: tuple[str, ...] = ("onnx", "tensorflow", "torch")
PROTOCOLS: tuple[str, ...] = ("grpc", "rest")
DEVICES: tuple[str, ...] = ("cpu", "cuda")
LOCUSTFILE = Path(__file__).with_name("locustfile.py")
GENERATOR_SATURATED_PERCENT = 90.0  # Locust's own per-process CPU warning threshold
MACHINE_SATURATED_PERCENT = 95.0
MAX_CONCURRENCY = 1024
MAX_BATCH_SIZE = 10_000  # the MNIST test set
MAX_REPEATS = 100


@dataclass(frozen=True)
class Grid:
    """The axes of a sweep, the time spent per cell, and how often each cell is measured."""

    runtimes: tuple[str, ...]
    models: tuple[str, ...]
    batch_sizes: tuple[int, ...]
    concurrency: tuple[int, ...]
    protocols: tuple[str, ...]
    duration_s: int
    warmup_s: int
    repeats: int = 1

    def served_cells(self) -> list[Cell]:
        """Every served measurement, runtime-major (one server start per runtime); within a
        (protocol, batch, concurrency) cell the repetitions alternate the models A B B A …"""
        return [
            Cell(r, m, p, b, c, repeat)
            for r in self.runtimes
            for p in self.protocols
            for b in self.batch_sizes
            for c in self.concurrency
            for repeat in range(self.repeats)
            for m in interleaved(self.models, repeat)
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
    repeats=1,
)


def _torch_available() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("torch", "onnx2torch"))


# The full grid: 2 models x 2 protocols x 3 batch sizes x 3 concurrency levels x 3 repetitions =
# 108 Locust runs of 2 + 10 s per runtime: about 35 minutes per runtime on 2 cores (torch joins
# when installed).
FULL_GRID = Grid(
    runtimes=("onnx", "tensorflow", *(("torch",) if _torch_available() else ())),
    models=MODEL_NAMES,
    batch_sizes=(1, 32, 256),
    concurrency=(1, 8, 32),
    protocols=PROTOCOLS,
    duration_s=10,
    warmup_s=2,
    repeats=3,
)


@dataclass(frozen=True)
class Cell:
    """One served measurement."""

    runtime: str
    model: str
    protocol: str
    batch_size: int
    concurrency: int
    repeat: int = 0

    @property
    def slug(self) -> str:
        """A file-name-safe id: ``onnx-standard-grpc-b32-c8`` (``-r1`` … for repetitions)."""
        base = f"{self.runtime}-{self.model}-{self.protocol}-b{self.batch_size}-c{self.concurrency}"
        return f"{base}-r{self.repeat}" if self.repeat else base


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
    opprofile: bool = True
    server_args: tuple[str, ...] = ()
    run_id: str = ""
    startup_timeout_s: float = 180.0
    full: bool = False
    server_cpus: tuple[int, ...] | None = None
    generator_cpus: tuple[int, ...] | None = None
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


def _cpu_list(text: str, flag: str) -> tuple[int, ...]:
    cpus = _ints_from(text, flag)
    usable = usable_cpus()
    outside = sorted(set(cpus) - usable)
    if outside:
        raise UsageError(
            f"{flag}: CPU {', '.join(map(str, outside))} not usable here "
            f"(usable: {', '.join(map(str, sorted(usable)))})"
        )
    return cpus


def _ints_from(text: str, flag: str) -> tuple[int, ...]:
    values = []
    for item in _split(text, flag):
        if not item.isdigit():
            raise UsageError(f"{flag}: {item!r} is not a CPU id")
        values.append(int(item))
    return tuple(values)


def build_parser() -> argparse.ArgumentParser:
    """The sweep's command line."""
    demo, full = DEMO_GRID, FULL_GRID
    parser = _Parser(
        prog="python -m loadtest",
        description=(
            "Load-test the standard and separable models over gRPC and REST with Locust, per "
            "runtime, batch size and concurrency, measure each runtime in-process, profile its "
            "operators, and write reports/<run-id>/ (results.csv, ratios.csv, opprofile.csv, "
            "results.json, report.md, plots)."
        ),
        epilog=(
            f"Without axis flags the demo grid runs (runtimes {','.join(demo.runtimes)}, batch "
            f"sizes {','.join(map(str, demo.batch_sizes))}, concurrency "
            f"{','.join(map(str, demo.concurrency))}, {demo.warmup_s}+{demo.duration_s} s per "
            f"cell, {demo.repeats} repetition); --full runs batch sizes "
            f"{','.join(map(str, full.batch_sizes))}, concurrency "
            f"{','.join(map(str, full.concurrency))}, {full.warmup_s}+{full.duration_s} s per cell,"
            f" {full.repeats} repetitions. Axis flags override either."
        ),
    )
    parser.add_argument("--runtimes", help=f"comma-separated: {', '.join(RUNTIMES)}")
    parser.add_argument("--models", help=f"comma-separated: {', '.join(MODEL_NAMES)}")
    parser.add_argument("--batch-sizes", help="comma-separated images per request, e.g. 1,32,256")
    parser.add_argument("--concurrency", help="comma-separated Locust user counts, e.g. 1,8,32")
    parser.add_argument("--protocols", help="comma-separated: grpc, rest")
    parser.add_argument("--duration", help="measured seconds per cell (integer)")
    parser.add_argument("--warmup", help="warm-up seconds per cell, not measured (integer)")
    parser.add_argument(
        "--repeats",
        help=f"measurements per cell, models alternating A B B A (default {demo.repeats}, "
        f"{full.repeats} with --full)",
    )
    parser.add_argument("--full", action="store_true", help="the full grid (tens of minutes)")
    parser.add_argument(
        "--models-dir", default="models", help="the export's model repository (default: models/)"
    )
    parser.add_argument("--output", default="reports", help="reports root (default: reports/)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (server and in-process)")
    parser.add_argument(
        "--server-cpus",
        help="CPU ids for the server and the in-process floor, e.g. 0 (default: all)",
    )
    parser.add_argument(
        "--generator-cpus",
        help="CPU ids for Locust, disjoint from --server-cpus, e.g. 1 (default: all)",
    )
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
        help="Locust worker processes per cell (default: min(concurrency, generator cores))",
    )
    parser.add_argument(
        "--in-process",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also measure each runtime in-process, the floor for serving overhead",
    )
    parser.add_argument(
        "--opprofile",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also profile each in-process runtime's operators (opprofile.csv; ONNX Runtime)",
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


def _grid_from_args(args: argparse.Namespace) -> Grid:
    base = FULL_GRID if args.full else DEMO_GRID

    def axis(value: str | None, parse: Any, default: Any) -> Any:
        return parse(value) if value is not None else default

    grid = replace(
        base,
        runtimes=axis(args.runtimes, lambda v: _choices(v, "--runtimes", RUNTIMES), base.runtimes),
        models=axis(args.models, lambda v: _choices(v, "--models", MODEL_NAMES), base.models),
        batch_sizes=axis(
            args.batch_sizes,
            lambda v: _ints(v, "--batch-sizes", MAX_BATCH_SIZE),
            base.batch_sizes,
        ),
        concurrency=axis(
            args.concurrency,
            lambda v: _ints(v, "--concurrency", MAX_CONCURRENCY),
            base.concurrency,
        ),
        protocols=axis(
            args.protocols, lambda v: _choices(v, "--protocols", PROTOCOLS), base.protocols
        ),
        duration_s=axis(args.duration, lambda v: _positive(v, "--duration"), base.duration_s),
        warmup_s=axis(
            args.warmup, lambda v: _positive(v, "--warmup", allow_zero=True), base.warmup_s
        ),
        repeats=axis(args.repeats, _repeats, base.repeats),
    )
    return grid


def _repeats(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise UsageError(f"--repeats: expected a whole number, got {text!r}") from None
    if not 1 <= value <= MAX_REPEATS:
        raise UsageError(f"--repeats: {value} is out of range 1..{MAX_REPEATS}")
    return value


def _target_from_args(
    args: argparse.Namespace, grid: Grid, models_dir: Path
) -> tuple[Target | None, int | None]:
    if not args.target:
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
        return None, None
    host, port = _host_port(args.target, "--target")
    if len(grid.runtimes) != 1:
        raise UsageError(
            "--target measures one running server: name its runtime with --runtimes (exactly one)"
        )
    rest_host, rest_port = (
        _host_port(args.rest_target, "--rest-target") if args.rest_target else (host, port + 1)
    )
    target = Target(grpc=f"{host}:{port}", rest_url=f"http://{rest_host}:{rest_port}")
    server_pid = None
    if args.server_pid:
        if not args.server_pid.isdigit():
            raise UsageError(f"--server-pid: expected a process id, got {args.server_pid!r}")
        server_pid = int(args.server_pid)
    return target, server_pid


def _pinning_from_args(
    args: argparse.Namespace,
) -> tuple[tuple[int, ...] | None, tuple[int, ...] | None]:
    server = _cpu_list(args.server_cpus, "--server-cpus") if args.server_cpus else None
    generator = _cpu_list(args.generator_cpus, "--generator-cpus") if args.generator_cpus else None
    if server and generator and set(server) & set(generator):
        shared = ", ".join(map(str, sorted(set(server) & set(generator))))
        raise UsageError(
            f"--server-cpus and --generator-cpus must be disjoint (both have CPU {shared})"
        )
    return server, generator


def config_from_args(argv: Sequence[str]) -> SweepConfig:
    """Parse and validate; raises :class:`UsageError` with a one-line message."""
    args = build_parser().parse_args(argv)
    grid = _grid_from_args(args)
    if args.device not in DEVICES:
        raise UsageError(f"--device: expected cpu or cuda, got {args.device!r}")
    models_dir = Path(args.models_dir).expanduser().resolve()
    target, server_pid = _target_from_args(args, grid, models_dir)
    server_cpus, generator_cpus = _pinning_from_args(args)
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
        opprofile=args.opprofile,
        server_args=server_args,
        run_id=run_id,
        startup_timeout_s=startup_timeout,
        full=args.full,
        server_cpus=server_cpus,
        generator_cpus=generator_cpus,
        command=["python", "-m", "loadtest", *argv],
    )


# --- measuring ------------------------------------------------------------------------------------


def worker_processes(concurrency: int, requested: int | None, cores: int | None = None) -> int:
    """Locust worker processes for a cell: one per core (``cores``: the generator's, default
    all usable), never more than users (0 = in-process runner, for a single user)."""
    if requested is not None:
        return min(requested, concurrency)
    if cores is None:
        cores = len(usable_cpus())
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

    row: Row
    details: dict[str, Any]


def _nan_row(cell: Cell, device: str, *, errors: int = 0) -> Row:
    """The row of a served cell without measurements (``errors`` -1: it could not run)."""
    nan = math.nan
    return Row(
        runtime=cell.runtime,
        device=device,
        model=cell.model,
        protocol=cell.protocol,
        mode="served",
        batch_size=cell.batch_size,
        concurrency=cell.concurrency,
        repeat=cell.repeat,
        requests_per_s=nan,
        images_per_s=nan,
        p50_ms=nan,
        p90_ms=nan,
        p99_ms=nan,
        p999_ms=nan,
        max_ms=nan,
        errors=errors,
        accuracy=nan,
        generator_cpu=nan,
        server_cpu=nan,
        server_decode_ms=None,
        server_queue_ms=None,
        server_infer_ms=None,
        server_encode_ms=None,
    )


def _find_entry(merged: Mapping[str, Any], cell: Cell) -> Mapping[str, Any] | None:
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
    command: list[str], log_path: Path, timeout: float, sampler: CpuSampler, cpus: Any
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
    merged: Mapping[str, Any], sampler: CpuSampler, processes: int, details: dict[str, Any]
) -> tuple[float | None, float | None]:
    """CPU use over the measurement window into ``details``; (generator %, server %)."""
    start, end = float(merged["window_start"]), float(merged["window_end"])
    busiest = sampler.busiest_process_percent("generator", start, end)
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
    return sampler.percent("generator", start, end), sampler.percent("server", start, end)


def _or_nan(value: float | None) -> float:
    return math.nan if value is None else value


def run_cell(
    cell: Cell,
    config: SweepConfig,
    target: Target,
    run_dir: Path,
    sampler: CpuSampler,
) -> CellOutcome:
    """Run Locust for one cell and turn its HDR results, CPU samples and the server's phase
    histogram into a row."""
    grid = config.grid
    cores = len(config.generator_cpus) if config.generator_cpus else None
    processes = worker_processes(cell.concurrency, config.processes, cores)
    locust_dir = run_dir / "locust"
    locust_dir.mkdir(parents=True, exist_ok=True)
    prefix = locust_dir / cell.slug
    command = locust_command(cell, target, grid, processes, prefix)
    details: dict[str, Any] = {
        "cell": cell.slug,
        "repeat": cell.repeat,
        "processes": processes,
        "command": shlex.join(command),
        "notes": [],
    }
    before = scrape(target.rest_url)
    returncode, note = _run_locust(
        command,
        Path(f"{prefix}.log"),
        grid.warmup_s + grid.duration_s + 120,
        sampler,
        config.generator_cpus,
    )
    phases = phase_means(before, scrape(target.rest_url), cell.model, cell.protocol)
    if note:
        details["notes"].append(note)
    details["returncode"] = returncode
    hdr_path = Path(f"{prefix}_hdr.json")
    if not hdr_path.is_file():
        details["notes"].append(
            f"Locust wrote no results (exit {returncode}); see {prefix.name}.log"
        )
        return CellOutcome(_nan_row(cell, config.device, errors=-1), details)
    merged = read_run_output(hdr_path)
    generator_cpu, server_cpu = _window_facts(merged, sampler, processes, details)
    entry = _find_entry(merged, cell)
    if entry is None:
        # Locust ran but no request finished (or failed) before the end: each one takes longer
        # than the run at this concurrency. That is a measurement (zero throughput), not an error.
        details["notes"].append(
            f"no request completed within the {grid.warmup_s + grid.duration_s} s run: at this "
            "concurrency every request took longer than that"
        )
        row = _nan_row(cell, config.device, errors=0)
        row["requests_per_s"] = row["images_per_s"] = 0.0
        row["generator_cpu"] = _or_nan(generator_cpu)
        row["server_cpu"] = _or_nan(server_cpu)
        return CellOutcome(row, details)
    details["samples"] = history_samples(
        Path(f"{prefix}_stats_history.csv"),
        float(merged["window_start"]),
        float(merged["window_end"]),
        cell.batch_size,
        distributed=processes > 0,
    )
    row = _row(
        cell.runtime,
        config.device,
        cell.model,
        cell.protocol,
        cell.batch_size,
        cell.concurrency,
        cell.repeat,
        entry,
        errors=int(entry["failures"]),
        generator_cpu=_or_nan(generator_cpu),
        server_cpu=_or_nan(server_cpu),
        phases=phases,
    )
    details["requests"] = entry["requests"]
    if not entry["requests"]:
        # Answers came only during the warm-up: no request completed in the measured window,
        # so the cell has no throughput to speak of and reports no accuracy either.
        row["accuracy"] = math.nan
    return CellOutcome(row, details)


def _row(
    runtime: str,
    device: str,
    model: str,
    protocol: str,
    batch_size: int,
    concurrency: int,
    repeat: int,
    entry: Mapping[str, Any],
    *,
    errors: int,
    generator_cpu: float,
    server_cpu: float,
    phases: PhaseMeans = NO_PHASES,
) -> Row:
    return Row(
        runtime=runtime,
        device=device,
        model=model,
        protocol=protocol,
        mode="in-process" if protocol == IN_PROCESS_PROTOCOL else "served",
        batch_size=batch_size,
        concurrency=concurrency,
        repeat=repeat,
        requests_per_s=entry["requests_per_s"],
        images_per_s=entry["images_per_s"],
        p50_ms=entry["p50_ms"],
        p90_ms=entry["p90_ms"],
        p99_ms=entry["p99_ms"],
        p999_ms=entry["p999_ms"],
        max_ms=entry["max_ms"],
        errors=errors,
        accuracy=entry["accuracy"],
        generator_cpu=generator_cpu,
        server_cpu=server_cpu,
        server_decode_ms=phases.decode,
        server_queue_ms=phases.queue,
        server_infer_ms=phases.infer,
        server_encode_ms=phases.encode,
    )


def _child(command: list[str], log_path: Path, timeout: float, cpus: tuple[int, ...] | None) -> int:
    """Run a measuring child process on ``cpus`` with its output in ``log_path``."""
    with open(log_path, "wb") as log, pinned(cpus):
        try:
            return subprocess.run(
                command, stdout=log, stderr=subprocess.STDOUT, timeout=timeout, check=False
            ).returncode
        except subprocess.TimeoutExpired:
            return -9


def run_in_process(
    runtime: str, config: SweepConfig, run_dir: Path
) -> tuple[list[Row], dict[str, Any]]:
    """Measure ``runtime`` in-process in a child process on the server's cores; its rows and
    facts (``samples``: images/s per slice of each measurement window, by row key)."""
    grid = config.grid
    output = run_dir / f"inprocess-{runtime}.json"
    command = [
        sys.executable,
        "-m",
        "loadtest.inprocess",
        *("--runtime", runtime, "--models-dir", str(config.models_dir)),
        *("--models", ",".join(grid.models)),
        *("--batch-sizes", ",".join(map(str, grid.batch_sizes))),
        *("--duration", str(grid.duration_s), "--warmup", str(grid.warmup_s)),
        *("--device", config.device, "--repeats", str(grid.repeats)),
        *("--output", str(output)),
    ]
    log_path = run_dir / f"inprocess-{runtime}.log"
    cells = len(grid.models) * len(grid.batch_sizes) * grid.repeats
    returncode = _child(
        command, log_path, 300 + cells * (grid.duration_s + grid.warmup_s + 30), config.server_cpus
    )
    if returncode != 0 or not output.is_file():
        tail = log_path.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
        return [], {"runtime": runtime, "error": f"exit {returncode}: {tail[0]}"}
    measured = json.loads(output.read_text())
    rows = []
    samples = {}
    for entry in measured["results"]:
        row = _row(
            runtime,
            config.device,
            entry["model"],
            IN_PROCESS_PROTOCOL,
            entry["batch_size"],
            1,
            int(entry.get("repeat", 0)),
            entry,
            errors=0,
            generator_cpu=math.nan,
            server_cpu=entry["cpu_percent"],
        )
        rows.append(row)
        samples[sample_key(row)] = entry.get("samples", [])
    return rows, {"runtime": runtime, "describe": measured.get("describe", {}), "samples": samples}


def run_opprofile(runtime: str, config: SweepConfig, run_dir: Path) -> str | None:
    """Append ``runtime``'s per-operator profile to ``opprofile.csv`` (on the server's cores);
    a note when there is none."""
    from loadtest.opprofile import DEFAULT_BATCH_SIZES, OPPROFILE_CSV, PROFILED_RUNTIMES

    if runtime not in PROFILED_RUNTIMES:
        return (
            f"{runtime}: no per-operator profile (ONNX Runtime's and TensorFlow's profilers "
            "are read; this runtime's is not)"
        )
    if config.device != "cpu":
        return f"{runtime}: no per-operator profile on {config.device} (CPU only)"
    command = [
        sys.executable,
        "-m",
        "loadtest.opprofile",
        *("--runtime", runtime, "--models-dir", str(config.models_dir)),
        *("--models", ",".join(config.grid.models)),
        *("--batch-sizes", ",".join(map(str, DEFAULT_BATCH_SIZES))),
        *("--output", str(run_dir / OPPROFILE_CSV)),
    ]
    log_path = run_dir / f"opprofile-{runtime}.log"
    returncode = _child(command, log_path, 900, config.server_cpus)
    if returncode != 0:
        tail = log_path.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
        return f"{runtime}: per-operator profile failed (exit {returncode}): {tail[0]}"
    return None


# --- the sweep ------------------------------------------------------------------------------------


def _cell_line(row: Row, details: dict[str, Any]) -> str:
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
    repeat = f" r{row['repeat']}" if row["repeat"] else ""
    server = ""
    if row["server_infer_ms"] is not None and not math.isnan(row["server_infer_ms"]):
        phases = "/".join(fmt(row[f"server_{p}_ms"], ".3f") for p in SERVER_PHASES)  # type: ignore[literal-required]
        server = f", server {phases} ms"
    return (
        f"{row['runtime']} {row['model']} {where} b{row['batch_size']}{repeat}: "
        f"{fmt(row['images_per_s'], '.0f')} img/s, p50 {fmt(row['p50_ms'], '.3f')} ms, "
        f"p99 {fmt(row['p99_ms'], '.2f')} ms, {row['errors']} err, "
        f"CPU gen {fmt(row['generator_cpu'], '.0f')}% srv {fmt(row['server_cpu'], '.0f')}%"
        f"{server}{flags}"
    )


@dataclass
class _Sweep:
    """What a sweep has measured so far, and its progress display."""

    config: SweepConfig
    run_dir: Path
    progress: Progress
    task: TaskID = field(default_factory=lambda: TaskID(0))
    rows: list[Row] = field(default_factory=list)
    cells: list[dict[str, Any]] = field(default_factory=list)
    runtimes: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    samples: dict[str, list[float]] = field(default_factory=dict)

    def say(self, text: str) -> None:
        self.progress.console.print(text)

    def note(self, text: str) -> None:
        self.notes.append(text)
        self.say(f"[red]{text}")

    def add(self, row: Row, details: dict[str, Any], samples: list[float] | None = None) -> None:
        self.rows.append(row)
        if details:
            self.cells.append(details)
        if samples:
            self.samples[sample_key(row)] = samples

    def measure_in_process(self, runtime: str, info: dict[str, Any]) -> None:
        grid = self.config.grid
        self.progress.update(self.task, description=f"{runtime}: in-process")
        rows, facts = run_in_process(runtime, self.config, self.run_dir)
        self.samples.update(facts.pop("samples", {}))
        info["in_process"] = facts
        if "error" in facts:
            self.note(f"{runtime}: in-process measurement failed: {facts['error']}")
        for row in rows:
            self.say(_cell_line(row, {}))
            self.rows.append(row)
        if self.config.opprofile:
            self.progress.update(self.task, description=f"{runtime}: operator profile")
            missing = run_opprofile(runtime, self.config, self.run_dir)
            if missing:
                self.notes.append(missing)
                self.say(f"[yellow]{missing}")
        self.progress.advance(self.task, len(grid.models) * len(grid.batch_sizes) * grid.repeats)

    def start_server(self, runtime: str, info: dict[str, Any], sampler: CpuSampler) -> Any:
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

    def skip(self, cells: Sequence[Cell], why: str) -> None:
        """Record ``cells`` as not run (errors -1)."""
        for cell in cells:
            self.rows.append(_nan_row(cell, self.config.device, errors=-1))
            self.cells.append({"cell": cell.slug, "repeat": cell.repeat, "notes": [why]})
            self.progress.advance(self.task)

    def run_cells(
        self, cells: Sequence[Cell], target: Target, server: Any, sampler: CpuSampler
    ) -> None:
        for done, cell in enumerate(cells):
            self.progress.update(self.task, description=cell.slug)
            if (
                server is not None
                and server.process is not None
                and server.process.poll() is not None
            ):
                why = (
                    f"the {cell.runtime} server exited with {server.process.returncode}"
                    f"; see server-{cell.runtime}.log"
                )
                self.note(why)
                self.skip(cells[done:], why)
                return
            outcome = run_cell(cell, self.config, target, self.run_dir, sampler)
            self.add(outcome.row, outcome.details, outcome.details.pop("samples", None))
            self.say(_cell_line(outcome.row, outcome.details))
            for note in outcome.details["notes"]:
                if "saturated" not in note:
                    self.say(f"  [yellow]{note}")
            self.progress.advance(self.task)

    def measure_served(self, runtime: str, info: dict[str, Any], sampler: CpuSampler) -> None:
        config = self.config
        cells = [c for c in config.grid.served_cells() if c.runtime == runtime]
        server = None
        if config.target is None:
            server = self.start_server(runtime, info, sampler)
            if server is None:
                self.skip(cells, "server did not start")
                return
            target = Target(grpc=server.grpc_target, rest_url=server.rest_url)
        else:
            target = config.target
            if config.server_pid:
                sampler.track("server", config.server_pid)
        try:
            self.run_cells(cells, target, server, sampler)
        finally:
            sampler.untrack("server")
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
    from loadtest.machine import machine_info

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
    (run_dir / "command.txt").write_text(shlex.join(config.command) + "\n")
    (run_dir / "machine.json").write_text(json.dumps(_machine(config), indent=1) + "\n")
    sweep = _Sweep(config, run_dir, _progress(console))
    in_process_steps = (
        len(grid.runtimes) * len(grid.models) * len(grid.batch_sizes) * grid.repeats
        if config.in_process
        else 0
    )
    started = time.time()
    with CpuSampler() as sampler, sweep.progress:
        sweep.task = sweep.progress.add_task(
            "starting", total=len(grid.served_cells()) + in_process_steps
        )
        for runtime in grid.runtimes:
            info: dict[str, Any] = {"runtime": runtime}
            if config.in_process:
                sweep.measure_in_process(runtime, info)
            sweep.measure_served(runtime, info, sampler)
            sweep.runtimes.append(info)
        sweep.progress.update(sweep.task, description="done")
    write_results(run_dir, sweep.rows)
    (run_dir / "run.json").write_text(
        json.dumps(_run_meta(sweep, started), indent=1, default=str) + "\n"
    )
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
