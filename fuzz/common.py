"""What the fuzz tests share: Hypothesis settings sized by the environment, the statuses a client
may get for bad input, and a tally of the cases run (written for ``make fuzz``).

``make test`` runs each property ``FUZZ_EXAMPLES`` times (default 150) with derandomized, hence
reproducible, inputs. ``make fuzz`` raises ``FUZZ_EXAMPLES`` and sets ``FUZZ_RANDOM=1`` so every
long run explores new inputs; ``FUZZ_REPORT`` names a JSON file the tallies are added to.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import grpc
from hypothesis import HealthCheck, settings

DEFAULT_EXAMPLES = 150


def examples() -> int:
    """Cases per property: ``FUZZ_EXAMPLES`` or the bounded default of ``make test``."""
    return int(os.environ.get("FUZZ_EXAMPLES", str(DEFAULT_EXAMPLES)))


def fuzz_settings() -> settings:
    """Hypothesis settings of every fuzz property (no deadline: a server round trip varies)."""
    return settings(
        max_examples=examples(),
        deadline=None,
        derandomize=os.environ.get("FUZZ_RANDOM") != "1",
        database=None,
        print_blob=True,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.filter_too_much,
            HealthCheck.large_base_example,
        ],
    )


# Statuses that describe a client's mistake. INTERNAL, UNKNOWN, UNAVAILABLE, DEADLINE_EXCEEDED
# (or a dropped connection) for a request a client made up would be a server bug.
GRPC_CLIENT_ERRORS = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.UNIMPLEMENTED,
    }
)
REST_CLIENT_ERRORS = frozenset({400, 404, 413, 501})


class Tally:
    """Cases run per property and outcome (status code name or HTTP status)."""

    def __init__(self) -> None:
        self.counts: dict[str, Counter[str]] = {}

    def add(self, prop: str, outcome: str) -> None:
        """Count one case of ``prop`` that ended with ``outcome``."""
        self.counts.setdefault(prop, Counter())[outcome] += 1

    def as_dict(self) -> dict[str, dict[str, int]]:
        """``{property: {outcome: count}}``."""
        return {prop: dict(counter) for prop, counter in self.counts.items()}

    def flush(self) -> None:
        """Add this tally to ``FUZZ_REPORT`` (when set) and start over."""
        target = os.environ.get("FUZZ_REPORT")
        if target and self.counts:
            merge_report(Path(target), self.as_dict())
        self.counts.clear()


def merge_report(path: Path, counts: dict[str, dict[str, int]]) -> None:
    """Add ``counts`` to the JSON tally in ``path`` (created when missing)."""
    data: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}
    for prop, outcomes in counts.items():
        entry = data.setdefault(prop, {})
        for outcome, count in outcomes.items():
            entry[outcome] = entry.get(outcome, 0) + count
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


TALLY = Tally()
