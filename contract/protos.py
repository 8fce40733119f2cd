"""TensorFlow Serving's protobuf modules without TensorFlow's runtime.

``tensorflow_serving.apis.*_pb2`` import ``tensorflow.core.*_pb2``. Importing those normally runs
``tensorflow/__init__.py`` (seconds of start-up and hundreds of MB), although the proto modules
themselves are plain generated code in packages with empty ``__init__`` files. ``ensure_light``
registers a placeholder for the top-level ``tensorflow`` package whose ``__path__`` is the real
one, so the proto submodules import on their own. ``import_real_tensorflow`` swaps the placeholder
for the real package when a process does need TensorFlow (the TF runtime); the proto modules
already imported are reused, so message classes stay identical.

Where TensorFlow is not installed (ONNX-only image, GPU machine) the protos come from a wheel
holding just these modules (see ``tools/build_proto_wheel.py``), and nothing here is needed.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from typing import Any

_PLACEHOLDER_ATTR = "__light_proto_placeholder__"
# Attributes the import system and introspection probe: answering them must not import TF.
_NOT_FORWARDED = frozenset(
    {"__wrapped__", "__loader__", "__cached__", "__builtins__", "__annotations__", "__dir__"}
)


def ensure_light() -> None:
    """Make ``tensorflow.core.*_pb2`` importable without running TensorFlow's ``__init__``."""
    if "tensorflow" in sys.modules:
        return
    spec = importlib.util.find_spec("tensorflow")
    if spec is None or not spec.submodule_search_locations:
        return  # no TensorFlow: the proto-only wheel (or nothing) provides the modules
    origin = spec.origin or ""
    if not origin.endswith("__init__.py"):
        return
    placeholder = types.ModuleType("tensorflow")
    placeholder.__path__ = list(spec.submodule_search_locations)
    placeholder.__file__ = origin
    setattr(placeholder, _PLACEHOLDER_ATTR, True)

    def __getattr__(name: str) -> Any:  # noqa: N807 - PEP 562 module hook
        # Code that did ``import tensorflow as tf`` while the placeholder was in place still
        # works: the first attribute it needs brings in the real package.
        if name in _NOT_FORWARDED:
            raise AttributeError(name)
        return getattr(import_real_tensorflow(), name)

    placeholder.__getattr__ = __getattr__  # type: ignore[method-assign]
    sys.modules["tensorflow"] = placeholder


def import_real_tensorflow() -> Any:
    """Import TensorFlow itself, replacing the placeholder if ``ensure_light`` installed one."""
    module = sys.modules.get("tensorflow")
    if module is not None and getattr(module, _PLACEHOLDER_ATTR, False):
        del sys.modules["tensorflow"]
    return importlib.import_module("tensorflow")


ensure_light()

# `pip install .` alone has neither TensorFlow nor tensorflow-serving-api (that one pulls TensorFlow
# in): say which installs provide the protos instead of a bare "No module named 'tensorflow'".
_MISSING_PROTOS = (
    "TensorFlow Serving's protos are not installed: pip install '.[tensorflow]' (with TensorFlow), "
    "or TensorFlow-free: `make proto-wheel`, then pip install dist/protos/*.whl && "
    "pip install --no-deps tensorflow-serving-api==2.21.0 (README, Install)"
)

# Re-exported so callers import the messages from one place (after the placeholder is in place).
try:
    from tensorflow.core.framework import (
        tensor_pb2,
        tensor_shape_pb2,
        types_pb2,
    )
    from tensorflow.core.protobuf import meta_graph_pb2
    from tensorflow_serving.apis import (
        classification_pb2,
        get_model_metadata_pb2,
        get_model_status_pb2,
        inference_pb2,
        model_management_pb2,
        model_pb2,
        model_service_pb2,
        model_service_pb2_grpc,
        predict_pb2,
        prediction_service_pb2,
        prediction_service_pb2_grpc,
        regression_pb2,
        status_pb2,
    )
    from tensorflow_serving.config import model_server_config_pb2
except ModuleNotFoundError as exc:
    if exc.name not in {"tensorflow", "tensorflow_serving"}:
        raise
    raise ImportError(_MISSING_PROTOS) from exc

__all__ = [
    "classification_pb2",
    "ensure_light",
    "get_model_metadata_pb2",
    "get_model_status_pb2",
    "import_real_tensorflow",
    "inference_pb2",
    "meta_graph_pb2",
    "model_management_pb2",
    "model_pb2",
    "model_server_config_pb2",
    "model_service_pb2",
    "model_service_pb2_grpc",
    "predict_pb2",
    "prediction_service_pb2",
    "prediction_service_pb2_grpc",
    "regression_pb2",
    "status_pb2",
    "tensor_pb2",
    "tensor_shape_pb2",
    "types_pb2",
]
