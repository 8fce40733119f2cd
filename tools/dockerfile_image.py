"""The run-time configuration a Dockerfile target gives its image, read without a Docker engine.

Follows the stage chain of ``--target`` (``FROM <stage>`` inherits that stage's configuration)
and collects what ``docker inspect`` would show under ``Config``: ``ENV`` (with ``$VAR``
substitution), ``ENTRYPOINT``, ``CMD``, ``HEALTHCHECK``, ``USER``, ``WORKDIR``, ``EXPOSE``. The
entrypoint smoke test runs exactly that command; operators can print it:

    python tools/dockerfile_image.py Dockerfile --target onnx

Only the forms this project uses are supported: exec-form (JSON) ``ENTRYPOINT``/``CMD``/
``HEALTHCHECK CMD``; a shell form is reported as an error rather than guessed.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from dockerfile_parse import DockerfileParser
from dockerfile_parse.parser import image_from
from dockerfile_parse.util import get_key_val_dictionary


class DockerfileError(ValueError):
    """The Dockerfile cannot be interpreted as asked (unknown target, shell-form command...)."""


@dataclass(frozen=True)
class Healthcheck:
    """``HEALTHCHECK [options] CMD [...]``: options as given (``interval``...) and the command."""

    options: dict[str, str]
    command: list[str]


@dataclass
class ImageConfig:
    """What a target's image is configured with (the ``Config`` part of ``docker inspect``)."""

    base_image: str = ""
    stages: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    healthcheck: Healthcheck | None = None
    user: str = ""
    workdir: str = "/"
    exposed_ports: list[str] = field(default_factory=list)

    @property
    def command(self) -> list[str]:
        """What the container runs: ``ENTRYPOINT`` followed by ``CMD``."""
        return [*self.entrypoint, *self.cmd]


@dataclass(frozen=True)
class Stage:
    """One ``FROM ... [AS name]`` block of the Dockerfile."""

    index: int
    name: str | None
    parent: str
    instructions: list[dict[str, str]]


def _substitute(text: str, values: dict[str, str]) -> str:
    """``$NAME``/``${NAME}`` replaced from ``values`` (unknown names left as written)."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        return values.get(name, match.group(0))

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", value, text)


def global_args(dockerfile: Path) -> dict[str, str]:
    """The ``ARG`` defaults declared before the first ``FROM`` (usable in ``FROM`` lines)."""
    with dockerfile.open("rb") as handle:
        structure = DockerfileParser(fileobj=handle, env_replace=False).structure
    args: dict[str, str] = {}
    for instruction in structure:
        if instruction["instruction"] == "FROM":
            break
        if instruction["instruction"] == "ARG":
            name, _, default = instruction["value"].strip().partition("=")
            args[name] = default.strip().strip("\"'")
    return args


def parse_stages(dockerfile: Path, build_args: dict[str, str] | None = None) -> list[Stage]:
    """The stages of ``dockerfile`` in order, each with its own instructions.

    A ``FROM`` image written with a global ``ARG`` (``FROM ${PYTHON_IMAGE}``) is resolved to the
    ARG's default, or to ``build_args``' value as ``--build-arg`` would.
    """
    with dockerfile.open("rb") as handle:  # fileobj: a path not named "Dockerfile" is a dir to it
        parser = DockerfileParser(fileobj=handle, env_replace=False)
        structure = parser.structure
    args = {**global_args(dockerfile), **(build_args or {})}
    stages: list[Stage] = []
    for instruction in structure:
        if instruction["instruction"] == "FROM":
            image, name = image_from(_substitute(instruction["value"], args))
            stages.append(Stage(len(stages), name, image or "", []))
        elif stages:
            stages[-1].instructions.append(instruction)
    if not stages:
        raise DockerfileError(f"{dockerfile}: no FROM instruction")
    return stages


def _exec_form(value: str, what: str) -> list[str]:
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        parsed = None
    if not (isinstance(parsed, list) and all(isinstance(part, str) for part in parsed)):
        raise DockerfileError(f"{what} must use the exec (JSON array) form, got {value!r}")
    return parsed


def _healthcheck(value: str) -> Healthcheck | None:
    words = value.split(None, 1)
    if words and words[0].upper() == "NONE":
        return None
    options: dict[str, str] = {}
    rest = value.strip()
    while rest.startswith("--"):
        option, _, rest = rest.partition(" ")
        key, _, setting = option[2:].partition("=")
        options[key] = setting
        rest = rest.strip()
    keyword, _, command = rest.partition(" ")
    if keyword.upper() != "CMD":
        raise DockerfileError(f"HEALTHCHECK without CMD: {value!r}")
    return Healthcheck(options, _exec_form(command.strip(), "HEALTHCHECK CMD"))


def image_config(
    dockerfile: Path, target: str | None = None, base_env: dict[str, str] | None = None
) -> ImageConfig:
    """The configuration of ``target`` (default: the last stage), following parent stages.

    ``base_env`` stands for the environment of the external base image (unknown offline), so
    that ``$PATH``-style references resolve.
    """
    stages = parse_stages(dockerfile)
    by_name = {stage.name: stage for stage in stages if stage.name}
    stage = stages[-1] if target is None else by_name.get(target)
    if stage is None:
        known = ", ".join(sorted(by_name))
        raise DockerfileError(f"{dockerfile}: no stage named {target!r} (stages: {known})")
    chain = [stage]
    while chain[-1].parent in by_name:
        chain.append(by_name[chain[-1].parent])
    chain.reverse()

    config = ImageConfig(base_image=chain[0].parent, env=dict(base_env or {}))
    for current in chain:
        config.stages.append(current.name or f"#{current.index}")
        for instruction in current.instructions:
            kind, value = instruction["instruction"], instruction["value"]
            if kind == "ENV":
                values = get_key_val_dictionary(value, env_replace=True, envs=dict(config.env))
                config.env.update(values)
            elif kind == "ENTRYPOINT":
                config.entrypoint = _exec_form(value, "ENTRYPOINT")
                config.cmd = []  # Docker resets an inherited CMD when ENTRYPOINT is set
            elif kind == "CMD":
                config.cmd = _exec_form(value, "CMD")
            elif kind == "HEALTHCHECK":
                config.healthcheck = _healthcheck(value)
            elif kind == "USER":
                config.user = value.strip()
            elif kind == "WORKDIR":
                path = value.strip()
                config.workdir = path if path.startswith("/") else f"{config.workdir}/{path}"
            elif kind == "EXPOSE":
                config.exposed_ports.extend(shlex.split(value))
    return config


def main(argv: Sequence[str] | None = None) -> int:
    """Print the target's image configuration as JSON."""
    parser = argparse.ArgumentParser(
        prog="python tools/dockerfile_image.py",
        description="Show the ENV/ENTRYPOINT/CMD/HEALTHCHECK/USER a Dockerfile target produces.",
    )
    parser.add_argument("dockerfile", type=Path)
    parser.add_argument("--target", default=None, help="stage name (default: the last stage)")
    args = parser.parse_args(argv)
    try:
        config = image_config(args.dockerfile, args.target)
    except (DockerfileError, OSError) as exc:
        print(f"dockerfile_image: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({**asdict(config), "command": config.command}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
