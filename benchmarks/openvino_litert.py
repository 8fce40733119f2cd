"""The OpenVINO and LiteRT runtimes on an exported repository: bf16's effect on the answers,
OpenVINO's per-node counters, XNNPACK's delegated operators, and in-process ms per call against
ONNX Runtime (alternating rounds, so drift hits every runtime alike).

    python -m benchmarks.openvino_litert --models-dir models --batch 32 > out.json
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.rest_decode_floor import alternating_rounds
from contract import INPUT_NAME, MODEL_NAMES, SIGNATURE_NAME
from serving.runtimes import Runtime, RuntimeOptions, load_runtime
from serving.runtimes.cpuset import allowed_cpus
from serving.runtimes.litert import LiteRtRuntime
from serving.runtimes.openvino import OpenVinoRuntime, node_profile


def _answers(runtimes: dict[str, Runtime], images: np.ndarray) -> dict[str, Any]:
    want = runtimes["onnx"].predict(SIGNATURE_NAME, {INPUT_NAME: images})
    result = {}
    for name, runtime in runtimes.items():
        got = runtime.predict(SIGNATURE_NAME, {INPUT_NAME: images})
        diff = np.abs(got["probabilities"] - want["probabilities"])
        result[name] = {
            "max_abs_diff_vs_onnx": float(diff.max(initial=0.0)),
            "class_diffs_vs_onnx": int(np.sum(got["classes"] != want["classes"])),
        }
    return result


def measure_model(version_dir: Path, images: np.ndarray, batch: int, rounds: int) -> dict[str, Any]:
    """Everything for one model version."""
    runtimes: dict[str, Runtime] = {
        "onnx": load_runtime("onnx", version_dir, RuntimeOptions()),
        "openvino-f32": OpenVinoRuntime(version_dir, RuntimeOptions()),
        "openvino-bf16": OpenVinoRuntime(version_dir, RuntimeOptions(), precision="bf16"),
        "litert": LiteRtRuntime(version_dir, RuntimeOptions()),
    }
    x = images[:batch]
    steps = {
        name: (lambda r=runtime: r.predict(SIGNATURE_NAME, {INPUT_NAME: x}))
        for name, runtime in runtimes.items()
    }
    per_round = alternating_rounds(steps, rounds, 100)
    litert = runtimes["litert"]
    assert isinstance(litert, LiteRtRuntime)
    delegation = litert.delegation()
    return {
        "answers_on_test_set": _answers(runtimes, images),
        "bf16_precision_reported": runtimes["openvino-bf16"].describe()["precision"],
        f"ms_per_call_batch_{batch}": {
            k: round(statistics.median(v) * 1e3, 3) for k, v in per_round.items()
        },
        "openvino_nodes": [
            {
                "name": n.name,
                "layer_type": n.layer_type,
                "exec_type": n.exec_type,
                "us": round(n.real_time_us, 1),
            }
            for n in node_profile(version_dir, x, repeats=20)
            if n.executed
        ],
        "xnnpack": {
            "operators": len(delegation.operators),
            "delegated": delegation.delegated,
            "not_delegated": delegation.not_delegated,
            "partitions": delegation.partitions,
        },
    }


def main(argv: list[str] | None = None) -> int:
    """Print one JSON object: a section per model."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.openvino_litert", description=__doc__
    )
    parser.add_argument("--models-dir", type=Path, default=Path("models"))
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args(argv)
    from mnist_data import load_mnist

    images = (load_mnist().x_test.astype(np.float32) / 255.0)[..., None]
    result: dict[str, Any] = {"cpus": sorted(allowed_cpus())}
    for name in MODEL_NAMES:
        versions = [p for p in (args.models_dir / name).iterdir() if p.name.isdigit()]
        version_dir = max(versions, key=lambda p: int(p.name))
        result[name] = measure_model(version_dir, images, args.batch, args.rounds)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
