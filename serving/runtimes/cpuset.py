"""The CPU set this process may run on, and where each thread of a process may run.

Every runtime sizes its thread pools from :func:`cpu_count` (``os.sched_getaffinity``, not
``os.cpu_count``), so a server started under ``taskset``, a cgroup cpuset or a container's
``--cpuset-cpus`` runs as many threads as it has CPUs and no more. :func:`thread_affinities` reads
back where a process's threads are allowed to run (``/proc/<pid>/task/*/status``), for the tests
and the load tester; it imports nothing from the transports or any runtime.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


def allowed_cpus(pid: int = 0) -> frozenset[int]:
    """The CPUs ``pid`` (0: this process) may run on."""
    if hasattr(os, "sched_getaffinity"):
        return frozenset(os.sched_getaffinity(pid))
    return frozenset(range(os.cpu_count() or 1))  # no affinity API (macOS): every CPU


def cpu_count() -> int:
    """CPUs in this process's CPU set: the default size of every inference thread pool."""
    return max(1, len(allowed_cpus()))


def threads_or_cpu_count(requested: int) -> int:
    """``requested`` threads, or one per CPU of this process's CPU set when it is 0."""
    return requested if requested > 0 else cpu_count()


def parse_cpu_list(text: str) -> frozenset[int]:
    """A kernel CPU list (``0-3,8,10-11``) as a set of CPU numbers."""
    cpus: set[int] = set()
    for part in text.strip().split(","):
        if not part:
            continue
        first, _, last = part.partition("-")
        cpus.update(range(int(first), int(last or first) + 1))
    return frozenset(cpus)


@dataclass(frozen=True)
class ThreadAffinity:
    """One thread of a process and the CPUs it may run on."""

    tid: int
    name: str
    cpus: frozenset[int]


def thread_affinities(pid: int) -> list[ThreadAffinity]:
    """Every thread of ``pid`` with its allowed CPUs (``Cpus_allowed_list``), by thread id.

    Threads that exit while being read are left out. Linux only (``/proc``).
    """
    threads = []
    for task in sorted(Path(f"/proc/{pid}/task").iterdir(), key=lambda p: int(p.name)):
        try:
            status = (task / "status").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue  # the thread ended meanwhile
        fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
        threads.append(
            ThreadAffinity(
                int(task.name),
                fields.get("Name", "").strip(),
                parse_cpu_list(fields["Cpus_allowed_list"]),
            )
        )
    return threads


def threads_outside(pid: int, cpus: frozenset[int]) -> list[ThreadAffinity]:
    """The threads of ``pid`` allowed on any CPU outside ``cpus`` (empty: all stay inside)."""
    return [t for t in thread_affinities(pid) if not t.cpus <= cpus]
