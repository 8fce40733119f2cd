"""One short run of each benchmark that produced a committed result (results/README.md): the
code behind a figure still runs, with the real models of the session fixtures, in seconds."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness import free_port

ROOT = Path(__file__).resolve().parents[1]


def _lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().out.splitlines() if line.strip()]


def test_tf_idle_gaps(exported_repository, capsys):
    from benchmarks import tf_idle_gaps

    version = exported_repository / "separable" / "1"
    assert tf_idle_gaps.main([str(version), "0", "0", "--calls", "2", "--warmup", "1"]) == 0
    lines = _lines(capsys)
    # (batch 1, 32) x (no gap, 2 ms) x (default, single-threaded executor)
    assert len(lines) == 8
    assert all(line.startswith("intra=0 inter=0 batch=") and " p50 " in line for line in lines)


def test_ort_call_variants(exported_repository, capsys):
    from benchmarks import ort_call_variants

    model = exported_repository / "separable" / "1" / "model.onnx"
    argv = [str(model), "--rounds", "2", "--calls", "5", "--warmup", "2"]
    assert ort_call_variants.main(argv) == 0
    lines = _lines(capsys)
    assert len(lines) == 5 and all(" median " in line for line in lines)
    assert lines[1].startswith("run with RunOptions (the server's call)")


def test_rest_transfer_cost(capsys):
    from benchmarks import rest_transfer_cost

    assert rest_transfer_cost.main(["--requests", "3", "--images", "1"]) == 0
    (line,) = _lines(capsys)
    assert line.startswith("   1 images, body     17.5 KB: client p50 ")  # the recorded body


def test_tf_batching_16_vs_32(model_repository, capsys):
    from benchmarks import tf_batching_16_vs_32

    # The ONNX runtime stands in for TensorFlow: the same batching flags, a faster start.
    argv = [str(model_repository), "--rounds", "1", "--duration", "0.5", "--concurrency", "4"]
    assert tf_batching_16_vs_32.main([*argv, "--runtime", "onnx"]) == 0
    lines = _lines(capsys)
    assert lines[0].startswith("round 0 off ") and " on32 " in lines[0] and " on16 " in lines[0]
    assert lines[1].startswith("on32/off median ") and lines[2].startswith("on16/off median ")


def test_ab_trees_runs_each_tree_as_a_module(model_repository, capsys):
    """Each tree's server is ``python -m serving`` run in that tree (no sys.path editing)."""
    from benchmarks import ab_trees

    argv = ["--models-dir", str(model_repository), "--case", "grpc:1:1", "--rounds", "1"]
    argv += ["--tree", f"a={ROOT}", "--tree", f"b={ROOT}", "--duration", "0.5"]
    assert ab_trees.main(argv) == 0
    out = capsys.readouterr().out
    assert "round 0 a " in out and "round 0 b " in out and "medians over rounds:" in out


def test_perf_by_library_reads_perf_report():
    from benchmarks.perf_by_library import per_request_us

    report = """# Samples: 26K of event 'cpu-clock:pppH'
#
# Overhead       Samples  Shared Object
# ........  ............  ...........................
#
    20.78%          2566  libpython3.11.so.1.0
    18.90%          2334  onnxruntime_pybind11_state.cpython-311-x86_64-linux-gnu.so
"""
    rows = per_request_us(report, rps=2000.0, seconds=6.0)
    assert [library for _, library in rows] == [
        "libpython3.11.so.1.0",
        "onnxruntime_pybind11_state.cpython-311-x86_64-linux-gnu.so",
    ]
    # 2566 samples at 2 kHz over 6 s: 21.4 % of a core, at 2,000 req/s 106.9 µs each
    assert rows[0][0] == pytest.approx(2566 / 2000 / 6 / 2000 * 1e6)


@pytest.mark.skipif(shutil.which("perf") is None, reason="Linux perf is not installed")
def test_perf_by_library(model_repository, tmp_path, capsys):
    from benchmarks import perf_by_library

    port = free_port()
    server = [sys.executable, "-m", "serving", f"--port={port}", "--rest_api_port=0"]
    server += [f"--model_config_file={model_repository / 'models.config'}", "--runtime=onnx"]
    argv = ["smoke", str(port), "--startup-s", "5", "--warmup-s", "0.5", "--seconds", "1"]
    assert perf_by_library.main([*argv, "--", *server]) == 0
    lines = _lines(capsys)
    assert lines[0].startswith("smoke rps=") and float(lines[0].split("=")[1]) > 0
    # perf may be refused the right to profile (perf_event_paranoid): then no library rows.
    probe = ["perf", "record", "-o", str(tmp_path / "probe.perf"), "--", "true"]
    permitted = subprocess.run(probe, capture_output=True).returncode
    if permitted == 0:
        assert lines[1:] and all(" us/req  " in line for line in lines[1:])


def test_batch256_cost_reads_perf_report():
    from benchmarks.batch256_cost import group_of, samples_by_group

    report = """# Overhead       Samples  Command       Shared Object
# ........  ............  ............  ...........................
#
    60.00%          1200  python        onnxruntime_pybind11_state.cpython-311-x86_64-linux-gnu.so
    10.00%           200  python        libpython3.11.so.1.0
     5.00%           100  event_engine  [kernel.kallsyms]
     4.00%            80  python        libc.so.6
     2.00%            40  python        [unknown]
     1.00%            20  swapper       [kernel.kallsyms]
"""
    # The idle task is not the server's time; JIT-compiled kernels (perf's [unknown]) are "other".
    assert samples_by_group(report) == {
        "runtime": 1200,
        "Python interpreter": 200,
        "kernel (sockets, scheduling)": 100,
        "libc (memcpy, malloc)": 80,
        "other": 40,
    }
    assert group_of("cygrpc.cpython-311-x86_64-linux-gnu.so") == "gRPC core"
    assert group_of("_message.abi3.so") == "protobuf"


@pytest.mark.skipif(shutil.which("perf") is None, reason="Linux perf is not installed")
def test_batch256_cost(model_repository, tmp_path, capsys):
    import os

    from benchmarks import batch256_cost

    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two CPUs: one for the server, one for the load")
    probe = ["perf", "record", "-C", "0", "-o", str(tmp_path / "probe.perf"), "--", "true"]
    if subprocess.run(probe, capture_output=True).returncode != 0:
        pytest.skip("perf may not sample a whole CPU here (perf_event_paranoid)")
    cpus = sorted(os.sched_getaffinity(0))
    argv = ["--models-dir", str(model_repository), "--runtimes", "onnx", "--models", "separable"]
    argv += ["--batch", "8", "--concurrency", "2", "--seconds", "1", "--repeats", "1"]
    argv += ["--server-cpu", str(cpus[0]), "--generator-cpu", str(cpus[1])]
    assert batch256_cost.main(argv) == 0
    assert sorted(os.sched_getaffinity(0)) == cpus  # this process's CPU set given back
    text = capsys.readouterr().out
    assert "onnx / separable, batch 8, 2 users" in text
    assert "served / in-process" in text and "  total  " in text
