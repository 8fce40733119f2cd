"""In-process speed of the torch runtime against native PyTorch modules and ONNX Runtime.

For each model: the torch runtime (``model.onnx`` converted by onnx2torch) and a native PyTorch
``nn.Module`` of the same network (random weights: speed does not depend on them), both run
through the same executor (numpy in, numpy out; channels-last convolutions; CUDA graphs for the
measured batch sizes on a GPU, plus eager runs of both there), the converted module in the NCHW
layout, and ONNX Runtime on the CPU. Batch-1 latency and large-batch
throughput, measured in the same process, one implementation after the other.

    python -m benchmarks.torch_runtime --models-dir models --device cpu
    python -m benchmarks.torch_runtime --models-dir models --device cuda --batches 1,256,16384

It ends with the ratios the GPU issue asks for (runtime vs native: batch-1 latency <= 2x,
largest-batch throughput >= 0.8x). ``--json`` also writes every figure to a file.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from contract import (
    INPUT_NAME,
    INPUT_SHAPE,
    MODEL_NAMES,
    NUM_CLASSES,
    ONNX_FILENAME,
    SIGNATURE_NAME,
)
from serving.runtimes import RuntimeOptions, load_runtime
from serving.runtimes.onnx_torch_converters import convert_model
from serving.runtimes.torch import TorchExecutor, TorchRuntime

LATENCY_LIMIT = 2.0  # runtime batch-1 latency at most 2x the native reference's (the bar)
THROUGHPUT_FLOOR = 0.8  # runtime large-batch throughput at least 0.8x the native reference's


class NativeCnn(nn.Module):
    """The tutorial's CNN written directly in PyTorch: NHWC images in, (classes, probabilities).

    ``separable`` uses a depthwise 3x3 then a pointwise 1x1 convolution, as Keras'
    SeparableConv2D (depth multiplier 1; the bias sits on the pointwise part).
    """

    def __init__(self, variant: str) -> None:
        super().__init__()
        channels = INPUT_SHAPE[-1]
        if variant == "standard":
            self.conv1: nn.Module = nn.Conv2d(channels, 32, 3)
            self.conv2: nn.Module = nn.Conv2d(32, 64, 3)
        elif variant == "separable":
            self.conv1 = nn.Sequential(
                nn.Conv2d(channels, channels, 3, groups=channels, bias=False),
                nn.Conv2d(channels, 32, 1),
            )
            self.conv2 = nn.Sequential(
                nn.Conv2d(32, 32, 3, groups=32, bias=False), nn.Conv2d(32, 64, 1)
            )
        else:
            raise ValueError(f"unknown variant {variant!r}")
        self.pool = nn.MaxPool2d(2)
        self.dense1 = nn.Linear(5 * 5 * 64, 256)
        self.logits = nn.Linear(256, NUM_CLASSES)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Classify ``images`` [N,28,28,1]; returns (classes int64 [N], probabilities [N,10])."""
        x = images.permute(0, 3, 1, 2)
        x = self.pool(torch.relu(self.conv1(x)))
        x = self.pool(torch.relu(self.conv2(x)))
        x = torch.relu(self.dense1(torch.flatten(x, 1)))
        probabilities = torch.softmax(self.logits(x), dim=1)
        return torch.argmax(probabilities, dim=1), probabilities


@dataclass
class Measurement:
    """One implementation at one batch size."""

    model: str
    implementation: str
    batch: int
    calls: int
    p50_us: float
    p99_us: float
    mean_us: float
    images_per_s: float


def measure(run: Callable[[], object], seconds: float) -> tuple[list[float], float]:
    """Call ``run`` for ``seconds`` after a warm-up; per-call seconds and the total."""
    warm_until = time.perf_counter() + min(0.5, seconds / 4)
    for _ in range(3):
        run()
    while time.perf_counter() < warm_until:
        run()
    times: list[float] = []
    start = time.perf_counter()
    while time.perf_counter() - start < seconds or len(times) < 5:
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return times, time.perf_counter() - start


def _summarize(model: str, name: str, batch: int, times: list[float], total: float) -> Measurement:
    ordered = sorted(times)
    return Measurement(
        model=model,
        implementation=name,
        batch=batch,
        calls=len(times),
        p50_us=statistics.median(ordered) * 1e6,
        p99_us=ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1e6,
        mean_us=statistics.fmean(ordered) * 1e6,
        images_per_s=batch * len(times) / total,
    )


def bench_model(
    *,
    model: str,
    version_dir: Path,
    device: str,
    batches: Sequence[int],
    seconds: float,
    threads: int,
    with_onnxruntime: bool,
) -> list[Measurement]:
    """Every implementation of ``model`` at every batch size."""
    rng = np.random.default_rng(0)
    inputs = {b: rng.random((b, *INPUT_SHAPE), dtype=np.float32) for b in batches}
    runtime = load_runtime(
        "torch", version_dir, RuntimeOptions(device=device, batch_sizes_hint=tuple(batches))
    )
    assert isinstance(runtime, TorchRuntime)
    specs = list(runtime.signatures[SIGNATURE_NAME].inputs.values())
    torch.manual_seed(0)
    graphs = tuple(batches) if device == "cuda" else ()
    native = TorchExecutor(NativeCnn(model), specs, device, graph_batch_sizes=graphs)
    candidates: list[tuple[str, Callable[[np.ndarray], object]]] = [
        ("torch runtime", lambda x: runtime.predict(SIGNATURE_NAME, {INPUT_NAME: x})),
        ("native torch", lambda x: native.run([x])),
    ]
    closers: list[Callable[[], None]] = [runtime.close, native.close]
    # The same conversion without the channels-last layout the runtime picks for convolutions.
    nchw_module = convert_model(onnx.load(str(version_dir / ONNX_FILENAME))).module
    nchw = TorchExecutor(nchw_module, specs, device, graph_batch_sizes=graphs, channels_last=False)
    candidates.append(("torch runtime, NCHW", lambda x: nchw.run([x])))
    closers.append(nchw.close)
    if device == "cuda":
        runtime_eager = TorchExecutor(runtime.module, specs, device)
        native_eager = TorchExecutor(native.module, specs, device)
        candidates += [
            ("torch runtime, eager", lambda x: runtime_eager.run([x])),
            ("native torch, eager", lambda x: native_eager.run([x])),
        ]
    if with_onnxruntime:
        ort_runtime = load_runtime("onnx", version_dir, RuntimeOptions(intra_op_threads=threads))
        candidates.append(
            ("onnxruntime cpu", lambda x: ort_runtime.predict(SIGNATURE_NAME, {INPUT_NAME: x}))
        )
        closers.append(ort_runtime.close)
    results = []
    try:
        for batch in batches:
            for name, predict in candidates:
                x = inputs[batch]
                times, total = measure(functools.partial(predict, x), seconds)
                results.append(_summarize(model, name, batch, times, total))
                print(_row(results[-1]), flush=True)
    finally:
        for close in closers:
            close()
        gc.collect()
    return results


_HEADER = (
    f"{'model':<10} {'implementation':<22} {'batch':>6} {'calls':>7} "
    f"{'p50 µs':>10} {'p99 µs':>10} {'images/s':>12}"
)


def _row(m: Measurement) -> str:
    return (
        f"{m.model:<10} {m.implementation:<22} {m.batch:>6} {m.calls:>7} "
        f"{m.p50_us:>10.1f} {m.p99_us:>10.1f} {m.images_per_s:>12,.0f}"
    )


def verdicts(results: Sequence[Measurement]) -> list[tuple[str, float, bool]]:
    """Runtime-vs-native ratios per model: (description, ratio, within the issue's bar)."""
    out = []
    small, large = min(m.batch for m in results), max(m.batch for m in results)
    for model in dict.fromkeys(m.model for m in results):
        by = {(m.implementation, m.batch): m for m in results if m.model == model}
        rt, nat = by.get(("torch runtime", small)), by.get(("native torch", small))
        if rt and nat:
            ratio = rt.p50_us / nat.p50_us
            out.append(
                (
                    f"{model}: batch {small} p50 latency runtime/native",
                    ratio,
                    ratio <= LATENCY_LIMIT,
                )
            )
        rt, nat = by.get(("torch runtime", large)), by.get(("native torch", large))
        if rt and nat and large != small:
            ratio = rt.images_per_s / nat.images_per_s
            label = f"{model}: batch {large} throughput runtime/native"
            out.append((label, ratio, ratio >= THROUGHPUT_FLOOR))
    return out


def machine_facts(device: str) -> dict[str, str]:
    """What ran the benchmark, for the report."""
    facts = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": str(os.cpu_count()),
        "torch_threads": str(torch.get_num_threads()),
        "platform": platform.platform(),
        "device": device,
    }
    if device == "cuda":
        facts["gpu"] = torch.cuda.get_device_name(0)
        facts["cuda"] = str(torch.version.cuda)
        facts["cudnn"] = str(torch.backends.cudnn.version())
    return facts


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, run, print the table and the ratios."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models-dir", type=Path, default=Path("models"))
    parser.add_argument("--models", default=",".join(MODEL_NAMES))
    parser.add_argument("--version", default="1", help="version directory to load (default 1)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument(
        "--batches",
        help="comma-separated batch sizes; the smallest gives latency, the largest throughput "
        "(default: 1,256 on cpu, 1,256,16384 on cuda)",
    )
    parser.add_argument("--seconds", type=float, default=2.0, help="measured seconds per cell")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: library default)")
    parser.add_argument("--no-onnxruntime", action="store_true", help="skip ONNX Runtime")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)

    default_batches = "1,256,16384" if args.device == "cuda" else "1,256"
    batches = sorted({int(b) for b in (args.batches or default_batches).split(",")})
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    facts = machine_facts(args.device)
    print(" ".join(f"{k}={v}" for k, v in facts.items()))
    print(_HEADER)
    results: list[Measurement] = []
    for model in args.models.split(","):
        version_dir = args.models_dir / model / args.version
        results += bench_model(
            model=model,
            version_dir=version_dir,
            device=args.device,
            batches=batches,
            seconds=args.seconds,
            threads=args.threads,
            with_onnxruntime=not args.no_onnxruntime,
        )
    print()
    checks = verdicts(results)
    for label, ratio, ok in checks:
        print(f"{label}: {ratio:.2f} ({'within' if ok else 'OUTSIDE'} the issue's bar)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "machine": facts,
            "results": [asdict(m) for m in results],
            "ratios": [{"check": label, "ratio": r, "ok": ok} for label, r, ok in checks],
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
