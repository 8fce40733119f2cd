"""``python -m training``: train both variants and write SavedModels with metrics."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from contract.cli import positive_int

# Quiet TF's C++ start-up chatter before TensorFlow is imported.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags; the defaults are the tutorial's training configuration."""
    parser = argparse.ArgumentParser(
        prog="python -m training",
        description="Train the tutorial's Conv2D and SeparableConv2D MNIST CNNs.",
    )
    parser.add_argument("--variant", choices=["standard", "separable", "all"], default="all")
    parser.add_argument("--epochs", type=positive_int, default=25)
    parser.add_argument("--batch-size", type=positive_int, default=250)
    parser.add_argument("--seed", type=int, default=42, help="seed of the first run")
    parser.add_argument(
        "--runs", type=positive_int, default=1, help="runs per variant, seeds seed..seed+N-1"
    )
    parser.add_argument("--max-train-samples", type=positive_int, default=None)
    parser.add_argument("--output", type=Path, default=Path("artifacts"))
    parser.add_argument(
        "--progress-bar", action="store_true", help="Keras progress bar instead of a line per epoch"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Train, save, and print the side-by-side summary."""
    args = parse_args(argv)
    from rich.console import Console

    from mnist_data import DataError, load_mnist

    console = Console()
    try:
        data = load_mnist()
    except DataError as exc:
        # stderr, unwrapped: the message's own lines, not the console width, decide the layout.
        Console(stderr=True).print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        return 2

    from training.architectures import VARIANTS
    from training.report import print_summary
    from training.train import TrainConfig, summarize, train_variant

    variants = VARIANTS if args.variant == "all" else (args.variant,)
    results = []
    for variant in variants:
        for run in range(args.runs):
            seed = args.seed + run
            config = TrainConfig(
                epochs=args.epochs,
                batch_size=args.batch_size,
                seed=seed,
                max_train_samples=args.max_train_samples,
                verbose=1 if args.progress_bar else 2,
            )
            console.rule(f"{variant} · run {run + 1}/{args.runs} · seed {seed}")
            out_dir = args.output / variant / f"run{run + 1}-seed{seed}"
            results.append(train_variant(variant, data, config, out_dir))

    summary = summarize(results)
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print_summary(summary, console)
    console.print(f"artifacts written to {args.output}/ (summary.json)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
