"""Model versions, policies, labels, hot reload, failures and shutdown, with real servers."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from contract.protos import model_management_pb2, model_server_config_pb2, model_service_pb2_grpc
from harness import ServerProcess, free_port
from serving.client import ClientError, ServingClient

IMAGES = np.zeros((2, 28, 28, 1), np.float32)


def write_config(repo: Path, entries: str) -> Path:
    path = repo / "custom.config"
    path.write_text(f"model_config_list {{ {entries} }}")
    return path


def model_entry(repo: Path, name: str, extra: str = "") -> str:
    return (
        f'config {{ name: "{name}" base_path: "{repo / name}" '
        f'model_platform: "tensorflow" {extra} }}'
    )


def both_models(repo: Path) -> str:
    return (
        f"model_config_list {{ {model_entry(repo, 'standard')} {model_entry(repo, 'separable')} }}"
    )


def add_version(repo: Path, name: str, version: int, source: int = 1) -> Path:
    """Publish a new version the way the export does: copy aside, then one atomic rename."""
    staging = repo / name / f".staging-{version}"
    shutil.copytree(repo / name / str(source), staging)
    target = repo / name / str(version)
    staging.rename(target)
    return target


def wait_for(predicate, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.05)


class Load:
    """A background client hammering Predict, counting failures."""

    def __init__(self, target: str, model: str) -> None:
        self.target, self.model = target, model
        self.ok = 0
        self.failures: list[str] = []
        self.versions: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with ServingClient(self.target) as client:
            while not self._stop.is_set():
                try:
                    result = client.predict(self.model, IMAGES[:1])
                    self.ok += 1
                    if result.version is not None:
                        self.versions.add(result.version)
                except ClientError as exc:
                    self.failures.append(str(exc))

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def test_version_policies_and_labels(model_repository):
    repo = model_repository
    add_version(repo, "standard", 2)
    add_version(repo, "standard", 3)
    add_version(repo, "separable", 2)
    config = write_config(
        repo,
        model_entry(
            repo,
            "standard",
            "model_version_policy { specific { versions: 1 versions: 3 } } "
            'version_labels { key: "stable" value: 1 } version_labels { key: "canary" value: 3 }',
        )
        + model_entry(repo, "separable", "model_version_policy { all {} }"),
    )
    with (
        ServerProcess(config, ["--file_system_poll_wait_seconds=0"]) as server,
        ServingClient(server.grpc_target) as client,
    ):
        assert client.predict("standard", IMAGES).version == 3  # latest of the specific set
        assert client.predict("standard", IMAGES, version=1).version == 1
        assert client.predict("standard", IMAGES, label="stable").version == 1
        assert client.predict("standard", IMAGES, label="canary").version == 3
        with pytest.raises(ClientError) as error:
            client.predict("standard", IMAGES, version=2)  # on disk but not in the policy
        assert error.value.code == "NOT_FOUND"
        states = {s["version"]: s["state"] for s in client.status("standard")}
        assert states == {1: "AVAILABLE", 3: "AVAILABLE"}
        assert {s["version"] for s in client.status("separable")} == {1, 2}
        assert client.predict("separable", IMAGES, version=1).version == 1
        rest = ServingClient(f"127.0.0.1:{server.rest_port}", "rest")
        assert rest.predict("standard", IMAGES, label="canary").classes.shape == (2,)
        assert rest.status("standard", 3)[0]["state"] == "AVAILABLE"
        rest.close()


def test_new_version_under_load_switches_with_zero_failures(model_repository):
    config = model_repository / "models.config"
    with ServerProcess(config, ["--file_system_poll_wait_seconds=0.2"]) as server:
        with Load(server.grpc_target, "separable") as load:
            wait_for(lambda: load.ok > 20)
            published = time.monotonic()
            add_version(model_repository, "separable", 2)
            wait_for(lambda: 2 in load.versions)
            switch_s = time.monotonic() - published
            wait_for(lambda: load.ok > 50)
            count_after = load.ok
            wait_for(lambda: load.ok > count_after + 20)
        assert load.failures == []
        assert switch_s < 10  # the poll interval plus load and warm-up time
        with ServingClient(server.grpc_target) as client:
            wait_for(
                lambda: (
                    {s["version"]: s["state"] for s in client.status("separable")}.get(1) == "END"
                )
            )
            assert client.predict("separable", IMAGES).version == 2


def test_new_version_with_the_old_removed_at_once_fails_no_request(model_repository):
    """A deployment writes version 2 and removes version 1 in the same moment: version 1 (in
    memory) serves until version 2 is AVAILABLE (found by tests/test_containers_faults.py, where
    the requests in between got NOT_FOUND "no version is available")."""
    config = model_repository / "models.config"
    with ServerProcess(config, ["--file_system_poll_wait_seconds=0.2"]) as server:
        with Load(server.grpc_target, "separable") as load:
            wait_for(lambda: load.ok > 20)
            add_version(model_repository, "separable", 2)
            shutil.rmtree(model_repository / "separable" / "1")
            wait_for(lambda: 2 in load.versions)
            count_after = load.ok
            wait_for(lambda: load.ok > count_after + 20)
        assert load.failures == []


def test_corrupt_version_does_not_disturb_serving(model_repository):
    config = model_repository / "models.config"
    with (
        ServerProcess(config, ["--file_system_poll_wait_seconds=0.2"]) as server,
        ServingClient(server.grpc_target) as client,
    ):
        broken = model_repository / "standard" / "2"
        broken.mkdir()
        (broken / "model.onnx").write_bytes(b"this is not an onnx model")
        wait_for(
            lambda: any(
                s["version"] == 2 and s["state"] == "END" for s in client.status("standard")
            )
        )
        status = {s["version"]: s for s in client.status("standard")}
        assert "failed to load version 2" in status[2]["error"]
        assert status[1]["state"] == "AVAILABLE"
        assert client.predict("standard", IMAGES).version == 1
        assert client.predict("separable", IMAGES).version == 1
        # Repairing the directory (new files) is picked up on a later poll.
        shutil.rmtree(broken)
        add_version(model_repository, "standard", 2)
        wait_for(lambda: client.predict("standard", IMAGES).version == 2)


def test_reload_config_under_load_never_fails_staying_models(model_repository):
    repo = model_repository
    only_standard = write_config(repo, model_entry(repo, "standard"))
    with ServerProcess(only_standard) as server:
        channel = grpc.insecure_channel(server.grpc_target)
        models = model_service_pb2_grpc.ModelServiceStub(channel)

        def reload(text: str) -> None:
            from google.protobuf import text_format

            request = model_management_pb2.ReloadConfigRequest()
            text_format.Parse(text, request.config)
            models.HandleReloadConfigRequest(request, timeout=60)

        with (
            Load(server.grpc_target, "standard") as load,
            ServingClient(server.grpc_target) as client,
        ):
            with pytest.raises(ClientError):
                client.predict("separable", IMAGES)
            reload(both_models(repo))
            assert client.predict("separable", IMAGES).version == 1  # added and loaded
            reload(f"model_config_list {{ {model_entry(repo, 'standard')} }}")
            with pytest.raises(ClientError) as error:
                client.predict("separable", IMAGES)
            assert error.value.code == "NOT_FOUND"
            wait_for(lambda: load.ok > 20)
        assert load.failures == []
        bad = model_management_pb2.ReloadConfigRequest(
            config=model_server_config_pb2.ModelServerConfig()
        )
        with pytest.raises(grpc.RpcError) as rpc_error:
            models.HandleReloadConfigRequest(bad, timeout=10)
        assert rpc_error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with ServingClient(server.grpc_target) as client:
            assert client.predict("standard", IMAGES).classes.shape == (2,)
        channel.close()


def test_model_config_file_polling(model_repository):
    repo = model_repository
    config = write_config(repo, model_entry(repo, "standard"))
    with (
        ServerProcess(config, ["--model_config_file_poll_wait_seconds=0.2"]) as server,
        ServingClient(server.grpc_target) as client,
    ):
        config.write_text(both_models(repo))
        wait_for(lambda: _available(client, "separable"))
        assert client.predict("separable", IMAGES).version == 1


def _exists(client: ServingClient, model: str) -> bool:
    try:
        client.status(model)
        return True
    except ClientError:
        return False


def _available(client: ServingClient, model: str) -> bool:
    return _exists(client, model) and any(s["state"] == "AVAILABLE" for s in client.status(model))


def test_sigterm_drains_in_flight_requests_and_exits_zero(model_repository, tmp_path):
    batching = tmp_path / "batching.config"
    # A long batch timeout keeps requests in flight when SIGTERM arrives.
    batching.write_text(
        "max_batch_size { value: 64 } batch_timeout_micros { value: 1500000 } "
        "num_batch_threads { value: 1 }"
    )
    server = ServerProcess(
        model_repository / "models.config",
        [
            "--enable_batching",
            f"--batching_parameters_file={batching}",
            "--shutdown_grace_seconds=20",
        ],
    ).start()
    results: list[object] = []

    def call() -> None:
        with ServingClient(server.grpc_target, timeout_s=30) as client:
            try:
                results.append(client.predict("standard", IMAGES).classes.shape)
            except ClientError as exc:
                results.append(exc)

    threads = [threading.Thread(target=call) for _ in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(0.5)  # the requests are now waiting in the batch
    assert server.process is not None
    server.process.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    with grpc.insecure_channel(server.grpc_target) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=2
            )
            assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAVAILABLE  # already refusing new calls
    for thread in threads:
        thread.join(timeout=30)
    assert server.process.wait(timeout=30) == 0
    assert results == [(2,)] * 4


def test_startup_fails_cleanly_on_unreadable_model_path(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    for args, fragment in (
        ([f"--model_base_path={tmp_path / 'missing'}"], "does not exist"),
        ([f"--model_base_path={empty}"], "no version"),
        ([f"--model_config_file={tmp_path / 'nope.config'}"], "does not exist"),
        (["--model_base_path=/tmp", "--port=99999"], "--port"),
        (["--model_base_path=/tmp", "--runtime=caffe"], "--runtime"),
        (["--model_base_path=/tmp", "--enable_batching=maybe"], "--enable_batching"),
    ):
        ports = [] if "--port=99999" in args else [f"--port={free_port()}", "--rest_api_port=0"]
        completed = subprocess.run(
            [sys.executable, "-m", "serving", *ports, *args],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert completed.returncode != 0, args
        lines = completed.stderr.strip().splitlines()
        assert fragment in lines[-1], completed.stderr


def test_sigterm_during_startup_exits_zero(model_repository):
    # Kubernetes may stop a pod that is still loading: that is a clean stop, not a crash.
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "serving",
            f"--model_config_file={model_repository / 'models.config'}",
            f"--port={free_port()}",
            "--rest_api_port=0",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(0.3)  # inside the imports, before the server's own handler exists
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0
