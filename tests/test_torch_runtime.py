"""The PyTorch runtime (onnx2torch conversion): parity with ONNX Runtime, capturable graphs."""

from __future__ import annotations

import importlib.util
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.parity import TOLERANCE, assert_same

if importlib.util.find_spec("torch") is None or importlib.util.find_spec("onnx2torch") is None:
    pytest.skip(
        "the torch runtime is opt-in and not installed here: `make setup WITH_TORCH=1` installs "
        "PyTorch's CPU build from https://download.pytorch.org/whl/cpu and onnx2torch (README, "
        "Install); CI runs these tests",
        allow_module_level=True,
    )

import torch

from contract import INPUT_NAME, MODEL_NAMES, ONNX_FILENAME, SIGNATURE_NAME
from serving.runtimes import RuntimeLoadError, RuntimeOptions, load_runtime
from serving.runtimes.onnx_torch_converters import (
    StaticReshape,
    convert_model,
    drop_identity_reshapes,
    freeze_reshape_targets,
    is_identity_reshape,
    static_reshape_target,
)

PARITY_IMAGES = 512


@pytest.fixture(scope="module")
def images(mnist) -> np.ndarray:
    """The first MNIST test images as the signature takes them: float32 [N,28,28,1] in [0,1]."""
    return (mnist.x_test[:PARITY_IMAGES].astype(np.float32) / 255.0)[..., None]


@pytest.fixture(scope="module")
def runtimes(exported_repository):
    """Both models loaded by the torch runtime (CPU) and by ONNX Runtime."""
    loaded = {}
    for name in MODEL_NAMES:
        version_dir = exported_repository / name / "1"
        loaded[name] = (
            load_runtime("torch", version_dir, RuntimeOptions(device="cpu")),
            load_runtime("onnx", version_dir, RuntimeOptions()),
        )
    yield loaded
    for torch_runtime, onnx_runtime in loaded.values():
        torch_runtime.close()
        onnx_runtime.close()


@pytest.mark.parametrize("model", MODEL_NAMES)
def test_parity_with_onnxruntime_on_mnist(runtimes, images, model):
    torch_runtime, onnx_runtime = runtimes[model]
    got = torch_runtime.predict(SIGNATURE_NAME, {INPUT_NAME: images})
    want = onnx_runtime.predict(SIGNATURE_NAME, {INPUT_NAME: images})
    assert_same(got, want)
    assert np.abs(got["probabilities"] - want["probabilities"]).max() <= TOLERANCE


@pytest.mark.parametrize("model", MODEL_NAMES)
def test_signatures_match_onnxruntime(runtimes, model):
    torch_runtime, onnx_runtime = runtimes[model]
    assert torch_runtime.signatures == onnx_runtime.signatures
    assert torch_runtime.describe()["device"] == "cpu"


@pytest.mark.parametrize("model", MODEL_NAMES)
@pytest.mark.parametrize("batch", [0, 1, 3, 64])
def test_dynamic_batch_sizes(runtimes, images, model, batch):
    torch_runtime, onnx_runtime = runtimes[model]
    x = images[:batch]
    got = torch_runtime.predict(SIGNATURE_NAME, {INPUT_NAME: x})
    assert got["probabilities"].shape == (batch, 10)
    assert got["classes"].shape == (batch,)
    assert_same(got, onnx_runtime.predict(SIGNATURE_NAME, {INPUT_NAME: x}))


@pytest.mark.parametrize("model", MODEL_NAMES)
def test_convolutions_run_channels_last(runtimes, images, model):
    torch_runtime, _ = runtimes[model]
    assert torch_runtime.describe()["memory_format"] == "channels_last"
    convs = [m for m in torch_runtime.module.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs
    assert all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    outputs = []
    convs[-1].register_forward_hook(lambda _m, _i, out: outputs.append(out))
    with torch.inference_mode():
        torch_runtime.module(torch.from_numpy(images[:4]))
    assert outputs[-1].is_contiguous(memory_format=torch.channels_last)


def test_output_selection_and_read_only_input(runtimes, images):
    torch_runtime, onnx_runtime = runtimes["standard"]
    x = images[:5].copy()
    x.flags.writeable = False  # as the server's views of request bytes are
    got = torch_runtime.predict(SIGNATURE_NAME, {INPUT_NAME: x}, output_names=["classes"])
    assert list(got) == ["classes"]
    want = onnx_runtime.predict(SIGNATURE_NAME, {INPUT_NAME: x}, output_names=["classes"])
    np.testing.assert_array_equal(got["classes"], want["classes"])


def test_concurrent_predictions_are_independent(runtimes, images):
    torch_runtime, onnx_runtime = runtimes["separable"]
    batches = [images[i : i + size] for i, size in enumerate([1, 2, 7, 16, 1, 33, 4, 1])]
    expected = [onnx_runtime.predict(SIGNATURE_NAME, {INPUT_NAME: b}) for b in batches]

    def work(batch: np.ndarray) -> list[dict[str, np.ndarray]]:
        return [torch_runtime.predict(SIGNATURE_NAME, {INPUT_NAME: batch}) for _ in range(5)]

    with ThreadPoolExecutor(max_workers=len(batches)) as pool:
        results = list(pool.map(work, batches, timeout=60))
    for repeats, want in zip(results, expected, strict=True):
        for got in repeats:
            assert_same(got, want)


@pytest.mark.parametrize("model", MODEL_NAMES)
def test_static_reshape_replaces_the_shape_computation(exported_repository, model):
    original = onnx.load(str(exported_repository / model / "1" / ONNX_FILENAME))
    assert any(node.op_type == "Shape" for node in original.graph.node)

    frozen, count = freeze_reshape_targets(original)
    assert count == 1  # the Flatten's computed target; the others were constants already
    onnx.checker.check_model(frozen, full_check=True)
    assert not any(node.op_type in ("Shape", "Gather", "Concat") for node in frozen.graph.node)

    converted = convert_model(original)
    # tf2onnx's NCHW reshape of the separable model's one-channel depthwise output changes nothing.
    assert converted.dropped_reshapes == (1 if model == "separable" else 0)
    module_types = {type(m).__name__ for m in converted.module.modules()}
    reshapes = [m for m in converted.module.modules() if isinstance(m, StaticReshape)]
    original_reshapes = sum(node.op_type == "Reshape" for node in original.graph.node)
    assert len(reshapes) == original_reshapes - converted.dropped_reshapes
    assert {"OnnxReshape", "OnnxShape"}.isdisjoint(module_types)
    flatten = reshapes[-1]
    assert flatten.shape == (0, 1600)  # batch copied, 5*5*64 resolved: an empty batch reshapes


@pytest.mark.parametrize("model", MODEL_NAMES)
def test_simplified_graph_runs_the_same_in_onnxruntime(exported_repository, images, model):
    import onnxruntime as ort

    original = onnx.load(str(exported_repository / model / "1" / ONNX_FILENAME))
    frozen, _ = freeze_reshape_targets(original)
    drop_identity_reshapes(frozen)
    onnx.checker.check_model(frozen, full_check=True)
    sessions = [
        ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        for m in (original, frozen)
    ]
    for batch in (0, 1, 100):
        a, b = (s.run(None, {INPUT_NAME: images[:batch]}) for s in sessions)
        for x, y in zip(a, b, strict=True):
            np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("model", MODEL_NAMES)
def test_export_with_dynamic_batch_has_no_data_dependent_code(runtimes, images, model):
    """torch.export refuses data-dependent shape code (onnx2torch's Reshape: torch.any on the
    shape tensor), which CUDA-graph capture and torch.compile also fail on."""
    torch_runtime, _ = runtimes[model]
    module = torch_runtime.module
    batch = torch.export.Dim("batch", min=0, max=1 << 16)
    example = torch.from_numpy(images[:8])
    exported = torch.export.export(module, (example,), dynamic_shapes=(({0: batch},),))
    targets = {str(node.target) for node in exported.graph.nodes if node.op == "call_function"}
    assert not any("any" in t or "item" in t or "_local_scalar_dense" in t for t in targets)
    with torch.inference_mode():
        for size in (0, 1, 13):
            x = torch.from_numpy(images[:size])
            for got, want in zip(exported.module()(x), module(x), strict=True):
                torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_trace_captures_the_module(runtimes, images):
    torch_runtime, _ = runtimes["separable"]
    module = torch_runtime.module
    with torch.inference_mode():
        traced = torch.jit.trace(module, (torch.from_numpy(images[:4]),))
        x = torch.from_numpy(images[10:17])
        for got, want in zip(traced(x), module(x), strict=True):
            torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("input_dims", "output_dims", "allowzero", "expected"),
    [
        (["N", 5, 5, 64], ["N", 1600], False, [0, 1600]),
        (["N", 5, 5, 64], ["M", 1600], False, [-1, 1600]),
        (["N", 4, "K"], ["N", None], False, [0, -1]),  # -1 cannot be resolved: K unknown
        (["N", 4, 6], ["N", None], False, [0, 24]),
        (["N", 4, 6], [None, None], False, None),  # two unknown sizes
        ([2, 3], [6], False, [6]),
        ([2, 0, 3], [2, 0], True, [2, 0]),
        ([2, 0, 3], [2, 0], False, None),  # a literal 0 needs allowzero
        (["N", 3], ["N", 3], True, [-1, 3]),  # no copy under allowzero: the batch is inferred
    ],
)
def test_static_reshape_target(input_dims, output_dims, allowzero, expected):
    assert static_reshape_target(input_dims, output_dims, allowzero) == expected


@pytest.mark.parametrize(
    ("input_dims", "target", "allowzero", "expected"),
    [
        (["N", 1, 26, 26], [-1, 1, 26, 26], False, True),
        (["N", 1, 26, 26], [0, 1, 26, 26], False, True),
        (["N", "K", 26], [0, -1, 26], False, True),
        (["N", 1, 26, 26], [-1, 26, 26, 1], False, False),
        (["N", 1, 26, 26], [-1, 1, 676], False, False),
        (["N", "K"], [-1, -1], False, False),
        (["N", 3], [0, 3], True, False),  # under allowzero, 0 is a literal size
    ],
)
def test_is_identity_reshape(input_dims, target, allowzero, expected):
    assert is_identity_reshape(input_dims, target, allowzero) is expected


def test_identity_reshape_is_dropped_and_layout_kept():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 6, 6])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    weight = np.arange(8 * 1 * 1 * 1, dtype=np.float32).reshape(8, 1, 1, 1)
    graph = helper.make_graph(
        [
            helper.make_node("Reshape", ["x", "same"], ["x2"]),
            helper.make_node("Conv", ["x2", "w"], ["y"], kernel_shape=[1, 1]),
        ],
        "g",
        [x],
        [y],
        initializer=[
            numpy_helper.from_array(np.array([-1, 1, 6, 6], np.int64), "same"),
            numpy_helper.from_array(weight, "w"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert drop_identity_reshapes(model) == 1
    assert [n.op_type for n in model.graph.node] == ["Conv"]
    assert model.graph.node[0].input[0] == "x"
    assert [i.name for i in model.graph.initializer] == ["w"]


def _model_with_runtime_reshape(shape_from_value: bool) -> onnx.ModelProto:
    """x [N,2,3] reshaped to [N,6] by Shape→Slice→Concat, or to the values of input ``s``."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    inputs = [x]
    if shape_from_value:
        inputs.append(helper.make_tensor_value_info("s", TensorProto.INT64, [2]))
        nodes = [helper.make_node("Reshape", ["x", "s"], ["y"])]
        initializers = []
    else:
        nodes = [
            helper.make_node("Shape", ["x"], ["shape"]),
            helper.make_node("Slice", ["shape", "zero", "one"], ["batch"]),
            helper.make_node("Concat", ["batch", "six"], ["target"], axis=0),
            helper.make_node("Reshape", ["x", "target"], ["y"]),
        ]
        initializers = [
            numpy_helper.from_array(np.array([0], np.int64), "zero"),
            numpy_helper.from_array(np.array([1], np.int64), "one"),
            numpy_helper.from_array(np.array([6], np.int64), "six"),
        ]
    graph = helper.make_graph(nodes, "g", inputs, [y], initializer=initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_generic_graph_with_computed_target_is_frozen():
    converted = convert_model(_model_with_runtime_reshape(shape_from_value=False))
    assert converted.frozen_reshapes == 1
    (reshape,) = [m for m in converted.module.modules() if isinstance(m, StaticReshape)]
    assert reshape.shape == (0, 6)
    x = torch.arange(24, dtype=torch.float32).reshape(4, 2, 3)
    (y,) = converted.module(x)
    torch.testing.assert_close(y, x.reshape(4, 6))


def test_reshape_to_a_runtime_value_falls_back_to_onnx2torch():
    converted = convert_model(_model_with_runtime_reshape(shape_from_value=True))
    assert converted.frozen_reshapes == 0
    assert not any(isinstance(m, StaticReshape) for m in converted.module.modules())
    x = torch.arange(12, dtype=torch.float32).reshape(2, 2, 3)
    (y,) = converted.module(x, torch.tensor([3, 4]))
    torch.testing.assert_close(y, x.reshape(3, 4))


def test_load_errors(tmp_path, exported_repository):
    with pytest.raises(RuntimeLoadError, match="not found"):
        load_runtime("torch", tmp_path, RuntimeOptions())
    version_dir = exported_repository / "standard" / "1"
    with pytest.raises(RuntimeLoadError, match="unknown device"):
        load_runtime("torch", version_dir, RuntimeOptions(device="tpu"))
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeLoadError, match="no CUDA device"):
            load_runtime("torch", version_dir, RuntimeOptions(device="cuda"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graphs_match_eager_and_onnxruntime(exported_repository, images):
    for name in MODEL_NAMES:
        version_dir = exported_repository / name / "1"
        runtime = load_runtime(
            "torch", version_dir, RuntimeOptions(device="cuda", batch_sizes_hint=(1, 8, 32))
        )
        reference = load_runtime("onnx", version_dir, RuntimeOptions())
        try:
            assert runtime.graph_batch_sizes == (1, 8, 32)  # type: ignore[attr-defined]
            for batch in (0, 1, 5, 8, 32, 100):  # captured, and eager ones between
                x = images[:batch]
                got = runtime.predict(SIGNATURE_NAME, {INPUT_NAME: x})
                want = reference.predict(SIGNATURE_NAME, {INPUT_NAME: x})
                np.testing.assert_allclose(got["probabilities"], want["probabilities"], atol=1e-4)
                np.testing.assert_array_equal(got["classes"], want["classes"])
        finally:
            runtime.close()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_versions_load_and_unload_concurrently_while_requests_run(exported_repository, images):
    # A server loads versions on several threads at once and serves while it does: captures
    # must not overlap (the GPU machine showed "operation not permitted when stream is
    # capturing" when they did), and requests must keep working during a capture.
    options = RuntimeOptions(device="cuda", batch_sizes_hint=(1, 2, 4, 8, 16, 32, 64, 128, 256))
    serving = load_runtime("torch", exported_repository / "standard" / "1", options)
    retiring = load_runtime("torch", exported_repository / "separable" / "1", options)
    stop = threading.Event()
    failures: list[BaseException] = []

    def requests() -> None:
        while not stop.is_set():
            for batch in (1, 3, 32):  # graph replays and eager runs
                try:
                    serving.predict(SIGNATURE_NAME, {INPUT_NAME: images[:batch]})
                except BaseException as exc:  # noqa: BLE001 - collected for the assert
                    failures.append(exc)

    with ThreadPoolExecutor(4) as pool:
        traffic = pool.submit(requests)
        loads = [
            pool.submit(load_runtime, "torch", exported_repository / name / "1", options)
            for name in MODEL_NAMES
        ]
        retiring.close()
        loaded = [future.result() for future in loads]
        stop.set()
        traffic.result()
    assert not failures
    for runtime in loaded:
        assert runtime.predict(SIGNATURE_NAME, {INPUT_NAME: images[:1]})["classes"].shape == (1,)
        runtime.close()
    serving.close()
