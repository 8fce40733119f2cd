"""Locust load test of the TF Serving Predict API (gRPC and REST) with real MNIST test images.

Run it like any locustfile (see docs/loadtest.md)::

    locust -f loadtest/locustfile.py                                # web UI on :8089
    locust -f loadtest/locustfile.py --headless -u 8 -r 8 -t 30s \\
        --model separable --batch-size 32 --protocol grpc --grpc-target 127.0.0.1:8500
    locust -f loadtest/locustfile.py --headless ... --processes 2  # or --master / --worker
    locust -f loadtest/locustfile.py --model standard,separable    # both models side by side

Custom arguments (also environment variables ``LOCUST_MODEL``, ``LOCUST_BATCH_SIZE``,
``LOCUST_PROTOCOL``, ``LOCUST_GRPC_TARGET``, ``LOCUST_WARMUP``, ``LOCUST_HDR_OUTPUT``): the REST
base URL is Locust's own ``--host`` (``LOCUST_HOST``), default ``http://127.0.0.1:8501``.

``--model``, ``--protocol`` and ``--batch-size`` take comma-separated lists: every combination
becomes its own Locust user class (``Predict_<model>_<protocol>_b<batch>``, equal weights), so the
users are split equally between them, all run in the same time window against the same server,
and each has its own row in Locust's statistics (type = protocol, name = ``<model> batch=<n>``).
The web UI gets an "HDR comparison" tab (:mod:`loadtest.webui`) with the microsecond percentiles
per combination and the separable ÷ standard ratios; headless runs print the same table at the end.

Each user keeps one request in flight (no wait time), so ``-u`` is the concurrency. Latencies are
recorded in microseconds in HDR histograms per (model, protocol, batch size); workers send them to
the master, which merges them and prints p50/p90/p99/p99.9/max at the end (and writes JSON to
``--hdr-output``). Answers are checked against the labels: a wrong class lowers the reported
accuracy, a non-OK status (or a malformed answer) is a failed request.
"""

# gRPC must use gevent's event loop before anything creates a channel (Locust's gRPC pattern).
import grpc.experimental.gevent as grpc_gevent

grpc_gevent.init_gevent()

import argparse  # noqa: E402
import itertools  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import re  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, ClassVar  # noqa: E402

import gevent  # noqa: E402
import grpc  # noqa: E402
import numpy as np  # noqa: E402
from geventhttpclient import HTTPClient  # noqa: E402
from locust import User, constant, events, task  # noqa: E402
from locust.env import Environment  # noqa: E402
from locust.runners import STATE_RUNNING, STATE_SPAWNING, MasterRunner, WorkerRunner  # noqa: E402

from contract import MODEL_NAMES  # noqa: E402
from contract.cli import non_negative_int, positive_int  # noqa: E402
from loadtest import payload, webui  # noqa: E402
from loadtest.recorder import (  # noqa: E402
    SNAPSHOT_KEY,
    Recorder,
    key_string,
    merge_snapshots,
    worker_output_path,
    write_json_atomically,
)
from serving.client import RECONNECT_OPTIONS  # noqa: E402

PROTOCOLS = ("grpc", "rest")
DEFAULT_GRPC_TARGET = "127.0.0.1:8500"
DEFAULT_REST_URL = "http://127.0.0.1:8501"
REST_BODY_CACHE_BYTES = 64 * 1024 * 1024  # encoded JSON bodies kept per process
# A user waits this long after a failed request: against a server that is down (refused at once)
# a closed loop without wait would spin, thousands of failures a second; with it a user fails at
# most 1 / FAILURE_PAUSE_S times a second (the bound tests/test_containers_faults.py checks).
FAILURE_PAUSE_S = 0.1

logger = logging.getLogger("loadtest")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


# --- which (model, protocol, batch size) combinations run ----------------------------------------


def _items(value: str, option: str) -> list[str]:
    items = [item.strip() for item in str(value).split(",")]
    if not items or any(not item for item in items):
        raise ValueError(f"{option}: empty item in {value!r}")
    if len(set(items)) != len(items):
        raise ValueError(f"{option}: repeated item in {value!r}")
    return items


def model_list(value: str) -> list[str]:
    """``--model``: comma-separated model names."""
    models = _items(value, "--model")
    for model in models:
        if not _NAME.fullmatch(model):
            raise ValueError(f"--model: {model!r} is not a model name")
    return models


def protocol_list(value: str) -> list[str]:
    """``--protocol``: comma-separated, each ``grpc`` or ``rest``."""
    protocols = _items(value, "--protocol")
    for protocol in protocols:
        if protocol not in PROTOCOLS:
            raise ValueError(f"--protocol: {protocol!r} is not one of {', '.join(PROTOCOLS)}")
    return protocols


def batch_size_list(value: str) -> list[int]:
    """``--batch-size``: comma-separated positive integers."""
    sizes = []
    for item in _items(value, "--batch-size"):
        try:
            sizes.append(positive_int(item))
        except argparse.ArgumentTypeError as exc:
            raise ValueError(f"--batch-size: {exc}") from None
    return sizes


def _argparse_type(parse: Callable[[str], Any]) -> Callable[[str], str]:
    """An argparse ``type`` that checks a list but keeps the string: Locust's web UI edits string
    options as text fields and casts what it gets back with the default's type."""

    def check(value: str) -> str:
        try:
            parse(value)
        except ValueError as exc:
            # argparse names the option itself ("argument --model: ...").
            raise argparse.ArgumentTypeError(str(exc).split(": ", 1)[-1]) from None
        return value

    check.__name__ = parse.__name__
    return check


@dataclass(frozen=True, order=True)
class Combination:
    """One (model, protocol, batch size) that a group of users sends."""

    model: str
    protocol: str
    batch_size: int

    @property
    def key(self) -> str:
        """The HDR recorder's key."""
        return key_string(self.model, self.protocol, self.batch_size)

    @property
    def request_name(self) -> str:
        """The name of its row in Locust's statistics (the type column says the protocol)."""
        return f"{self.model} batch={self.batch_size}"

    @property
    def class_name(self) -> str:
        """The Locust user class that sends it."""
        model = re.sub(r"[^A-Za-z0-9_]", "_", self.model)
        return f"Predict_{model}_{self.protocol}_b{self.batch_size}"


def combinations(model: str, protocol: str, batch_size: str | int) -> list[Combination]:
    """Every combination of the comma-separated lists (``ValueError`` for a bad list)."""
    return [
        Combination(m, p, b)
        for m, p, b in itertools.product(
            model_list(model), protocol_list(protocol), batch_size_list(str(batch_size))
        )
    ]


def combinations_of(options: Any) -> list[Combination]:
    """The combinations that Locust's parsed options ask for."""
    return combinations(options.model, options.protocol, options.batch_size)


@events.init_command_line_parser.add_listener
def _add_arguments(parser: Any) -> None:
    # Straight on the parser: Locust's web UI extras (include_in_web_ui) exist only there.
    group = parser
    group.add_argument(
        "--model",
        type=_argparse_type(model_list),
        default="standard",
        env_var="LOCUST_MODEL",
        help=f"model name(s) to query ({', '.join(MODEL_NAMES)}); a comma-separated list runs "
        "users for each at the same time, e.g. standard,separable",
    )
    group.add_argument(
        "--batch-size",
        type=_argparse_type(batch_size_list),
        default="1",
        env_var="LOCUST_BATCH_SIZE",
        help="images per request; a comma-separated list (1,32) runs users for each",
    )
    group.add_argument(
        "--protocol",
        type=_argparse_type(protocol_list),
        default="grpc",
        env_var="LOCUST_PROTOCOL",
        help="grpc (PredictionService/Predict) or rest (POST /v1/models/<m>:predict); "
        "grpc,rest runs users for each",
    )
    group.add_argument(
        "--grpc-target",
        default=DEFAULT_GRPC_TARGET,
        env_var="LOCUST_GRPC_TARGET",
        help="host:port of the gRPC API (REST uses --host)",
    )
    group.add_argument(
        "--warmup",
        type=non_negative_int,
        default=0,
        env_var="LOCUST_WARMUP",
        help="seconds at the start left out of the HDR percentiles, throughput and Locust stats",
    )
    group.add_argument(
        "--request-timeout",
        type=float,
        default=30.0,
        env_var="LOCUST_REQUEST_TIMEOUT",
        help="seconds before a request fails",
    )
    group.add_argument(
        "--hdr-output",
        default="",
        env_var="LOCUST_HDR_OUTPUT",
        include_in_web_ui=False,
        help="write the merged HDR results (JSON) to this file when Locust exits",
    )


# --- clients ------------------------------------------------------------------------------------


class GrpcPredictClient:
    """``PredictionService/Predict`` over one gRPC channel (gevent-cooperative)."""

    def __init__(self, target: str, model: str, timeout_s: float) -> None:
        from contract.protos import prediction_service_pb2_grpc

        self.model = model
        self.timeout_s = timeout_s
        unlimited = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
        self.channel = grpc.insecure_channel(target, options=[*unlimited, *RECONNECT_OPTIONS])
        self.stub = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self._prepared: Any = None

    def prepare(self, images: np.ndarray, batch_index: int) -> None:
        """Build the request outside the timed section (a real client has its tensor ready)."""
        self._prepared = payload.predict_request(self.model, images)

    def call(self) -> tuple[np.ndarray, int]:
        """Send the prepared request; (predicted classes, response size in bytes)."""
        response = self.stub.Predict(self._prepared, timeout=self.timeout_s)
        return payload.classes_from_predict_response(response), response.ByteSize()

    def close(self) -> None:
        """Close the channel."""
        self.channel.close()


class RestError(RuntimeError):
    """A REST answer with a non-200 status."""


class _BodyCache:
    """Encoded REST bodies by (batch size, batch index), up to a byte budget per process."""

    def __init__(self, budget_bytes: int) -> None:
        self.budget = budget_bytes
        self.used = 0
        self.bodies: dict[tuple[int, int], bytes] = {}

    def get(self, ring: payload.ImageRing, batch_index: int, images: np.ndarray) -> bytes:
        key = (ring.batch_size, batch_index % ring.period)
        body = self.bodies.get(key)
        if body is None:
            body = payload.rest_body(images)
            if self.used + len(body) <= self.budget:
                self.bodies[key] = body
                self.used += len(body)
        return body


_BODIES = _BodyCache(REST_BODY_CACHE_BYTES)


class RestPredictClient:
    """``POST /v1/models/<model>:predict`` with TF Serving's row format, on a kept-alive socket."""

    def __init__(self, base_url: str, model: str, timeout_s: float, ring: payload.ImageRing):
        self.client = HTTPClient.from_url(
            base_url,
            concurrency=1,
            connection_timeout=timeout_s,
            network_timeout=timeout_s,
            headers={"Content-Type": "application/json"},
        )
        self.path = payload.rest_path(model)
        self.ring = ring
        self._prepared = b""

    def prepare(self, images: np.ndarray, batch_index: int) -> None:
        """Encode (or fetch the cached) JSON body outside the timed section."""
        self._prepared = _BODIES.get(self.ring, batch_index, images)

    def call(self) -> tuple[np.ndarray, int]:
        """Send the prepared body; (predicted classes, response size in bytes)."""
        response = self.client.post(self.path, body=self._prepared)
        body = response.read()
        if response.status_code != 200:
            raise RestError(f"HTTP {response.status_code}: {body[:300]!r}")
        return payload.classes_from_rest_response(body), len(body)

    def close(self) -> None:
        """Close the connection pool."""
        self.client.close()


# --- measurement state ----------------------------------------------------------------------------

RECORDER = Recorder()
_WORKER_SNAPSHOTS: dict[str, dict[str, Any]] = {}
RESET_MESSAGE = "loadtest_hdr_reset"  # master → workers: the web UI's "Reset" was clicked
_RESETS = {"generation": 0}  # on the master: "Reset" clicks in the current test


class PredictUser(User):
    """One client with one request in flight at a time.

    Subclasses made by :func:`user_class` send one fixed :class:`Combination`; this class itself
    (the one Locust finds in the file, replaced by those subclasses when the run starts) and other
    subclasses (the soak test's) send the single combination of the options.
    """

    wait_time = constant(0)  # closed loop: the number of users is the concurrency
    combination: ClassVar[Combination | None] = None

    def on_start(self) -> None:
        options = self.environment.parsed_options
        combination = type(self).combination
        if combination is None:
            (combination,) = _single(combinations_of(options), type(self).__name__)
        self.model = combination.model
        self.protocol = combination.protocol
        self.batch_size = combination.batch_size
        timeout_s = float(options.request_timeout)
        self.ring = payload.ImageRing(payload.load_test_set(), self.batch_size)
        # Users start at different places in the test set so they do not send identical batches.
        self.batch_index = random.randrange(self.ring.period)
        self.key = combination.key
        self.name = combination.request_name
        self.client: GrpcPredictClient | RestPredictClient
        if self.protocol == "grpc":
            self.client = GrpcPredictClient(str(options.grpc_target), self.model, timeout_s)
        else:
            base_url = self.environment.host or DEFAULT_REST_URL
            self.client = RestPredictClient(base_url, self.model, timeout_s, self.ring)

    def on_stop(self) -> None:
        self.client.close()

    @task
    def predict(self) -> None:
        images, labels = self.ring.batch(self.batch_index)
        self.client.prepare(images, self.batch_index)
        self.batch_index += 1
        exception: Exception | None = None
        length = 0
        correct = 0
        started = time.perf_counter()
        try:
            classes, length = self.client.call()
            elapsed = time.perf_counter() - started
            correct = payload.count_correct(classes, labels)
        except (grpc.RpcError, RestError, OSError, ValueError, KeyError) as exc:
            elapsed = time.perf_counter() - started
            exception = exc
        RECORDER.record(
            self.key,
            started,
            elapsed,
            ok=exception is None,
            images=len(labels),
            correct=correct,
        )
        self.environment.events.request.fire(
            request_type=self.protocol,
            name=self.name,
            response_time=elapsed * 1000.0,
            response_length=length,
            exception=exception,
            context={},
        )
        if exception is not None:
            gevent.sleep(FAILURE_PAUSE_S)


def _single(found: list[Combination], class_name: str) -> list[Combination]:
    if len(found) != 1:
        raise ValueError(
            f"{class_name} sends one (model, protocol, batch size); the options name {len(found)}"
        )
    return found


_USER_CLASSES: dict[Combination, type[PredictUser]] = {}


def user_class(combination: Combination) -> type[PredictUser]:
    """The user class of ``combination`` (one class object per combination and process: Locust
    matches running users to their class by identity when it stops some of them)."""
    cls = _USER_CLASSES.get(combination)
    if cls is None:
        cls = type(
            combination.class_name,
            (PredictUser,),
            {"combination": combination, "weight": 1, "__module__": __name__},
        )
        _USER_CLASSES[combination] = cls
    return cls


def _ours(cls: type[User]) -> bool:
    return cls is PredictUser or cls in _USER_CLASSES.values()


def use_combinations(environment: Environment, wanted: list[Combination]) -> None:
    """Make the environment run one user class per combination, in place of this file's own.

    Environments whose classes come from elsewhere (the soak test subclasses PredictUser) are
    left alone. Locust's runners, dispatcher and web UI read ``environment.user_classes`` (and
    the class picker ``available_user_classes``) whenever a test starts, so this is called before
    each start: at init, by the web UI's swarm request, and on a worker at the test's start, with
    the options the master sent.
    """
    if not any(_ours(cls) for cls in environment.user_classes):
        return
    classes = [user_class(c) for c in wanted]
    if environment.user_classes == classes:
        return
    others: list[type[User]] = [cls for cls in environment.user_classes if not _ours(cls)]
    environment.user_classes = others + list(classes)
    if environment.available_user_classes is not None:
        # Locust annotates this dict's values as User instances; they are classes.
        available: dict[str, Any] = {
            name: cls
            for name, cls in environment.available_user_classes.items()
            if not _ours(cls)  # type: ignore[arg-type]
        }
        available.update({cls.__name__: cls for cls in classes})
        environment.available_user_classes = available
    if environment.available_user_tasks is not None:
        tasks = {
            name: value
            for name, value in environment.available_user_tasks.items()
            if name in (environment.available_user_classes or {})
        }
        tasks.update({cls.__name__: cls.tasks for cls in classes})
        environment.available_user_tasks = tasks


def _swarm_form_hook(environment: Environment, base_path: str) -> Callable[[], Any]:
    """A Flask ``before_request`` hook: the web UI's start form may change --model, --protocol or
    --batch-size, and Locust reads the user classes before it applies those fields."""
    from flask import jsonify, request

    swarm_path = f"{base_path.rstrip('/')}/swarm"

    def before_swarm() -> Any:
        if request.path != swarm_path or request.method != "POST":
            return None
        options = environment.parsed_options
        form = request.form
        if options is None:
            return None
        try:
            wanted = combinations(
                form.get("model", options.model),
                form.get("protocol", options.protocol),
                form.get("batch_size", options.batch_size),
            )
        except ValueError as exc:
            return jsonify({"success": False, "message": str(exc), "host": environment.host})
        runner = environment.runner
        if runner is not None and runner.state in (STATE_RUNNING, STATE_SPAWNING):
            if wanted != combinations_of(options):
                message = "stop the test before changing the model, protocol or batch size"
                return jsonify({"success": False, "message": message, "host": environment.host})
            return None
        use_combinations(environment, wanted)
        return None

    return before_swarm


# --- events: warm-up, worker → master reports, results -------------------------------------------


@events.init.add_listener
def _on_init(environment: Environment, **_: Any) -> None:
    options = environment.parsed_options
    if options is not None:
        use_combinations(environment, combinations_of(options))
    runner = environment.runner
    if runner is not None and not isinstance(runner, MasterRunner):
        runner.register_message(RESET_MESSAGE, _on_reset_message)
    environment.events.reset_stats.add_listener(lambda **_: _reset_hdr(environment))
    web_ui = environment.web_ui
    if web_ui is not None and web_ui.app is not None:
        base_path = str(getattr(options, "web_base_path", "") or "")
        web_ui.app.before_request(_swarm_form_hook(environment, base_path))
        webui.ComparisonTab(web_ui, lambda: collect(environment), base_path).install()
    if not isinstance(environment.runner, MasterRunner):
        # Load the test set now: in a user's on_start it would stall every user of the process.
        payload.load_test_set()
    # gevent's loop caches "now" and has not run since the imports above: without this, timers
    # Locust starts next (--run-time) would fire early by the seconds start-up took.
    gevent.get_hub().loop.update_now()


def _reset_hdr(environment: Environment) -> None:
    """Locust's "Reset" button resets its statistics: the HDR histograms of every process follow
    (the master only resets its own aggregate, so it tells the workers)."""
    runner = environment.runner
    if runner is None:
        return
    if isinstance(runner, MasterRunner):
        _RESETS["generation"] += 1
        _WORKER_SNAPSHOTS.clear()
    runner.send_message(RESET_MESSAGE, _RESETS["generation"])


def _on_reset_message(msg: Any, **_: Any) -> None:
    RECORDER.reset(0.0, generation=int(msg.data or 0))


@events.test_start.add_listener
def _on_test_start(environment: Environment, **_: Any) -> None:
    gevent.get_hub().loop.update_now()
    options = environment.parsed_options
    if isinstance(environment.runner, WorkerRunner) and options is not None:
        # The master sent its --model/--protocol/--batch-size with this test's first spawn
        # message; a worker started with other (or no) options must know the master's classes.
        use_combinations(environment, combinations_of(options))
    elif options is not None:
        count = len(combinations_of(options))
        users = int(getattr(options, "num_users", 0) or 0)
        if count > 1 and users % count:
            logger.warning(
                "%d users do not split equally over %d combinations: use a multiple of %d",
                users,
                count,
                count,
            )
    warmup = float(getattr(options, "warmup", 0) or 0)
    RECORDER.reset(warmup)
    if isinstance(environment.runner, MasterRunner):
        _WORKER_SNAPSHOTS.clear()
        _RESETS["generation"] = 0
    if warmup > 0 and environment.runner is not None:
        # Locust's own statistics (CSV/HTML) should describe the same window as ours.
        gevent.spawn_later(warmup, environment.runner.stats.reset_all)


@events.test_stopping.add_listener
def _on_test_stopping(environment: Environment, **_: Any) -> None:
    RECORDER.stop()


@events.test_stop.add_listener
def _on_worker_test_stop(environment: Environment, **_: Any) -> None:
    target = getattr(environment.parsed_options, "hdr_output", "")
    if isinstance(environment.runner, WorkerRunner) and target:
        # Our final numbers also go to a file: the master may quit before our last report lands
        # (read back with loadtest.recorder.read_run_output). Remote workers may lack the path.
        try:
            write_json_atomically(
                worker_output_path(Path(target), os.getpid()), RECORDER.snapshot()
            )
        except OSError as exc:
            logger.warning("could not write the worker's HDR snapshot: %s", exc)


@events.report_to_master.add_listener
def _on_report_to_master(client_id: str, data: dict[str, Any], **_: Any) -> None:
    data[SNAPSHOT_KEY] = RECORDER.snapshot()


@events.worker_report.add_listener
def _on_worker_report(client_id: str, data: dict[str, Any], **_: Any) -> None:
    snapshot = data.get(SNAPSHOT_KEY)
    if snapshot is not None and int(snapshot.get("generation", 0)) >= _RESETS["generation"]:
        # Snapshots are cumulative: the latest one of each worker replaces the previous one.
        _WORKER_SNAPSHOTS[client_id] = snapshot


def collect(environment: Environment) -> dict[str, Any]:
    """The merged results of this run: all workers' snapshots on a master, else our own."""
    if isinstance(environment.runner, MasterRunner):
        snapshots = list(_WORKER_SNAPSHOTS.values())
    else:
        snapshots = [RECORDER.snapshot()]
    merged = merge_snapshots(snapshots)
    merged["snapshots"] = snapshots
    options = environment.parsed_options
    merged["settings"] = {
        "model": getattr(options, "model", None),
        "protocol": getattr(options, "protocol", None),
        "batch_size": getattr(options, "batch_size", None),
        "users": getattr(options, "num_users", None),
        "warmup_s": getattr(options, "warmup", None),
        "grpc_target": getattr(options, "grpc_target", None),
        "rest_url": environment.host or DEFAULT_REST_URL,
    }
    return merged


def _log_results(merged: dict[str, Any]) -> None:
    for row in merged["results"]:
        logger.info(
            "HDR %s %s batch=%d: %d requests, %.1f req/s, %.1f images/s, p50 %.3f ms, "
            "p90 %.3f ms, p99 %.3f ms, p99.9 %.3f ms, max %.3f ms, %d failures, accuracy %.4f",
            row["model"],
            row["protocol"],
            row["batch_size"],
            row["requests"],
            row["requests_per_s"],
            row["images_per_s"],
            row["p50_ms"],
            row["p90_ms"],
            row["p99_ms"],
            row["p999_ms"],
            row["max_ms"],
            row["failures"],
            row["accuracy"],
        )


def _write_results(environment: Environment) -> None:
    merged = collect(environment)
    _log_results(merged)
    rows = webui.comparison(merged, webui.reference_mac_ratio())
    if rows:
        # Locust's own summary table has whole milliseconds: this is the microsecond version.
        logger.info("HDR comparison (microseconds)\n%s", webui.text_table(rows))
    target = getattr(environment.parsed_options, "hdr_output", "")
    if target:
        write_json_atomically(Path(target), merged)


@events.test_stop.add_listener
def _on_test_stop(environment: Environment, **_: Any) -> None:
    if isinstance(environment.runner, WorkerRunner) or getattr(
        environment.parsed_options, "headless", True
    ):
        return  # headless runs write once, when quitting
    # Web UI: the workers' final reports arrive within one report interval after the stop.
    gevent.spawn_later(4.0, _write_results, environment)


@events.quitting.add_listener
def _on_quitting(environment: Environment, **_: Any) -> None:
    if not isinstance(environment.runner, WorkerRunner):
        _write_results(environment)
