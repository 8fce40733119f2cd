"""The locustfile's listeners, registered on one Environment by one object that owns the run's
measurement state (Locust's ``examples/extend_web_ui.py`` pattern: listeners hooked up on
``events.init``, nothing measured at import).

Each Locust process (the local runner, or every worker) records its users' requests in a
:class:`~loadtest.record.recorder.Recorder`; workers send cumulative snapshots with every report
to the master, which keeps the latest per worker and merges them. The plugin also keeps the HDR
histograms in step with Locust's "Reset" button, the warm-up, the web UI's start form and its
"HDR comparison" tab, and writes the merged results when Locust quits.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gevent
from locust.env import Environment
from locust.runners import STATE_RUNNING, STATE_SPAWNING, MasterRunner, WorkerRunner

from loadtest.record import payload, webui
from loadtest.record.options import DEFAULT_REST_URL, combinations, combinations_of
from loadtest.record.recorder import (
    SNAPSHOT_KEY,
    Recorder,
    merge_snapshots,
    worker_output_path,
    write_json_atomically,
)
from loadtest.record.users import SAMPLE, Sample, use_combinations

RESET_MESSAGE = "loadtest_hdr_reset"  # master → workers: the web UI's "Reset" was clicked
WEB_UI_FINAL_REPORT_S = 4.0  # workers' final reports arrive within one interval (3 s) of a stop

logger = logging.getLogger("loadtest")


class LoadtestPlugin:
    """The HDR recording of one Environment: its recorder, and on a master the workers' latest
    snapshots and the count of "Reset" clicks in the current test."""

    def __init__(self, environment: Environment) -> None:
        self.environment = environment
        self.recorder = Recorder()
        self.worker_snapshots: dict[str, dict[str, Any]] = {}
        self.resets = 0

    @classmethod
    def install(cls, environment: Environment, **_: Any) -> LoadtestPlugin:
        """The ``events.init`` listener: a plugin for ``environment``, its listeners registered
        on the environment's events."""
        plugin = cls(environment)
        plugin.register()
        plugin.on_init()
        return plugin

    def register(self) -> None:
        """Hook the plugin's listeners into the environment's events."""
        events = self.environment.events
        events.request.add_listener(self.on_request)
        events.reset_stats.add_listener(self.on_reset_stats)
        events.test_start.add_listener(self.on_test_start)
        events.test_stopping.add_listener(self.on_test_stopping)
        events.test_stop.add_listener(self.on_test_stop)
        events.report_to_master.add_listener(self.on_report_to_master)
        events.worker_report.add_listener(self.on_worker_report)
        events.quitting.add_listener(self.on_quitting)

    @property
    def is_master(self) -> bool:
        """Whether this process only merges the workers' results."""
        return isinstance(self.environment.runner, MasterRunner)

    @property
    def is_worker(self) -> bool:
        """Whether this process reports to a master."""
        return isinstance(self.environment.runner, WorkerRunner)

    # --- start-up ---------------------------------------------------------------------------

    def on_init(self) -> None:
        """User classes from the options, the reset message, the web UI's hooks, the test set."""
        environment = self.environment
        options = environment.parsed_options
        if options is not None:
            use_combinations(environment, combinations_of(options))
        runner = environment.runner
        if runner is not None and not self.is_master:
            runner.register_message(RESET_MESSAGE, self.on_reset_message)
        web_ui = environment.web_ui
        if web_ui is not None and web_ui.app is not None:
            base_path = str(getattr(options, "web_base_path", "") or "")
            web_ui.app.before_request(swarm_form_hook(environment, base_path))
            webui.ComparisonTab(web_ui, self.collect, base_path).install()
        if not self.is_master:
            # Load the test set now: in a user's on_start it would stall every user of the process.
            payload.load_test_set()
        # gevent's loop caches "now" and has not run since the imports: without this, timers
        # Locust starts next (--run-time) would fire early by the seconds start-up took.
        gevent.get_hub().loop.update_now()

    def on_test_start(self, **_: Any) -> None:
        """A new test: the user classes a worker must run, fresh histograms, the warm-up."""
        gevent.get_hub().loop.update_now()
        environment = self.environment
        options = environment.parsed_options
        if self.is_worker and options is not None:
            # The master sent its --model/--protocol/--batch-size with this test's first spawn
            # message; a worker started with other (or no) options must know the master's classes.
            use_combinations(environment, combinations_of(options))
        elif options is not None:
            _warn_unequal_split(options)
        warmup = float(getattr(options, "warmup", 0) or 0)
        self.recorder.reset(warmup)
        if self.is_master:
            self.worker_snapshots.clear()
            self.resets = 0
        if warmup > 0 and environment.runner is not None:
            # Locust's own statistics (CSV/HTML) should describe the same window as ours.
            gevent.spawn_later(warmup, environment.runner.stats.reset_all)

    # --- during the test --------------------------------------------------------------------

    def on_request(self, exception: BaseException | None, context: Any = None, **_: Any) -> None:
        """Record a request of our users (others, e.g. the soak test's extras, carry no sample)."""
        sample = context.get(SAMPLE) if isinstance(context, dict) else None
        if isinstance(sample, Sample):
            self.recorder.record(
                sample.key,
                sample.started,
                sample.elapsed,
                ok=exception is None,
                images=sample.images,
                correct=sample.correct,
            )

    def on_reset_stats(self, **_: Any) -> None:
        """Locust's "Reset" button resets its statistics: the HDR histograms of every process
        follow (the master only resets its own aggregate, so it tells the workers)."""
        runner = self.environment.runner
        if runner is None:
            return
        if self.is_master:
            self.resets += 1
            self.worker_snapshots.clear()
        runner.send_message(RESET_MESSAGE, self.resets)

    def on_reset_message(self, msg: Any, **_: Any) -> None:
        """A worker: the master's "Reset"."""
        self.recorder.reset(0.0, generation=int(msg.data or 0))

    def on_report_to_master(self, client_id: str, data: dict[str, Any], **_: Any) -> None:
        """A worker: our cumulative snapshot rides on every report."""
        data[SNAPSHOT_KEY] = self.recorder.snapshot()

    def on_worker_report(self, client_id: str, data: dict[str, Any], **_: Any) -> None:
        """The master: keep each worker's latest snapshot of the current reset generation."""
        snapshot = data.get(SNAPSHOT_KEY)
        if snapshot is not None and int(snapshot.get("generation", 0)) >= self.resets:
            # Snapshots are cumulative: the latest one of each worker replaces the previous one.
            self.worker_snapshots[client_id] = snapshot

    # --- the end ----------------------------------------------------------------------------

    def on_test_stopping(self, **_: Any) -> None:
        """Close the measurement window."""
        self.recorder.stop()

    def on_test_stop(self, **_: Any) -> None:
        """A worker writes its final snapshot; a web UI run writes the merged results."""
        options = self.environment.parsed_options
        if self.is_worker:
            self._write_worker_snapshot(getattr(options, "hdr_output", ""))
        elif not getattr(options, "headless", True):
            # Headless runs write once, when quitting; web UI runs after each test, once the
            # workers' final reports are in.
            gevent.spawn_later(WEB_UI_FINAL_REPORT_S, self.write_results)

    def on_quitting(self, **_: Any) -> None:
        """Write the merged results (not on a worker: the master merges them)."""
        if not self.is_worker:
            self.write_results()

    def _write_worker_snapshot(self, target: str) -> None:
        # Our final numbers also go to a file: the master may quit before our last report lands
        # (read back with loadtest.record.recorder.read_run_output). Remote workers may lack the
        # path.
        if not target:
            return
        try:
            path = worker_output_path(Path(target), os.getpid())
            write_json_atomically(path, self.recorder.snapshot())
        except OSError as exc:
            logger.warning("could not write the worker's HDR snapshot: %s", exc)

    def collect(self) -> dict[str, Any]:
        """The merged results of this run: all workers' snapshots on a master, else our own."""
        if self.is_master:
            snapshots = list(self.worker_snapshots.values())
        else:
            snapshots = [self.recorder.snapshot()]
        merged = merge_snapshots(snapshots)
        merged["snapshots"] = snapshots
        merged["settings"] = _settings(self.environment)
        return merged

    def write_results(self) -> None:
        """Log the merged results and the comparison table; write ``--hdr-output``."""
        merged = self.collect()
        _log_results(merged)
        rows = webui.comparison(merged, webui.reference_mac_ratio())
        if rows:
            # Locust's own summary table has whole milliseconds: this is the microsecond version.
            logger.info("HDR comparison (microseconds)\n%s", webui.text_table(rows))
        target = getattr(self.environment.parsed_options, "hdr_output", "")
        if target:
            write_json_atomically(Path(target), merged)


def _warn_unequal_split(options: Any) -> None:
    count = len(combinations_of(options))
    users = int(getattr(options, "num_users", 0) or 0)
    if count > 1 and users % count:
        logger.warning(
            "%d users do not split equally over %d combinations: use a multiple of %d",
            users,
            count,
            count,
        )


def _settings(environment: Environment) -> dict[str, Any]:
    options = environment.parsed_options
    return {
        "model": getattr(options, "model", None),
        "protocol": getattr(options, "protocol", None),
        "batch_size": getattr(options, "batch_size", None),
        "users": getattr(options, "num_users", None),
        "warmup_s": getattr(options, "warmup", None),
        "grpc_target": getattr(options, "grpc_target", None),
        "rest_url": environment.host or DEFAULT_REST_URL,
    }


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


def swarm_form_hook(environment: Environment, base_path: str) -> Callable[[], Any]:
    """A Flask ``before_request`` hook: the web UI's start form may change --model, --protocol or
    --batch-size, and Locust reads the user classes before it applies those fields."""
    from flask import jsonify, request

    swarm_path = f"{base_path.rstrip('/')}/swarm"

    def refuse(message: str) -> Any:
        return jsonify({"success": False, "message": message, "host": environment.host})

    def before_swarm() -> Any:
        options = environment.parsed_options
        if request.path != swarm_path or request.method != "POST" or options is None:
            return None
        form = request.form
        try:
            wanted = combinations(
                form.get("model", options.model),
                form.get("protocol", options.protocol),
                form.get("batch_size", options.batch_size),
            )
        except ValueError as exc:
            return refuse(str(exc))
        runner = environment.runner
        if runner is not None and runner.state in (STATE_RUNNING, STATE_SPAWNING):
            if wanted != combinations_of(options):
                return refuse("stop the test before changing the model, protocol or batch size")
            return None
        use_combinations(environment, wanted)
        return None

    return before_swarm
