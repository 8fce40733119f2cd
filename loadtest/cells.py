"""What a sweep measures: the identity of one cell (:class:`CellKey`), its row of
``results.csv`` / ``results.json`` (:class:`Row`), and what else the sweep learns per cell.

A cell is (runtime, device, mode, protocol, model, batch size, concurrency, repeat); rows, ratios,
the report, ``--compare``, the web UI's comparison tab and Locust's request names all name cells
through :class:`CellKey`, and :meth:`CellKey.from_row` / :meth:`CellKey.to_row` are the one mapping
between a key and the columns of a results row.

The column names and their order are an interface: users script against them.

- ``mode`` is ``served`` (Locust against the server) or ``in-process`` (the runtime called
  directly; its ``protocol`` is ``none`` and its ``concurrency`` 1).
- Latencies are milliseconds from microsecond HDR histograms; ``errors`` counts failed requests
  (warm-up included; -1 when the cell could not run at all); ``accuracy`` is the fraction of
  images whose predicted class matched the label. A cell where no request finished within the run
  has zero throughput and empty latencies.
- ``generator_cpu`` and ``server_cpu`` are CPU use in percent of one core (200 = two cores busy)
  of the Locust processes and of the server process tree over the measurement window; for
  in-process rows ``server_cpu`` is the measuring process itself. Empty when not measured.
- ``repeat`` numbers the repetitions of a cell (0, 1, …; the two models alternate A B B A …).
  Results written before repetitions existed read back as repeat 0.
- ``server_decode_ms``, ``server_queue_ms``, ``server_infer_ms``, ``server_encode_ms``: the
  server's own mean time per request in each phase over the cell (warm-up included), from its
  ``serving_request_phase_seconds`` histogram. Empty for in-process rows, for servers without
  that histogram, and for results written before it existed.
- ``threads``, ``threads_outside``, ``cpu_busy_s``, ``server_rss_mb``, ``flags`` (issue #21):
  where the measured process ran. ``threads``: threads of the server's process tree after the
  cell (in-process rows: the floor's process); ``threads_outside``: how many of them may run on a
  CPU outside the CPU set the process was given (``/proc/<pid>/task/*/status``
  ``Cpus_allowed_list``); ``cpu_busy_s``: busy seconds of each CPU of the machine over the cell
  (served: the whole Locust run, start and warm-up included; in-process: the measurement window),
  ``cpu<id>=<seconds>`` joined by ``;`` (``cpu0=1.92;cpu1=0.31``); ``server_rss_mb``: resident
  memory of the server's process tree after the cell in MiB (in-process: the floor's process);
  ``flags``: short codes joined by ``;`` for the report to footnote, ``threads-outside`` when a
  thread may leave the CPU set. Each run's ``threads.json`` lists every thread. Empty in results
  written before they existed.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypedDict, cast, get_type_hints

SERVED = "served"
IN_PROCESS = "in-process"
MODES = (SERVED, IN_PROCESS)
IN_PROCESS_PROTOCOL = "none"


def request_name(model: str, batch_size: int) -> str:
    """The name of a (model, batch size) row in Locust's statistics (the type column says the
    protocol): ``standard batch=32``."""
    return f"{model} batch={batch_size}"


@dataclass(frozen=True, order=True)
class CellKey:
    """The identity of one measurement: runtime, device, mode (``served`` or ``in-process``),
    protocol (``grpc``, ``rest``; ``none`` in-process), model, batch size, concurrency (Locust
    users; 1 in-process) and repeat (0, 1, … the repetitions of a cell)."""

    runtime: str
    device: str
    mode: str
    protocol: str
    model: str
    batch_size: int
    concurrency: int
    repeat: int = 0

    @classmethod
    def served(
        cls,
        runtime: str,
        device: str,
        protocol: str,
        model: str,
        batch_size: int,
        concurrency: int,
        repeat: int = 0,
    ) -> CellKey:
        """A cell measured through a server."""
        return cls(runtime, device, SERVED, protocol, model, batch_size, concurrency, repeat)

    @classmethod
    def in_process(
        cls, runtime: str, device: str, model: str, batch_size: int, repeat: int = 0
    ) -> CellKey:
        """A cell of the in-process floor (no server, no protocol, one caller)."""
        return cls(runtime, device, IN_PROCESS, IN_PROCESS_PROTOCOL, model, batch_size, 1, repeat)

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> CellKey:
        """The key of a results row (``repeat`` absent in old results: 0)."""
        return cls(
            runtime=str(row["runtime"]),
            device=str(row["device"]),
            mode=str(row["mode"]),
            protocol=str(row["protocol"]),
            model=str(row["model"]),
            batch_size=int(row["batch_size"]),
            concurrency=int(row["concurrency"]),
            repeat=int(row.get("repeat", 0) or 0),
        )

    def to_row(self) -> dict[str, str | int]:
        """The key's columns of a results row (:data:`KEY_COLUMNS`)."""
        return {column: getattr(self, column) for column in KEY_COLUMNS}

    @property
    def cell(self) -> CellKey:
        """The key shared by all repetitions (repeat 0)."""
        return replace(self, repeat=0)

    @property
    def slug(self) -> str:
        """A file-name-safe id of a served cell: ``onnx-standard-grpc-b32-c8`` (``-r1`` …)."""
        base = f"{self.runtime}-{self.model}-{self.protocol}-b{self.batch_size}-c{self.concurrency}"
        return f"{base}-r{self.repeat}" if self.repeat else base

    @property
    def sample_key(self) -> str:
        """The key of the cell's throughput samples in ``run.json``:
        ``runtime|device|model|protocol|batch_size|concurrency|repeat``."""
        return "|".join(
            str(v)
            for v in (
                self.runtime,
                self.device,
                self.model,
                self.protocol,
                self.batch_size,
                self.concurrency,
                self.repeat,
            )
        )

    @property
    def request_name(self) -> str:
        """The cell's row name in Locust's statistics."""
        return request_name(self.model, self.batch_size)


KEY_COLUMNS: tuple[str, ...] = (
    "runtime",
    "device",
    "mode",
    "protocol",
    "model",
    "batch_size",
    "concurrency",
    "repeat",
)


class Row(TypedDict):
    """One row of ``results.csv``; :data:`COLUMNS` is derived from it, in this order."""

    runtime: str
    device: str
    model: str
    protocol: str
    mode: str
    batch_size: int
    concurrency: int
    repeat: int
    requests_per_s: float | None
    images_per_s: float | None
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    p999_ms: float | None
    max_ms: float | None
    errors: int
    accuracy: float | None
    generator_cpu: float | None
    server_cpu: float | None
    server_decode_ms: float | None
    server_queue_ms: float | None
    server_infer_ms: float | None
    server_encode_ms: float | None
    threads: int | None
    threads_outside: int | None
    cpu_busy_s: str
    server_rss_mb: float | None
    flags: str


COLUMNS: tuple[str, ...] = tuple(get_type_hints(Row))


class CellDetails(TypedDict, total=False):
    """What else the sweep learnt running a served cell: an entry of ``run.json``'s ``cells``."""

    cell: str  # CellKey.slug
    repeat: int
    processes: int  # Locust worker processes (0: Locust's local runner)
    command: str
    notes: list[str]
    returncode: int
    requests: int
    window_s: float
    generator_busiest_process_cpu: float | None
    machine_cpu_percent: float | None
    final_snapshots: int | None
    snapshots: int | None
    generator_saturated: bool
    machine_saturated: bool


SERVER_PHASES: tuple[str, ...] = ("decode", "queue", "infer", "encode")
# Columns a results file written by an earlier version may lack, with the value they read as.
_OPTIONAL_COLUMNS: dict[str, Any] = {
    "repeat": 0,
    **{f"server_{phase}_ms": None for phase in SERVER_PHASES},
    "threads": None,
    "threads_outside": None,
    "cpu_busy_s": "",
    "server_rss_mb": None,
    "flags": "",
}
INT_COLUMNS = frozenset({"batch_size", "concurrency", "repeat", "errors"})
OPTIONAL_INT_COLUMNS = frozenset({"threads", "threads_outside"})
STR_COLUMNS = frozenset({"runtime", "device", "model", "protocol", "mode", "cpu_busy_s", "flags"})
THREADS_OUTSIDE = "threads-outside"  # the flag of a cell whose threads may leave their CPU set
RESULTS_CSV = "results.csv"
RESULTS_JSON = "results.json"


def normalize(row: Mapping[str, Any]) -> Row:
    """A row with exactly :data:`COLUMNS`, typed: str, int, or float (None when missing/NaN).

    The columns added since the first results format (``repeat``, the server phases, the
    threads and memory columns) may be absent: they read as repeat 0 and empty.
    """
    missing = [c for c in COLUMNS if c not in row and c not in _OPTIONAL_COLUMNS]
    if missing:
        raise ValueError(f"row lacks columns {missing}")
    out: dict[str, Any] = {}
    for column in COLUMNS:
        value = row.get(column, _OPTIONAL_COLUMNS.get(column))
        if column in STR_COLUMNS:
            out[column] = "" if value is None else str(value)
        elif column in INT_COLUMNS:
            out[column] = int(value)
        elif value is None or value == "" or value != value:  # noqa: PLR0124 - NaN
            out[column] = None
        elif column in OPTIONAL_INT_COLUMNS:
            out[column] = int(float(value))
        else:
            number = float(value)
            out[column] = None if math.isnan(number) else number
    if out["mode"] not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {out['mode']!r}")
    return cast(Row, out)


def _csv_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}" if abs(value) < 1e6 else f"{value:.1f}"
    return str(value)


def write_results(run_dir: Path, rows: Iterable[Mapping[str, Any]]) -> list[Row]:
    """Write ``results.csv`` and ``results.json`` (a JSON list of row objects) under ``run_dir``."""
    normalized = [normalize(r) for r in rows]
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / RESULTS_CSV, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        for row in normalized:
            values: Mapping[str, Any] = row
            writer.writerow([_csv_text(values[c]) for c in COLUMNS])
    (run_dir / RESULTS_JSON).write_text(json.dumps(normalized, indent=1) + "\n")
    return normalized


def read_results(run_dir: Path) -> list[Row]:
    """Rows of a run directory (``results.json``, else ``results.csv``)."""
    json_path, csv_path = run_dir / RESULTS_JSON, run_dir / RESULTS_CSV
    if json_path.is_file():
        data = json.loads(json_path.read_text())
        if not isinstance(data, list):
            raise ValueError(f"{json_path}: expected a list of rows")
        return [normalize(r) for r in data]
    if csv_path.is_file():
        with open(csv_path, newline="") as handle:
            return [normalize(r) for r in csv.DictReader(handle)]
    raise FileNotFoundError(f"no {RESULTS_JSON} or {RESULTS_CSV} in {run_dir}")


def sample_key(row: Mapping[str, Any]) -> str:
    """The key of a row's throughput samples in ``run.json`` (:attr:`CellKey.sample_key`)."""
    return CellKey.from_row(row).sample_key


# Locust workers report to the master every 3 s: in a distributed run the master's per-second
# history moves in 3-second steps, so its samples are taken over 3 seconds.
WORKER_REPORT_S = 3


def history_samples(
    path: Path, start: float, end: float, batch_size: int, *, distributed: bool = False
) -> list[float]:
    """Images/s per second of the measurement window (per 3 s when ``distributed``), from
    Locust's ``_stats_history.csv`` (its cumulative request count, written once a second)."""
    try:
        with open(path, newline="") as handle:
            points = [
                (float(r["Timestamp"]), float(r["Total Request Count"]))
                for r in csv.DictReader(handle)
                if r.get("Name") == "Aggregated"
            ]
    except (OSError, KeyError, ValueError):
        return []
    inside = [(t, n) for t, n in points if start - 0.5 <= t <= end + 0.5]
    step = WORKER_REPORT_S if distributed else 1
    samples = []
    for (t0, n0), (t1, n1) in itertools.pairwise(inside[::step]):
        # A count that drops is the statistics reset at the end of the warm-up: that step
        # mixes two counts and is no sample.
        if t1 > t0 and n1 >= n0:
            samples.append((n1 - n0) * batch_size / (t1 - t0))
    return samples


def measured_row(
    key: CellKey,
    entry: Mapping[str, Any],
    *,
    errors: int,
    generator_cpu: float,
    server_cpu: float,
    server_ms: Mapping[str, float | None] | None = None,
) -> Row:
    """The row of ``key`` from a measurement ``entry`` (Locust's merged HDR result or the
    in-process floor's); ``server_ms``: the ``server_<phase>_ms`` columns when scraped."""
    phases = server_ms or {}
    return Row(
        runtime=key.runtime,
        device=key.device,
        model=key.model,
        protocol=key.protocol,
        mode=key.mode,
        batch_size=key.batch_size,
        concurrency=key.concurrency,
        repeat=key.repeat,
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
        server_decode_ms=phases.get("server_decode_ms"),
        server_queue_ms=phases.get("server_queue_ms"),
        server_infer_ms=phases.get("server_infer_ms"),
        server_encode_ms=phases.get("server_encode_ms"),
        threads=None,
        threads_outside=None,
        cpu_busy_s="",
        server_rss_mb=None,
        flags="",
    )


_NO_MEASUREMENT = dict.fromkeys(
    ("requests_per_s", "images_per_s", "p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms"),
    math.nan,
) | {"accuracy": math.nan}


def empty_row(key: CellKey, *, errors: int = 0) -> Row:
    """The row of a cell without measurements (``errors`` -1: it could not run)."""
    return measured_row(
        key, _NO_MEASUREMENT, errors=errors, generator_cpu=math.nan, server_cpu=math.nan
    )
