"""TensorFlow's kernel names differ by CPU: oneDNN (AVX-512 machines) prefixes them `_MklNative…`,
`_Mkl…`, grappler's fusions `_Fused…`. The op profile must classify each by what it computes."""

from __future__ import annotations

import pytest

from loadtest.run.opprofile_tf import tf_kernel_base, tf_kind

# (kernel name as TF 2.21's profiler reports it, its layer holds a depthwise kernel, kind)
REAL_KERNELS = [
    # Eigen path (AVX2 machines)
    ("DepthwiseConv2dNative", True, "depthwise"),
    ("Conv2D", True, "pointwise"),
    ("_FusedConv2D", True, "pointwise"),
    ("_FusedConv2D", False, "standard conv"),
    ("Conv2D", False, "standard conv"),
    ("MatMul", False, "dense"),
    ("_FusedMatMul", False, "dense"),
    ("MaxPool", False, "pooling"),
    ("Softmax", False, "rest"),
    ("Relu", False, "rest"),
    ("BiasAdd", False, "rest"),
    ("Reshape", False, "rest"),
    # oneDNN path (AVX-512 machines)
    ("_MklNativeDepthwiseConv2dNative", True, "depthwise"),
    ("_MklNativeFusedDepthwiseConv2dNative", True, "depthwise"),
    ("_MklNativeFusedConv2D", True, "pointwise"),
    ("_MklNativeFusedConv2D", False, "standard conv"),
    ("_MklNativeConv2D", False, "standard conv"),
    ("_MklNativeFusedMatMul", False, "dense"),
    ("_MklFusedMatMul", False, "dense"),
    ("_MklNativeMatMul", False, "dense"),
    ("_MklNativeMaxPool", False, "pooling"),
    ("_MklMaxPool", False, "pooling"),
    ("_MklNativeAvgPool", False, "pooling"),
    ("_MklSoftmax", False, "rest"),
    ("_MklNativeFusedBatchNormV3", False, "rest"),
]


@pytest.mark.parametrize(("kernel", "depthwise_layer", "kind"), REAL_KERNELS)
def test_every_tensorflow_kernel_is_classified_by_what_it_computes(kernel, depthwise_layer, kind):
    assert tf_kind(kernel, depthwise_layer) == kind


def test_prefixes_are_stripped_to_the_computation():
    assert tf_kernel_base("_MklNativeFusedConv2D") == "Conv2D"
    assert tf_kernel_base("_MklSoftmax") == "Softmax"
    assert tf_kernel_base("DepthwiseConv2dNative") == "DepthwiseConv2dNative"
