"""``python -m serving``: the model server (flags as tensorflow_model_server; see --help)."""

from __future__ import annotations

import signal
import sys
from types import FrameType


def _stop_during_startup(signum: int, frame: FrameType | None) -> None:
    # Until the server installs its draining handler nothing is in flight: stop cleanly.
    raise SystemExit(0)


def main(argv: list[str] | None = None) -> int:
    """Parse flags, then serve (one process, or ``--workers`` processes)."""
    signal.signal(signal.SIGTERM, _stop_during_startup)
    args = sys.argv[1:] if argv is None else argv
    from serving.settings import SettingsError, parse_settings

    try:
        settings = parse_settings(args)
    except SettingsError as exc:
        print(f"python -m serving: error: {exc}", file=sys.stderr)
        return 2
    if settings.workers > 1:
        from serving.workers import run_workers

        return run_workers(args, settings.workers)
    from serving.server import StartupError, run_server

    try:
        return run_server(settings)
    except StartupError as exc:
        print(f"python -m serving: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
