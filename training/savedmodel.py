"""SavedModel with the serving contract every runtime and server relies on.

Signature ``serving_default``: input ``images`` float32 [-1,28,28,1] (pixels in [0,1]); outputs
``probabilities`` float32 [-1,10] and ``classes`` int64 [-1].
"""

from __future__ import annotations

from pathlib import Path

import keras
import tensorflow as tf

from contract import INPUT_NAME, OUTPUT_CLASSES, OUTPUT_PROBABILITIES, SIGNATURE_NAME


class _ServingModule(tf.Module):
    """Wraps the Keras model so the signature adds ``classes`` and fixes the tensor names."""

    def __init__(self, model: keras.Model) -> None:
        super().__init__(name=model.name)
        self.model = model

    @tf.function(input_signature=[tf.TensorSpec([None, 28, 28, 1], tf.float32, name=INPUT_NAME)])
    def serve(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        probabilities = self.model(images, training=False)
        return {
            OUTPUT_PROBABILITIES: tf.identity(probabilities, name=OUTPUT_PROBABILITIES),
            OUTPUT_CLASSES: tf.argmax(probabilities, axis=-1, output_type=tf.int64),
        }


def save_serving_model(model: keras.Model, path: Path) -> None:
    """Write ``model`` as a SavedModel whose only signature is the serving contract."""
    module = _ServingModule(model)
    tf.saved_model.save(module, str(path), signatures={SIGNATURE_NAME: module.serve})
