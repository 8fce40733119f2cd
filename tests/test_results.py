"""results/ holds records (issue #20, item 4): data, reports, plots and the commands that made
them, readable on any machine, each directory accounted for in results/README.md."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results"
# A path of the machine a result ran on. Recorded commands name the repository's files relative
# to its root, and other places as <tmp>/..., <work>/..., <home>/... (results/README.md).
_ABSOLUTE = re.compile(r"(?<![\w.:/<>-])/(root|tmp|work|home)(/|\b)")


def absolute_paths(text: str) -> list[str]:
    """The lines of ``text`` that name a machine's absolute path."""
    return [line for line in text.splitlines() if _ABSOLUTE.search(line)]


def _text_files() -> list[Path]:
    files = []
    for path in sorted(RESULTS.rglob("*")):
        if not path.is_file():
            continue
        try:
            path.read_bytes().decode("utf-8")
        except UnicodeDecodeError:
            continue  # plots
        files.append(path)
    return files


def test_results_name_no_absolute_path():
    found = [
        f"{path.relative_to(ROOT)}: {line.strip()[:120]}"
        for path in _text_files()
        for line in absolute_paths(path.read_text(encoding="utf-8"))
    ]
    assert not found, "\n".join(found[:20])


def test_the_check_catches_machine_paths():
    assert absolute_paths("--models-dir /tmp/perf-models\n--output /work/meas/grid")
    assert absolute_paths('"command": "/root/.venv/bin/python -m locust"')
    assert absolute_paths("cache at /home/someone/.keras")
    assert not absolute_paths("--models-dir <tmp>/perf-models --output <work>/meas/grid")
    assert not absolute_paths("-f loadtest/locustfile.py, GET /v1/models/x, http://h/tmp/x")


def test_readme_accounts_for_every_result_directory():
    """Each directory of results/ (two levels down) is named in results/README.md."""
    readme = (RESULTS / "README.md").read_text(encoding="utf-8")
    directories = [
        path.relative_to(RESULTS).as_posix()
        for path in sorted(RESULTS.glob("*/*"))
        if path.is_dir() and path.name not in ("plots", "locust")
    ]
    directories += [p.name for p in sorted(RESULTS.iterdir()) if p.is_dir()]
    missing = [d for d in directories if d not in readme]
    assert not missing, f"not in results/README.md: {missing}"
