"""Build a wheel holding only the TensorFlow ``_pb2`` modules that TF Serving's protos import.

``tensorflow_serving.apis.*`` and ``tensorflow_serving.config.*`` import generated modules such as
``tensorflow.core.framework.tensor_pb2``, so ``tensorflow-serving-api`` normally drags in all of
TensorFlow. The ONNX Runtime and GPU images do not want it. This tool, run where TensorFlow *is*
installed (the image's builder stage), walks the imports of every module in those two packages
(statically, with ``ast``: TensorFlow is never imported), follows them transitively, and packages
the ``tensorflow.*`` modules reached into ``tensorflow-serving-protos-only`` (TensorFlow's version),
with empty package ``__init__.py`` files, ``tensorflow/__init__.py`` included.

Only for environments WITHOUT TensorFlow: its ``tensorflow/__init__.py`` would overwrite the real
one. The output is a build artifact (never committed). The build is reproducible: same inputs,
byte-identical wheel.

    python tools/build_proto_wheel.py --output-dir dist/
"""

from __future__ import annotations

import argparse
import ast
import base64
import hashlib
import importlib.metadata
import importlib.util
import sys
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

DIST_NAME = "tensorflow-serving-protos-only"
SOURCE_DISTRIBUTION = "tensorflow"
SEED_PACKAGES = ("tensorflow_serving.apis", "tensorflow_serving.config")
# Packages whose imports are followed. Only modules under PACKAGED_ROOT go into the wheel; the
# tensorflow_serving ones come from ``tensorflow-serving-api`` (installed with --no-deps).
FOLLOWED_ROOTS = ("tensorflow", "tensorflow_serving")
PACKAGED_ROOT = "tensorflow"
# Zip entries get a fixed timestamp so that rebuilding gives the same bytes (1980 is zip's epoch).
ZIP_DATE = (1980, 1, 1, 0, 0, 0)


class ProtoWheelError(RuntimeError):
    """The closure could not be computed or contains something other than generated protos."""


@dataclass
class Closure:
    """The modules reached from the seeds: name -> source file."""

    modules: dict[str, Path] = field(default_factory=dict)

    def packaged(self) -> dict[str, Path]:
        """The ``tensorflow.*`` modules that go into the wheel (sorted by name)."""
        prefix = PACKAGED_ROOT + "."
        return {n: p for n, p in sorted(self.modules.items()) if n.startswith(prefix)}


def package_root(top: str) -> Path:
    """The directory of top-level package ``top``, found without importing it."""
    spec = importlib.util.find_spec(top)
    if spec is None or not spec.submodule_search_locations:
        raise ProtoWheelError(f"package {top!r} is not installed in this environment")
    return Path(next(iter(spec.submodule_search_locations)))


def module_file(name: str, roots: dict[str, Path]) -> Path | None:
    """Source file of module ``name`` (``pkg/mod.py`` or ``pkg/mod/__init__.py``), or None."""
    top, *rest = name.split(".")
    base = roots[top].joinpath(*rest)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_names(source: Path, module: str, is_package: bool) -> set[str]:
    """Absolute names a module's import statements may refer to (modules or their attributes)."""
    tree = ast.parse(source.read_bytes(), filename=str(source))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                package = module if is_package else module.rpartition(".")[0]
                for _ in range(node.level - 1):
                    package = package.rpartition(".")[0]
                base = f"{package}.{node.module}" if node.module else package
            else:
                base = node.module or ""
            names.add(base)
            # ``from pkg import mod`` names a submodule or just an attribute: try both.
            names.update(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
    return names


def compute_closure(seeds: Iterable[str] = SEED_PACKAGES) -> Closure:
    """Every module under FOLLOWED_ROOTS reachable by imports from the modules of ``seeds``."""
    roots = {top: package_root(top) for top in FOLLOWED_ROOTS}
    closure = Closure()
    pending: list[str] = []
    for seed in seeds:
        directory = roots[seed.split(".")[0]].joinpath(*seed.split(".")[1:])
        if not directory.is_dir():
            raise ProtoWheelError(f"seed package {seed} not found at {directory}")
        pending.extend(f"{seed}.{path.stem}" for path in sorted(directory.glob("*.py")))
    while pending:
        name = pending.pop()
        if name in closure.modules or name.split(".")[0] not in roots:
            continue
        path = module_file(name, roots)
        if path is None:
            continue  # an attribute imported with ``from module import name``
        closure.modules[name] = path
        is_package = path.name == "__init__.py"
        parts = name.split(".")
        # Importing a.b.c runs a/__init__ and a/b/__init__ first: their imports count too...
        pending.extend(".".join(parts[:i]) for i in range(1, len(parts)))
        if is_package and parts[0] == PACKAGED_ROOT:
            continue  # ...except TensorFlow's, which the wheel replaces with empty files.
        pending.extend(imported_names(path, name, is_package))
    return closure


def check_generated(modules: dict[str, Path]) -> None:
    """Refuse anything but protoc output (and package ``__init__``, which are written empty)."""
    offending = [
        name
        for name, path in modules.items()
        if path.name != "__init__.py"
        and not name.rpartition(".")[2].endswith(("_pb2", "_pb2_grpc"))
    ]
    if offending:
        raise ProtoWheelError(
            "the proto closure reaches modules that are not generated protobuf code: "
            + ", ".join(offending)
        )


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"sha256={digest}"


def wheel_files(closure: Closure, version: str) -> dict[str, bytes]:
    """Archive path -> content: modules, empty ``__init__.py`` files and the dist-info."""
    packaged = closure.packaged()
    check_generated(packaged)
    files: dict[str, bytes] = {}
    for name, path in packaged.items():
        parts = name.split(".")
        if path.name == "__init__.py":
            continue  # written empty below, with every other package level
        files["/".join(parts) + ".py"] = path.read_bytes()
        for depth in range(1, len(parts)):
            files["/".join(parts[:depth]) + "/__init__.py"] = b""

    tf_metadata = importlib.metadata.metadata(SOURCE_DISTRIBUTION)
    protobuf_requirements = [
        req.split(";")[0].strip()
        for req in importlib.metadata.requires(SOURCE_DISTRIBUTION) or []
        if req.split(";")[0].strip().startswith("protobuf")
    ]
    dist_info = f"{DIST_NAME.replace('-', '_')}-{version}.dist-info"
    metadata_lines = [
        "Metadata-Version: 2.1",
        f"Name: {DIST_NAME}",
        f"Version: {version}",
        "Summary: TensorFlow's generated protobuf modules needed by tensorflow-serving-api, "
        "without TensorFlow. Only for environments where TensorFlow is NOT installed.",
        f"License: {tf_metadata['License'] or 'Apache 2.0'}",
        f"Requires-Python: {tf_metadata['Requires-Python'] or '>=3.9'}",
        *(f"Requires-Dist: {req}" for req in protobuf_requirements),
        "",
        f"Extracted from tensorflow=={version} by tools/build_proto_wheel.py: "
        f"{len(files)} files. Installing it next to TensorFlow would replace "
        "tensorflow/__init__.py.",
        "",
    ]
    files[f"{dist_info}/METADATA"] = "\n".join(metadata_lines).encode()
    files[f"{dist_info}/WHEEL"] = (
        b"Wheel-Version: 1.0\nGenerator: tools/build_proto_wheel.py\n"
        b"Root-Is-Purelib: true\nTag: py3-none-any\n"
    )
    files[f"{dist_info}/top_level.txt"] = f"{PACKAGED_ROOT}\n".encode()
    record = [f"{path},{_record_hash(data)},{len(data)}" for path, data in sorted(files.items())]
    record.append(f"{dist_info}/RECORD,,")
    files[f"{dist_info}/RECORD"] = ("\n".join(record) + "\n").encode()
    return files


def build_wheel(output_dir: Path) -> Path:
    """Write the wheel into ``output_dir`` and return its path."""
    try:
        version = importlib.metadata.version(SOURCE_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError as exc:
        raise ProtoWheelError("TensorFlow must be installed where this tool runs") from exc
    files = wheel_files(compute_closure(), version)
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / f"{DIST_NAME.replace('-', '_')}-{version}-py3-none-any.whl"
    # dist-info last, as the wheel spec recommends; everything else sorted for reproducibility.
    order = sorted(files, key=lambda p: (".dist-info/" in p, p.endswith("/RECORD"), p))
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name in order:
            info = zipfile.ZipInfo(name, date_time=ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, files[name])
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """Build the wheel; print its path and module count, or the reason it cannot be built."""
    parser = argparse.ArgumentParser(
        prog="python tools/build_proto_wheel.py",
        description="Package the TensorFlow _pb2 modules that tensorflow_serving needs, "
        "for environments without TensorFlow.",
    )
    parser.add_argument("--output-dir", type=Path, default=Path("dist"))
    parser.add_argument(
        "--list", action="store_true", help="print the packaged modules instead of building"
    )
    args = parser.parse_args(argv)
    try:
        if args.list:
            for name in compute_closure().packaged():
                print(name)
            return 0
        path = build_wheel(args.output_dir)
    except (ProtoWheelError, OSError, SyntaxError) as exc:
        print(f"build_proto_wheel: {exc}", file=sys.stderr)
        return 1
    with zipfile.ZipFile(path) as archive:
        count = sum(1 for n in archive.namelist() if n.endswith("_pb2.py"))
    print(f"{path} ({count} _pb2 modules, {path.stat().st_size / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
