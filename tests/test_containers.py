"""The container tier (`make test-containers`, docs/deploy.md): real images, real containers.

Builds the ``onnx``, ``tensorflow``, ``loadtest`` and ``onnx-models`` targets of the Dockerfile
with the engine that ``DOCKER_HOST`` (or the default socket) names, then checks what the static
tests cannot: the ONNX image has no TensorFlow; the server runs as uid 10001 on a read-only root
with a read-only ``/models``; Docker's health state (the image's HEALTHCHECK) reaches
``healthy``; an unchanged ``tensorflow-serving-api`` client gets the right classes through the
published port; ``docker stop`` under load drains in-flight requests and exits 0; the compose
deployment runs a headless distributed Locust test against both servers; the Kubernetes
Deployment's container spec runs under ``docker run``.

Without an engine the tier skips, except in CI (``CI=true`` or ``CONTAINER_TESTS=required``),
where that is a failure. Build settings for machines without a registry or behind a TLS proxy
(tools/docker_engine.sh and .ci/run set them):

- ``CONTAINER_PYTHON_IMAGE``: the Dockerfile's ``PYTHON_IMAGE`` (default: the official image);
- ``CONTAINER_BUILD_NETWORK``: ``docker buildx build --network`` (e.g. ``host``);
- ``CONTAINER_CA_BUNDLE``: a CA bundle handed to pip as the ``ca-bundle`` build secret.

Containers and networks carry the label ``io.mnist-serving.test`` and are removed here; images
keep their compose tags so a re-run reuses their layers.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from contract import INPUT_NAME, OUTPUT_CLASSES, SIGNATURE_NAME
from loadtest.record.recorder import parse_key
from tests.containers_support import (
    LABEL,
    LOADTEST_IMAGE,
    ROOT,
    SERVER_IMAGES,
    Compose,
    Container,
    Images,
    build_image,
    csv_rows,
    docker,
    engine_fixture,  # noqa: F401 (the session fixture `engine`, autouse)
    run_server,
    wait_healthy,
)

# The first test also builds the images: a cold build (TensorFlow wheels downloaded) takes minutes.
pytestmark = [pytest.mark.containers, pytest.mark.timeout(2400)]

K8S_DIR = ROOT / "deploy" / "k8s"
RUN_ID = f"{os.getpid()}"
MODELS_IMAGE = "mnist-serving:onnx-models"
GRACE_S = 30  # --shutdown_grace_seconds of compose.yaml; docker stop gets GRACE_S + 10
LOCUST_RUN_S = 15
LOCUST_USERS = 8
IMAGES = 16


@pytest.fixture(scope="module")
def images(engine, trained_artifacts) -> Images:
    """The four targets, built once (BuildKit reuses the shared stages and the pip cache)."""
    images = Images()
    images.builds.append(build_image("onnx", SERVER_IMAGES["onnx"]))
    images.builds.append(build_image("loadtest", LOADTEST_IMAGE))
    images.builds.append(build_image("tensorflow", SERVER_IMAGES["tensorflow"]))
    # The export's parity check on 1,000 images (10,000 by default) keeps the tier short.
    images.builds.append(
        build_image(
            "onnx-models",
            MODELS_IMAGE,
            "--build-context",
            f"artifacts={trained_artifacts}",
            "--build-arg",
            "PARITY_IMAGES=1000",
        )
    )
    return images


@pytest.fixture(scope="module")
def models_dir(exported_repository) -> Iterator[Path]:
    """The exported repository in a world-readable directory (the container's uid 10001 reads
    the bind mount; pytest's own temporary directories are private to this user)."""
    root = Path(tempfile.mkdtemp(prefix="mnist-serving-containers-"))
    try:
        models = root / "models"
        shutil.copytree(exported_repository, models)
        # Batching with a long timeout keeps requests in flight when docker stop arrives.
        (models / "batching.config").write_text(
            "max_batch_size { value: 64 } batch_timeout_micros { value: 1000000 } "
            "num_batch_threads { value: 1 }\n"
        )
        for path in [root, *root.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        yield models
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_images_build_and_report_their_size(images):
    for build in images.builds:
        print(
            f"image {build.tag} (target {build.target}): built in {build.seconds:.1f} s, "
            f"{build.size_bytes / 1e6:.0f} MB"
        )
    assert [b.tag for b in images.builds] == [
        SERVER_IMAGES["onnx"],
        LOADTEST_IMAGE,
        SERVER_IMAGES["tensorflow"],
        MODELS_IMAGE,
    ]
    sizes = {b.tag: b.size_bytes for b in images.builds}
    # TensorFlow is the bulk of the TensorFlow image and absent from the ONNX one.
    assert sizes[SERVER_IMAGES["onnx"]] < sizes[SERVER_IMAGES["tensorflow"]] / 2


def test_onnx_image_has_no_tensorflow(images):
    script = (
        "import importlib.metadata as m, importlib.util as u, json; "
        "names = {d.metadata['Name'].lower() for d in m.distributions()}; "
        "print(json.dumps({'tensorflow_python': u.find_spec('tensorflow.python') is not None, "
        "'dists': sorted(names & {'tensorflow', 'tensorflow-cpu', 'keras', 'tf2onnx', "
        "'tf-keras', 'tensorboard'}), "
        "'protos': u.find_spec('tensorflow_serving.apis.predict_pb2') is not None}))"
    )
    for image, has_tf in ((SERVER_IMAGES["onnx"], False), (SERVER_IMAGES["tensorflow"], True)):
        found = json.loads(
            docker("run", "--rm", "--label", LABEL, "--entrypoint", "python", image, "-c", script)
        )
        assert found["protos"] is True, image
        assert found["tensorflow_python"] is has_tf, (image, found)
        assert bool(found["dists"]) is has_tf, (image, found)


# ------------------------------------------------------------------ one server container


@pytest.fixture(scope="module", params=sorted(SERVER_IMAGES))
def server(request, images, models_dir) -> Iterator[tuple[str, Container]]:
    """One server container per runtime, restricted as compose.yaml runs it."""
    runtime = request.param
    container = run_server(
        [
            "--read-only",
            "--tmpfs",
            "/tmp",
            "--volume",
            f"{models_dir}:/models:ro",
            "--volume",
            f"{ROOT / 'deploy' / 'models.config'}:/etc/mnist-serving/models.config:ro",
        ],
        SERVER_IMAGES[runtime],
        [
            f"--runtime={runtime}",
            "--port=8500",
            "--rest_api_port=8501",
            "--model_config_file=/etc/mnist-serving/models.config",
            "--enable_batching",
            "--batching_parameters_file=/models/batching.config",
            f"--shutdown_grace_seconds={GRACE_S}",
        ],
    )
    try:
        yield runtime, container
    finally:
        docker("rm", "-f", container.id, check=False)


def _tf_serving_predict(target: str, model: str, x: np.ndarray, timeout_s: float = 30) -> Any:
    """A TensorFlow Serving client exactly as its users write it (tensorflow-serving-api)."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = SIGNATURE_NAME
    request.inputs[INPUT_NAME].CopyFrom(tf.make_tensor_proto(x, dtype=tf.float32))
    with grpc.insecure_channel(target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        reply = stub.Predict(request, timeout=timeout_s)
    return tf.make_ndarray(reply.outputs[OUTPUT_CLASSES])


@pytest.fixture(scope="module")
def test_images(mnist) -> np.ndarray:
    return (mnist.x_test[:IMAGES].astype(np.float32) / 255.0).reshape(IMAGES, 28, 28, 1)


def test_server_container_is_healthy_restricted_and_correct(server, onnx_reference, test_images):
    runtime, container = server
    wait_healthy(container)
    print(f"{runtime}: healthy {container.healthy_after_s:.1f} s after docker run")
    # The server process (PID 1) runs as 10001:10001.
    status = docker("exec", container.id, "cat", "/proc/1/status")
    uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
    gid_line = next(line for line in status.splitlines() if line.startswith("Gid:"))
    assert uid_line.split()[1:] == ["10001"] * 4
    assert gid_line.split()[1:] == ["10001"] * 4
    # Read-only root filesystem and read-only /models: writes fail (as root too, for /models).
    inspected = json.loads(docker("inspect", container.id))[0]
    assert inspected["HostConfig"]["ReadonlyRootfs"] is True
    mounts = {m["Destination"]: m for m in inspected["Mounts"]}
    assert mounts["/models"]["RW"] is False
    for path in ("/srv/probe", "/opt/venv/probe", "/models/probe"):
        result = subprocess.run(
            ["docker", "exec", "--user", "0", container.id, "touch", path],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert result.returncode != 0
        assert "Read-only file system" in result.stderr, result.stderr
    # The unchanged TF Serving client through the published port: the classes ONNX Runtime
    # computes in-process for the same models.
    for model, reference in onnx_reference.items():
        expected = reference.predict(SIGNATURE_NAME, {INPUT_NAME: test_images})[OUTPUT_CLASSES]
        classes = _tf_serving_predict(container.grpc_target, model, test_images)
        np.testing.assert_array_equal(
            classes.reshape(-1), expected.reshape(-1), err_msg=f"{runtime} {model}"
        )


def test_docker_stop_under_load_drains_and_exits_zero(server, test_images):
    runtime, container = server
    wait_healthy(container)
    outcomes: list[tuple[float, float, str]] = []  # (sent, answered, "ok" or the gRPC code)
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            sent = time.monotonic()
            try:
                classes = _tf_serving_predict(container.grpc_target, "standard", test_images[:2])
                outcome = "ok" if classes.shape == (2,) else f"shape {classes.shape}"
            except grpc.RpcError as exc:
                outcome = str(exc.code())
            outcomes.append((sent, time.monotonic(), outcome))
            if outcome != "ok":
                return

    threads = [threading.Thread(target=load) for _ in range(6)]
    for thread in threads:
        thread.start()
    time.sleep(3.0)  # with a 1 s batch timeout, requests are always waiting in a batch
    stop_sent = time.monotonic()
    docker("stop", "--time", str(GRACE_S + 10), container.id, timeout=GRACE_S + 60)
    stop_took = time.monotonic() - stop_sent
    stop.set()
    for thread in threads:
        thread.join(timeout=60)
    state = json.loads(docker("inspect", "--format", "{{json .State}}", container.id))
    print(
        f"{runtime}: docker stop took {stop_took:.1f} s; "
        f"{sum(o == 'ok' for _, _, o in outcomes)} requests answered"
    )
    assert state["ExitCode"] == 0, docker("logs", container.id, check=False)
    assert state["OOMKilled"] is False
    assert stop_took < GRACE_S + 10  # exited by itself, not killed at the end of the grace
    in_flight = [o for s, a, o in outcomes if s < stop_sent < a]
    assert in_flight, "no request was in flight when docker stop was sent"
    assert all(o == "ok" for o in in_flight), in_flight
    # Requests sent before the stop were all answered; later ones may only be refused: gRPC
    # answers a call arriving after shutdown began with CANCELLED, a closed port with UNAVAILABLE.
    assert all(o == "ok" for s, _, o in outcomes if s < stop_sent)
    refused = {"ok", "StatusCode.UNAVAILABLE", "StatusCode.CANCELLED"}
    assert {o for s, _, o in outcomes if s >= stop_sent} <= refused


# ------------------------------------------------------------------ compose deployment


def test_compose_deployment_runs_distributed_locust_against_both_servers(images, models_dir):
    compose = Compose(f"mnist-serving-test-{RUN_ID}", models_dir)
    results = Path(tempfile.mkdtemp(prefix="mnist-serving-compose-"))
    try:
        started = time.monotonic()
        compose("up", "--detach", "--no-build", "--pull", "never", "--wait",
                "server-onnx", "server-tensorflow")  # fmt: skip
        print(f"compose: both servers healthy {time.monotonic() - started:.1f} s after up")
        for runtime in ("onnx", "tensorflow"):
            env = {
                "LOCUST_HOST": f"http://server-{runtime}:8501",
                "LOCUST_GRPC_TARGET": f"server-{runtime}:8500",
                "LOCUST_MODEL": "standard,separable",
                "LOCUST_HEADLESS": "true",
                "LOCUST_USERS": str(LOCUST_USERS),
                "LOCUST_SPAWN_RATE": str(LOCUST_USERS),
                "LOCUST_RUN_TIME": f"{LOCUST_RUN_S}s",
                "LOCUST_EXPECT_WORKERS": "2",
                "LOCUST_CSV": f"/results/{runtime}",
                "LOCUST_HDR_OUTPUT": f"/results/{runtime}-hdr.json",
            }
            compose("up", "--detach", "--no-build", "--pull", "never", "--force-recreate",
                    "master", "worker", env=env)  # fmt: skip
            (master,) = compose.ids("master")
            workers = compose.ids("worker")
            assert len(workers) == 2
            for container in (master, *workers):
                code = docker("wait", container, timeout=LOCUST_RUN_S + 180)
                assert code == "0", docker("logs", container, check=False)[-4000:]
        # The named volume outlives the master: copy the results out of its container.
        (master,) = compose.ids("master")
        docker("cp", f"{master}:/results/.", str(results))
        for runtime in ("onnx", "tensorflow"):
            _check_locust_results(results, runtime)
    finally:
        compose("down", "--volumes", "--remove-orphans", "--timeout", "45")
        shutil.rmtree(results, ignore_errors=True)


def _check_locust_results(results: Path, runtime: str) -> None:
    merged = json.loads((results / f"{runtime}-hdr.json").read_text())
    assert merged["processes"] == 2, "both workers' snapshots reached the master"
    for snapshot in merged["snapshots"]:
        assert sum(entry["window_requests"] for entry in snapshot["keys"].values()) > 0
    rows = {row["model"]: row for row in merged["results"]}
    assert set(rows) == {"standard", "separable"}
    for model, row in rows.items():
        per_worker = [
            entry["window_requests"]
            for snap in merged["snapshots"]
            for key, entry in snap["keys"].items()
            if parse_key(key)[0] == model
        ]
        # Locust's dispatcher may give all of one model's users to one worker: what must hold
        # is that the workers' counts add up to the master's merged count.
        assert sum(per_worker) == row["requests"], (model, per_worker)
        assert row["failures"] == 0
        assert row["requests"] > 0
        print(
            f"compose {runtime} {model}: {row['requests']} requests "
            f"({' + '.join(map(str, per_worker))} by the workers), "
            f"{row['requests_per_s']:.0f} req/s, p50 {row['p50_ms']:.2f} ms, "
            f"p99 {row['p99_ms']:.2f} ms, 0 failures"
        )
    stats = {r["Name"]: r for r in csv_rows(results / f"{runtime}_stats.csv")}
    for model, row in rows.items():
        # Locust's own count (its statistics, a separate channel from the HDR snapshots) agrees
        # with the merged histograms, up to one request per user still running when the HDR
        # window closed.
        (counted,) = [int(r["Request Count"]) for n, r in stats.items() if n.startswith(model)]
        assert counted - LOCUST_USERS <= row["requests"] <= counted, (model, counted, row)
    aggregated = stats.pop("Aggregated")
    assert int(aggregated["Failure Count"]) == 0
    assert int(aggregated["Request Count"]) > 0
    assert sum(int(r["Request Count"]) for r in stats.values()) == int(aggregated["Request Count"])
    assert (results / f"{runtime}_stats_history.csv").stat().st_size > 0
    assert len(csv_rows(results / f"{runtime}_failures.csv")) == 0


# ------------------------------------------------------------------ Kubernetes container spec


def _server_deployment() -> dict[str, Any]:
    for document in yaml.safe_load_all((K8S_DIR / "server.yaml").read_text()):
        if document and document["kind"] == "Deployment":
            return document
    raise AssertionError("no Deployment in deploy/k8s/server.yaml")


def _config_map(name: str) -> dict[str, str]:
    for path in K8S_DIR.glob("*.yaml"):
        for document in yaml.safe_load_all(path.read_text()):
            if (
                document
                and document["kind"] == "ConfigMap"
                and document["metadata"]["name"] == name
            ):
                return document["data"]
    raise AssertionError(f"no ConfigMap {name}")


def _quantity_bytes(value: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "K": 10**3, "M": 10**6, "G": 10**9}
    for suffix, factor in units.items():
        if value.endswith(suffix):
            return int(float(value[: -len(suffix)]) * factor)
    return int(value)


def _cpus(value: str) -> str:
    return str(int(value[:-1]) / 1000) if value.endswith("m") else value


def k8s_docker_run_args(pod: dict[str, Any], config_dir: Path) -> tuple[list[str], list[str]]:
    """``docker run`` options and command arguments equivalent to the pod's only container:
    user, read-only root, dropped capabilities, no privilege escalation, resources, env and
    the volumes (ConfigMaps as read-only files, emptyDirs as tmpfs)."""
    (container,) = pod["containers"]
    pod_security = pod.get("securityContext", {})
    security = container.get("securityContext", {})
    options: list[str] = []
    user = security.get("runAsUser", pod_security.get("runAsUser"))
    group = security.get("runAsGroup", pod_security.get("runAsGroup"))
    if user is not None:
        options += ["--user", f"{user}:{group}" if group is not None else str(user)]
    if security.get("readOnlyRootFilesystem"):
        options.append("--read-only")
    for capability in security.get("capabilities", {}).get("drop", []):
        options += ["--cap-drop", capability]
    for capability in security.get("capabilities", {}).get("add", []):
        options += ["--cap-add", capability]
    if security.get("allowPrivilegeEscalation") is False:
        options += ["--security-opt", "no-new-privileges"]
    limits = container.get("resources", {}).get("limits", {})
    if "cpu" in limits:
        options += ["--cpus", _cpus(str(limits["cpu"]))]
    if "memory" in limits:
        options += ["--memory", str(_quantity_bytes(str(limits["memory"])))]
    for variable in container.get("env", []):
        options += ["--env", f"{variable['name']}={variable['value']}"]
    volumes = {volume["name"]: volume for volume in pod.get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        volume = volumes[mount["name"]]
        if "configMap" in volume:
            source = config_dir / mount["name"]
            source.mkdir(mode=0o755)
            for key, text in _config_map(volume["configMap"]["name"]).items():
                (source / key).write_text(text)
                (source / key).chmod(0o644)
            mode = "ro" if mount.get("readOnly") else "rw"
            options += ["--volume", f"{source}:{mount['mountPath']}:{mode}"]
        elif "emptyDir" in volume:
            size = volume["emptyDir"].get("sizeLimit")
            suffix = f":size={_quantity_bytes(size)}" if size else ""
            options += ["--tmpfs", f"{mount['mountPath']}{suffix}"]
        else:
            raise AssertionError(f"volume type of {volume} is not mapped to docker run")
    return options, list(container.get("args", []))


def _grpc_probe(target: str, timeout_s: float) -> bool:
    """What the kubelet's gRPC probe checks: grpc.health.v1 Check, service "", SERVING."""
    try:
        with grpc.insecure_channel(target) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=timeout_s
            )
    except grpc.RpcError:
        return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def test_kubernetes_server_container_spec_runs_under_docker(images, onnx_reference, test_images):
    deployment = _server_deployment()
    pod = deployment["spec"]["template"]["spec"]
    (spec,) = pod["containers"]
    config_dir = Path(tempfile.mkdtemp(prefix="mnist-serving-k8s-"))
    config_dir.chmod(0o755)
    container: Container | None = None
    try:
        options, args = k8s_docker_run_args(pod, config_dir)
        pairs = set(itertools.pairwise(options))
        assert "--read-only" in options
        assert {
            ("--user", "10001:10001"),
            ("--cap-drop", "ALL"),
            ("--security-opt", "no-new-privileges"),
        } <= pairs
        # runAsNonRoot: the kubelet refuses an image whose user is root or not numeric.
        assert pod["securityContext"]["runAsNonRoot"] is True
        image_user = docker("image", "inspect", "--format", "{{.Config.User}}", spec["image"])
        assert image_user.split(":")[0].isdigit() and image_user.split(":")[0] != "0"
        container = run_server(options, spec["image"], args)
        # startupProbe: SERVING within periodSeconds * failureThreshold.
        startup = spec["startupProbe"]
        target = f"127.0.0.1:{container.grpc_target.rsplit(':', 1)[1]}"
        assert startup["grpc"]["port"] == 8500
        budget = startup["periodSeconds"] * startup["failureThreshold"]
        deadline = time.monotonic() + budget
        while not _grpc_probe(target, startup.get("timeoutSeconds", 1)):
            assert time.monotonic() < deadline, docker("logs", container.id, check=False)
            time.sleep(startup["periodSeconds"])
        print(f"k8s spec: startupProbe passed {time.monotonic() - container.started:.1f} s in")
        for probe in ("readinessProbe", "livenessProbe"):
            assert _grpc_probe(target, spec[probe]["timeoutSeconds"]), probe
        # It serves under those restrictions, with the models baked into the image.
        for model, reference in onnx_reference.items():
            expected = reference.predict(SIGNATURE_NAME, {INPUT_NAME: test_images})[OUTPUT_CLASSES]
            classes = _tf_serving_predict(target, model, test_images)
            np.testing.assert_array_equal(classes.reshape(-1), expected.reshape(-1), err_msg=model)
        capabilities = docker("exec", container.id, "grep", "^CapEff", "/proc/1/status")
        assert capabilities.split()[1] == "0000000000000000"
        # The preStop hook's command runs in the container; then the stop drains within the pod's
        # terminationGracePeriodSeconds and the server exits 0.
        docker("exec", container.id, *spec["lifecycle"]["preStop"]["exec"]["command"])
        grace = pod["terminationGracePeriodSeconds"]
        stopped = time.monotonic()
        docker("stop", "--time", str(grace), container.id, timeout=grace + 30)
        assert time.monotonic() - stopped < grace
        exit_code = docker("inspect", "--format", "{{.State.ExitCode}}", container.id)
        assert exit_code == "0", docker("logs", container.id, check=False)
    finally:
        if container is not None:
            docker("rm", "-f", container.id, check=False)
        shutil.rmtree(config_dir, ignore_errors=True)
