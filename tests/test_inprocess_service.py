"""The in-process tier: the data plane (ModelManager → PredictionService → REST app) driven by a
toy runtime, without subprocesses, TensorFlow or ONNX (as MLServer's dataplane tests use a toy
model). The real-server tests (tests/test_serving_*.py) stay the reference; these run in
seconds and reach states a real model cannot (a runtime that fails, hangs or misbehaves).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import numpy as np
import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import REGISTRY

from serving import metrics
from serving.errors import ServingError
from serving.model.config import ModelConfig, VersionPolicy
from serving.model.manager import ModelManager
from serving.model.service import ModelRef, PredictionService
from serving.runtimes import Runtime, RuntimeOptions, Signature, TensorSpec
from serving.settings import BatchingSettings
from serving.transport.rest_api import RestApi

ROW = [1.0, 2.0, 3.0]
LATEST = VersionPolicy()  # TF Serving's default: the latest version only


class ToyRuntime(Runtime):
    """``y = x * version`` and ``total = sum(y)`` per row; the version directory's ``mode`` file
    makes it misbehave on purpose (``fail``, ``slow``, ``short``)."""

    kind = "toy"

    def __init__(self, version_dir: Path, options: RuntimeOptions) -> None:
        super().__init__(version_dir, options)
        self.factor = float(version_dir.name)
        mode_file = version_dir / "mode"
        self.mode = mode_file.read_text().strip() if mode_file.exists() else ""
        self.calls = 0
        rows = TensorSpec("x", np.dtype(np.float32), (-1, 3))
        self._signatures = {
            "serving_default": Signature(
                "serving_default",
                {"x": rows},
                {
                    "y": TensorSpec("y", np.dtype(np.float32), (-1, 3)),
                    "total": TensorSpec("total", np.dtype(np.float32), (-1,)),
                },
            )
        }

    @property
    def signatures(self) -> Mapping[str, Signature]:
        return self._signatures

    def predict(
        self,
        signature_name: str,
        inputs: Mapping[str, np.ndarray],
        output_names: Sequence[str] | None = None,
    ) -> dict[str, np.ndarray]:
        self.calls += 1
        if self.mode == "fail":
            raise RuntimeError("toy failure")
        if self.mode == "slow":
            time.sleep(0.5)
        y = inputs["x"] * np.float32(self.factor)
        if self.mode == "short":
            y = y[:-1]
        return {"y": y, "total": y.sum(axis=1)}


def make_version(base: Path, number: int, mode: str = "") -> Path:
    directory = base / str(number)
    directory.mkdir(parents=True)
    if mode:
        (directory / "mode").write_text(mode)
    return directory


@asynccontextmanager
async def data_plane(
    tmp_path: Path,
    *,
    batching: BatchingSettings | None = None,
    policy: VersionPolicy = LATEST,
    versions: dict[str, str] | None = None,
):
    """A manager serving model ``toy`` (``versions``: number → mode) and its service."""
    base = tmp_path / "toy"
    base.mkdir(exist_ok=True)
    for number, mode in (versions or {"1": ""}).items():
        make_version(base, int(number), mode)
    executor = ThreadPoolExecutor(2)
    manager = ModelManager(lambda path: ToyRuntime(path, RuntimeOptions()))
    service = PredictionService(manager, executor, batching=batching, inline_max_rows=1)
    await manager.apply_config([ModelConfig("toy", base, policy)], wait=True)
    try:
        yield manager, service
    finally:
        await manager.close()
        executor.shutdown(wait=False)


def phase_count(api: str, phase: str, version: str = "1") -> float:
    metrics.flush()  # what a scrape does first
    value = REGISTRY.get_sample_value(
        "serving_request_phase_seconds_count",
        {"model": "toy", "version": version, "api": api, "runtime": "toy", "phase": phase},
    )
    return value or 0.0


def phase_sum(api: str, phase: str) -> float:
    metrics.flush()
    value = REGISTRY.get_sample_value(
        "serving_request_phase_seconds_sum",
        {"model": "toy", "version": "1", "api": api, "runtime": "toy", "phase": phase},
    )
    return value or 0.0


# ---- PredictionService --------------------------------------------------------------------


def test_predict_runs_the_resolved_version(tmp_path):
    async def scenario():
        async with data_plane(tmp_path, versions={"1": "", "2": ""}) as (_, service):
            # The latest-1 policy serves version 2 only.
            x = np.array([ROW, ROW], np.float32)
            result = await service.predict(ModelRef("toy"), {"x": x}, ("total",), "grpc")
            assert (result.model, result.version, result.runtime) == ("toy", 2, "toy")
            assert list(result.outputs) == ["total"]
            np.testing.assert_allclose(result.outputs["total"], [12.0, 12.0])
            with pytest.raises(ServingError) as error:
                await service.predict(ModelRef("toy", version=1), {"x": x})
            assert error.value.code == grpc.StatusCode.NOT_FOUND

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("inputs", "code", "fragment"),
    [
        ({"x": np.zeros((1, 3), np.float64)}, grpc.StatusCode.INVALID_ARGUMENT, "float"),
        ({"x": np.zeros((1, 4), np.float32)}, grpc.StatusCode.INVALID_ARGUMENT, "dimension 1"),
        ({"x": np.zeros(3, np.float32)}, grpc.StatusCode.INVALID_ARGUMENT, "rank"),
        ({"z": np.zeros((1, 3), np.float32)}, grpc.StatusCode.INVALID_ARGUMENT, "alias"),
        ({}, grpc.StatusCode.INVALID_ARGUMENT, "missing"),
    ],
)
def test_invalid_inputs_are_invalid_argument(tmp_path, inputs, code, fragment):
    async def scenario():
        async with data_plane(tmp_path) as (_, service):
            with pytest.raises(ServingError) as error:
                await service.predict(ModelRef("toy"), inputs)
            assert error.value.code == code and fragment in error.value.message
            ok = await service.predict(ModelRef("toy"), {"x": np.ones((1, 3), np.float32)})
            assert ok.outputs["y"].tolist() == [[1.0, 1.0, 1.0]]

    asyncio.run(scenario())


def test_runtime_faults_are_internal_and_timeouts_deadline(tmp_path):
    async def scenario():
        versions = {"1": "fail", "2": "short", "3": "slow"}
        async with data_plane(tmp_path, policy=VersionPolicy("all"), versions=versions) as (
            _,
            service,
        ):
            x = np.ones((2, 3), np.float32)
            for version, fragment in ((1, "toy failure"), (2, "shape")):
                with pytest.raises(ServingError) as error:
                    await service.predict(ModelRef("toy", version=version), {"x": x})
                assert error.value.code == grpc.StatusCode.INTERNAL
                assert fragment in error.value.message
            with pytest.raises(TimeoutError):
                await service.predict(ModelRef("toy", version=3), {"x": x}, timeout_s=0.05)

    asyncio.run(scenario())


def test_facade_metadata_status_unsupported(tmp_path):
    async def scenario():
        async with data_plane(tmp_path) as (_, service):
            metadata = service.metadata(ModelRef("toy"))
            assert metadata.version == 1 and set(metadata.signatures) == {"serving_default"}
            [status] = service.status(ModelRef("toy"))
            assert status.version == 1 and status.state.name == "AVAILABLE"
            with pytest.raises(ServingError) as error:
                service.status(ModelRef("toy", version=7))
            assert error.value.code == grpc.StatusCode.NOT_FOUND
            with pytest.raises(ServingError) as error:
                service.unsupported(ModelRef("toy"), "Classify")
            assert error.value.code == grpc.StatusCode.UNIMPLEMENTED
            assert "Classify" in error.value.message and "Predict signature" in error.value.message
            with pytest.raises(ServingError) as error:
                service.unsupported(ModelRef("nope"), "Regress")
            assert error.value.code == grpc.StatusCode.NOT_FOUND
            assert service.readiness() == (True, {"toy": True})

    asyncio.run(scenario())


def test_rollout_to_a_new_version_keeps_serving(tmp_path):
    async def scenario():
        async with data_plane(tmp_path) as (manager, service):
            x = np.ones((1, 3), np.float32)
            assert (await service.predict(ModelRef("toy"), {"x": x})).version == 1
            make_version(tmp_path / "toy", 2)
            await manager.poll()
            await manager.wait_for_loads()
            result = await service.predict(ModelRef("toy"), {"x": x})
            assert result.version == 2 and result.outputs["y"].tolist() == [[2.0, 2.0, 2.0]]

    asyncio.run(scenario())


def test_batched_predict_reports_queue_and_infer(tmp_path):
    params = BatchingSettings(max_batch_size=8, batch_timeout_micros=5_000, num_batch_threads=1)

    async def scenario():
        async with data_plane(tmp_path, batching=params) as (_, service):
            from serving.metrics import PhaseTimes

            times = [PhaseTimes() for _ in range(3)]
            calls = [
                service.predict(
                    ModelRef("toy"), {"x": np.full((1, 3), i, np.float32)}, times=times[i]
                )
                for i in range(3)
            ]
            results = await asyncio.gather(*calls)
            for i, result in enumerate(results):
                assert result.outputs["y"].tolist() == [[float(i)] * 3]
            # One batch: the three requests share its runtime time and each waited in the queue.
            assert len({t.infer for t in times}) == 1
            assert all(t.queue > 0 for t in times)

    asyncio.run(scenario())


# ---- the REST app (aiohttp's test client) -------------------------------------------------


@asynccontextmanager
async def rest_client(
    tmp_path: Path,
    *,
    max_bytes: int = 1 << 20,
    timeout_s: float = 5.0,
    versions: dict[str, str] | None = None,
):
    async with data_plane(tmp_path, versions=versions) as (_, service):
        api = RestApi(service, max_bytes, timeout_s)
        async with TestClient(TestServer(api.app())) as client:
            yield client


def test_rest_predict_row_and_columnar_and_phases(tmp_path):
    async def scenario():
        async with rest_client(tmp_path) as client:
            before = {p: phase_count("rest", p) for p in ("decode", "queue", "infer", "encode")}
            reply = await client.post("/v1/models/toy:predict", json={"instances": [ROW, ROW]})
            assert reply.status == 200
            body = await reply.json()
            assert body == {"predictions": [{"y": ROW, "total": 6.0}] * 2}
            reply = await client.post("/v1/models/toy/versions/1:predict", json={"inputs": [ROW]})
            assert reply.status == 200
            assert (await reply.json())["outputs"] == {"y": [ROW], "total": [6.0]}
            for phase, count in before.items():
                assert phase_count("rest", phase) == count + 2, phase
            assert phase_sum("rest", "decode") > 0 and phase_sum("rest", "encode") > 0

    asyncio.run(scenario())


def test_rest_status_and_metadata(tmp_path):
    async def scenario():
        async with rest_client(tmp_path) as client:
            reply = await client.get("/v1/models/toy")
            status = await reply.json()
            assert reply.status == 200
            assert status["model_version_status"][0]["state"] == "AVAILABLE"
            reply = await client.get("/v1/models/toy/metadata")
            metadata = await reply.json()
            assert metadata["model_spec"]["version"] == "1"
            assert "serving_default" in metadata["metadata"]["signature_def"]["signature_def"]

    asyncio.run(scenario())


REST_ERRORS: dict[str, tuple[str, str, object, int, str]] = {
    "unknown model": ("POST", "/v1/models/nope:predict", {"instances": [ROW]}, 404, "nope"),
    "unknown version": ("GET", "/v1/models/toy/versions/3", None, 404, "version 3"),
    "classify": ("POST", "/v1/models/toy:classify", {"examples": []}, 501, "Predict"),
    "short rows": ("POST", "/v1/models/toy:predict", {"instances": [[1, 2]]}, 400, ""),
    "strings": ("POST", "/v1/models/toy:predict", {"instances": [["a"] * 3]}, 400, ""),
    "ragged": ("POST", "/v1/models/toy:predict", {"instances": [[1, 2, 3], [1]]}, 400, ""),
    "not json": ("POST", "/v1/models/toy:predict", "{", 400, "JSON"),
    "no path": ("DELETE", "/v1/models/toy", None, 404, "Malformed"),
    "bad version": ("GET", "/v1/models/toy/versions/" + "9" * 5000, None, 400, "convert"),
    # A message echoing a 3,000-character name is capped (TF Serving's 1,024 and marker).
    "long name": ("POST", "/v1/models/" + "n" * 3000 + ":predict", {}, 404, "...TRUNCATED"),
}


@pytest.mark.parametrize("case", list(REST_ERRORS))
def test_rest_errors_keep_their_codes(tmp_path, case):
    method, path, body, status, fragment = REST_ERRORS[case]

    async def scenario():
        async with rest_client(tmp_path) as client:
            if isinstance(body, str):
                reply = await client.request(method, path, data=body)
            else:
                reply = await client.request(method, path, json=body)
            answer = await reply.json()
            assert reply.status == status, answer
            assert set(answer) == {"error"} and fragment in answer["error"]
            assert len(answer["error"]) <= 1024 + len("...TRUNCATED")
            ok = await client.post("/v1/models/toy:predict", json={"instances": [ROW]})
            assert ok.status == 200

    asyncio.run(scenario())


def test_rest_runtime_fault_timeout_and_oversize(tmp_path):
    async def scenario():
        async with rest_client(
            tmp_path, max_bytes=4096, timeout_s=0.05, versions={"1": "fail", "2": "slow"}
        ) as client:
            # latest-1 policy: version 2 (slow) serves.
            reply = await client.post("/v1/models/toy:predict", json={"instances": [ROW, ROW]})
            assert reply.status == 504 and "deadline" in (await reply.json())["error"]
            big = json.dumps({"instances": [ROW] * 400}).encode()
            reply = await client.post("/v1/models/toy:predict", data=big)
            assert reply.status == 413
            assert "--max_request_bytes (4096 bytes)" in (await reply.json())["error"]

            def chunks():
                yield b'{"instances": ['
                for _ in range(600):
                    yield b"[1, 2, 3],"
                yield b"[1, 2, 3]]}"

            reply = await client.post("/v1/models/toy:predict", data=_async_iter(chunks()))
            assert reply.status == 413

    asyncio.run(scenario())


async def _async_iter(items):
    for item in items:
        yield item


def test_rest_runtime_failure_is_500_and_keeps_serving(tmp_path):
    async def scenario():
        async with rest_client(tmp_path, versions={"1": "fail"}) as client:
            reply = await client.post("/v1/models/toy:predict", json={"instances": [ROW, ROW]})
            assert reply.status == 500
            assert "toy failure" in (await reply.json())["error"]
            reply = await client.get("/v1/models/toy")
            assert reply.status == 200

    asyncio.run(scenario())


def test_concurrent_rest_requests_from_threads_share_the_loop(tmp_path):
    # The codec thread pool and the inference pool are both used: large bodies are decoded off
    # the loop, small ones inline; every answer is the caller's own.
    async def scenario():
        async with rest_client(tmp_path, max_bytes=8 << 20) as client:
            sizes = [1, 5, 3000, 2, 4000, 7]

            async def call(n: int):
                rows = [[float(n), 0.0, 1.0]] * n
                reply = await client.post("/v1/models/toy:predict", json={"instances": rows})
                assert reply.status == 200
                predictions = (await reply.json())["predictions"]
                assert len(predictions) == n and predictions[0]["total"] == n + 1.0

            await asyncio.gather(*(call(n) for n in sizes))

    asyncio.run(scenario())
