"""No code path that runs on a request or a model directory can execute data: no pickle (or
marshal, shelve...), no ``eval``/``exec``, no pickle-enabled loaders, no shell.

The check reads the syntax trees of the packages the server runs (serving/, contract/), so
comments and strings do not count and an aliased import does not hide a call. The MNIST loader's
restricted unpickler (mnist_data/unpickle.py) is outside them: it reads a packaged data set, never a
request or a model directory.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SERVED_PACKAGES = ("serving", "contract")
FORBIDDEN_MODULES = {
    "pickle",
    "_pickle",
    "cPickle",
    "cloudpickle",
    "dill",
    "jsonpickle",
    "joblib",
    "marshal",
    "shelve",
    "yaml",
}
FORBIDDEN_BUILTINS = {"eval", "exec", "compile", "__import__", "execfile"}
# attribute calls: (attribute name, why); np.load / torch.load are only flagged when they can
# unpickle (np.load with allow_pickle=True, torch.load without weights_only=True).
FORBIDDEN_CALLS = {
    "system": "os.system runs a shell",
    "popen": "os.popen runs a shell",
    "read_pickle": "pandas.read_pickle unpickles",
    "load_model": "Keras load_model can deserialize Lambda layers (code)",
    "unsafe_load": "yaml.unsafe_load",
    "loads_unsafe": "unsafe deserializer",
}


def _sources() -> list[Path]:
    files = [p for package in SERVED_PACKAGES for p in sorted((ROOT / package).rglob("*.py"))]
    assert len(files) > 20  # the scan sees the packages
    return files


def _keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _is_true(node: ast.expr | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def findings(tree: ast.AST, where: str) -> list[str]:
    """Every forbidden import or call in ``tree``."""
    found = []
    for node in ast.walk(tree):
        line = f"{where}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in FORBIDDEN_MODULES:
                    found.append(f"{line}: import {alias.name}")
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module.split(".")[0] in FORBIDDEN_MODULES:
                found.append(f"{line}: from {node.module} import ...")
        elif isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name) and func.id in FORBIDDEN_BUILTINS:
                found.append(f"{line}: {func.id}()")
            elif isinstance(func, ast.Attribute):
                if func.attr in FORBIDDEN_CALLS:
                    found.append(f"{line}: .{func.attr}() ({FORBIDDEN_CALLS[func.attr]})")
                elif func.attr == "load" and _is_true(_keyword(node, "allow_pickle")):
                    found.append(f"{line}: load(allow_pickle=True)")
                elif (
                    func.attr == "load"
                    and isinstance(func.value, ast.Name)
                    and func.value.id == "torch"
                    and not _is_true(_keyword(node, "weights_only"))
                ):
                    found.append(f"{line}: torch.load without weights_only=True")
            if _is_true(_keyword(node, "shell")):
                found.append(f"{line}: shell=True")
    return found


def test_served_packages_never_execute_data():
    problems = []
    for path in _sources():
        tree = ast.parse(path.read_text(), filename=str(path))
        problems += findings(tree, str(path.relative_to(ROOT)))
    assert problems == []


def test_the_scan_catches_what_it_looks_for():
    sample = """
import pickle
from marshal import loads
import numpy as np, torch, subprocess
eval("1")
exec("x = 1")
np.load("a.npy", allow_pickle=True)
torch.load("m.pt")
subprocess.run("ls", shell=True)
model.eval()  # a method named eval is fine
np.load("a.npy")
torch.load("m.pt", weights_only=True)
"""
    found = findings(ast.parse(sample), "sample")
    assert len(found) == 7, found
    assert not any("model.eval" in f for f in found)
