"""The OpenVINO and LiteRT runtimes: in-process parity with ONNX Runtime, and the TF Serving
compatibility tests of test_serving_api.py run against a real server of each (gRPC and REST).

The tests imported from test_serving_api ask for the ``onnx_server`` fixture; this module
overrides that name with a server of each runtime in turn (module-scoped, parametrized), so the
same assertions run unchanged against ``--runtime openvino`` and ``--runtime litert``.
"""

from __future__ import annotations

import importlib.util
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from contract import INPUT_NAME, MODEL_NAMES, SIGNATURE_NAME
from harness import ServerProcess
from serving.client import ServingClient
from serving.runtimes import RuntimeLoadError, RuntimeOptions, load_runtime
from tests.conftest import copy_repository
from tests.parity import TOLERANCE, assert_same
from tests.test_serving_api import (  # noqa: F401 - collected here against each runtime's server
    model_stub,
    stub,
    test_empty_batch_gives_empty_well_shaped_result,
    test_get_model_metadata_signature_def,
    test_get_model_status,
    test_python_client_grpc_and_rest_agree,
    test_rest_columnar_format,
    test_rest_empty_instances,
    test_rest_large_bodies_alone_and_concurrent,
    test_rest_row_format,
    test_rest_row_format_with_named_instances_and_versions,
    test_rest_status_and_metadata,
    test_tensorflow_serving_api_client_unchanged,
    test_typed_float_val_input_and_output_filter,
    test_version_and_label_in_model_spec,
)

PACKAGES = {"openvino": "openvino", "litert": "ai_edge_litert"}
KINDS = [
    pytest.param(
        kind,
        marks=pytest.mark.skipif(
            importlib.util.find_spec(package) is None,
            reason=f"the {kind} runtime is not installed (pip install .[{kind}])",
        ),
    )
    for kind, package in PACKAGES.items()
]


def _images(mnist, count: int, start: int = 0) -> np.ndarray:
    return (mnist.x_test[start : start + count].astype(np.float32) / 255.0)[..., None]


@pytest.fixture(scope="module", params=KINDS)
def onnx_server(request, tmp_path_factory, exported_repository):
    """Named as test_serving_api's fixture so its tests run here: a server of ``request.param``."""
    root = tmp_path_factory.mktemp(f"{request.param}-server")
    repo = copy_repository(exported_repository, root / "models")
    server = ServerProcess(
        repo / "models.config",
        [f"--runtime={request.param}", "--max_request_bytes=4194304"],
        log_path=root / "server.log",
    )
    with server:
        yield server


@pytest.fixture(scope="module", params=KINDS)
def runtimes(request, exported_repository):
    """Both models loaded by the runtime under test and by ONNX Runtime."""
    loaded = {
        name: (
            load_runtime(request.param, exported_repository / name / "1", RuntimeOptions()),
            load_runtime("onnx", exported_repository / name / "1", RuntimeOptions()),
        )
        for name in MODEL_NAMES
    }
    yield loaded
    for pair in loaded.values():
        for runtime in pair:
            runtime.close()


@pytest.mark.parametrize("model", MODEL_NAMES)
def test_parity_with_onnxruntime_in_process(runtimes, mnist, model):
    runtime, reference = runtimes[model]
    images = _images(mnist, 1000)
    assert_same(
        runtime.predict(SIGNATURE_NAME, {INPUT_NAME: images}),
        reference.predict(SIGNATURE_NAME, {INPUT_NAME: images}),
    )


@pytest.mark.parametrize("model", MODEL_NAMES)
def test_signature_names_shapes_and_dtypes_match_onnx(runtimes, model):
    runtime, reference = runtimes[model]
    (signature,) = runtime.signatures.values()
    (expected,) = reference.signatures.values()
    assert signature.name == expected.name == SIGNATURE_NAME
    for got, want in ((signature.inputs, expected.inputs), (signature.outputs, expected.outputs)):
        assert {k: (v.dtype, v.shape) for k, v in got.items()} == {
            k: (v.dtype, v.shape) for k, v in want.items()
        }


@pytest.mark.parametrize("batch", [0, 1, 3, 64, 256])
def test_dynamic_batch_sizes_and_output_selection(runtimes, mnist, batch):
    runtime, reference = runtimes["separable"]
    images = _images(mnist, batch)
    images.flags.writeable = False  # as the server's views of request bytes are
    assert_same(
        runtime.predict(SIGNATURE_NAME, {INPUT_NAME: images}),
        reference.predict(SIGNATURE_NAME, {INPUT_NAME: images}),
    )
    only = runtime.predict(SIGNATURE_NAME, {INPUT_NAME: images}, ["classes"])
    assert list(only) == ["classes"] and only["classes"].shape == (batch,)


def test_concurrent_predictions_are_independent(runtimes, mnist):
    runtime, reference = runtimes["standard"]
    batches = [_images(mnist, size, i) for i, size in enumerate([1, 2, 7, 16, 1, 33, 4, 1])]
    expected = [reference.predict(SIGNATURE_NAME, {INPUT_NAME: b}) for b in batches]

    def work(batch: np.ndarray) -> list[dict[str, np.ndarray]]:
        return [runtime.predict(SIGNATURE_NAME, {INPUT_NAME: batch}) for _ in range(5)]

    with ThreadPoolExecutor(max_workers=len(batches)) as pool:
        results = list(pool.map(work, batches, timeout=120))
    for repeats, want in zip(results, expected, strict=True):
        for got in repeats:
            assert_same(got, want)


def test_server_answers_match_onnxruntime_over_grpc_and_rest(onnx_server, onnx_reference, mnist):
    images = _images(mnist, 200, 5000)
    with (
        ServingClient(onnx_server.grpc_target) as grpc_client,
        ServingClient(f"127.0.0.1:{onnx_server.rest_port}", "rest") as rest_client,
    ):
        for model in MODEL_NAMES:
            want = onnx_reference[model].predict(SIGNATURE_NAME, {INPUT_NAME: images})
            for client in (grpc_client, rest_client):
                got = client.predict(model, images)
                np.testing.assert_allclose(
                    got.probabilities, want["probabilities"], rtol=0, atol=TOLERANCE
                )
                np.testing.assert_array_equal(got.classes, want["classes"])


@pytest.mark.parametrize("kind", KINDS)
def test_batching_server(kind, model_repository, onnx_reference, mnist, tmp_path):
    config = tmp_path / "batching.config"
    config.write_text(
        "max_batch_size { value: 64 } batch_timeout_micros { value: 2000 } "
        "max_enqueued_batches { value: 100 } num_batch_threads { value: 2 }"
    )
    errors: list[str] = []
    with ServerProcess(
        model_repository / "models.config",
        [f"--runtime={kind}", "--enable_batching", f"--batching_parameters_file={config}"],
    ) as server:

        def worker(index: int) -> None:
            images = _images(mnist, 1 + index % 5, index * 7)
            want = onnx_reference["standard"].predict(SIGNATURE_NAME, {INPUT_NAME: images})
            with ServingClient(server.grpc_target) as client:
                for _ in range(20):
                    got = client.predict("standard", images).classes
                    if not np.array_equal(got, want["classes"]):
                        errors.append(f"worker {index}: {got} != {want['classes']}")

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        import urllib.request

        with urllib.request.urlopen(f"{server.rest_url}/monitoring/prometheus/metrics") as reply:
            text = reply.read().decode()
    assert errors == []
    assert "serving_batch_size_count" in text


@pytest.mark.parametrize(("kind", "extra"), [("openvino", "openvino"), ("litert", "litert")])
def test_a_missing_package_names_the_extra(kind, extra, exported_repository, monkeypatch):
    # None in sys.modules makes the import fail as if the package were not installed.
    monkeypatch.delitem(sys.modules, f"serving.runtimes.{kind}", raising=False)
    package = PACKAGES[kind]
    for name in [n for n in sys.modules if n == package or n.startswith(f"{package}.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, package, None)
    with pytest.raises(RuntimeLoadError, match=rf"pip install \.\[{extra}\]"):
        load_runtime(kind, exported_repository / "standard" / "1", RuntimeOptions())


# --- what each runtime reports for the op profile -------------------------------------------------


@pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="openvino not installed")
def test_openvino_node_profile_names_the_depthwise_kernels(exported_repository, mnist):
    from serving.runtimes.openvino import node_profile

    nodes = node_profile(exported_repository / "separable" / "1", _images(mnist, 32), repeats=3)
    executed = [n for n in nodes if n.executed]
    assert executed and all(n.real_time_us >= 0 for n in executed)
    assert not [n.exec_type for n in executed if "bf16" in n.exec_type]  # f32 asked, f32 run
    # The second block's depthwise conv (32 channels, group 32) is a GroupConvolution run by a
    # depthwise kernel (brgconv_avx512_dw_f32 on AVX-512, jit_*_dw_* elsewhere); the first
    # block's has one input channel, an ordinary Convolution.
    depthwise = [n for n in executed if "depthwise" in n.name and n.layer_type.endswith("olution")]
    assert [n.layer_type for n in depthwise] == ["Convolution", "GroupConvolution"]
    assert "dw" in depthwise[1].exec_type
    pointwise = [n for n in executed if n.name.endswith("BiasAdd/WithoutBiases")]
    assert len(pointwise) == 2 and all(n.layer_type == "Convolution" for n in pointwise)


@pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="openvino not installed")
def test_openvino_precision_is_explicit(exported_repository):
    from serving.runtimes.openvino import OpenVinoRuntime

    runtime = OpenVinoRuntime(exported_repository / "standard" / "1", RuntimeOptions())
    facts = runtime.describe()
    assert facts["precision"] == "f32" and facts["cpu_pinning"] == "False"
    assert facts["streams"] == "1"
    with pytest.raises(RuntimeLoadError, match="unknown precision"):
        OpenVinoRuntime(exported_repository / "standard" / "1", RuntimeOptions(), precision="f8")


@pytest.mark.skipif(importlib.util.find_spec("ai_edge_litert") is None, reason="no ai-edge-litert")
@pytest.mark.parametrize(("model", "delegated"), [("standard", 7), ("separable", 9)])
def test_litert_xnnpack_takes_the_convolutions_and_dense_layers(
    exported_repository, mnist, model, delegated
):
    from serving.runtimes.litert import LiteRtRuntime

    runtime = LiteRtRuntime(exported_repository / model / "1", RuntimeOptions())
    with pytest.raises(RuntimeError, match="call predict first"):
        runtime.delegation()
    runtime.predict(SIGNATURE_NAME, {INPUT_NAME: _images(mnist, 4)})
    summary = runtime.delegation()
    assert len(summary.delegated) == delegated
    # The Flatten's dynamic-batch shape arithmetic and the ArgMax stay on LiteRT's own kernels.
    assert summary.not_delegated == ["SHAPE", "STRIDED_SLICE", "PACK", "RESHAPE", "ARG_MAX"]
    assert summary.partitions == 2
    assert "FULLY_CONNECTED" in summary.delegated and "CONV_2D" in summary.delegated
