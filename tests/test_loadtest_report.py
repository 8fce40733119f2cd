"""The report renders from saved results: tables, non-blank plots, a verdict from the data."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from loadtest import report
from loadtest.flops import REFERENCE_COSTS, model_costs
from loadtest.results import COLUMNS, read_results, write_results

FIXTURE = Path(__file__).parent / "data" / "loadtest_run"
PLOTS = {
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


def test_fixture_has_the_issue_columns():
    with open(FIXTURE / "results.csv", newline="") as handle:
        assert tuple(next(csv.reader(handle))) == COLUMNS
    rows = json.loads((FIXTURE / "results.json").read_text())
    assert all(tuple(row) == COLUMNS for row in rows)
    assert {r["mode"] for r in rows} == {"served", "in-process"}


def test_report_has_every_section_and_every_plot_is_a_non_blank_png(run_dir):
    path = report.render(run_dir)
    text = path.read_text()
    for heading in (
        "## Verdict",
        "## FLOPs vs reality",
        "## Summary per runtime",
        "## Latency vs concurrency",
        "## Throughput vs batch size",
        "## Serving overhead",
        "## Setup",
    ):
        assert heading in text
    assert "3.93x" in text
    pngs = {p.name: p for p in (run_dir / "plots").glob("*.png")}
    assert set(pngs) == PLOTS
    for name, png in pngs.items():
        assert f"(plots/{name})" in text
        assert_non_blank_png(png)
    # Every runtime gets its summary table.
    for runtime in {r["runtime"] for r in read_results(run_dir)}:
        assert f"### {runtime} on cpu" in text


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
            row["requests_per_s"] *= 2
            row["p50_ms"] /= 2
    write_results(other, rows)
    out_dir = tmp_path / "cmp"
    assert report.main(["--compare", str(run_dir), str(other), "--output", str(out_dir)]) == 0
    text = (out_dir / "compare.md").read_text()
    assert "| 2.00x |" in text  # B ÷ A of a served cell
    assert "## FLOPs vs reality" in text and "## Verdicts" in text
    assert_non_blank_png(out_dir / "plots" / "speedup_compare.png")


def test_compare_pairs_different_runtimes_cell_by_cell(run_dir, tmp_path):
    # B: the onnx cells renamed to another runtime with twice the throughput, as a GPU run of
    # the torch runtime is compared with ONNX Runtime on a CPU machine.
    other = tmp_path / "gpu"
    shutil.copytree(run_dir, other)
    rows = [dict(r, runtime="torch") for r in read_results(other) if r["runtime"] == "onnx"]
    for row in rows:
        row["images_per_s"] *= 2
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


def _rows(std_ip: float, sep_ip: float, std_served: float, sep_served: float) -> list[dict]:
    """A tiny run: onnx, batch 1 and 32, in-process and gRPC at one user (p50 in ms)."""
    rows = []
    for batch, scale in ((1, 1.0), (32, 8.0)):
        for model, ip, served in (
            ("standard", std_ip, std_served),
            ("separable", sep_ip, sep_served),
        ):
            for mode, protocol, p50 in (("in-process", "none", ip), ("served", "grpc", served)):
                latency = p50 * scale
                rows.append(
                    {
                        "runtime": "onnx",
                        "device": "cpu",
                        "model": model,
                        "protocol": protocol,
                        "mode": mode,
                        "batch_size": batch,
                        "concurrency": 1,
                        "requests_per_s": 1000 / latency,
                        "images_per_s": 1000 / latency * batch,
                        "p50_ms": latency,
                        "p90_ms": latency * 1.2,
                        "p99_ms": latency * 2,
                        "p999_ms": latency * 3,
                        "max_ms": latency * 4,
                        "errors": 0,
                        "accuracy": 0.98,
                        "generator_cpu": 40.0 if mode == "served" else None,
                        "server_cpu": 90.0,
                    }
                )
    return rows


def test_verdict_follows_the_numbers():
    costs = REFERENCE_COSTS
    # Overhead-dominated: 0.2 ms of compute inside 2 ms served requests, kernels 1.3x faster.
    overhead_bound = report.verdict(_rows(0.20, 0.154, 2.0, 1.95), costs)
    assert "never shows up in full" in overhead_bound
    assert "Per-request overhead explains most of it" in overhead_bound
    assert "Even without a server the kernels do not deliver" in overhead_bound
    # Compute-bound and faithful to the MACs: 3.8x in-process and served.
    faithful = report.verdict(_rows(4.0, 1.05, 4.2, 1.1), costs)
    assert faithful != overhead_bound
    assert "The saving shows up" in faithful
    assert "3.81x" in faithful
    assert "Serving overhead is not what hides the saving" in faithful
    assert "the kernels deliver much of the saving" in faithful
    # The separable model slower than the standard one.
    slower = report.verdict(_rows(1.0, 1.5, 2.0, 3.0), costs)
    assert "the separable model is even slower" in slower
    assert len({overhead_bound, faithful, slower}) == 3


def test_verdict_of_the_fixture_changes_when_its_numbers_change(run_dir):
    rows = read_results(run_dir)
    costs = model_costs(None)
    before = report.verdict(rows, costs)
    by_key = {
        (r["runtime"], r["protocol"], r["batch_size"], r["concurrency"]): r
        for r in rows
        if r["model"] == "standard"
    }
    for row in rows:
        if row["model"] == "separable" and row["p50_ms"]:
            twin = by_key[(row["runtime"], row["protocol"], row["batch_size"], row["concurrency"])]
            row["p50_ms"] = twin["p50_ms"] / 3.9
    after = report.verdict(rows, costs)
    assert after != before
    assert "The saving shows up" in after


def test_costs_come_from_the_export_report(exported_repository):
    costs = model_costs(exported_repository)
    assert costs["standard"]["macs"] == 2_837_120
    assert costs["separable"]["macs"] == 722_532
    assert costs["separable"]["dense_macs"] == 412_160
    assert costs["standard"]["conv_macs"] == 2_424_960
