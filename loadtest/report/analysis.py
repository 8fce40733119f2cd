"""Numbers derived from a run: separable ÷ standard ratios with intervals, their flags, and the
speedup table (where the time goes is :mod:`loadtest.report.breakdown`).

Ratios (``ratios.csv``, exactly one row per cell: runtime, device, mode, protocol, batch size,
concurrency) are of images per second, separable ÷ standard, so above 1 the separable model is
faster. Per cell and mode:

- ``ratio_median`` is the median over repetitions of the paired ratio (repetition r of one
  model against repetition r of the other; they ran back to back, A B B A …).
- ``ratio_low`` … ``ratio_high`` is a 95 % percentile-bootstrap interval (2,000 resamples, fixed
  seed), only when both models were measured at least twice: each resample draws the repetitions
  of each model with replacement and, within each drawn repetition, its throughput samples with
  replacement. The samples are complete, equal windows only (the window rule of
  :mod:`loadtest.report.data`: Locust's whole seconds inside the measurement, the partial first
  and last dropped; in-process, ten equal slices of the window). With one repetition there is no
  interval: the value is printed with ``(1 run)`` and low and high are empty (flag
  ``1 run``), since seconds of one run do not say how a second run would differ.
- ``flag`` holds each flag's full text (the measured numbers included); report.md's tables show
  only its code (:data:`FLAG_CODES`) with a legend under the table.
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
    CellKey,
    Row,
    sample_key,
)
from loadtest.report.agreement import agreement
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
from loadtest.run.opprofile import OpRow

RATIOS_CSV = "ratios.csv"
BOOTSTRAP_RESAMPLES = 2000
CONFIDENCE = 0.95
STABLE_WITHIN = 0.10  # perf_analyzer's default stability tolerance: ±10 %
STABLE_WINDOW = 3  # … over three consecutive measurements

FLAG_NO_REQUEST = "no completed request"
FLAG_SINGLE = "1 run"
FLAG_NO_DIFFERENCE = "no measurable difference"
FLAG_INTERFERENCE = "suspect: interference"
FLAG_UNSTABLE = "unstable"
FLAG_SATURATED = "generator saturated"
FLAG_VIEWS = "views disagree"

# Short codes for report.md's tables, with a legend under each table; ratios.csv keeps the text.
FLAG_CODES: dict[str, tuple[str, str]] = {
    FLAG_NO_REQUEST: ("a", "no completed request"),
    FLAG_SINGLE: ("b", "1 run: the value without an interval"),
    FLAG_NO_DIFFERENCE: ("c", "no measurable difference: the interval contains 1"),
    FLAG_INTERFERENCE: ("d", "suspect interference: served ratio above the in-process interval"),
    FLAG_UNSTABLE: ("e", "unstable: no three repetitions within ±10% of their mean"),
    FLAG_SATURATED: ("f", "the load generator was saturated"),
    FLAG_VIEWS: (
        "g",
        "in-process floor, server inference and op-profile sum differ by more than 10% "
        "(the numbers in ratios.csv)",
    ),
}


def flag_codes(flag: str) -> str:
    """``[b][g]`` for a ratios.csv flag text (``—`` when none)."""
    codes = sorted(
        {
            code
            for text, (code, _) in FLAG_CODES.items()
            for part in flag.split("; ")
            if part.startswith(text)
        }
    )
    return "".join(f"[{c}]" for c in codes) or "—"


def flag_legend(flags: Sequence[str]) -> list[str]:
    """The footnote under a table: each code used in ``flags`` and what it means."""
    used = "".join(flag_codes(f) for f in flags)
    items = [f"[{code}] {text}" for code, text in FLAG_CODES.values() if f"[{code}]" in used]
    return ["", "Flags: " + "; ".join(items) + "."] if items else []


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
    model completed no request. No interval (low = high = median) unless both models have at
    least two repetitions."""
    if not standard or not separable or min(m.value for m in [*standard, *separable]) <= 0:
        return None
    pairs = [s.value / t.value for t, s in zip(standard, separable, strict=False)]
    median = statistics.median(pairs)
    if len(standard) < 2 or len(separable) < 2:
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


def _agreement_flags(index: Index, key: Key, opprofile: Sequence[OpRow]) -> list[str]:
    """The three-view flag of a served cell, with each disagreeing model's measured reason."""
    reasons = []
    for model in (STANDARD, SEPARABLE):
        found = agreement(index, replace(key, model=model), opprofile)
        if found is not None and not found.ok:
            reasons.append(found.reason())
    return [f"{FLAG_VIEWS} ({'; '.join(reasons)})"] if reasons else []


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
    ``in_process`` for the served cells of the same (runtime, device, batch) that follow. A
    single run has no interval: for the interference check only, its value stands for a band
    of ±10 % (perf_analyzer's stability tolerance)."""
    median, low, high, has_interval = interval
    flags = []
    if not has_interval:
        flags.append(FLAG_SINGLE)
        low, high = median * (1 - STABLE_WITHIN), median * (1 + STABLE_WITHIN)
    elif low <= 1.0 <= high:
        flags.append(FLAG_NO_DIFFERENCE)
    where = (cell.runtime, cell.device, cell.batch_size)
    if cell.mode == IN_PROCESS:
        in_process[where] = (low, high)
    elif where in in_process and low > in_process[where][1]:
        flags.append(FLAG_INTERFERENCE)
    return flags


@dataclass
class _Context:
    """What every cell's ratio reads: the run's rows, samples, saturated cells, operator profile,
    and the in-process intervals met so far (for the served cells that follow)."""

    index: Index
    samples: Mapping[str, list[float]]
    saturated: set[str]
    opprofile: Sequence[OpRow]
    in_process: dict[tuple[str, str, int], tuple[float, float]]


def _ratio_row(ctx: _Context, cell: CellKey) -> RatioRow | None:
    """The ratio of ``cell`` (model left out), or ``None`` when a model was not measured."""
    index = ctx.index
    keys = {m: replace(cell, model=m) for m in (STANDARD, SEPARABLE)}
    if not all(k in index.repetitions for k in keys.values()):
        return None
    reps = {m: _repetitions(index, keys[m], ctx.samples) for m in keys}
    combined = {m: index.by_key(k) for m, k in keys.items()}
    result = ratio_interval(reps[STANDARD], reps[SEPARABLE])
    flags: list[str] = []
    median = low = high = None
    if result is None or not all(completed(r) for r in combined.values()):
        flags.append(FLAG_NO_REQUEST)
    else:
        median, low, high, has_interval = result
        flags += _interval_flags(cell, result, ctx.in_process)
        low, high = (low, high) if has_interval else (None, None)
    flags += _cell_flags(index, keys[STANDARD], reps, ctx.saturated)
    flags += _agreement_flags(index, keys[STANDARD], ctx.opprofile)
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
    ctx = _Context(index, run.samples, saturated_cells(run.meta), run.opprofile, {})
    rows = [_ratio_row(ctx, cell) for cell in _ratio_cells(index)]
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
    """``1.62x [1.55–1.70]``, ``1.06x (1 run)`` without an interval, ``—`` without a ratio."""
    if row is None or row["ratio_median"] is None:
        return "—"
    text = f"{row['ratio_median']:.2f}x"
    if row["ratio_low"] is None or row["ratio_high"] is None:
        return text + " (1 run)"
    return text + f" [{row['ratio_low']:.2f}–{row['ratio_high']:.2f}]"
