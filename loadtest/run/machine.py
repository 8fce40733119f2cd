"""Facts about the machine a sweep ran on, so that two reports can be compared honestly."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil

LIBRARIES = (
    "numpy",
    "onnxruntime",
    "onnxruntime-gpu",
    "tensorflow",
    "torch",
    "grpcio",
    "protobuf",
    "aiohttp",
    "locust",
    "hdrhistogram",
    "matplotlib",
)


def cpu_model() -> str:
    """The CPU's marketing name (``/proc/cpuinfo`` on Linux, ``platform`` elsewhere)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def gpus() -> list[dict[str, str]]:
    """NVIDIA GPUs reported by ``nvidia-smi`` (empty when there is none or no driver)."""
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        output = subprocess.run(
            [
                "nvidia-smi",
                "--query-gpu=name,memory.total,driver_version",
                "--format=csv,noheader",
            ],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    found = []
    for line in output.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 3:
            found.append({"name": parts[0], "memory": parts[1], "driver": parts[2]})
    return found


def library_versions() -> dict[str, str]:
    """Installed versions of the libraries that shape the numbers (absent ones are left out)."""
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def machine_info() -> dict[str, Any]:
    """CPU model, core counts, memory, GPUs, OS, Python and library versions."""
    memory = psutil.virtual_memory().total
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        affinity = os.cpu_count() or 0
    return {
        "hostname": platform.node(),
        "cpu_model": cpu_model(),
        "logical_cores": psutil.cpu_count(logical=True),
        "physical_cores": psutil.cpu_count(logical=False),
        "usable_cores": affinity,
        "memory_gib": round(memory / 2**30, 1),
        "gpus": gpus(),
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "libraries": library_versions(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else [],
    }


def describe(info: dict[str, Any]) -> str:
    """One line: ``Intel Xeon … · 2 cores · 7.8 GiB · no GPU``."""
    gpu_text = ", ".join(g["name"] for g in info.get("gpus", [])) or "no GPU"
    cores = info.get("usable_cores") or info.get("logical_cores")
    memory = info.get("memory_gib", "?")
    return f"{info.get('cpu_model', '?')} · {cores} cores · {memory} GiB · {gpu_text}"
