"""The one comparison of two runtimes' answers the runtime tests share."""

from __future__ import annotations

import numpy as np

TOLERANCE = 1e-5  # export/parity.py's MAX_ABS_DIFF


def assert_same(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    """Same outputs, dtypes and shapes; probabilities within ``TOLERANCE``, classes equal."""
    assert set(got) == set(want)
    for name, expected in want.items():
        assert got[name].dtype == expected.dtype, name
        assert got[name].shape == expected.shape, name
    np.testing.assert_allclose(got["probabilities"], want["probabilities"], rtol=0, atol=TOLERANCE)
    np.testing.assert_array_equal(got["classes"], want["classes"])
