"""The tutorial's two MNIST CNNs: identical except for the convolution type."""

from __future__ import annotations

from typing import Literal

import keras

Variant = Literal["standard", "separable"]
VARIANTS: tuple[Variant, ...] = ("standard", "separable")
INPUT_SHAPE = (28, 28, 1)
NUM_CLASSES = 10


def build_model(variant: Variant) -> keras.Model:
    """Build the tutorial's CNN with ``Conv2D`` (standard) or ``SeparableConv2D`` (separable).

    Conv(32,3x3,relu) → MaxPool(2) → Dropout(.25) → Conv(64,3x3,relu) → MaxPool(2) → Dropout(.25)
    → Flatten → Dense(256,relu) → Dense(10,softmax).
    """
    if variant == "standard":
        conv = keras.layers.Conv2D
    elif variant == "separable":
        conv = keras.layers.SeparableConv2D  # depth_multiplier defaults to 1, as in the tutorial
    else:
        raise ValueError(f"unknown variant {variant!r}; expected one of {VARIANTS}")
    return keras.Sequential(
        [
            keras.Input(shape=INPUT_SHAPE, name="images"),
            conv(32, (3, 3), activation="relu", name="conv1"),
            keras.layers.MaxPooling2D((2, 2), name="pool1"),
            keras.layers.Dropout(0.25, name="dropout1"),
            conv(64, (3, 3), activation="relu", name="conv2"),
            keras.layers.MaxPooling2D((2, 2), name="pool2"),
            keras.layers.Dropout(0.25, name="dropout2"),
            keras.layers.Flatten(name="flatten"),
            keras.layers.Dense(256, activation="relu", name="dense1"),
            keras.layers.Dense(NUM_CLASSES, activation="softmax", name="probabilities"),
        ],
        name=variant,
    )
