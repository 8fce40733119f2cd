"""Parameter and multiply-accumulate (MAC) counts per layer, derived from layer shapes."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import keras


@dataclass(frozen=True)
class LayerCost:
    """One layer's cost: its trainable parameters and MACs for a single 28x28 image."""

    name: str
    kind: str
    output_shape: tuple[int, ...]
    params: int
    macs: int


def _spatial(shape: Any) -> tuple[int, int, int]:
    _, height, width, channels = shape
    return int(height), int(width), int(channels)


def layer_costs(model: keras.Model) -> list[LayerCost]:
    """MACs per layer for one image (biases and activations excluded, as is conventional).

    Conv2D: H_out·W_out·C_out·k_h·k_w·C_in. SeparableConv2D: depthwise H_out·W_out·C_in·k_h·k_w
    (depth multiplier 1) plus pointwise H_out·W_out·C_in·C_out. Dense: in·out.
    """
    costs = []
    for layer in model.layers:
        out_shape = tuple(int(d) for d in layer.output.shape[1:])
        in_shape = layer.input.shape
        macs = 0
        if isinstance(layer, keras.layers.SeparableConv2D):
            h_out, w_out, c_out = _spatial(layer.output.shape)
            c_in = int(in_shape[-1])
            k_h, k_w = layer.kernel_size
            multiplier = layer.depth_multiplier
            macs = h_out * w_out * c_in * multiplier * (k_h * k_w + c_out)
        elif isinstance(layer, keras.layers.Conv2D):
            h_out, w_out, c_out = _spatial(layer.output.shape)
            k_h, k_w = layer.kernel_size
            macs = h_out * w_out * c_out * k_h * k_w * int(in_shape[-1])
        elif isinstance(layer, keras.layers.Dense):
            macs = int(in_shape[-1]) * layer.units
        costs.append(
            LayerCost(
                name=layer.name,
                kind=type(layer).__name__,
                output_shape=out_shape,
                params=int(sum(math.prod(w.shape) for w in layer.trainable_weights)),
                macs=macs,
            )
        )
    return costs


def complexity_summary(model: keras.Model) -> dict[str, Any]:
    """Totals plus the per-layer breakdown, JSON-ready."""
    costs = layer_costs(model)
    return {
        "params": sum(c.params for c in costs),
        "macs": sum(c.macs for c in costs),
        "conv_macs": sum(c.macs for c in costs if "Conv" in c.kind),
        "layers": [asdict(c) for c in costs],
    }
