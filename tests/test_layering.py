"""Dependencies point one way (issue #20, item 5), read from the syntax trees of every module.

The server package must not reach back into what trains, measures or tests it: serving/ imports
nothing from training/, loadtest/, harness/, benchmarks/ or tests/; the runtimes and the model
layer never import a transport (transports call the model layer, not the reverse); transports
reach models through the service facade only. Results are records: nothing imports from
results/, results/ holds no Python, and no module outside tests/ edits ``sys.path`` (benchmarks
and tools run as modules, ``python -m benchmarks.<name>``, from the repository root).

Imports are read from the whole tree, lazy ones inside functions and ``importlib.import_module``
calls with a literal name included, so a deferred import cannot hide an edge.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Directories that are not the project's source: environments, caches, generated outputs.
_SKIPPED_DIRS = {"models", "artifacts", "reports", "build", "dist", "node_modules", "__pycache__"}


@dataclass(frozen=True)
class Rule:
    """Modules under ``source`` must not import anything under ``forbidden``."""

    source: str
    forbidden: str
    why: str


RULES = [
    Rule("serving", "training", "the server ships without the training code"),
    Rule("serving", "loadtest", "the load generator measures the server, not the reverse"),
    Rule("serving", "harness", "the test-server helper stays out of the server image"),
    Rule("serving", "benchmarks", "benchmarks measure the server, not the reverse"),
    Rule("serving", "tests", "tests use the server, not the reverse"),
    Rule("serving.runtimes", "serving.transport", "runtimes know nothing of the wire"),
    Rule("serving.model", "serving.transport", "the model layer knows nothing of the wire"),
    Rule("serving.transport", "serving.model.manager", "transports use the service facade"),
    Rule("", "results", "results/ holds records, not code"),
    # What runs inside Locust ships in the Locust image, without the sweep's planning (which
    # probes for torch and TensorFlow) or the report's plotting.
    Rule("loadtest.record", "loadtest.run", "Locust's side needs nothing of the sweep's runner"),
    Rule("loadtest.record", "loadtest.plan", "Locust's side needs nothing of the sweep's plan"),
    Rule("loadtest.record", "loadtest.cli", "Locust's side needs nothing of the sweep's flags"),
    Rule("loadtest.record", "loadtest.report", "Locust's side writes runs, the report reads them"),
]

# Editing the import path from code: a call on sys.path (insert, append...), an assignment to it,
# site.addsitedir, or the same written into a string handed to a child interpreter (``-c``).
_SYS_PATH_IN_TEXT = re.compile(r"\bsys\.path\s*(\.\s*(insert|append|extend)\b|\[|\+?=[^=])")


def _is_sys_path(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Attribute)
        and node.attr == "path"
        and isinstance(node.value, ast.Name)
        and node.value.id == "sys"
    )


def module_name(path: Path) -> str:
    """The dotted name of a source file relative to the repository root."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(tree: ast.AST, module: str) -> set[str]:
    """Every module ``tree`` imports: ``import a.b``, ``from a import b`` (both ``a`` and
    ``a.b``), relative imports resolved against ``module``, and literal
    ``importlib.import_module`` / ``__import__`` names."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".")[: -node.level]
                base = ".".join([*package, base] if base else package)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Call) and _is_dynamic_import(node.func) and node.args:
            first = node.args[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                found.add(first.value)
    return found


def _is_dynamic_import(func: ast.expr) -> bool:
    if isinstance(func, ast.Name):
        return func.id in ("__import__", "import_module")
    return isinstance(func, ast.Attribute) and func.attr == "import_module"


def sys_path_edits(tree: ast.AST) -> list[int]:
    """Line numbers where ``tree`` edits the import path (see ``_SYS_PATH_IN_TEXT``)."""
    lines: list[int] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Attribute) and (
                _is_sys_path(func.value) or func.attr == "addsitedir"
            ):
                lines.append(node.lineno)
        elif isinstance(node, ast.Assign | ast.AugAssign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                inner = target.value if isinstance(target, ast.Subscript) else target
                if _is_sys_path(inner):
                    lines.append(node.lineno)
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and _SYS_PATH_IN_TEXT.search(node.value)
        ):
            lines.append(node.lineno)
    return lines


def violations(module: str, tree: ast.AST, rules: list[Rule] = RULES) -> list[str]:
    """``module imports forbidden (why)`` for each rule ``tree`` breaks."""
    found = []
    for imported in sorted(imported_modules(tree, module)):
        for rule in rules:
            inside = not rule.source or _under(module, rule.source)
            if inside and _under(imported, rule.forbidden):
                found.append(f"{module} imports {imported} ({rule.why})")
    return found


def _under(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def source_files() -> Iterator[Path]:
    """Every Python file of the repository (packages, benchmarks, tools, tests, results)."""
    for path in sorted(ROOT.rglob("*.py")):
        relative = path.relative_to(ROOT).parts
        if any(part.startswith(".") or part in _SKIPPED_DIRS for part in relative[:-1]):
            continue
        yield path


def _parsed() -> list[tuple[Path, str, ast.AST]]:
    return [(p, module_name(p), ast.parse(p.read_text(), str(p))) for p in source_files()]


# ---------------------------------------------------------------- the repository obeys the rules


def test_the_checker_sees_the_packages():
    modules = {name for _, name, _ in _parsed()}
    for expected in (
        "serving.server",
        "serving.runtimes.onnx",
        "serving.model.service",
        "serving.transport.rest_api",
        "serving.client",
        "mnist_data",
        "harness.server",
        "loadtest.run.sweep",
        "benchmarks.serving",
        "tools.audit",
        "tests.conftest",
    ):
        assert expected in modules


def test_imports_point_one_way():
    broken = [v for _, name, tree in _parsed() for v in violations(name, tree)]
    assert not broken, "\n".join(broken)


def test_no_module_outside_tests_edits_sys_path():
    edits = [
        f"{path.relative_to(ROOT)}:{line}"
        for path, name, tree in _parsed()
        if not _under(name, "tests")
        for line in sys_path_edits(tree)
    ]
    assert not edits, "sys.path edited (run as a module instead): " + ", ".join(edits)


def test_results_hold_no_code():
    """Scripts that produced results live in benchmarks/; results/ keeps their outputs."""
    scripts = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "results").rglob("*.py"))
    assert not scripts


# ------------------------------------------------------------ the checker catches what it should


@pytest.mark.parametrize(
    ("module", "source", "forbidden"),
    [
        ("serving.client.__main__", "from training.data import load_mnist", "training.data"),
        ("serving.server", "import loadtest.sweep", "loadtest.sweep"),
        ("serving.server", "from harness import ServerProcess", "harness"),
        (
            "serving.runtimes.onnx",
            "from serving.transport import tensor_codec",
            "serving.transport",
        ),
        (
            "serving.runtimes.onnx",
            "def f():\n    from serving.transport.tensor_codec import to_numpy",
            "serving.transport.tensor_codec",
        ),
        ("serving.model.service", "from ..transport import rest_json", "serving.transport"),
        (
            "serving.transport.grpc_api",
            "from serving.model import manager",
            "serving.model.manager",
        ),
        ("benchmarks.x", "import importlib\nimportlib.import_module('results.a')", "results.a"),
        ("tools.x", "__import__('results')", "results"),
    ],
)
def test_a_planted_import_is_caught(module, source, forbidden):
    found = violations(module, ast.parse(source))
    assert any(f" imports {forbidden} " in v for v in found), found


@pytest.mark.parametrize(
    "source",
    [
        "from serving.model.service import PredictionService",
        "from serving.transport.tensor_codec import to_numpy",  # server.py may use the codecs
        "from mnist_data import load_mnist",
        "import trainingwheels",  # a prefix of a name is not the package
    ],
)
def test_allowed_imports_pass(source):
    assert violations("serving.server", ast.parse(source)) == []


@pytest.mark.parametrize(
    "source",
    [
        "import sys\nsys.path.insert(0, '.')",
        "import sys\nsys.path.append('x')",
        "import sys\nsys.path[:0] = ['x']",
        "import sys\nsys.path = ['x']",
        "import sys\nsys.path += ['x']",
        "import site\nsite.addsitedir('x')",
        "code = \"import sys; sys.path.insert(0, '/tree'); import serving\"",
    ],
)
def test_a_planted_sys_path_edit_is_caught(source):
    assert sys_path_edits(ast.parse(source))


def test_reading_sys_path_is_not_an_edit():
    assert not sys_path_edits(ast.parse("import sys\nprint(sys.path[0], 'x' in sys.path)"))
