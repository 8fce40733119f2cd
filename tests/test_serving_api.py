"""The TF Serving APIs as standard clients use them, against a real server (ONNX runtime)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from contract.protos import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    import_real_tensorflow,
    inference_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)
from serving.client import ServingClient


def _images(mnist, count: int, start: int = 0) -> np.ndarray:
    return (mnist.x_test[start : start + count].astype(np.float32) / 255.0)[..., None]


@pytest.fixture(scope="module")
def stub(onnx_server):
    with grpc.insecure_channel(onnx_server.grpc_target) as channel:
        yield prediction_service_pb2_grpc.PredictionServiceStub(channel)


@pytest.fixture(scope="module")
def model_stub(onnx_server):
    with grpc.insecure_channel(onnx_server.grpc_target) as channel:
        yield model_service_pb2_grpc.ModelServiceStub(channel)


def http(method: str, url: str, body: object | None = None) -> tuple[int, dict]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_tensorflow_serving_api_client_unchanged(stub, mnist, exported_repository):
    """The canonical TF Serving client: make_tensor_proto in, float_val / make_ndarray out."""
    tf = import_real_tensorflow()
    images = _images(mnist, 5)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "separable"
    request.model_spec.signature_name = "serving_default"
    request.inputs["images"].CopyFrom(tf.make_tensor_proto(images, shape=list(images.shape)))
    response = stub.Predict(request, timeout=10)

    probabilities = tf.make_ndarray(response.outputs["probabilities"])
    classes = tf.make_ndarray(response.outputs["classes"])
    assert probabilities.shape == (5, 10) and probabilities.dtype == np.float32
    assert classes.shape == (5,) and classes.dtype == np.int64
    assert len(response.outputs["probabilities"].float_val) == 50  # typed fields, as TF Serving
    assert response.model_spec.name == "separable"
    assert response.model_spec.version.value == 1
    assert response.model_spec.signature_name == "serving_default"
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    assert (classes == probabilities.argmax(axis=1)).all()

    # The same answers as the SavedModel itself.
    signature = tf.saved_model.load(str(exported_repository / "separable" / "1")).signatures[
        "serving_default"
    ]
    expected = signature(images=tf.constant(images))
    np.testing.assert_allclose(probabilities, expected["probabilities"].numpy(), atol=1e-5)


def test_typed_float_val_input_and_output_filter(stub, mnist):
    images = _images(mnist, 2)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "standard"
    tensor = request.inputs["images"]
    tensor.dtype = 1  # DT_FLOAT
    for size in images.shape:
        tensor.tensor_shape.dim.add(size=size)
    tensor.float_val.extend(images.ravel().tolist())
    request.output_filter.append("classes")
    response = stub.Predict(request, timeout=10)
    assert list(response.outputs) == ["classes"]
    assert len(response.outputs["classes"].int64_val) == 2


def test_version_and_label_in_model_spec(stub, mnist):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "standard"
    request.model_spec.version.value = 1
    images = _images(mnist, 1)
    request.inputs["images"].dtype = 1
    for size in images.shape:
        request.inputs["images"].tensor_shape.dim.add(size=size)
    request.inputs["images"].tensor_content = images.tobytes()
    assert stub.Predict(request, timeout=10).model_spec.version.value == 1


def test_empty_batch_gives_empty_well_shaped_result(stub):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "separable"
    tensor = request.inputs["images"]
    tensor.dtype = 1
    for size in (0, 28, 28, 1):
        tensor.tensor_shape.dim.add(size=size)
    response = stub.Predict(request, timeout=10)
    assert [d.size for d in response.outputs["probabilities"].tensor_shape.dim] == [0, 10]
    assert [d.size for d in response.outputs["classes"].tensor_shape.dim] == [0]


def test_get_model_metadata_signature_def(stub):
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "standard"
    response = stub.GetModelMetadata(request, timeout=10)
    assert response.model_spec.version.value == 1
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(signature_map)
    signature = signature_map.signature_def["serving_default"]
    assert signature.method_name == "tensorflow/serving/predict"
    assert signature.inputs["images"].dtype == 1
    assert [d.size for d in signature.inputs["images"].tensor_shape.dim] == [-1, 28, 28, 1]
    assert signature.outputs["probabilities"].dtype == 1
    assert [d.size for d in signature.outputs["probabilities"].tensor_shape.dim] == [-1, 10]
    assert signature.outputs["classes"].dtype == 9  # DT_INT64
    assert [d.size for d in signature.outputs["classes"].tensor_shape.dim] == [-1]


def test_get_model_status(model_stub):
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "separable"
    response = model_stub.GetModelStatus(request, timeout=10)
    (status,) = response.model_version_status
    assert status.version == 1
    assert status.state == get_model_status_pb2.ModelVersionStatus.AVAILABLE
    assert status.status.error_code == 0


def test_classify_regress_multiinference_are_unimplemented_with_reason(stub):
    for call, request in (
        (stub.Classify, classification_pb2.ClassificationRequest()),
        (stub.Regress, regression_pb2.RegressionRequest()),
    ):
        request.model_spec.name = "standard"
        with pytest.raises(grpc.RpcError) as error:
            call(request, timeout=10)
        assert error.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert "Predict signature" in (error.value.details() or "")
    multi = inference_pb2.MultiInferenceRequest()
    multi.tasks.add().model_spec.name = "standard"
    with pytest.raises(grpc.RpcError) as error:
        stub.MultiInference(multi, timeout=10)
    assert error.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_health_overall_per_service_and_per_model(onnx_server):
    with grpc.insecure_channel(onnx_server.grpc_target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in (
            "",
            "tensorflow.serving.PredictionService",
            "tensorflow.serving.ModelService",
            "standard",
            "separable",
        ):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING, service
        with pytest.raises(grpc.RpcError) as error:
            health.Check(health_pb2.HealthCheckRequest(service="nope"), timeout=5)
        assert error.value.code() == grpc.StatusCode.NOT_FOUND


def test_server_reflection_lists_services(onnx_server):
    with grpc.insecure_channel(onnx_server.grpc_target) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        (reply,) = list(stub.ServerReflectionInfo(iter([request]), timeout=5))
        names = {s.name for s in reply.list_services_response.service}
    assert {
        "tensorflow.serving.PredictionService",
        "tensorflow.serving.ModelService",
        "grpc.health.v1.Health",
    } <= names


def test_rest_row_format(onnx_server, mnist):
    images = _images(mnist, 3)
    status, body = http(
        "POST",
        f"{onnx_server.rest_url}/v1/models/separable:predict",
        {"signature_name": "serving_default", "instances": images.tolist()},
    )
    assert status == 200
    predictions = body["predictions"]
    assert len(predictions) == 3
    assert set(predictions[0]) == {"probabilities", "classes"}
    assert len(predictions[0]["probabilities"]) == 10
    assert isinstance(predictions[0]["classes"], int)


def test_rest_row_format_with_named_instances_and_versions(onnx_server, mnist):
    images = _images(mnist, 2)
    body = {"instances": [{"images": image.tolist()} for image in images]}
    status, reply = http(
        "POST", f"{onnx_server.rest_url}/v1/models/standard/versions/1:predict", body
    )
    assert status == 200 and len(reply["predictions"]) == 2


def test_rest_columnar_format(onnx_server, mnist):
    images = _images(mnist, 4)
    status, body = http(
        "POST", f"{onnx_server.rest_url}/v1/models/standard:predict", {"inputs": images.tolist()}
    )
    assert status == 200
    assert np.asarray(body["outputs"]["probabilities"]).shape == (4, 10)
    assert len(body["outputs"]["classes"]) == 4
    status, body = http(
        "POST",
        f"{onnx_server.rest_url}/v1/models/standard:predict",
        {"inputs": {"images": images.tolist()}},
    )
    assert status == 200 and len(body["outputs"]["classes"]) == 4


def test_rest_empty_instances(onnx_server):
    status, body = http(
        "POST", f"{onnx_server.rest_url}/v1/models/standard:predict", {"instances": []}
    )
    assert status == 200 and body == {"predictions": []}


def test_rest_status_and_metadata(onnx_server):
    status, body = http("GET", f"{onnx_server.rest_url}/v1/models/standard")
    assert status == 200
    assert body == {
        "model_version_status": [
            {
                "version": "1",
                "state": "AVAILABLE",
                "status": {"error_code": "OK", "error_message": ""},
            }
        ]
    }
    status, body = http("GET", f"{onnx_server.rest_url}/v1/models/standard/versions/1")
    assert status == 200 and body["model_version_status"][0]["version"] == "1"
    status, body = http("GET", f"{onnx_server.rest_url}/v1/models/standard/metadata")
    assert status == 200
    assert body["model_spec"] == {"name": "standard", "signature_name": "", "version": "1"}
    signature = body["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert signature["inputs"]["images"]["dtype"] == "DT_FLOAT"
    assert signature["outputs"]["classes"]["dtype"] == "DT_INT64"
    assert signature["method_name"] == "tensorflow/serving/predict"


def test_prometheus_metrics(onnx_server, mnist):
    with ServingClient(onnx_server.grpc_target) as client:
        client.predict("standard", _images(mnist, 1))
    with urllib.request.urlopen(f"{onnx_server.rest_url}/monitoring/prometheus/metrics") as reply:
        text = reply.read().decode()
    assert 'serving_requests_total{api="grpc",code="OK",model="standard",version="1"}' in text
    assert "serving_request_latency_seconds_bucket" in text
    assert 'serving_model_versions{model="standard",state="AVAILABLE",version="1"} 1.0' in text


def test_python_client_grpc_and_rest_agree(onnx_server, mnist):
    images = _images(mnist, 16)
    with (
        ServingClient(onnx_server.grpc_target) as grpc_client,
        ServingClient(f"127.0.0.1:{onnx_server.rest_port}", "rest") as rest_client,
    ):
        via_grpc = grpc_client.predict("standard", images)
        via_rest = rest_client.predict("standard", images)
        assert grpc_client.status("standard")[0]["state"] == "AVAILABLE"
        assert rest_client.status("standard")[0]["state"] == "AVAILABLE"
    np.testing.assert_array_equal(via_grpc.classes, via_rest.classes)
    np.testing.assert_allclose(via_grpc.probabilities, via_rest.probabilities, atol=1e-6)


def test_rest_large_bodies_alone_and_concurrent(onnx_server, mnist):
    """A large body alone is decoded on the event loop, several at once on codec threads (and
    a large ragged body always on a thread, by the reference decoder): the same answers and the
    same 400 either way."""
    from concurrent.futures import ThreadPoolExecutor

    images = _images(mnist, 64)  # ~1 MB of JSON
    url = f"{onnx_server.rest_url}/v1/models/separable:predict"
    with ServingClient(onnx_server.grpc_target) as client:
        expected = client.predict("separable", images).classes.tolist()
    ragged = images.tolist()
    ragged[-1] = ragged[-1][:-1]  # one image a row short

    status, body = http("POST", url, {"instances": images.tolist()})
    assert status == 200 and [p["classes"] for p in body["predictions"]] == expected
    with ThreadPoolExecutor(6) as pool:
        answers = list(
            pool.map(
                lambda payload: http("POST", url, {"instances": payload}),
                [images.tolist()] * 5 + [ragged],
            )
        )
    for status, body in answers[:5]:
        assert status == 200 and [p["classes"] for p in body["predictions"]] == expected
    status, body = answers[5]
    assert status == 400 and "not a rectangular array" in body["error"]
    status, body = http("POST", url, {"instances": ragged})
    assert status == 400 and "not a rectangular array" in body["error"]
    status, body = http("POST", url, {"instances": images.tolist()})
    assert status == 200


def test_standard_asyncio_loop_serves_too(model_repository, mnist):
    """uvloop is the default loop; ``--event_loop=asyncio`` serves both APIs the same."""
    from harness import ServerProcess

    repo = model_repository
    images = _images(mnist, 3)
    with (
        ServerProcess(repo / "models.config", ["--runtime=onnx", "--event_loop=asyncio"]) as server,
        ServingClient(server.grpc_target) as grpc_client,
        ServingClient(f"127.0.0.1:{server.rest_port}", "rest") as rest_client,
    ):
        via_grpc = grpc_client.predict("separable", images)
        via_rest = rest_client.predict("separable", images)
    np.testing.assert_array_equal(via_grpc.classes, via_rest.classes)
