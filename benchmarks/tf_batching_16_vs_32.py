"""TensorFlow runtime at concurrency 32, batching off against on with max_batch_size 32 and 16
(20 ms timeout, 2 batch threads), 4 rounds alternating the order; ratios per round, medians.

    python -m benchmarks.tf_batching_16_vs_32 MODELS_DIR [--rounds 4] [--duration 5]

Produced results/cpu-2core/data-plane-2026-11-30c/tf-batching-16-vs-32.txt (there still as
``python results/cpu-2core/data-plane-2026-11-30c/tf_batching_16_vs_32.py``, its path then).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from benchmarks.serving import drive, server_rounds, write_batching_config


def main(argv: list[str] | None = None) -> int:
    """Print each round and the ratios' medians."""
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.tf_batching_16_vs_32", description=__doc__.splitlines()[0]
    )
    p.add_argument("models_dir", type=Path, help="a model repository (python -m export)")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--duration", type=float, default=5.0, help="seconds of load per server")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--model", default="separable")
    p.add_argument("--runtime", default="tensorflow")
    args = p.parse_args(argv)
    config = args.models_dir / "models.config"
    runtime = f"--runtime={args.runtime}"
    with tempfile.TemporaryDirectory(prefix="batching-") as tmp:
        modes: dict[str, list[str]] = {"off": [runtime]}
        for max_batch in (32, 16):
            path = write_batching_config(Path(tmp) / f"batching{max_batch}.config", max_batch, 2)
            modes[f"on{max_batch}"] = [
                runtime,
                "--enable_batching",
                f"--batching_parameters_file={path}",
            ]

        def show(index: int, row: dict[str, dict[str, float]]) -> None:
            figures = "  ".join(
                f"{k} {v['rps']:.0f}/s p50 {v['p50_ms']:.1f} ms" for k, v in row.items()
            )
            print(f"round {index} {figures}", flush=True)

        rounds = server_rounds(
            config,
            modes,
            args.rounds,
            lambda server: drive(
                "grpc",
                server.grpc_target,
                args.model,
                1,
                args.concurrency,
                args.duration,
                processes=2,
            ),
            on_round=show,
        )
    for label in ("on32", "on16"):
        ratios = [row[label]["rps"] / row["off"]["rps"] for row in rounds]
        listed = ", ".join(f"{x:.2f}" for x in ratios)
        print(f"{label}/off median {statistics.median(ratios):.2f}x ({listed})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
