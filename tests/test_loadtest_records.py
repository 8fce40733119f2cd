"""What a run records besides its measurements (issue #21): the threads columns and
``threads.json``, the floor configured as the server is, the executed graph of each runtime, and
recorded text without the machine's paths."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from loadtest.cells import (
    COLUMNS,
    RESULTS_CSV,
    THREADS_OUTSIDE,
    CellKey,
    empty_row,
    read_results,
    write_results,
)
from loadtest.run.floor import measure_runtime, server_way
from loadtest.run.graphs import executed_graphs
from loadtest.run.portable import REPOSITORY, portable
from loadtest.run.threads import (
    busy_between,
    cpu_list,
    parse_busy,
    process_threads,
    with_threads,
)
from tests.test_results import absolute_paths

NEW_COLUMNS = ("threads", "threads_outside", "cpu_busy_s", "server_rss_mb", "flags")


def test_threads_columns_round_trip_through_results_csv(tmp_path):
    key = CellKey.served("openvino", "cpu", "grpc", "separable", 32, 8)
    threads = {"threads": [{}] * 5, "outside": 2, "rss_mb": 151.5, "cpu_set": "0"}
    row = with_threads(empty_row(key), threads, "cpu0=1.920;cpu1=0.310")
    write_results(tmp_path, [row])
    (tmp_path / "results.json").unlink()
    [back] = read_results(tmp_path)
    assert (back["threads"], back["threads_outside"], back["server_rss_mb"]) == (5, 2, 151.5)
    assert back["flags"] == THREADS_OUTSIDE
    assert parse_busy(back["cpu_busy_s"]) == {0: 1.92, 1: 0.31}
    assert COLUMNS[-len(NEW_COLUMNS) :] == NEW_COLUMNS


def test_results_written_before_the_threads_columns_read_as_empty(tmp_path):
    row = empty_row(CellKey.in_process("onnx", "cpu", "standard", 1))
    old = [c for c in COLUMNS if c not in NEW_COLUMNS]
    with open(tmp_path / RESULTS_CSV, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(old)
        writer.writerow(["" if row[c] is None else row[c] for c in old])  # type: ignore[literal-required]
    [back] = read_results(tmp_path)
    assert back["threads"] is None and back["server_rss_mb"] is None
    assert back["flags"] == "" and back["cpu_busy_s"] == ""


def test_a_thread_allowed_outside_the_set_is_counted_and_flagged():
    cpus = sorted(os.sched_getaffinity(0))
    record = process_threads(os.getpid(), {cpus[0]})
    assert record["threads"] and (record["rss_mb"] or 0) > 0
    assert record["outside"] == (len(record["threads"]) if len(cpus) > 1 else 0)
    inside = process_threads(os.getpid(), set(cpus))
    assert inside["outside"] == 0 and inside["cpu_set"] == cpu_list(cpus)
    assert cpu_list({0, 1, 2, 5}) == "0-2,5"
    assert busy_between([1.0, 2.0], [1.5, 2.25]) == "cpu0=0.500;cpu1=0.250"


def test_recorded_text_names_no_machine_path():
    text = (
        f"{sys.executable} -m loadtest --models-dir {tempfile.gettempdir()}/m "
        f"-f {REPOSITORY}/loadtest/locustfile.py --output {REPOSITORY.parent}/meas "
        f"--cache {os.path.expanduser('~')}/.keras"
    )
    made = portable(text)
    assert not absolute_paths(made), made
    assert "-f loadtest/locustfile.py" in made and "<tmp>/m" in made
    # A clone under the temporary directory (CI's fresh clone in /tmp) has <tmp> as its parent.
    parent = "<tmp>" if REPOSITORY.parent == Path(tempfile.gettempdir()) else "<work>"
    assert f"{parent}/meas" in made and "<home>/.keras" in made


class _ThreadRecorder:
    """A stand-in runtime recording which thread ran each call and its rows."""

    def __init__(self):
        self.calls: list[tuple[int, int]] = []

    def predict(self, signature_name, inputs, output_names=None):
        rows = len(inputs["images"])
        self.calls.append((threading.get_ident(), rows))
        return {"classes": np.zeros(rows, np.int64)}


def test_the_floor_takes_the_servers_flags(exported_repository):
    way = server_way("onnx", exported_repository, "cpu", ["--tensorflow_intra_op_parallelism", "1"])
    recorder = _ThreadRecorder()
    images = np.zeros((200, 28, 28, 1), np.float32)
    try:
        assert way.options.intra_op_threads == 1 and way.inline_max_rows == 4
        assert way.max_rows_per_run == 64  # the server's default slices
        # Up to the inline rows on the calling thread (the event loop's), above on another.
        way.run(recorder, "serving_default", {"images": images[:4]}, rows=4)
        assert recorder.calls == [(threading.get_ident(), 4)]
        recorder.calls.clear()
        # Above --max_rows_per_run, in the server's slices (serving.model.runs).
        outputs = way.run(recorder, "serving_default", {"images": images}, rows=200)
        assert [rows for _, rows in recorder.calls] == [64, 64, 64, 8]
        assert all(ident != threading.get_ident() for ident, _ in recorder.calls)
        assert outputs["classes"].shape == (200,)
    finally:
        way.close()
    inline = server_way(
        "onnx", exported_repository, "cpu", ["--inline_max_rows", "64", "--max_rows_per_run", "0"]
    )
    assert inline.inline_max_rows == 64 and inline.max_rows_per_run == 0
    inline.close()
    measured = measure_runtime(
        "onnx",
        exported_repository,
        ["standard"],
        [1, 32],
        duration_s=0.2,
        warmup_s=0.1,
        server_args=["--tensorflow_intra_op_parallelism", "1"],
    )
    assert measured["describe"]["intra_op_threads"] == "1"
    for entry in measured["results"]:
        assert entry["threads"]["threads"] and entry["cpu_busy_s"].startswith("cpu0=")


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to pin to one")
@pytest.mark.parametrize("runtime", ["onnx", "openvino", "litert"])
def test_the_pinned_floor_keeps_every_thread_on_its_cpu(runtime, exported_repository, tmp_path):
    cpu = sorted(os.sched_getaffinity(0))[0]
    output = tmp_path / "floor.json"
    subprocess.run(
        [
            *(sys.executable, "-m", "loadtest.run.floor", "--runtime", runtime),
            *("--models-dir", str(exported_repository), "--models", "separable"),
            *("--batch-sizes", "1,32", "--duration", "1", "--warmup", "0"),
            *("--cpus", str(cpu), "--output", str(output)),
        ],
        check=True,
        timeout=180,
        cwd=REPOSITORY,
    )
    measured = json.loads(output.read_text())
    assert measured["cpu_set"] == [cpu]
    for entry in measured["results"]:
        record = entry["threads"]
        assert record["cpu_set"] == str(cpu) and record["outside"] == 0, record
        assert {t["cpus"] for t in record["threads"]} == {str(cpu)}


def test_executed_graphs_name_what_each_runtime_ran(exported_repository):
    onnx: Any = executed_graphs("onnx", exported_repository, ["standard", "separable"])
    separable = onnx["separable"]
    assert "error" not in separable, separable
    assert "nchwc" in separable["summary"]["depthwise"]
    assert "Relu" in separable["summary"]["pointwise"]
    assert onnx["standard"]["summary"]["depthwise"] == "none"
    assert {n["kind"] for n in separable["nodes"]} >= {"depthwise", "pointwise", "dense"}
    openvino: Any = executed_graphs("openvino", exported_repository, ["separable"])["separable"]
    assert "error" not in openvino, openvino
    kernels = {n["kernel"] for n in openvino["nodes"] if n["kind"] == "depthwise"}
    assert kernels and "fused" not in kernels
    litert: Any = executed_graphs("litert", exported_repository, ["separable"])["separable"]
    assert "error" not in litert, litert
    delegated, _, total = litert["summary"]["delegated"].partition(" (")[0].partition(" of ")
    assert 0 < int(delegated) <= int(total)
    assert "XNNPACK" in litert["summary"]["depthwise"]


def test_an_executed_graph_that_fails_is_recorded(tmp_path):
    (tmp_path / "separable" / "1").mkdir(parents=True)
    graphs = executed_graphs("onnx", tmp_path, ["separable"])
    assert "error" in graphs["separable"]


def test_path_of_a_written_run_is_relative(tmp_path):
    assert Path("loadtest/locustfile.py") == Path(portable(f"{REPOSITORY}/loadtest/locustfile.py"))
