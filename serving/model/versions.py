"""A loaded (or loading, or failed) model version and its life-cycle state."""

from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from serving.errors import ServingError
from serving.runtimes import Runtime

if TYPE_CHECKING:
    from serving.model.batching import Batcher


class VersionState(enum.IntEnum):
    """TF Serving's ``ModelVersionStatus.State`` values."""

    UNKNOWN = 0
    START = 10
    LOADING = 20
    AVAILABLE = 30
    UNLOADING = 40
    END = 50


@dataclass(eq=False)
class ServableVersion:
    """One version of one model. Mutated only on the event loop thread."""

    model: str
    version: int
    path: Path
    state: VersionState = VersionState.START
    error: ServingError | None = None
    runtime: Runtime | None = None
    fingerprint: tuple[tuple[str, int, int], ...] = ()
    inflight: int = 0
    batchers: dict[str, Batcher] = field(default_factory=dict)
    _idle: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self._idle.set()

    def acquire(self) -> None:
        """Count a request in flight (the version is not unloaded until it finishes)."""
        self.inflight += 1
        self._idle.clear()

    def release(self) -> None:
        """A request finished."""
        self.inflight -= 1
        if self.inflight == 0:
            self._idle.set()

    async def wait_idle(self) -> None:
        """Until no request is in flight."""
        await self._idle.wait()


def fingerprint(path: Path) -> tuple[tuple[str, int, int], ...]:
    """Names, sizes and mtimes of the files under a version directory: a changed fingerprint is
    how a failed (e.g. half-written) version is retried once its files change."""
    entries = []
    try:
        for file in sorted(path.rglob("*")):
            if file.is_file():
                stat = file.stat()
                entries.append((str(file.relative_to(path)), stat.st_size, stat.st_mtime_ns))
    except OSError:
        return ()
    return tuple(entries)
