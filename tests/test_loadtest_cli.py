"""The sweep's command line: grids, and one-line errors with exit status 2 for bad flags."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import subprocess
import sys

import pytest

from loadtest import cli, plan
from loadtest.cells import COLUMNS
from loadtest.report.analysis import RATIO_COLUMNS
from loadtest.run import sweep
from loadtest.run.locust import locust_worker_processes
from loadtest.run.opprofile import OP_COLUMNS, OP_KINDS
from tests.test_results import absolute_paths


@pytest.fixture
def models_dir(tmp_path):
    (tmp_path / "models.config").write_text("model_config_list {}\n")
    return tmp_path


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--runtimes", "onnx,caffe"], "--runtimes: unknown caffe; choose from onnx, tensorflow"),
        (["--models", "standard,mobilenet"], "--models: unknown mobilenet"),
        (["--batch-sizes", "1,x"], "--batch-sizes: 'x' is not an integer"),
        (["--batch-sizes", "0"], "--batch-sizes: 0 is out of range"),
        (["--concurrency", "1,,8"], "--concurrency: empty item in '1,,8'"),
        (["--concurrency", ""], "--concurrency: expected a comma-separated list"),
        (["--protocols", "grpc,soap"], "--protocols: unknown soap"),
        (["--duration", "0"], "--duration: must be ≥ 1"),
        (["--duration", "2.5"], "--duration: expected whole seconds"),
        (["--warmup", "-1"], "--warmup: must be ≥ 0"),
        (["--device", "tpu"], "--device: expected cpu or cuda"),
        (["--target", "localhost"], "--target: expected host:port"),
        (["--target", "localhost:99999", "--runtimes", "onnx"], "--target: expected host:port"),
        (["--target", "localhost:8500"], "--target measures one running server"),
        (["--rest-target", "localhost:8501"], "--rest-target only goes with --target"),
        (["--processes", "0"], "--processes: must be ≥ 1"),
        (["--server-args=--runtime onnx"], "--server-args: give runtimes with --runtimes"),
        (["--run-id", "a/b"], "--run-id: 'a/b' is not a directory name"),
        (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
        (["--repeats", "0"], "--repeats: 0 is out of range 1..100"),
        (["--repeats", "two"], "--repeats: expected a whole number"),
        (["--server-cpus", "0,x"], "--server-cpus: 'x' is not a CPU id"),
        (["--server-cpus", "4096"], "--server-cpus: CPU 4096 not usable here"),
        (
            ["--server-cpus", "0", "--generator-cpus", "0"],
            "--server-cpus and --generator-cpus must be disjoint (both have CPU 0)",
        ),
    ],
)
def test_bad_flags_exit_2_with_one_line(flags, message, models_dir, capsys):
    with pytest.raises(SystemExit) as raised:
        code = sweep.main(["--models-dir", str(models_dir), *flags])
        raise SystemExit(code)
    assert raised.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith("python -m loadtest: error: ")
    assert message in err


def test_missing_repository_is_reported(tmp_path, capsys):
    assert sweep.main(["--models-dir", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert "models.config not found" in err and "python -m export" in err


def test_cli_error_from_a_real_process(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "loadtest", "--batch-sizes", "-3", "--models-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "--batch-sizes" in result.stderr


def test_default_is_the_short_demo_grid_and_full_is_one_flag_away(models_dir):
    demo = cli.config_from_args(["--models-dir", str(models_dir)])
    assert demo.grid == plan.DEMO_GRID
    assert len(demo.grid.served_cells()) == 32
    full = cli.config_from_args(["--models-dir", str(models_dir), "--full"])
    assert full.grid.batch_sizes == (1, 32, 256)
    assert full.grid.concurrency == (1, 8, 32)
    assert {"onnx", "tensorflow"} <= set(full.grid.runtimes)
    narrowed = cli.config_from_args(
        ["--models-dir", str(models_dir), "--full", "--runtimes", "onnx", "--duration", "4"]
    )
    assert narrowed.grid.runtimes == ("onnx",)
    assert narrowed.grid.duration_s == 4
    assert narrowed.grid.batch_sizes == (1, 32, 256)
    # Repetitions: 1 for the demo, 3 with --full, --repeats overrides either.
    assert demo.grid.repeats == 1 and full.grid.repeats == 3
    assert len(full.grid.served_cells()) == 3 * len(
        dataclasses.replace(full.grid, repeats=1).served_cells()
    )
    again = cli.config_from_args(["--models-dir", str(models_dir), "--repeats", "4"])
    assert again.grid.repeats == 4 and again.grid.batch_sizes == demo.grid.batch_sizes


def test_repetitions_alternate_the_models_a_b_b_a(models_dir):
    config = cli.config_from_args(
        [
            *("--models-dir", str(models_dir), "--runtimes", "onnx", "--protocols", "grpc"),
            *("--batch-sizes", "1", "--concurrency", "1", "--repeats", "4"),
        ]
    )
    cells = config.grid.served_cells()
    assert [(c.model, c.repeat) for c in cells] == [
        ("standard", 0),
        ("separable", 0),
        ("separable", 1),
        ("standard", 1),
        ("standard", 2),
        ("separable", 2),
        ("separable", 3),
        ("standard", 3),
    ]
    # Repetition 0 keeps the slug of runs without repetitions.
    assert cells[0].slug == "onnx-standard-grpc-b1-c1"
    assert cells[2].slug == "onnx-separable-grpc-b1-c1-r1"


def test_axis_values_are_deduplicated_in_order(models_dir):
    config = cli.config_from_args(
        ["--models-dir", str(models_dir), "--batch-sizes", "32,1,32", "--protocols", "rest,grpc"]
    )
    assert config.grid.batch_sizes == (32, 1)
    assert config.grid.protocols == ("rest", "grpc")


def test_target_takes_rest_on_the_next_port_by_default(tmp_path):
    config = cli.config_from_args(
        ["--target", "10.0.0.5:8500", "--runtimes", "tensorflow", "--models-dir", str(tmp_path)]
    )
    assert config.target == plan.Target(grpc="10.0.0.5:8500", rest_url="http://10.0.0.5:8501")


def test_worker_processes_follow_concurrency_and_cores():
    assert locust_worker_processes(1, None) == 0  # one user: Locust's local runner
    assert locust_worker_processes(8, 3) == 3
    assert locust_worker_processes(2, 8) == 2
    assert 0 <= locust_worker_processes(32, None) <= 32
    assert locust_worker_processes(32, None, cores=1) == 0  # pinned to one core: local runner
    assert locust_worker_processes(32, None, cores=2) == 2


def test_pinned_runs_a_child_on_the_given_cores_and_restores_the_affinity():
    from loadtest.run.cpu import pinned, usable_cpus

    before = usable_cpus()
    cpu = min(before)
    with pinned([cpu]):
        child = subprocess.run(
            [sys.executable, "-c", "import os; print(sorted(os.sched_getaffinity(0)))"],
            capture_output=True,
            text=True,
            check=True,
        )
    assert child.stdout.strip() == f"[{cpu}]"
    assert usable_cpus() == before


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores to split")
def test_a_repeated_pinned_sweep_writes_results_ratios_and_the_operator_profile(
    model_repository, tmp_path
):
    server_cpu, generator_cpu = sorted(os.sched_getaffinity(0))[:2]
    output = tmp_path / "reports"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "loadtest",
            *("--models-dir", str(model_repository), "--output", str(output)),
            *("--runtimes", "onnx", "--batch-sizes", "2", "--concurrency", "1"),
            *("--protocols", "grpc", "--duration", "2", "--warmup", "0", "--repeats", "2"),
            *("--server-cpus", str(server_cpu), "--generator-cpus", str(generator_cpu)),
            *("--run-id", "pinned"),
        ],
        capture_output=True,
        text=True,
        timeout=420,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run_dir = output / "pinned"
    with open(run_dir / "results.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == COLUMNS
    # 2 models x 2 repetitions, in-process and served.
    assert sorted((r["mode"], r["model"], r["repeat"]) for r in rows) == sorted(
        (mode, model, repeat)
        for mode in ("in-process", "served")
        for model in ("standard", "separable")
        for repeat in ("0", "1")
    )
    for row in rows:
        assert row["errors"] == "0" and float(row["images_per_s"]) > 0
        if row["mode"] == "served":
            # The server's own phases, scraped around the cell.
            assert 0 < float(row["server_infer_ms"]) < float(row["p99_ms"]) * 10
            assert float(row["server_decode_ms"]) >= 0 and float(row["server_encode_ms"]) >= 0
    with open(run_dir / "ratios.csv", newline="") as handle:
        ratios = list(csv.DictReader(handle))
    assert tuple(ratios[0]) == RATIO_COLUMNS
    assert sorted(r["mode"] for r in ratios) == ["in-process", "served"]
    for ratio in ratios:
        assert ratio["repeats"] == "2"
        low, median, high = (float(ratio[c]) for c in ("ratio_low", "ratio_median", "ratio_high"))
        assert 0 < low <= median <= high
    with open(run_dir / "opprofile.csv", newline="") as handle:
        profile = list(csv.DictReader(handle))
    assert tuple(profile[0]) == OP_COLUMNS
    assert {(r["model"], r["batch_size"]) for r in profile} == {
        (m, b) for m in ("standard", "separable") for b in ("1", "32", "256")
    }
    assert {r["op_kind"] for r in profile} == set(OP_KINDS)
    pinning = {"server_cpus": [server_cpu], "generator_cpus": [generator_cpu]}
    assert json.loads((run_dir / "machine.json").read_text())["pinning"] == pinning
    meta = json.loads((run_dir / "run.json").read_text())
    assert meta["pinning"] == pinning and meta["grid"]["repeats"] == 2
    assert len(meta["samples"]) == 8  # throughput samples of every measurement
    # Every thread of the pinned server and of the pinned floor stayed on the server's CPU.
    for row in rows:
        assert row["threads_outside"] == "0" and int(row["threads"]) >= 1, row
        assert row["flags"] == "" and float(row["server_rss_mb"]) > 0
        assert f"cpu{server_cpu}=" in row["cpu_busy_s"]
    threads = json.loads((run_dir / "threads.json").read_text())
    assert sorted((t["mode"], t["model"], t["repeat"]) for t in threads) == sorted(
        (r["mode"], r["model"], int(r["repeat"])) for r in rows
    )
    for record in threads:
        assert record["cpu_set"] == str(server_cpu) and record["outside"] == 0
        assert {t["cpus"] for t in record["threads"]} == {str(server_cpu)}, record
    # What ran, and no path of this machine in what the run recorded.
    graphs = json.loads((run_dir / "executed-graph.json").read_text())
    assert "nchwc" in graphs["onnx"]["separable"]["summary"]["depthwise"]
    for name in ("run.json", "command.txt", "machine.json"):
        text = (run_dir / name).read_text()
        assert not absolute_paths(text), (name, absolute_paths(text)[:3])
    assert "<tmp>/" in (run_dir / "command.txt").read_text()
    report = (run_dir / "report.md").read_text()
    assert f"CPU split: server and in-process floor on CPU {server_cpu}, Locust on CPU" in report
    assert "## Server breakdown" in report and "(plots/server_breakdown.png)" in report
    assert "(plots/opprofile.png)" in report
