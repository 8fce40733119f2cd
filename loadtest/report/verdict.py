"""The verdict: every sentence is written from this run's numbers.

Rules: the headline is the best ratio whose interval excludes 1 and that is not flagged
``suspect: interference``; a ratio whose interval contains 1 reads "no measurable difference";
an explanation (memory-bound depthwise layers, the dense layer's share, per-call overhead) is
given only where the per-operator profile shows it, citing its numbers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from loadtest.flops import macs_ratio
from loadtest.report.analysis import (
    FLAG_INTERFERENCE,
    FLAG_NO_DIFFERENCE,
    FLAG_SATURATED,
    FLAG_SINGLE,
    FLAG_VIEWS,
    RatioRow,
    Speedup,
    fmt_interval,
    speedups,
)
from loadtest.report.breakdown import Breakdown, KindShare
from loadtest.report.data import SEPARABLE, STANDARD, protocol_name
from loadtest.report.gap import gap_excess, gap_kinds

DEPTHWISE_SLOWER = 0.5  # depthwise reaching under half the standard conv's GMAC/s: memory-bound
DENSE_SHARE = 0.25  # the dense layer taking at least this share of the separable model's time
CALL_OVERHEAD_SHARE = 0.3  # per-call costs (overhead + rest) at least this share at batch 1


def _join(items: Sequence[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _listed(items: Sequence[str], most: int = 3) -> str:
    shown = list(items[:most])
    if len(items) > most:
        rest = len(items) - most
        shown.append(f"{rest} more cell{'s' if rest > 1 else ''}")
    return _join(shown)


def _headline(measured: Sequence[tuple[str, RatioRow]], ratio: float) -> list[str]:
    clean = [
        (label, row)
        for label, row in measured
        if FLAG_INTERFERENCE not in row["flag"] and FLAG_NO_DIFFERENCE not in row["flag"]
    ]
    if not clean:
        return []
    label, best = max(clean, key=lambda item: item[1]["ratio_median"] or 0.0)
    value = float(best["ratio_median"] or 0.0)
    if value >= 1:
        extent = f"{value / ratio:.0%} of the {ratio:.2f}x the multiply-adds promise"
        return [
            f"The largest measured speedup is {fmt_interval(best)} ({label}): separable ÷ "
            f"standard images/s, {extent}."
        ]
    return [
        f"The separable model is slower in every cell with a measurable difference; the best "
        f"is {fmt_interval(best)} ({label})."
    ]


def _measured_sentences(measured: Sequence[tuple[str, RatioRow]]) -> list[str]:
    sentences = []
    same = [label for label, row in measured if FLAG_NO_DIFFERENCE in row["flag"]]
    if same:
        sentences.append(f"No measurable difference (the interval contains 1) {_listed(same)}.")
    slower = [
        f"{label} ({fmt_interval(row)})"
        for label, row in measured
        if row["ratio_high"] is not None
        and row["ratio_high"] < 1
        and FLAG_SINGLE not in row["flag"]
    ]
    if slower:
        sentences.append(f"The separable model is slower {_listed(slower)}.")
    single = [label for label, row in measured if FLAG_SINGLE in row["flag"]]
    if single:
        sentences.append(
            f"{len(single)} of these {len(measured)} ratios come from one run, so they carry no "
            f"interval and no difference can be called measurable there ({_listed(single, 2)})."
        )
    suspect = [
        f"{label} ({fmt_interval(row)})"
        for label, row in measured
        if FLAG_INTERFERENCE in row["flag"]
    ]
    if suspect:
        sentences.append(
            f"Served ratios above the in-process ratio beyond its interval are flagged "
            f"`{FLAG_INTERFERENCE}` and not used as the headline: {_listed(suspect)}."
        )
    return sentences


def _profile_at(shares: Sequence[KindShare], model: str, batch: int, kind: str) -> KindShare | None:
    return next(
        (s for s in shares if (s.model, s.batch_size, s.kind) == (model, batch, kind)), None
    )


def _depthwise_sentence(runtime: str, shares: Sequence[KindShare]) -> list[str]:
    found = []
    for batch in sorted({s.batch_size for s in shares}):
        depthwise = _profile_at(shares, SEPARABLE, batch, "depthwise")
        standard = _profile_at(shares, STANDARD, batch, "standard conv")
        if not depthwise or not standard or not depthwise.gmacs_per_s or not standard.gmacs_per_s:
            continue
        if depthwise.gmacs_per_s < DEPTHWISE_SLOWER * standard.gmacs_per_s:
            found.append((batch, depthwise, standard))
    if not found:
        return []
    batch, depthwise, standard = found[-1]
    total_macs = sum(s.macs for s in shares if (s.model, s.batch_size) == (SEPARABLE, batch))
    return [
        f"On {runtime}, the depthwise layers run far below the arithmetic rate of dense "
        f"convolutions: at batch "
        f"{batch} they reach {depthwise.gmacs_per_s:.1f} GMAC/s against "
        f"{standard.gmacs_per_s:.1f} GMAC/s for the standard model's convolutions and take "
        f"{depthwise.share:.0%} of the separable model's time for "
        f"{depthwise.macs / max(total_macs, 1):.0%} of its multiply-adds (opprofile.csv): "
        "they are bound by memory traffic, not arithmetic."
    ]


def _dense_sentence(runtime: str, shares: Sequence[KindShare]) -> list[str]:
    heavy = [
        s for s in shares if s.model == SEPARABLE and s.kind == "dense" and s.share >= DENSE_SHARE
    ]
    if not heavy:
        return []
    items = [f"{s.share:.0%} at batch {s.batch_size} ({s.ms:.3f} ms)" for s in heavy]
    standard = [
        s
        for s in shares
        if s.model == STANDARD and s.kind == "dense" and s.batch_size == heavy[0].batch_size
    ]
    compare = f", against {standard[0].share:.0%} of the standard model's" if standard else ""
    return [
        f"On {runtime}, the dense layers, identical in both models, take {_join(items)} of the "
        "separable "
        f"model's time per call{compare} (opprofile.csv): that part of the work does not shrink."
    ]


def _call_overhead_sentence(runtime: str, shares: Sequence[KindShare]) -> list[str]:
    smallest = min((s.batch_size for s in shares), default=None)
    if smallest is None:
        return []
    parts = [
        s
        for s in shares
        if s.model == SEPARABLE and s.batch_size == smallest and s.kind in ("call overhead", "rest")
    ]
    share = sum(s.share for s in parts)
    if share < CALL_OVERHEAD_SHARE:
        return []
    return [
        f"On {runtime} at batch {smallest}, per-call costs (session overhead and reshapes, "
        "layout and "
        f"softmax/argmax operators: {sum(s.ms for s in parts):.3f} ms) are {share:.0%} of the "
        f"separable model's time per call (opprofile.csv), and they do not shrink with the "
        f"multiply-adds."
    ]


def _breakdown_sentence(items: Sequence[Breakdown]) -> list[str]:
    smallest = (
        [b for b in items if b.batch_size == min(x.batch_size for x in items)] if items else []
    )
    if not smallest:
        return []
    worst = max(
        smallest, key=lambda b: (b.latency_ms - b.infer_ms) / b.latency_ms if b.latency_ms else 0
    )
    if worst.latency_ms <= 0:
        return []
    share = (worst.latency_ms - worst.infer_ms) / worst.latency_ms
    sentences = [
        f"Served at batch {worst.batch_size}, {share:.0%} of a {worst.model} request over "
        f"{protocol_name(worst.protocol)} on {worst.runtime} ({worst.latency_ms:.3f} ms) is spent "
        f"outside the model: {worst.client_transport_ms:.3f} ms in the client and transport, "
        f"{worst.framework_ms:.3f} ms in the server's decode, queue and encode, "
        f"{worst.infer_ms:.3f} ms in inference."
    ]
    return sentences


def _views_sentence(ratios: Sequence[RatioRow]) -> list[str]:
    served = [r for r in ratios if r["mode"] == "served"]
    off = [r for r in served if FLAG_VIEWS in r["flag"]]
    if not off:
        return []
    return [
        f"In {len(off)} of {len(served)} served cells the in-process floor, the server's "
        "inference phase and the op-profile sum differ by more than 10% (flag [g]; the numbers "
        "and reasons in ratios.csv)."
    ]


def _fastest_sentence(ratios: Sequence[RatioRow]) -> list[str]:
    """Which runtime is fastest in-process for each model, batch by batch (two runtimes or
    more)."""
    rows = [r for r in ratios if r["mode"] == "in-process"]
    if len({r["runtime"] for r in rows}) < 2:
        return []
    parts = []
    for model in (STANDARD, SEPARABLE):
        column = "standard_images_per_s" if model == STANDARD else "separable_images_per_s"
        winners: dict[str, list[str]] = {}
        for batch in sorted({r["batch_size"] for r in rows}):
            mine = [r for r in rows if r["batch_size"] == batch and r[column]]  # type: ignore[literal-required]
            best = max(mine, key=lambda r: r[column] or 0.0, default=None)  # type: ignore[literal-required]
            if best is not None:
                winners.setdefault(best["runtime"], []).append(str(best["batch_size"]))
        parts += [f"{rt} for the {model} model at batch {_join(b)}" for rt, b in winners.items()]
    return [f"In-process, the fastest runtime is {'; '.join(parts)}."]


def _gap_sentences(
    ratios: Sequence[RatioRow], shares: Mapping[str, Sequence[KindShare]], ratio: float
) -> list[str]:
    """Per runtime: how far its best in-process ratio stands from the MACs ratio and which layer
    kinds the operator profile says keep the gap there."""
    sentences = []
    for runtime, profile in shares.items():
        rows = [
            r
            for r in ratios
            if r["runtime"] == runtime and r["mode"] == "in-process" and r["ratio_median"]
        ]
        best = max(rows, key=lambda r: r["ratio_median"] or 0.0, default=None)
        found = gap_excess(profile, best["batch_size"]) if best else None
        if best is None or found is None or not found[2]:
            continue
        sep_ms, ideal, excess = found
        sentences.append(
            f"On {runtime}, the best in-process ratio, {fmt_interval(best)} at batch "
            f"{best['batch_size']}, is {(best['ratio_median'] or 0.0) / ratio:.0%} of "
            f"{ratio:.2f}x: there the separable model takes {sep_ms:.3f} ms per call where its "
            f"multiply-adds at the standard model's cost would take {ideal:.3f} ms (excess ms per "
            f"call, largest first: {_join(gap_kinds(excess))}; opprofile.csv)."
        )
    return sentences


def verdict(
    ratios: Sequence[RatioRow],
    costs: Mapping[str, Mapping[str, Any]],
    *,
    shares: Mapping[str, Sequence[KindShare]] | None = None,
    breakdown: Sequence[Breakdown] = (),
) -> str:
    """The verdict paragraph, written from the numbers."""
    ratio = macs_ratio({k: dict(v) for k, v in costs.items()})
    std_macs, sep_macs = int(costs[STANDARD]["macs"]), int(costs[SEPARABLE]["macs"])
    sentences = [
        f"On paper the separable model needs {ratio:.2f}x fewer multiply-adds than the standard "
        f"one ({sep_macs:,} vs {std_macs:,} per image)."
    ]
    table: list[Speedup] = speedups(ratios, ratio)
    measured = [m for s in table for m in s.measured()]
    if not measured:
        sentences.append(
            "This run has no pair of standard and separable measurements with completed "
            "requests, so it cannot say whether the saving shows up."
        )
        return " ".join(sentences)
    sentences += _headline(measured, ratio)
    sentences += _fastest_sentence(ratios)
    sentences += _gap_sentences(ratios, shares or {}, ratio)
    sentences += _measured_sentences(measured)
    for runtime, profile in (shares or {}).items():
        sentences += _depthwise_sentence(runtime, profile)
        sentences += _dense_sentence(runtime, profile)
        sentences += _call_overhead_sentence(runtime, profile)
    sentences += _breakdown_sentence(breakdown)
    sentences += _views_sentence(ratios)
    saturated = sum(1 for r in ratios if FLAG_SATURATED in r["flag"])
    if saturated:
        sentences.append(
            f"{saturated} cell{'s' if saturated > 1 else ''} had a saturated load generator, so "
            "their served numbers understate what the server can do."
        )
    return " ".join(sentences)
