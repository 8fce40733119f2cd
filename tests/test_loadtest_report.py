"""The report renders from saved results: tables, non-blank plots, ratios with intervals and
flags, the server's breakdown, the operator profile, and a verdict built from the numbers."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from loadtest import report
from loadtest.cells import COLUMNS, read_results, sample_key, write_results
from loadtest.flops import REFERENCE_COSTS, TRAINING_METRICS_IN_VERSION, model_costs
from loadtest.report.agreement import Agreement
from loadtest.report.analysis import (
    FLAG_INTERFERENCE,
    FLAG_NO_DIFFERENCE,
    FLAG_NO_REQUEST,
    FLAG_SINGLE,
    RATIO_COLUMNS,
    Measurement,
    compute_ratios,
    flag_codes,
    flag_legend,
    fmt_interval,
    ratio_interval,
    stable,
)
from loadtest.report.data import Index, complete_windows, load_run
from loadtest.run.opprofile import GraphCosts, conv_kind
from loadtest.run.phases import parse_phase_totals, phase_means

FIXTURE = Path(__file__).parent / "data" / "loadtest_run"
REPO = Path(__file__).parent.parent
BASE_PLOTS = {
    "flops_vs_reality.png",
    "latency_vs_concurrency.png",
    "throughput_vs_batch.png",
    "serving_overhead.png",
}


@pytest.fixture
def run_dir(tmp_path) -> Path:
    target = tmp_path / "run"
    shutil.copytree(FIXTURE, target)
    return target


def assert_non_blank_png(path: Path) -> None:
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.width >= 400 and image.height >= 250
        rgb = image.convert("RGB")
        colors = rgb.getcolors(maxcolors=1 << 20) or []
        # Axes, text, lines and bars: many colors, and a fair share of non-background pixels.
        assert len(colors) > 20, f"{path.name} looks blank"
        background = max(colors)[0]
        assert background < 0.97 * rgb.width * rgb.height, f"{path.name} is almost empty"


def test_results_written_before_repetitions_read_back_as_repeat_0(run_dir):
    # The fixture is a run from before `repeat` and the server phases existed.
    with open(FIXTURE / "results.csv", newline="") as handle:
        old_header = tuple(next(csv.reader(handle)))
    assert "repeat" not in old_header and "server_infer_ms" not in old_header
    rows = read_results(run_dir)
    assert {r["repeat"] for r in rows} == {0}
    assert all(r["server_infer_ms"] is None for r in rows)
    (run_dir / "results.json").unlink()  # the CSV alone reads the same way
    from_csv = read_results(run_dir)
    assert len(from_csv) == len(rows) and {r["repeat"] for r in from_csv} == {0}
    assert all(r["server_decode_ms"] is None for r in from_csv)
    write_results(run_dir, rows)
    with open(run_dir / "results.csv", newline="") as handle:
        assert tuple(next(csv.reader(handle))) == COLUMNS
    assert COLUMNS.index("repeat") == COLUMNS.index("concurrency") + 1
    phases = COLUMNS.index("server_decode_ms")  # the threads columns (#21) follow them
    assert COLUMNS[phases : phases + 4] == (
        "server_decode_ms",
        "server_queue_ms",
        "server_infer_ms",
        "server_encode_ms",
    )


def test_report_has_every_section_and_every_plot_is_a_non_blank_png(run_dir):
    path = report.render(run_dir)
    text = path.read_text()
    for heading in (
        "## Verdict",
        "## Method",
        "## FLOPs vs reality",
        "## Ratios per cell",
        "## Summary per runtime",
        "## Latency vs concurrency",
        "## Throughput vs batch size",
        "## Serving overhead",
        "## Server breakdown",
        "## Per-operator profile",
        "## Setup",
    ):
        assert heading in text
    assert "3.93x" in text
    assert "CPU split: none" in text
    pngs = {p.name: p for p in (run_dir / "plots").glob("*.png")}
    assert set(pngs) == BASE_PLOTS  # no phases or operator profile in this old run
    for name, png in pngs.items():
        assert f"(plots/{name})" in text
        assert_non_blank_png(png)
    for runtime in {r["runtime"] for r in read_results(run_dir)}:
        assert f"### {runtime} on cpu" in text
    with open(run_dir / "ratios.csv", newline="") as handle:
        ratios = list(csv.DictReader(handle))
    assert tuple(ratios[0]) == RATIO_COLUMNS
    # 2 runtimes x (in-process 2 batches + 2 protocols x 2 batches x 2 concurrency levels).
    assert len(ratios) == 2 * (2 + 8)


def test_committed_single_run_grid_still_renders(tmp_path):
    """The earlier grid (one run per cell, unpinned), kept for what the method flags in it."""
    target = tmp_path / "cpu-2core"
    shutil.copytree(REPO / "results" / "cpu-2core" / "single-run-grid-2026-11-26", target)
    text = report.render(target).read_text()
    with open(target / "ratios.csv", newline="") as handle:
        ratios = {
            (r["runtime"], r["protocol"], r["batch_size"], r["concurrency"]): r
            for r in csv.DictReader(handle)
        }
    # One run per cell: the value and "1 run", no interval, served or in-process (the seconds of
    # one run do not say how a second run would differ).
    for cell in (("onnx", "grpc", "32", "1"), ("onnx", "none", "32", "1")):
        assert ratios[cell]["ratio_low"] == ratios[cell]["ratio_high"] == ""
        assert FLAG_SINGLE in ratios[cell]["flag"]
    assert re.search(
        r"\| onnx/cpu \| gRPC \| 32 \| 1 \| 1 \| [0-9,.]+ \| [0-9,.]+ \| 2\.39x \(1 run\)", text
    )
    assert "[b] 1 run: the value without an interval" in text
    # The README's old headline cell: separable 2.39x over gRPC at batch 32 against 1.52x
    # in-process (beyond a single run's ±10 %) is interference, not a result.
    assert FLAG_INTERFERENCE in ratios[("onnx", "grpc", "32", "1")]["flag"]
    assert "The largest measured speedup is 2.39x" not in text
    # A cell where no request completed shows no accuracy.
    rest = [
        line for line in text.splitlines() if line.startswith("| separable | REST | 256 | 32 |")
    ]
    assert rest and all(line.split("|")[14].strip() == "—" for line in rest)
    assert FLAG_NO_REQUEST in ratios[("onnx", "rest", "256", "32")]["flag"]


def test_committed_full_grid_renders_with_every_cell_measured(tmp_path):
    """The grid behind the README: 3 alternating repetitions everywhere, every cell with an
    interval and its requests completed; a cell flagged as interference is never the headline."""
    target = tmp_path / "cpu-2core"
    shutil.copytree(
        REPO / "results" / "cpu-2core",
        target,
        ignore=shutil.ignore_patterns(
            "single-run-grid-*", "grid-*", "pinning-*", "training", "data-plane-*", "batch256*"
        ),
    )
    text = report.render(target).read_text()
    # --headline prints report.md's own first table and verdict, not a second account of them.
    assert f"## Verdict\n\n{report.headline(target)}\n\n## Method" in text
    with open(target / "ratios.csv", newline="") as handle:
        ratios = list(csv.DictReader(handle))
    assert len(ratios) == 36  # 4 runtimes x (3 in-process + gRPC x 3 batches x 2 users)
    cells = [
        (r["runtime"], r["device"], r["mode"], r["protocol"], r["batch_size"], r["concurrency"])
        for r in ratios
    ]
    assert len(set(cells)) == len(cells)  # one row per cell
    assert all(r["repeats"] == "3" and r["ratio_low"] and r["ratio_high"] for r in ratios)
    assert not any(FLAG_SINGLE in r["flag"] or FLAG_NO_REQUEST in r["flag"] for r in ratios)
    headline = text.split("## Verdict")[1].split("The largest measured speedup is ")[1]
    best = max(
        (r for r in ratios if FLAG_INTERFERENCE not in r["flag"]),
        key=lambda r: float(r["ratio_median"]),
    )
    assert headline.startswith(f"{float(best['ratio_median']):.2f}x")


def test_rerender_and_compare_from_the_command_line(run_dir, tmp_path, capsys):
    assert report.main([str(run_dir)]) == 0
    assert "FLOPs vs reality" in capsys.readouterr().out
    # B: the same run with every served throughput doubled and latency halved.
    other = tmp_path / "other"
    shutil.copytree(run_dir, other)
    rows = read_results(other)
    for row in rows:
        if row["mode"] == "served" and row["images_per_s"]:
            row["images_per_s"] *= 2
            row["requests_per_s"] = (row["requests_per_s"] or 0) * 2
            row["p50_ms"] = (row["p50_ms"] or 0) / 2
    write_results(other, rows)
    out_dir = tmp_path / "cmp"
    assert report.main(["--compare", str(run_dir), str(other), "--output", str(out_dir)]) == 0
    text = (out_dir / "compare.md").read_text()
    assert "| 2.00x |" in text  # B ÷ A of a served cell
    assert "## FLOPs vs reality" in text and "## Verdicts" in text
    assert_non_blank_png(out_dir / "plots" / "speedup_compare.png")


def test_compare_pairs_different_runtimes_cell_by_cell(run_dir, tmp_path):
    other = tmp_path / "gpu"
    shutil.copytree(run_dir, other)
    rows = [
        dict(r, runtime="torch", images_per_s=(r["images_per_s"] or 0.0) * 2)
        for r in read_results(other)
        if r["runtime"] == "onnx"
    ]
    write_results(other, rows)
    out_dir = tmp_path / "cmp"
    argv = ["--compare", str(run_dir), str(other), "--output", str(out_dir)]
    assert report.main([*argv, "--pair-runtimes", "onnx=torch"]) == 0
    text = (out_dir / "compare.md").read_text()
    assert "Runtimes paired: onnx in A with torch in B" in text
    paired = [line for line in text.splitlines() if line.startswith("| onnx / torch |")]
    assert paired and all("| 2.00x |" in line for line in paired)
    with pytest.raises(SystemExit):
        report.main([*argv, "--pair-runtimes", "onnx"])


def test_report_cli_rejects_a_directory_without_results(tmp_path, capsys):
    assert report.main([str(tmp_path)]) == 1
    assert "no results.json or results.csv" in capsys.readouterr().err


# --- ratios, intervals and flags ------------------------------------------------------------------


def _row(model, mode, protocol, batch, repeat, ips, **extra) -> dict:
    rate = ips / batch
    p50 = 1000.0 / rate if rate else None
    return {
        "runtime": "onnx",
        "device": "cpu",
        "model": model,
        "protocol": protocol,
        "mode": mode,
        "batch_size": batch,
        "concurrency": 1,
        "repeat": repeat,
        "requests_per_s": rate,
        "images_per_s": ips,
        "p50_ms": p50,
        "p90_ms": p50,
        "p99_ms": p50,
        "p999_ms": p50,
        "max_ms": p50,
        "errors": 0,
        "accuracy": 0.98,
        "generator_cpu": 40.0 if mode == "served" else None,
        "server_cpu": 90.0,
        **extra,
    }


def _run(tmp_path: Path, rows: list[dict], samples: dict | None = None, opprofile: str = ""):
    write_results(tmp_path, rows)
    meta = {"run_id": "t", "costs": REFERENCE_COSTS, "samples": samples or {}}
    (tmp_path / "run.json").write_text(json.dumps(meta))
    if opprofile:
        (tmp_path / "opprofile.csv").write_text(opprofile)
    return load_run(tmp_path)


def _pairs(mode, protocol, std, sep, batch=32, **extra) -> list[dict]:
    """Repetitions of both models in one cell: std and sep are images/s per repetition."""
    return [
        _row(model, mode, protocol, batch, repeat, value, **extra)
        for model, values in (("standard", std), ("separable", sep))
        for repeat, value in enumerate(values)
    ]


def test_ratio_interval_bootstraps_repetitions_and_samples():
    standard = [Measurement(100.0, (95.0, 105.0, 100.0)), Measurement(102.0, (100.0, 104.0))]
    separable = [Measurement(150.0, (140.0, 160.0, 150.0)), Measurement(153.0, (150.0, 156.0))]
    result = ratio_interval(standard, separable)
    assert result is not None
    median, low, high, has_interval = result
    assert median == pytest.approx((1.5 + 1.5) / 2)
    assert has_interval and low < median < high and high < 1.7 and low > 1.3
    assert ratio_interval(standard, separable) == (median, low, high, True)  # fixed seed
    single = ratio_interval([Measurement(100.0, ())], [Measurement(150.0, ())])
    assert single == (1.5, 1.5, 1.5, False)
    assert ratio_interval([Measurement(0.0, ())], [Measurement(150.0, ())]) is None


def test_stability_rule_like_perf_analyzer():
    assert stable([100.0]) is None
    assert stable([100.0, 105.0, 98.0]) is True
    assert stable([100.0, 160.0, 80.0, 100.0, 104.0, 99.0]) is True  # the last three agree
    assert stable([100.0, 150.0, 70.0]) is False


def test_an_interval_containing_1_is_no_measurable_difference(tmp_path):
    rows = _pairs("in-process", "none", [1000, 1010, 990], [1005, 995, 1000])
    (ratio,) = compute_ratios(_run(tmp_path, rows))
    assert (ratio["ratio_low"] or 0) < 1 < (ratio["ratio_high"] or 0)
    assert FLAG_NO_DIFFERENCE in ratio["flag"]
    text = report.verdict([ratio], REFERENCE_COSTS)
    assert "No measurable difference (the interval contains 1) in-process" in text
    assert "largest measured speedup" not in text


def test_served_above_in_process_beyond_its_interval_is_suspect_and_never_headlined(tmp_path):
    rows = _pairs("in-process", "none", [1000, 1010, 990], [1500, 1490, 1510])
    rows += _pairs("served", "grpc", [300, 305, 298], [700, 690, 710])
    ratios = compute_ratios(_run(tmp_path, rows))
    by_mode = {r["mode"]: r for r in ratios}
    assert FLAG_INTERFERENCE in by_mode["served"]["flag"]
    assert FLAG_INTERFERENCE not in by_mode["in-process"]["flag"]
    text = report.verdict(ratios, REFERENCE_COSTS)
    headline = re.search(r"The largest measured speedup is ([0-9.]+)x", text)
    assert headline and headline.group(1) == f"{by_mode['in-process']['ratio_median']:.2f}"
    assert "flagged `suspect: interference` and not used as the headline" in text
    assert "served over gRPC on onnx/cpu at batch 32 (2.33x" in text


def test_a_cell_without_completed_requests_has_no_ratio_and_no_accuracy(tmp_path):
    rows = _pairs("in-process", "none", [1000], [1500])
    rows += _pairs("served", "rest", [0.0], [0.0], batch=32)
    run = _run(tmp_path, rows)
    served = next(r for r in compute_ratios(run) if r["mode"] == "served")
    assert served["ratio_median"] is None and FLAG_NO_REQUEST in served["flag"]
    text = report.render(tmp_path).read_text()
    lines = [line for line in text.splitlines() if line.startswith("| standard | REST | 32 |")]
    assert lines and lines[0].split("|")[14].strip() == "—"  # accuracy column
    assert "0.9800" in text  # the in-process rows keep theirs


def test_one_run_prints_its_value_and_1_run_even_with_samples(tmp_path):
    rows = _pairs("in-process", "none", [1000], [1500])
    keys = {r["model"]: sample_key(r) for r in rows}
    samples = {keys["standard"]: [990, 1010, 1000, 1000], keys["separable"]: [1490, 1510, 1500]}
    (ratio,) = compute_ratios(_run(tmp_path, rows, samples))
    assert FLAG_SINGLE in ratio["flag"]
    assert ratio["ratio_median"] == 1.5 and ratio["ratio_low"] is None is ratio["ratio_high"]
    assert fmt_interval(ratio) == "1.50x (1 run)"
    text = report.render(tmp_path).read_text()
    table = text.split("## Ratios per cell")[1].split("##")[0]
    assert "| 1.50x (1 run) | [b] |" in table and "single" not in table
    assert "\nFlags: [b] 1 run: the value without an interval.\n" in table
    with open(tmp_path / "ratios.csv", newline="") as handle:
        (row,) = csv.DictReader(handle)
    assert row["flag"] == FLAG_SINGLE and row["ratio_low"] == row["ratio_high"] == ""


def test_window_rule_keeps_complete_equal_windows_only():
    # Locust's history: (timestamp, cumulative count); the window runs from 100.4 to 107.6.
    points = [(99, 0), (100, 0), (101, 40), (102, 140), (103, 240), (105, 440), (106, 540)]
    points += [(107, 640), (108, 650), (109, 650)]
    # Windows: 100-101 (first: partial), 101-102, 102-103, 103-105 (2 s: a missed write),
    # 105-106, 106-107, 107-108 (last: the stop falls inside it).
    assert complete_windows(points, 100.4, 107.6, batch_size=2) == [200.0, 200.0, 200.0, 200.0]
    # A count that drops (the statistics reset after the warm-up) is no window.
    reset = [(100, 500), (101, 0), (102, 100), (103, 200), (104, 300), (105, 400)]
    assert complete_windows(reset, 100.4, 104.6, batch_size=1) == [100.0, 100.0]
    # Distributed runs move in 3 s steps.
    steps = [(t, 30 * t) for t in range(100, 113)]
    assert complete_windows(steps, 100, 112, batch_size=1, step=3) == [30.0, 30.0]


def test_ratio_intervals_need_two_runs_and_flags_show_as_codes(tmp_path):
    rows = _pairs("in-process", "none", [1000, 1010, 990], [1500, 1490, 1510])
    rows += _pairs("served", "grpc", [300], [400])
    ratios = {r["mode"]: r for r in compute_ratios(_run(tmp_path, rows))}
    assert ratios["in-process"]["ratio_low"] is not None
    assert fmt_interval(ratios["served"]) == "1.33x (1 run)"
    assert flag_codes(ratios["served"]["flag"]) == "[b]"
    assert flag_codes("") == "—"
    assert flag_codes(f"{FLAG_NO_DIFFERENCE}; {FLAG_SINGLE}") == "[b][c]"
    assert flag_legend([FLAG_SINGLE]) == ["", "Flags: [b] 1 run: the value without an interval."]


def test_server_breakdown_and_inference_check(tmp_path):
    rows = _pairs("in-process", "none", [3200, 3200], [4800, 4800])  # 10 ms and ~6.7 ms a call
    phases = {"server_decode_ms": 0.2, "server_queue_ms": 0.0, "server_encode_ms": 0.1}
    rows += _pairs("served", "grpc", [1600, 1600], [2000, 2000], server_infer_ms=10.2, **phases)
    run = _run(tmp_path, rows)
    flags = {r["mode"]: r["flag"] for r in compute_ratios(run)}
    # standard: 10.2 ms served vs 10 ms in-process agree; separable: 10.2 vs 6.67 do not, and
    # the flag says by how much and which way, from the numbers.
    assert (
        "views disagree (separable: floor 6.667 ms vs server infer 10.200 ms (+53%): server "
        "infer slower than the floor; 0.6 inferences in flight on average" in flags["served"]
    )
    assert "standard:" not in flags["served"]
    text = report.render(tmp_path).read_text()
    table = text.split("## Server breakdown")[1].split("##")[0]
    # standard: 20 ms client mean = 9.5 client + transport + 0.3 framework + 10.2 inference.
    assert (
        "| onnx/cpu | standard | gRPC | 32 | 1 | 20.00 | 9.50 | 0.200 | 0.000 | 0.100 | 10.20 |"
        in table
    )
    assert "⚠" in table
    views = text.split("## Three views of inference time")[1].split("##")[0]
    assert "| onnx/cpu | standard | gRPC | 32 | 1 | 10.000 | 10.200 | — | ok |" in views
    assert (
        "| onnx/cpu | separable | gRPC | 32 | 1 | 6.667 | 10.200 | — | [g] server infer +53% "
        "(0.6 in flight, CPU +116%) |" in views
    )
    assert_non_blank_png(tmp_path / "plots" / "server_breakdown.png")
    assert "outside the model" in text.split("## Method")[0]


def test_a_longer_inference_phase_is_explained_by_the_servers_cpu_per_request():
    # One inference always in flight and 2.9 ms more CPU per request than the floor's call:
    # the other requests' transport ran on the same core during inferences (issue #21).
    shared = Agreement("separable", 7.611, 9.530, None, in_flight=0.97, server_cpu_ms=10.5)
    assert not shared.ok
    assert shared.reason() == (
        "separable: floor 7.611 ms vs server infer 9.530 ms (+25%): server infer slower than "
        "the floor; 1.0 inferences in flight on average (infer ms × requests/s); the server "
        "used 10.500 ms of CPU per request, +2.889 ms against the floor's call: its other work "
        "(gRPC transport, decode and encode of the requests in flight) ran on the same CPUs "
        "while an inference was in flight"
    )
    assert shared.short() == "[g] server infer +25% (1.0 in flight, CPU +38%)"
    # Idle half the time and no more CPU than the floor: the numbers, no explanation claimed.
    idle = Agreement("standard", 10.0, 12.0, None, in_flight=0.5, server_cpu_ms=10.5)
    assert idle.reason().endswith(
        "the server used 10.500 ms of CPU per request, +0.500 ms against the floor's call"
    )
    assert Agreement("standard", 10.0, 10.5, None, in_flight=1.0, server_cpu_ms=14.0).ok


OPPROFILE = """runtime,device,model,batch_size,op_kind,ms,macs,gmacs_per_s
onnx,cpu,standard,32,standard conv,2.9,77598720,26.8
onnx,cpu,standard,32,dense,0.5,13189120,26.4
onnx,cpu,standard,32,pooling,0.5,0,
onnx,cpu,standard,32,rest,0.2,0,
onnx,cpu,standard,32,call overhead,0.1,0,
onnx,cpu,separable,32,depthwise,0.18,1309824,7.3
onnx,cpu,separable,32,pointwise,0.33,8622080,26.1
onnx,cpu,separable,32,dense,0.43,13189120,30.7
onnx,cpu,separable,32,pooling,0.14,0,
onnx,cpu,separable,32,rest,0.18,0,
onnx,cpu,separable,32,call overhead,0.09,0,
"""


def test_explanations_only_where_the_operator_profile_shows_them(tmp_path):
    rows = _pairs("in-process", "none", [1000, 1010, 990], [1500, 1490, 1510])
    without = report.verdict(compute_ratios(_run(tmp_path, rows)), REFERENCE_COSTS)
    assert "GMAC/s" not in without and "dense" not in without
    run = _run(tmp_path, rows, opprofile=OPPROFILE)
    text = report.render(tmp_path).read_text()
    verdict = text.split("## Verdict")[1].split("## Method")[0]
    # Depthwise at 7.3 GMAC/s against 26.8 for standard convolutions; dense 32% of 1.35 ms.
    assert "they reach 7.3 GMAC/s against 26.8 GMAC/s" in verdict
    assert "take 32% at batch 32 (0.430 ms) of the separable model's time" in verdict
    assert "per-call costs" not in verdict  # rest + overhead are 20% here, under the rule's 30%
    assert_non_blank_png(tmp_path / "plots" / "opprofile.png")
    assert len(run.opprofile) == 11


def test_verdict_sentences_change_with_the_numbers(tmp_path):
    costs = REFERENCE_COSTS
    faster = compute_ratios(
        _run(tmp_path / "a", _pairs("in-process", "none", [100, 101, 99], [380, 385, 378]))
    )
    slower = compute_ratios(
        _run(tmp_path / "b", _pairs("in-process", "none", [100, 101, 99], [60, 61, 59]))
    )
    text_faster, text_slower = report.verdict(faster, costs), report.verdict(slower, costs)
    assert "The largest measured speedup is 3.81x" in text_faster
    assert "97% of the 3.93x" in text_faster
    assert "The separable model is slower in-process on onnx/cpu at batch 32 (0.60x" in text_slower
    assert "largest measured speedup" not in text_slower


def test_index_combines_repetitions_with_medians_and_spreads():
    rows = _pairs("in-process", "none", [100, 300, 200], [1, 2, 3])
    index = Index([r for r in (read_row(r) for r in rows)])
    combined = index.get(("onnx", "cpu"), "standard", "none", 32, 1)
    assert combined is not None and combined["images_per_s"] == 200
    key = Index.key(("onnx", "cpu"), "standard", "none", 32, 1)
    assert index.spread(key, "images_per_s") == (100, 300)


def read_row(row: dict):
    from loadtest.cells import normalize

    return normalize(row)


# --- server phases, operator profile, costs -------------------------------------------------------


def _sample(kind: str, api: str, phase: str, version: str, value: float) -> str:
    labels = f'api="{api}",model="standard",phase="{phase}",runtime="onnx",version="{version}"'
    return f"serving_request_phase_seconds_{kind}{{{labels}}} {value}"


EXPOSITION = "\n".join(
    [
        "# HELP serving_request_phase_seconds Server time of a successful request by phase.",
        "# TYPE serving_request_phase_seconds histogram",
        _sample("bucket", "grpc", "decode", "1", 3.0).replace("}", ',le="0.001"}'),
        _sample("bucket", "grpc", "decode", "1", 4.0).replace("}", ',le="+Inf"}'),
        _sample("count", "grpc", "decode", "1", 4.0),
        _sample("sum", "grpc", "decode", "1", 0.002),
        _sample("count", "grpc", "decode", "2", 6.0),
        _sample("sum", "grpc", "decode", "2", 0.003),
        _sample("count", "grpc", "infer", "1", 10.0),
        _sample("sum", "grpc", "infer", "1", 0.05),
        _sample("count", "rest", "infer", "1", 1.0),
        _sample("sum", "rest", "infer", "1", 9.0),
        "# TYPE serving_requests_total counter",
        'serving_requests_total{api="grpc",code="OK",model="standard",version="1"} 10.0',
        "",
    ]
)


def test_phase_histogram_is_parsed_and_differenced():
    totals = parse_phase_totals(EXPOSITION)
    assert totals[("standard", "grpc", "decode")] == pytest.approx((0.005, 10.0))  # versions summed
    assert totals[("standard", "rest", "infer")] == (9.0, 1.0)
    before = {("standard", "grpc", "infer"): (0.01, 2.0)}
    means = phase_means(before, totals, "standard", "grpc")
    assert means.infer == pytest.approx(1000 * 0.04 / 8)  # 5 ms per request over the window
    assert means.decode == pytest.approx(0.5)
    assert means.queue is None  # never observed
    assert phase_means(None, totals, "standard", "grpc").infer is None


def test_conv_kinds_from_weight_shapes():
    assert conv_kind([32, 1, 3, 3], group=1) == "standard conv"  # first layer, one channel in
    assert conv_kind([1, 1, 3, 3], group=1) == "depthwise"  # depthwise over one channel
    assert conv_kind([32, 1, 3, 3], group=32) == "depthwise"
    assert conv_kind([64, 32, 1, 1], group=1) == "pointwise"
    assert conv_kind([64, 32, 3, 3], group=1) == "standard conv"


def test_costs_come_from_the_export_and_match_the_onnx_graph(exported_repository, tmp_path):
    costs = model_costs(exported_repository)
    for name in ("standard", "separable"):
        cost = costs[name]
        assert cost["source"] == str(exported_repository / "export_report.json")
        layers = json.loads(
            (exported_repository / name / "1" / TRAINING_METRICS_IN_VERSION).read_text()
        )["layers"]
        assert cost["macs"] == sum(int(layer["macs"]) for layer in layers)
        # Independently: the MACs of the exported ONNX graph, from its shapes.
        graph = GraphCosts(exported_repository / name / "1" / "model.onnx").macs_by_kind()
        conv = graph["standard conv"] + graph["depthwise"] + graph["pointwise"]
        assert (conv, graph["dense"]) == (cost["conv_macs"], cost["dense_macs"])
        assert conv + graph["dense"] == cost["macs"]
    assert costs["separable"]["dense_macs"] == costs["standard"]["dense_macs"]
    # A different export gives different costs: the numbers are read, not the fallback.
    copy = tmp_path / "models"
    shutil.copytree(exported_repository, copy)
    report_path = copy / "export_report.json"
    data = json.loads(report_path.read_text())
    data["models"]["standard"]["macs"] = 123
    data["models"]["standard"]["version_path"] = str(copy / "standard" / "1")
    report_path.write_text(json.dumps(data))
    assert model_costs(copy)["standard"]["macs"] == 123
    assert model_costs(None)["standard"]["source"] == "tutorial architecture"


def test_operator_profile_of_the_exported_models(exported_repository):
    from loadtest.run.opprofile import OP_KINDS, profile_rows

    rows = profile_rows("onnx", exported_repository, ["standard", "separable"], [1, 4])
    assert {(r["model"], r["batch_size"]) for r in rows} == {
        (m, b) for m in ("standard", "separable") for b in (1, 4)
    }
    by = {(r["model"], r["batch_size"], r["op_kind"]): r for r in rows}
    assert {r["op_kind"] for r in rows} == set(OP_KINDS)
    costs = model_costs(exported_repository)
    for model in ("standard", "separable"):
        # MACs per call scale with the batch and add up to the export's count.
        assert sum(by[(model, 4, k)]["macs"] for k in OP_KINDS) == 4 * costs[model]["macs"]
        assert (
            by[(model, 4, "dense")]["ms"] > 0 and (by[(model, 4, "dense")]["gmacs_per_s"] or 0) > 0
        )
    assert by[("standard", 4, "standard conv")]["ms"] > 0
    assert by[("standard", 4, "depthwise")]["macs"] == 0
    assert by[("separable", 4, "depthwise")]["ms"] > 0
    assert by[("separable", 4, "pointwise")]["ms"] > 0
    assert by[("separable", 4, "standard conv")]["macs"] == 0
    assert by[("separable", 1, "pooling")]["gmacs_per_s"] is None  # no MACs, no rate


def test_operator_profile_calls_the_runtime_in_the_servers_runs(exported_repository):
    # A profiled call is the server's call: more rows than --max_rows_per_run go through the
    # runtime in runs of that many rows (serving.model.runs), with the server's thread counts.
    from loadtest.run.opprofile import profile_rows
    from serving.model.runs import run_slices

    def run_rows(batch_size: int, max_rows: int) -> list[int]:
        return [run.stop - run.start for run in run_slices(batch_size, max_rows)]

    assert run_rows(256, 64) == [64, 64, 64, 64]
    assert run_rows(100, 64) == [64, 36]
    assert run_rows(32, 64) == [32] and run_rows(300, 0) == [300]
    costs = model_costs(exported_repository)
    for runtime in ("onnx", "openvino"):
        if runtime == "openvino":
            pytest.importorskip("openvino")
        rows = profile_rows(
            runtime, exported_repository, ["separable"], [6], server_args=["--max_rows_per_run=2"]
        )
        by = {r["op_kind"]: r for r in rows}
        # Three runs of 2 rows make one call of 6 rows: MACs per call are 6 images' worth.
        assert by["dense"]["macs"] == 6 * costs["separable"]["dense_macs"], runtime
        assert by["depthwise"]["ms"] > 0 and by["pointwise"]["ms"] > 0, runtime


def test_tensorflow_operator_profile_from_its_own_profiler(exported_repository):
    pytest.importorskip("tensorflow")
    from loadtest.run.opprofile import profile_rows

    rows = profile_rows("tensorflow", exported_repository, ["standard", "separable"], [2])
    by = {(r["model"], r["op_kind"]): r for r in rows}
    # TensorFlow's op stats: DepthwiseConv2dNative is depthwise, the convolution in the same
    # layer pointwise; the standard model has neither.
    assert by[("separable", "depthwise")]["ms"] > 0 and by[("separable", "pointwise")]["ms"] > 0
    assert by[("standard", "standard conv")]["ms"] > 0 and by[("standard", "depthwise")]["ms"] == 0
    assert by[("standard", "dense")]["ms"] > 0 and by[("separable", "dense")]["ms"] > 0
    costs = model_costs(exported_repository)
    assert by[("separable", "dense")]["macs"] == 2 * costs["separable"]["dense_macs"]


def test_soak_figures_in_the_docs_name_the_model_the_soak_ran():
    soak = json.loads((REPO / "results" / "cpu-2core" / "soak.json").read_text())
    model = soak["config"]["model"]
    other = ({"standard", "separable"} - {model}).pop()
    for doc in (REPO / "README.md", REPO / "docs" / "reliability.md"):
        text = doc.read_text()
        assert f"{soak['result']['requests']:,}" in text
        link = text.index("results/cpu-2core/soak.json)")
        # The sentence that cites the soak's figures and links its file names its model.
        window = text[max(0, link - 400) : link]
        assert f"`{model}`" in window, doc.name
        assert f"`{other}`" not in window, doc.name


def test_readme_headline_is_the_committed_grid():
    """README's verdict and FLOPs-vs-reality table are the committed full grid's, regenerated
    (``python -m loadtest.report --headline results/cpu-2core``), never hand-edited figures."""
    from loadtest.report import headline

    root = Path(__file__).resolve().parent.parent
    readme = (root / "README.md").read_text()
    begin = "<!-- headline: python -m loadtest.report --headline results/cpu-2core -->\n"
    end = "\n<!-- /headline -->"
    assert begin in readme and end in readme
    block = readme.split(begin, 1)[1].split(end, 1)[0]
    assert block.strip() == headline(root / "results" / "cpu-2core").strip()


def test_first_table_kernels_and_served_floor_sections(tmp_path):
    rows = _pairs("in-process", "none", [1000, 1010, 990], [1500, 1490, 1510], batch=256)
    rows += _pairs("served", "grpc", [950, 940, 960], [1300, 1310, 1290], batch=256)
    run = _run(tmp_path, rows, opprofile=OPPROFILE.replace(",32,", ",256,"))
    text = report.render(tmp_path).read_text()
    first = text.split("## Verdict")[1].split("## Method")[0]
    # Batches 1 and 32 are not in this run: "—"; at 256 both ratios, their share of 3.93x and
    # the layer kinds whose time exceeds the standard model's cost per multiply-add.
    assert "| onnx/cpu | 1 | — | — | — / — | no op profile | — |" in first
    assert "| onnx/cpu | 256 | 1.50x [" in first and "at 1 user | 38% / 35% |" in first
    # Standard: 4.2 ms for 90,787,840 MACs; the separable model's 23,121,024 MACs would take
    # 1.070 ms at that rate, it takes 1.35 ms: rest and pooling (no MACs) and depthwise
    # (0.18 ms where 0.061 ms would do) keep the gap.
    assert "1.350 ms vs 1.070 ms at the standard model's cost per MAC" in first
    assert "excess ms: rest +0.180, pooling +0.140, depthwise +0.119 (7.3 GMAC/s)" in first
    assert "| 256 | onnx/cpu (1,000 img/s) | onnx/cpu (1,500 img/s) |" in first
    # The verdict says the same from the same numbers.
    assert (
        "is 38% of 3.93x: there the separable model takes 1.350 ms per call where its "
        "multiply-adds at the standard model's cost would take 1.070 ms (excess ms per call, "
        "largest first: rest +0.180, pooling +0.140 and depthwise +0.119 (7.3 GMAC/s)" in first
    )
    # No executed-graph.json and no server_rss_mb column in this run: said so, not guessed.
    kernels = text.split("## Kernels")[1].split("##")[0]
    assert "| onnx | not recorded in this run | 7.3 at batch 256 | not recorded in this run |" in (
        kernels
    )
    floor = text.split("## Served vs in-process at batch 256")[1].split("##")[0]
    assert "| onnx/cpu | standard | 1 | 950 | 1,000 | 0.95x | met | not recorded |" in floor
    assert "| onnx/cpu | separable | 1 | 1,300 | 1,500 | 0.87x | not met | not recorded |" in floor
    # With the sweep's files: what each convolution became, and the server's memory.
    graph = {
        "onnx": {
            "separable": {
                "nodes": [],
                "summary": {"depthwise": "DepthwiseConv kernel", "pointwise": "fused Conv+Relu"},
            }
        }
    }
    (tmp_path / "executed-graph.json").write_text(json.dumps(graph))
    shares = report.render(tmp_path).read_text().split("## Kernels")[1].split("##")[0]
    assert "| onnx | DepthwiseConv kernel | 7.3 at batch 256 | fused Conv+Relu | 26.1 at" in shares
    from loadtest.report.runtimes import served_floor_lines

    with_rss: list[Any] = [{**r, "server_rss_mb": 131.6} for r in run.rows]  # the sweep's column
    index = Index(with_rss)
    assert any(line.endswith("| 132 MB |") for line in served_floor_lines(index))
