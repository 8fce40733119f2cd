"""``ModelServerConfig`` (models.config) → the models to serve, with version policy and labels."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from google.protobuf import text_format

from contract.protos import model_server_config_pb2

PolicyKind = Literal["latest", "all", "specific"]


class ConfigError(ValueError):
    """The model configuration is unusable; the message names the entry and the problem."""


@dataclass(frozen=True)
class VersionPolicy:
    """TF Serving's ``ServableVersionPolicy``: latest N (default 1), all, or specific versions."""

    kind: PolicyKind = "latest"
    num_versions: int = 1
    versions: frozenset[int] = frozenset()

    def select(self, available: list[int]) -> set[int]:
        """The versions to serve among ``available`` (ascending integers on disk)."""
        if self.kind == "all":
            return set(available)
        if self.kind == "specific":
            return {v for v in available if v in self.versions}
        return set(sorted(available)[-self.num_versions :]) if available else set()


@dataclass(frozen=True)
class ModelConfig:
    """One served model."""

    name: str
    base_path: Path
    policy: VersionPolicy = VersionPolicy()
    labels: dict[str, int] = field(default_factory=dict)


def _policy(entry: model_server_config_pb2.ModelConfig) -> VersionPolicy:
    policy = entry.model_version_policy
    which = policy.WhichOneof("policy_choice")
    if which == "all":
        return VersionPolicy("all")
    if which == "specific":
        versions = frozenset(int(v) for v in policy.specific.versions)
        if not versions:
            raise ConfigError(f"model {entry.name!r}: specific version policy lists no version")
        return VersionPolicy("specific", versions=versions)
    if which == "latest":
        num = int(policy.latest.num_versions) or 1
        if num < 1:
            raise ConfigError(f"model {entry.name!r}: latest num_versions must be >= 1")
        return VersionPolicy("latest", num_versions=num)
    return VersionPolicy()


def from_proto(
    config: model_server_config_pb2.ModelServerConfig, relative_to: Path | None = None
) -> list[ModelConfig]:
    """Validate and convert a ``ModelServerConfig`` (relative base paths resolve against
    ``relative_to``, the directory of the config file)."""
    if config.WhichOneof("config") != "model_config_list":
        raise ConfigError("only model_config_list is supported (custom_model_config is not)")
    models: list[ModelConfig] = []
    seen: set[str] = set()
    for entry in config.model_config_list.config:
        if not entry.name:
            raise ConfigError("a model config entry has no name")
        if entry.name in seen:
            raise ConfigError(f"model {entry.name!r} is configured twice")
        seen.add(entry.name)
        if entry.model_platform not in ("", "tensorflow"):
            raise ConfigError(
                f"model {entry.name!r}: unsupported platform {entry.model_platform!r}"
            )
        if not entry.base_path:
            raise ConfigError(f"model {entry.name!r} has no base_path")
        base = Path(entry.base_path)
        if not base.is_absolute() and relative_to is not None:
            base = relative_to / base
        labels = {label: int(version) for label, version in entry.version_labels.items()}
        models.append(ModelConfig(entry.name, base, _policy(entry), labels))
    if not models:
        raise ConfigError("the configuration lists no model")
    return models


def parse_config_text(text: str, relative_to: Path | None = None) -> list[ModelConfig]:
    """Parse the text proto of a ``ModelServerConfig``."""
    try:
        proto = text_format.Parse(text, model_server_config_pb2.ModelServerConfig())
    except text_format.ParseError as exc:
        raise ConfigError(f"not a ModelServerConfig text proto: {exc}") from exc
    return from_proto(proto, relative_to)


def load_config_file(path: Path) -> list[ModelConfig]:
    """Read and parse ``models.config``."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
    return parse_config_text(text, path.parent)
