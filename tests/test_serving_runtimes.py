"""Both runtimes give the same answers; --workers; the TLS flags; the terminal client."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from harness import ServerProcess, free_port
from serving.client import ServingClient
from serving.runtimes import RuntimeOptions, load_runtime


def _images(mnist, count: int) -> np.ndarray:
    return (mnist.x_test[:count].astype(np.float32) / 255.0)[..., None]


@pytest.mark.parametrize("model", ["standard", "separable"])
def test_tensorflow_and_onnx_runtimes_agree_in_process(exported_repository, mnist, model):
    images = _images(mnist, 1000)
    version_dir = exported_repository / model / "1"
    tf_out = load_runtime("tensorflow", version_dir, RuntimeOptions()).predict(
        "serving_default", {"images": images}
    )
    onnx_out = load_runtime("onnx", version_dir, RuntimeOptions()).predict(
        "serving_default", {"images": images}
    )
    np.testing.assert_allclose(tf_out["probabilities"], onnx_out["probabilities"], atol=1e-5)
    np.testing.assert_array_equal(tf_out["classes"], onnx_out["classes"])


def test_tensorflow_small_batches_match_large_ones(exported_repository, mnist):
    # Up to SMALL_BATCH_ROWS rows run on TF's single-threaded executor, larger batches on the
    # default one: the same rows must get the same answers either way.
    images = _images(mnist, 64)
    runtime = load_runtime("tensorflow", exported_repository / "separable" / "1", RuntimeOptions())
    whole = runtime.predict("serving_default", {"images": images})
    for start, rows in ((0, 1), (1, 8), (9, 3)):
        part = runtime.predict("serving_default", {"images": images[start : start + rows]})
        np.testing.assert_allclose(
            part["probabilities"], whole["probabilities"][start : start + rows], atol=1e-6
        )
        np.testing.assert_array_equal(part["classes"], whole["classes"][start : start + rows])


def test_tensorflow_falls_back_when_the_single_threaded_executor_refuses(tmp_path):
    import tensorflow as tf

    from serving.runtimes.tensorflow import TensorFlowRuntime

    class Doubling(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32)])
        def serve(self, x):
            # tf.while_loop lowers to the control flow that executor refuses
            _, y = tf.while_loop(lambda i, y: i < 3, lambda i, y: (i + 1, y * 2.0), [0, x])
            return {"y": y}

    module = Doubling()
    version_dir = tmp_path / "1"
    tf.saved_model.save(module, str(version_dir), signatures={"serving_default": module.serve})
    runtime = load_runtime("tensorflow", version_dir, RuntimeOptions())
    assert isinstance(runtime, TensorFlowRuntime)
    x = np.arange(3, dtype=np.float32)[None]
    for _ in range(2):  # the refusal, then the default executor straight away
        np.testing.assert_array_equal(runtime.predict("serving_default", {"x": x})["y"], x * 8)
    assert runtime._needs_default_executor == {"serving_default"}


def test_tensorflow_keeps_the_single_threaded_executor_after_a_model_error(tmp_path):
    import tensorflow as tf

    from serving.runtimes.tensorflow import TensorFlowRuntime

    class Checked(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32)])
        def serve(self, x):
            with tf.control_dependencies([tf.debugging.assert_non_negative(x)]):
                return {"y": tf.identity(x)}

    module = Checked()
    version_dir = tmp_path / "1"
    tf.saved_model.save(module, str(version_dir), signatures={"serving_default": module.serve})
    runtime = load_runtime("tensorflow", version_dir, RuntimeOptions())
    assert isinstance(runtime, TensorFlowRuntime)
    with pytest.raises(tf.errors.InvalidArgumentError):
        runtime.predict("serving_default", {"x": -np.ones((1, 3), np.float32)})
    # The error was the inputs' (the default executor raised it too): nothing changed.
    assert runtime._needs_default_executor == set()
    ones = np.ones((1, 3), np.float32)
    np.testing.assert_array_equal(runtime.predict("serving_default", {"x": ones})["y"], ones)


def test_tensorflow_runtime_server_matches_onnx_server(model_repository, onnx_server, mnist):
    images = _images(mnist, 64)
    config = model_repository / "models.config"
    with (
        ServerProcess(config, ["--runtime=tensorflow"]) as tf_server,
        ServingClient(tf_server.grpc_target) as client,
    ):
        tf_result = client.predict("separable", images)
        metadata_ok = client.status("separable")[0]["state"] == "AVAILABLE"
    with ServingClient(onnx_server.grpc_target) as client:
        onnx_result = client.predict("separable", images)
    assert metadata_ok
    np.testing.assert_allclose(tf_result.probabilities, onnx_result.probabilities, atol=1e-5)
    np.testing.assert_array_equal(tf_result.classes, onnx_result.classes)


def test_workers_share_ports_and_aggregate_metrics(model_repository, mnist):
    images = _images(mnist, 2)
    server = ServerProcess(model_repository / "models.config", ["--workers=2"])
    with server:
        clients = [ServingClient(server.grpc_target) for _ in range(6)]
        for client in clients:
            for _ in range(5):
                assert client.predict("standard", images).classes.shape == (2,)
        # Fresh connections right after health said SERVING: the kernel picks a worker for each,
        # and none may be one still loading its models.
        for _ in range(20):
            with ServingClient(f"127.0.0.1:{server.rest_port}", "rest") as rest:
                assert rest.predict("standard", images).classes.shape == (2,)
        with urllib.request.urlopen(f"{server.rest_url}/monitoring/prometheus/metrics") as reply:
            text = reply.read().decode()
        for client in clients:
            client.close()
        line = next(
            row
            for row in text.splitlines()
            if row.startswith('serving_requests_total{api="grpc",code="OK",model="standard"')
        )
        assert float(line.rsplit(" ", 1)[1]) == 30.0  # summed over both worker processes
    assert server.process is not None and server.process.returncode == 0


def _make_certificates(directory: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate (openssl)."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=directory)

    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "1",
        "-subj",
        "/CN=test-ca",
    )
    (directory / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name in ("server", "client"):
        openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            "-subj",
            f"/CN={name}",
        )
        openssl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            f"{name}.crt",
            "-days",
            "1",
            "-extfile",
            "san.ext",
        )
    return {
        n: directory / n for n in ("ca.crt", "server.crt", "server.key", "client.crt", "client.key")
    }


def test_tls_grpc_and_rest_with_mutual_tls(model_repository, tmp_path, mnist):
    import ssl

    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from contract.protos import prediction_service_pb2_grpc
    from serving.client import predict_request

    certs = _make_certificates(tmp_path)
    ssl_config = tmp_path / "ssl.config"

    def pem(name: str) -> str:  # text-proto string literal of a PEM file
        return certs[name].read_text().replace("\n", "\\n")

    ssl_config.write_text(
        f'server_key: "{pem("server.key")}"\n'
        f'server_cert: "{pem("server.crt")}"\n'
        f'custom_ca: "{pem("ca.crt")}"\n'
        "client_verify: true\n"
    )
    grpc_port, rest_port = free_port(), free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "serving",
            "--host=127.0.0.1",
            f"--port={grpc_port}",
            f"--rest_api_port={rest_port}",
            f"--model_config_file={model_repository / 'models.config'}",
            f"--ssl_config_file={ssl_config}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=certs["ca.crt"].read_bytes(),
            private_key=certs["client.key"].read_bytes(),
            certificate_chain=certs["client.crt"].read_bytes(),
        )
        with grpc.secure_channel(f"127.0.0.1:{grpc_port}", credentials) as channel:
            grpc.channel_ready_future(channel).result(timeout=60)
            health = health_pb2_grpc.HealthStub(channel)
            import time

            deadline = time.monotonic() + 60
            while health.Check(health_pb2.HealthCheckRequest(), timeout=5).status != 1:
                assert time.monotonic() < deadline
                time.sleep(0.1)
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            reply = stub.Predict(predict_request("standard", _images(mnist, 1)), timeout=10)
            assert len(reply.outputs["classes"].int64_val) == 1
        # Without a client certificate the handshake is refused.
        anonymous = grpc.ssl_channel_credentials(root_certificates=certs["ca.crt"].read_bytes())
        with (
            grpc.secure_channel(f"127.0.0.1:{grpc_port}", anonymous) as channel,
            pytest.raises(grpc.RpcError),
        ):
            prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(
                predict_request("standard", _images(mnist, 1)), timeout=5
            )
        context = ssl.create_default_context(cafile=str(certs["ca.crt"]))
        context.load_cert_chain(certs["client.crt"], certs["client.key"])
        url = f"https://127.0.0.1:{rest_port}/v1/models/standard"
        with urllib.request.urlopen(url, context=context, timeout=10) as reply:
            assert b"AVAILABLE" in reply.read()
        no_cert = ssl.create_default_context(cafile=str(certs["ca.crt"]))
        with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
            urllib.request.urlopen(url, context=no_cert, timeout=10).read()
    finally:
        process.terminate()
        assert process.wait(timeout=30) == 0


def test_client_cli(onnx_server, mnist, tmp_path):
    from PIL import Image

    # A dark digit on a light background, larger than 28x28: the client inverts and fits it.
    digit = 255 - np.kron(mnist.x_test[0], np.ones((3, 2), dtype=np.uint8))
    Image.fromarray(digit).save(tmp_path / "seven.png")
    (tmp_path / "notes.txt").write_text("not an image")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "serving.client", *args],
            capture_output=True,
            text=True,
            timeout=60,
        )

    ok = cli("--target", onnx_server.grpc_target, "--mnist", "0", "1", "--model", "standard")
    assert ok.returncode == 0, ok.stderr
    lines = ok.stdout.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("mnist[0]: ") and " ms " in lines[0]
    rest = cli(
        "--target",
        f"127.0.0.1:{onnx_server.rest_port}",
        "--protocol",
        "rest",
        str(tmp_path / "seven.png"),
    )
    assert rest.returncode == 0, rest.stderr
    assert "seven.png: " in rest.stdout
    bad = cli("--target", onnx_server.grpc_target, str(tmp_path / "notes.txt"))
    assert bad.returncode == 1 and "not an image" in bad.stderr
    down = cli("--target", f"127.0.0.1:{free_port()}", "--timeout", "2", "--mnist", "0")
    assert down.returncode == 1 and "cannot reach the server" in down.stderr


@pytest.mark.parametrize(("worker_index", "listens_first"), [(0, True), (1, False)])
def test_only_the_first_worker_listens_before_its_models_are_loaded(
    model_repository, mnist, tmp_path, worker_index, listens_first
):
    # SO_REUSEPORT hands each new connection to any bound process: a second worker bound while
    # still loading would answer "no version is available" (seen in CI before this rule).
    log_path = tmp_path / "server.log"
    server = ServerProcess(
        model_repository / "models.config", [f"--worker_index={worker_index}"], log_path=log_path
    )
    with server, ServingClient(server.grpc_target) as client:
        assert client.predict("standard", _images(mnist, 1)).classes.shape == (1,)
    lines = log_path.read_text().splitlines()
    listening = next(i for i, line in enumerate(lines) if "listening: gRPC" in line)
    available = [i for i, line in enumerate(lines) if "is AVAILABLE" in line]
    assert len(available) == 2
    assert (listening < min(available)) is listens_first
    assert listening > max(available) or listens_first


def test_other_workers_bind_only_once_worker_0_is_loaded(model_repository, mnist, tmp_path):
    # A worker that finished loading before worker 0 must not answer SERVING yet: clients would
    # then reach worker 0 through the shared ports while it still loads (CI saw that 404).
    ready_file = tmp_path / "worker0.ready"
    log_path = tmp_path / "server.log"
    server = ServerProcess(
        model_repository / "models.config",
        ["--worker_index=1", f"--worker_ready_file={ready_file}"],
        log_path=log_path,
    )
    waiter = threading.Thread(target=server.start)
    waiter.start()
    try:
        deadline = time.monotonic() + 120
        while not log_path.exists() or log_path.read_text().count("is AVAILABLE") < 2:
            assert time.monotonic() < deadline, "models did not load"
            time.sleep(0.1)
        time.sleep(1.0)  # loaded, yet it must keep waiting for worker 0's file
        assert "listening: gRPC" not in log_path.read_text()
        ready_file.touch()
        waiter.join(timeout=60)
        assert not waiter.is_alive()
        with ServingClient(server.grpc_target) as client:
            assert client.predict("standard", _images(mnist, 1)).classes.shape == (1,)
    finally:
        waiter.join(timeout=60)
        assert server.stop() == 0


def test_a_failed_start_quotes_the_server_log(tmp_path):
    (tmp_path / "empty").mkdir()
    config = tmp_path / "models.config"
    config.write_text(
        f'model_config_list {{ config {{ name: "empty" base_path: "{tmp_path / "empty"}" '
        'model_platform: "tensorflow" } }'
    )
    with pytest.raises(RuntimeError, match="during start-up") as failure:
        ServerProcess(config, startup_timeout_s=60).start()
    assert "no version could be loaded for empty" in str(failure.value)


def test_every_runtime_of_the_contract_has_an_implementation():
    from serving.runtimes import _IMPLEMENTATIONS, RUNTIME_KINDS

    assert set(_IMPLEMENTATIONS) == set(RUNTIME_KINDS)
