"""``python -m loadtest.soak`` (``make soak``): sustained load at a fraction of measured capacity.

1. Start ``python -m serving`` on free loopback ports (or use ``--target``).
2. Measure capacity: Locust closed loop (``loadtest/locustfile.py``, ``--users`` users, one
   request in flight each) for ``--capacity-seconds``; capacity = its requests per second.
3. Soak: Locust paced at ``--load-fraction`` x capacity (``loadtest/soak_locustfile.py``) for
   ``--minutes``, sampling the server's resident memory (RSS) every ``--rss-every`` seconds.
4. Verdict: zero failed requests; p99 of the last full window within ``--max-p99-ratio`` (1.5) x
   the first one's; RSS growth from the first window to the last (medians) under
   ``--max-rss-growth`` (10 %). Figures go to ``<output>/soak-<id>/soak.json`` and the terminal;
   the exit status is 0 when every check passes, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil

from harness import ServerProcess
from loadtest.record.recorder import read_run_output
from loadtest.run.locust import locust_command

LOADTEST = Path(__file__).resolve().parents[1]
ROOT = LOADTEST.parent
CLOSED_LOOP_LOCUSTFILE = LOADTEST / "locustfile.py"
SOAK_LOCUSTFILE = LOADTEST / "soak_locustfile.py"


@dataclass
class SoakConfig:
    """What to run (see ``build_parser``)."""

    models_dir: Path = Path("models")
    output: Path = Path("reports")
    minutes: float = 10.0
    window_seconds: float = 60.0
    capacity_seconds: float = 20.0
    load_fraction: float = 0.7
    model: str = "standard"
    protocol: str = "grpc"
    batch_size: int = 1
    users: int = 8
    server_args: list[str] = field(default_factory=list)
    rss_every: float = 2.0
    max_p99_ratio: float = 1.5
    max_rss_growth: float = 0.10


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    p = argparse.ArgumentParser(
        prog="python -m loadtest.soak",
        description="Soak test: Locust at a fraction of measured capacity for minutes; checks "
        "failures, p99 stability and server memory growth.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--models-dir", type=Path, default=Path("models"), help="exported repository")
    p.add_argument("--output", type=Path, default=Path("reports"), help="results directory")
    p.add_argument(
        "--minutes",
        type=float,
        default=float(os.environ.get("SOAK_MINUTES", "10")),
        help="soak duration (env SOAK_MINUTES)",
    )
    p.add_argument("--window-seconds", type=float, default=60.0, help="latency window length")
    p.add_argument("--capacity-seconds", type=float, default=20.0, help="capacity measurement")
    p.add_argument("--load-fraction", type=float, default=0.7, help="fraction of capacity")
    p.add_argument("--model", default="standard")
    p.add_argument("--protocol", choices=("grpc", "rest"), default="grpc")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--users", type=int, default=8, help="Locust users (concurrency)")
    p.add_argument(
        "--server-args", default="", help="extra flags for the server, e.g. '--enable_batching'"
    )
    p.add_argument("--rss-every", type=float, default=2.0, help="seconds between RSS samples")
    p.add_argument("--max-p99-ratio", type=float, default=1.5)
    p.add_argument("--max-rss-growth", type=float, default=0.10)
    return p


def config_from_args(argv: Sequence[str] | None) -> SoakConfig:
    """Parse and check the flags (exit 2 with one line on a bad value)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.minutes * 60 < 2 * args.window_seconds:
        parser.error("--minutes must cover at least two --window-seconds windows")
    if not 0 < args.load_fraction <= 1:
        parser.error("--load-fraction must be in (0, 1]")
    for name in ("capacity_seconds", "window_seconds", "rss_every"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    if args.users < 1 or args.batch_size < 1:
        parser.error("--users and --batch-size must be at least 1")
    config = args.models_dir / "models.config"
    if not config.is_file():
        parser.error(f"--models-dir: {config} not found (run `make export`)")
    return SoakConfig(
        models_dir=args.models_dir,
        output=args.output,
        minutes=args.minutes,
        window_seconds=args.window_seconds,
        capacity_seconds=args.capacity_seconds,
        load_fraction=args.load_fraction,
        model=args.model,
        protocol=args.protocol,
        batch_size=args.batch_size,
        users=args.users,
        server_args=shlex.split(args.server_args),
        rss_every=args.rss_every,
        max_p99_ratio=args.max_p99_ratio,
        max_rss_growth=args.max_rss_growth,
    )


def soak_locust_command(
    locustfile: Path, server: ServerProcess, config: SoakConfig, seconds: float, prefix: Path
) -> list[str]:
    """A headless, single-process Locust run against ``server`` (no CSV statistics)."""
    users = str(config.users)
    options = [
        *("-u", users, "-r", users, "-t", f"{math.ceil(seconds)}s"),
        *("--exit-code-on-error", "0"),
        *("--model", config.model, "--protocol", config.protocol),
        *("--batch-size", str(config.batch_size)),
    ]
    return locust_command(
        prefix, server.rest_url, server.grpc_target, options, locustfile=locustfile, csv=False
    )


def run_locust(command: list[str], log: Path, env: dict[str, str], seconds: float) -> int:
    """Run Locust to completion (killed 120 s after its planned end)."""
    with open(log, "wb") as handle:
        process = subprocess.Popen(
            command, stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=ROOT
        )
        try:
            return process.wait(timeout=seconds + 120)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            return -9


class RssSampler:
    """The server process's resident memory, sampled on a thread."""

    def __init__(self, pid: int, every_s: float) -> None:
        self._process = psutil.Process(pid)
        self._every = every_s
        self.samples: list[tuple[float, int]] = []  # (seconds since start, bytes)
        self._start = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                rss = self._process.memory_info().rss
            except psutil.Error:
                return
            self.samples.append((time.monotonic() - self._start, rss))
            self._stop.wait(self._every)

    def start(self) -> RssSampler:
        """Begin sampling now."""
        self._start = time.monotonic()
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop sampling."""
        self._stop.set()
        self._thread.join(timeout=10)

    def median_between(self, start_s: float, end_s: float) -> float:
        """Median RSS of the samples in ``[start_s, end_s)`` (NaN when none)."""
        values = [rss for t, rss in self.samples if start_s <= t < end_s]
        return float(statistics.median(values)) if values else math.nan


@dataclass
class SoakResult:
    """The figures and the verdict."""

    capacity_rps: float
    target_rps: float
    achieved_rps: float
    requests: int
    failures: int
    p99_first_ms: float
    p99_last_ms: float
    p99_ratio: float
    rss_first_mb: float
    rss_last_mb: float
    rss_growth: float
    windows: list[dict[str, Any]]
    checks: dict[str, bool]

    @property
    def passed(self) -> bool:
        """Every check passed."""
        return all(self.checks.values())


def _rss_growth(rss: RssSampler, width: float, full: int) -> tuple[float, float, float]:
    """Median RSS of the first and of the last full window, and the growth between them."""
    first = rss.median_between(0, width)
    last = rss.median_between((full - 1) * width, full * width)
    return first, last, last / first - 1 if first > 0 else math.nan


def evaluate(
    config: SoakConfig,
    capacity_rps: float,
    target_rps: float,
    totals: dict[str, Any],
    windows: list[dict[str, Any]],
    rss: RssSampler,
) -> SoakResult:
    """Compare the first and last full windows; count failures over the whole soak."""
    full = int(config.minutes * 60 // config.window_seconds)
    measured = [w for w in windows if w["window"] < full]
    first, last = measured[0], measured[-1]
    failures = sum(int(w["failures"]) for w in windows)
    ratio = last["p99_ms"] / first["p99_ms"] if first["p99_ms"] > 0 else math.inf
    width = config.window_seconds
    rss_first, rss_last, growth = _rss_growth(rss, width, full)
    requests = sum(int(w["requests"]) + int(w["failures"]) for w in windows)
    achieved = sum(int(w["requests"]) for w in measured) / (full * width)
    checks = {
        "no failed requests": failures == 0 and int(totals.get("failures", 0)) == 0,
        f"p99 last/first <= {config.max_p99_ratio}": ratio <= config.max_p99_ratio,
        f"RSS growth < {config.max_rss_growth:.0%}": growth < config.max_rss_growth,
        "load reached 90% of target": achieved >= 0.9 * target_rps,
    }
    return SoakResult(
        capacity_rps=capacity_rps,
        target_rps=target_rps,
        achieved_rps=achieved,
        requests=requests,
        failures=failures,
        p99_first_ms=first["p99_ms"],
        p99_last_ms=last["p99_ms"],
        p99_ratio=ratio,
        rss_first_mb=rss_first / 2**20,
        rss_last_mb=rss_last / 2**20,
        rss_growth=growth,
        windows=windows,
        checks=checks,
    )


def _result_row(path: Path, config: SoakConfig) -> dict[str, Any]:
    merged = read_run_output(path)
    for row in merged["results"]:
        if row["model"] == config.model and row["protocol"] == config.protocol:
            return dict(row)
    raise RuntimeError(f"Locust recorded no {config.model}/{config.protocol} request ({path})")


def _measure_capacity(
    server: ServerProcess, config: SoakConfig, run_dir: Path, env: dict[str, str]
) -> dict[str, Any]:
    """The closed-loop run: the server's capacity (its HDR result row)."""
    prefix = run_dir / "capacity"
    command = soak_locust_command(
        CLOSED_LOOP_LOCUSTFILE, server, config, config.capacity_seconds, prefix
    )
    run_locust(command, run_dir / "capacity.log", env, config.capacity_seconds)
    capacity = _result_row(Path(f"{prefix}_hdr.json"), config)
    if int(capacity["failures"]):
        raise RuntimeError(f"{capacity['failures']} requests failed measuring capacity")
    return capacity


def _soak(
    server: ServerProcess, config: SoakConfig, run_dir: Path, env: dict[str, str], target: float
) -> tuple[dict[str, Any], list[dict[str, Any]], RssSampler]:
    """The paced run at ``target`` req/s: (its HDR result row, its windows, the server's RSS)."""
    assert server.process is not None
    seconds = config.minutes * 60
    prefix = run_dir / "soak"
    windows_path = run_dir / "windows.json"
    soak_env = {
        **env,
        "SOAK_RATE": f"{target:.3f}",
        "SOAK_WINDOW_S": str(config.window_seconds),
        "SOAK_WINDOWS_OUTPUT": str(windows_path),
    }
    rss = RssSampler(server.process.pid, config.rss_every).start()
    command = soak_locust_command(SOAK_LOCUSTFILE, server, config, seconds, prefix)
    code = run_locust(command, run_dir / "soak.log", soak_env, seconds)
    rss.stop()
    if not windows_path.is_file():
        raise RuntimeError(f"Locust wrote no windows (exit {code}); see {run_dir}/soak.log")
    windows = json.loads(windows_path.read_text())["windows"]
    return _result_row(Path(f"{prefix}_hdr.json"), config), windows, rss


def run_soak(config: SoakConfig, log: Any = print) -> tuple[SoakResult, Path]:
    """Run the whole soak; returns the result and the run directory."""
    run_dir = config.output / f"soak-{datetime.now():%Y%m%d-%H%M%S}"
    run_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    server = ServerProcess(
        config.models_dir / "models.config", config.server_args, log_path=run_dir / "server.log"
    )
    with server:
        log(f"server up in {server.startup_seconds:.1f} s ({shlex.join(server.command)})")
        capacity = _measure_capacity(server, config, run_dir, env)
        capacity_rps = float(capacity["requests_per_s"])
        target = config.load_fraction * capacity_rps
        log(
            f"capacity {capacity_rps:.0f} req/s ({config.users} users, closed loop, p99 "
            f"{capacity['p99_ms']:.2f} ms); soaking at {target:.0f} req/s for "
            f"{config.minutes:g} min"
        )
        totals, windows, rss = _soak(server, config, run_dir, env, target)
    result = evaluate(config, capacity_rps, target, totals, windows, rss)
    report = {
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()},
        "result": asdict(result),
        "passed": result.passed,
        "server_exit_code": server.process.returncode if server.process else None,
        "rss_samples": rss.samples,
    }
    (run_dir / "soak.json").write_text(json.dumps(report, indent=2) + "\n")
    return result, run_dir


def format_result(result: SoakResult) -> str:
    """The terminal summary."""
    lines = [
        f"capacity {result.capacity_rps:.0f} req/s, target {result.target_rps:.0f} req/s, "
        f"achieved {result.achieved_rps:.0f} req/s; {result.requests} requests, "
        f"{result.failures} failed",
        f"p99 first window {result.p99_first_ms:.2f} ms, last {result.p99_last_ms:.2f} ms "
        f"(x{result.p99_ratio:.2f})",
        f"server RSS {result.rss_first_mb:.1f} MB -> {result.rss_last_mb:.1f} MB "
        f"({result.rss_growth:+.1%})",
        "windows: "
        + ", ".join(
            f"[{w['window']}] {w['requests']} ok/{w['failures']} failed p99 {w['p99_ms']:.2f} ms"
            for w in result.windows
        ),
    ]
    lines += [f"{'PASS' if ok else 'FAIL'}: {name}" for name, ok in result.checks.items()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the soak; exit 0 when every check passes."""
    config = config_from_args(argv)
    result, run_dir = run_soak(config)
    print(format_result(result))
    print(f"results: {run_dir / 'soak.json'}")
    return 0 if result.passed else 1


if __name__ == "__main__":
    sys.exit(main())
