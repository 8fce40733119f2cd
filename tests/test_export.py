"""Export: the model repository, warm-up records, models.config, ONNX structure and parity."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from google.protobuf import text_format

from contract import (
    EXPORT_REPORT_FILENAME,
    INPUT_NAME,
    MODEL_NAMES,
    MODELS_CONFIG_FILENAME,
    ONNX_FILENAME,
    OUTPUT_CLASSES,
    OUTPUT_PROBABILITIES,
    SIGNATURE_NAME,
    TFLITE_FILENAME,
    TRITON_CONFIG_FILENAME,
    WARMUP_RELATIVE_PATH,
)

REPO_ROOT = Path(__file__).resolve().parent.parent


def _hashes(root: Path) -> dict[str, str]:
    """SHA-256 of every file under ``root``, keyed by relative path."""
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def _leftovers(model_dir: Path) -> list[str]:
    """Entries that are neither integer versions nor the Triton config (staging debris)."""
    return sorted(
        p.name
        for p in model_dir.iterdir()
        if not p.name.isdigit() and p.name != TRITON_CONFIG_FILENAME
    )


def _parse_models_config(path: Path):
    from contract.protos import model_server_config_pb2

    return text_format.Parse(path.read_text(), model_server_config_pb2.ModelServerConfig())


def test_repository_layout(exported_repository):
    for name in MODEL_NAMES:
        version = exported_repository / name / "1"
        for relative in (
            "saved_model.pb",
            "variables/variables.index",
            WARMUP_RELATIVE_PATH,
            "assets.extra/training_metrics.json",
            ONNX_FILENAME,
            TFLITE_FILENAME,
        ):
            assert (version / relative).is_file(), f"{name}/1/{relative}"
        assert (exported_repository / name / TRITON_CONFIG_FILENAME).is_file()
        assert _leftovers(exported_repository / name) == []
        metrics = json.loads((version / "assets.extra/training_metrics.json").read_text())
        assert metrics["variant"] == name
    assert (exported_repository / MODELS_CONFIG_FILENAME).is_file()
    assert (exported_repository / EXPORT_REPORT_FILENAME).is_file()


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_warmup_file_holds_predict_requests(exported_repository, name):
    import tensorflow as tf

    from export.warmup import WARMUP_BATCH_SIZES, read_warmup_file

    logs = read_warmup_file(exported_repository / name / "1" / WARMUP_RELATIVE_PATH)
    assert len(logs) == len(WARMUP_BATCH_SIZES)
    for log, batch_size in zip(logs, WARMUP_BATCH_SIZES, strict=True):
        assert log.WhichOneof("log_type") == "predict_log"
        request = log.predict_log.request
        assert request.model_spec.name == name
        assert request.model_spec.signature_name == SIGNATURE_NAME
        assert list(request.inputs) == [INPUT_NAME]
        images = tf.make_ndarray(request.inputs[INPUT_NAME])
        assert images.dtype == np.float32
        assert images.shape == (batch_size, 28, 28, 1)
        assert images.min() >= 0.0 and images.max() <= 1.0 and images.max() > 0.5


def test_models_config_parses_with_absolute_paths(exported_repository):
    config = _parse_models_config(exported_repository / MODELS_CONFIG_FILENAME)
    entries = config.model_config_list.config
    assert [entry.name for entry in entries] == list(MODEL_NAMES)
    for entry in entries:
        assert os.path.isabs(entry.base_path)
        assert Path(entry.base_path) == (exported_repository / entry.name).resolve()
        assert entry.model_platform == "tensorflow"
        assert (Path(entry.base_path) / "1" / "saved_model.pb").is_file()


def test_models_config_for_another_mount(tmp_path):
    from export.repository import write_models_config

    path = write_models_config(tmp_path, list(MODEL_NAMES), Path("/models"))
    config = _parse_models_config(path)
    assert {e.name: e.base_path for e in config.model_config_list.config} == {
        name: f"/models/{name}" for name in MODEL_NAMES
    }


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_onnx_model_is_valid_with_contract_names(exported_repository, name):
    model = onnx.load(str(exported_repository / name / "1" / ONNX_FILENAME))
    onnx.checker.check_model(model, full_check=True)
    assert [i.name for i in model.graph.input] == [INPUT_NAME]
    assert sorted(o.name for o in model.graph.output) == sorted(
        [OUTPUT_PROBABILITIES, OUTPUT_CLASSES]
    )

    def signature(value_info) -> tuple[int, list[int | str]]:
        tensor_type = value_info.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else "?" for d in tensor_type.shape.dim]
        return tensor_type.elem_type, dims

    values = {v.name: signature(v) for v in [*model.graph.input, *model.graph.output]}
    assert values == {
        INPUT_NAME: (onnx.TensorProto.FLOAT, ["?", 28, 28, 1]),
        OUTPUT_PROBABILITIES: (onnx.TensorProto.FLOAT, ["?", 10]),
        OUTPUT_CLASSES: (onnx.TensorProto.INT64, ["?"]),
    }
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    assert opset == 17


def _conv_nodes(model: onnx.ModelProto) -> list[tuple[onnx.NodeProto, int, list[int]]]:
    """Every Conv node with its group and its weight's shape (an initializer)."""
    initializers = {init.name: list(init.dims) for init in model.graph.initializer}
    convs = []
    for node in model.graph.node:
        if node.op_type == "Conv":
            group = next((a.i for a in node.attribute if a.name == "group"), 1)
            convs.append((node, int(group), initializers[node.input[1]]))
    return convs


def test_separable_onnx_keeps_depthwise_structure(exported_repository):
    model = onnx.load(str(exported_repository / "separable" / "1" / ONNX_FILENAME))
    convs = _conv_nodes(model)
    # Two separable blocks, each a depthwise (group = input channels) then a 1x1 pointwise Conv.
    # The first block's depthwise Conv has one input channel, so its group is 1 as well.
    assert [(group, weight) for _, group, weight in convs] == [
        (1, [1, 1, 3, 3]),
        (1, [32, 1, 1, 1]),
        (32, [32, 1, 3, 3]),
        (1, [64, 32, 1, 1]),
    ]
    depthwise, pointwise = convs[2][0], convs[3][0]
    assert depthwise.output[0] == pointwise.input[0]  # the 1x1 conv consumes it directly
    kernel = {a.name: list(a.ints) for a in pointwise.attribute if a.name == "kernel_shape"}
    assert kernel.get("kernel_shape", [1, 1]) == [1, 1]


def test_standard_onnx_has_ordinary_convolutions(exported_repository):
    model = onnx.load(str(exported_repository / "standard" / "1" / ONNX_FILENAME))
    assert [(group, weight) for _, group, weight in _conv_nodes(model)] == [
        (1, [32, 1, 3, 3]),
        (1, [64, 32, 3, 3]),
    ]


def test_parity_report(exported_repository, mnist):
    report = json.loads((exported_repository / EXPORT_REPORT_FILENAME).read_text())
    assert list(report["models"]) == list(MODEL_NAMES)
    expected = {"standard": (431_242, 2_837_120), "separable": (414_899, 722_532)}
    for name, entry in report["models"].items():
        assert entry["version"] == 1
        assert Path(entry["version_path"]) == exported_repository / name / "1"
        assert (entry["params"], entry["macs"]) == expected[name]
        parity = entry["parity"]
        assert parity["images"] == len(mnist.x_test) == 10_000
        assert parity["max_abs_diff"] <= 1e-5
        assert parity["class_mismatches"] == 0
        assert parity["passed"] is True and parity["tolerance"] == 1e-5
        assert parity["opset"] == 17
        assert parity["onnx_accuracy"] == parity["tf_accuracy"]
        # Keras' evaluate() and the exported signature classify the same test set the same way.
        assert parity["tf_accuracy"] == pytest.approx(entry["test_accuracy_keras"], abs=1e-4)
        tflite = entry["tflite_parity"]
        assert tflite["images"] == 10_000 and tflite["passed"] is True
        assert tflite["max_abs_diff"] <= 1e-5 and tflite["class_mismatches"] == 0
        assert tflite["tflite_accuracy"] == parity["tf_accuracy"]
        # The weights are in the file (from_saved_model would write 7.5 KB without them).
        assert (
            tflite["tflite_bytes"]
            == (exported_repository / name / "1" / TFLITE_FILENAME).stat().st_size
        )
        assert tflite["tflite_bytes"] > 4 * expected[name][0]
    assert report["models"]["separable"]["parity"]["grouped_convs"] == [1, 1, 32, 1]
    assert report["models"]["standard"]["parity"]["grouped_convs"] == [1, 1]
    assert Path(report["models_config"]) == exported_repository / MODELS_CONFIG_FILENAME


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_parity_recomputed_independently(exported_repository, mnist, name):
    """A second opinion on a slice of the test set, not trusting the report."""
    import onnxruntime as ort
    import tensorflow as tf

    version = exported_repository / name / "1"
    images = (mnist.x_test[-300:].astype(np.float32) / 255.0)[..., None]
    session = ort.InferenceSession(str(version / ONNX_FILENAME), providers=["CPUExecutionProvider"])
    onnx_probabilities, onnx_classes = session.run(
        [OUTPUT_PROBABILITIES, OUTPUT_CLASSES], {INPUT_NAME: images}
    )
    signature = tf.saved_model.load(str(version)).signatures[SIGNATURE_NAME]
    expected = signature(**{INPUT_NAME: tf.constant(images)})
    assert onnx_classes.dtype == np.int64
    np.testing.assert_allclose(
        onnx_probabilities, expected[OUTPUT_PROBABILITIES].numpy(), rtol=0, atol=1e-5
    )
    assert np.array_equal(onnx_classes, expected[OUTPUT_CLASSES].numpy())


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_triton_config(exported_repository, name):
    text = (exported_repository / name / TRITON_CONFIG_FILENAME).read_text()
    for line in (
        f'name: "{name}"',
        'platform: "onnxruntime_onnx"',
        "max_batch_size: 256",
        f'name: "{INPUT_NAME}"',
        "data_type: TYPE_FP32",
        "dims: [ 28, 28, 1 ]",
        f'name: "{OUTPUT_PROBABILITIES}"',
        "dims: [ 10 ]",
        f'name: "{OUTPUT_CLASSES}"',
        "data_type: TYPE_INT64",
        "reshape: { shape: [ ] }",
        "dynamic_batching {",
    ):
        assert line in text, line
    assert text.count("{") == text.count("}") and text.count("[") == text.count("]")


def test_exporting_twice_adds_version_2_and_keeps_version_1(model_repository, trained_artifacts):
    from export.pipeline import export_repository

    before = _hashes(model_repository)
    report = export_repository(
        trained_artifacts,
        model_repository,
        config_base_path=Path("/models"),
        parity_images=500,
        log=lambda _: None,
    )
    after = _hashes(model_repository)
    for name in MODEL_NAMES:
        model_dir = model_repository / name
        assert sorted(p.name for p in model_dir.iterdir() if p.is_dir()) == ["1", "2"]
        assert _leftovers(model_dir) == []
        assert report["models"][name]["version"] == 2
        assert report["models"][name]["parity"]["passed"] is True
        old = {k: v for k, v in before.items() if k.startswith(f"{name}/1/")}
        assert old and {k: after[k] for k in old} == old  # version 1 byte-identical
        assert (model_dir / "2" / "saved_model.pb").is_file()
        assert (model_dir / "2" / ONNX_FILENAME).is_file()
        assert (model_dir / "2" / TFLITE_FILENAME).is_file()
        assert report["models"][name]["tflite_parity"]["passed"] is True
        assert (model_dir / "2" / WARMUP_RELATIVE_PATH).is_file()
        assert oct((model_dir / "2").stat().st_mode & 0o777) == oct(0o755)
    config = _parse_models_config(model_repository / MODELS_CONFIG_FILENAME)
    assert {e.name: e.base_path for e in config.model_config_list.config} == {
        name: f"/models/{name}" for name in MODEL_NAMES
    }


def test_failing_parity_publishes_nothing(
    model_repository, trained_artifacts, tmp_path, monkeypatch, capsys
):
    import export.parity
    from export.__main__ import main

    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    (artifacts / "separable").symlink_to(trained_artifacts / "separable", target_is_directory=True)
    before = _hashes(model_repository)
    monkeypatch.setattr(export.parity, "MAX_ABS_DIFF", -1.0)  # no result can pass
    args = ["--artifacts", str(artifacts), "--output", str(model_repository)]
    assert main([*args, "--parity-images", "200"]) == 1

    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("export failed: separable: TF and ONNX Runtime disagree on 200 test")
    assert err.endswith("Version not published.")
    assert _hashes(model_repository) == before  # nothing changed, not even models.config
    for name in MODEL_NAMES:
        assert sorted(p.name for p in (model_repository / name).iterdir() if p.is_dir()) == ["1"]
        assert _leftovers(model_repository / name) == []


def test_failing_tflite_parity_publishes_nothing(
    model_repository, trained_artifacts, tmp_path, monkeypatch, capsys
):
    from dataclasses import replace

    import export.parity
    from export.__main__ import main

    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    (artifacts / "standard").symlink_to(trained_artifacts / "standard", target_is_directory=True)
    before = _hashes(model_repository)
    real = export.parity.check_tflite_parity

    def disagreeing(*args, **kwargs):
        return replace(real(*args, **kwargs), class_mismatches=3)

    monkeypatch.setattr(export.parity, "check_tflite_parity", disagreeing)
    args = ["--artifacts", str(artifacts), "--output", str(model_repository)]
    assert main([*args, "--parity-images", "200"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("export failed: standard: TF and LiteRT disagree on 200 test images")
    assert "3 different classes" in err and err.endswith("Version not published.")
    assert _hashes(model_repository) == before


def test_staging_failure_leaves_no_debris(tmp_path):
    from export.repository import write_version

    model_dir = tmp_path / "standard"

    def broken(staging: Path) -> None:
        (staging / "saved_model.pb").write_bytes(b"half a model")
        raise RuntimeError("conversion crashed")

    with pytest.raises(RuntimeError, match="conversion crashed"):
        write_version(model_dir, broken)
    assert list(model_dir.iterdir()) == []
    assert write_version(model_dir, lambda staging: None) == 1
    assert write_version(model_dir, lambda staging: None) == 2
    assert sorted(p.name for p in model_dir.iterdir()) == ["1", "2"]


def test_cli_empty_artifacts_fails_with_one_line(tmp_path):
    empty = tmp_path / "artifacts"
    empty.mkdir()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "export",
            "--artifacts",
            str(empty),
            "--output",
            str(tmp_path / "m"),
        ],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=120,
        check=False,
    )
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.strip() == (
        f"export failed: no trained models under {empty}/ (run `python -m training` first)"
    )
    assert not (tmp_path / "m").exists()


def test_cli_rejects_zero_parity_images(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "export", "--parity-images", "0"],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "argument --parity-images: expected an integer >= 1, got 0" in result.stderr
