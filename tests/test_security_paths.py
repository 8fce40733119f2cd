"""Model paths stay inside the allowed roots, whatever a config entry, a reload, a symlink or a
request's model name or label says (rule: serving/paths.py)."""

from __future__ import annotations

import http.client
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.protobuf import text_format

from contract.protos import model_management_pb2, model_service_pb2_grpc
from harness import ServerProcess, free_port
from serving.client import ClientError, ServingClient
from serving.paths import PathNotAllowedError, check_tree, confine, default_roots
from serving.settings import SettingsError, parse_settings

IMAGES = np.zeros((1, 28, 28, 1), np.float32)


def entry(name: str, base_path: Path | str) -> str:
    return f'config {{ name: "{name}" base_path: "{base_path}" model_platform: "tensorflow" }}'


def config_text(*entries: str) -> str:
    return f"model_config_list {{ {' '.join(entries)} }}"


# ---- the rule, on plain directories ---------------------------------------------------------


def test_confine_resolves_dot_dot_and_symlinks(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "model").mkdir(parents=True)
    outside.mkdir()
    (root / "inner_link").symlink_to(root / "model")
    (root / "escape").symlink_to(outside)
    assert confine(root / "model", [root]) == (root / "model").resolve()
    assert confine(root, [root]) == root.resolve()
    assert confine(root / "inner_link", [root]) == (root / "model").resolve()
    assert confine(root / "not_yet_there", [root]) == (root / "not_yet_there").resolve()
    for path in (
        root / ".." / "outside",
        root / "model" / ".." / ".." / "outside",
        root / "escape",
        root / "escape" / "model",
        Path("/etc"),
        tmp_path / "rootless",  # a sibling whose name starts like the root
    ):
        with pytest.raises(PathNotAllowedError, match="outside the allowed model roots"):
            confine(path, [root])
    assert confine(outside / "m", [root, outside]) == (outside / "m").resolve()


def test_check_tree_refuses_symlinks_out_of_the_base_path(tmp_path):
    base, outside = tmp_path / "base", tmp_path / "outside"
    version = base / "1"
    (version / "variables").mkdir(parents=True)
    outside.mkdir()
    (outside / "model.onnx").write_bytes(b"x")
    (version / "model.onnx").write_bytes(b"x")
    (version / "alias.onnx").symlink_to(version / "model.onnx")  # inside: fine
    check_tree(version, base)
    (version / "variables" / "data").symlink_to(outside / "model.onnx")
    with pytest.raises(PathNotAllowedError, match="outside the model's base path"):
        check_tree(version, base)
    (version / "variables" / "data").unlink()
    (version / "assets.extra").symlink_to(outside, target_is_directory=True)
    with pytest.raises(PathNotAllowedError, match=r"assets\.extra"):
        check_tree(version, base)


def test_default_roots_and_flag(tmp_path, model_repository):
    config = model_repository / "models.config"
    assert default_roots(config, [model_repository / "standard", tmp_path / "x" / "m"]) == (
        model_repository.resolve(),
        (tmp_path / "x").resolve(),
    )
    settings = parse_settings(
        [f"--model_config_file={config}", f"--model_base_path_root={tmp_path}"]
    )
    assert settings.model_base_path_roots == (tmp_path,)
    with pytest.raises(SettingsError, match="--model_base_path_root"):
        parse_settings([f"--model_config_file={config}", f"--model_base_path_root={tmp_path}/no"])


# ---- a real server ----------------------------------------------------------------------------


def test_startup_refuses_a_base_path_outside_the_roots(model_repository, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(model_repository / "standard", elsewhere / "standard")
    (model_repository / "escape").symlink_to(elsewhere)
    repo = model_repository
    cases = {
        "dot-dot": f"{repo}/standard/../../elsewhere/standard",
        "symlink": f"{repo}/escape/standard",
        "absolute": f"{elsewhere}/standard",
    }
    for label, base_path in cases.items():
        config = repo / f"{label}.config"
        config.write_text(config_text(entry("standard", base_path)))
        completed = subprocess.run(
            [
                sys.executable,
                "-m",
                "serving",
                f"--port={free_port()}",
                "--rest_api_port=0",
                f"--model_config_file={config}",
                f"--model_base_path_root={repo}",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert completed.returncode == 1, (label, completed.stderr)
        last = completed.stderr.strip().splitlines()[-1]
        assert "outside the allowed model roots" in last and "standard" in last, last
    # Named as a root, the same directory serves.
    config = repo / "allowed.config"
    config.write_text(config_text(entry("standard", elsewhere / "standard")))
    with (
        ServerProcess(config, [f"--model_base_path_root={elsewhere}"]) as server,
        ServingClient(server.grpc_target) as client,
    ):
        assert client.predict("standard", IMAGES).version == 1


def _reload(channel: grpc.Channel, text: str) -> None:
    request = model_management_pb2.ReloadConfigRequest()
    text_format.Parse(text, request.config)
    model_service_pb2_grpc.ModelServiceStub(channel).HandleReloadConfigRequest(request, timeout=60)


def _states(client: ServingClient, model: str) -> dict[int, tuple[str, str]]:
    return {s["version"]: (s["state"], s["error"]) for s in client.status(model)}


def _wait_for(predicate, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def test_running_server_cannot_be_pointed_outside(model_repository, tmp_path):
    repo = model_repository
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(repo / "standard", elsewhere / "standard")
    (repo / "escape").symlink_to(elsewhere)
    log = tmp_path / "server.log"
    server = ServerProcess(
        repo / "models.config",
        ["--file_system_poll_wait_seconds=0.2", "--model_config_file_poll_wait_seconds=0.2"],
        log_path=log,
    )
    with (
        server,
        grpc.insecure_channel(server.grpc_target) as channel,
        ServingClient(server.grpc_target) as client,
    ):
        # HandleReloadConfigRequest naming a directory outside the repository: refused whole.
        for base_path in (f"{repo}/../elsewhere/standard", f"{repo}/escape/standard"):
            bad = config_text(
                entry("standard", repo / "standard"),
                entry("separable", repo / "separable"),
                entry("third", base_path),
            )
            with pytest.raises(grpc.RpcError) as error:
                _reload(channel, bad)
            assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "outside the allowed model roots" in (error.value.details() or "")
        with pytest.raises(ClientError) as missing:
            client.predict("third", IMAGES)
        assert missing.value.code == "NOT_FOUND"
        assert client.predict("separable", IMAGES).version == 1

        # A version directory that is a symlink out of the base path is never loaded; a version
        # whose model file is such a symlink fails to load, with the reason in its status.
        (repo / "standard" / "2").symlink_to(elsewhere / "standard" / "1")
        staging = repo / "standard" / ".staging-3"  # published whole, by one rename
        shutil.copytree(repo / "standard" / "1", staging)
        (staging / "model.onnx").unlink()
        (staging / "model.onnx").symlink_to(elsewhere / "standard" / "1" / "model.onnx")
        staging.rename(repo / "standard" / "3")
        _wait_for(lambda: _states(client, "standard").get(3, ("",))[0] == "END")
        states = _states(client, "standard")
        assert set(states) == {1, 3}
        assert states[1][0] == "AVAILABLE"
        assert "outside the model's base path" in states[3][1]
        assert client.predict("standard", IMAGES).version == 1

        # The polled config file naming an outside directory: logged and ignored.
        (repo / "models.config").write_text(config_text(entry("standard", elsewhere / "standard")))
        _wait_for(lambda: "outside the allowed model roots" in log.read_text())
        assert client.predict("separable", IMAGES).version == 1

        # Model names and labels are table keys, never paths.
        for model, label in (
            ("../standard", None),
            ("standard/../separable", None),
            ("standard", "../../1"),
        ):
            with pytest.raises(ClientError) as not_found:
                client.predict(model, IMAGES, label=label)
            assert not_found.value.code == "NOT_FOUND"
        for path in (
            "/v1/models/..%2Fstandard:predict",
            "/v1/models/standard/labels/..%2F..%2F1:predict",
            "/v1/models/%2E%2E:predict",
        ):
            connection = http.client.HTTPConnection("127.0.0.1", server.rest_port, timeout=10)
            connection.request("POST", path, body=json.dumps({"instances": IMAGES.tolist()}))
            response = connection.getresponse()
            reply = json.loads(response.read())
            connection.close()
            assert response.status == 404 and "error" in reply, (path, reply)
    assert "resolves outside" in log.read_text()  # the version-2 symlink, skipped and logged
