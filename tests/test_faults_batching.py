"""Faults under load through a real batching server: a full queue and a runtime failure.

The Batcher-level tests (tests/test_batching.py) cover the queue logic with a blocked function;
here the same faults come from real model files served by ``python -m serving``:

- a deliberately slow model behind a one-batch queue, hit by many concurrent clients: the
  overflow is a clean UNAVAILABLE, nothing else fails, every request is counted once in the
  metrics, and the server serves again as soon as the load drops (a leaked queue slot would make
  every later request UNAVAILABLE with ``max_enqueued_batches`` 1);
- a model that fails in ONNX Runtime for one input value (a Gather index out of range): only the
  callers in that input's batch fail, with INTERNAL naming the runtime error; other batches and
  other models keep answering.
"""

from __future__ import annotations

import re
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from contract.protos import prediction_service_pb2_grpc
from harness import ServerProcess
from serving.client import predict_request
from serving.runtimes import RuntimeOptions, load_runtime

C = grpc.StatusCode
POISON = 5.0  # as the first pixel of an image: Gather index 5 into a table of 2


def write_model(version_dir: Path, *, layers: int = 0, width: int = 784) -> Path:
    """A small ONNX model with the served signature (images [N,28,28,1] → probabilities [N,10],
    classes [N]) that fails for an image whose first pixel is ``POISON``, and that does
    ``layers`` extra ``width``x``width`` matrix products per row (to make it slow).
    """
    rows = "N"
    nodes = [
        helper.make_node("Flatten", ["images"], ["flat"], axis=1),
    ]
    initializers = [
        numpy_helper.from_array(np.array([0], np.int64), "zero"),
        numpy_helper.from_array(np.array([1], np.int64), "one"),
        numpy_helper.from_array(np.array([10], np.int64), "ten"),
        numpy_helper.from_array(np.array([width], np.int64), "width"),
        numpy_helper.from_array(np.zeros(2, np.int64), "table"),
    ]
    current = "flat"
    if layers:
        weight = np.eye(width, dtype=np.float32)
        initializers.append(numpy_helper.from_array(weight, "weight"))
        nodes.append(helper.make_node("Slice", [current, "zero", "width", "one"], ["wide"]))
        current = "wide"
        for index in range(layers):
            nodes.append(helper.make_node("MatMul", [current, "weight"], [f"layer{index}"]))
            current = f"layer{index}"
    nodes += [
        helper.make_node("Slice", [current, "zero", "ten", "one"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        helper.make_node("ArgMax", ["probabilities"], ["argmax"], axis=1, keepdims=0),
        # The fault: the first pixel, truncated to an integer, indexes a 2-entry table.
        helper.make_node("Slice", ["flat", "zero", "one", "one"], ["first"]),
        helper.make_node("Cast", ["first"], ["index"], to=TensorProto.INT64),
        helper.make_node("Gather", ["table", "index"], ["gathered"], axis=0),
        helper.make_node("ReduceSum", ["gathered", "one"], ["offset"], keepdims=0),
        helper.make_node("Add", ["argmax", "offset"], ["classes"]),
    ]
    graph = helper.make_graph(
        nodes,
        "fault_model",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [rows, 28, 28, 1])],
        [
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [rows, 10]),
            helper.make_tensor_value_info("classes", TensorProto.INT64, [rows]),
        ],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    version_dir.mkdir(parents=True)
    path = version_dir / "model.onnx"
    onnx.save(model, path)
    return path


def write_config(root: Path, models: dict[str, Path]) -> Path:
    entries = " ".join(
        f'config {{ name: "{name}" base_path: "{path}" model_platform: "tensorflow" }}'
        for name, path in models.items()
    )
    config = root / "models.config"
    config.write_text(f"model_config_list {{ {entries} }}")
    return config


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        match = re.match(rf"^{name}\{{(.*)\}} (\S+)$", line)
        if not match:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1)))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(match.group(2))
    return total


def metrics(server: ServerProcess) -> str:
    with urllib.request.urlopen(f"{server.rest_url}/monitoring/prometheus/metrics") as reply:
        return reply.read().decode()


def images(rows: int, seed: int, poison: bool = False) -> np.ndarray:
    batch = np.random.default_rng(seed).random((rows, 28, 28, 1), dtype=np.float32)
    if poison:
        batch[0, 0, 0, 0] = POISON
    return batch


@pytest.fixture
def fault_repository(tmp_path) -> Path:
    root = tmp_path / "models"
    write_model(root / "slow" / "1", layers=24)
    write_model(root / "poison" / "1")
    return root


def test_full_queue_is_unavailable_recovers_and_leaks_nothing(fault_repository, tmp_path):
    batching = tmp_path / "batching.config"
    batching.write_text(
        "max_batch_size { value: 64 } batch_timeout_micros { value: 0 } "
        "max_enqueued_batches { value: 1 } num_batch_threads { value: 1 }"
    )
    config = write_config(tmp_path, {"slow": fault_repository / "slow"})
    reference = load_runtime("onnx", fault_repository / "slow" / "1", RuntimeOptions())
    server = ServerProcess(
        config,
        ["--enable_batching", f"--batching_parameters_file={batching}"],
        log_path=tmp_path / "server.log",
    )
    storm, rows = 48, 64
    with server, grpc.insecure_channel(server.grpc_target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        batch_seconds = time.perf_counter()
        stub.Predict(predict_request("slow", images(rows, 0)), timeout=30)
        batch_seconds = time.perf_counter() - batch_seconds
        # All at once: one batch runs, one waits, the rest find the queue full.
        sent = [
            (i, stub.Predict.future(predict_request("slow", images(rows, i)), timeout=60))
            for i in range(storm)
        ]
        outcomes: dict[str, int] = {}
        for i, future in sent:
            try:
                response = future.result()
            except grpc.RpcError as error:
                outcomes[error.code().name] = outcomes.get(error.code().name, 0) + 1
                assert error.code() == C.UNAVAILABLE, error.details()
                assert "batching queue is full" in (error.details() or "")
                continue
            outcomes["OK"] = outcomes.get("OK", 0) + 1
            classes = np.asarray(response.outputs["classes"].int64_val)
            expected = reference.predict("serving_default", {"images": images(rows, i)})
            np.testing.assert_array_equal(classes, expected["classes"])
        assert outcomes.get("UNAVAILABLE", 0) > 0, (outcomes, batch_seconds)
        assert outcomes.get("OK", 0) >= 1, outcomes
        # Load dropped: every request is served again (max_enqueued_batches is 1, so one leaked
        # queue slot would refuse all of them).
        for i in range(10):
            response = stub.Predict(predict_request("slow", images(1, 200 + i)), timeout=30)
            assert len(response.outputs["classes"].int64_val) == 1
        text = metrics(server)
        # Each request answered exactly once, with the status the client saw; every accepted
        # request went through exactly one batch.
        assert metric(text, "serving_requests_total", model="slow") == 1 + storm + 10
        assert (
            metric(text, "serving_requests_total", model="slow", code="UNAVAILABLE")
            == (outcomes["UNAVAILABLE"])
        )
        served = metric(text, "serving_requests_total", model="slow", code="OK")
        assert served == 1 + outcomes["OK"] + 10
        assert metric(text, "serving_batch_queue_seconds_count", model="slow") == served
    # The drain finds no waiter left behind: SIGTERM exits 0.
    assert server.process is not None and server.process.returncode == 0


def test_runtime_failure_fails_only_its_batch(fault_repository, exported_repository, tmp_path):
    batching = tmp_path / "batching.config"
    # A long batch window groups the requests sent together into one batch.
    batching.write_text(
        "max_batch_size { value: 64 } batch_timeout_micros { value: 300000 } "
        "num_batch_threads { value: 2 }"
    )
    config = write_config(
        tmp_path,
        {"poison": fault_repository / "poison", "standard": exported_repository / "standard"},
    )
    server = ServerProcess(
        config,
        [
            "--enable_batching",
            f"--batching_parameters_file={batching}",
            f"--model_base_path_root={fault_repository}",
            f"--model_base_path_root={exported_repository}",
        ],
        log_path=tmp_path / "server.log",
    )
    with (
        server,
        grpc.insecure_channel(server.grpc_target) as channel,
        ThreadPoolExecutor(8) as pool,
    ):
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)

        def call(model: str, batch: np.ndarray) -> str:
            try:
                stub.Predict(predict_request(model, batch), timeout=30)
            except grpc.RpcError as error:
                return f"{error.code().name}: {error.details()}"
            return "OK"

        # One batch: three clean callers and one whose image breaks the model; meanwhile the
        # other model's batches run on the same server.
        bad_batch = [pool.submit(call, "poison", images(2, i, poison=i == 3)) for i in range(4)]
        other = [pool.submit(call, "standard", images(3, 50 + i)) for i in range(4)]
        failed = [f.result() for f in bad_batch]
        assert all(r.startswith("INTERNAL: ") for r in failed), failed
        assert all("failed in the runtime" in r and "Gather" in r for r in failed), failed
        assert [f.result() for f in other] == ["OK"] * 4
        # The next batch of the same model, and a request too large to batch, are fine.
        later = [pool.submit(call, "poison", images(2, 10 + i)) for i in range(4)]
        assert [f.result() for f in later] == ["OK"] * 4
        assert call("poison", images(80, 99)) == "OK"
        # A poisoned request too large to batch runs alone and fails alone.
        assert call("poison", images(80, 98, poison=True)).startswith("INTERNAL: ")
        assert call("poison", images(1, 97)) == "OK"
        assert server.process is not None and server.process.poll() is None
    assert server.process.returncode == 0
