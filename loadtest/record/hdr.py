"""Latency histograms in microseconds (HdrHistogram): record, serialize, merge, summarize.

Locust rounds response times under 100 ms to whole milliseconds, which erases the differences this
project measures (a batch-1 prediction takes a fraction of a millisecond). Every process therefore
records its own HDR histogram with microsecond resolution; worker processes ship them to the master
encoded (HdrHistogram's compressed, base64 wire format) and the master adds them up. Adding HDR
histograms is exact: the merged histogram has the same bucket counts as one histogram that had
recorded every sample.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

from hdrh.histogram import HdrHistogram

LOWEST_US = 1
HIGHEST_US = 60_000_000  # 60 s: anything slower is clamped (and is a failure in practice)
SIGNIFICANT_DIGITS = 3  # values are kept to 0.1 % precision

PERCENTILES: dict[str, float] = {"p50": 50.0, "p90": 90.0, "p99": 99.0, "p999": 99.9}


def new_histogram() -> HdrHistogram:
    """An empty latency histogram covering 1 µs … 60 s at 3 significant digits."""
    return HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS)


def record_us(histogram: HdrHistogram, microseconds: float) -> None:
    """Record one latency, clamped into the histogram's range (never silently dropped)."""
    value = min(max(round(microseconds), LOWEST_US), HIGHEST_US)
    histogram.record_value(value)


def encode(histogram: HdrHistogram) -> str:
    """The histogram in HdrHistogram's compressed base64 form (a JSON- and msgpack-safe str)."""
    return histogram.encode().decode("ascii")


def decode(encoded: str) -> HdrHistogram:
    """Inverse of :func:`encode`, into a histogram with this module's range and precision."""
    histogram = new_histogram()
    histogram.decode_and_add(encoded.encode("ascii"))
    return histogram


def merge(parts: Iterable[HdrHistogram | str]) -> HdrHistogram:
    """Sum histograms (objects or encoded strings) into a new one; exact, order-independent."""
    total = new_histogram()
    for part in parts:
        histogram = decode(part) if isinstance(part, str) else part
        # hdrh's add() takes the minimum with an empty histogram's reported minimum of 0, which
        # would corrupt the merged minimum: empty parts (idle workers) are skipped.
        if histogram.get_total_count() > 0:
            total.add(histogram)
    return total


@dataclass(frozen=True)
class LatencySummary:
    """Percentiles of a latency histogram, in milliseconds (NaN when there are no samples)."""

    count: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    mean_ms: float

    def as_dict(self) -> dict[str, float | int]:
        """Plain dict for JSON."""
        return asdict(self)


def summarize(histogram: HdrHistogram) -> LatencySummary:
    """p50, p90, p99, p99.9, max and mean of ``histogram`` in milliseconds."""
    count = int(histogram.get_total_count())
    if count == 0:
        nan = float("nan")
        return LatencySummary(0, nan, nan, nan, nan, nan, nan)
    values = histogram.get_percentile_to_value_dict(list(PERCENTILES.values()))
    return LatencySummary(
        count=count,
        p50_ms=values[PERCENTILES["p50"]] / 1000.0,
        p90_ms=values[PERCENTILES["p90"]] / 1000.0,
        p99_ms=values[PERCENTILES["p99"]] / 1000.0,
        p999_ms=values[PERCENTILES["p999"]] / 1000.0,
        max_ms=histogram.get_max_value() / 1000.0,
        mean_ms=histogram.get_mean_value() / 1000.0,
    )
