"""SavedModel → TFLite (float32) for the LiteRT runtime, from the loaded serving signature.

``TFLiteConverter.from_saved_model`` on this project's SavedModels writes a 7.5 KB file without
the weights (the variables are not frozen in); converting the loaded ``serving_default`` concrete
function freezes them (about 1.7 MB for either model) and keeps the signature's name and keys.
"""

from __future__ import annotations

from pathlib import Path

from contract import SIGNATURE_NAME


def convert_saved_model_to_tflite(saved_model_dir: Path, output_path: Path) -> int:
    """Write ``output_path`` (float32, no quantization); return its size in bytes."""
    import tensorflow as tf

    loaded = tf.saved_model.load(str(saved_model_dir))
    signature = loaded.signatures[SIGNATURE_NAME]
    converter = tf.lite.TFLiteConverter.from_concrete_functions([signature], loaded)
    flatbuffer = converter.convert()
    weight_bytes = sum(int(v.numpy().nbytes) for v in signature.variables)
    if len(flatbuffer) < weight_bytes:
        raise ValueError(
            f"the TFLite conversion wrote {len(flatbuffer):,} bytes for {weight_bytes:,} bytes of "
            "weights: they are missing"
        )
    output_path.write_bytes(flatbuffer)
    return len(flatbuffer)
