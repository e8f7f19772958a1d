# spladeray: two set-up commands, `make demo` and `make test`; both build .venv from scratch.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
export RAY_USAGE_STATS_ENABLED ?= 0

.PHONY: help install install-test demo test test-unit test-e2e lint format bench clean \
	train train-resume sweep tensorboard benchmark export-hf logs

# The workflow targets' knobs: `make train CONFIG=configs/train_8gpu.yaml`, `make logs JOB=...`.
CONFIG ?= configs/demo.yaml
RUN ?=
LOGDIR ?= runs
TB_PORT ?= 6006
SWEEP ?= configs/sweeps/demo.yaml
JOB ?=

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip

# torch first and pinned: its CPU wheel is on local disk; anything else pulls a CUDA build.
$(VENV)/.installed: $(VENV)/bin/python pyproject.toml
	$(PIP) install torch==2.13.0
	$(PIP) install -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP) install -e '.[test]'
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

help:  ## this list
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 14

demo: install  ## the whole main job on the embedded default (CPU, offline)
	$(PY) jobs/demo.py --config configs/demo.yaml

test: install-test  ## ruff + the whole pytest suite (what CI runs)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-unit: install-test  ## every test except tests/e2e (whole jobs, subprocesses, clusters)
	$(PY) -m pytest -q --ignore=tests/e2e $(PYTEST_ARGS)

test-e2e: install-test  ## only the end-to-end tests in tests/e2e
	$(PY) -m pytest -q tests/e2e $(PYTEST_ARGS)

lint: install-test  ## ruff check + format check
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: install-test  ## ruff --fix + ruff format
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

train: install  ## train on CONFIG (default configs/demo.yaml); re-running a run name resumes it
	$(PY) jobs/train.py --config $(CONFIG)

train-resume: install  ## continue CONFIG's run (or RUN=name) from its latest checkpoint
	$(PY) jobs/train.py --config $(CONFIG) --no-prepare $(if $(RUN),--set train.name=$(RUN))

sweep: install  ## train SWEEP's variants of CONFIG, ranked on validation queries (jobs/sweep.py)
	$(PY) jobs/sweep.py --config $(CONFIG) --sweep $(SWEEP)

tensorboard: install  ## TensorBoard on 127.0.0.1:TB_PORT over every run under LOGDIR (runs/)
	$(VENV)/bin/tensorboard --logdir $(LOGDIR) --host 127.0.0.1 --port $(TB_PORT)

benchmark: install  ## quality, dims and latency of CONFIG's systems (jobs/evaluate.py)
	$(PY) jobs/evaluate.py --config $(CONFIG)

export-hf: install  ## CONFIG's model as a Hugging Face directory (jobs/export.py --format hf)
	$(PY) jobs/export.py --config $(CONFIG) --format hf

logs: install  ## follow a Ray job's logs (JOB=raysubmit_...; RAY_ADDRESS); no JOB: list jobs
	$(VENV)/bin/ray job $(if $(JOB),logs --follow $(JOB),list)

bench: install-test  ## all benchmarks, one report (bench/REPORT.md)
	$(PY) bench/run_all.py

clean:  ## remove .venv and run outputs
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
