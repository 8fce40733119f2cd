"""Requests larger than ``--max_rows_per_run`` rows go through the runtime in runs of at most
that many rows (issue #22, item 4).

A runtime's working memory grows with the rows of one call, and ONNX Runtime's CPU arena keeps
the largest call's memory for good: one 4,096-image call of the separable model left the process
1,436 MB larger (the arena grows by powers of two), 64-row runs of the same images 22 MB, at the
same speed per row (97 against 170 us per row on the 2-core CI machine: docs/reliability.md,
Squeezed). With runs, what inference holds is bounded by inference threads x ``max_rows`` x the
model's memory per row (150-225 KB measured), whatever clients send.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from serving.runtimes import Runtime


def run_slices(rows: int, max_rows: int) -> list[slice]:
    """The rows of each runtime call for a ``rows``-row request, ``max_rows`` at a time (0: one
    call); the operator profile calls runtimes through the same slices."""
    if not max_rows or rows <= max_rows:
        return [slice(0, rows)]
    return [slice(start, min(start + max_rows, rows)) for start in range(0, rows, max_rows)]


def predict_in_runs(
    runtime: Runtime,
    signature_name: str,
    inputs: Mapping[str, np.ndarray],
    rows: int,
    max_rows: int,
) -> dict[str, np.ndarray]:
    """``runtime.predict`` over ``inputs``, ``max_rows`` rows at a time (0: in one call), the
    outputs joined in order."""
    runs = run_slices(rows, max_rows)
    if len(runs) == 1:
        return runtime.predict(signature_name, inputs)
    parts = [
        runtime.predict(signature_name, {n: a[run] for n, a in inputs.items()}) for run in runs
    ]
    return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}
