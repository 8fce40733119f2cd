"""Training of both variants with the tutorial's configuration, deterministic per seed."""

from __future__ import annotations

import json
import platform
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from mnist_data import Mnist
from training.architectures import Variant, build_model
from training.complexity import complexity_summary
from training.savedmodel import save_serving_model

METRICS_FILE = "metrics.json"
SAVED_MODEL_DIR = "saved_model"


@dataclass(frozen=True)
class TrainConfig:
    """The tutorial's configuration: Adam, categorical cross-entropy, batch 250, 25 epochs."""

    epochs: int = 25
    batch_size: int = 250
    validation_split: float = 0.2
    seed: int = 42
    max_train_samples: int | None = None
    verbose: int = 2  # one line per epoch; 1 = Keras progress bar


@dataclass
class RunResult:
    """What one training run of one variant produced."""

    variant: str
    seed: int
    directory: Path
    metrics: dict[str, Any] = field(default_factory=dict)


class _EpochTimer(keras.callbacks.Callback):
    def __init__(self) -> None:
        super().__init__()
        self.seconds: list[float] = []
        self._start = 0.0

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.seconds.append(time.perf_counter() - self._start)


def preprocess(images: np.ndarray) -> np.ndarray:
    """uint8 (N,28,28) → float32 (N,28,28,1) in [0,1], the serving input contract."""
    return (images.astype(np.float32) / 255.0)[..., np.newaxis]


def make_deterministic(seed: int) -> None:
    """Seed Python, NumPy and TF, and force deterministic kernels: same seed → same weights."""
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def train_variant(
    variant: Variant, data: Mnist, config: TrainConfig, output_dir: Path
) -> RunResult:
    """Train one variant once, save its SavedModel and ``metrics.json`` under ``output_dir``."""
    make_deterministic(config.seed)
    x_train, y_train = data.x_train, data.y_train
    if config.max_train_samples is not None:
        x_train, y_train = x_train[: config.max_train_samples], y_train[: config.max_train_samples]
    x_train_f, x_test_f = preprocess(x_train), preprocess(data.x_test)
    y_train_1h = keras.utils.to_categorical(y_train, 10)
    y_test_1h = keras.utils.to_categorical(data.y_test, 10)

    model = build_model(variant)
    model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
    timer = _EpochTimer()
    history = model.fit(
        x_train_f,
        y_train_1h,
        batch_size=config.batch_size,
        epochs=config.epochs,
        validation_split=config.validation_split,
        verbose=config.verbose,
        callbacks=[timer],
    )
    test_loss, test_accuracy = model.evaluate(
        x_test_f, y_test_1h, batch_size=1000, verbose=0, return_dict=False
    )

    output_dir.mkdir(parents=True, exist_ok=True)
    save_serving_model(model, output_dir / SAVED_MODEL_DIR)
    metrics = {
        "variant": variant,
        "seed": config.seed,
        "config": {
            "epochs": config.epochs,
            "batch_size": config.batch_size,
            "validation_split": config.validation_split,
            "train_samples": len(x_train),
            "optimizer": "adam",
            "loss": "categorical_crossentropy",
        },
        "history": {
            **{key: [float(v) for v in values] for key, values in history.history.items()},
            "seconds_per_epoch": timer.seconds,
        },
        "mean_seconds_per_epoch": statistics.fmean(timer.seconds),
        "test_loss": float(test_loss),
        "test_accuracy": float(test_accuracy),
        **complexity_summary(model),
        "environment": {
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "python": platform.python_version(),
            "machine": platform.machine(),
        },
    }
    (output_dir / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
    return RunResult(variant=variant, seed=config.seed, directory=output_dir, metrics=metrics)


def summarize(results: list[RunResult]) -> dict[str, dict[str, Any]]:
    """Per variant: mean ± std over runs of test accuracy, test loss and seconds per epoch."""
    summary: dict[str, dict[str, Any]] = {}
    for variant in sorted({r.variant for r in results}, key=["standard", "separable"].index):
        runs = [r for r in results if r.variant == variant]

        def stats(key: str, runs: list[RunResult] = runs) -> dict[str, float]:
            values = [float(r.metrics[key]) for r in runs]
            std = statistics.stdev(values) if len(values) > 1 else 0.0
            return {"mean": statistics.fmean(values), "std": std}

        summary[variant] = {
            "runs": len(runs),
            "seeds": [r.seed for r in runs],
            "params": runs[0].metrics["params"],
            "macs": runs[0].metrics["macs"],
            "test_accuracy": stats("test_accuracy"),
            "test_loss": stats("test_loss"),
            "seconds_per_epoch": stats("mean_seconds_per_epoch"),
            "run_directories": [str(r.directory) for r in runs],
        }
    return summary
