"""TensorFlow runtime at concurrency 32, batching off against on with max_batch_size 32 and 16
(20 ms timeout, 2 batch threads), 4 rounds alternating the order; ratios per round, medians.

    python results/cpu-2core/data-plane-2026-11-30c/tf_batching_16_vs_32.py MODELS_DIR

Run from the repository root (it imports benchmarks and serving); writes the batching files
under /tmp.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

sys.path.insert(0, ".")

from benchmarks.serving import drive
from serving.process import ServerProcess


def main() -> None:
    """Print each round and the ratios' medians."""
    config = Path(sys.argv[1]) / "models.config"
    modes: dict[str, list[str]] = {"off": []}
    for max_batch in (32, 16):
        path = Path(f"/tmp/batching{max_batch}.config")
        path.write_text(
            f"max_batch_size {{ value: {max_batch} }} batch_timeout_micros {{ value: 20000 }} "
            "num_batch_threads { value: 2 } max_enqueued_batches { value: 1000 }"
        )
        modes[f"on{max_batch}"] = ["--enable_batching", f"--batching_parameters_file={path}"]
    rounds = []
    for index in range(4):
        order = list(modes) if index % 2 == 0 else list(reversed(modes))
        row = {}
        for label in order:
            with ServerProcess(config, ["--runtime=tensorflow", *modes[label]]) as server:
                row[label] = drive("grpc", server.grpc_target, "separable", 1, 32, 5, processes=2)
        rounds.append(row)
        figures = "  ".join(
            f"{k} {v['rps']:.0f}/s p50 {v['p50_ms']:.1f} ms" for k, v in row.items()
        )
        print(f"round {index} {figures}", flush=True)
    for label in ("on32", "on16"):
        ratios = [row[label]["rps"] / row["off"]["rps"] for row in rounds]
        listed = ", ".join(f"{x:.2f}" for x in ratios)
        print(f"{label}/off median {statistics.median(ratios):.2f}x ({listed})")


if __name__ == "__main__":
    main()
