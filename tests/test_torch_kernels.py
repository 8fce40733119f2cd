"""The prepared GPU run's kernel benchmark (benchmarks/torch_kernels.py), run on the CPU for a
fraction of a second, the --cudnn_benchmark setting of the torch runtime, and the shell scripts
of loadtest/gpu/ (they parse; the card's folder name)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import shlex
import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

if importlib.util.find_spec("torch") is None or importlib.util.find_spec("onnx2torch") is None:
    pytest.skip("needs the torch extra (pip install .[torch])", allow_module_level=True)

import torch
from torch import nn

from benchmarks import torch_kernels
from contract import MODEL_NAMES
from loadtest.run.children import floor_command
from serving.runtimes import RuntimeOptions, load_runtime
from serving.server import runtime_options
from serving.settings import parse_settings

ROOT = Path(__file__).resolve().parents[1]
GPU = ROOT / "loadtest" / "gpu"


@pytest.mark.parametrize(
    ("name", "module", "expected"),
    [
        ("conv2_1/separable_conv2d/depthwise", nn.Conv2d(32, 32, 3, groups=32), "depthwise"),
        ("conv1_1/separable_conv2d/depthwise", nn.Conv2d(1, 1, 3), "depthwise"),
        ("conv2_1/BiasAdd", nn.Conv2d(32, 32, 3, groups=32), "depthwise"),
        ("conv2_1/BiasAdd", nn.Conv2d(32, 64, 1), "pointwise"),
        ("conv1_1/BiasAdd", nn.Conv2d(1, 32, 3), "standard conv"),
        ("dense1_1/MatMul", nn.Linear(4, 2), "dense"),
        ("conv1_1/Relu", nn.ReLU(), None),
    ],
)
def test_layer_class(name, module, expected):
    assert torch_kernels.layer_class(name, module) == expected


def test_kernels_benchmark_on_cpu(exported_repository, tmp_path):
    out_json, out_md = tmp_path / "kernels.json", tmp_path / "kernels.md"
    saved = torch.backends.cudnn.benchmark
    code = torch_kernels.main(
        [
            *("--models-dir", str(exported_repository), "--device", "cpu"),
            *("--batches", "1,4", "--rounds", "2", "--seconds-per-round", "0.005"),
            *("--json", str(out_json), "--markdown", str(out_md)),
        ]
    )
    assert code == 0
    assert torch.backends.cudnn.benchmark == saved  # restored
    data = json.loads(out_json.read_text())
    assert data["machine"]["device"] == "cpu" and data["machine"]["torch"] == torch.__version__
    cells = data["cells"]
    # both models x 2 batch sizes x cudnn.benchmark on/off x CUDA graph on/off
    assert len(cells) == len(MODEL_NAMES) * 2 * 4
    configs = {(c["model"], c["batch"], c["cudnn_benchmark"], c["cuda_graph"]) for c in cells}
    assert len(configs) == len(cells)
    for cell in cells:
        assert 0 < cell["ms_min"] <= cell["ms_median"] <= cell["ms_max"]
        assert cell["rounds"] == 2 and cell["calls_per_round"] >= 1
        assert not cell["graph_replayed"]  # no CUDA graphs on the CPU
        assert not cell["unattributed"]
        names = [n for kernels in cell["kernels_by_class"].values() for n in kernels]
        assert names and all(n.startswith("aten::") for n in names), names
        assert any("conv" in n for n in names)
        layers = cell["kernels_by_layer"]
        assert layers and all(layers.values())
    classes = {c["model"]: set(c["kernels_by_class"]) for c in cells}
    assert classes["standard"] == {"standard conv", "dense"}
    assert classes["separable"] == {"depthwise", "pointwise", "dense"}
    table = out_md.read_text()
    assert "| model | batch | cudnn.benchmark | CUDA graph | ms per call | min-max |" in table
    assert "| model | batch | configuration | layer class | kernels |" in table
    first = table.split("\n\n")[2].splitlines()
    assert len(first) == 2 + len(cells)
    assert "| separable | 4 | off | no (CPU) |" in table
    assert "| separable | 1 | cudnn.benchmark on, eager | depthwise | `aten::" in table


def test_cudnn_benchmark_setting_reaches_the_torch_runtime(tmp_path, exported_repository):
    (tmp_path / "m" / "1").mkdir(parents=True)
    base = f"--model_base_path={tmp_path / 'm'}"
    assert runtime_options(parse_settings([base])).cudnn_benchmark is True
    options = runtime_options(parse_settings([base, "--cudnn_benchmark=false"]))
    assert options.cudnn_benchmark is False
    runtime = load_runtime("torch", exported_repository / "standard" / "1", options)
    try:
        assert runtime.describe()["cudnn_benchmark"] == "n/a"  # cuDNN applies on CUDA only
    finally:
        runtime.close()
    assert RuntimeOptions().cudnn_benchmark is True


def test_floor_child_gets_flags_that_start_with_dashes(tmp_path):
    """The sweep's --server-args reach the in-process floor's process intact."""
    grid = SimpleNamespace(
        models=("standard",), batch_sizes=(1,), duration_s=1.0, warmup_s=1.0, repeats=1
    )
    config = SimpleNamespace(
        grid=grid,
        models_dir=tmp_path,
        device="cuda",
        server_args=("--cudnn_benchmark=false", "--max_rows_per_run=64"),
    )
    command = floor_command("torch", cast(Any, config), tmp_path / "floor.json")
    parser = argparse.ArgumentParser()
    parser.add_argument("--server-args", default="")
    args, _ = parser.parse_known_args(command[3:])
    assert shlex.split(args.server_args) == list(config.server_args)


@pytest.mark.parametrize("script", ["run.sh", "commit.sh"])
def test_gpu_scripts_parse(script):
    subprocess.run(["bash", "-n", str(GPU / script)], check=True)


@pytest.mark.parametrize(
    ("name", "slug"),
    [
        ("NVIDIA H100 80GB HBM3", "h100"),
        ("NVIDIA H200", "h200"),
        ("NVIDIA A100-SXM4-80GB", "a100"),
        ("Tesla T4", "t4"),
    ],
)
def test_card_folder_name(name, slug):
    script = (GPU / "run.sh").read_text()
    function = script[
        script.index("card_slug() {") : script.index("\n}\n", script.index("card_slug() {")) + 3
    ]
    result = subprocess.run(
        ["bash", "-c", f'{function}\ncard_slug "$1"', "_", name],
        check=True,
        capture_output=True,
        text=True,
    )
    assert result.stdout.strip() == slug
