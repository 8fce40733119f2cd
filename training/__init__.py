"""Training of the tutorial's standard and depthwise-separable MNIST CNNs."""
