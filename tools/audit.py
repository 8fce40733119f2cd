"""``make audit``: known vulnerabilities in the dependencies, with pip-audit (PyPI's advisory data).

Two sets are audited, each version exactly as pinned or installed (``--no-deps --disable-pip``:
nothing is resolved or installed):

- ``pinned``: every ``name==version`` of pyproject.toml (dependencies and all extras);
- ``installed``: every distribution in this environment (the pins plus what they pulled in).

Exit status: 0 when no known vulnerability, 1 when some, 2 when the advisory data could not be
reached (the package index answers no per-version advisory query from here): then nothing was
audited, and the message says so rather than reporting a clean result.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROJECT = "mnist-serving"
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^;\s]+)")


def pinned_requirements(pyproject: Path = ROOT / "pyproject.toml") -> list[str]:
    """``name==version`` of every pin in pyproject.toml (markers dropped, sorted, unique)."""
    project = tomllib.loads(pyproject.read_text())["project"]
    specs = list(project.get("dependencies", []))
    for extra in project.get("optional-dependencies", {}).values():
        specs.extend(extra)
    pins = {}
    for spec in specs:
        match = _PIN.match(spec.strip())
        if match:
            pins[_canonical(match.group(1))] = f"{match.group(1)}=={match.group(2)}"
    return sorted(pins.values(), key=str.lower)


def installed_requirements() -> list[str]:
    """``name==version`` of every installed distribution but this project."""
    pins = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name and _canonical(name) != PROJECT:
            pins[_canonical(name)] = f"{name}=={dist.version}"
    return sorted(pins.values(), key=str.lower)


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass
class AuditResult:
    """What pip-audit said about one requirement set."""

    audited: list[str] = field(default_factory=list)
    vulnerable: list[tuple[str, str, list[str]]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    error: str = ""

    @property
    def reachable(self) -> bool:
        """Whether advisory data answered for at least one package."""
        return not self.error and bool(self.audited)


def audit(requirements: list[str], timeout_s: float = 600.0) -> AuditResult:
    """Run pip-audit on exactly ``requirements``."""
    with tempfile.TemporaryDirectory(prefix="audit-") as tmp:
        path = Path(tmp) / "requirements.txt"
        path.write_text("\n".join(requirements) + "\n")
        command = [
            sys.executable,
            "-m",
            "pip_audit",
            "--requirement",
            str(path),
            "--no-deps",
            "--disable-pip",
            "--format",
            "json",
            "--progress-spinner",
            "off",
            "--timeout",
            "15",
            "--cache-dir",
            str(Path(tmp) / "cache"),
        ]
        try:
            completed = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return AuditResult(error=f"pip-audit did not finish within {timeout_s:.0f} s")
    try:
        report = json.loads(completed.stdout)
    except ValueError:
        tail = (completed.stderr.strip().splitlines() or ["no output"])[-1]
        return AuditResult(error=f"pip-audit failed (exit {completed.returncode}): {tail}")
    result = AuditResult()
    for dep in report.get("dependencies", []):
        if "skip_reason" in dep:
            result.skipped.append((dep["name"], dep["skip_reason"]))
            continue
        result.audited.append(f"{dep['name']}=={dep.get('version', '?')}")
        if dep.get("vulns"):
            ids = [v.get("id", "?") for v in dep["vulns"]]
            result.vulnerable.append((dep["name"], dep.get("version", "?"), ids))
    return result


def describe(label: str, total: int, result: AuditResult) -> str:
    """One paragraph about one audited set."""
    if result.error:
        return f"{label}: not audited: {result.error}"
    if not result.reachable:
        reason = result.skipped[0][1] if result.skipped else "no answer"
        return (
            f"{label}: not audited: the advisory data answered for none of the {total} "
            f"packages (first reason: {reason})"
        )
    lines = [
        f"{label}: {len(result.audited)} of {total} packages audited, "
        f"{len(result.vulnerable)} with known vulnerabilities, {len(result.skipped)} skipped"
    ]
    lines += [f"  VULNERABLE {n}=={v}: {', '.join(ids)}" for n, v, ids in result.vulnerable]
    lines += [f"  skipped {n}: {why}" for n, why in result.skipped]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Audit the pinned and the installed sets; exit 0 clean, 1 vulnerable, 2 unreachable."""
    parser = argparse.ArgumentParser(prog="python -m tools.audit", description=__doc__)
    parser.add_argument(
        "--pinned-only", action="store_true", help="audit pyproject's pins, not the environment"
    )
    args = parser.parse_args(argv)
    sets = {"pinned": pinned_requirements()}
    if not args.pinned_only:
        sets["installed"] = installed_requirements()
    results = {label: audit(reqs) for label, reqs in sets.items()}
    for label, result in results.items():
        print(describe(label, len(sets[label]), result))
    if any(r.vulnerable for r in results.values()):
        return 1
    if not all(r.reachable for r in results.values()):
        print(
            "python -m tools.audit: advisory data unreachable: NOT AUDITED (pip-audit queries "
            "PyPI's JSON API per version; run where it is reachable)",
            file=sys.stderr,
        )
        return 2
    print("no known vulnerabilities")
    return 0


if __name__ == "__main__":
    sys.exit(main())
