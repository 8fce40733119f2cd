"""The sweep's command line (``python -m loadtest``): parsing and validation into a
:class:`~loadtest.plan.SweepConfig`, and the one parser of comma-separated lists that the sweep,
the in-process floor and the locustfile's options share.

Every bad command line becomes a :class:`UsageError` with a one-line message naming the flag.
"""

from __future__ import annotations

import argparse
import shlex
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import NoReturn, TypeVar

from contract import MODEL_NAMES, MODELS_CONFIG_FILENAME, RUNTIMES
from contract.cli import UsageError, comma_list
from loadtest.plan import DEMO_GRID, DEVICES, FULL_GRID, PROTOCOLS, Grid, SweepConfig, Target

MAX_CONCURRENCY = 1024
MAX_BATCH_SIZE = 10_000  # the MNIST test set
MAX_REPEATS = 100

T = TypeVar("T")


def choices(text: str, flag: str, allowed: Sequence[str]) -> tuple[str, ...]:
    """A comma-separated list of names from ``allowed``."""
    items = comma_list(text, flag)
    unknown = [item for item in items if item not in allowed]
    if unknown:
        raise UsageError(f"{flag}: unknown {', '.join(unknown)}; choose from {', '.join(allowed)}")
    return tuple(items)


def ints(text: str, flag: str, maximum: int) -> tuple[int, ...]:
    """A comma-separated list of integers in 1..``maximum``."""
    values = []
    for item in comma_list(text, flag):
        try:
            value = int(item)
        except ValueError:
            raise UsageError(f"{flag}: {item!r} is not an integer") from None
        if not 1 <= value <= maximum:
            raise UsageError(f"{flag}: {value} is out of range 1..{maximum}")
        values.append(value)
    return tuple(values)


def cpu_ids(text: str, flag: str) -> tuple[int, ...]:
    """A comma-separated list of CPU ids (not checked against this machine)."""
    values = []
    for item in comma_list(text, flag):
        if not item.isdigit():
            raise UsageError(f"{flag}: {item!r} is not a CPU id")
        values.append(int(item))
    return tuple(values)


def usable_cpu_list(text: str, flag: str) -> tuple[int, ...]:
    """CPU ids that this process may run on."""
    from loadtest.run.cpu import usable_cpus

    cpus = cpu_ids(text, flag)
    usable = usable_cpus()
    outside = sorted(set(cpus) - usable)
    if outside:
        raise UsageError(
            f"{flag}: CPU {', '.join(map(str, outside))} not usable here "
            f"(usable: {', '.join(map(str, sorted(usable)))})"
        )
    return cpus


def host_port(text: str, flag: str) -> tuple[str, int]:
    """``host:port``."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise UsageError(f"{flag}: expected host:port, got {text!r}")
    return host, int(port_text)


def positive(text: str, flag: str, *, allow_zero: bool = False) -> int:
    """Whole seconds, at least 1 (or 0 with ``allow_zero``)."""
    try:
        value = int(text)
    except ValueError:
        raise UsageError(f"{flag}: expected whole seconds, got {text!r}") from None
    if value < 0 or (value == 0 and not allow_zero):
        raise UsageError(f"{flag}: must be {'≥ 0' if allow_zero else '≥ 1'}, got {value}")
    return value


def repeats(text: str) -> int:
    """``--repeats``: 1..:data:`MAX_REPEATS`."""
    try:
        value = int(text)
    except ValueError:
        raise UsageError(f"--repeats: expected a whole number, got {text!r}") from None
    if not 1 <= value <= MAX_REPEATS:
        raise UsageError(f"--repeats: {value} is out of range 1..{MAX_REPEATS}")
    return value


# --- the parser -----------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line as one line on stderr and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _epilog() -> str:
    demo, full = DEMO_GRID, FULL_GRID
    return (
        f"Without axis flags the demo grid runs (runtimes {','.join(demo.runtimes)}, batch "
        f"sizes {','.join(map(str, demo.batch_sizes))}, concurrency "
        f"{','.join(map(str, demo.concurrency))}, {demo.warmup_s}+{demo.duration_s} s per "
        f"cell, {demo.repeats} repetition); --full runs batch sizes "
        f"{','.join(map(str, full.batch_sizes))}, concurrency "
        f"{','.join(map(str, full.concurrency))}, {full.warmup_s}+{full.duration_s} s per cell,"
        f" {full.repeats} repetitions. Axis flags override either."
    )


def _add_grid_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runtimes", help=f"comma-separated: {', '.join(RUNTIMES)}")
    parser.add_argument("--models", help=f"comma-separated: {', '.join(MODEL_NAMES)}")
    parser.add_argument("--batch-sizes", help="comma-separated images per request, e.g. 1,32,256")
    parser.add_argument("--concurrency", help="comma-separated Locust user counts, e.g. 1,8,32")
    parser.add_argument("--protocols", help="comma-separated: grpc, rest")
    parser.add_argument("--duration", help="measured seconds per cell (integer)")
    parser.add_argument("--warmup", help="warm-up seconds per cell, not measured (integer)")
    parser.add_argument(
        "--repeats",
        help=f"measurements per cell, models alternating A B B A (default {DEMO_GRID.repeats}, "
        f"{FULL_GRID.repeats} with --full)",
    )
    parser.add_argument("--full", action="store_true", help="the full grid (tens of minutes)")


def _add_placement_flags(parser: argparse.ArgumentParser) -> None:
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


def _add_run_flags(parser: argparse.ArgumentParser) -> None:
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


def build_parser() -> argparse.ArgumentParser:
    """The sweep's command line."""
    parser = _Parser(
        prog="python -m loadtest",
        description=(
            "Load-test the standard and separable models over gRPC and REST with Locust, per "
            "runtime, batch size and concurrency, measure each runtime in-process, profile its "
            "operators, and write reports/<run-id>/ (results.csv, ratios.csv, opprofile.csv, "
            "results.json, report.md, plots)."
        ),
        epilog=_epilog(),
    )
    _add_grid_flags(parser)
    _add_placement_flags(parser)
    _add_run_flags(parser)
    return parser


# --- validation -----------------------------------------------------------------------------------


def _axis(value: str | None, parse: Callable[[str], T], default: T) -> T:
    return parse(value) if value is not None else default


def grid_from_args(args: argparse.Namespace) -> Grid:
    """The demo or full grid with the axis flags applied."""
    base = FULL_GRID if args.full else DEMO_GRID
    return replace(
        base,
        runtimes=_axis(args.runtimes, lambda v: choices(v, "--runtimes", RUNTIMES), base.runtimes),
        models=_axis(args.models, lambda v: choices(v, "--models", MODEL_NAMES), base.models),
        batch_sizes=_axis(
            args.batch_sizes, lambda v: ints(v, "--batch-sizes", MAX_BATCH_SIZE), base.batch_sizes
        ),
        concurrency=_axis(
            args.concurrency,
            lambda v: ints(v, "--concurrency", MAX_CONCURRENCY),
            base.concurrency,
        ),
        protocols=_axis(
            args.protocols, lambda v: choices(v, "--protocols", PROTOCOLS), base.protocols
        ),
        duration_s=_axis(args.duration, lambda v: positive(v, "--duration"), base.duration_s),
        warmup_s=_axis(
            args.warmup, lambda v: positive(v, "--warmup", allow_zero=True), base.warmup_s
        ),
        repeats=_axis(args.repeats, repeats, base.repeats),
    )


def _check_started_server(args: argparse.Namespace, models_dir: Path) -> None:
    """Without ``--target`` the sweep starts servers itself from ``models_dir``."""
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


def target_from_args(
    args: argparse.Namespace, grid: Grid, models_dir: Path
) -> tuple[Target | None, int | None]:
    """The running server to measure (``--target``) and its pid, or (None, None)."""
    if not args.target:
        _check_started_server(args, models_dir)
        return None, None
    host, port = host_port(args.target, "--target")
    if len(grid.runtimes) != 1:
        raise UsageError(
            "--target measures one running server: name its runtime with --runtimes (exactly one)"
        )
    rest_host, rest_port = (
        host_port(args.rest_target, "--rest-target") if args.rest_target else (host, port + 1)
    )
    target = Target(grpc=f"{host}:{port}", rest_url=f"http://{rest_host}:{rest_port}")
    server_pid = None
    if args.server_pid:
        if not args.server_pid.isdigit():
            raise UsageError(f"--server-pid: expected a process id, got {args.server_pid!r}")
        server_pid = int(args.server_pid)
    return target, server_pid


def pinning_from_args(
    args: argparse.Namespace,
) -> tuple[tuple[int, ...] | None, tuple[int, ...] | None]:
    """(server CPUs, generator CPUs), disjoint; None for unpinned."""
    server = usable_cpu_list(args.server_cpus, "--server-cpus") if args.server_cpus else None
    generator = (
        usable_cpu_list(args.generator_cpus, "--generator-cpus") if args.generator_cpus else None
    )
    if server and generator and set(server) & set(generator):
        shared = ", ".join(map(str, sorted(set(server) & set(generator))))
        raise UsageError(
            f"--server-cpus and --generator-cpus must be disjoint (both have CPU {shared})"
        )
    return server, generator


def _startup_timeout(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise UsageError(f"--startup-timeout: expected seconds, got {text!r}") from None


def _server_args(text: str) -> tuple[str, ...]:
    try:
        return tuple(shlex.split(text))
    except ValueError as exc:
        raise UsageError(f"--server-args: {exc}") from None


def _run_id(text: str | None) -> str:
    run_id = text or time.strftime("%Y%m%d-%H%M%S")
    if "/" in run_id or run_id in (".", ".."):
        raise UsageError(f"--run-id: {run_id!r} is not a directory name")
    return run_id


def config_from_args(argv: Sequence[str]) -> SweepConfig:
    """Parse and validate; raises :class:`UsageError` with a one-line message."""
    args = build_parser().parse_args(argv)
    grid = grid_from_args(args)
    if args.device not in DEVICES:
        raise UsageError(f"--device: expected cpu or cuda, got {args.device!r}")
    models_dir = Path(args.models_dir).expanduser().resolve()
    target, server_pid = target_from_args(args, grid, models_dir)
    server_cpus, generator_cpus = pinning_from_args(args)
    return SweepConfig(
        grid=grid,
        models_dir=models_dir,
        output=Path(args.output).expanduser().resolve(),
        device=args.device,
        target=target,
        server_pid=server_pid,
        processes=None if args.processes is None else positive(args.processes, "--processes"),
        in_process=args.in_process,
        opprofile=args.opprofile,
        server_args=_server_args(args.server_args),
        run_id=_run_id(args.run_id),
        startup_timeout_s=_startup_timeout(args.startup_timeout),
        full=args.full,
        server_cpus=server_cpus,
        generator_cpus=generator_cpus,
        command=["python", "-m", "loadtest", *argv],
    )
