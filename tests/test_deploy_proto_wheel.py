"""tools/build_proto_wheel.py: TF Serving's protos must import with only the proto-only wheel.

The wheel is installed with ``pip install --target`` into a fresh directory that is put first on
``PYTHONPATH`` of a child interpreter: its ``tensorflow`` package then shadows the real TensorFlow
of this environment completely (a package's submodules are searched only in its own directory), so
the child sees exactly what the ONNX image sees: the wheel, protobuf, grpcio and
tensorflow-serving-api.
"""

from __future__ import annotations

import email.parser
import importlib.metadata
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TOOL = ROOT / "tools" / "build_proto_wheel.py"

CHILD = r"""
import importlib, json, pkgutil, sys
import tensorflow_serving.apis as apis, tensorflow_serving.config as config
from tensorflow_serving.apis import (
    get_model_metadata_pb2, model_service_pb2_grpc, predict_pb2, prediction_service_pb2_grpc,
)
from tensorflow.core.framework import tensor_pb2, types_pb2
# Every module of both packages, not only the ones named above.
for package in (apis, config):
    for info in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package.__name__}.{info.name}")
request = predict_pb2.PredictRequest()
request.model_spec.name = "standard"
request.inputs["images"].dtype = types_pb2.DT_FLOAT
request.inputs["images"].float_val.extend([0.5, 0.25])
again = predict_pb2.PredictRequest.FromString(request.SerializeToString())
try:
    import tensorflow.python
    reachable = True
except ImportError:
    reachable = False
tf_files = sorted(
    getattr(module, "__file__", None) or ""
    for name, module in sys.modules.items()
    if name.split(".")[0] == "tensorflow"
)
print(json.dumps({
    "roundtrip": list(again.inputs["images"].float_val),
    "tensorflow_python_reachable": reachable,
    "tensorflow_files": tf_files,
    "stub": hasattr(prediction_service_pb2_grpc, "PredictionServiceStub")
        and hasattr(model_service_pb2_grpc, "ModelServiceStub"),
    "metadata": get_model_metadata_pb2.GetModelMetadataRequest.DESCRIPTOR.full_name,
}))
"""


def _build(output_dir: Path) -> Path:
    result = subprocess.run(
        [sys.executable, str(TOOL), "--output-dir", str(output_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    (wheel,) = output_dir.glob("*.whl")
    assert wheel.name in result.stdout
    return wheel


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    return _build(tmp_path_factory.mktemp("proto-wheel"))


def test_wheel_holds_only_generated_protos(wheel):
    version = importlib.metadata.version("tensorflow")
    assert wheel.name == f"tensorflow_serving_protos_only-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        modules = [n for n in names if ".dist-info/" not in n]
        assert all(n.startswith("tensorflow/") for n in modules)
        assert all(n.endswith(("_pb2.py", "/__init__.py")) for n in modules)
        for init in (n for n in modules if n.endswith("__init__.py")):
            assert archive.read(init) == b"", init
        assert "tensorflow/__init__.py" in modules
        for needed in (
            "tensorflow/core/framework/tensor_pb2.py",
            "tensorflow/core/framework/types_pb2.py",
            "tensorflow/core/protobuf/meta_graph_pb2.py",
            "tensorflow/core/example/example_pb2.py",
        ):
            assert needed in modules
        # A closure, not a copy of TensorFlow's protos: the few dozen reached from TF Serving.
        assert 20 < sum(n.endswith("_pb2.py") for n in modules) < 100
        metadata = email.parser.Parser().parsestr(
            archive.read(f"tensorflow_serving_protos_only-{version}.dist-info/METADATA").decode()
        )
    assert metadata["Name"] == "tensorflow-serving-protos-only"
    assert metadata["Version"] == version
    assert any(r.startswith("protobuf") for r in metadata.get_all("Requires-Dist") or [])


def test_wheel_is_reproducible(wheel, tmp_path):
    assert _build(tmp_path).read_bytes() == wheel.read_bytes()


def test_tf_serving_protos_import_with_only_the_wheel(wheel, tmp_path):
    target = tmp_path / "site"
    install = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-index",
            "--disable-pip-version-check",
            "--target",
            str(target),
            str(wheel),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert install.returncode == 0, install.stderr
    env = {**os.environ, "PYTHONPATH": str(target), "PYTHONNOUSERSITE": "1"}
    child = subprocess.run(
        [sys.executable, "-c", CHILD],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=env,
        check=False,
    )
    assert child.returncode == 0, child.stderr
    report = json.loads(child.stdout)
    assert report["roundtrip"] == [0.5, 0.25]
    assert report["stub"] is True
    assert report["metadata"] == "tensorflow.serving.GetModelMetadataRequest"
    assert report["tensorflow_python_reachable"] is False
    assert report["tensorflow_files"]
    assert all(f.startswith(str(target)) for f in report["tensorflow_files"])


def test_tool_lists_the_closure():
    result = subprocess.run(
        [sys.executable, str(TOOL), "--list"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    listed = set(result.stdout.split())
    assert "tensorflow.core.framework.tensor_pb2" in listed
    assert not any(name.startswith("tensorflow.python") for name in listed)
