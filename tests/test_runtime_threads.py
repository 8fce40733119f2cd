"""Every runtime's threads stay inside the CPU set the server process is given (issue #21, item 1).

A real server is started pinned to CPU 0 (``taskset -c 0``) for each runtime installed, answers
batches of 1, 32 and 256 from concurrent clients (so every pool has spun up), and then each of its
threads' ``Cpus_allowed_list`` must be CPU 0 alone. Needs two CPUs at least: on one, nothing can
escape and the test says so.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from harness import ServerProcess
from serving.client import ServingClient
from serving.runtimes import RUNTIME_KINDS
from serving.runtimes.cpuset import (
    allowed_cpus,
    cpu_count,
    parse_cpu_list,
    thread_affinities,
    threads_or_cpu_count,
    threads_outside,
)

# The package each runtime needs; a runtime whose package is missing here is skipped.
RUNTIME_PACKAGES = {
    "onnx": "onnxruntime",
    "tensorflow": "tensorflow",
    "torch": "onnx2torch",
    "openvino": "openvino",
    "litert": "ai_edge_litert",
}
PINNED = frozenset({0})

needs_two_cpus = pytest.mark.skipif(
    len(allowed_cpus()) < 2 or 0 not in allowed_cpus(),
    reason=f"needs CPU 0 and another CPU to pin to; this process may use {sorted(allowed_cpus())}",
)


def test_parse_cpu_list():
    assert parse_cpu_list("0") == {0}
    assert parse_cpu_list("0-3,8,10-11\n") == {0, 1, 2, 3, 8, 10, 11}
    assert parse_cpu_list("") == frozenset()


def test_this_process_threads_and_counts():
    threads = thread_affinities(os.getpid())
    assert os.getpid() in {t.tid for t in threads}  # the main thread's id is the pid
    assert all(t.cpus for t in threads)
    assert threads_outside(os.getpid(), allowed_cpus()) == []
    assert cpu_count() == len(os.sched_getaffinity(0))
    assert threads_or_cpu_count(0) == cpu_count()
    assert threads_or_cpu_count(3) == 3


def _pinned_child(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["taskset", "-c", "0", sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@needs_two_cpus
@pytest.mark.skipif(shutil.which("taskset") is None, reason="needs taskset (util-linux)")
def test_onnxruntime_default_pool_escapes_the_cpu_set(exported_repository):
    """Why serving/runtimes/onnx.py never leaves intra_op_num_threads at 0."""
    code = f"""
        import os
        import numpy as np
        import onnxruntime as ort
        from serving.runtimes.cpuset import threads_outside
        for threads in (0, 2):
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            session = ort.InferenceSession(
                {str(exported_repository / "standard" / "1" / "model.onnx")!r}, options
            )
            session.run(None, {{"images": np.zeros((32, 28, 28, 1), np.float32)}})
            print(threads, len(threads_outside(os.getpid(), frozenset({{0}}))))
            del session
    """
    result = _pinned_child(code)
    assert result.returncode == 0, result.stderr
    escaped = dict(line.split() for line in result.stdout.splitlines())
    assert int(escaped["0"]) >= 1  # ORT's own default pins a thread to another core
    assert escaped["2"] == "0"  # an explicit count inherits the process's CPU set


def _pinned_server(model_repository, kind: str) -> ServerProcess:
    server = ServerProcess(
        model_repository / "models.config", [f"--runtime={kind}", "--max_request_bytes=8388608"]
    )
    server.command = ["taskset", "-c", "0", *server.command]  # taskset execs: same pid
    return server


@needs_two_cpus
@pytest.mark.skipif(shutil.which("taskset") is None, reason="needs taskset (util-linux)")
@pytest.mark.parametrize("kind", RUNTIME_KINDS)
def test_every_server_thread_stays_in_the_given_cpu_set(model_repository, mnist, kind):
    package = RUNTIME_PACKAGES[kind]
    if importlib.util.find_spec(package) is None:
        pytest.skip(f"the {kind} runtime is not installed here ({package})")
    images = (mnist.x_test[:256].astype(np.float32) / 255.0)[..., None]
    with _pinned_server(model_repository, kind) as server:
        assert server.process is not None
        assert allowed_cpus(server.process.pid) == PINNED

        def calls(rows: int) -> int:
            with ServingClient(server.grpc_target) as client:
                for model in ("standard", "separable"):
                    for _ in range(3):
                        assert client.predict(model, images[:rows]).classes.shape == (rows,)
            return rows

        with ThreadPoolExecutor(4) as pool:
            assert sorted(pool.map(calls, [1, 32, 256, 256], timeout=300)) == [1, 32, 256, 256]
        threads = thread_affinities(server.process.pid)
        outside = [t for t in threads if not t.cpus <= PINNED]
    assert len(threads) > 1
    assert outside == [], f"{kind}: threads outside CPU 0 of {len(threads)}: {outside}"


def test_onnx_server_imports_no_other_runtime(model_repository, mnist, tmp_path):
    """``--runtime onnx`` pays for neither TensorFlow, OpenVINO, LiteRT nor PyTorch."""
    modules_file = tmp_path / "modules.txt"
    site = tmp_path / "site"
    site.mkdir()
    dump = f"open({str(modules_file)!r}, 'w').write(' '.join(sys.modules))"
    (site / "sitecustomize.py").write_text(f"import atexit, sys\natexit.register(lambda: {dump})\n")
    pythonpath = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    server = ServerProcess(
        model_repository / "models.config", ["--runtime=onnx"], env={"PYTHONPATH": pythonpath}
    )
    with server, ServingClient(server.grpc_target) as client:
        images = (mnist.x_test[:32].astype(np.float32) / 255.0)[..., None]
        assert client.predict("separable", images).classes.shape == (32,)
    assert server.process is not None and server.process.returncode == 0
    modules = set(modules_file.read_text().split())
    assert "onnxruntime" in modules  # the file is the server's
    heavy = {"tensorflow.python", "keras", "openvino", "ai_edge_litert", "torch"}
    assert modules & heavy == set()
