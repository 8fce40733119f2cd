"""Real Locust runs against a real server (tiny models), the in-process floor, and the sweep."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from harness import ServerProcess
from loadtest.cells import COLUMNS
from loadtest.record import hdr
from loadtest.record.recorder import read_run_output
from loadtest.run.floor import measure_runtime
from loadtest.run.locust import LOCUSTFILE, locust_command

pytestmark = pytest.mark.timeout(300)


def run_locust(server: ServerProcess, tmp_path: Path, name: str, *args: str) -> dict:
    return run_locust_with_output(server, tmp_path, name, *args)[0]


def run_locust_with_output(
    server: ServerProcess, tmp_path: Path, name: str, *args: str
) -> tuple[dict, str]:
    """Locust headless against ``server``: (merged HDR results, stdout + stderr)."""
    prefix = tmp_path / name
    command = locust_command(prefix, server.rest_url, server.grpc_target, args)
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return read_run_output(Path(f"{prefix}_hdr.json")), result.stdout + result.stderr


def check_result(result: dict, model: str, protocol: str, batch_size: int) -> None:
    assert (result["model"], result["protocol"], result["batch_size"]) == (
        model,
        protocol,
        batch_size,
    )
    assert result["failures"] == 0
    assert result["requests"] > 10
    assert 0 < result["p50_ms"] <= result["p90_ms"] <= result["p99_ms"] <= result["max_ms"]
    assert result["p999_ms"] <= result["max_ms"]
    assert result["images_per_s"] == pytest.approx(result["requests_per_s"] * batch_size)
    # Tiny models trained for one epoch on 2,000 images: well above chance.
    assert 0.3 < result["accuracy"] <= 1.0


def test_locust_grpc_and_rest_against_a_real_server(model_repository, tmp_path):
    with ServerProcess(
        model_repository / "models.config",
        ["--runtime", "onnx"],
        log_path=tmp_path / "server.log",
    ) as server:
        # Two worker processes: their HDR histograms are merged.
        grpc_run = run_locust(
            server,
            tmp_path,
            "grpc",
            *("-u", "2", "-r", "2", "-t", "4s", "--processes", "2", "--warmup", "1"),
            *("--model", "separable", "--protocol", "grpc", "--batch-size", "4"),
        )
        (result,) = grpc_run["results"]
        check_result(result, "separable", "grpc", 4)
        assert grpc_run["processes"] == 2 and grpc_run["final_snapshots"] == 2
        workers = [json.loads(p.read_text()) for p in tmp_path.glob("grpc_hdr.json.worker-*.json")]
        assert len(workers) == 2
        per_worker = [w["keys"]["separable|grpc|4"]["histogram"] for w in workers]
        assert sum(hdr.decode(h).get_total_count() for h in per_worker) == result["requests"]
        assert hdr.summarize(hdr.merge(per_worker)) == hdr.summarize(
            hdr.decode(result["histogram"])
        )
        # Locust's own CSV is kept as a raw artifact and saw the same traffic.
        with open(tmp_path / "grpc_stats.csv", newline="") as handle:
            stats = {row["Name"]: row for row in csv.DictReader(handle)}
        assert int(stats["separable batch=4"]["Failure Count"]) == 0
        assert int(stats["separable batch=4"]["Request Count"]) > 0

        rest_run = run_locust(
            server,
            tmp_path,
            "rest",
            *("-u", "1", "-r", "1", "-t", "3s", "--warmup", "1"),
            *("--model", "standard", "--protocol", "rest", "--batch-size", "3"),
        )
        (result,) = rest_run["results"]
        check_result(result, "standard", "rest", 3)

        # The sweep measuring this running server (--target), without the in-process floor.
        server_process = server.process
        assert server_process is not None
        sweep = subprocess.run(
            [
                sys.executable,
                "-m",
                "loadtest",
                *("--target", server.grpc_target, "--rest-target", server.rest_url[7:]),
                *("--server-pid", str(server_process.pid), "--runtimes", "onnx"),
                *("--models", "standard", "--batch-sizes", "1", "--concurrency", "1"),
                *("--protocols", "grpc", "--duration", "1", "--warmup", "0", "--no-in-process"),
                *("--output", str(tmp_path / "reports"), "--run-id", "target"),
            ],
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        assert sweep.returncode == 0, sweep.stdout[-3000:] + sweep.stderr[-3000:]
        (row,) = json.loads((tmp_path / "reports" / "target" / "results.json").read_text())
        assert (row["mode"], row["errors"]) == ("served", 0)
        assert row["server_cpu"] is not None and row["server_cpu"] > 0


def test_comma_lists_run_every_combination_side_by_side(onnx_server, tmp_path):
    # 8 combinations, one user each, over two worker processes (distributed mode).
    merged, output = run_locust_with_output(
        onnx_server,
        tmp_path,
        "mixed",
        *("-u", "8", "-r", "8", "-t", "5s", "--processes", "2", "--warmup", "1"),
        *("--model", "standard,separable", "--protocol", "grpc,rest", "--batch-size", "1,2"),
    )
    expected = [
        (model, protocol, batch)
        for model in ("separable", "standard")
        for protocol in ("grpc", "rest")
        for batch in (1, 2)
    ]
    assert [(r["model"], r["protocol"], r["batch_size"]) for r in merged["results"]] == expected
    for result in merged["results"]:
        check_result(result, result["model"], result["protocol"], result["batch_size"])
    # Locust's statistics: one row per combination (type = protocol, name = model and batch).
    with open(tmp_path / "mixed_stats.csv", newline="") as handle:
        rows = {(r["Type"], r["Name"]) for r in csv.DictReader(handle) if r["Name"] != "Aggregated"}
    assert rows == {(p, f"{m} batch={b}") for m, p, b in expected}
    # The microsecond comparison table at the end, with a ratio row per (protocol, batch).
    table = output[output.index("HDR comparison (microseconds)") :]
    assert "p50 (µs)" in table and "MACs standard ÷ separable" in table
    ratio_lines = [line for line in table.splitlines() if line.startswith("separable ÷ standard")]
    assert len(ratio_lines) == 4 and all("3.927x" in line for line in ratio_lines)


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--protocol", "grpc,soap", "'soap' is not one of grpc, rest"),
        ("--batch-size", "1,0", "expected an integer >= 1, got 0"),
        ("--model", "standard,,separable", "empty item"),
        ("--model", "standard,standard", "repeated item"),
    ],
)
def test_bad_comma_lists_are_rejected_before_any_load(flag, value, message):
    command = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", flag, value]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2
    assert message in result.stderr


def test_in_process_measurement(exported_repository):
    measured = measure_runtime(
        "onnx",
        exported_repository,
        ["standard", "separable"],
        [1, 8],
        duration_s=0.3,
        warmup_s=0.1,
    )
    assert measured["runtime"] == "onnx"
    assert [(e["model"], e["batch_size"]) for e in measured["results"]] == [
        ("standard", 1),
        ("standard", 8),
        ("separable", 1),
        ("separable", 8),
    ]
    for entry in measured["results"]:
        assert entry["requests"] >= 5
        assert 0 < entry["p50_ms"] <= entry["max_ms"]
        assert entry["images_per_s"] == pytest.approx(entry["requests_per_s"] * entry["batch_size"])
        assert 0.3 < entry["accuracy"] <= 1.0


def test_sweep_starts_the_server_and_writes_the_report(model_repository, tmp_path):
    output = tmp_path / "reports"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "loadtest",
            *("--models-dir", str(model_repository), "--output", str(output)),
            *("--runtimes", "onnx", "--batch-sizes", "4", "--concurrency", "1"),
            *("--protocols", "grpc", "--duration", "1", "--warmup", "0", "--run-id", "e2e"),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run_dir = output / "e2e"
    assert result.stdout.strip().splitlines()[-1] == f"report: {run_dir / 'report.md'}"
    assert "FLOPs vs reality" in result.stdout
    with open(run_dir / "results.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == COLUMNS
    modes = sorted((r["mode"], r["model"], r["protocol"]) for r in rows)
    assert modes == [
        ("in-process", "separable", "none"),
        ("in-process", "standard", "none"),
        ("served", "separable", "grpc"),
        ("served", "standard", "grpc"),
    ]
    for row in rows:
        assert row["errors"] == "0"
        assert float(row["p50_ms"]) > 0 and not math.isnan(float(row["images_per_s"]))
        if row["mode"] == "served":
            assert float(row["generator_cpu"]) > 0 and float(row["server_cpu"]) > 0
    report = (run_dir / "report.md").read_text()
    assert "## Verdict" in report and "## FLOPs vs reality" in report
    plots = {path.name for path in (run_dir / "plots").glob("*.png")}
    assert plots == {
        "flops_vs_reality.png",
        "latency_vs_concurrency.png",
        "throughput_vs_batch.png",
        "serving_overhead.png",
        "opprofile.png",  # ONNX Runtime's operator profile
        "server_breakdown.png",  # the server's phase histograms
    }
    assert (run_dir / "locust" / "onnx-standard-grpc-b4-c1_stats.csv").is_file()
    assert (run_dir / "locust" / "onnx-standard-grpc-b4-c1.html").is_file()
    machine = json.loads((run_dir / "machine.json").read_text())
    assert machine["cpu_model"] and machine["libraries"]["locust"]
    assert "python -m loadtest" in (run_dir / "command.txt").read_text()
    meta = json.loads((run_dir / "run.json").read_text())
    assert meta["runtimes"][0]["server_exit_code"] == 0  # SIGTERM drained cleanly
    # ratios.csv: exactly one row per cell (CellKey less model and repeat).
    with open(run_dir / "ratios.csv", newline="") as handle:
        ratios = list(csv.DictReader(handle))
    cells = [
        (r["runtime"], r["device"], r["mode"], r["protocol"], r["batch_size"], r["concurrency"])
        for r in ratios
    ]
    assert sorted(cells) == [
        ("onnx", "cpu", "in-process", "none", "4", "1"),
        ("onnx", "cpu", "served", "grpc", "4", "1"),
    ]
    assert all(r["ratio_low"] == "" and r["flag"].startswith("1 run") for r in ratios)
