"""``python -m export``: write the model repository (SavedModel, ONNX and TFLite per version) with
parity."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from contract.cli import positive_int

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags."""
    parser = argparse.ArgumentParser(
        prog="python -m export",
        description="Export trained models to a TF Serving / Triton / ONNX model repository.",
    )
    parser.add_argument(
        "--artifacts", type=Path, default=Path("artifacts"), help="python -m training output"
    )
    parser.add_argument("--output", type=Path, default=Path("models"), help="repository root")
    parser.add_argument(
        "--config-base-path",
        type=Path,
        default=None,
        help="write models.config paths under this root (e.g. /models) instead of absolute ones",
    )
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset (default 17)")
    parser.add_argument(
        "--parity-images",
        type=positive_int,
        default=10_000,
        help="test images compared between TF and ONNX Runtime (default: all 10,000)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Export every trained variant found under ``--artifacts``; non-zero on any failure."""
    args = parse_args(argv)
    from rich.console import Console

    from export.pipeline import ExportError, export_repository, print_report

    console = Console()
    try:
        report = export_repository(
            args.artifacts,
            args.output,
            config_base_path=args.config_base_path,
            opset=args.opset,
            parity_images=args.parity_images,
            log=console.print,
        )
    except ExportError as exc:
        # One line on stderr, whatever the terminal width (Rich would wrap long paths).
        Console(stderr=True).print(
            f"[red]export failed:[/red] {exc}", highlight=False, soft_wrap=True
        )
        return 1
    print_report(report, console)
    console.print(json.dumps({"repository": str(args.output)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
