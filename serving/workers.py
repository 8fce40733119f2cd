"""``--workers N``: N server processes sharing the gRPC and REST ports (SO_REUSEPORT).

The kernel spreads connections over the processes, each with its own runtime and batcher, so
throughput is not capped by one Python interpreter. Metrics are aggregated with
prometheus-client's multiprocess mode. The parent only supervises:

- worker 0 listens from the start (health NOT_SERVING while it loads); the others bind the
  shared ports only once their own models and worker 0's are loaded, so no process answers
  SERVING while another behind the same ports still loads;
- it forwards SIGTERM/SIGINT to every worker and waits for them to drain;
- a worker killed by a signal (SIGKILL from the OOM killer, a segfault) or that stopped on its
  own is started again while the others keep serving: only the requests it had in flight fail.
  The new process listens only once its models are loaded (it is never worker index 0);
- a worker that exits with an error status (bad flags, a model that cannot load, an unexpected
  exception) stops the server with that status, as restarting would repeat the failure;
- a crash loop (``CRASH_LOOP_DEATHS`` deaths within ``CRASH_LOOP_WINDOW_S`` seconds) stops the
  server with status 1 and a log line saying so, rather than restarting forever.
"""

from __future__ import annotations

import collections
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from types import FrameType

log = logging.getLogger("serving.workers")

CRASH_LOOP_DEATHS = 5
CRASH_LOOP_WINDOW_S = 60.0
CRASH_LOOP_EXIT = 1
_POLL_S = 0.1


def worker_argv(argv: list[str]) -> list[str]:
    """The command line of one worker: the same flags with ``--workers=1``."""
    cleaned: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--workers":
            skip = True
            continue
        if arg.startswith(("--workers=", "--worker_index=", "--worker_ready_file=")):
            continue
        cleaned.append(arg)
    return [*cleaned, "--workers=1"]


def _describe(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exited with status {returncode}"


def _mark_dead(pid: int, metrics_dir: str) -> None:
    # The dead process's live gauges must stop counting; its counters and histograms stay
    # (they remain part of the totals, as a restart must not make counters go backwards).
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, metrics_dir)


def _configure_logging() -> None:
    # The parent logs like the workers do (serving/server.py), to the same stderr.
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO,
            format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s",
        )


class Supervisor:
    """Starts the workers, restarts the ones that die, stops them all on request."""

    def __init__(
        self,
        command: list[str],
        count: int,
        env: dict[str, str],
        metrics_dir: str,
        *,
        crash_loop_deaths: int = CRASH_LOOP_DEATHS,
        crash_loop_window_s: float = CRASH_LOOP_WINDOW_S,
        spawn: Callable[..., subprocess.Popen[bytes]] = subprocess.Popen,
    ) -> None:
        self._command = command
        self._env = env
        self._metrics_dir = metrics_dir
        self._spawn = spawn
        self._deaths: collections.deque[float] = collections.deque()
        self._crash_loop_deaths = crash_loop_deaths
        self._crash_loop_window_s = crash_loop_window_s
        self._started = 0
        self.stopping = False
        self.children = [self._start() for _ in range(count)]

    def _start(self) -> subprocess.Popen[bytes]:
        # worker_index is the start's sequence number: only the very first start (0) listens
        # before its models are loaded, so a restarted worker never receives connections it
        # cannot answer yet.
        index, self._started = self._started, self._started + 1
        return self._spawn([*self._command, f"--worker_index={index}"], env=self._env)

    def signal_all(self, signum: int) -> None:
        """Send ``signum`` to every running worker (and restart none from now on)."""
        self.stopping = True
        for child in self.children:
            if child.poll() is None:
                child.send_signal(signum)

    def check(self) -> int | None:
        """Handle the workers that exited since the last call; an exit status once the server
        must stop (a worker failed, or a crash loop), else None."""
        if self.stopping:
            return None
        for slot, child in enumerate(self.children):
            code = child.poll()
            if code is None:
                continue
            _mark_dead(child.pid, self._metrics_dir)
            if code > 0:
                log.error(
                    "worker %d (pid %d) %s; stopping the server", slot, child.pid, _describe(code)
                )
                return code
            now = time.monotonic()
            self._deaths.append(now)
            while self._deaths and now - self._deaths[0] > self._crash_loop_window_s:
                self._deaths.popleft()
            if len(self._deaths) >= self._crash_loop_deaths:
                log.error(
                    "crash loop: %d worker deaths within %.0f s (last: worker %d, pid %d, %s); "
                    "stopping the server",
                    len(self._deaths),
                    self._crash_loop_window_s,
                    slot,
                    child.pid,
                    _describe(code),
                )
                return CRASH_LOOP_EXIT
            self.children[slot] = self._start()
            log.warning(
                "worker %d (pid %d) %s; restarted as pid %d",
                slot,
                child.pid,
                _describe(code),
                self.children[slot].pid,
            )
        return None

    def running(self) -> bool:
        """Whether any worker is still running."""
        return any(child.poll() is None for child in self.children)


def run_workers(
    argv: list[str],
    count: int,
    *,
    crash_loop_deaths: int = CRASH_LOOP_DEATHS,
    crash_loop_window_s: float = CRASH_LOOP_WINDOW_S,
) -> int:
    """Start ``count`` workers and supervise them; the exit status: 0 after a requested stop,
    a failed worker's status, or 1 after a crash loop."""
    _configure_logging()
    metrics_dir = tempfile.mkdtemp(prefix="serving-metrics-")
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": metrics_dir}
    # Worker 0 creates it once loaded; the other workers bind the shared ports only after that.
    ready_file = os.path.join(metrics_dir, "worker0.ready")
    command = [
        sys.executable,
        "-m",
        "serving",
        *worker_argv(argv),
        f"--worker_ready_file={ready_file}",
    ]
    supervisor = Supervisor(
        command,
        count,
        env,
        metrics_dir,
        crash_loop_deaths=crash_loop_deaths,
        crash_loop_window_s=crash_loop_window_s,
    )

    def forward(signum: int, frame: FrameType | None) -> None:
        supervisor.signal_all(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    failure: int | None = None
    try:
        while supervisor.running() or not supervisor.stopping:
            if failure is None:
                failure = supervisor.check()
                if failure is not None:
                    supervisor.signal_all(signal.SIGTERM)  # stop the rest
            time.sleep(_POLL_S)
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
    if failure is not None:
        return failure
    codes = [child.returncode for child in supervisor.children]
    return max((abs(c) for c in codes), default=0)
