"""Build ``.whl/``: what the GPU machine lacks to serve and load-test the models there.

The GPU machine (docs/gpu.md) has Python 3.12, PyTorch with CUDA, grpcio, protobuf, onnx,
onnxruntime (CPU), numpy, matplotlib and more, and no network: everything else travels as wheels
with the working tree. This tool, run in the project's environment (``make gpu-bundle``):

1. walks the project's requirements (runtime dependencies and the ``loadtest`` and ``torch``
   extras) through each package's declared dependencies, evaluated for CPython 3.12 on x86-64
   Linux, stopping at packages the GPU machine has (:data:`GPU_MACHINE_HAS`) unless a requirement
   needs a newer version than it has there (:data:`GPU_MACHINE_VERSIONS`) or the package is in
   :data:`ALWAYS_CARRIED`; versions are the pyproject pins, else the ones installed here (tested);
2. downloads those wheels for cp312 manylinux x86-64 with ``pip download --no-deps``;
3. builds the TensorFlow-protos-only wheel (``tools/build_proto_wheel.py``) that replaces
   TensorFlow for ``tensorflow-serving-api``;
4. copies the model repository's latest versions to ``.whl/models/`` and the MNIST test set to
   ``.whl/data/keras/datasets/mnist.npz`` (the load generator's images);
5. refuses a bundle over ``--max-mib`` (the device tool carries 64 MiB with the working tree).

On the GPU machine, ``loadtest/gpu/run.sh`` installs it with
``pip install --no-index --no-deps --target /tmp/site .whl/*.whl``.

    python -m tools.gpu_bundle --output .whl --models-dir models
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import shutil
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.version import Version

from contract import EXPORT_REPORT_FILENAME, MODEL_NAMES, ONNX_FILENAME
from tools.requirements import load_requirements, normalize, select

ROOT = Path(__file__).resolve().parent.parent
EXTRAS = ("loadtest", "torch")
# tensorflow-serving-api sits in the tensorflow extra (it requires TensorFlow); the bundle carries
# it alone, TensorFlow itself being NOT_CARRIED (the proto wheel stands in).
SERVING_API = "tensorflow-serving-api"
TARGET_PYTHON = "3.12"
# The GPU machine's glibc is 2.39 (Ubuntu 24.04); pip matches manylinux tags exactly.
PLATFORMS = tuple(
    [f"manylinux_2_{n}_x86_64" for n in (39, 38, 35, 34, 31, 28, 27, 26, 24, 17)]
    + ["manylinux2014_x86_64", "manylinux1_x86_64", "linux_x86_64"]
)
MARKER_ENVIRONMENT = {
    "python_version": TARGET_PYTHON,
    "python_full_version": f"{TARGET_PYTHON}.3",
    "implementation_name": "cpython",
    "implementation_version": f"{TARGET_PYTHON}.3",
    "platform_python_implementation": "CPython",
    "os_name": "posix",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
}

# The GPU machine's image (the device tool's KINDS.md, read on 2026-11-17), normalized names.
GPU_MACHINE_HAS = frozenset(
    normalize(n)
    for n in """
    absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs
    botorch build certifi charset-normalizer chex click cloudpickle cmake colorama contourpy
    coverage cuda-bindings cuda-core cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython
    diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools formulaic
    frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize
    hypothesis idna imageio iniconfig interface-meta jax jaxlib jaxtyping jinja2 joblib
    kiwisolver lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml
    markdown markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack
    multidict multipledispatch mypy-extensions nanobind narwhals networkx ninja numba numba-cuda
    numpy numpyro nvidia-ml-py onnx onnx-ir onnxruntime onnxscript opencv-python-headless optax
    opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy peft
    pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11
    py-cpuinfo pygments pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark
    pytest-cov pytest-mock pytest-timeout pytest-xdist python-dateutil pytorch-lightning pyyaml
    regex requests rich sacrebleu safetensors scikit-build-core scikit-image scikit-learn scipy
    seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six
    sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore
    threadpoolctl tifffile tiktoken timm tokenizers toolz torch torchaudio torchdiffeq
    torch-geometric torchmetrics torchvision tqdm transformers treescope triton typer
    typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray
    xxhash yarl zipp
    """.split()  # noqa: SIM905 - a compact copy of the image's package list
)
# Versions seen there (issue 6 and KINDS.md); a requirement they fail makes the package travel.
GPU_MACHINE_VERSIONS = {
    "grpcio": "1.84.0",
    "protobuf": "7.36.2",
    "onnx": "1.23.1",
    "onnxruntime": "1.30.0",
    "numpy": "2.5.2",
    "torch": "2.11.0",
    "torchvision": "0.26.0",
}
# Carried although present: its version there is unknown and pydantic-core needs >= 4.16.
ALWAYS_CARRIED = frozenset({"typing-extensions"})
# Declared dependencies that are deliberately not installed, and why.
NOT_CARRIED = {
    "tensorflow": "tensorflow-serving-api needs only TensorFlow's protos: the proto wheel",
}
DEFAULT_MAX_MIB = 55.0


class BundleError(RuntimeError):
    """The bundle cannot be built as asked (one line for the operator)."""


@dataclass
class Plan:
    """What travels (name -> version) and what the GPU machine provides."""

    carried: dict[str, str] = field(default_factory=dict)
    provided: set[str] = field(default_factory=set)
    skipped: dict[str, str] = field(default_factory=dict)


def _pins() -> dict[str, str]:
    pins = {}
    pyproject = ROOT / "pyproject.toml"
    serving_api = select(load_requirements(pyproject, ("tensorflow",)), only=[SERVING_API])
    for requirement in [*load_requirements(pyproject, EXTRAS), *serving_api]:
        parsed = Requirement(requirement.text)
        versions = [s.version for s in parsed.specifier if s.operator == "=="]
        if versions:
            pins[requirement.name] = versions[0]
    return pins


def _applies(requirement: Requirement, extras: Iterable[str]) -> bool:
    if requirement.marker is None:
        return True
    marker: Marker = requirement.marker
    return any(marker.evaluate({**MARKER_ENVIRONMENT, "extra": e}) for e in ("", *extras))


def _installed_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        raise BundleError(
            f"{name} is needed on the GPU machine but not installed here: run `make setup`"
        ) from None


def plan_bundle(roots: Sequence[str] | None = None) -> Plan:
    """Walk the requirements from ``roots`` (default: the project's) into a :class:`Plan`."""
    pins = _pins()
    plan = Plan()
    queue: list[tuple[str, Requirement | None, frozenset[str]]] = [
        (name, None, frozenset()) for name in (roots if roots is not None else pins)
    ]
    walked: dict[str, frozenset[str]] = {}
    while queue:
        raw, needed_by, extras = queue.pop(0)
        name = normalize(raw)
        if name in NOT_CARRIED:
            plan.skipped[name] = NOT_CARRIED[name]
            continue
        there = GPU_MACHINE_VERSIONS.get(name)
        too_old = (
            needed_by is not None
            and there is not None
            and not needed_by.specifier.contains(Version(there), prereleases=True)
        )
        if name in GPU_MACHINE_HAS and name not in ALWAYS_CARRIED and not too_old:
            if name not in plan.carried:
                plan.provided.add(name)
            continue
        plan.provided.discard(name)
        if name in walked and extras <= walked[name]:
            continue
        walked[name] = walked.get(name, frozenset()) | extras
        version = plan.carried.get(name) or pins.get(name) or _installed_version(name)
        if needed_by is not None and not needed_by.specifier.contains(version, prereleases=True):
            raise BundleError(f"{name} {version} does not satisfy {needed_by}")
        plan.carried[name] = version
        for text in importlib.metadata.requires(name) or []:
            requirement = Requirement(text)
            if _applies(requirement, walked[name]):
                queue.append((requirement.name, requirement, frozenset(requirement.extras)))
    return plan


def download(plan: Plan, output: Path) -> None:
    """``pip download`` the carried wheels for the GPU machine into ``output``."""
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--quiet",
        "--no-deps",
        "--only-binary=:all:",
        "--python-version",
        TARGET_PYTHON,
        "--implementation",
        "cp",
        *(arg for platform in PLATFORMS for arg in ("--platform", platform)),
        "--dest",
        str(output),
        *(f"{name}=={version}" for name, version in sorted(plan.carried.items())),
    ]
    subprocess.run(command, check=True)


def build_proto_wheel(output: Path) -> None:
    """The TensorFlow-protos-only wheel (tools/build_proto_wheel.py, needs TensorFlow here)."""
    tool = ROOT / "tools" / "build_proto_wheel.py"
    if not tool.is_file():
        raise BundleError(f"{tool} is missing: it builds the TensorFlow protos wheel")
    subprocess.run([sys.executable, str(tool), "--output-dir", str(output)], check=True)


def copy_models(models_dir: Path, output: Path) -> list[str]:
    """Copy each model's latest version (and the export report) to ``output/models``."""
    target = output / "models"
    copied = []
    for name in MODEL_NAMES:
        versions = [p for p in (models_dir / name).glob("*") if p.is_dir() and p.name.isdigit()]
        if not versions:
            raise BundleError(
                f"no version of {name} under {models_dir}: export the models (`make export`)"
            )
        latest = max(versions, key=lambda p: int(p.name))
        if not (latest / ONNX_FILENAME).is_file():
            raise BundleError(f"{latest / ONNX_FILENAME} is missing")
        shutil.copytree(latest, target / name / latest.name)
        copied.append(f"{name}/{latest.name}")
    report = models_dir / EXPORT_REPORT_FILENAME
    if report.is_file():
        shutil.copy2(report, target / EXPORT_REPORT_FILENAME)
    return copied


def write_test_set(output: Path) -> Path:
    """The MNIST test set where ``KERAS_HOME=output/data/keras`` makes the load generator look."""
    from mnist_data import load_mnist

    mnist = load_mnist()
    path = output / "data" / "keras" / "datasets" / "mnist.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    # Test arrays only: loadtest.record.payload reads just these (a quarter of the full file).
    np.savez_compressed(path, x_test=mnist.x_test, y_test=mnist.y_test)
    return path


def bundle_size(output: Path) -> int:
    """Bytes under ``output``."""
    return sum(p.stat().st_size for p in output.rglob("*") if p.is_file())


def main(argv: Sequence[str] | None = None) -> int:
    """Build the bundle; print what travels and its size."""
    parser = argparse.ArgumentParser(prog="python -m tools.gpu_bundle", description=__doc__)
    parser.add_argument("--output", type=Path, default=ROOT / ".whl")
    parser.add_argument("--models-dir", type=Path, default=ROOT / "models")
    parser.add_argument("--max-mib", type=float, default=DEFAULT_MAX_MIB)
    parser.add_argument("--plan-only", action="store_true", help="print the plan, download nothing")
    args = parser.parse_args(argv)
    try:
        plan = plan_bundle()
        if args.plan_only:
            print(
                json.dumps({"carried": plan.carried, "provided": sorted(plan.provided)}, indent=2)
            )
            return 0
        if args.output.exists():
            shutil.rmtree(args.output)  # one version of each wheel, no leftovers
        args.output.mkdir(parents=True)
        download(plan, args.output)
        build_proto_wheel(args.output)
        models = copy_models(args.models_dir, args.output)
        write_test_set(args.output)
        size = bundle_size(args.output)
        manifest = {
            "carried": plan.carried,
            "provided_by_gpu_machine": sorted(plan.provided),
            "not_carried": plan.skipped,
            "models": models,
            "bytes": size,
        }
        (args.output / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    except (BundleError, subprocess.CalledProcessError, OSError) as exc:
        print(f"gpu-bundle: {exc}", file=sys.stderr)
        return 2
    wheels = sorted(p.name for p in args.output.glob("*.whl"))
    print(
        f"{len(wheels)} wheels, models {', '.join(models)}, {size / 2**20:.1f} MiB in {args.output}"
    )
    for wheel in wheels:
        print(f"  {wheel}")
    if size > args.max_mib * 2**20:
        print(
            f"gpu-bundle: {size / 2**20:.1f} MiB is over --max-mib {args.max_mib}", file=sys.stderr
        )
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
