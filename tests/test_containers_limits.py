"""The container tier's squeeze and flood tests (issue #22, items 4 and 5; `make test-containers`).

- Squeezed: the ONNX image under ``docker run --memory 256m / 512m / 2g --cpus 1`` (no swap),
  flooded with the largest requests its admission allows (REST and gRPC at once, many in
  flight) and then with the issue's 64 concurrent 4,096-image gRPC requests: never OOM-killed
  (``State.OOMKilled`` false, ``RestartCount`` 0), the excess refused with UNAVAILABLE / 503 or
  RESOURCE_EXHAUSTED / 413, the cgroup's peak memory below the limit, still serving afterwards.
- Flooded: the same image with ``--ulimit nofile=1024``, two good users (gRPC and REST, each on
  its own connection) running throughout; idle and slowloris sockets past the descriptor limit
  on both ports: the good users keep being served, a new client of each API gets its first
  answer within ``NEW_CLIENT_BOUND_S``, the descriptors stay below the limit, no EMFILE spin,
  and everything answers once the flood stops.

Each test prints its figures and adds them to ``results/containers/`` (``RESULTS_FILE``) when
``PROTECTIONS_RESULTS`` is set (the committed file came from such a run).
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import statistics
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

from contract.protos import predict_pb2, prediction_service_pb2_grpc
from serving.client import predict_request
from serving.model.admission import (
    REST_BYTES_PER_BODY_BYTE,
    budget_from_memory,
    grpc_max_message_bytes,
)
from tests.test_containers import (  # noqa: F401 - fixtures: engine (autouse), models_dir
    LABEL,
    ROOT,
    SERVER_IMAGES,
    Container,
    _build,
    _published,
    _wait_healthy,
    docker,
    engine,
    models_dir,
)

pytestmark = [pytest.mark.containers, pytest.mark.timeout(1200)]

# Its own tag and label: a container tier running at the same time on the same engine (another
# checkout) neither replaces the image under test nor removes these containers as leftovers.
IMAGE = SERVER_IMAGES["onnx"] + "-limits"
LIMITS_LABEL = LABEL + ".limits"
MIB = 1 << 20
MAX_REQUEST_BYTES = 64 * MIB  # --max_request_bytes' default
GRPC_MAX_CONCURRENT_RPCS = 0  # --grpc_max_concurrent_rpcs' default
FLOOD_S = 15.0
SENDERS = 12  # per API: max-size requests in flight at once
NEW_CLIENT_BOUND_S = 10.0
BASELINE_S = 8.0
RESULTS_FILE = ROOT / "results" / "containers" / "faults-2026-12-06-protections.json"


@pytest.fixture(scope="module")
def image(engine) -> str:  # noqa: F811 - the imported fixture
    """The ONNX image built from this tree (BuildKit reuses every layer but the project's)."""
    stale = docker("ps", "-aq", "--filter", f"label={LIMITS_LABEL}").split()
    if stale:
        docker("rm", "-f", *stale)
    _build("onnx", IMAGE)
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
        _published(container_id, 8500),
        f"http://{_published(container_id, 8501)}",
        started,
    )
    _wait_healthy(container)
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


class GoodUser:
    """One client on its own long-lived connection, one small request after another."""

    def __init__(self, send: Callable[[], str]) -> None:
        self._send = send
        self.samples: list[tuple[float, float, str]] = []  # (sent, seconds, outcome)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        while not self._stop.is_set():
            sent = time.monotonic()
            outcome = self._send()
            self.samples.append((sent, time.monotonic() - sent, outcome))
            time.sleep(0.005)

    def __enter__(self) -> GoodUser:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def window(self, start: float, end: float) -> dict[str, float]:
        chosen = [(s, o) for sent, s, o in self.samples if start <= sent < end]
        ms = sorted(s * 1000 for s, o in chosen if o == "OK")
        return {
            "requests": len(chosen),
            "errors": sum(o != "OK" for _, o in chosen),
            "p50_ms": round(statistics.median(ms), 2) if ms else float("nan"),
            "p99_ms": round(ms[min(len(ms) - 1, int(0.99 * len(ms)))], 2) if ms else float("nan"),
        }


def _grpc_user(target: str) -> Callable[[], str]:
    channel = grpc.insecure_channel(target)
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    request = predict_request("standard", np.zeros((1, 28, 28, 1), np.float32))

    def send() -> str:
        try:
            stub.Predict(request, timeout=10)
        except grpc.RpcError as error:
            return error.code().name
        return "OK"

    return send


def _rest_user(url: str) -> Callable[[], str]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    body = _rest_body(1)

    def send() -> str:
        try:
            conn.request("POST", "/v1/models/standard:predict", body)
            response = conn.getresponse()
            response.read()
            return "OK" if response.status == 200 else str(response.status)
        except (OSError, http.client.HTTPException) as error:
            conn.close()
            return type(error).__name__

    return send


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


def _first_answer(send: Callable[[], str]) -> float:
    started = time.monotonic()
    while time.monotonic() - started < 2 * NEW_CLIENT_BOUND_S:
        if send() == "OK":
            return time.monotonic() - started
        time.sleep(0.2)
    return float("inf")


def _new_grpc_client(target: str) -> Callable[[], str]:
    def send() -> str:
        with grpc.insecure_channel(target) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            try:
                stub.Predict(
                    predict_request("standard", np.zeros((1, 28, 28, 1), np.float32)),
                    timeout=NEW_CLIENT_BOUND_S,
                    wait_for_ready=True,
                )
            except grpc.RpcError as error:
                return error.code().name
        return "OK"

    return send


def _new_rest_client(url: str) -> Callable[[], str]:
    send, body = _rest_call(url), _rest_body(1)
    return lambda: "OK" if send(body, NEW_CLIENT_BOUND_S) == "200" else "refused"


def _published_port(url_or_target: str) -> int:
    return int(url_or_target.rsplit(":", 1)[1])


def test_descriptor_flood_past_nofile_leaves_good_users_served(
    image,
    models_dir,  # noqa: F811 - the imported fixture
):
    nofile = 1024
    container = _start(
        image,
        models_dir,
        ["--ulimit", f"nofile={nofile}:{nofile}", "--cpus", "1", "--memory", "2g"],
    )
    stop_slow = threading.Event()
    try:
        fds_idle = int(docker("exec", container.id, "sh", "-c", "ls /proc/1/fd | wc -l"))
        rest_port, grpc_port = (
            _published_port(container.rest_url),
            _published_port(container.grpc_target),
        )
        with (
            GoodUser(_grpc_user(container.grpc_target)) as grpc_user,
            GoodUser(_rest_user(container.rest_url)) as rest_user,
            ExitStack() as flood,
        ):
            started = time.monotonic()
            time.sleep(BASELINE_S)
            baseline = (started + 1.0, time.monotonic())  # the first second: connecting
            flood_start = time.monotonic()
            idle_rest = _open(rest_port, 1500, flood)
            idle_grpc = _open(grpc_port, 1500, flood)
            slow = _open(rest_port, 500, flood)
            slow_thread = threading.Thread(target=_slowloris, args=(slow, stop_slow))
            slow_thread.start()
            flood.callback(slow_thread.join)
            flood.callback(stop_slow.set)
            rest_first = _first_answer(_new_rest_client(container.rest_url))
            grpc_first = _first_answer(_new_grpc_client(container.grpc_target))
            time.sleep(3.0)
            fds_flood = int(docker("exec", container.id, "sh", "-c", "ls /proc/1/fd | wc -l"))
            stats = docker("stats", "--no-stream", "--format", "{{.CPUPerc}}", container.id)
            flood_end = time.monotonic()
        time.sleep(2.0)
        recovered = (
            _new_grpc_client(container.grpc_target)(),
            _rest_call(container.rest_url)(_rest_body(1), 10),
        )
        logs = docker("logs", container.id, check=False)
        state = _state(container)
        figures: dict[str, Any] = {
            "nofile": nofile,
            "flood": {
                "idle_rest": len(idle_rest),
                "idle_grpc": len(idle_grpc),
                "slowloris": len(slow),
            },
            "descriptors_idle": fds_idle,
            "descriptors_flood": fds_flood,
            "cpu_during_flood": stats,
            "grpc_user_baseline": grpc_user.window(*baseline),
            "grpc_user_flood": grpc_user.window(flood_start, flood_end),
            "rest_user_baseline": rest_user.window(*baseline),
            "rest_user_flood": rest_user.window(flood_start, flood_end),
            "new_client_first_answer_s": {
                "rest": round(rest_first, 2),
                "grpc": round(grpc_first, 2),
            },
            "emfile_logged": "File descriptor limit reached" in logs,
            "recovered": list(recovered),
        }
        print(f"--ulimit nofile={nofile}: {json.dumps(figures)}")
        users = Counter(figures["grpc_user_flood"]) + Counter(figures["rest_user_flood"])
        _record(
            "descriptor-flood",
            figures,
            {
                "fault": "hostile clients past the descriptor limit",
                "injected": f"docker run --ulimit nofile={nofile}:{nofile} --cpus 1; "
                f"{len(idle_rest)} idle REST, {len(idle_grpc)} idle gRPC and {len(slow)} "
                "slowloris sockets while a gRPC and a REST user run",
                "requests_failed": f"{users['errors']} of the connected users' {users['requests']}",
                "recovery_s": f"new client's first answer REST {rest_first:.2f} s, gRPC "
                f"{grpc_first:.2f} s during the flood; both APIs answer after it",
                "bound": f"first answer <= {NEW_CLIENT_BOUND_S:g} s; descriptors {fds_flood} < "
                f"{nofile}; no EMFILE",
            },
        )
        assert state["Running"] is True and state["RestartCount"] == 0
        assert fds_flood < nofile
        assert not figures["emfile_logged"]
        assert figures["grpc_user_flood"]["errors"] == 0
        assert figures["rest_user_flood"]["errors"] == 0
        assert rest_first <= NEW_CLIENT_BOUND_S and grpc_first <= NEW_CLIENT_BOUND_S
        assert recovered == ("OK", "200")
    finally:
        stop_slow.set()
        docker("rm", "-f", container.id, check=False)
