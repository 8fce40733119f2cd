"""Planning a sweep: its axes (:class:`Grid`), the demo and full grids, the order the served cells
run in (runtime-major, repetitions alternating the models A B B A …), and the validated
configuration (:class:`SweepConfig`) that the command line (:mod:`loadtest.cli`) produces."""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from contract import MODEL_NAMES, PROTOCOLS
from loadtest.cells import CellKey

DEVICES: tuple[str, ...] = ("cpu", "cuda")


def interleaved(models: Sequence[str], repeat: int) -> list[str]:
    """The order of the models in repetition ``repeat``: A B, then B A, then A B … (A B B A)."""
    return list(models) if repeat % 2 == 0 else list(reversed(models))


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

    def served_cells(self, device: str = "cpu") -> list[CellKey]:
        """Every served measurement, runtime-major (one server start per runtime); within a
        (protocol, batch, concurrency) cell the repetitions alternate the models A B B A …"""
        return [
            CellKey.served(r, device, p, m, b, c, repeat)
            for r in self.runtimes
            for p in self.protocols
            for b in self.batch_sizes
            for c in self.concurrency
            for repeat in range(self.repeats)
            for m in interleaved(self.models, repeat)
        ]

    @property
    def floor_cells_per_runtime(self) -> int:
        """In-process measurements of one runtime (models x batch sizes x repeats)."""
        return len(self.models) * len(self.batch_sizes) * self.repeats


# The demo grid: 4 runtimes x 2 models x gRPC x 2 batch sizes x 2 concurrency levels = 32 Locust
# runs of 1 + 3 s, as many as the 2-runtime demo with both protocols had (REST is one flag away:
# --protocols grpc,rest). On 2 cores: 32 cells x ~7.5 s (4 s plus Locust's start and stop) = 240 s,
# plus per runtime its floor (8 cells x 4 s + start) and server start, operator profile and
# executed graph: onnx ~53 s, tensorflow ~100 s, openvino ~46 s, litert ~38 s; with the report
# about 8 minutes (the 2-runtime demo with REST took 6.5).
DEMO_GRID = Grid(
    runtimes=("onnx", "tensorflow", "openvino", "litert"),
    models=MODEL_NAMES,
    batch_sizes=(1, 32),
    concurrency=(1, 8),
    protocols=("grpc",),
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
    processes: int | None = None  # Locust worker processes per cell (None: one per core)
    in_process: bool = True  # measure the in-process floor
    opprofile: bool = True
    server_args: tuple[str, ...] = ()
    run_id: str = ""
    startup_timeout_s: float = 180.0
    full: bool = False
    server_cpus: tuple[int, ...] | None = None
    generator_cpus: tuple[int, ...] | None = None
    command: list[str] = field(default_factory=list)
