"""The model repository: ``models/<name>/<version>/`` plus ``models.config`` and Triton configs.

Versions are written through a temporary directory and published with one atomic rename, so a
server polling the base path never sees half a model, and an existing version is never touched.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from contract import (
    INPUT_NAME,
    INPUT_SHAPE,
    MODELS_CONFIG_FILENAME,
    NUM_CLASSES,
    OUTPUT_CLASSES,
    OUTPUT_PROBABILITIES,
    TRITON_CONFIG_FILENAME,
)

TRITON_MAX_BATCH_SIZE = 256


def existing_versions(model_dir: Path) -> list[int]:
    """Integer version directories under ``model_dir``, ascending (others are ignored)."""
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


def next_version(model_dir: Path) -> int:
    """One more than the highest existing version (1 for a new model)."""
    versions = existing_versions(model_dir)
    return versions[-1] + 1 if versions else 1


@contextmanager
def staged_version(model_dir: Path) -> Iterator[tuple[int, Path]]:
    """Yield ``(version, staging_dir)``; on success rename staging to ``model_dir/<version>``.

    The staging directory is a dot-directory beside the versions (same filesystem, so the rename
    is atomic, and TF Serving and our server ignore non-integer names).
    """
    model_dir.mkdir(parents=True, exist_ok=True)
    version = next_version(model_dir)
    staging = Path(tempfile.mkdtemp(prefix=f".staging-{version}-", dir=model_dir))
    try:
        yield version, staging
        os.chmod(staging, 0o755)  # mkdtemp makes it 0700; servers may run as another user
        os.rename(staging, model_dir / str(version))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def write_version(model_dir: Path, populate: Callable[[Path], None]) -> int:
    """Create the next version of the model in ``model_dir`` with ``populate(staging_dir)``."""
    with staged_version(model_dir) as (version, staging):
        populate(staging)
    return version


def models_config_text(names: list[str], base_path: Path) -> str:
    """A ``ModelServerConfig`` text proto serving ``names`` from ``base_path/<name>``."""
    config = model_server_config_pb2.ModelServerConfig()
    for name in names:
        entry = config.model_config_list.config.add()
        entry.name = name
        entry.base_path = str(base_path / name)
        entry.model_platform = "tensorflow"
    return text_format.MessageToString(config)


def write_models_config(repository: Path, names: list[str], base_path: Path | None = None) -> Path:
    """Write ``models.config``; paths are absolute unless ``base_path`` (e.g. /models) is given."""
    path = repository / MODELS_CONFIG_FILENAME
    _atomic_write_text(path, models_config_text(names, base_path or repository.resolve()))
    return path


def triton_config_text(name: str, max_batch_size: int = TRITON_MAX_BATCH_SIZE) -> str:
    """Triton ``config.pbtxt`` for the ONNX model, with dynamic batching."""
    dims = ", ".join(str(d) for d in INPUT_SHAPE)
    return f"""name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: {max_batch_size}
version_policy: {{ latest: {{ num_versions: 1 }} }}
input [
  {{
    name: "{INPUT_NAME}"
    data_type: TYPE_FP32
    dims: [ {dims} ]
  }}
]
output [
  {{
    name: "{OUTPUT_PROBABILITIES}"
    data_type: TYPE_FP32
    dims: [ {NUM_CLASSES} ]
  }},
  {{
    name: "{OUTPUT_CLASSES}"
    data_type: TYPE_INT64
    dims: [ 1 ]
    reshape: {{ shape: [ ] }}
  }}
]
dynamic_batching {{
  max_queue_delay_microseconds: 200
}}
"""


def write_triton_config(model_dir: Path) -> Path:
    """Write ``<model_dir>/config.pbtxt`` so the same tree is a Triton repository."""
    path = model_dir / TRITON_CONFIG_FILENAME
    _atomic_write_text(path, triton_config_text(model_dir.name))
    return path


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
