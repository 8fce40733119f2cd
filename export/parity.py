"""TF SavedModel vs ONNX Runtime on the same images: the export's proof that both agree."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from contract import INPUT_NAME, OUTPUT_CLASSES, OUTPUT_PROBABILITIES, SIGNATURE_NAME

MAX_ABS_DIFF = 1e-5


@dataclass(frozen=True)
class ParityResult:
    """How far ONNX Runtime's answers are from TensorFlow's on ``images`` test images."""

    images: int
    max_abs_diff: float
    class_mismatches: int
    onnx_accuracy: float
    tf_accuracy: float
    opset: int
    grouped_convs: list[int]

    @property
    def passed(self) -> bool:
        """Within tolerance on every probability and the same class for every image."""
        return self.max_abs_diff <= MAX_ABS_DIFF and self.class_mismatches == 0

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, with the verdict."""
        return {**asdict(self), "passed": self.passed, "tolerance": MAX_ABS_DIFF}


def grouped_conv_groups(model: onnx.ModelProto) -> list[int]:
    """The ``group`` attribute of every Conv node, in graph order (1 = ordinary convolution)."""
    groups = []
    for node in model.graph.node:
        if node.op_type == "Conv":
            group = next((a.i for a in node.attribute if a.name == "group"), 1)
            groups.append(int(group))
    return groups


def check_parity(
    version_dir: Path, images: np.ndarray, labels: np.ndarray, batch_size: int = 1000
) -> ParityResult:
    """Run both formats in ``version_dir`` on ``images`` (float32 N,28,28,1) and compare."""
    import onnxruntime as ort
    import tensorflow as tf

    from contract import ONNX_FILENAME
    from export.onnx_convert import opset_version

    signature = tf.saved_model.load(str(version_dir)).signatures[SIGNATURE_NAME]
    onnx_path = version_dir / ONNX_FILENAME
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    max_diff = 0.0
    mismatches = 0
    tf_correct = onnx_correct = 0
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size]
        expected = signature(**{INPUT_NAME: tf.constant(batch)})
        tf_probs = expected[OUTPUT_PROBABILITIES].numpy()
        tf_classes = expected[OUTPUT_CLASSES].numpy()
        onnx_probs, onnx_classes = session.run(
            [OUTPUT_PROBABILITIES, OUTPUT_CLASSES], {INPUT_NAME: batch}
        )
        max_diff = max(max_diff, float(np.max(np.abs(tf_probs - onnx_probs), initial=0.0)))
        mismatches += int(np.sum(tf_classes != onnx_classes))
        batch_labels = labels[start : start + batch_size]
        tf_correct += int(np.sum(tf_classes == batch_labels))
        onnx_correct += int(np.sum(onnx_classes == batch_labels))
    model = onnx.load(str(onnx_path))
    return ParityResult(
        images=len(images),
        max_abs_diff=max_diff,
        class_mismatches=mismatches,
        onnx_accuracy=onnx_correct / max(len(images), 1),
        tf_accuracy=tf_correct / max(len(images), 1),
        opset=opset_version(model),
        grouped_convs=grouped_conv_groups(model),
    )


@dataclass(frozen=True)
class TfliteParityResult:
    """How far LiteRT's answers (XNNPACK, as served) are from TensorFlow's on ``images``."""

    images: int
    max_abs_diff: float
    class_mismatches: int
    tflite_accuracy: float
    tflite_bytes: int

    @property
    def passed(self) -> bool:
        """The ONNX thresholds: every probability within ``MAX_ABS_DIFF``, every class equal."""
        return self.max_abs_diff <= MAX_ABS_DIFF and self.class_mismatches == 0

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, with the verdict."""
        return {**asdict(self), "passed": self.passed, "tolerance": MAX_ABS_DIFF}


def tflite_signature_runner(path: Path, threads: int = 0) -> Any:
    """``serving_default`` of a .tflite file in LiteRT (XNNPACK), or TF's bundled interpreter."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # the litert extra absent: TensorFlow's copy of the same interpreter
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter  # noqa: N806
    interpreter = Interpreter(model_path=str(path), num_threads=threads or None)
    return interpreter.get_signature_runner(SIGNATURE_NAME)


def check_tflite_parity(
    version_dir: Path, images: np.ndarray, labels: np.ndarray, batch_size: int = 1000
) -> TfliteParityResult:
    """Run the SavedModel and ``model.tflite`` in ``version_dir`` on ``images`` and compare."""
    import tensorflow as tf

    from contract import TFLITE_FILENAME

    signature = tf.saved_model.load(str(version_dir)).signatures[SIGNATURE_NAME]
    path = version_dir / TFLITE_FILENAME
    runner = tflite_signature_runner(path)
    max_diff = 0.0
    mismatches = correct = 0
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size]
        expected = signature(**{INPUT_NAME: tf.constant(batch)})
        got = runner(**{INPUT_NAME: batch})
        diff = np.abs(expected[OUTPUT_PROBABILITIES].numpy() - got[OUTPUT_PROBABILITIES])
        max_diff = max(max_diff, float(np.max(diff, initial=0.0)))
        mismatches += int(np.sum(expected[OUTPUT_CLASSES].numpy() != got[OUTPUT_CLASSES]))
        correct += int(np.sum(got[OUTPUT_CLASSES] == labels[start : start + batch_size]))
    return TfliteParityResult(
        images=len(images),
        max_abs_diff=max_diff,
        class_mismatches=mismatches,
        tflite_accuracy=correct / max(len(images), 1),
        tflite_bytes=path.stat().st_size,
    )
