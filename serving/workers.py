"""``--workers N``: N server processes sharing the gRPC and REST ports (SO_REUSEPORT).

The kernel spreads connections over the processes, each with its own runtime and batcher, so
throughput is not capped by one Python interpreter. Metrics are aggregated with
prometheus-client's multiprocess mode. The parent only supervises: it forwards SIGTERM/SIGINT,
and if one worker dies the others are stopped and the exit code reports the failure.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from types import FrameType


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
        if arg.startswith(("--workers=", "--worker_index=")):
            continue
        cleaned.append(arg)
    return [*cleaned, "--workers=1"]


def run_workers(argv: list[str], count: int) -> int:
    """Start ``count`` workers, supervise them, return the worst exit code."""
    metrics_dir = tempfile.mkdtemp(prefix="serving-metrics-")
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": metrics_dir}
    command = [sys.executable, "-m", "serving", *worker_argv(argv)]
    children = [subprocess.Popen([*command, f"--worker_index={i}"], env=env) for i in range(count)]
    stopping = False

    def forward(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    try:
        while any(child.poll() is None for child in children):
            if not stopping and any(child.poll() not in (None, 0) for child in children):
                forward(signal.SIGTERM, None)  # one worker failed: stop the rest
            time.sleep(0.2)
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
    codes = [child.returncode for child in children]
    return max((abs(c) for c in codes), default=0)
