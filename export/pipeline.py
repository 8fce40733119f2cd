"""The export pipeline: pick the trained run, stage a version, convert, check parity, publish."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from contract import (
    EXPORT_REPORT_FILENAME,
    MODEL_NAMES,
    ONNX_FILENAME,
    TFLITE_FILENAME,
    WARMUP_RELATIVE_PATH,
)

TRAINING_METRICS_IN_VERSION = "assets.extra/training_metrics.json"


class ExportError(RuntimeError):
    """The export cannot produce a correct repository; the message says why."""


def select_run(variant_dir: Path) -> Path:
    """The run of a variant with the best final validation accuracy (never test accuracy)."""
    runs = sorted(p for p in variant_dir.iterdir() if (p / "metrics.json").is_file())
    if not runs:
        raise ExportError(f"no trained run in {variant_dir} (run `python -m training` first)")

    def final_val_accuracy(run: Path) -> float:
        history = json.loads((run / "metrics.json").read_text())["history"]
        return float(history.get("val_accuracy", [0.0])[-1])

    return max(runs, key=final_val_accuracy)


def export_repository(
    artifacts: Path,
    output: Path,
    *,
    config_base_path: Path | None = None,
    opset: int | None = None,
    parity_images: int = 10_000,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Export each trained variant as a new version; write models.config and the report."""
    # Check the inputs before importing TensorFlow, so a wrong path fails in a fraction of a second.
    names = [n for n in MODEL_NAMES if (artifacts / n).is_dir()]
    if not names:
        raise ExportError(f"no trained models under {artifacts}/ (run `python -m training` first)")
    run_dirs = {name: select_run(artifacts / name) for name in names}
    if parity_images < 1:
        raise ExportError(f"parity needs at least one test image, got {parity_images}")

    import numpy as np

    from export.onnx_convert import DEFAULT_OPSET, convert_saved_model
    from export.parity import check_parity, check_tflite_parity
    from export.repository import write_models_config, write_triton_config, write_version
    from export.tflite_convert import convert_saved_model_to_tflite
    from export.warmup import write_warmup_file
    from mnist_data import DataError, load_mnist
    from training.train import SAVED_MODEL_DIR, preprocess

    try:
        mnist = load_mnist()
    except DataError as exc:
        raise ExportError(str(exc)) from exc
    count = min(parity_images, len(mnist.x_test))
    test_images = preprocess(mnist.x_test[:count])
    test_labels = mnist.y_test[:count].astype(np.int64)

    report: dict[str, Any] = {"models": {}}
    for name in names:
        run_dir = run_dirs[name]
        parity_holder: dict[str, Any] = {}

        def populate(
            staging: Path,
            run_dir: Path = run_dir,
            name: str = name,
            parity_holder: dict[str, Any] = parity_holder,
        ) -> None:
            shutil.copytree(run_dir / SAVED_MODEL_DIR, staging, dirs_exist_ok=True)
            write_warmup_file(staging / WARMUP_RELATIVE_PATH, name, test_images[:32])
            shutil.copy2(run_dir / "metrics.json", staging / TRAINING_METRICS_IN_VERSION)
            convert_saved_model(staging, staging / ONNX_FILENAME, opset or DEFAULT_OPSET)
            parity = check_parity(staging, test_images, test_labels)
            parity_holder["result"] = parity
            if not parity.passed:
                raise ExportError(
                    f"{name}: TF and ONNX Runtime disagree on {parity.images} test images: "
                    f"max |Δprobability| {parity.max_abs_diff:.2e} (limit 1e-5), "
                    f"{parity.class_mismatches} different classes. Version not published."
                )
            convert_saved_model_to_tflite(staging, staging / TFLITE_FILENAME)
            tflite = check_tflite_parity(staging, test_images, test_labels)
            parity_holder["tflite"] = tflite
            if not tflite.passed:
                raise ExportError(
                    f"{name}: TF and LiteRT disagree on {tflite.images} test images: "
                    f"max |Δprobability| {tflite.max_abs_diff:.2e} (limit 1e-5), "
                    f"{tflite.class_mismatches} different classes. Version not published."
                )

        log(f"exporting {name} from {run_dir}")
        version = write_version(output / name, populate)
        write_triton_config(output / name)
        metrics = json.loads((run_dir / "metrics.json").read_text())
        report["models"][name] = {
            "version": version,
            "version_path": str(output / name / str(version)),
            "source_run": str(run_dir),
            "params": metrics["params"],
            "macs": metrics["macs"],
            "test_accuracy_keras": metrics["test_accuracy"],
            "parity": parity_holder["result"].as_dict(),
            "tflite_parity": parity_holder["tflite"].as_dict(),
        }
    config_path = write_models_config(output, names, config_base_path)
    report["models_config"] = str(config_path)
    (output / EXPORT_REPORT_FILENAME).write_text(json.dumps(report, indent=2) + "\n")
    return report


def print_report(report: dict[str, Any], console: Console) -> None:
    """The parity table: one row per exported model."""
    table = Table(title="export: TensorFlow vs ONNX Runtime and LiteRT")
    columns = ("model", "version", "opset", "images", "max |Δp|", "class diffs", "accuracy")
    for column in (*columns, "tflite |Δp|", "tflite diffs", "tflite KB"):
        table.add_column(column, justify="right" if column != "model" else "left")
    for name, entry in report["models"].items():
        parity, tflite = entry["parity"], entry["tflite_parity"]
        table.add_row(
            name,
            str(entry["version"]),
            str(parity["opset"]),
            f"{parity['images']:,}",
            f"{parity['max_abs_diff']:.2e}",
            str(parity["class_mismatches"]),
            f"{parity['onnx_accuracy']:.4f}",
            f"{tflite['max_abs_diff']:.2e}",
            str(tflite["class_mismatches"]),
            f"{tflite['tflite_bytes'] / 1024:,.0f}",
        )
    console.print(table)
    console.print(f"models.config: {report['models_config']}")
