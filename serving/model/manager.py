"""Which versions of which models are served, and their life cycle.

A poll loop lists each model's base path, applies its version policy and loads new versions in
the background (load + warm-up on a loader thread); a version becomes AVAILABLE only when ready.
Old versions are unloaded once a newer aspired version is AVAILABLE and their in-flight requests
have finished, so a rollout never drops a request. A version that fails to load is reported
(state END with its error) and retried only when its files change; the others keep serving.
All state changes happen on the event loop thread.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from contract import WARMUP_RELATIVE_PATH
from serving import metrics
from serving.errors import ServingError, internal, not_found
from serving.model.config import ConfigError, ModelConfig
from serving.model.versions import ServableVersion, VersionState, fingerprint
from serving.paths import check_tree, confine
from serving.runtimes import Runtime, RuntimeLoadError

log = logging.getLogger("serving.models")

LoadFn = Callable[[Path], Runtime]
WarmupFn = Callable[[ServableVersion, Path], int]


@dataclass(eq=False)
class ServedModel:
    """A configured model and its versions."""

    config: ModelConfig
    versions: dict[int, ServableVersion] = field(default_factory=dict)

    def latest_available(self) -> ServableVersion | None:
        """The newest AVAILABLE version (looked up per request: a loop, no sort)."""
        latest = None
        for candidate in self.versions.values():
            if candidate.state is VersionState.AVAILABLE and (
                latest is None or candidate.version > latest.version
            ):
                latest = candidate
        return latest


def discover_versions(base_path: Path) -> dict[int, Path]:
    """Integer-named version directories under ``base_path`` that stay inside it.

    A symlink or name that resolves outside the base path is skipped (and logged): a models
    directory cannot make the server read elsewhere.
    """
    try:
        root = base_path.resolve(strict=True)
        entries = list(base_path.iterdir())
    except OSError:
        return {}
    found: dict[int, Path] = {}
    for entry in entries:
        if not entry.name.isdigit():
            continue  # staging dirs, config.pbtxt, ...
        try:
            resolved = entry.resolve(strict=True)
        except OSError:
            continue
        if not resolved.is_dir():
            continue
        if resolved.parent != root and root not in resolved.parents:
            log.warning("ignoring %s: it resolves outside %s", entry, root)
            continue
        found[int(entry.name)] = resolved
    return found


class ModelManager:
    """Owns the served models; answers "which version serves this request"."""

    def __init__(
        self,
        load: LoadFn,
        *,
        warmup: WarmupFn | None = None,
        loader: Executor | None = None,
        allowed_roots: Sequence[Path] = (),
    ) -> None:
        self._load = load
        # Base paths must lie inside these (serving.paths); empty: no confinement (in-process use).
        self.allowed_roots: tuple[Path, ...] = tuple(allowed_roots)
        self._warmup = warmup
        self._loader = loader or ThreadPoolExecutor(max_workers=2, thread_name_prefix="loader")
        self._models: dict[str, ServedModel] = {}
        self._removed: list[ServedModel] = []
        self._lock = asyncio.Lock()
        self._loading: set[asyncio.Task[None]] = set()
        self._unloading: set[asyncio.Task[None]] = set()
        self.on_change: Callable[[], None] = lambda: None

    # ---- configuration -------------------------------------------------------------------
    def check_config(self, configs: list[ModelConfig]) -> None:
        """``ConfigError`` when a base path lies outside the allowed roots."""
        if not self.allowed_roots:
            return
        for config in configs:
            try:
                confine(config.base_path, self.allowed_roots)
            except ConfigError as exc:
                raise ConfigError(f"model {config.name!r}: {exc}") from None

    async def apply_config(self, configs: list[ModelConfig], *, wait: bool = True) -> None:
        """Serve exactly ``configs``: add new models, drop removed ones (after their in-flight
        requests), update policies/labels of the others; optionally wait for the new loads.
        A base path outside the allowed roots raises ``ConfigError`` and changes nothing."""
        self.check_config(configs)
        async with self._lock:
            wanted = {c.name: c for c in configs}
            for name in list(self._models):
                if name not in wanted:
                    model = self._models.pop(name)
                    for version in list(model.versions.values()):
                        self._schedule_unload(version)
            for name, config in wanted.items():
                if name in self._models:
                    self._models[name].config = config
                else:
                    self._models[name] = ServedModel(config)
            self._reconcile()
        if wait:
            await self.wait_for_loads()
        self.on_change()

    async def poll(self) -> None:
        """Look at every base path once and load / unload versions accordingly."""
        async with self._lock:
            self._reconcile()

    async def wait_for_loads(self) -> None:
        """Until every load started so far has finished (successfully or not)."""
        while self._loading:
            await asyncio.gather(*list(self._loading), return_exceptions=True)

    def _reconcile(self) -> None:
        for model in self._models.values():
            on_disk = discover_versions(model.config.base_path)
            aspired = model.config.policy.select(sorted(on_disk))
            for number in sorted(aspired):
                path = on_disk[number]
                current = model.versions.get(number)
                if current is not None and current.state != VersionState.END:
                    continue  # loading, serving or on its way out
                if (
                    current is not None
                    and current.error is not None
                    and current.fingerprint == fingerprint(path)
                ):
                    continue  # failed before and unchanged on disk: do not retry in a loop
                version = ServableVersion(model.config.name, number, path)
                model.versions[number] = version
                self._schedule_load(version, model.config.base_path)
            newest_ready = any(
                v.state == VersionState.AVAILABLE and v.version in aspired
                for v in model.versions.values()
            )
            newest_loading = any(
                v.state in (VersionState.START, VersionState.LOADING) and v.version in aspired
                for v in model.versions.values()
            )
            for number, version in list(model.versions.items()):
                if version.state != VersionState.AVAILABLE or number in aspired:
                    continue
                # Availability first: keep an old version until an aspired one serves, even when
                # its directory is gone (its runtime is in memory) while a new one loads: a
                # deployment writes the new version and removes the old at once, and unloading
                # the old first failed requests with NOT_FOUND until the new one was loaded
                # (tests/test_containers_faults.py). Gone with nothing loading: unload it.
                if newest_ready or (number not in on_disk and not newest_loading):
                    self._schedule_unload(version)
            self._publish_states(model)

    def _schedule_load(self, version: ServableVersion, base_path: Path) -> None:
        task = asyncio.get_running_loop().create_task(self._load_version(version, base_path))
        self._loading.add(task)
        task.add_done_callback(self._loading.discard)

    async def _load_version(self, version: ServableVersion, base_path: Path) -> None:
        version.state = VersionState.LOADING
        version.fingerprint = fingerprint(version.path)
        loop = asyncio.get_running_loop()
        log.info("loading %s version %d from %s", version.model, version.version, version.path)

        def load() -> Runtime:
            check_tree(version.path, base_path)  # no symlink out of the base path
            return self._load(version.path)

        try:
            runtime = await loop.run_in_executor(self._loader, load)
            version.runtime = runtime
            if self._warmup is not None:
                warmup_file = version.path / WARMUP_RELATIVE_PATH
                if warmup_file.is_file():
                    count = await loop.run_in_executor(
                        self._loader, self._warmup, version, warmup_file
                    )
                    log.info(
                        "%s version %d: %d warm-up requests", version.model, version.version, count
                    )
        except (RuntimeLoadError, ServingError, OSError, ValueError) as exc:
            message = exc.message if isinstance(exc, ServingError) else str(exc)
            version.error = internal(f"failed to load version {version.version}: {message}")
            version.state = VersionState.END
            if version.runtime is not None:
                version.runtime.close()
                version.runtime = None
            log.error("%s version %d failed to load: %s", version.model, version.version, message)
        else:
            version.state = VersionState.AVAILABLE
            log.info("%s version %d is AVAILABLE", version.model, version.version)
        async with self._lock:
            self._reconcile()  # a newer version being ready may retire an older one
        self.on_change()

    def _schedule_unload(self, version: ServableVersion) -> None:
        if version.state not in (VersionState.AVAILABLE, VersionState.LOADING):
            return
        version.state = VersionState.UNLOADING
        task = asyncio.get_running_loop().create_task(self._unload_version(version))
        self._unloading.add(task)
        task.add_done_callback(self._unloading.discard)

    async def _unload_version(self, version: ServableVersion) -> None:
        await version.wait_idle()
        for batcher in version.batchers.values():
            await batcher.drain()
        if version.runtime is not None:
            version.runtime.close()
            version.runtime = None
        version.state = VersionState.END
        log.info("%s version %d unloaded", version.model, version.version)
        for model in self._models.values():
            self._publish_states(model)
        self.on_change()

    @staticmethod
    def _publish_states(model: ServedModel) -> None:
        for version in model.versions.values():
            for state in (VersionState.LOADING, VersionState.AVAILABLE, VersionState.END):
                metrics.MODEL_VERSIONS.labels(
                    model.config.name, str(version.version), state.name
                ).set(1 if version.state == state else 0)

    # ---- queries ------------------------------------------------------------------------
    @property
    def model_names(self) -> list[str]:
        """Configured model names."""
        return list(self._models)

    def serves(self, name: str) -> bool:
        """Whether ``name`` is a configured model."""
        return name in self._models

    def model(self, name: str) -> ServedModel:
        """The configured model ``name`` (NOT_FOUND otherwise)."""
        try:
            return self._models[name]
        except KeyError:
            raise not_found(
                f"Servable not found for request: model '{name}' is not served"
            ) from None

    def resolve(
        self, name: str, version: int | None = None, label: str | None = None
    ) -> ServableVersion:
        """The AVAILABLE version answering a request (latest, a number, or a label)."""
        model = self.model(name)
        if label is not None:
            if label not in model.config.labels:
                raise not_found(f"model '{name}' has no version label '{label}'")
            version = model.config.labels[label]
        if version is None:
            latest = model.latest_available()
            if latest is None:
                raise not_found(
                    f"Servable not found for request: Latest({name}) (no version is available)"
                )
            return latest
        candidate = model.versions.get(version)
        if candidate is None or candidate.state != VersionState.AVAILABLE:
            raise not_found(f"Servable not found for request: Specific({name}, {version})")
        return candidate

    @contextmanager
    def lease(
        self, name: str, version: int | None = None, label: str | None = None
    ) -> Iterator[ServableVersion]:
        """Resolve and hold a version for the duration of one request."""
        servable = self.resolve(name, version, label)
        servable.acquire()
        try:
            yield servable
        finally:
            servable.release()

    def all_available(self) -> bool:
        """Every configured model has at least one AVAILABLE version (the server is ready)."""
        return bool(self._models) and all(
            m.latest_available() is not None for m in self._models.values()
        )

    def is_available(self, name: str) -> bool:
        """Model ``name`` has an AVAILABLE version."""
        model = self._models.get(name)
        return model is not None and model.latest_available() is not None

    async def close(self) -> None:
        """Unload everything after in-flight requests finish."""
        await self.wait_for_loads()
        for model in self._models.values():
            for version in list(model.versions.values()):
                self._schedule_unload(version)
        while self._unloading:
            await asyncio.gather(*list(self._unloading), return_exceptions=True)
        if isinstance(self._loader, ThreadPoolExecutor):
            self._loader.shutdown(wait=False, cancel_futures=True)
