"""Model path confinement: the server reads model files only inside the allowed roots.

The rule, applied with ``..`` and symlinks resolved:

- The allowed roots are the ``--model_base_path_root`` directories when given; otherwise the
  directory holding ``--model_config_file`` and the parent directory of every base path of the
  start-up configuration (the model repositories the operator started the server with).
- A base path is used only when it lies inside an allowed root: at start-up a configuration that
  names one outside is a start-up error, ``HandleReloadConfigRequest`` answers INVALID_ARGUMENT
  and a polled config file is logged and ignored, each time changing nothing.
- A version directory must resolve inside its model's base path (``discover_versions``), and no
  symlink in it may lead outside that base path: such a version fails to load and its status
  says why, while the other versions keep serving.

Model names, version numbers and labels from requests are only looked up in tables, never used
to build a path.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from serving.model.config import ConfigError


class PathNotAllowedError(ConfigError):
    """A path resolves outside the directories the server may read models from."""


def is_within(path: Path, root: Path) -> bool:
    """Whether resolved ``path`` is ``root`` or lies under it (both already resolved)."""
    return path == root or root in path.parents


def confine(path: Path, roots: Sequence[Path]) -> Path:
    """``path`` resolved; ``PathNotAllowedError`` unless it lies inside one of ``roots``."""
    resolved = path.resolve()
    allowed = [root.resolve() for root in roots]
    if not any(is_within(resolved, root) for root in allowed):
        shown = ", ".join(str(root) for root in allowed)
        via = "" if resolved == path else f" (it resolves to {resolved})"
        raise PathNotAllowedError(
            f"base path {path}{via} is outside the allowed model roots ({shown}); "
            "see --model_base_path_root"
        )
    return resolved


def default_roots(config_file: Path | None, base_paths: Iterable[Path]) -> tuple[Path, ...]:
    """The roots when ``--model_base_path_root`` is not given (see the module docstring)."""
    roots: list[Path] = []
    if config_file is not None:
        roots.append(config_file.resolve().parent)
    roots.extend(path.resolve().parent for path in base_paths)
    return tuple(dict.fromkeys(roots))


def check_tree(directory: Path, root: Path) -> None:
    """``PathNotAllowedError`` when a symlink under ``directory`` resolves outside ``root``.

    The walk does not follow symlinks, so every other entry lies inside ``directory``.
    """
    root = root.resolve()
    for current, dirs, files in os.walk(directory, followlinks=False):
        for name in (*dirs, *files):
            entry = Path(current) / name
            if entry.is_symlink() and not is_within(entry.resolve(), root):
                raise PathNotAllowedError(
                    f"{entry} is a symlink to {entry.resolve()}, outside the model's base path "
                    f"{root}"
                )
