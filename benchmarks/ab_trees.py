"""A/B of the served path between source trees: servers run from each tree in turn (A, B, A, B,
...), each measured with the same load, so a change's effect is read against the machine's
drift (on a shared machine absolute figures move by 2x within minutes; the ratios of one round
do not).

    git archive <commit> | tar -x -C /tmp/base        # the "before" tree
    python -m benchmarks.ab_trees --models-dir models --tree before=/tmp/base --tree after=. \\
        --case rest:32:1 --case grpc:32:1 [--rounds 4] [--duration 3] [--runtime onnx]

A case is ``api:batch:concurrency``; the first case's p50 is also reported relative to the
second's from the same server (e.g. REST over gRPC).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

from benchmarks.serving import drive
from harness import ServerProcess


def _server(config: Path, tree: Path, flags: list[str]) -> ServerProcess:
    # python -m serving run in the tree: the interpreter puts its working directory first on
    # the path, so the tree's packages are the ones imported.
    return ServerProcess(config, flags, cwd=tree.resolve())


def main(argv: list[str] | None = None) -> int:
    """Run the rounds, print each measurement and the medians per tree."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.ab_trees", description=__doc__)
    p.add_argument("--models-dir", type=Path, default=Path("models"))
    p.add_argument("--model", default="separable")
    p.add_argument("--tree", action="append", required=True, help="label=path, two or more")
    p.add_argument("--case", action="append", required=True, help="api:batch:concurrency")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--duration", type=float, default=3.0)
    p.add_argument("--runtime", default="onnx")
    p.add_argument("--flag", action="append", default=[], help="extra server flag")
    p.add_argument(
        "--tree-flag",
        action="append",
        default=[],
        help="label=FLAG: an extra server flag for one tree only (the same tree may be given "
        "twice under two labels, to A/B a flag)",
    )
    args = p.parse_args(argv)
    config = (args.models_dir / "models.config").resolve()
    trees = {label: Path(path) for label, path in (t.split("=", 1) for t in args.tree)}
    cases = [(api, int(batch), int(c)) for api, batch, c in (x.split(":") for x in args.case)]
    results: dict[str, list[list[dict[str, float]]]] = {label: [] for label in trees}
    for round_index in range(args.rounds):
        for label, tree in trees.items():
            flags = [f"--runtime={args.runtime}", *args.flag]
            flags += [f for lb, f in (x.split("=", 1) for x in args.tree_flag) if lb == label]
            with _server(config, tree, flags) as server:
                row = []
                for api, batch, concurrency in cases:
                    target = server.grpc_target if api == "grpc" else server.rest_url
                    row.append(drive(api, target, args.model, batch, concurrency, args.duration))
            results[label].append(row)
            figures = "  ".join(
                f"{api}:{batch}:c{c} p50 {r['p50_ms']:.3f} ms {r['rps']:.0f}/s"
                for (api, batch, c), r in zip(cases, row, strict=True)
            )
            ratio = (
                f"  first/second {row[0]['p50_ms'] / row[1]['p50_ms']:.2f}x" if len(row) > 1 else ""
            )
            print(
                f"round {round_index} {label:<12} {figures}{ratio}"
                f"  (load {os.getloadavg()[0]:.1f})",
                flush=True,
            )
    print("medians over rounds:")
    for label, rows in results.items():
        parts = []
        for index, (api, batch, c) in enumerate(cases):
            p50 = statistics.median(r[index]["p50_ms"] for r in rows)
            rps = statistics.median(r[index]["rps"] for r in rows)
            parts.append(f"{api}:{batch}:c{c} p50 {p50:.3f} ms {rps:.0f}/s")
        if len(cases) > 1:
            median_ratio = statistics.median(r[0]["p50_ms"] / r[1]["p50_ms"] for r in rows)
            parts.append(f"first/second {median_ratio:.2f}x")
        print(f"  {label:<12} " + "  ".join(parts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
