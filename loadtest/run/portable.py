"""Recorded text without the machine's absolute paths (results/README.md): a run's
``command.txt``, ``run.json`` and ``machine.json`` name the repository's files relative to its
root and other places as ``<tmp>/...``, ``<work>/...`` (the directory holding the repository) and
``<home>/...``, so that a committed run reads the same on any machine."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[2]


def _places() -> list[tuple[str, str]]:
    """(absolute prefix, what replaces it), most specific first."""
    places = [(str(REPOSITORY), "."), (tempfile.gettempdir(), "<tmp>")]
    places += [(str(REPOSITORY.parent), "<work>"), (os.path.expanduser("~"), "<home>")]
    # /tmp as well when TMPDIR points elsewhere, and each place through its symlinks too.
    places.append(("/tmp", "<tmp>"))
    resolved = [(os.path.realpath(path), name) for path, name in places]
    unique: dict[str, str] = {}
    for path, name in [*places, *resolved]:
        if path not in ("", "/") and path not in unique:
            unique[path] = name
    return sorted(unique.items(), key=lambda item: -len(item[0]))


def portable(text: str) -> str:
    """``text`` with every absolute path under the repository made relative to it (``./x`` →
    ``x``) and the temporary directory, the work directory and the home directory replaced by
    ``<tmp>``, ``<work>`` and ``<home>``."""
    for path, name in _places():
        # The path as a whole component: followed by a separator or by no path character.
        pattern = re.compile(re.escape(path) + r"(?=/|(?![\w.-]))")
        if name == ".":
            text = re.sub(re.escape(path) + "/", "", text)
        text = pattern.sub(name, text)
    return text
