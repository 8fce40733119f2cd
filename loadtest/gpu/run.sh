#!/usr/bin/env bash
# The GPU run (loadtest/gpu/README.md): in one call on the GPU machine, install the wheel bundle
# built by `make gpu-bundle`, check the environment, record which kernels each layer of the torch
# runtime runs with cudnn.benchmark on and off, eager and in CUDA graphs (benchmarks.torch_kernels),
# benchmark the torch runtime in-process against native PyTorch, sweep the torch runtime on CUDA
# with Locust once with --cudnn_benchmark=true and once with false, compare the two sweeps, and
# leave the reports under $OUT (the archive named for the card: gpu-h100.tar.gz, gpu-h200...;
# loadtest/gpu/commit.sh unpacks it into results/gpu-<card>/).
# Optional extras (SWEEPS="torch:cuda onnx:cpu", WORKER_RUNTIMES=onnx:cpu) add the ONNX runtime on
# the CPU cores and --workers scaling, as in the first run (results/gpu-h200/).
#
#   bash loadtest/gpu/run.sh                       # on the GPU machine (carry .whl)
#   DEVICE=cpu PYTHON=.venv/bin/python INSTALL=0 BATCH_SIZES=1 CONCURRENCY=1 PROTOCOLS=grpc \
#     DURATION=1 WARMUP=1 OUT=/tmp/gpu-dry bash loadtest/gpu/run.sh   # dry run on a CPU machine
#
# Every knob is an environment variable (defaults below). The whole run stays within
# TIME_BUDGET_S: each step gets what is left minus what the later steps reserve, and the
# collection of the results always runs, also after a failed or timed-out step.
set -uo pipefail

cd "$(dirname "$0")/../.." || exit 2
REPO=$PWD
START=$(date +%s)

DEVICE=${DEVICE:-cuda}
PYTHON=${PYTHON:-python3}
BUNDLE=${BUNDLE:-$REPO/.whl}
INSTALL=${INSTALL:-1}               # 1: install $BUNDLE/*.whl into $SITE (GPU machine)
SITE=${SITE:-/tmp/site}
OUT=${OUT:-$REPO/reports/gpu-out}
WORK=${WORK:-$(mktemp -d /tmp/gpu-run.XXXXXX)}
TIME_BUDGET_S=${TIME_BUDGET_S:-540}  # 9 minutes of the 15 lent (README: steps' estimates, ~420 s)
SWEEPS=${SWEEPS-"torch:$DEVICE"}  # runtime:device pairs, one sweep each (torch: per mode below)
# Each torch sweep runs once per --cudnn_benchmark value (run id torch-<device>-cudnn-<on|off>);
# empty: one torch sweep with the server's default (on).
CUDNN_BENCHMARK=${CUDNN_BENCHMARK-"on off"}
MODELS=${MODELS:-standard,separable}
BATCH_SIZES=${BATCH_SIZES:-1,32,256}
CONCURRENCY=${CONCURRENCY:-1,32}
PROTOCOLS=${PROTOCOLS:-grpc}
DURATION=${DURATION:-3}
WARMUP=${WARMUP:-1}
PROCESSES=${PROCESSES:-}            # Locust workers per cell (default: the sweep's choice)
# Extra server flags for every sweep (issue #11 item 6: e.g. "--workers=4" or "--enable_batching
# --batching_parameters_file=..."; docs/performance.md has the GPU check's command line).
SWEEP_SERVER_ARGS=${SWEEP_SERVER_ARGS:-}
SWEEP_RESERVE_S=${SWEEP_RESERVE_S:-160}  # kept back for each later sweep
BENCH=${BENCH:-1}
KERNELS=${KERNELS:-1}                # benchmarks.torch_kernels: ms per call and kernel names
KERNELS_ROUNDS=${KERNELS_ROUNDS:-5}
KERNELS_SECONDS=${KERNELS_SECONDS:-0.1}  # timed seconds per cell and round
KERNELS_TIMEOUT_S=${KERNELS_TIMEOUT_S:-150}
# Issue #3's many-core check, after the sweeps: --workers N scaling, one measurement per
# runtime:device pair (e.g. onnx:cpu, as in results/gpu-h200/; default empty: skip).
WORKER_RUNTIMES=${WORKER_RUNTIMES-}
WORKER_COUNTS=${WORKER_COUNTS:-1,2,4,8}
WORKERS_DURATION=${WORKERS_DURATION:-4}
WORKERS_CLIENTS=${WORKERS_CLIENTS:-8}
WORKERS_RESERVE_S=0
[[ -n $WORKER_RUNTIMES ]] && WORKERS_RESERVE_S=${WORKERS_TIME_S:-90}
BENCH_SECONDS=${BENCH_SECONDS:-1.0}
BENCH_TIMEOUT_S=${BENCH_TIMEOUT_S:-120}
if [[ $DEVICE == cuda ]]; then
    BENCH_BATCHES=${BENCH_BATCHES:-1,256,16384}
else
    BENCH_BATCHES=${BENCH_BATCHES:-1,256}
fi

mkdir -p "$OUT" "$WORK"
LOG=$OUT/run.log
exec > >(tee -a "$LOG") 2>&1

say() { printf '[%4ds] %s\n' "$(($(date +%s) - START))" "$*"; }
left() { echo $((START + TIME_BUDGET_S - $(date +%s))); }
# step SECONDS NAME COMMAND...: run COMMAND with a time limit; a failure is logged, not fatal.
step() {
    local limit=$1 name=$2
    shift 2
    if ((limit < 10)); then
        say "SKIPPED $name: ${limit}s left in the budget"
        return 1
    fi
    say "$name (limit ${limit}s)"
    timeout --kill-after=10 "$limit" "$@"
    local rc=$?
    ((rc == 0)) || say "FAILED $name: exit $rc$( ((rc == 124)) && echo ' (timed out)')"
    return $rc
}

GPU_MONITOR=""
# shellcheck disable=SC2317  # invoked by the EXIT trap
collect() {
    if [[ -n $GPU_MONITOR ]]; then
        kill "$GPU_MONITOR" 2>/dev/null
        wait "$GPU_MONITOR" 2>/dev/null
    fi
    say "collecting into $OUT"
    [[ -f $WORK/bench.txt ]] && cp "$WORK/bench.txt" "$OUT/"
    [[ -f $WORK/kernels.md ]] && cp "$WORK/kernels.md" "$OUT/"
    cat "$WORK"/workers-*.txt >"$OUT/workers.txt" 2>/dev/null || rm -f "$OUT/workers.txt"
    for report in "$WORK"/reports/*/report.md; do
        [[ -f $report ]] && cp "$report" "$OUT/report-$(basename "$(dirname "$report")").md"
    done
    for compare in "$WORK"/reports/*/compare.md; do
        [[ -f $compare ]] && cp "$compare" "$OUT/compare.md"
    done
    # Everything (results.csv/json, plots, server logs, GPU samples, machine.txt, kernels.json)
    # in one archive named for the card: the device tool brings back at most 8 files.
    tar -czf "$OUT/gpu-${CARD:-unknown}.tar.gz" -C "$WORK" --exclude=./models . 2>/dev/null
    say "done: $(cd "$OUT" && echo *)"
}
trap collect EXIT

say "work dir $WORK, device $DEVICE, budget ${TIME_BUDGET_S}s"

# 1. The bundle: wheels the machine lacks, the models, the MNIST test set.
if [[ $INSTALL == 1 ]]; then
    if ! compgen -G "$BUNDLE/*.whl" >/dev/null; then
        say "no wheels in $BUNDLE: run \`make gpu-bundle\` here and carry .whl"
        exit 2
    fi
    wheels=("$BUNDLE"/*.whl)
    say "installing ${#wheels[@]} wheels into $SITE"
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$SITE" "$BUNDLE"/*.whl || exit 2
    export PYTHONPATH=$SITE:$REPO${PYTHONPATH:+:$PYTHONPATH}
else
    export PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1
[[ -d $BUNDLE/data/keras ]] && export KERAS_HOME=$BUNDLE/data/keras
MODELS_SOURCE=${MODELS_SOURCE:-$BUNDLE/models}
if [[ ! -d $MODELS_SOURCE ]]; then
    say "no model repository at $MODELS_SOURCE (make gpu-bundle copies it; or set MODELS_SOURCE)"
    exit 2
fi
cp -r "$MODELS_SOURCE" "$WORK/models"
"$PYTHON" - "$WORK/models" "$MODELS" <<'PY' || exit 2
import sys
from pathlib import Path

from export.repository import write_models_config

write_models_config(Path(sys.argv[1]), sys.argv[2].split(","))
PY

# 2. The machine, and an import check of everything the run needs (fails fast, clearly).
{
    echo "# machine"
    date -u +%FT%TZ
    uname -a
    nproc
    free -g | head -2
    grep -m1 'model name' /proc/cpuinfo
    command -v lscpu >/dev/null && lscpu | grep -E '^(Thread|Core|Socket|CPU\(s\)|NUMA node\(s\))'
    command -v nvidia-smi >/dev/null && nvidia-smi \
        --query-gpu=name,memory.total,driver_version,clocks.max.sm,compute_mode --format=csv
    "$PYTHON" - <<'PY'
import platform
from importlib import metadata

print("python", platform.python_version())
for name in ("torch", "onnx2torch", "onnxruntime", "onnx", "numpy", "grpcio", "protobuf",
             "locust", "hdrhistogram", "pydantic", "tensorflow-serving-api",
             "tensorflow-serving-protos-only", "typing-extensions"):
    try:
        print(name, metadata.version(name))
    except metadata.PackageNotFoundError:
        print(name, "absent")
try:
    import torch
except ImportError:
    print("torch: not importable")
else:
    print("cuda", torch.version.cuda, "available", torch.cuda.is_available(),
          torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
    print("cudnn", torch.backends.cudnn.version())
PY
} >"$WORK/machine.txt" 2>&1
cat "$WORK/machine.txt"

# The card, for the results' folder name: results/gpu-<card>/ ("NVIDIA H100 80GB HBM3" -> h100,
# "NVIDIA A100-SXM4-80GB" -> a100; "cpu" without a GPU).
card_slug() {
    local word
    for word in ${1#NVIDIA }; do
        if [[ $word == *[0-9]* ]]; then
            word=${word%%-*}
            echo "${word,,}" | tr -cd 'a-z0-9'
            return
        fi
    done
    echo "${1,,}" | tr -cd 'a-z0-9' | cut -c1-16
}
CARD=cpu
if [[ $DEVICE == cuda ]] && command -v nvidia-smi >/dev/null; then
    CARD=$(card_slug "$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)")
    [[ -n $CARD ]] || CARD=unknown
fi
echo "gpu-$CARD" >"$WORK/card.txt"
say "card: $CARD -> results/gpu-$CARD/ (bash loadtest/gpu/commit.sh unpacks gpu-$CARD.tar.gz)"

# The sweeps, in order: "runtime device run-id server-flag" (flag "-": none).
sweeps=()
read -r -a pairs <<<"$SWEEPS"
for pair in "${pairs[@]}"; do
    runtime=${pair%%:*}
    device=${pair##*:}
    if [[ $runtime == torch && -n $CUDNN_BENCHMARK ]]; then
        for mode in $CUDNN_BENCHMARK; do
            flag=--cudnn_benchmark=false
            [[ $mode == on ]] && flag=--cudnn_benchmark=true
            sweeps+=("$runtime $device $runtime-$device-cudnn-$mode $flag")
        done
    else
        sweeps+=("$runtime $device $runtime-$device -")
    fi
done

NEED_TORCH=0
[[ $BENCH == 1 || $KERNELS == 1 || $SWEEPS == *torch* || $WORKER_RUNTIMES == *torch* ]] &&
    NEED_TORCH=1
"$PYTHON" - "$NEED_TORCH" "$DEVICE" <<'PY' || { say "environment check failed"; exit 2; }
import sys

need_torch, device = sys.argv[1] == "1", sys.argv[2]
import grpc_health.v1.health_pb2  # noqa: F401
import hdrh.histogram  # noqa: F401
import locust  # noqa: F401
import loadtest.run.sweep  # noqa: F401
import serving.server  # noqa: F401
from contract.protos import predict_pb2  # noqa: F401

if need_torch:
    import torch

    from serving.runtimes.onnx_torch_converters import register_converters

    register_converters()
    if device == "cuda" and not torch.cuda.is_available():
        sys.exit("DEVICE=cuda but torch sees no CUDA device")
print("environment check: ok")
PY

# Parity of the torch runtime on $DEVICE with ONNX Runtime on MNIST test images, at captured
# (CUDA-graph) and eager batch sizes: the served numbers below are only worth it if this holds.
if ((NEED_TORCH)); then
    step 60 "parity" "$PYTHON" - "$WORK/models" "$MODELS" "$DEVICE" <<'PY'
import sys
from pathlib import Path

import numpy as np

from loadtest.record.payload import load_test_set, to_float
from serving.runtimes import RuntimeOptions, load_runtime

models_dir, names, device = Path(sys.argv[1]), sys.argv[2].split(","), sys.argv[3]
images = to_float(load_test_set().images[:512])
failures = 0
for name in names:
    version = max((p for p in (models_dir / name).iterdir() if p.name.isdigit()),
                  key=lambda p: int(p.name))
    torch_rt = load_runtime("torch", version, RuntimeOptions(device=device,
                                                             batch_sizes_hint=(1, 32, 256)))
    onnx_rt = load_runtime("onnx", version, RuntimeOptions())
    for batch in (0, 1, 5, 32, 256, 512):
        got = torch_rt.predict("serving_default", {"images": images[:batch]})
        want = onnx_rt.predict("serving_default", {"images": images[:batch]})
        diff = float(np.abs(got["probabilities"] - want["probabilities"]).max(initial=0.0))
        same = bool(np.array_equal(got["classes"], want["classes"]))
        ok = same and diff <= 1e-4
        failures += not ok
        print(f"parity {name} batch {batch}: max |dp| {diff:.2e}, classes equal {same}"
              f"{'' if ok else '  <-- MISMATCH'}")
    print(name, torch_rt.describe())
    torch_rt.close()
sys.exit(1 if failures else 0)
PY
fi

if command -v nvidia-smi >/dev/null && [[ $DEVICE == cuda ]]; then
    nvidia-smi --query-gpu=timestamp,utilization.gpu,utilization.memory,memory.used,power.draw \
        --format=csv -l 1 >"$WORK/gpu-samples.csv" 2>/dev/null &
    GPU_MONITOR=$!
fi

# 3a. In-process: ms per call and the kernels of each layer class, cudnn.benchmark on and off,
# CUDA graphs and eager, both models, the sweep's batch sizes.
if [[ $KERNELS == 1 ]]; then
    limit=$(($(left) - SWEEP_RESERVE_S * ${#sweeps[@]} - WORKERS_RESERVE_S))
    ((limit > KERNELS_TIMEOUT_S)) && limit=$KERNELS_TIMEOUT_S
    step "$limit" "kernels" "$PYTHON" -m benchmarks.torch_kernels --device "$DEVICE" \
        --models-dir "$WORK/models" --models "$MODELS" --batches "$BATCH_SIZES" \
        --rounds "$KERNELS_ROUNDS" --seconds-per-round "$KERNELS_SECONDS" \
        --json "$WORK/kernels.json" --markdown "$WORK/kernels.md"
fi

# 3b. In-process: torch runtime vs native PyTorch (and ONNX Runtime), same process.
if [[ $BENCH == 1 ]]; then
    limit=$(($(left) - SWEEP_RESERVE_S * ${#sweeps[@]} - WORKERS_RESERVE_S))
    ((limit > BENCH_TIMEOUT_S)) && limit=$BENCH_TIMEOUT_S
    step "$limit" "benchmark" "$PYTHON" -m benchmarks.torch_runtime --device "$DEVICE" \
        --models-dir "$WORK/models" --models "$MODELS" --batches "$BENCH_BATCHES" \
        --seconds "$BENCH_SECONDS" --json "$WORK/bench.json" | tee "$WORK/bench.txt"
fi

# 4. The served sweeps, one per runtime:device pair (torch: one per cudnn.benchmark mode).
runs=()
for i in "${!sweeps[@]}"; do
    read -r runtime device run_id flag <<<"${sweeps[$i]}"
    later=$((${#sweeps[@]} - i - 1))
    limit=$(($(left) - SWEEP_RESERVE_S * later - 15 - WORKERS_RESERVE_S))
    extra=()
    [[ -n $PROCESSES ]] && extra+=(--processes "$PROCESSES")
    server_args=$SWEEP_SERVER_ARGS
    [[ $flag != - ]] && server_args="${server_args:+$server_args }$flag"
    # "--server-args=VALUE": the value starts with "--", which argparse would take for a flag.
    [[ -n $server_args ]] && extra+=("--server-args=$server_args")
    step "$limit" "sweep $run_id" "$PYTHON" -m loadtest --runtimes "$runtime" --device "$device" \
        --models "$MODELS" --batch-sizes "$BATCH_SIZES" --concurrency "$CONCURRENCY" \
        --protocols "$PROTOCOLS" --duration "$DURATION" --warmup "$WARMUP" \
        --models-dir "$WORK/models" --output "$WORK/reports" --run-id "$run_id" "${extra[@]}"
    [[ -f $WORK/reports/$run_id/results.csv ]] && runs+=("$WORK/reports/$run_id")
done

# 5. Same-machine comparison of the first two sweeps (cudnn.benchmark on vs off by default).
if ((${#runs[@]} >= 2)); then
    step "$(($(left) > 60 ? 60 : $(left)))" "compare" "$PYTHON" -m loadtest.report \
        --compare "${runs[0]}" "${runs[1]}" --output "$WORK/reports/compare"
fi

# 6. --workers scaling, with whatever time is left, shared out over the pairs.
read -r -a worker_pairs <<<"$WORKER_RUNTIMES"
for i in "${!worker_pairs[@]}"; do
    runtime=${worker_pairs[$i]%%:*}
    device=${worker_pairs[$i]##*:}
    limit=$((($(left) - 5) / (${#worker_pairs[@]} - i)))
    step "$limit" "workers scaling $runtime-$device" "$PYTHON" -m benchmarks.serving \
        --models-dir "$WORK/models" --only workers --worker-counts "$WORKER_COUNTS" \
        --worker-runtime "$runtime" --worker-device "$device" --duration "$WORKERS_DURATION" \
        --client-processes "$WORKERS_CLIENTS" --json "$WORK/workers-$runtime-$device.json" |
        tee "$WORK/workers-$runtime-$device.txt"
done
exit 0
