"""The side-by-side summary table of a training session."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table


def _mean_std(stats: dict[str, float], fmt: str) -> str:
    return f"{stats['mean']:{fmt}} ± {stats['std']:{fmt}}"


def print_summary(summary: dict[str, dict[str, Any]], console: Console) -> None:
    """Print variants as columns: accuracy, loss, epoch time, parameters and MACs."""
    variants = list(summary)
    table = Table(title="standard vs separable")
    table.add_column("")
    for variant in variants:
        table.add_column(variant, justify="right")
    rows = [
        ("runs", lambda s: str(s["runs"])),
        ("test accuracy", lambda s: _mean_std(s["test_accuracy"], ".4f")),
        ("test loss", lambda s: _mean_std(s["test_loss"], ".4f")),
        ("s / epoch", lambda s: _mean_std(s["seconds_per_epoch"], ".2f")),
        ("parameters", lambda s: f"{s['params']:,}"),
        ("MACs / image", lambda s: f"{s['macs']:,}"),
    ]
    for label, render in rows:
        table.add_row(label, *(render(summary[v]) for v in variants))
    if {"standard", "separable"} <= set(summary):
        ratio = summary["standard"]["macs"] / summary["separable"]["macs"]
        table.caption = f"separable needs {ratio:.2f}x fewer multiply-adds"
    console.print(table)
