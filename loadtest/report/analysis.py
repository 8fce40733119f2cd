"""Numbers derived from a run: separable ÷ standard ratios with intervals, their flags, and the
speedup table (where the time goes is :mod:`loadtest.report.breakdown`).

Ratios (``ratios.csv``) are of images per second, separable ÷ standard, so above 1 the
separable model is faster. Per cell and mode:

- ``ratio_median`` is the median over repetitions of the paired ratio (repetition r of one
  model against repetition r of the other; they ran back to back, A B B A …).
- ``ratio_low`` … ``ratio_high`` is a 95 % percentile-bootstrap interval (2,000 resamples, fixed
  seed): each resample draws the repetitions of each model with replacement and, within each
  drawn repetition, its per-second throughput samples (Locust's once-a-second history for served
  cells, ten equal slices of the window in-process) with replacement; the model's throughput is
  the mean over drawn repetitions and the ratio that of the two. With one repetition and no
  samples there is no interval (low = high = median, flag ``single measurement``).
"""

from __future__ import annotations

import csv
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypedDict, get_type_hints

import numpy as np

from loadtest.cells import (
    IN_PROCESS,
    SERVED,
    CellKey,
    Row,
    sample_key,
)
from loadtest.report.data import (
    SEPARABLE,
    STANDARD,
    Index,
    Key,
    Run,
    cell_slug,
    completed,
    load_run,
    num,
    saturated_cells,
)

RATIOS_CSV = "ratios.csv"
BOOTSTRAP_RESAMPLES = 2000
CONFIDENCE = 0.95
STABLE_WITHIN = 0.10  # perf_analyzer's default stability tolerance: ±10 %
STABLE_WINDOW = 3  # … over three consecutive measurements
INFER_TOLERANCE = 0.10  # served inference vs in-process call time: intervals widened by 10 %

FLAG_NO_REQUEST = "no completed request"
FLAG_SINGLE = "single measurement"
FLAG_NO_DIFFERENCE = "no measurable difference"
FLAG_INTERFERENCE = "suspect: interference"
FLAG_UNSTABLE = "unstable"
FLAG_SATURATED = "generator saturated"
FLAG_INFER = "server inference differs from in-process"


class RatioRow(TypedDict):
    """One row of ``ratios.csv``."""

    runtime: str
    device: str
    mode: str
    protocol: str
    batch_size: int
    concurrency: int
    repeats: int
    standard_images_per_s: float | None
    separable_images_per_s: float | None
    ratio_median: float | None
    ratio_low: float | None
    ratio_high: float | None
    flag: str


RATIO_COLUMNS: tuple[str, ...] = tuple(get_type_hints(RatioRow))


@dataclass(frozen=True)
class Measurement:
    """One repetition of one model in one cell: its images/s and its throughput samples."""

    value: float
    samples: tuple[float, ...]


def _repetitions(index: Index, key: Key, samples: Mapping[str, list[float]]) -> list[Measurement]:
    found = []
    for row in sorted(index.repetitions.get(key, []), key=lambda r: r["repeat"]):
        value = num(row["images_per_s"])
        if value is None:
            continue
        found.append(Measurement(value, tuple(samples.get(sample_key(row), ()))))
    return found


def _resampled_means(
    reps: Sequence[Measurement], rng: np.random.Generator, resamples: int
) -> np.ndarray:
    """Bootstrap distribution of a model's mean throughput (two-level: repetitions, then the
    samples within each)."""
    within = np.empty((len(reps), resamples))
    for i, rep in enumerate(reps):
        samples = np.asarray(rep.samples, dtype=float)
        if len(samples) >= 2 and samples.mean() > 0:
            draws = rng.choice(samples, size=(resamples, len(samples)), replace=True).mean(axis=1)
            within[i] = draws * rep.value / samples.mean()
        else:
            within[i] = rep.value
    chosen = rng.integers(len(reps), size=(resamples, len(reps)))
    means: np.ndarray = within[chosen, np.arange(resamples)[:, None]].mean(axis=1)
    return means


def ratio_interval(
    standard: Sequence[Measurement], separable: Sequence[Measurement], seed: int = 0
) -> tuple[float, float, float, bool] | None:
    """(median, low, high, has_interval) of separable ÷ standard images/s; ``None`` when either
    model completed no request."""
    if not standard or not separable or min(m.value for m in [*standard, *separable]) <= 0:
        return None
    pairs = [s.value / t.value for t, s in zip(standard, separable, strict=False)]
    median = statistics.median(pairs)
    varies = len(standard) > 1 or len(separable) > 1
    varies = varies or any(len(m.samples) >= 2 for m in [*standard, *separable])
    if not varies:
        return median, median, median, False
    rng = np.random.default_rng(seed)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = _resampled_means(separable, rng, BOOTSTRAP_RESAMPLES) / _resampled_means(
            standard, rng, BOOTSTRAP_RESAMPLES
        )
    ratios = ratios[np.isfinite(ratios)]  # a resample of only empty seconds has no ratio
    if not len(ratios):
        return median, median, median, False
    tail = (1 - CONFIDENCE) / 2 * 100
    low, high = np.percentile(ratios, [tail, 100 - tail])
    return median, float(min(low, median)), float(max(high, median)), True


def stable(values: Sequence[float]) -> bool | None:
    """perf_analyzer's rule on repetitions: some three consecutive ones within ±10 % of their
    mean (two: within 10 % of each other); ``None`` for a single one."""
    if len(values) < 2:
        return None
    window = min(STABLE_WINDOW, len(values))
    for start in range(len(values) - window + 1):
        part = values[start : start + window]
        centre = sum(part) / len(part)
        if centre > 0 and all(abs(v - centre) <= STABLE_WITHIN * centre for v in part):
            return True
    return False


def interval_agrees(a: tuple[float, float], b: tuple[float, float]) -> bool:
    (a_low, a_high), (b_low, b_high) = a, b
    tolerance = INFER_TOLERANCE
    return a_low * (1 - tolerance) <= b_high * (1 + tolerance) and b_low * (
        1 - tolerance
    ) <= a_high * (1 + tolerance)


def infer_check(index: Index, key: Key) -> tuple[float, float, float, float] | None:
    """(served inference ms low, high, in-process p50 ms low, high) of a served cell at one
    user, over repetitions; ``None`` when either is missing.

    The in-process p50 times ``Runtime.predict`` alone, the same call the server's ``infer``
    phase times (its mean per request); the harness around it (batch slicing, the accuracy
    check) is not in either.
    """
    if key.mode != SERVED or key.concurrency != 1:
        return None
    served = index.spread(key, "server_infer_ms")
    in_process_key = CellKey.in_process(key.runtime, key.device, key.model, key.batch_size)
    calls = index.spread(in_process_key, "p50_ms")
    if served is None or calls is None:
        return None
    return served[0], served[1], calls[0], calls[1]


def _infer_flags(index: Index, key: Key) -> list[str]:
    flags = []
    for model in (STANDARD, SEPARABLE):
        check = infer_check(index, replace(key, model=model))
        if check and not interval_agrees(check[:2], check[2:]):
            flags.append(
                f"{FLAG_INFER} ({model}: {check[0]:.3f}–{check[1]:.3f} ms vs "
                f"{check[2]:.3f}–{check[3]:.3f} ms)"
            )
    return flags


def _cell_flags(
    index: Index, key: Key, reps: dict[str, list[Measurement]], saturated: set[str]
) -> list[str]:
    flags = []
    for model in (STANDARD, SEPARABLE):
        if stable([m.value for m in reps[model]]) is False:
            flags.append(f"{FLAG_UNSTABLE} ({model})")
    model_keys = [replace(key, model=m) for m in (STANDARD, SEPARABLE)]
    if any(cell_slug(row) in saturated for k in model_keys for row in index.repetitions.get(k, [])):
        flags.append(FLAG_SATURATED)
    return flags


def _images_per_s(row: Row | None) -> float | None:
    return num(row["images_per_s"]) if row else None


def _ratio_cells(index: Index) -> list[CellKey]:
    """The cells a ratio compares, model left out (``""``), in the order of ``ratios.csv``:
    in-process first, then gRPC, then other protocols."""
    cells = {replace(k, model="") for k in index.repetitions}
    return sorted(
        cells,
        key=lambda c: (
            c.runtime,
            c.device,
            c.mode != IN_PROCESS,
            c.protocol != "grpc",
            c.protocol,
            c.batch_size,
            c.concurrency,
        ),
    )


def _interval_flags(
    cell: CellKey,
    interval: tuple[float, float, float, bool],
    in_process: dict[tuple[str, str, int], tuple[float, float]],
) -> list[str]:
    """Flags of a measured ratio interval; an in-process interval is remembered in
    ``in_process`` for the served cells of the same (runtime, device, batch) that follow."""
    _, low, high, has_interval = interval
    flags = []
    if not has_interval:
        flags.append(FLAG_SINGLE)
    elif low <= 1.0 <= high:
        flags.append(FLAG_NO_DIFFERENCE)
    where = (cell.runtime, cell.device, cell.batch_size)
    if cell.mode == IN_PROCESS:
        in_process[where] = (low, high)
    elif where in in_process and low > in_process[where][1]:
        flags.append(FLAG_INTERFERENCE)
    return flags


def _ratio_row(
    index: Index,
    cell: CellKey,
    samples: Mapping[str, list[float]],
    saturated: set[str],
    in_process: dict[tuple[str, str, int], tuple[float, float]],
) -> RatioRow | None:
    """The ratio of ``cell`` (model left out), or ``None`` when a model was not measured."""
    keys = {m: replace(cell, model=m) for m in (STANDARD, SEPARABLE)}
    if not all(k in index.repetitions for k in keys.values()):
        return None
    reps = {m: _repetitions(index, keys[m], samples) for m in keys}
    combined = {m: index.by_key(k) for m, k in keys.items()}
    result = ratio_interval(reps[STANDARD], reps[SEPARABLE])
    flags: list[str] = []
    median = low = high = None
    if result is None or not all(completed(r) for r in combined.values()):
        flags.append(FLAG_NO_REQUEST)
    else:
        median, low, high, _ = result
        flags += _interval_flags(cell, result, in_process)
    flags += _cell_flags(index, keys[STANDARD], reps, saturated)
    flags += _infer_flags(index, keys[STANDARD])
    return RatioRow(
        runtime=cell.runtime,
        device=cell.device,
        mode=cell.mode,
        protocol=cell.protocol,
        batch_size=cell.batch_size,
        concurrency=cell.concurrency,
        repeats=max(len(index.repetitions[k]) for k in keys.values()),
        standard_images_per_s=_images_per_s(combined[STANDARD]),
        separable_images_per_s=_images_per_s(combined[SEPARABLE]),
        ratio_median=median,
        ratio_low=low,
        ratio_high=high,
        flag="; ".join(flags),
    )


def compute_ratios(run: Run) -> list[RatioRow]:
    """One :class:`RatioRow` per cell and mode with both models measured."""
    index = Index(run.rows)
    saturated = saturated_cells(run.meta)
    in_process: dict[tuple[str, str, int], tuple[float, float]] = {}
    rows = [
        _ratio_row(index, cell, run.samples, saturated, in_process) for cell in _ratio_cells(index)
    ]
    return [row for row in rows if row is not None]


def write_ratios(run_dir: Path, ratios: Sequence[RatioRow] | None = None) -> list[RatioRow]:
    """Write ``ratios.csv`` in ``run_dir`` (computed from the run unless given)."""
    rows = list(ratios) if ratios is not None else compute_ratios(load_run(run_dir))
    with open(run_dir / RATIOS_CSV, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(RATIO_COLUMNS)
        for row in rows:
            values: Mapping[str, Any] = row
            writer.writerow(
                [
                    ""
                    if values[c] is None
                    else (f"{values[c]:.6g}" if isinstance(values[c], float) else values[c])
                    for c in RATIO_COLUMNS
                ]
            )
    return rows


# --- headline speedups ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Speedup:
    """Measured ratios of one (runtime, device, batch size) against the MACs ratio: in-process
    and, per protocol, served at the lowest measured concurrency."""

    runtime: str
    device: str
    batch_size: int
    macs_ratio: float
    in_process: RatioRow | None
    served: dict[str, RatioRow]
    served_concurrency: int | None

    def measured(self) -> list[tuple[str, RatioRow]]:
        """(label, ratio row) of every measured ratio with a value."""
        out = []
        where = f"on {self.runtime}/{self.device} at batch {self.batch_size}"
        if self.in_process is not None and self.in_process["ratio_median"] is not None:
            out.append((f"in-process {where}", self.in_process))
        for protocol, row in self.served.items():
            if row["ratio_median"] is not None:
                name = {"grpc": "gRPC", "rest": "REST"}.get(protocol, protocol)
                out.append((f"served over {name} {where}", row))
        return out


def speedups(ratios: Sequence[RatioRow], macs_ratio: float) -> list[Speedup]:
    """One :class:`Speedup` per (runtime, device, batch size) with a ratio measured."""
    out = []
    groups = dict.fromkeys((r["runtime"], r["device"], r["batch_size"]) for r in ratios)
    for runtime, device, batch in groups:
        mine = [
            r
            for r in ratios
            if (r["runtime"], r["device"], r["batch_size"]) == (runtime, device, batch)
        ]
        in_process = next((r for r in mine if r["mode"] == "in-process"), None)
        served_rows = [r for r in mine if r["mode"] == "served"]
        lowest = min((r["concurrency"] for r in served_rows), default=None)
        served = {
            r["protocol"]: r
            for r in sorted(served_rows, key=lambda r: (r["protocol"] != "grpc", r["protocol"]))
            if r["concurrency"] == lowest
        }
        out.append(Speedup(runtime, device, batch, macs_ratio, in_process, served, lowest))
    return out


def fmt_interval(row: RatioRow | None) -> str:
    """``1.62x [1.55–1.70]`` (``—`` when there is no ratio)."""
    if row is None or row["ratio_median"] is None:
        return "—"
    text = f"{row['ratio_median']:.2f}x"
    if (
        row["ratio_low"] is not None
        and row["ratio_high"] is not None
        and FLAG_SINGLE not in row["flag"]
    ):
        text += f" [{row['ratio_low']:.2f}–{row['ratio_high']:.2f}]"
    return text
