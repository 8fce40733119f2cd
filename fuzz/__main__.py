"""``python -m fuzz`` (``make fuzz``): the long fuzz run.

1. The Hypothesis properties of ``tests/test_fuzz_grpc.py`` and ``tests/test_fuzz_rest.py``
   against a real server, ``--examples`` cases each (default 3,400: over 10,000 in all), with
   fresh random inputs every run (``FUZZ_RANDOM=1``; a failure prints the blob that reproduces
   it).
2. atheris (coverage-guided, libFuzzer) on the ``TensorProto`` decoder for ``--atheris-runs``
   inputs, when atheris is installed.

Prints cases run and failures per property and writes them to ``<output>/fuzz.json``; exits 1 when
anything failed.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PROPERTY_FILES = ("tests/test_fuzz_grpc.py", "tests/test_fuzz_rest.py")


def run_properties(examples: int, report: Path) -> tuple[int, dict[str, dict[str, int]], float]:
    """Run the property tests; (pytest exit code, tally per property, seconds)."""
    report.unlink(missing_ok=True)
    env = {
        **os.environ,
        "FUZZ_EXAMPLES": str(examples),
        "FUZZ_RANDOM": "1",
        "FUZZ_REPORT": str(report),
    }
    started = time.monotonic()
    command = [sys.executable, "-m", "pytest", *PROPERTY_FILES, "-q", "-p", "no:cacheprovider"]
    code = subprocess.run(command, cwd=ROOT, env=env).returncode
    tally = json.loads(report.read_text()) if report.is_file() else {}
    return code, tally, time.monotonic() - started


def run_atheris(runs: int) -> dict[str, Any]:
    """The atheris harness; {"runs", "crashed", "seconds"} (or {"skipped": why})."""
    if importlib.util.find_spec("atheris") is None:
        return {"skipped": "atheris is not installed (pip install atheris==3.0.0)"}
    started = time.monotonic()
    completed = subprocess.run(
        [sys.executable, "-m", "fuzz.atheris_codec", f"-runs={runs}", "-print_final_stats=1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    output = completed.stdout + completed.stderr
    done = re.search(r"Done (\d+) runs", output)
    result: dict[str, Any] = {
        "runs": int(done.group(1)) if done else 0,
        "crashed": completed.returncode != 0,
        "seconds": round(time.monotonic() - started, 1),
    }
    if completed.returncode != 0:
        result["tail"] = output[-3000:]
    return result


def main(argv: list[str] | None = None) -> int:
    """Run both fuzzers and summarize."""
    parser = argparse.ArgumentParser(prog="python -m fuzz", description=__doc__)
    parser.add_argument("--examples", type=int, default=3400, help="cases per property")
    parser.add_argument("--atheris-runs", type=int, default=200_000)
    parser.add_argument("--output", type=Path, default=Path("reports") / "fuzz")
    args = parser.parse_args(argv)
    args.output.mkdir(parents=True, exist_ok=True)
    code, tally, seconds = run_properties(args.examples, (args.output / "tally.json").resolve())
    cases = {prop: sum(outcomes.values()) for prop, outcomes in tally.items()}
    atheris = run_atheris(args.atheris_runs) if args.atheris_runs > 0 else {"skipped": "off"}
    summary = {
        "hypothesis": {
            "examples_per_property": args.examples,
            "cases": cases,
            "total_cases": sum(cases.values()),
            "outcomes": tally,
            "failed": code != 0,
            "seconds": round(seconds, 1),
        },
        "atheris": atheris,
    }
    (args.output / "fuzz.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"hypothesis: {sum(cases.values())} cases in {seconds:.0f} s, {cases}")
    for prop, outcomes in sorted(tally.items()):
        print(f"  {prop}: {dict(sorted(outcomes.items()))}")
    print(f"  {'FAILED (see above)' if code else 'no failure'}")
    if "skipped" in atheris:
        print(f"atheris: skipped: {atheris['skipped']}")
    else:
        state = "CRASHED" if atheris["crashed"] else "no crash"
        print(f"atheris: {atheris['runs']} runs in {atheris['seconds']} s, {state}")
        if atheris["crashed"]:
            print(atheris["tail"])
    print(f"results: {args.output / 'fuzz.json'}")
    failed = code != 0 or bool(atheris.get("crashed"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
