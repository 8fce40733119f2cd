"""The "HDR comparison" tab of Locust's web UI, and the same table for headless runs.

Locust keeps response times in whole milliseconds, so at batch 1 both models read "2 ms". This
module turns the merged microsecond HDR results of
:func:`loadtest.record.recorder.merge_snapshots` into one row per (model, protocol, batch size)
plus, where both models ran, a "separable ÷ standard" row next to the MAC ratio, and hangs it
into Locust's web UI the way Locust supports extending it
(``examples/extend_web_ui.py`` in Locust's repository): ``extended_tabs`` / ``extended_tables``
template arguments, an ``extended_stats`` entry added to every ``/stats/requests`` answer (the UI
polls it every 2 s), and ``extended_csv_files`` links on the "Download Data" tab.
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from loadtest.flops import REFERENCE_COSTS, macs_ratio
from loadtest.record.options import Combination

TAB_KEY = "hdr-compare"
TAB_TITLE = "HDR comparison"
RATIO_MODEL = "separable ÷ standard"
BASE_MODEL, FEWER_MACS_MODEL = "standard", "separable"
PERCENTILE_COLUMNS = ("p50_us", "p90_us", "p99_us", "p999_us", "max_us")
# (key, title) of the table; keys are snake_case as Locust's UI camel-cases both sides alike.
COLUMNS: tuple[tuple[str, str], ...] = (
    ("model", "Model"),
    ("protocol", "Protocol"),
    ("batch_size", "Batch"),
    ("requests", "Requests"),
    ("failures", "Failures"),
    ("requests_per_s", "Requests/s"),
    ("images_per_s", "Images/s"),
    ("p50_us", "p50 (µs)"),
    ("p90_us", "p90 (µs)"),
    ("p99_us", "p99 (µs)"),
    ("p999_us", "p99.9 (µs)"),
    ("max_us", "max (µs)"),
    ("macs", "MACs standard ÷ separable"),
)
CACHE_S = 1.0  # the UI polls every 2 s; merging every worker's histograms once per second is plenty


def _us(milliseconds: float) -> float:
    return round(milliseconds * 1000.0, 3)  # HDR values are whole microseconds: drop float noise


def _result_row(result: Mapping[str, Any]) -> dict[str, Any]:
    """A merged HDR result as a comparison row (microseconds)."""
    return {
        "model": result["model"],
        "protocol": result["protocol"],
        "batch_size": int(result["batch_size"]),
        "requests": int(result["requests"]),
        "failures": int(result["failures"]),
        "requests_per_s": float(result["requests_per_s"]),
        "images_per_s": float(result["images_per_s"]),
        "p50_us": _us(result["p50_ms"]),
        "p90_us": _us(result["p90_ms"]),
        "p99_us": _us(result["p99_ms"]),
        "p999_us": _us(result["p999_ms"]),
        "max_us": _us(result["max_ms"]),
        "macs": math.nan,
    }


def _ratio_row(
    base: Mapping[str, Any], other: Mapping[str, Any], mac_ratio: float
) -> dict[str, Any]:
    """Separable ÷ standard of two rows of the same (protocol, batch size)."""
    ratio: dict[str, Any] = {
        "model": RATIO_MODEL,
        "protocol": base["protocol"],
        "batch_size": base["batch_size"],
        "requests": math.nan,
        "failures": math.nan,
        "macs": mac_ratio,
    }
    for column in ("requests_per_s", "images_per_s", *PERCENTILE_COLUMNS):
        ratio[column] = _divide(other[column], base[column])
    return ratio


def comparison(merged: Mapping[str, Any], mac_ratio: float) -> list[dict[str, Any]]:
    """Rows of the comparison table, as numbers (NaN where there is nothing to show).

    Per (protocol, batch size): one row per model (standard first, then separable, then any
    other), then, where both models ran, a ratio row: latencies and throughput separable ÷
    standard, and ``macs`` = how many times fewer multiply-adds the separable model needs
    (1/``macs`` would be the latency ratio and ``macs`` the throughput ratio if cost followed MACs).
    """
    rows_by = {
        Combination(r["model"], r["protocol"], r["batch_size"]): r
        for r in map(_result_row, merged["results"])
    }
    rank = {BASE_MODEL: 0, FEWER_MACS_MODEL: 1}
    rows: list[dict[str, Any]] = []
    for protocol, batch in sorted({(c.protocol, c.batch_size) for c in rows_by}):
        models = sorted(
            (c.model for c in rows_by if (c.protocol, c.batch_size) == (protocol, batch)),
            key=lambda m: (rank.get(m, 2), m),
        )
        rows += [rows_by[Combination(m, protocol, batch)] for m in models]
        base = rows_by.get(Combination(BASE_MODEL, protocol, batch))
        other = rows_by.get(Combination(FEWER_MACS_MODEL, protocol, batch))
        if base is not None and other is not None:
            rows.append(_ratio_row(base, other, mac_ratio))
    return rows


def _divide(numerator: float, denominator: float) -> float:
    if not denominator or math.isnan(numerator) or math.isnan(denominator):
        return math.nan
    return numerator / denominator


def format_cell(row: Mapping[str, Any], column: str) -> str:
    """How a cell reads in the tab and the headless table."""
    value = row[column]
    if isinstance(value, str):
        return value
    if column == "batch_size":
        return str(value)
    if isinstance(value, float) and math.isnan(value):
        return "–"
    if row["model"] == RATIO_MODEL or column == "macs":
        return f"{value:.3f}x"
    if column in ("requests_per_s", "images_per_s"):
        return f"{value:.1f}"
    if column in PERCENTILE_COLUMNS:
        return f"{value:.0f}"  # HDR keeps 3 significant digits: microseconds are exact enough
    return str(int(value))


def formatted(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, str]]:
    """The rows as display strings, plus ``name``: Locust's table sorts by it (and uses it as the
    row's React key), so it holds the row's position to keep each ratio under its two rows."""
    return [
        {"name": f"{index:04d}", **{key: format_cell(row, key) for key, _ in COLUMNS}}
        for index, row in enumerate(rows)
    ]


def text_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The comparison as an aligned plain-text table (headless runs print it at the end)."""
    cells = [[title for _, title in COLUMNS]]
    cells += [[format_cell(row, key) for key, _ in COLUMNS] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
    lines = [
        "  ".join(
            cell.ljust(width) if i < 2 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(line, widths, strict=True))
        )
        for line in cells
    ]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def csv_text(rows: Sequence[Mapping[str, Any]]) -> str:
    """The comparison as CSV with plain numbers (ratios as factors, latencies in µs)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow([key for key, _ in COLUMNS])
    for row in rows:
        writer.writerow(["" if _isnan(row[key]) else row[key] for key, _ in COLUMNS])
    return buffer.getvalue()


def _isnan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def reference_mac_ratio() -> float:
    """Standard ÷ separable MACs of the tutorial architectures (3.93x); both models keep these
    architectures whatever they were trained on, so Locust needs no model repository for it."""
    return macs_ratio(REFERENCE_COSTS)


def _json_safe(value: Any) -> Any:
    """NaN is not JSON: the download writes null instead."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


class ComparisonTab:
    """Registers the tab, its data and its downloads on a Locust ``WebUI``.

    ``collect`` returns the merged HDR results of the current test (all workers' latest snapshots
    on a master); it is called at most once per :data:`CACHE_S` seconds.
    """

    def __init__(self, web_ui: Any, collect: Callable[[], dict[str, Any]], base_path: str = ""):
        self.web_ui = web_ui
        self.collect = collect
        self.base_path = base_path.rstrip("/")
        self.mac_ratio = reference_mac_ratio()
        self._cached: tuple[float, dict[str, Any], list[dict[str, Any]]] | None = None

    def current(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """(merged HDR results, comparison rows), at most :data:`CACHE_S` old."""
        now = time.monotonic()
        if self._cached is None or now - self._cached[0] >= CACHE_S:
            merged = self.collect()
            self._cached = (now, merged, comparison(merged, self.mac_ratio))
        return self._cached[1], self._cached[2]

    def install(self) -> None:
        """Add the template arguments, the ``/stats/requests`` extension and the downloads."""
        self._add_template_args()
        self._extend_stats()
        self._add_downloads()

    def _add_template_args(self) -> None:
        args = self.web_ui.template_args
        args["extended_tabs"] = [{"title": TAB_TITLE, "key": TAB_KEY}]
        args["extended_tables"] = [
            {"key": TAB_KEY, "structure": [{"key": k, "title": t} for k, t in COLUMNS]}
        ]
        args["extended_csv_files"] = [
            {"href": "./loadtest/hdr.json", "title": "Download HDR histograms (JSON)"},
            {"href": "./loadtest/compare.csv", "title": "Download HDR comparison CSV"},
        ]

    def _extend_stats(self) -> None:
        """Our rows ride on every ``/stats/requests`` answer the UI polls."""
        from flask import Response, request

        stats_path = f"{self.base_path}/stats/requests"

        @self.web_ui.app.after_request
        def add_comparison(response: Response) -> Response:
            if request.path != stats_path or response.status_code != 200:
                return response
            _, rows = self.current()
            data = response.get_json()
            data["extended_stats"] = [{"key": TAB_KEY, "data": formatted(rows)}]
            response.set_data(json.dumps(data))
            return response

    def _add_downloads(self) -> None:
        """``loadtest/hdr.json`` and ``loadtest/compare.csv`` on the "Download Data" tab."""
        from flask import Response

        web_ui = self.web_ui

        def download(body: str, mimetype: str, filename: str) -> Response:
            return Response(
                body,
                mimetype=mimetype,
                headers={"Content-Disposition": f"attachment;filename={filename}"},
            )

        @web_ui.auth_required_if_enabled
        def hdr_json() -> Response:
            merged, rows = self.current()
            body = {**merged, "comparison": rows, "mac_ratio": self.mac_ratio}
            return download(json.dumps(_json_safe(body), indent=1), "application/json", "hdr.json")

        @web_ui.auth_required_if_enabled
        def compare_csv() -> Response:
            _, rows = self.current()
            return download(csv_text(rows), "text/csv", "hdr-compare.csv")

        web_ui.app.add_url_rule(
            f"{self.base_path}/loadtest/hdr.json", "loadtest_hdr_json", hdr_json
        )
        web_ui.app.add_url_rule(
            f"{self.base_path}/loadtest/compare.csv", "loadtest_compare_csv", compare_csv
        )
