"""CPU use of process trees over time, read back for any time window afterwards.

The sweep samples the Locust processes (master and workers) and the server's process tree a few
times a second. Locust reports its measurement window in wall-clock time when it has finished, so
the samples are kept and the CPU use over that exact window is interpolated from them.
"""

from __future__ import annotations

import bisect
import os
import threading
import time
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psutil


@dataclass
class _Tree:
    root: int
    last: dict[int, float] = field(default_factory=dict)  # pid → CPU seconds when last seen
    times: list[float] = field(default_factory=list)
    totals: list[float] = field(default_factory=list)  # CPU seconds of the tree, cumulative
    per_pid: list[dict[int, float]] = field(default_factory=list)


class CpuSampler:
    """Background sampling of named process trees (a root pid and all its descendants).

    A descendant that exits keeps contributing the CPU time it had when last seen, so the
    cumulative total never drops.
    """

    def __init__(self, interval_s: float = 0.2) -> None:
        self.interval_s = interval_s
        self._trees: dict[str, _Tree] = {}
        self._machine_times: list[float] = []
        self._machine_busy: list[float] = []  # busy CPU seconds of the whole machine, cumulative
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu-sampler", daemon=True)

    def __enter__(self) -> CpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def track(self, name: str, pid: int) -> None:
        """Start sampling the tree rooted at ``pid`` under ``name`` (replacing a previous one)."""
        with self._lock:
            self._trees[name] = _Tree(pid)
        self.sample_now()

    def untrack(self, name: str) -> None:
        """Stop sampling ``name``."""
        with self._lock:
            self._trees.pop(name, None)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample_now()

    def sample_now(self) -> None:
        """Take one sample of every tracked tree and of the machine."""
        now = time.time()
        machine = psutil.cpu_times()
        busy = sum(machine) - machine.idle - getattr(machine, "iowait", 0.0)
        with self._lock:
            self._machine_times.append(now)
            self._machine_busy.append(busy)
            for tree in self._trees.values():
                try:
                    root = psutil.Process(tree.root)
                    processes = [root, *root.children(recursive=True)]
                except psutil.Error:
                    processes = []
                for process in processes:
                    try:
                        cpu = process.cpu_times()
                    except psutil.Error:
                        continue
                    tree.last[process.pid] = cpu.user + cpu.system
                tree.times.append(now)
                tree.totals.append(sum(tree.last.values()))
                tree.per_pid.append(dict(tree.last))

    @staticmethod
    def _at(times: list[float], values: list[float], when: float) -> float:
        if not times:
            return 0.0
        i = bisect.bisect_left(times, when)
        if i <= 0:
            return values[0]
        if i >= len(times):
            return values[-1]
        t0, t1 = times[i - 1], times[i]
        v0, v1 = values[i - 1], values[i]
        return v0 + (v1 - v0) * (when - t0) / (t1 - t0) if t1 > t0 else v1

    def percent(self, name: str, start: float, end: float) -> float | None:
        """CPU use of tree ``name`` between wall times ``start`` and ``end``, in % of one core."""
        with self._lock:
            tree = self._trees.get(name)
            if tree is None or len(tree.times) < 2 or end <= start:
                return None
            used = self._at(tree.times, tree.totals, end) - self._at(tree.times, tree.totals, start)
        return 100.0 * max(used, 0.0) / (end - start)

    def busiest_process_percent(self, name: str, start: float, end: float) -> float | None:
        """The highest CPU use of a single process of tree ``name`` in the window (% of a core).

        A Locust process runs its users on one gevent loop, i.e. on one core: near 100 % it can
        no longer send requests on time, whatever the total across processes is.
        """
        with self._lock:
            tree = self._trees.get(name)
            if tree is None or len(tree.times) < 2 or end <= start:
                return None
            pids = set().union(*tree.per_pid)
            best = 0.0
            for pid in pids:
                # Before a process is first seen its count is taken as its first reading, so
                # the CPU it used before that is not put into the window.
                first = next(sample[pid] for sample in tree.per_pid if pid in sample)
                values = [sample.get(pid, first) for sample in tree.per_pid]
                used = self._at(tree.times, values, end) - self._at(tree.times, values, start)
                best = max(best, used)
        return 100.0 * best / (end - start)

    def machine_percent(self, start: float, end: float) -> float | None:
        """Busy share of all the machine's cores between ``start`` and ``end`` (0-100)."""
        with self._lock:
            if len(self._machine_times) < 2 or end <= start:
                return None
            used = self._at(self._machine_times, self._machine_busy, end) - self._at(
                self._machine_times, self._machine_busy, start
            )
        cores = psutil.cpu_count() or 1
        return 100.0 * max(used, 0.0) / ((end - start) * cores)


def usable_cpus() -> set[int]:
    """CPU ids this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return set(os.sched_getaffinity(0))
    return set(range(psutil.cpu_count() or 1))


@contextmanager
def pinned(cpus: Collection[int] | None) -> Iterator[None]:
    """Run the block on ``cpus`` only (``None``: unchanged), then restore the previous affinity.

    Affinity is per thread on Linux and a child process inherits its parent thread's, so a
    process started inside the block (and everything it starts) stays on ``cpus``; already
    running threads, such as the CPU sampler's, are not moved.
    """
    if not cpus or not hasattr(os, "sched_setaffinity"):
        yield
        return
    previous = os.sched_getaffinity(0)
    os.sched_setaffinity(0, set(cpus))
    try:
        yield
    finally:
        os.sched_setaffinity(0, previous)


def pin_from_flag(text: str | None) -> None:
    """Pin this process to the comma-separated CPU ids of a ``--cpus`` flag (the sweep's
    in-process and operator-profile children); nothing when the flag was not given. Call it
    before a runtime starts its thread pools, which size themselves to the affinity.

    Every thread already running is pinned too: affinity is per thread, and imports start
    threads (a floor pinned to CPU 0 this way had one thread still allowed on 0-1 before)."""
    if text:
        from loadtest.cli import cpu_ids

        cpus = set(cpu_ids(text, "--cpus"))
        os.sched_setaffinity(0, cpus)
        tasks = Path("/proc/self/task")
        for task in tasks.iterdir() if tasks.is_dir() else ():
            try:
                os.sched_setaffinity(int(task.name), cpus)
            except OSError:
                continue  # the thread ended meanwhile
