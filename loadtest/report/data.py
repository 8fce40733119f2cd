"""A sweep's saved outputs, read back: rows, run facts, throughput samples, operator profile.

Rows of a cell measured several times (``repeat`` 0, 1, …) are combined by :class:`Index`: the
median of each measured column over the repetitions, so tables and plots show one value per cell
(and :meth:`Index.spread` gives the lowest and highest for error bars).

Throughput samples (what the ratio intervals resample within a repetition) are complete, equal
windows only. Served cells: Locust writes its cumulative request count once a second to
``_stats_history.csv`` (every third point is used when workers report every 3 s); a window is the
interval between two such points, and

1. a window whose count drops (the statistics reset at the end of the warm-up) is dropped;
2. the first and the last remaining windows are dropped: the measurement starts and stops inside
   them, so they hold part of a second (the near-empty seconds that once gave intervals such as
   ``[0.62–68.25]``);
3. a window whose duration differs from the nominal step (1 s, or 3 s distributed) is dropped (a
   late or missed history write);

and each kept window gives images/s = requests × batch size ÷ duration. Served samples saved in
``run.json`` without their timestamps (runs whose Locust files are gone) lose their first and
last values by rule 2. In-process samples are ten equal slices of one timed window, complete by
construction, and are kept as they are.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from loadtest.cells import (
    COLUMNS,
    IN_PROCESS,
    IN_PROCESS_PROTOCOL,
    SERVED,
    STR_COLUMNS,
    WORKER_REPORT_S,
    CellKey,
    Row,
    read_results,
    sample_key,
)
from loadtest.flops import REFERENCE_COSTS
from loadtest.run.opprofile import OPPROFILE_CSV, OpRow, read_opprofile

STANDARD, SEPARABLE = "standard", "separable"
MODEL_COLORS = {STANDARD: "#1f77b4", SEPARABLE: "#d62728"}
PLOTS_DIR = "plots"
EQUAL_WINDOW_TOLERANCE = 0.01  # a window within 1 % of the nominal step counts as equal

# A cell of the report: its key with repeat 0, shared by all its repetitions.
Key = CellKey


def row_key(row: Row) -> Key:
    """The cell a row belongs to (all repetitions share it)."""
    return CellKey.from_row(row).cell


def num(value: Any) -> float | None:
    """A float, or ``None`` for missing and NaN."""
    if value is None:
        return None
    number = float(value)
    return None if math.isnan(number) else number


def completed(row: Row | None) -> bool:
    """Whether a row measured at least one completed request."""
    return row is not None and (num(row["images_per_s"]) or 0.0) > 0


def protocol_name(protocol: str) -> str:
    """Display name: gRPC, REST."""
    return {"grpc": "gRPC", "rest": "REST", IN_PROCESS_PROTOCOL: "in-process"}.get(
        protocol, protocol
    )


def fmt_ms(value: Any) -> str:
    """Milliseconds with precision that suits their size (``—`` when missing)."""
    number = num(value)
    if number is None:
        return "—"
    if number < 1:
        return f"{number:.3f}"
    if number < 100:
        return f"{number:.2f}"
    return f"{number:.0f}"


def fmt_rate(value: Any) -> str:
    """Requests or images per second."""
    number = num(value)
    if number is None:
        return "—"
    return f"{number:,.1f}" if number < 100 else f"{number:,.0f}"


def fmt_x(value: Any) -> str:
    """A ratio such as ``3.93x``."""
    number = num(value)
    return "—" if number is None else f"{number:.2f}x"


def fmt_pct(value: Any) -> str:
    """A CPU percentage (of one core)."""
    number = num(value)
    return "—" if number is None else f"{number:.0f}%"


def combine(rows: Sequence[Row]) -> Row:
    """One row for the repetitions of a cell: the median of every measured column (over the
    repetitions that have it), errors summed (-1 when one repetition could not run), accuracy
    only from repetitions that completed a request."""
    first = dict(rows[0])
    out: dict[str, Any] = {c: first[c] for c in STR_COLUMNS}
    out.update(batch_size=first["batch_size"], concurrency=first["concurrency"], repeat=0)
    errors = [r["errors"] for r in rows]
    out["errors"] = -1 if -1 in errors else sum(errors)
    for column in COLUMNS:
        if column in out:
            continue
        source = [r for r in rows if completed(r)] if column == "accuracy" else rows
        values = [
            v for v in (num(cast(Mapping[str, Any], r)[column]) for r in source) if v is not None
        ]
        out[column] = statistics.median(values) if values else None
    return cast(Row, out)


class Index:
    """Rows by cell (repetitions combined), with the lookups the report needs."""

    def __init__(self, rows: Iterable[Row]) -> None:
        self.all_rows = list(rows)
        grouped: dict[Key, list[Row]] = {}
        for row in self.all_rows:
            grouped.setdefault(row_key(row), []).append(row)
        self.repetitions = grouped
        self._by_key = {key: combine(found) for key, found in grouped.items()}
        self.rows = list(self._by_key.values())

    @staticmethod
    def key(group: tuple[str, str], model: str, protocol: str, batch: int, concurrency: int) -> Key:
        """The key of a cell of (runtime, device) ``group``."""
        mode = IN_PROCESS if protocol == IN_PROCESS_PROTOCOL else SERVED
        runtime, device = group
        return CellKey(runtime, device, mode, protocol, model, batch, concurrency)

    def get(
        self, group: tuple[str, str], model: str, protocol: str, batch: int, concurrency: int
    ) -> Row | None:
        """One combined row of (runtime, device) ``group`` (``protocol`` ``none``: in-process)."""
        return self._by_key.get(self.key(group, model, protocol, batch, concurrency))

    def by_key(self, key: Key) -> Row | None:
        """The combined row of a cell."""
        return self._by_key.get(key)

    def spread(self, key: Key, column: str) -> tuple[float, float] | None:
        """Lowest and highest ``column`` over a cell's repetitions."""
        values = [
            v
            for v in (
                num(cast(Mapping[str, Any], r)[column]) for r in self.repetitions.get(key, [])
            )
            if v is not None
        ]
        return (min(values), max(values)) if values else None

    def values(self, column: str, **criteria: Any) -> list[Any]:
        """Sorted distinct values of ``column`` among rows matching ``criteria``."""
        found = {
            cast(Mapping[str, Any], r)[column]
            for r in self.rows
            if all(cast(Mapping[str, Any], r).get(k) == v for k, v in criteria.items())
        }
        return sorted(found)

    def groups(self) -> list[tuple[str, str]]:
        """(runtime, device) pairs in order of appearance."""
        return list(dict.fromkeys((r["runtime"], r["device"]) for r in self.rows))

    def protocols(self, runtime: str, device: str) -> list[str]:
        """Served protocols of a group (gRPC first)."""
        found = self.values("protocol", runtime=runtime, device=device, mode="served")
        return sorted(found, key=lambda p: (p != "grpc", p))


@dataclass
class Run:
    """A sweep's saved outputs."""

    path: Path
    rows: list[Row]
    meta: dict[str, Any]
    machine: dict[str, Any]
    command: str
    opprofile: list[OpRow]

    @property
    def costs(self) -> dict[str, dict[str, Any]]:
        """MACs per model recorded by the sweep (the tutorial's numbers otherwise)."""
        costs = self.meta.get("costs") or {}
        if STANDARD in costs and SEPARABLE in costs:
            return dict(costs)
        return {k: dict(v) for k, v in REFERENCE_COSTS.items()}

    @property
    def name(self) -> str:
        """The run id."""
        return str(self.meta.get("run_id") or self.path.name)

    @property
    def samples(self) -> dict[str, list[float]]:
        """Throughput samples (images/s per complete window) by row key, by the module's window
        rule: served cells from their Locust histories under ``locust/`` (``run.json``'s samples
        less their first and last where those files are gone), in-process cells from
        ``run.json``."""
        found = self.meta.get("samples")
        saved = dict(found) if isinstance(found, dict) else {}
        out = {}
        for key, values in saved.items():
            served = key.split("|")[3] != IN_PROCESS_PROTOCOL
            out[key] = list(values[1:-1]) if served else list(values)
        out.update(_locust_samples(self.path, self.rows, self.meta))
        return out

    @property
    def pinning(self) -> dict[str, list[int] | None]:
        """The CPU split the sweep used (``None`` values: not pinned)."""
        found = self.meta.get("pinning") or self.machine.get("pinning") or {}
        return {
            "server_cpus": found.get("server_cpus"),
            "generator_cpus": found.get("generator_cpus"),
        }


def _history_points(path: Path) -> list[tuple[float, float]]:
    """(timestamp, cumulative request count) of Locust's aggregated history, once a second."""
    try:
        with open(path, newline="") as handle:
            return [
                (float(r["Timestamp"]), float(r["Total Request Count"]))
                for r in csv.DictReader(handle)
                if r.get("Name") == "Aggregated"
            ]
    except (OSError, KeyError, ValueError):
        return []


def complete_windows(
    points: Sequence[tuple[float, float]], start: float, end: float, batch_size: int, step: int = 1
) -> list[float]:
    """Images/s of each complete, equal window of a measurement from ``start`` to ``end`` (the
    module's window rule) given Locust's (timestamp, cumulative count) points."""
    inside = [(t, n) for t, n in points if start - 0.5 <= t <= end + 0.5][::step]
    windows = [
        (t1 - t0, n1 - n0)
        for (t0, n0), (t1, n1) in itertools.pairwise(inside)
        if t1 > t0 and n1 >= n0
    ][1:-1]
    return [
        count * batch_size / duration
        for duration, count in windows
        if abs(duration - step) <= EQUAL_WINDOW_TOLERANCE * step
    ]


def _locust_samples(
    path: Path, rows: Sequence[Row], meta: Mapping[str, Any]
) -> dict[str, list[float]]:
    processes = {c.get("cell"): c.get("processes", 0) for c in meta.get("cells", [])}
    samples = {}
    for row in rows:
        if row["mode"] != "served":
            continue
        prefix = path / "locust" / cell_slug(row)
        try:
            window = json.loads(Path(f"{prefix}_hdr.json").read_text())
            start, end = float(window["window_start"]), float(window["window_end"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        step = WORKER_REPORT_S if processes.get(cell_slug(row)) else 1
        points = _history_points(Path(f"{prefix}_stats_history.csv"))
        found = complete_windows(points, start, end, row["batch_size"], step)
        if found:
            samples[sample_key(row)] = found
    return samples


def load_run(path: Path) -> Run:
    """Read a run directory."""

    def optional_json(name: str) -> dict[str, Any]:
        try:
            data = json.loads((path / name).read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    try:
        command = (path / "command.txt").read_text().strip()
    except OSError:
        command = ""
    return Run(
        path,
        read_results(path),
        optional_json("run.json"),
        optional_json("machine.json"),
        command,
        read_opprofile(path / OPPROFILE_CSV),
    )


def cell_slug(row: Row) -> str:
    """The id the sweep gives a served cell: ``onnx-standard-grpc-b32-c8`` (``-r1`` …)."""
    return CellKey.from_row(row).slug


def saturated_cells(meta: Mapping[str, Any]) -> set[str]:
    """Slugs of the served measurements whose load generator was saturated."""
    return {c["cell"] for c in meta.get("cells", []) if c.get("generator_saturated")}
