"""Request payloads built from the MNIST test set decode to exactly the serving input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from loadtest.record import payload


@pytest.fixture(scope="module")
def test_set():
    return payload.load_test_set()


def test_test_set_is_mnist_test_split(test_set, mnist):
    assert len(test_set) == 10_000
    assert np.array_equal(test_set.images, mnist.x_test)
    assert np.array_equal(test_set.labels, mnist.y_test.astype(np.int64))


@pytest.mark.parametrize("batch_size", [1, 3, 32, 256])
def test_rest_body_is_tf_serving_row_format_with_exact_values(test_set, batch_size):
    images = test_set.images[:batch_size]
    document = json.loads(payload.rest_body(images))
    decoded = np.asarray(document["instances"], dtype=np.float32)
    assert decoded.shape == (batch_size, 28, 28, 1)
    assert np.array_equal(decoded, payload.to_float(images))


def test_grpc_request_carries_float32_tensor_content(test_set):
    from contract.protos import types_pb2

    images = test_set.images[5:9]
    request = payload.predict_request("separable", images)
    tensor = request.inputs["images"]
    assert request.model_spec.name == "separable"
    assert request.model_spec.signature_name == "serving_default"
    assert tensor.dtype == types_pb2.DT_FLOAT
    assert [d.size for d in tensor.tensor_shape.dim] == [4, 28, 28, 1]
    decoded = np.frombuffer(tensor.tensor_content, dtype="<f4").reshape(4, 28, 28, 1)
    assert np.array_equal(decoded, payload.to_float(images))


def test_ring_walks_the_whole_test_set_and_wraps(test_set):
    ring = payload.ImageRing(test_set, 3)
    seen = np.concatenate([ring.indices(i) for i in range(ring.period)])
    assert ring.period == 10_000  # gcd(10000, 3) = 1: every image at every position
    assert np.array_equal(np.bincount(seen, minlength=10_000), np.full(10_000, 3))
    assert np.array_equal(ring.indices(ring.period), ring.indices(0))
    images, labels = ring.batch(3333)  # images 9999, 0, 1
    assert np.array_equal(labels, test_set.labels[[9999, 0, 1]])
    assert images.shape == (3, 28, 28)


def test_classes_are_read_from_both_answer_formats():
    row = {"predictions": [{"probabilities": [0.1] * 10, "classes": 7}, {"classes": 2}]}
    assert payload.classes_from_rest_response(json.dumps(row)).tolist() == [7, 2]
    single = {"predictions": [[0.0] * 3 + [1.0] + [0.0] * 6]}
    assert payload.classes_from_rest_response(json.dumps(single)).tolist() == [3]
    columnar = {"outputs": {"classes": [4, 5], "probabilities": [[0.0] * 10] * 2}}
    assert payload.classes_from_rest_response(json.dumps(columnar)).tolist() == [4, 5]
    with pytest.raises(ValueError, match="no predictions"):
        payload.classes_from_rest_response(b'{"error": "boom"}')


def test_grpc_classes_from_tensor_content_and_int64_val():
    from contract.protos import predict_pb2

    response = predict_pb2.PredictResponse()
    response.outputs["classes"].tensor_content = np.array([1, 9], dtype="<i8").tobytes()
    assert payload.classes_from_predict_response(response).tolist() == [1, 9]
    response = predict_pb2.PredictResponse()
    response.outputs["classes"].int64_val.extend([3, 4, 5])
    assert payload.classes_from_predict_response(response).tolist() == [3, 4, 5]


def test_wrong_class_lowers_accuracy_but_a_short_answer_is_an_error():
    assert payload.count_correct(np.array([1, 2, 3]), [1, 0, 3]) == 2
    with pytest.raises(ValueError, match="expected 3 classes"):
        payload.count_correct(np.array([1, 2]), [1, 2, 3])
