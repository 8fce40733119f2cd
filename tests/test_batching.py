"""Server-side batching: merged runs, each caller gets exactly its rows, clean overload."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest

from harness import ServerProcess
from serving.client import ServingClient
from serving.errors import ServingError
from serving.model.batching import Batcher
from serving.runtimes import RuntimeOptions, load_runtime
from serving.settings import BatchingSettings


@pytest.fixture(scope="module")
def runtime(exported_repository):
    return load_runtime("onnx", exported_repository / "separable" / "1", RuntimeOptions())


def _images(mnist, count: int, start: int) -> np.ndarray:
    return (mnist.x_test[start : start + count].astype(np.float32) / 255.0)[..., None]


def test_concurrent_callers_get_their_own_rows(runtime, mnist):
    sizes = [1, 3, 7, 2, 16, 5, 1, 9, 4, 12, 1, 6]
    starts = np.cumsum([0, *sizes[:-1]])
    batches_seen: list[int] = []

    def run(inputs):
        batches_seen.append(len(inputs["images"]))
        return runtime.predict("serving_default", inputs)

    async def scenario():
        batcher = Batcher(
            run,
            BatchingSettings(
                max_batch_size=32,
                batch_timeout_micros=20_000,
                num_batch_threads=2,
                allowed_batch_sizes=(8, 16, 32),
            ),
            ThreadPoolExecutor(2),
            model="separable",
            version=1,
        )
        calls = [
            batcher.submit({"images": _images(mnist, n, s)}, n)
            for n, s in zip(sizes, starts, strict=True)
        ]
        return await asyncio.gather(*calls)

    results = asyncio.run(scenario())
    for result, n, s in zip(results, sizes, starts, strict=True):
        expected = runtime.predict("serving_default", {"images": _images(mnist, n, s)})
        assert result["probabilities"].shape == (n, 10)
        np.testing.assert_allclose(result["probabilities"], expected["probabilities"], atol=1e-6)
        np.testing.assert_array_equal(result["classes"], expected["classes"])
    assert len(batches_seen) < len(sizes)  # requests were merged
    assert set(batches_seen) <= {8, 16, 32}  # padded to the allowed sizes


def test_full_queue_is_unavailable_and_recovers(runtime):
    gate = threading.Event()

    def run(inputs):
        gate.wait(timeout=30)
        return runtime.predict("serving_default", inputs)

    image = {"images": np.zeros((1, 28, 28, 1), np.float32)}

    async def scenario():
        batcher = Batcher(
            run,
            BatchingSettings(
                max_batch_size=1,
                batch_timeout_micros=0,
                max_enqueued_batches=1,
                num_batch_threads=1,
            ),
            ThreadPoolExecutor(1),
            model="separable",
            version=1,
        )
        first = asyncio.ensure_future(batcher.submit(image, 1))  # runs (blocked on the gate)
        await asyncio.sleep(0.05)
        second = asyncio.ensure_future(batcher.submit(image, 1))  # waits for the thread
        await asyncio.sleep(0.05)
        with pytest.raises(ServingError) as error:
            await batcher.submit(image, 1)
        assert error.value.code == grpc.StatusCode.UNAVAILABLE
        gate.set()
        await asyncio.gather(first, second)
        after = await batcher.submit(image, 1)  # load dropped: accepted again
        assert after["classes"].shape == (1,)
        await batcher.drain()
        assert batcher.queued_batches == 0  # no leaked waiters

    asyncio.run(scenario())


def test_runtime_failure_fails_only_that_batch(runtime):
    calls = {"n": 0}

    def run(inputs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("forced failure")
        return runtime.predict("serving_default", inputs)

    image = {"images": np.zeros((1, 28, 28, 1), np.float32)}

    async def scenario():
        batcher = Batcher(
            run,
            BatchingSettings(max_batch_size=4, batch_timeout_micros=10_000, num_batch_threads=1),
            ThreadPoolExecutor(1),
            model="separable",
            version=1,
        )
        failed = await asyncio.gather(
            *[batcher.submit(image, 1) for _ in range(3)], return_exceptions=True
        )
        assert all(
            isinstance(e, ServingError) and e.code == grpc.StatusCode.INTERNAL for e in failed
        )
        first = failed[0]
        assert isinstance(first, ServingError) and "forced failure" in first.message
        ok = await batcher.submit(image, 1)
        assert ok["classes"].shape == (1,)

    asyncio.run(scenario())


def test_batching_server_under_concurrent_grpc_clients(model_repository, mnist, tmp_path):
    config = tmp_path / "batching.config"
    config.write_text(
        "max_batch_size { value: 64 } batch_timeout_micros { value: 2000 } "
        "max_enqueued_batches { value: 100 } num_batch_threads { value: 2 }"
    )
    with ServerProcess(
        model_repository / "models.config",
        ["--enable_batching", f"--batching_parameters_file={config}"],
    ) as server:
        reference = load_runtime("onnx", model_repository / "standard" / "1", RuntimeOptions())
        errors: list[str] = []

        def worker(index: int) -> None:
            size = 1 + index % 5
            images = _images(mnist, size, index * 7)
            expected = reference.predict("serving_default", {"images": images})["classes"]
            with ServingClient(server.grpc_target) as client:
                for _ in range(20):
                    got = client.predict("standard", images).classes
                    if not np.array_equal(got, expected):
                        errors.append(f"worker {index}: {got} != {expected}")

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert errors == []
        import urllib.request

        with urllib.request.urlopen(f"{server.rest_url}/monitoring/prometheus/metrics") as reply:
            text = reply.read().decode()
        assert "serving_batch_size_count" in text
        assert "serving_batch_queue_seconds_count" in text


def test_batching_parameters_file_errors(tmp_path, model_repository):
    import subprocess
    import sys

    for text, fragment in (
        ("max_batch_sise { value: 3 }", "max_batch_sise"),
        ("max_batch_size { value: 0 }", "max_batch_size"),
        (
            "max_batch_size { value: 32 } allowed_batch_sizes: 8 allowed_batch_sizes: 16",
            "allowed_batch_sizes",
        ),
    ):
        path = tmp_path / "b.config"
        path.write_text(text)
        completed = subprocess.run(
            [
                sys.executable,
                "-m",
                "serving",
                f"--model_config_file={model_repository / 'models.config'}",
                "--enable_batching",
                f"--batching_parameters_file={path}",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert completed.returncode == 2
        assert fragment in completed.stderr.strip().splitlines()[-1]
