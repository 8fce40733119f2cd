"""The sweep's measuring children, each a fresh process pinned to the server's cores: the
in-process floor (:mod:`loadtest.run.floor`) and the operator profile
(:mod:`loadtest.run.opprofile`)."""

from __future__ import annotations

import json
import math
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

from loadtest.cells import CellKey, Row, measured_row
from loadtest.plan import SweepConfig
from loadtest.run.cpu import pinned
from loadtest.run.threads import threads_record, with_threads


class FloorFacts(TypedDict, total=False):
    """What the in-process floor of one runtime told besides its rows (``run.json``)."""

    runtime: str
    describe: dict[str, Any]
    error: str


def _child(command: list[str], log_path: Path, timeout: float, cpus: tuple[int, ...] | None) -> int:
    """Run a measuring child process on ``cpus`` with its output in ``log_path``."""
    with open(log_path, "wb") as log, pinned(cpus):
        try:
            return subprocess.run(
                command, stdout=log, stderr=subprocess.STDOUT, timeout=timeout, check=False
            ).returncode
        except subprocess.TimeoutExpired:
            return -9


def _last_line(log_path: Path) -> str:
    tail = log_path.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
    return tail[0]


def floor_command(runtime: str, config: SweepConfig, output: Path) -> list[str]:
    """``python -m loadtest.run.floor`` for ``runtime`` over the grid's models and batch sizes."""
    grid = config.grid
    return [
        *(sys.executable, "-m", "loadtest.run.floor"),
        *("--runtime", runtime, "--models-dir", str(config.models_dir)),
        *("--models", ",".join(grid.models)),
        *("--batch-sizes", ",".join(map(str, grid.batch_sizes))),
        *("--duration", str(grid.duration_s), "--warmup", str(grid.warmup_s)),
        *("--device", config.device, "--repeats", str(grid.repeats)),
        *("--output", str(output)),
        # "--server-args=VALUE": a value starting with "--" would read as a flag otherwise.
        f"--server-args={shlex.join(config.server_args)}",
    ]


@dataclass
class FloorOutcome:
    """The in-process floor of one runtime: its rows, facts (``run.json``), throughput samples
    (images/s per slice of each measurement window, by sample key) and, per row, the threads
    record of the floor's process (``threads.json``)."""

    rows: list[Row] = field(default_factory=list)
    facts: FloorFacts = field(default_factory=FloorFacts)
    samples: dict[str, list[float]] = field(default_factory=dict)
    threads: list[dict[str, Any]] = field(default_factory=list)


def run_floor(runtime: str, config: SweepConfig, run_dir: Path) -> FloorOutcome:
    """Measure ``runtime`` in-process in a child process on the server's cores."""
    grid = config.grid
    output = run_dir / f"inprocess-{runtime}.json"
    log_path = run_dir / f"inprocess-{runtime}.log"
    timeout = 300 + grid.floor_cells_per_runtime * (grid.duration_s + grid.warmup_s + 30)
    returncode = _child(
        floor_command(runtime, config, output), log_path, timeout, config.server_cpus
    )
    if returncode != 0 or not output.is_file():
        return FloorOutcome(
            facts=FloorFacts(runtime=runtime, error=f"exit {returncode}: {_last_line(log_path)}")
        )
    measured = json.loads(output.read_text())
    outcome = FloorOutcome(facts=FloorFacts(runtime=runtime, describe=measured.get("describe", {})))
    for entry in measured["results"]:
        key = CellKey.in_process(
            runtime, config.device, entry["model"], entry["batch_size"], int(entry.get("repeat", 0))
        )
        row = measured_row(
            key, entry, errors=0, generator_cpu=math.nan, server_cpu=entry["cpu_percent"]
        )
        outcome.rows.append(with_threads(row, entry.get("threads"), entry.get("cpu_busy_s", "")))
        outcome.samples[key.sample_key] = entry.get("samples", [])
        if entry.get("threads"):
            outcome.threads.append(threads_record(key, entry["threads"], entry.get("cpu_busy_s")))
    return outcome


def run_opprofile(runtime: str, config: SweepConfig, run_dir: Path) -> str | None:
    """Append ``runtime``'s per-operator profile to ``opprofile.csv`` (on the server's cores);
    a note when there is none."""
    from loadtest.run.opprofile import (
        DEFAULT_BATCH_SIZES,
        LITERT_NOTE,
        OPPROFILE_CSV,
        PROFILED_RUNTIMES,
    )

    if runtime == "litert":
        return LITERT_NOTE
    if runtime not in PROFILED_RUNTIMES:
        return (
            f"{runtime}: no per-operator profile (ONNX Runtime's, TensorFlow's and OpenVINO's "
            "profilers are read; this runtime's is not)"
        )
    if config.device != "cpu":
        return f"{runtime}: no per-operator profile on {config.device} (CPU only)"
    command = [
        *(sys.executable, "-m", "loadtest.run.opprofile"),
        *("--runtime", runtime, "--models-dir", str(config.models_dir)),
        *("--models", ",".join(config.grid.models)),
        *("--batch-sizes", ",".join(map(str, DEFAULT_BATCH_SIZES))),
        *("--output", str(run_dir / OPPROFILE_CSV)),
        f"--server-args={shlex.join(config.server_args)}",
    ]
    log_path = run_dir / f"opprofile-{runtime}.log"
    returncode = _child(command, log_path, 900, config.server_cpus)
    if returncode != 0:
        return f"{runtime}: per-operator profile failed (exit {returncode}): {_last_line(log_path)}"
    return None


def run_graphs(runtime: str, config: SweepConfig, run_dir: Path) -> str | None:
    """Add ``runtime``'s executed graphs to ``executed-graph.json`` (a child process on the
    server's cores); a note when there are none. A failure is recorded, never fatal."""
    from loadtest.run.graphs import EXECUTED_GRAPH_JSON, GRAPH_RUNTIMES

    if runtime not in GRAPH_RUNTIMES:
        return f"{runtime}: no executed graph recorded (not read for this runtime)"
    if config.device != "cpu":
        return f"{runtime}: no executed graph on {config.device} (CPU only)"
    command = [
        *(sys.executable, "-m", "loadtest.run.graphs"),
        *("--runtime", runtime, "--models-dir", str(config.models_dir)),
        *("--models", ",".join(config.grid.models)),
        *("--output", str(run_dir / EXECUTED_GRAPH_JSON)),
    ]
    log_path = run_dir / f"graphs-{runtime}.log"
    returncode = _child(command, log_path, 600, config.server_cpus)
    if returncode != 0:
        return f"{runtime}: executed graph failed (exit {returncode}): {_last_line(log_path)}"
    return None
