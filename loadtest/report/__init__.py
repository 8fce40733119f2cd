"""``python -m loadtest.report``: report.md, ratios.csv, plots and verdict from a sweep's saved
results.

``python -m loadtest.report RUN_DIR`` (re-)renders ``RUN_DIR/report.md``, ``ratios.csv`` and
``RUN_DIR/plots/`` from ``results.json`` (or ``results.csv``) plus the optional ``run.json``,
``machine.json`` and ``opprofile.csv``. ``python -m loadtest.report --compare RUN_A RUN_B``
writes a side-by-side comparison.

Modules by job: :mod:`.data` (reading a run, combining repetitions, the window rule of the
throughput samples), :mod:`.analysis` (ratios with intervals and flag codes), :mod:`.agreement`
(the in-process floor, the server's inference phase and the op-profile sum per served cell),
:mod:`.breakdown` (overhead, the server's phases, the operator profile by layer kind),
:mod:`.gap` (the first table: ratios at batch 1, 32, 256 against the MACs ratio and the layer
kinds that keep the gap; the fastest runtimes), :mod:`.runtimes` (kernels as executed, served vs
in-process at batch 256 with the server's memory), :mod:`.verdict`, :mod:`.tables`,
:mod:`.plots`, :mod:`.rendering` (report.md and the terminal summary) and :mod:`.compare`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console

from loadtest.report.analysis import compute_ratios, write_ratios
from loadtest.report.compare import COMPARE_NAME, compare
from loadtest.report.data import Index, Run, load_run
from loadtest.report.rendering import REPORT_NAME, headline, print_summary, render
from loadtest.report.verdict import verdict

__all__ = [
    "COMPARE_NAME",
    "REPORT_NAME",
    "Index",
    "Run",
    "compare",
    "compute_ratios",
    "headline",
    "load_run",
    "main",
    "print_summary",
    "render",
    "verdict",
    "write_ratios",
]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.report",
        description="Render report.md from a sweep's saved results, or compare two runs.",
    )
    parser.add_argument("run_dir", nargs="?", type=Path, help="a reports/<run-id> directory")
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("RUN_A", "RUN_B"))
    parser.add_argument("--output", type=Path, help="where --compare writes (default: next to A)")
    parser.add_argument(
        "--headline",
        action="store_true",
        help="print RUN_DIR's verdict and FLOPs-vs-reality table (the README's block) and "
        "write nothing",
    )
    parser.add_argument(
        "--pair-runtimes",
        action="append",
        default=[],
        metavar="A=B",
        help="with --compare: line up runtime A of RUN_A with runtime B of RUN_B per cell "
        "(e.g. onnx=torch); repeatable",
    )
    return parser


def _runtime_pairs(parser: argparse.ArgumentParser, texts: Sequence[str]) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for pair in texts:
        runtime_a, sep, runtime_b = pair.partition("=")
        if not (sep and runtime_a and runtime_b) or runtime_a in pairs:
            parser.error(f"--pair-runtimes {pair!r}: expected A=B, each A once")
        pairs[runtime_a] = runtime_b
    return pairs


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m loadtest.report RUN_DIR`` or ``--compare RUN_A RUN_B``."""
    parser = _parser()
    args = parser.parse_args(argv)
    if bool(args.run_dir) == bool(args.compare):
        parser.error("give either RUN_DIR or --compare RUN_A RUN_B")
    if args.headline and not args.run_dir:
        parser.error("--headline needs RUN_DIR")
    pairs = _runtime_pairs(parser, args.pair_runtimes)
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)
    try:
        if args.headline:
            print(headline(args.run_dir))
            return 0
        if args.compare:
            path = compare(args.compare[0], args.compare[1], args.output, pairs)
        else:
            path = render(args.run_dir)
            print_summary(args.run_dir, console)
    except (FileNotFoundError, ValueError, KeyError) as exc:
        print(f"python -m loadtest.report: error: {exc}", file=sys.stderr)
        return 1
    console.print(f"report: {path}")
    return 0
