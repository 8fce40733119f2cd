"""SavedModel → ONNX with tf2onnx's SavedModel loader (``from_keras`` is unreliable on Keras 3)."""

from __future__ import annotations

from pathlib import Path

import onnx

from contract import INPUT_NAME, OUTPUT_CLASSES, OUTPUT_PROBABILITIES, SIGNATURE_NAME

DEFAULT_OPSET = 17


def convert_saved_model(
    saved_model_dir: Path, output_path: Path, opset: int = DEFAULT_OPSET
) -> None:
    """Convert the ``serving_default`` signature to ONNX with the signature's tensor names.

    The graph's inputs/outputs are renamed to the signature keys (``images``; ``probabilities``,
    ``classes``) so every runtime sees the same names as the SavedModel.
    """
    from tf2onnx import convert, tf_loader

    graph_def, inputs, outputs, tensors_to_rename = tf_loader.from_saved_model(
        str(saved_model_dir),
        None,
        None,
        tag="serve",
        signatures=[SIGNATURE_NAME],
        return_tensors_to_rename=True,
    )
    model_proto, _ = convert.from_graph_def(
        graph_def,
        name=saved_model_dir.parent.name,
        input_names=inputs,
        output_names=outputs,
        opset=opset,
        tensors_to_rename=tensors_to_rename,
    )
    check_onnx_model(model_proto)
    output_path.write_bytes(model_proto.SerializeToString())


def check_onnx_model(model: onnx.ModelProto) -> None:
    """``onnx.checker`` plus the contract's input and output names."""
    onnx.checker.check_model(model, full_check=True)
    input_names = [i.name for i in model.graph.input]
    output_names = sorted(o.name for o in model.graph.output)
    expected_outputs = sorted([OUTPUT_PROBABILITIES, OUTPUT_CLASSES])
    if input_names != [INPUT_NAME] or output_names != expected_outputs:
        raise ValueError(f"ONNX names {input_names} -> {output_names} do not match the signature")


def opset_version(model: onnx.ModelProto) -> int:
    """The default-domain opset the model was converted with."""
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
