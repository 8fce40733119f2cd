"""The results table of a sweep: one row per cell, as ``results.csv`` and ``results.json``.

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
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

COLUMNS: tuple[str, ...] = (
    "runtime",
    "device",
    "model",
    "protocol",
    "mode",
    "batch_size",
    "concurrency",
    "requests_per_s",
    "images_per_s",
    "p50_ms",
    "p90_ms",
    "p99_ms",
    "p999_ms",
    "max_ms",
    "errors",
    "accuracy",
    "generator_cpu",
    "server_cpu",
)
INT_COLUMNS = frozenset({"batch_size", "concurrency", "errors"})
STR_COLUMNS = frozenset({"runtime", "device", "model", "protocol", "mode"})
MODES = ("served", "in-process")
IN_PROCESS_PROTOCOL = "none"
RESULTS_CSV = "results.csv"
RESULTS_JSON = "results.json"


def normalize(row: Mapping[str, Any]) -> dict[str, Any]:
    """A row with exactly :data:`COLUMNS`, typed: str, int, or float (None when missing/NaN)."""
    missing = [c for c in COLUMNS if c not in row]
    if missing:
        raise ValueError(f"row lacks columns {missing}")
    out: dict[str, Any] = {}
    for column in COLUMNS:
        value = row[column]
        if column in STR_COLUMNS:
            out[column] = str(value)
        elif column in INT_COLUMNS:
            out[column] = int(value)
        elif value is None or value == "":
            out[column] = None
        else:
            number = float(value)
            out[column] = None if math.isnan(number) else number
    if out["mode"] not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {out['mode']!r}")
    return out


def _csv_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}" if abs(value) < 1e6 else f"{value:.1f}"
    return str(value)


def write_results(run_dir: Path, rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Write ``results.csv`` and ``results.json`` (a JSON list of row objects) under ``run_dir``."""
    normalized = [normalize(r) for r in rows]
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / RESULTS_CSV, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        for row in normalized:
            writer.writerow([_csv_text(row[c]) for c in COLUMNS])
    (run_dir / RESULTS_JSON).write_text(json.dumps(normalized, indent=1) + "\n")
    return normalized


def read_results(run_dir: Path) -> list[dict[str, Any]]:
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
