"""Faults in the deployment (docs/reliability.md, "Faults in the deployment"; issue #22).

The compose deployment (deploy/compose.yaml: the ONNX server, a distributed Locust master with two
workers running the project's locustfile headless, gRPC and REST users of both models) plus the
typed client (serving.client, one gRPC and one REST thread on the host, deadline
``DEADLINE_S``), while a fault is injected:

1. a crash: SIGKILL from the host to the server container's main process, after which Docker's
   restart policy (``unless-stopped``) starts it again. ``docker kill`` would be the obvious tool,
   but this engine records it as a manual stop and then never restarts the container; a crash (an
   OOM kill, a segfault) is what the policy is for, and a signal from the host is one;
   the same for one worker process of a container running ``--workers 2``;
2. a frozen server: ``docker pause`` (the cgroup freezer) for longer than the deadline;
3. a network cut: ``docker network disconnect`` of the server from the compose network, then
   ``connect`` with its service alias;
4. a new model version written on the host (as ``python -m export`` does, one atomic rename) into
   the repository the container mounts read-only, and the old version removed.

Each test states its bound on failed requests and checks it: a Locust user or typed-client thread
has one request in flight, and after a failure waits ``FAILURE_PAUSE_S`` (loadtest/record/users.py)
before the next, so while the server cannot answer it fails at most once per
``FAILURE_PAUSE_S`` (a refused connection) or once per deadline plus that pause (a request that
vanishes). Recovery times are measured by the typed client (every request's send and answer time)
and by Locust's history (one row a second, fed by worker reports every 3 s: its times are late by
up to 4 s).

With ``FAULTS_RESULTS=<path>`` the measurements are written there as JSON, with the commit and the
command (results/containers/faults-*.json come from such runs). netem (delay, loss) needs the
kernel's sch_netem: the test for it runs where ``tc qdisc add ... netem`` works in a throwaway
network namespace and is skipped, with the reason, where it does not.
"""

from __future__ import annotations

import datetime
import itertools
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from loadtest.run.portable import portable
from serving.client import RECONNECT_OPTIONS, ClientError, ServingClient
from tests.containers_support import (
    LOADTEST_IMAGE,
    ROOT,
    SERVER_IMAGES,
    Compose,
    build_image,
    csv_rows,
    docker,
    engine_fixture,  # noqa: F401 (the session fixture `engine`, autouse)
)

pytestmark = [pytest.mark.containers, pytest.mark.timeout(2400)]

USERS = 4  # one per (model, protocol): standard and separable, gRPC and REST
DEADLINE_S = 2.0  # Locust's --request-timeout and the typed client's deadline
# Where the fault involves no deadline (a new model version), a long one: on a 2-core machine
# shared with other work a starved server may pause for 2 s, and that is not what is tested.
SLACK_DEADLINE_S = 10.0
FAILURE_PAUSE_S = 0.1  # loadtest/record/users.py's FAILURE_PAUSE_S (checked below)
MAX_BACKOFF_S = dict(RECONNECT_OPTIONS)["grpc.max_reconnect_backoff_ms"] / 1000
REPORT_LAG_S = 4.0  # Locust: worker reports every 3 s, history rows every 1 s
PROBE_INTERVAL_S = 0.05  # the typed client's pause between successful requests
FAULT_AT_S = 6.0  # after Locust's users are all running
RECOVERY_LIMIT_S = 90.0
SERVICE = "server-onnx"


# ------------------------------------------------------------------ the deployment


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Deployment:
    compose: Compose
    grpc_port: int
    rest_port: int
    results: Path
    records: list[dict[str, Any]] = field(default_factory=list)

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def rest_target(self) -> str:
        return f"127.0.0.1:{self.rest_port}"

    def server(self) -> str:
        (container,) = self.compose.ids(SERVICE)
        return container

    def up_server(self, workers: int = 1) -> None:
        self.compose("up", "--detach", "--no-build", "--pull", "never", "--wait",
                     "--force-recreate", SERVICE, env={"SERVER_WORKERS": str(workers)})  # fmt: skip


@pytest.fixture(scope="module")
def fault_images(engine) -> None:
    """The server and Locust images of compose.yaml (BuildKit reuses what is unchanged)."""
    build_image("onnx", SERVER_IMAGES["onnx"])
    build_image("loadtest", LOADTEST_IMAGE)


@pytest.fixture(scope="module")
def repository(exported_repository) -> Iterator[Path]:
    """A world-readable copy of the exported repository (the container's uid 10001 reads the
    bind mount); the new-version test writes into it."""
    root = Path(tempfile.mkdtemp(prefix="mnist-serving-faults-"))
    try:
        models = root / "models"
        shutil.copytree(exported_repository, models)
        for path in [root, *root.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        yield models
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def deployment(fault_images, repository) -> Iterator[Deployment]:
    """compose.yaml's server-onnx (restart: unless-stopped) with its host ports moved to free
    ones (other runs on this engine may hold 8500/8501); Locust runs start per test."""
    grpc_port, rest_port = _free_port(), _free_port()
    work = Path(tempfile.mkdtemp(prefix="mnist-serving-faults-run-"))
    override = work / "ports.yaml"
    override.write_text(
        "services:\n"
        f"  {SERVICE}:\n"
        "    ports: !override\n"
        f'      - "127.0.0.1:{grpc_port}:8500"\n'
        f'      - "127.0.0.1:{rest_port}:8501"\n'
        "  master:\n"
        "    ports: !override []\n"
    )
    compose = Compose(f"mnist-serving-faults-{os.getpid()}", repository, (override,))
    deployment = Deployment(compose, grpc_port, rest_port, work)
    try:
        deployment.up_server()
        yield deployment
    finally:
        compose("down", "--volumes", "--remove-orphans", "--timeout", "45")
        _write_results(deployment.records)
        shutil.rmtree(work, ignore_errors=True)


def _write_results(records: list[dict[str, Any]]) -> None:
    path = os.environ.get("FAULTS_RESULTS")
    if not path or not records:
        return
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    document = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "commit": commit,
        "worktree_clean": not dirty,
        # No machine paths in a committed record (tests/test_results.py).
        "command": portable(
            f"FAULTS_RESULTS={path} .venv/bin/python -m pytest {' '.join(sys.argv[1:])}"
        ),
        "machine": {
            "cpus": os.cpu_count(),
            "docker": docker("version", "--format", "{{.Server.Version}}"),
            "kernel": os.uname().release,
        },
        "settings": {
            "locust_users": USERS,
            "deadline_s": DEADLINE_S,
            "failure_pause_s": FAILURE_PAUSE_S,
            "grpc_channel_options": dict(RECONNECT_OPTIONS),
        },
        "faults": records,
    }
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(document, indent=2) + "\n")
    print(f"faults: measurements written to {path}")


# ------------------------------------------------------------------ load: Locust and the client


@dataclass
class Outcome:
    protocol: str
    sent: float  # wall clock (time.time(), comparable with Locust's history timestamps)
    answered: float
    code: str  # "OK", a gRPC status name, an HTTP status or an exception class
    version: int | None = None


class Probe(threading.Thread):
    """The typed client in a loop, one request in flight, both models in turn."""

    def __init__(
        self, protocol: str, target: str, images: np.ndarray, deadline_s: float = DEADLINE_S
    ) -> None:
        super().__init__(daemon=True)
        self.protocol = protocol
        self.client = ServingClient(target, protocol, timeout_s=deadline_s)  # type: ignore[arg-type]
        self.images = images
        self.outcomes: list[Outcome] = []
        self.halt = threading.Event()

    def run(self) -> None:
        models = ("standard", "separable")
        index = 0
        while not self.halt.is_set():
            model = models[index % 2]
            index += 1
            sent = time.time()
            version = None
            try:
                answer = self.client.predict(model, self.images[index % len(self.images)][None])
                code = "OK" if answer.classes.shape == (1,) else "bad shape"
                version = answer.version
            except ClientError as exc:
                code = exc.code
            except (OSError, ValueError) as exc:
                code = type(exc).__name__
            self.outcomes.append(Outcome(self.protocol, sent, time.time(), code, version))
            time.sleep(PROBE_INTERVAL_S if code == "OK" else FAILURE_PAUSE_S)
        self.client.close()

    def stop(self) -> list[Outcome]:
        self.halt.set()
        self.join(timeout=SLACK_DEADLINE_S + 10)
        return self.outcomes


def logs(container: str) -> str:
    """The container's output, stdout and stderr (where Locust and the server log)."""
    return subprocess.run(
        ["docker", "logs", container],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=60,
        check=False,
    ).stdout


@dataclass
class LocustRun:
    name: str
    master: str
    workers: list[str]
    spawned: float  # wall clock when the master logged that all users run


def start_locust(
    deployment: Deployment, name: str, run_s: int, deadline_s: float = DEADLINE_S
) -> LocustRun:
    env = {
        "LOCUST_HOST": f"http://{SERVICE}:8501",
        "LOCUST_GRPC_TARGET": f"{SERVICE}:8500",
        "LOCUST_MODEL": "standard,separable",
        "LOCUST_PROTOCOL": "grpc,rest",
        "LOCUST_HEADLESS": "true",
        "LOCUST_USERS": str(USERS),
        "LOCUST_SPAWN_RATE": str(USERS),
        "LOCUST_RUN_TIME": f"{run_s}s",
        "LOCUST_EXPECT_WORKERS": "2",
        "LOCUST_REQUEST_TIMEOUT": str(deadline_s),
        "LOCUST_CSV": f"/results/{name}",
        "LOCUST_HDR_OUTPUT": f"/results/{name}-hdr.json",
    }
    # --no-deps: only the ONNX server runs (the TensorFlow one is not under test here).
    deployment.compose("up", "--detach", "--no-build", "--pull", "never", "--force-recreate",
                       "--no-deps", "master", "worker", env=env)  # fmt: skip
    (master,) = deployment.compose.ids("master")
    workers = deployment.compose.ids("worker")
    assert len(workers) == 2
    deadline = time.monotonic() + 180
    # Locust's line when spawning ends; a loaded machine's workers may report late, and then it
    # says "Spawning is complete and report waittime is expired" instead.
    while not re.search("All users spawned|Spawning is complete", logs(master)):
        state = docker("inspect", "--format", "{{.State.Status}}", master)
        assert state == "running", logs(master)[-4000:]
        assert time.monotonic() < deadline, logs(master)[-4000:]
        time.sleep(0.5)
    return LocustRun(name, master, workers, time.time())


@dataclass
class LocustResult:
    requests: int
    failures: int
    errors: dict[str, int]
    history: list[tuple[float, int, int, int]]  # (timestamp, users, requests, failures)
    restarts: int
    users_during_run: list[int] = field(default_factory=list)

    def failures_reported_after(self, when: float) -> int:
        """Failures reported in history rows after ``when`` (the total, when none is later)."""
        before = [f for t, _, _, f in self.history if t <= when]
        return self.failures - (before[-1] if before else 0)

    def successes_again_after(self, when: float) -> float:
        """The first history row after ``when`` whose successes grew over the previous row."""
        previous = None
        for t, _, requests, failures in self.history:
            ok = requests - failures
            if t > when and previous is not None and ok > previous:
                return t
            previous = ok
        return math.nan


def finish_locust(deployment: Deployment, run: LocustRun, run_s: int) -> LocustResult:
    for container in (run.master, *run.workers):
        docker("wait", container, timeout=run_s + 180)
    restarts = sum(
        int(docker("inspect", "--format", "{{.RestartCount}}", c))
        for c in (run.master, *run.workers)
    )
    out = deployment.results / run.name
    out.mkdir()
    docker("cp", f"{run.master}:/results/.", str(out))
    stats = {r["Name"]: r for r in csv_rows(out / f"{run.name}_stats.csv")}
    aggregated = stats["Aggregated"]
    errors: dict[str, int] = {}
    for row in csv_rows(out / f"{run.name}_failures.csv"):
        error = re.sub(r"0x[0-9a-f]+|\d+\.\d+\.\d+\.\d+:\d+", "…", row["Error"])[:160]
        errors[error] = errors.get(error, 0) + int(row["Occurrences"])
    history = [
        (
            float(r["Timestamp"]),
            int(r["User Count"]),
            int(r["Total Request Count"]),
            int(r["Total Failure Count"]),
        )
        for r in csv_rows(out / f"{run.name}_stats_history.csv")
        if r["Name"] == "Aggregated"
    ]
    result = LocustResult(
        int(aggregated["Request Count"]),
        int(aggregated["Failure Count"]),
        errors,
        history,
        restarts,
    )
    # The users kept running through the fault: the user count of every history row from the
    # first with all users (the master counts users from the workers' reports, which may come
    # late on a loaded machine) to the end of the run (when Locust stops them).
    counts = [(t, users) for t, users, _, _ in history if t < run.spawned + run_s - 2]
    first_full = next((i for i, (_, users) in enumerate(counts) if users == USERS), len(counts))
    result.users_during_run = sorted({users for _, users in counts[first_full:]})
    return result


@pytest.fixture(scope="module")
def digits(mnist) -> np.ndarray:
    return (mnist.x_test[:32].astype(np.float32) / 255.0).reshape(32, 28, 28, 1)


class Load:
    """Locust (compose master + 2 workers) and the typed client (gRPC and REST) at once."""

    def __init__(
        self,
        deployment: Deployment,
        digits: np.ndarray,
        name: str,
        run_s: int,
        deadline_s: float = DEADLINE_S,
    ):
        self.deployment = deployment
        self.run_s = run_s
        self.locust = start_locust(deployment, name, run_s, deadline_s)
        self.probes = [
            Probe("grpc", deployment.grpc_target, digits, deadline_s),
            Probe("rest", deployment.rest_target, digits, deadline_s),
        ]
        for probe in self.probes:
            probe.start()

    def finish(self) -> tuple[LocustResult, list[Outcome]]:
        result = finish_locust(self.deployment, self.locust, self.run_s)
        outcomes = [o for probe in self.probes for o in probe.stop()]
        return result, outcomes

    def remaining_s(self) -> float:
        return self.locust.spawned + self.run_s - time.time()


# ------------------------------------------------------------------ measuring


def health_status(target: str, timeout_s: float = 0.5) -> str:
    """grpc.health.v1's answer (what the kubelet's probe and the image's healthcheck ask):
    SERVING, NOT_SERVING, or the gRPC status of a failed check."""
    try:
        with grpc.insecure_channel(target) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=timeout_s
            )
    except grpc.RpcError as exc:
        return str(exc.code().name)
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


def serving_at(target: str, timeout_s: float = 0.5) -> bool:
    return health_status(target, timeout_s) == "SERVING"


def wait_serving(target: str, since: float, limit_s: float = RECOVERY_LIMIT_S) -> float:
    """Seconds from ``since`` (wall clock) until ``target`` answers SERVING."""
    deadline = time.monotonic() + limit_s
    while not serving_at(target):
        assert time.monotonic() < deadline, f"{target} not SERVING {limit_s} s after the fault"
        time.sleep(0.1)
    return time.time() - since


def wait_docker_healthy(container: str, since: float) -> float:
    deadline = time.monotonic() + RECOVERY_LIMIT_S
    while docker("inspect", "--format", "{{.State.Health.Status}}", container) != "healthy":
        assert time.monotonic() < deadline, logs(container)[-4000:]
        time.sleep(0.2)
    return time.time() - since


def bound(users: int, window_s: float, interval_s: float) -> int:
    """Failures a set of closed-loop users can have while the server cannot answer for
    ``window_s``: each fails the request it had in flight, then at most one request per
    ``interval_s``."""
    return users * (1 + math.ceil(window_s / interval_s))


def client_figures(outcomes: list[Outcome], fault: float, recovered: float) -> dict[str, Any]:
    """Per protocol: failures, the first success after the fault (seconds from the fault) and
    failures of requests sent after ``recovered``."""
    figures: dict[str, Any] = {}
    for protocol in ("grpc", "rest"):
        mine = [o for o in outcomes if o.protocol == protocol]
        failed = [o for o in mine if o.code != "OK"]
        first_ok = min((o.answered for o in mine if o.code == "OK" and o.sent > fault), default=0)
        figures[protocol] = {
            "requests": len(mine),
            "failures": len(failed),
            "failure_codes": sorted({o.code for o in failed}),
            "first_success_after_fault_s": round(first_ok - fault, 2) if first_ok else None,
            "failures_sent_after_recovery": sum(o.sent > recovered for o in failed),
            "failures_sent_at_s": [round(o.sent - fault, 2) for o in failed][:50],
        }
    return figures


def record(deployment: Deployment, figures: dict[str, Any]) -> None:
    deployment.records.append(figures)
    print(f"fault {figures['fault']}: " + json.dumps(figures, indent=1))


def _check(figures: dict[str, Any], locust: LocustResult, outcomes: list[Outcome]) -> None:
    """The checks every fault shares: failures within the bound, none after recovery (Locust's
    users succeed again without a restart), the typed client back on its own."""
    assert locust.restarts == 0, "a Locust container was restarted"
    assert locust.users_during_run == [USERS], figures
    assert locust.failures <= figures["locust"]["bound"], figures
    assert figures["locust"]["failures_after_recovery"] == 0, figures
    assert locust.requests - locust.failures > 0
    for protocol, row in figures["client"].items():
        assert row["failures"] <= figures["client_bound"], (protocol, figures)
        assert row["failures_sent_after_recovery"] == 0, (protocol, figures)
        assert row["first_success_after_fault_s"] is not None, (protocol, figures)
    # Both models answered after the fault.
    assert any(o.code == "OK" and o.sent > figures["t_recovered"] for o in outcomes)


def _locust_figures(
    locust: LocustResult,
    fault: float,
    recovered: float,
    window_s: float,
    interval_s: float,
    *,
    back: float,
) -> dict[str, Any]:
    """Locust's side. ``back``: when the server answered again; ``recovered``: when every client
    must have found it (no failure reported after this plus the report lag)."""
    # Worker reports every 3 s: a row up to 3 s after the fault may still carry earlier successes.
    again = locust.successes_again_after(max(back, fault + 3.0))
    grew = [t for (_, _, _, f0), (t, _, _, f) in itertools.pairwise(locust.history) if f > f0]
    return {
        "requests": locust.requests,
        "failures": locust.failures,
        "errors": locust.errors,
        "bound": bound(USERS, window_s, interval_s),
        "successes_again_after_fault_s": round(again - fault, 1) if not math.isnan(again) else None,
        "last_failure_reported_after_fault_s": round(max(grew) - fault, 1) if grew else None,
        "failures_after_recovery": locust.failures_reported_after(recovered + REPORT_LAG_S),
        "users_during_run": locust.users_during_run,
        "locust_restarts": locust.restarts,
    }


def test_locustfile_failure_pause_matches():
    text = (ROOT / "loadtest" / "record" / "users.py").read_text()
    assert re.search(rf"^FAILURE_PAUSE_S = {FAILURE_PAUSE_S}$", text, re.MULTILINE)


# ------------------------------------------------------------------ 1. crash and restart


def _main_pid(container: str) -> int:
    return int(docker("inspect", "--format", "{{.State.Pid}}", container))


def test_server_crash_under_load_restarts_and_clients_recover(deployment, digits):
    run_s = 60
    container = deployment.server()
    restarts_before = int(docker("inspect", "--format", "{{.RestartCount}}", container))
    load = Load(deployment, digits, "crash", run_s)
    time.sleep(FAULT_AT_S)
    # The crash: SIGKILL from the host to the container's main process (see the module doc).
    pid = _main_pid(container)
    started = docker("inspect", "--format", "{{.State.StartedAt}}", container)
    fault = time.time()
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + RECOVERY_LIMIT_S
    while docker("inspect", "--format", "{{.State.StartedAt}}", container) == started:
        assert time.monotonic() < deadline, "the restart policy did not restart the container"
        time.sleep(0.1)
    serving_s = wait_serving(deployment.grpc_target, fault)
    healthy_s = wait_docker_healthy(container, fault)
    assert load.remaining_s() > 15, "too little of the run is left after recovery"
    locust, outcomes = load.finish()
    assert int(docker("inspect", "--format", "{{.RestartCount}}", container)) == restarts_before + 1
    recovered = fault + serving_s + MAX_BACKOFF_S
    window = serving_s + MAX_BACKOFF_S
    figures: dict[str, Any] = {
        "fault": "server container crash (SIGKILL to its main process), restart policy",
        "injected": f"kill -9 $(docker inspect -f '{{{{.State.Pid}}}}' <{SERVICE}>)",
        "t_fault": fault,
        "t_recovered": recovered,
        "serving_after_s": round(serving_s, 2),
        "docker_healthy_after_s": round(healthy_s, 2),
        "locust": _locust_figures(
            locust, fault, recovered, window, FAILURE_PAUSE_S, back=fault + serving_s
        ),
        "client": client_figures(outcomes, fault, recovered),
        "client_bound": bound(1, window, FAILURE_PAUSE_S),
        "bound_rule": "users x (1 + ceil((serving_after_s + max back-off 1 s) / 0.1 s pause))",
    }
    record(deployment, figures)
    _check(figures, locust, outcomes)


# ------------------------------------------------------------------ 2. frozen server


def _requests_total(target: str) -> dict[tuple[str, str], float]:
    """serving_requests_total summed by (api, code)."""
    import urllib.request

    with urllib.request.urlopen(f"http://{target}/monitoring/prometheus/metrics", timeout=10) as r:
        text = r.read().decode()
    totals: dict[tuple[str, str], float] = {}
    for line in text.splitlines():
        if not line.startswith("serving_requests_total{"):
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
        key = (labels.get("api", ""), labels.get("code", ""))
        totals[key] = totals.get(key, 0.0) + float(line.rsplit(" ", 1)[1])
    return totals


def test_frozen_server_times_out_at_the_deadline_and_counts_stay_consistent(deployment, digits):
    run_s = 45
    pause_s = 3 * DEADLINE_S
    container = deployment.server()
    before = _requests_total(deployment.rest_target)
    load = Load(deployment, digits, "pause", run_s)
    time.sleep(FAULT_AT_S)
    fault = time.time()
    docker("pause", container)
    time.sleep(pause_s)
    docker("unpause", container)
    thawed = time.time()
    serving_s = wait_serving(deployment.grpc_target, thawed)
    locust, outcomes = load.finish()
    after = _requests_total(deployment.rest_target)
    recovered = thawed + serving_s + MAX_BACKOFF_S
    window = pause_s + serving_s + MAX_BACKOFF_S
    # Waiting for the deadline: every user fails at most once per deadline plus the pause.
    interval = DEADLINE_S + FAILURE_PAUSE_S
    delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    server_ok = sum(v for (api, code), v in delta.items() if code in ("OK", "200"))
    server_all = sum(delta.values())
    client_ok = sum(o.code == "OK" for o in outcomes) + locust.requests - locust.failures
    client_all = len(outcomes) + locust.requests
    timed_out = [o for o in outcomes if o.code != "OK"]
    figures: dict[str, Any] = {
        "fault": f"frozen server (docker pause {pause_s:.0f} s, deadline {DEADLINE_S:.0f} s)",
        "injected": f"docker pause <{SERVICE}>; sleep {pause_s:.0f}; docker unpause <{SERVICE}>",
        "t_fault": fault,
        "t_recovered": recovered,
        "serving_after_unpause_s": round(serving_s, 2),
        "locust": _locust_figures(locust, fault, recovered, window, interval, back=thawed),
        "client": client_figures(outcomes, fault, recovered),
        "client_bound": bound(1, window, interval),
        "client_failure_seconds": sorted({round(o.answered - o.sent, 1) for o in timed_out}),
        "bound_rule": "users x (1 + ceil((pause + serving_after + 1 s) / (deadline + 0.1 s)))",
        "metrics": {
            "server_answered": server_all,
            "server_ok": server_ok,
            "client_sent": client_all,
            "client_ok": client_ok,
            "by_api_code": {f"{a}/{c}": v for (a, c), v in sorted(delta.items()) if v},
        },
    }
    record(deployment, figures)
    _check(figures, locust, outcomes)
    # A timeout at the deadline, not a hang: every failed request took about DEADLINE_S.
    for outcome in timed_out:
        assert outcome.code in ("DEADLINE_EXCEEDED", "TimeoutError"), outcome
        assert DEADLINE_S - 0.1 <= outcome.answered - outcome.sent <= DEADLINE_S + 1.0, outcome
    assert "DEADLINE_EXCEEDED" in figures["client"]["grpc"]["failure_codes"]
    assert "TimeoutError" in figures["client"]["rest"]["failure_codes"]
    # Metrics: nothing answered OK to a client is missing from the server's count (none lost);
    # the server counts no more than was sent (none twice) and at most the requests clients gave
    # up on (the frozen ones, answered late) plus those in flight when Locust stopped beyond the
    # answers clients saw.
    assert server_ok >= client_ok, figures["metrics"]
    assert server_all <= client_all + USERS, figures["metrics"]
    late = locust.failures + len(timed_out) + USERS
    assert server_ok - client_ok <= late, figures["metrics"]


# ------------------------------------------------------------------ 3. network cut


def _network_and_aliases(container: str) -> tuple[str, list[str]]:
    networks = json.loads(
        docker("inspect", "--format", "{{json .NetworkSettings.Networks}}", container)
    )
    ((name, settings),) = networks.items()
    aliases = [a for a in settings.get("Aliases") or [] if not container.startswith(a)]
    return name, sorted({*aliases, SERVICE})


def test_network_cut_clients_reconnect_on_their_own(deployment, digits):
    run_s = 50
    cut_s = 4.0
    container = deployment.server()
    network, aliases = _network_and_aliases(container)
    load = Load(deployment, digits, "netcut", run_s)
    time.sleep(FAULT_AT_S)
    fault = time.time()
    docker("network", "disconnect", network, container)
    time.sleep(cut_s)
    alias_args = [arg for alias in aliases for arg in ("--alias", alias)]
    docker("network", "connect", *alias_args, network, container)
    restored = time.time()
    serving_s = wait_serving(deployment.grpc_target, restored)
    locust, outcomes = load.finish()
    # The users find the server again without help: within the keepalive detection (10 s pings,
    # 5 s timeout) plus one back-off after the network is back.
    keepalive = dict(RECONNECT_OPTIONS)
    reconnect_s = (
        keepalive["grpc.keepalive_time_ms"] + keepalive["grpc.keepalive_timeout_ms"]
    ) / 1000
    recovered = restored + serving_s + reconnect_s + MAX_BACKOFF_S
    window = cut_s + serving_s + reconnect_s + MAX_BACKOFF_S
    first_ok = {
        p: min(
            (
                o.answered
                for o in outcomes
                if o.protocol == p and o.sent > restored and o.code == "OK"
            ),
            default=math.nan,
        )
        for p in ("grpc", "rest")
    }
    figures: dict[str, Any] = {
        "fault": f"network cut ({cut_s:.0f} s)",
        "injected": f"docker network disconnect <net> <{SERVICE}>; sleep {cut_s:.0f}; "
        f"docker network connect --alias {SERVICE} <net> <{SERVICE}>",
        "t_fault": fault,
        "t_recovered": recovered,
        "reachable_after_reconnect_s": round(serving_s, 2),
        "client_success_after_reconnect_s": {
            p: round(t - restored, 2) for p, t in first_ok.items()
        },
        "locust": _locust_figures(locust, fault, recovered, window, FAILURE_PAUSE_S, back=restored),
        "client": client_figures(outcomes, fault, recovered),
        "client_bound": bound(1, window, FAILURE_PAUSE_S),
        "bound_rule": "users x (1 + ceil((cut + reachable_after + keepalive 15 s + 1 s) / 0.1 s))",
    }
    record(deployment, figures)
    _check(figures, locust, outcomes)
    # Failures only during the cut and the reconnection: none of a request sent before the cut.
    assert all(o.code == "OK" for o in outcomes if o.answered < fault), figures


# ------------------------------------------------------------------ 6. a new model version


def _status(target: str, model: str) -> list[dict[str, Any]]:
    with ServingClient(target, "grpc", timeout_s=5) as client:
        return client.status(model)


def _model_versions_gauge(target: str) -> dict[tuple[str, str, str], float]:
    import urllib.request

    with urllib.request.urlopen(f"http://{target}/monitoring/prometheus/metrics", timeout=10) as r:
        text = r.read().decode()
    gauge = {}
    for line in text.splitlines():
        if line.startswith("serving_model_versions{"):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
            gauge[(labels["model"], labels["version"], labels["state"])] = float(
                line.rsplit(" ", 1)[1]
            )
    return gauge


def test_new_model_version_in_a_running_container_fails_no_request(deployment, repository, digits):
    from export.repository import existing_versions, write_version

    run_s = 40
    models = ("standard", "separable")
    old = {m: max(existing_versions(repository / m)) for m in models}
    load = Load(deployment, digits, "version", run_s, deadline_s=SLACK_DEADLINE_S)
    time.sleep(FAULT_AT_S)
    fault = time.time()
    new = {}
    for model in models:
        source = repository / model / str(old[model])

        def populate(staging: Path, source: Path = source) -> None:
            shutil.copytree(source, staging, dirs_exist_ok=True)
            for path in [staging, *staging.rglob("*")]:
                path.chmod(0o755 if path.is_dir() else 0o644)

        new[model] = write_version(repository / model, populate)
        # The old version goes at once, as a user replacing a model would.
        shutil.rmtree(source)
    switched: dict[str, float] = {}
    deadline = time.monotonic() + 60
    while len(switched) < len(models):
        for model in models:
            states = {s["version"]: s["state"] for s in _status(deployment.grpc_target, model)}
            if (
                model not in switched
                and states.get(new[model]) == "AVAILABLE"
                and states.get(old[model]) in (None, "END")
            ):
                switched[model] = time.time() - fault
        assert time.monotonic() < deadline, states
        time.sleep(0.2)
    locust, outcomes = load.finish()
    gauge = _model_versions_gauge(deployment.rest_target)
    served = {
        o.version
        for o in outcomes
        if o.code == "OK" and o.protocol == "grpc" and o.sent > fault + max(switched.values())
    }
    figures: dict[str, Any] = {
        "fault": "new model version written on the host, old one removed",
        "deadline_s": SLACK_DEADLINE_S,
        "injected": "export.repository.write_version (staging dir + one rename) into the "
        "read-only mounted repository, then rm -r of the old version",
        "t_fault": fault,
        "t_recovered": fault,
        "switched_after_s": {m: round(s, 2) for m, s in switched.items()},
        "versions": {m: [old[m], new[m]] for m in models},
        "served_versions_after_switch": sorted(v for v in served if v is not None),
        "model_versions_gauge": {"/".join(k): v for k, v in sorted(gauge.items())},
        "locust": _locust_figures(locust, fault, fault, 0.0, FAILURE_PAUSE_S, back=fault),
        "client": client_figures(outcomes, fault, fault),
        "client_bound": 0,
        "bound_rule": "zero",
    }
    record(deployment, figures)
    assert locust.failures == 0, figures
    assert locust.users_during_run == [USERS], figures
    assert not [o for o in outcomes if o.code != "OK"], figures
    assert served == {new["standard"]} or served == set(new.values()), figures
    for model in models:
        assert gauge.get((model, str(new[model]), "AVAILABLE")) == 1.0, gauge
        assert gauge.get((model, str(old[model]), "AVAILABLE"), 0.0) == 0.0, gauge


# ------------------------------------------------------------------ 1b. a worker process killed


def _children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(p) for p in text.split()]


def test_worker_process_crash_in_a_two_worker_container(deployment, digits):
    run_s = 40
    deployment.up_server(workers=2)
    container = deployment.server()
    parent = _main_pid(container)
    workers = _children(parent)
    assert len(workers) == 2, workers
    load = Load(deployment, digits, "worker", run_s)
    time.sleep(FAULT_AT_S)
    fault = time.time()
    ready_line = "with the onnx runtime"  # each worker logs it once serving
    ready_before = logs(container).count(ready_line)
    os.kill(workers[-1], signal.SIGKILL)
    health: dict[str, int] = {}
    refused_at: list[float] = []  # when a health check that did not answer SERVING was sent
    replaced = serving_again = math.nan
    deadline = time.monotonic() + RECOVERY_LIMIT_S
    while math.isnan(serving_again):
        sent = time.time()
        answer = health_status(deployment.grpc_target, timeout_s=DEADLINE_S)
        health[answer] = health.get(answer, 0) + 1
        if answer != "SERVING":
            refused_at.append(sent - fault)
        now = _children(parent)
        if math.isnan(replaced) and len(now) == 2 and workers[-1] not in now:
            replaced = time.time() - fault
        if logs(container).count(ready_line) > ready_before:
            serving_again = time.time() - fault
        assert time.monotonic() < deadline, now
        time.sleep(0.1)
    locust, outcomes = load.finish()
    figures: dict[str, Any] = {
        "fault": "one worker process of --workers 2 killed (SIGKILL)",
        "injected": "kill -9 <a child pid of the container's main process>",
        "t_fault": fault,
        "t_recovered": fault + MAX_BACKOFF_S,
        "worker_restarted_after_s": round(replaced, 2),
        "replacement_serving_after_s": round(serving_again, 2),
        "health_answers_meanwhile": health,
        "health_failures_sent_after_fault_s": [round(t, 2) for t in refused_at],
        "locust": _locust_figures(
            locust, fault, fault + MAX_BACKOFF_S, 0.0, FAILURE_PAUSE_S, back=fault
        ),
        "client": client_figures(outcomes, fault, fault + MAX_BACKOFF_S),
        "client_bound": 1,
        "bound_rule": "users x 1 (the request in flight on the killed worker's connection)",
    }
    record(deployment, figures)
    # The surviving worker answers throughout. A connection the kernel had already queued on the
    # killed worker's listener (SO_REUSEPORT) is reset: a health check sent at the kill may fail
    # like any request in flight there; every later one answers SERVING.
    assert len(refused_at) <= 1 and all(t < 0.5 for t in refused_at), (health, refused_at)
    _check(figures, locust, outcomes)


# ------------------------------------------------------------------ netem (where it exists)


def _netem_problem() -> str:
    """Why netem cannot be used here ("" when it can), tried in a throwaway network namespace."""
    if shutil.which("tc") is None or shutil.which("unshare") is None:
        return "tc or unshare is not installed"
    probe = subprocess.run(
        ["unshare", "--net", "sh", "-c",
         "ip link set lo up && tc qdisc add dev lo root netem delay 10ms"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    if probe.returncode:
        return (
            f"tc qdisc add dev lo root netem (in a new network namespace): {probe.stderr.strip()}"
        )
    return ""


def test_network_delay_and_loss_with_netem(deployment, digits):
    problem = _netem_problem()
    if problem:
        print(f"netem test skipped: {problem} (the kernel lacks sch_netem)")
        pytest.skip(f"netem unavailable: {problem}")
    run_s = 40
    impair_s = 8.0
    container = deployment.server()
    pid = _main_pid(container)
    netem = ["nsenter", "-t", str(pid), "-n", "tc", "qdisc"]
    load = Load(deployment, digits, "netem", run_s)
    time.sleep(FAULT_AT_S)
    fault = time.time()
    subprocess.run([*netem, "add", "dev", "eth0", "root", "netem", "delay", "100ms", "20ms",
                    "loss", "1%"], check=True)  # fmt: skip
    time.sleep(impair_s)
    subprocess.run([*netem, "del", "dev", "eth0", "root"], check=True)
    restored = time.time()
    locust, outcomes = load.finish()
    window = impair_s
    figures: dict[str, Any] = {
        "fault": f"netem delay 100 ms ± 20 ms, loss 1 % for {impair_s:.0f} s",
        "injected": "nsenter -t <pid> -n tc qdisc add dev eth0 root netem delay 100ms 20ms loss 1%",
        "t_fault": fault,
        "t_recovered": restored,
        "locust": _locust_figures(
            locust, fault, restored, window, DEADLINE_S + FAILURE_PAUSE_S, back=restored
        ),
        "client": client_figures(outcomes, fault, restored),
        "client_bound": bound(1, window, DEADLINE_S + FAILURE_PAUSE_S),
        "bound_rule": "users x (1 + ceil(impaired / (deadline + 0.1 s)))",
    }
    record(deployment, figures)
    _check(figures, locust, outcomes)
