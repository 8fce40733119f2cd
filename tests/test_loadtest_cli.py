"""The sweep's command line: grids, and one-line errors with exit status 2 for bad flags."""

from __future__ import annotations

import subprocess
import sys

import pytest

from loadtest import sweep


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
        (["--concurrency", "1,,8"], "--concurrency: expected a comma-separated list"),
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
    demo = sweep.config_from_args(["--models-dir", str(models_dir)])
    assert demo.grid == sweep.DEMO_GRID
    assert len(demo.grid.served_cells()) == 32
    full = sweep.config_from_args(["--models-dir", str(models_dir), "--full"])
    assert full.grid.batch_sizes == (1, 32, 256)
    assert full.grid.concurrency == (1, 8, 32)
    assert {"onnx", "tensorflow"} <= set(full.grid.runtimes)
    narrowed = sweep.config_from_args(
        ["--models-dir", str(models_dir), "--full", "--runtimes", "onnx", "--duration", "4"]
    )
    assert narrowed.grid.runtimes == ("onnx",)
    assert narrowed.grid.duration_s == 4
    assert narrowed.grid.batch_sizes == (1, 32, 256)


def test_axis_values_are_deduplicated_in_order(models_dir):
    config = sweep.config_from_args(
        ["--models-dir", str(models_dir), "--batch-sizes", "32,1,32", "--protocols", "rest,grpc"]
    )
    assert config.grid.batch_sizes == (32, 1)
    assert config.grid.protocols == ("rest", "grpc")


def test_target_takes_rest_on_the_next_port_by_default(tmp_path):
    config = sweep.config_from_args(
        ["--target", "10.0.0.5:8500", "--runtimes", "tensorflow", "--models-dir", str(tmp_path)]
    )
    assert config.target == sweep.Target(grpc="10.0.0.5:8500", rest_url="http://10.0.0.5:8501")


def test_worker_processes_follow_concurrency_and_cores():
    assert sweep.worker_processes(1, None) == 0  # one user: Locust's local runner
    assert sweep.worker_processes(8, 3) == 3
    assert sweep.worker_processes(2, 8) == 2
    assert 0 <= sweep.worker_processes(32, None) <= 32
