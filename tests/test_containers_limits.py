"""The container tier's squeeze and flood tests (issue #22, items 4 and 5; `make test-containers`).

- Squeezed: the ONNX image under ``docker run --memory 256m / 512m / 2g --cpus 1`` (no swap),
  flooded with the largest requests its admission allows (REST and gRPC at once, many in
  flight) and then with the issue's 64 concurrent 4,096-image gRPC requests: never OOM-killed
  (``State.OOMKilled`` false, ``RestartCount`` 0), the excess refused with UNAVAILABLE / 503 or
  RESOURCE_EXHAUSTED / 413, the cgroup's peak memory below the limit, still serving afterwards.
- Flooded: the same image with ``--ulimit nofile=1024``, the project's locustfile running
  headless on the host against the published ports (one Locust user per model and protocol:
  standard and separable, gRPC and REST, batch 1), a baseline of ``BASELINE_S``, then idle and
  slowloris sockets past the descriptor limit on both ports for at least ``FLOOD_HOLD_S``:
  Locust's users have no failure during the flood (users already connected keep being served),
  a typed client (``serving.client``) of each API created during the flood gets its first answer
  within ``NEW_CLIENT_BOUND_S``, the descriptors stay below the limit, no EMFILE spin, and
  everything answers once the flood stops. Locust's baseline and flood p50 / p99 and failures
  come from its per-second history (``--csv-full-history``).

Each test prints its figures and adds them to ``results/containers/`` (``RESULTS_FILE``) when
``PROTECTIONS_RESULTS`` is set (the committed file came from such a run).
"""

from __future__ import annotations

import csv
import hashlib
import http.client
import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import ExitStack, suppress
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from contract.protos import predict_pb2
from loadtest.run.locust import locust_command
from serving.client import ClientError, ServingClient, predict_request
from serving.model.admission import (
    REST_BYTES_PER_BODY_BYTE,
    budget_from_memory,
    grpc_max_message_bytes,
)
from tests.containers_support import (
    LABEL,
    ROOT,
    SERVER_IMAGES,
    Container,
    build_image,
    docker,
    engine_version,
    published,
    wait_healthy,
)
from tests.test_containers import models_dir  # noqa: F401 - the fixture

pytestmark = [pytest.mark.containers, pytest.mark.timeout(1200)]

# Its own tag and label per checkout: a container tier running at the same time on the same
# engine (another checkout, another engineer) neither replaces the image under test nor removes
# these containers as leftovers, and this module removes only its own.
CHECKOUT = hashlib.sha256(str(ROOT).encode()).hexdigest()[:8]
IMAGE = SERVER_IMAGES["onnx"] + f"-limits-{CHECKOUT}"
LIMITS_LABEL = f"{LABEL}.limits={CHECKOUT}"
MIB = 1 << 20
MAX_REQUEST_BYTES = 64 * MIB  # --max_request_bytes' default
GRPC_MAX_CONCURRENT_RPCS = 0  # --grpc_max_concurrent_rpcs' default
FLOOD_S = 15.0
SENDERS = 12  # per API: max-size requests in flight at once
NEW_CLIENT_BOUND_S = 10.0
# Locust's history rows carry its "current" percentiles: the last 10 s of answers
# (locust.stats.CURRENT_RESPONSE_TIME_PERCENTILE_WINDOW). A baseline and a flood of at least 11 s
# each make the row at the end of each window cover that window alone.
BASELINE_S = 11.0
FLOOD_HOLD_S = 11.0
LOCUST_MODELS = ("standard", "separable")
LOCUST_PROTOCOLS = ("grpc", "rest")
LOCUST_USERS = 4  # one per (model, protocol)
RESULTS_FILE = ROOT / "results" / "containers" / "faults-2026-12-06-protections.json"


@pytest.fixture(scope="session", autouse=True)
def engine() -> str:
    """The engine's version (skip, or fail in CI, without one). Unlike test_containers' fixture
    it removes nothing: other checkouts' containers carry that module's label."""
    return engine_version()


@pytest.fixture(scope="module")
def image(engine) -> str:
    """The ONNX image built from this tree (BuildKit reuses every layer but the project's)."""
    stale = docker("ps", "-aq", "--filter", f"label={LIMITS_LABEL}").split()
    if stale:
        docker("rm", "-f", *stale)
    build_image("onnx", IMAGE)
    return IMAGE


def _start(image: str, models: Path, run_args: list[str], flags: Sequence[str] = ()) -> Container:
    """The server as compose runs it (read-only root and models), ports published on loopback,
    healthy."""
    started = time.monotonic()
    container_id = docker(
        "run",
        "--detach",
        "--label",
        LIMITS_LABEL,
        "--publish",
        "127.0.0.1::8500",
        "--publish",
        "127.0.0.1::8501",
        "--read-only",
        "--tmpfs",
        "/tmp",
        "--volume",
        f"{models}:/models:ro",
        "--volume",
        f"{ROOT / 'deploy' / 'models.config'}:/etc/mnist-serving/models.config:ro",
        *run_args,
        image,
        "--runtime=onnx",
        "--port=8500",
        "--rest_api_port=8501",
        "--model_config_file=/etc/mnist-serving/models.config",
        *flags,
    )
    container = Container(
        container_id,
        published(container_id, 8500),
        f"http://{published(container_id, 8501)}",
        started,
    )
    wait_healthy(container)
    return container


def _cgroup(container: Container, v2: str, v1: str) -> int:
    """A cgroup memory file of the container (v2 name, else v1 name)."""
    script = f"cat /sys/fs/cgroup/{v2} 2>/dev/null || cat /sys/fs/cgroup/memory/{v1}"
    return int(docker("exec", container.id, "sh", "-c", script))


def _state(container: Container) -> dict[str, Any]:
    inspected = json.loads(docker("inspect", container.id))[0]
    return {**inspected["State"], "RestartCount": inspected["RestartCount"]}


def _commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, check=False
        ).stdout.strip()

    dirty = git("status", "--porcelain", "--untracked-files=no", "--", "serving", "tests")
    return git("rev-parse", "--short", "HEAD") + ("-dirty" if dirty else "")


def _record(key: str, value: dict[str, Any], row: dict[str, str]) -> None:
    """``value`` (the figures) and ``row`` (docs/reliability.md's "Faults in the deployment"
    columns) under ``key`` in ``RESULTS_FILE``, with the commit of the tree that ran."""
    if not os.environ.get("PROTECTIONS_RESULTS"):
        return
    data = json.loads(RESULTS_FILE.read_text()) if RESULTS_FILE.exists() else {}
    data.setdefault("runs", {})[key] = {**value, "row": {**row, "commit": _commit()}}
    RESULTS_FILE.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_FILE.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")


# ------------------------------------------------------------------ requests as bytes


def _grpc_message(rows: int) -> bytes:
    rng = np.random.default_rng(rows)
    images = rng.random((rows, 28, 28, 1), dtype=np.float32)
    return predict_request("standard", images).SerializeToString()


def _rest_body(rows: int) -> bytes:
    rng = np.random.default_rng(rows)
    images = np.round(rng.random((rows, 28, 28, 1)), 4)
    return json.dumps({"instances": images.tolist()}).encode()


def _rows_within(limit_bytes: float, encode: Callable[[int], bytes]) -> int:
    """The most rows whose encoded request is at most ``limit_bytes`` (by the size per row)."""
    per_row = len(encode(64)) / 64
    return max(1, int(limit_bytes / per_row * 0.98))


def _grpc_call(target: str) -> Callable[[bytes, float], str]:
    channel = grpc.insecure_channel(
        target,
        options=[("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)],
    )
    call = channel.unary_unary(
        "/tensorflow.serving.PredictionService/Predict",
        request_serializer=None,
        response_deserializer=predict_pb2.PredictResponse.FromString,
    )

    def send(message: bytes, timeout: float) -> str:
        try:
            call(message, timeout=timeout, wait_for_ready=True)
        except grpc.RpcError as error:
            return error.code().name
        return "OK"

    return send


def _rest_call(url: str) -> Callable[[bytes, float], str]:
    host, port = url.removeprefix("http://").rsplit(":", 1)

    def send(body: bytes, timeout: float) -> str:
        conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
        try:
            conn.request("POST", "/v1/models/standard:predict", body)
            response = conn.getresponse()
            response.read()
            return str(response.status)
        except (OSError, http.client.HTTPException) as error:
            return type(error).__name__
        finally:
            conn.close()

    return send


def _flood(
    sends: list[tuple[str, Callable[[bytes, float], str], bytes]], senders: int, seconds: float
) -> Counter[str]:
    """``senders`` threads per (api, send, payload) sending for ``seconds``; outcome counts."""
    outcomes: Counter[str] = Counter()
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def loop(api: str, send: Callable[[bytes, float], str], payload: bytes) -> None:
        while time.monotonic() < stop:
            outcome = send(payload, 60)
            with lock:
                outcomes[f"{api} {outcome}"] += 1

    threads = [threading.Thread(target=loop, args=entry) for entry in sends for _ in range(senders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=seconds + 120)
    return outcomes


def _burst(send: Callable[[bytes, float], str], payload: bytes, count: int) -> Counter[str]:
    """``count`` requests sent at once (the issue's 64 concurrent gRPC requests)."""
    outcomes: Counter[str] = Counter()
    lock = threading.Lock()
    barrier = threading.Barrier(count)

    def one() -> None:
        barrier.wait()
        outcome = send(payload, 120)
        with lock:
            outcomes[outcome] += 1

    threads = [threading.Thread(target=one) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    return outcomes


# ------------------------------------------------------------------ squeezed


@pytest.mark.parametrize("memory", ["256m", "512m", "2g"])
def test_squeezed_server_refuses_the_excess_and_is_never_oom_killed(
    image,
    models_dir,  # noqa: F811 - the imported fixture
    memory,
):
    limit = int(memory[:-1]) * (MIB if memory.endswith("m") else 1024 * MIB)
    budget = budget_from_memory(limit)
    rest_rows = _rows_within(min(MAX_REQUEST_BYTES, budget / REST_BYTES_PER_BODY_BYTE), _rest_body)
    grpc_rows = _rows_within(
        grpc_max_message_bytes(budget, MAX_REQUEST_BYTES, GRPC_MAX_CONCURRENT_RPCS), _grpc_message
    )
    rest_body, grpc_message = _rest_body(rest_rows), _grpc_message(grpc_rows)
    container = _start(
        image, models_dir, ["--memory", memory, "--memory-swap", memory, "--cpus", "1"]
    )
    try:
        idle = _cgroup(container, "memory.current", "memory.usage_in_bytes")
        grpc_send, rest_send = _grpc_call(container.grpc_target), _rest_call(container.rest_url)
        flood = _flood(
            [("rest", rest_send, rest_body), ("grpc", grpc_send, grpc_message)], SENDERS, FLOOD_S
        )
        burst = _burst(grpc_send, _grpc_message(4096), 64)
        after = grpc_send(_grpc_message(1), 30), rest_send(_rest_body(1), 30)
        peak = _cgroup(container, "memory.peak", "memory.max_usage_in_bytes")
        state = _state(container)
        figures = {
            "limit_bytes": limit,
            "budget_bytes": budget,
            "idle_bytes": idle,
            "peak_bytes": peak,
            "rest_rows": rest_rows,
            "rest_body_bytes": len(rest_body),
            "grpc_rows": grpc_rows,
            "grpc_message_bytes": len(grpc_message),
            "flood_outcomes": dict(flood),
            "burst_64x4096_grpc": dict(burst),
            "oom_killed": state["OOMKilled"],
            "restart_count": state["RestartCount"],
        }
        print(f"--memory {memory}: {json.dumps(figures)}")
        refused = sum(n for k, n in {**flood, **burst}.items() if not k.endswith(("OK", "200")))
        _record(
            f"squeezed-{memory}",
            figures,
            {
                "fault": f"squeezed memory, --memory {memory}",
                "injected": f"docker run --memory {memory} --memory-swap {memory} --cpus 1; "
                f"{SENDERS} REST + {SENDERS} gRPC senders of the largest allowed requests for "
                f"{FLOOD_S:g} s, then 64 concurrent 4,096-image gRPC requests",
                "requests_failed": f"0 failed; {refused} refused by admission or the gRPC caps "
                "(503 / UNAVAILABLE / RESOURCE_EXHAUSTED)",
                "recovery_s": "0 (never down; a 1-image request on each API right after)",
                "bound": f"OOMKilled false, RestartCount 0, peak {peak / MIB:.0f} MiB < "
                f"{limit / MIB:.0f} MiB",
            },
        )
        assert state["OOMKilled"] is False and state["Running"] is True, docker(
            "logs", container.id, check=False
        )[-3000:]
        assert state["RestartCount"] == 0
        assert after == ("OK", "200")
        assert peak < limit
        # Every request was answered, or refused by admission with its documented status.
        allowed = {"rest 200", "rest 503", "grpc OK", "grpc UNAVAILABLE"}
        assert set(flood) <= allowed, flood
        assert flood["rest 200"] > 0 and flood["grpc OK"] > 0
        assert set(burst) <= {"OK", "UNAVAILABLE", "RESOURCE_EXHAUSTED"}, burst
        assert set(flood) <= allowed, flood
    finally:
        docker("rm", "-f", container.id, check=False)


# ------------------------------------------------------------------ flooded


class LocustRun:
    """The project's locustfile, headless, against the container's published ports: one user per
    (model, protocol), each keeping one request in flight on its own connection, per-request
    statistics as CSV and a history row per second (``--csv-full-history``)."""

    def __init__(self, container: Container, prefix: Path) -> None:
        self.prefix = prefix
        options = [
            *("-u", str(LOCUST_USERS), "-r", str(LOCUST_USERS), "-t", "600s"),
            *("--exit-code-on-error", "0", "--csv-full-history"),
            *("--model", ",".join(LOCUST_MODELS), "--protocol", ",".join(LOCUST_PROTOCOLS)),
            *("--batch-size", "1", "--request-timeout", "30"),
        ]
        self.command = locust_command(
            prefix,
            container.rest_url,
            container.grpc_target,
            [*options, "--loglevel", "WARNING"],
        )
        self._log = open(f"{prefix}.log", "wb")  # noqa: SIM115 - closed in __exit__
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> LocustRun:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.process = subprocess.Popen(
            self.command, stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=ROOT
        )
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> int:
        """SIGTERM (Locust writes its final statistics and closes its CSV files); exit code."""
        if self.process is None:
            return -1
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode

    def history(self) -> list[dict[str, str]]:
        path = Path(f"{self.prefix}_stats_history.csv")
        if not path.exists():
            return []
        with open(path, newline="") as handle:
            return list(csv.DictReader(handle))

    def wait_serving(self, timeout: float = 60.0) -> None:
        """Until every user has an answer (a history row per user class with requests)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None and self.process.poll() is None, self.log()
            served = {
                (row["Type"], row["Name"])
                for row in self.history()
                if row["Name"] != "Aggregated" and int(row["Total Request Count"]) > 0
            }
            if len(served) == LOCUST_USERS:
                return
            time.sleep(0.5)
        pytest.fail(f"Locust's users were not all served within {timeout} s:\n{self.log()}")

    def log(self) -> str:
        path = Path(f"{self.prefix}.log")
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""


def _ms(value: str | None) -> float | None:
    return None if value in (None, "", "N/A") else float(value)


def _window(history: list[dict[str, str]], start: float, end: float) -> dict[str, Any]:
    """Locust's figures over [start, end] (unix seconds) per (type, name) and aggregated: the
    requests and failures of the history rows around the window (a window a little wider than
    [start, end], by at most a row on each side), and the current p50 / p99 (ms) of the last row
    inside it (Locust's last 10 s)."""
    figures: dict[str, Any] = {}
    keys = sorted({(row["Type"], row["Name"]) for row in history})
    for kind, name in keys:
        rows = [r for r in history if (r["Type"], r["Name"]) == (kind, name)]
        before = [r for r in rows if int(r["Timestamp"]) <= start]
        inside = [r for r in rows if int(r["Timestamp"]) <= end]
        after = [r for r in rows if int(r["Timestamp"]) >= end]
        first = before[-1] if before else None
        last = after[0] if after else rows[-1]

        def total(row: dict[str, str] | None, column: str) -> int:
            return int(row[column]) if row else 0

        current = inside[-1] if inside else {}
        label = "aggregated" if name == "Aggregated" else f"{kind} {name}"
        figures[label] = {
            "requests": total(last, "Total Request Count") - total(first, "Total Request Count"),
            "failures": total(last, "Total Failure Count") - total(first, "Total Failure Count"),
            "p50_ms": _ms(current.get("50%")),
            "p99_ms": _ms(current.get("99%")),
        }
    return figures


def _slowloris(sockets: list[socket.socket], stop: threading.Event) -> None:
    for sock in sockets:
        with suppress(OSError):
            sock.sendall(b"GET /v1/models/standard HTTP/1.1\r\nHost: flood\r\n")
    while not stop.wait(1.0):
        for sock in sockets:
            with suppress(OSError):
                sock.sendall(b"X-Slow: 1\r\n")


def _open(port: int, count: int, stack: ExitStack) -> list[socket.socket]:
    sockets = []
    for _ in range(count):
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        except OSError:
            continue
        stack.callback(sock.close)
        sockets.append(sock)
    return sockets


def _first_answer(target: str, protocol: str) -> float:
    """Seconds from creating a typed client (serving.client) until its first answer: its first
    predict, retried while refused or timed out, for at most twice the bound."""
    started = time.monotonic()
    images = np.zeros((1, 28, 28, 1), np.float32)
    with ServingClient(target, protocol, timeout_s=NEW_CLIENT_BOUND_S) as client:  # type: ignore[arg-type]
        while time.monotonic() - started < 2 * NEW_CLIENT_BOUND_S:
            with suppress(ClientError, OSError, http.client.HTTPException):
                client.predict("standard", images)
                return time.monotonic() - started
            time.sleep(0.2)
    return float("inf")


def _answers(target: str, protocol: str) -> str:
    """One predict by a new typed client: "OK" or what went wrong."""
    try:
        with ServingClient(target, protocol, timeout_s=10) as client:  # type: ignore[arg-type]
            client.predict("standard", np.zeros((1, 28, 28, 1), np.float32))
    except ClientError as error:
        return error.code
    except (OSError, http.client.HTTPException) as error:
        return type(error).__name__
    return "OK"


def _published_port(url_or_target: str) -> int:
    return int(url_or_target.rsplit(":", 1)[1])


def test_descriptor_flood_past_nofile_leaves_good_users_served(
    image,
    models_dir,  # noqa: F811 - the imported fixture
    tmp_path,
):
    nofile = 1024
    container = _start(
        image,
        models_dir,
        ["--ulimit", f"nofile={nofile}:{nofile}", "--cpus", "1", "--memory", "2g"],
    )
    rest_target = container.rest_url.removeprefix("http://")
    stop_slow = threading.Event()
    locust = LocustRun(container, tmp_path / "locust")
    try:
        fds_idle = int(docker("exec", container.id, "sh", "-c", "ls /proc/1/fd | wc -l"))
        rest_port, grpc_port = (
            _published_port(container.rest_url),
            _published_port(container.grpc_target),
        )
        with locust:
            locust.wait_serving()
            baseline_start = time.time()
            time.sleep(BASELINE_S - 3.0)
            cpu_baseline = docker("stats", "--no-stream", "--format", "{{.CPUPerc}}", container.id)
            time.sleep(max(0.0, baseline_start + BASELINE_S - time.time()))
            with ExitStack() as flood:
                flood_start = time.time()
                idle_rest = _open(rest_port, 1500, flood)
                idle_grpc = _open(grpc_port, 1500, flood)
                slow = _open(rest_port, 500, flood)
                slow_thread = threading.Thread(target=_slowloris, args=(slow, stop_slow))
                slow_thread.start()
                flood.callback(slow_thread.join)
                flood.callback(stop_slow.set)
                opened_s = time.time() - flood_start
                rest_first = _first_answer(rest_target, "rest")
                grpc_first = _first_answer(container.grpc_target, "grpc")
                fds_early = int(docker("exec", container.id, "sh", "-c", "ls /proc/1/fd | wc -l"))
                time.sleep(max(2.0, flood_start + FLOOD_HOLD_S - time.time()))
                fds_flood = int(docker("exec", container.id, "sh", "-c", "ls /proc/1/fd | wc -l"))
                stats = docker("stats", "--no-stream", "--format", "{{.CPUPerc}}", container.id)
                flood_end = time.time()
            time.sleep(2.0)
            recovered = (_answers(container.grpc_target, "grpc"), _answers(rest_target, "rest"))
            time.sleep(2.0)  # a history row after the recovery
            locust_running = locust.process is not None and locust.process.poll() is None
            locust_exit = locust.stop()
        history = locust.history()
        logs = docker("logs", container.id, check=False)
        state = _state(container)
        baseline = _window(history, baseline_start, flood_start)
        during = _window(history, flood_start, flood_end)
        whole = _window(history, 0, time.time() + 10)
        figures: dict[str, Any] = {
            "nofile": nofile,
            "flood": {
                "idle_rest": len(idle_rest),
                "idle_grpc": len(idle_grpc),
                "slowloris": len(slow),
                "opened_in_s": round(opened_s, 2),
                "lasted_s": round(flood_end - flood_start, 2),
            },
            "descriptors_idle": fds_idle,
            "descriptors_flood_early": fds_early,  # right after the new clients' answers
            "descriptors_flood": fds_flood,  # at the flood's end
            "cpu_baseline": cpu_baseline,
            "cpu_during_flood": stats,
            "locust": {
                "command": " ".join(["locust", *locust.command[locust.command.index("-f") :]])
                .replace(str(tmp_path) + "/", "")
                .replace(str(ROOT) + "/", ""),
                "users": LOCUST_USERS,
                "baseline_s": round(flood_start - baseline_start, 2),
                "baseline": baseline,
                "flood": during,
                "whole_run_failures": whole.get("aggregated", {}).get("failures"),
                "exit_code": locust_exit,
            },
            "new_client_first_answer_s": {
                "rest": round(rest_first, 2),
                "grpc": round(grpc_first, 2),
            },
            "emfile_logged": "File descriptor limit reached" in logs,
            "recovered": list(recovered),
        }
        print(f"--ulimit nofile={nofile}: {json.dumps(figures)}")
        base, hit = baseline.get("aggregated", {}), during.get("aggregated", {})
        _record(
            "descriptor-flood",
            figures,
            {
                "fault": "hostile clients past the descriptor limit",
                "injected": f"docker run --ulimit nofile={nofile}:{nofile} --cpus 1; "
                f"{len(idle_rest)} idle REST, {len(idle_grpc)} idle gRPC and {len(slow)} "
                f"slowloris sockets for {flood_end - flood_start:.0f} s while {LOCUST_USERS} "
                "Locust users (standard and separable, gRPC and REST, batch 1) run",
                "requests_failed": f"{hit.get('failures')} of Locust's {hit.get('requests')} "
                f"during the flood (p50 {base.get('p50_ms')} -> {hit.get('p50_ms')} ms, p99 "
                f"{base.get('p99_ms')} -> {hit.get('p99_ms')} ms vs the baseline)",
                "recovery_s": f"new typed client's first answer REST {rest_first:.2f} s, gRPC "
                f"{grpc_first:.2f} s during the flood; both APIs answer after it",
                "bound": f"first answer <= {NEW_CLIENT_BOUND_S:g} s; descriptors {fds_early} / "
                f"{fds_flood} < "
                f"{nofile}; no EMFILE; CPU {stats} during the flood ({cpu_baseline} before)",
            },
        )
        assert locust_running, locust.log()
        assert state["Running"] is True and state["RestartCount"] == 0
        assert fds_early < nofile and fds_flood < nofile
        assert not figures["emfile_logged"]
        # Users already connected keep being served: every Locust user answered during the flood,
        # and none of their requests failed.
        user_rows = {k: v for k, v in during.items() if k != "aggregated"}
        assert len(user_rows) == LOCUST_USERS, during
        assert all(v["requests"] > 0 for v in user_rows.values()), during
        assert hit["failures"] == 0, (during, locust.log())
        assert base["failures"] == 0, baseline
        assert rest_first <= NEW_CLIENT_BOUND_S and grpc_first <= NEW_CLIENT_BOUND_S
        assert recovered == ("OK", "OK")
    finally:
        stop_slow.set()
        locust.stop()
        docker("rm", "-f", container.id, check=False)
