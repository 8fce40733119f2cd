"""CPU time per request by library: start a server, drive 1-image gRPC load at concurrency 8
(``benchmarks.serving.drive``), ``perf record`` its main thread meanwhile, and print the
microseconds per request each shared object (libpython, onnxruntime, the kernel...) took.

    python -m benchmarks.perf_by_library LABEL PORT -- SERVER COMMAND...

The server command must listen for gRPC on 127.0.0.1:PORT and serve ``separable``; its output
goes to ``$TMPDIR/perf-LABEL.log`` and the profile to ``$TMPDIR/perf-LABEL.perf``. Needs Linux
``perf`` and the right to profile the server (root, or ``perf_event_paranoid`` <= 1).

Produced results/cpu-2core/data-plane-2026-11-30c/perf-by-library.txt, as the shell script
``perf_by_library.sh`` it was then (the same steps and timings, the defaults here).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.serving import drive

FREQUENCY_HZ = 2000
TOP = 9


def per_request_us(
    report: str, rps: float, seconds: float, frequency_hz: int = FREQUENCY_HZ, top: int = TOP
) -> list[tuple[float, str]]:
    """(µs per request, shared object) for the first ``top`` rows of ``perf report --sort dso
    -n --stdio`` (columns: overhead %, samples, object): samples / frequency / seconds is the
    CPU share of the thread, divided by the request rate."""
    rows: list[tuple[float, str]] = []
    for line in report.splitlines():
        if "%" not in line:
            continue
        fields = line.split()
        if len(fields) < 3:
            continue
        try:
            samples = float(fields[1])
        except ValueError:
            continue
        rows.append((samples / frequency_hz / seconds / rps * 1e6, fields[2]))
        if len(rows) == top:
            break
    return rows


def profile(
    label: str, port: int, command: list[str], startup_s: float, warmup_s: float, seconds: float
) -> tuple[float, str]:
    """Run the server, load and profile it; the request rate and ``perf report``'s text."""
    work = Path(tempfile.gettempdir())
    perf_data = work / f"perf-{label}.perf"
    target = f"127.0.0.1:{port}"
    with open(work / f"perf-{label}.log", "wb") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        time.sleep(startup_s)
        drive("grpc", target, "separable", 1, 8, warmup_s)
        # -t: the server's main thread only (its event loop), whose time per request is the
        # question; perf runs beside the load for `seconds`, the load a little longer.
        record = [
            *("perf", "record", "-F", str(FREQUENCY_HZ), "-g", "-t", str(server.pid)),
            *("-o", str(perf_data), "--", "sleep", str(seconds)),
        ]
        recorder = subprocess.Popen(
            record,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        rps = drive("grpc", target, "separable", 1, 8, seconds + 0.5)["rps"]
        recorder.wait()
        time.sleep(0.7)
    finally:
        server.terminate()
        server.wait()
    report_command = [
        *("perf", "report", "-i", str(perf_data), "--no-children", "--sort", "dso"),
        *("-g", "none", "--stdio", "-n"),
    ]
    report = subprocess.run(
        report_command,
        capture_output=True,
        text=True,
    ).stdout
    return rps, report


def main(argv: list[str] | None = None) -> int:
    """Profile the server and print its request rate and CPU µs per request by library."""
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.perf_by_library", description=__doc__.splitlines()[0]
    )
    p.add_argument("label", help="names the output files and the printed block")
    p.add_argument("port", type=int, help="the server's gRPC port on 127.0.0.1")
    p.add_argument("command", nargs="+", help="the server command, after --")
    p.add_argument("--startup-s", type=float, default=7.0, help="wait before loading")
    p.add_argument("--warmup-s", type=float, default=2.0, help="load before profiling")
    p.add_argument("--seconds", type=float, default=6.0, help="profiled seconds")
    args = p.parse_args(argv)
    rps, report = profile(
        args.label, args.port, args.command, args.startup_s, args.warmup_s, args.seconds
    )
    print(f"{args.label} rps={rps}")
    for micros, library in per_request_us(report, rps, args.seconds):
        print(f"  {micros:8.1f} us/req  {library}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
