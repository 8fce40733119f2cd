"""Request payloads from the real MNIST test set, and the answers' predicted classes.

No TensorFlow here: gRPC requests are built from ``contract.protos`` with ``tensor_content`` (raw
little-endian float32, what TF Serving itself decodes fastest) and REST bodies are TF Serving's
row format ``{"instances": [...]}`` written straight from a lookup table of the 256 pixel values.
Every consumer walks the test set batch by batch (``ImageRing``), so the labels of each request are
known and the accuracy of the served model can be checked under load.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from contract import INPUT_SHAPE, OUTPUT_CLASSES, SIGNATURE_NAME


@dataclass(frozen=True)
class TestSet:
    """MNIST test images (uint8, N×28×28) and labels (int64, N)."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


@functools.cache  # process-wide: the test set is immutable and every user shares it
def load_test_set() -> TestSet:
    """The 10,000 MNIST test images, loaded once per process.

    Reads only the test arrays from the Keras cache when it is there (a quarter of a second
    instead of decompressing the training set too); otherwise ``mnist_data.load_mnist`` finds
    and caches MNIST from its other sources.
    """
    from mnist_data import TEST_SIZE, keras_cache_path, load_mnist

    images: np.ndarray | None = None
    labels: np.ndarray | None = None
    cache = keras_cache_path()
    if cache.is_file():
        try:
            with np.load(cache, allow_pickle=False) as npz:
                images, labels = npz["x_test"], npz["y_test"]
        except (OSError, KeyError, ValueError):
            images = labels = None
    valid = (
        images is not None
        and labels is not None
        and images.shape == (TEST_SIZE, 28, 28)
        and images.dtype == np.uint8
        and labels.shape == (TEST_SIZE,)
    )
    if not valid:
        mnist = load_mnist()
        images, labels = mnist.x_test, mnist.y_test
    assert images is not None and labels is not None
    return TestSet(np.ascontiguousarray(images), labels.astype(np.int64))


def to_float(images: np.ndarray) -> np.ndarray:
    """uint8 (B,28,28) → float32 (B,28,28,1) in [0,1]: the serving input contract."""
    return (images.astype(np.float32) / np.float32(255.0))[..., np.newaxis]


class ImageRing:
    """Consecutive batches of the test set, wrapping around at the end.

    Batch ``i`` holds images ``i*b … i*b+b-1`` modulo the set size, so a run touches every test
    image before repeating one, and any batch size works (also larger than the set).
    """

    def __init__(self, test_set: TestSet, batch_size: int) -> None:
        if batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {batch_size}")
        self.test_set = test_set
        self.batch_size = batch_size
        count = len(test_set)
        # The ring period: after this many batches the index sequence repeats exactly.
        self.period = count // int(np.gcd(count, batch_size))

    def indices(self, batch_index: int) -> np.ndarray:
        """Test-set indices of batch ``batch_index``."""
        start = (batch_index % self.period) * self.batch_size
        return np.arange(start, start + self.batch_size) % len(self.test_set)

    def batch(self, batch_index: int) -> tuple[np.ndarray, np.ndarray]:
        """(uint8 images, int64 labels) of batch ``batch_index``."""
        idx = self.indices(batch_index)
        return self.test_set.images[idx], self.test_set.labels[idx]


# --- gRPC -------------------------------------------------------------------------------------


def predict_request(model: str, images_uint8: np.ndarray, signature: str = SIGNATURE_NAME) -> Any:
    """A ``tensorflow.serving.PredictRequest`` for ``images_uint8`` (B,28,28) as float32, built by
    the project's client (:func:`serving.client.predict_request`) and asking for ``classes``
    only (the load test checks classes; probabilities would only add bytes to every answer)."""
    from serving.client import predict_request as client_request

    request = client_request(model, to_float(images_uint8), signature_name=signature)
    request.output_filter.append(OUTPUT_CLASSES)
    return request


def classes_from_predict_response(response: Any) -> np.ndarray:
    """The ``classes`` output of a PredictResponse as int64 (tensor_content or int64_val)."""
    tensor = response.outputs[OUTPUT_CLASSES]
    if tensor.tensor_content:
        return np.frombuffer(tensor.tensor_content, dtype="<i8")
    return np.asarray(tensor.int64_val, dtype=np.int64)


# --- REST -------------------------------------------------------------------------------------


def _pixel_text(value: int) -> str:
    # The shortest decimal that parses back to the same float32 as value/255: exact input, small
    # bodies. 0 and 1 are written as integers, which JSON parsers read as the same numbers.
    if value == 0:
        return "0"
    if value == 255:
        return "1"
    return np.format_float_positional(np.float32(value / 255.0), unique=True)


def _token_table() -> tuple[np.ndarray, np.ndarray]:
    """Tokens per (position kind, pixel value), and the kind of each of the 784 positions.

    An image is ``[[[p],[p],…],[[p],…],…]``: each pixel is a one-element channel list, so a pixel
    token carries the brackets that open or close its row (and the image at both ends). Joining
    the tokens of a whole batch with commas then yields the ``instances`` list in one ``str.join``.
    """
    values = [_pixel_text(v) for v in range(256)]
    formats = (
        "[{}]",
        "[[{}]",
        "[{}]]",
        "[[[{}]",
        "[{}]]]",
    )  # middle, row start/end, image start/end
    table = np.array([[f.format(v) for v in values] for f in formats], dtype=object)
    kinds = np.zeros(INPUT_SHAPE[:2], dtype=np.intp)
    kinds[:, 0] = 1
    kinds[:, -1] = 2
    kinds[0, 0] = 3
    kinds[-1, -1] = 4
    return table, kinds.ravel()


_TOKENS, _POSITION_KINDS = _token_table()


def rest_body(images_uint8: np.ndarray) -> bytes:
    """TF Serving row-format JSON ``{"instances": [...]}`` for (B,28,28) uint8 images."""
    count = images_uint8.shape[0]
    tokens = _TOKENS[np.tile(_POSITION_KINDS, count), images_uint8.reshape(-1)]
    return ('{"instances":[' + ",".join(tokens.tolist()) + "]}").encode("ascii")


def rest_path(model: str, version: int | None = None) -> str:
    """``/v1/models/<model>[/versions/<v>]:predict``."""
    suffix = f"/versions/{version}" if version is not None else ""
    return f"/v1/models/{model}{suffix}:predict"


def classes_from_rest_response(body: bytes | str) -> np.ndarray:
    """Predicted classes from a REST ``:predict`` answer (row or columnar format).

    Row format: ``{"predictions": [{"probabilities": [...], "classes": k}, ...]}``; a model with a
    single output answers ``{"predictions": [[...], ...]}`` and columnar requests answer
    ``{"outputs": {...}}``; the class is then the argmax of the probabilities.
    """
    document = json.loads(body)
    if "predictions" in document:
        predictions = document["predictions"]
        if predictions and isinstance(predictions[0], Mapping):
            if OUTPUT_CLASSES in predictions[0]:
                return np.asarray([p[OUTPUT_CLASSES] for p in predictions], dtype=np.int64)
            return np.asarray([np.argmax(p["probabilities"]) for p in predictions], dtype=np.int64)
        return np.argmax(np.asarray(predictions, dtype=np.float64), axis=-1).astype(np.int64)
    if "outputs" in document:
        outputs = document["outputs"]
        if isinstance(outputs, Mapping) and OUTPUT_CLASSES in outputs:
            return np.asarray(outputs[OUTPUT_CLASSES], dtype=np.int64)
        values = outputs["probabilities"] if isinstance(outputs, Mapping) else outputs
        return np.argmax(np.asarray(values, dtype=np.float64), axis=-1).astype(np.int64)
    raise ValueError(f"no predictions in the answer: {str(body)[:200]}")


def count_correct(predicted: np.ndarray, labels: Sequence[int] | np.ndarray) -> int:
    """How many predicted classes equal the labels.

    Raises ``ValueError`` when the answer does not have one class per image: that is a broken
    response (a failed request), unlike a wrong class, which only lowers the accuracy.
    """
    expected = np.asarray(labels, dtype=np.int64)
    if predicted.shape != expected.shape:
        raise ValueError(f"expected {expected.shape[0]} classes, the answer has {predicted.shape}")
    return int(np.count_nonzero(predicted == expected))
