"""Where a measured process ran: each thread's allowed CPUs, the busy time of every CPU over a
cell, and the process's resident memory after it (issue #21).

A runtime that sizes or pins its thread pools on its own (ONNX Runtime's default pool pinned one
worker per core of the machine) can leave the CPU set the process was given, and then it measures
another configuration than the one asked for. Each cell therefore records, for the server's
process tree or the in-process floor's process, every thread with its ``Cpus_allowed_list``
(:func:`serving.runtimes.cpuset.thread_affinities`), how many of them may run outside the set,
the busy seconds of each CPU (``/proc/stat`` deltas through psutil) and the RSS. A cell with a
thread outside its set gets the ``threads-outside`` flag.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any, TypedDict

import psutil

from loadtest.cells import THREADS_OUTSIDE, CellKey, Row


class ThreadRecord(TypedDict):
    """One thread: its process, id, name and allowed CPUs (a kernel CPU list: ``0``, ``0-1``)."""

    pid: int
    tid: int
    name: str
    cpus: str


class ProcessThreads(TypedDict):
    """The threads of a process tree against the CPU set it was given (``threads.json``)."""

    cpu_set: str  # the CPUs the process was given, as a kernel CPU list
    threads: list[ThreadRecord]
    outside: int  # threads allowed on a CPU outside ``cpu_set``
    rss_mb: float | None  # resident memory of the tree, MiB


def cpu_list(cpus: Collection[int]) -> str:
    """CPU ids as a kernel CPU list: ``{0, 1, 2, 5}`` → ``0-2,5``."""
    parts: list[str] = []
    ordered = sorted(cpus)
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        parts.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(parts)


def _tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def process_threads(pid: int, cpu_set: Collection[int]) -> ProcessThreads:
    """Every thread of ``pid`` and its descendants (a server's workers) against ``cpu_set``."""
    from serving.runtimes.cpuset import thread_affinities

    allowed = frozenset(cpu_set)
    threads: list[ThreadRecord] = []
    outside = rss = 0
    for process in _tree(pid):
        try:
            affinities = thread_affinities(process.pid)
            rss += process.memory_info().rss
        except (OSError, psutil.Error):
            continue  # it exited meanwhile
        threads += [
            ThreadRecord(pid=process.pid, tid=t.tid, name=t.name, cpus=cpu_list(t.cpus))
            for t in affinities
        ]
        outside += sum(1 for t in affinities if not t.cpus <= allowed)
    return ProcessThreads(
        cpu_set=cpu_list(allowed),
        threads=threads,
        outside=outside,
        rss_mb=round(rss / 2**20, 1) if threads else None,
    )


def cpu_busy() -> list[float]:
    """Busy seconds of each CPU of the machine since boot (``/proc/stat``: all but idle and
    iowait), by CPU id."""
    return [
        sum(times) - times.idle - getattr(times, "iowait", 0.0)
        for times in psutil.cpu_times(percpu=True)
    ]


def busy_between(before: Sequence[float], after: Sequence[float]) -> str:
    """The ``cpu_busy_s`` column: ``cpu0=1.92;cpu1=0.31``, busy seconds of each CPU between two
    :func:`cpu_busy` readings."""
    return ";".join(
        f"cpu{i}={max(b - a, 0.0):.3f}" for i, (a, b) in enumerate(zip(before, after, strict=False))
    )


def parse_busy(text: str) -> dict[int, float]:
    """A ``cpu_busy_s`` column back as {CPU id: busy seconds} (empty for old results)."""
    out: dict[int, float] = {}
    for part in text.split(";"):
        name, _, seconds = part.partition("=")
        if name.startswith("cpu") and seconds:
            out[int(name[3:])] = float(seconds)
    return out


def with_threads(row: Row, threads: Mapping[str, Any] | None, busy: str) -> Row:
    """``row`` with the threads, CPU and memory columns filled from a :class:`ProcessThreads`
    (``None``: not read) and a ``cpu_busy_s`` text; flagged when a thread leaves its set."""
    out = Row(**row)
    out["cpu_busy_s"] = busy
    if threads is not None:
        out["threads"] = len(threads["threads"])
        out["threads_outside"] = int(threads["outside"])
        out["server_rss_mb"] = threads.get("rss_mb")
        if threads["outside"]:
            flags = [f for f in out["flags"].split(";") if f]
            out["flags"] = ";".join([*flags, THREADS_OUTSIDE])
    return out


def threads_record(key: CellKey, threads: Mapping[str, Any], busy: str | None) -> dict[str, Any]:
    """One entry of ``threads.json``: the cell's key columns, ``cpu_busy_s`` and its
    :class:`ProcessThreads` (``cpu_set``, ``threads``, ``outside``, ``rss_mb``)."""
    return {**key.to_row(), "cpu_busy_s": busy or "", **threads}
