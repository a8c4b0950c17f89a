# steerexp — every target installs into .venv first if needed.
PY      ?= .venv/bin/python
STAMP   := .venv/.installed
ARGS    ?=

.PHONY: help install run test test-slow test-all bench lint wandb-sync sweep-smoke sweep-modules sweep-losses report clean

help:  ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*?## "}{printf "  %-14s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv .venv
	@# CPU machines: the local CPU wheel first, so no dependency range pulls a CUDA build.
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)  ## create .venv and install steerexp with its dev tools

run: $(STAMP)  ## run the default experiment (organism model, CPU, no network); ARGS=... for overrides
	$(PY) -m steerexp $(ARGS)

test: $(STAMP)  ## run the default test suite (no slow or GPU tests)
	$(PY) -m pytest -q $(ARGS)

test-slow: $(STAMP)  ## run only the slow tests
	$(PY) -m pytest -q -m slow $(ARGS)

test-all: $(STAMP)  ## run every test, slow and GPU ones included (GPU ones skip without CUDA)
	$(PY) -m pytest -q -m "" $(ARGS)

bench: $(STAMP)  ## print speed and memory ratios measured in one run
	$(PY) -m bench $(ARGS)

lint: $(STAMP)  ## ruff check
	$(PY) -m ruff check steerexp tests bench

clean:  ## remove outputs, multirun dirs and caches made in this checkout
	rm -rf outputs multirun .pytest_cache
