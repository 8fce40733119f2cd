"""The inference runtimes a server can be started with (``--runtime``), in one list for the
server, its settings and the load tests."""

from __future__ import annotations

# openvino and litert are named before their adapters land: until then load_runtime answers
# RuntimeLoadError for them, and the sweep's grids do not include them by default.
RUNTIMES: tuple[str, ...] = ("onnx", "tensorflow", "torch", "openvino", "litert")
