"""Theoretical cost of each model: multiply-adds (MACs) per image, split into conv and dense.

Read from the export (``export_report.json`` and each version's
``assets.extra/training_metrics.json``, which lists per-layer MACs); the tutorial architecture's
numbers are the fallback when a report is rendered without the repository at hand.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from contract import EXPORT_REPORT_FILENAME

# The tutorial CNNs (see training/architectures.py): conv1 32@3x3, conv2 64@3x3, dense 1600→256→10.
REFERENCE_COSTS: dict[str, dict[str, Any]] = {
    "standard": {
        "macs": 2_837_120,
        "conv_macs": 2_424_960,
        "dense_macs": 412_160,
        "params": 431_242,
        "source": "tutorial architecture",
    },
    "separable": {
        "macs": 722_532,
        "conv_macs": 310_372,
        "dense_macs": 412_160,
        "params": 414_899,
        "source": "tutorial architecture",
    },
}
TRAINING_METRICS_IN_VERSION = "assets.extra/training_metrics.json"


def _from_layers(layers: list[dict[str, Any]]) -> dict[str, int]:
    conv = sum(int(layer["macs"]) for layer in layers if "Conv" in str(layer.get("kind", "")))
    dense = sum(int(layer["macs"]) for layer in layers if layer.get("kind") == "Dense")
    return {"conv_macs": conv, "dense_macs": dense}


def model_costs(models_dir: Path | None) -> dict[str, dict[str, Any]]:
    """MACs, conv/dense split and parameters per model, from the repository when possible."""
    costs = {name: dict(values) for name, values in REFERENCE_COSTS.items()}
    if models_dir is None:
        return costs
    report_path = models_dir / EXPORT_REPORT_FILENAME
    try:
        report = json.loads(report_path.read_text())
    except (OSError, ValueError):
        return costs
    for name, entry in report.get("models", {}).items():
        if not isinstance(entry, dict) or "macs" not in entry:
            continue
        cost: dict[str, Any] = {
            "macs": int(entry["macs"]),
            "params": int(entry.get("params", 0)),
            "version": entry.get("version"),
            "source": str(report_path),
        }
        reference = REFERENCE_COSTS.get(name, {})
        cost["conv_macs"] = reference.get("conv_macs")
        cost["dense_macs"] = reference.get("dense_macs")
        version_path = entry.get("version_path") or str(
            models_dir / name / str(entry.get("version"))
        )
        try:
            metrics = json.loads((Path(version_path) / TRAINING_METRICS_IN_VERSION).read_text())
            cost.update(_from_layers(metrics["layers"]))
        except (OSError, ValueError, KeyError, TypeError):
            pass
        costs[name] = cost
    return costs


def macs_ratio(costs: dict[str, dict[str, Any]]) -> float:
    """How many times fewer MACs the separable model needs than the standard one."""
    return float(costs["standard"]["macs"]) / float(costs["separable"]["macs"])
