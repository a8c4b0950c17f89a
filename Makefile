# steerexp — every target installs into .venv first if needed.
PY      ?= .venv/bin/python
STAMP   := .venv/.installed
ARGS    ?=
# `make test` runs test files on this many processes (pytest-xdist; each with one torch thread)
TEST_WORKERS ?= 2

.PHONY: help install run organism test test-slow test-all test-slurm test-wheel bench lint wandb-sync sweep-smoke sweep-modules sweep-losses report figures clean

MODEL   ?= organism
SWEEP   ?=
LATEST_SWEEP = $(lastword $(sort $(wildcard multirun/*/*)))

help:  ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*?## "}{printf "  %-14s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv .venv
	@# CPU machines: the local CPU wheel first, so no dependency range pulls a CUDA build.
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	@# peers (export round trips, bench peers): old pins, so without their dependencies
	$(PY) -m pip install -q --no-deps 'repeng==0.4.0' 'steering-vectors==0.12.2' 'gguf>=0.10'
	$(PY) -m pip install -q scikit-learn
	@touch $(STAMP)

install: $(STAMP)  ## create .venv and install steerexp with its dev tools

run: $(STAMP)  ## run the default experiment (organism model, CPU, no network); ARGS=... for overrides
	$(PY) -m steerexp $(ARGS)

organism: $(STAMP)  ## retrain the organism recipe (SEED=0) and refresh the shipped checkpoint + manifest
	$(PY) -m steerexp.organism --rebuild --seed $(or $(SEED),0) --ship

test: $(STAMP)  ## run the default test suite (no slow or GPU tests) on TEST_WORKERS processes
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=15 $(ARGS)

test-slow: $(STAMP)  ## run only the slow tests
	$(PY) -m pytest -q -m slow $(ARGS)

test-all: $(STAMP)  ## run every test, slow and GPU ones included (GPU ones skip without CUDA)
	$(PY) -m pytest -q -m "" $(ARGS)

test-wheel: $(STAMP)  ## build the wheel, install it in a fresh venv, run an experiment and a sweep from an empty dir
	$(PY) -m pytest -q -m slow tests/test_wheel.py $(ARGS)

test-slurm: $(STAMP)  ## start a one-node SLURM cluster (apt-installs it as root if missing), run the SLURM tests, stop it
	scripts/slurm-cluster.sh start
	@rc=0; SLURM_CONF=$(CURDIR)/.slurm/slurm.conf $(PY) -m pytest -q -m slurm $(ARGS) || rc=$$?; \
	scripts/slurm-cluster.sh stop; exit $$rc

bench: $(STAMP)  ## print speed and memory ratios measured in one run
	$(PY) -m bench $(ARGS)

lint: $(STAMP)  ## ruff check, ruff format --check and the import contracts of pyproject.toml (what CI runs)
	$(PY) -m ruff check steerexp tests bench scripts
	$(PY) -m ruff format --check steerexp tests bench scripts
	$(dir $(PY))lint-imports

sweep-smoke: $(STAMP)  ## tiny sweep on the organism (CPU, minutes): 3 methods x 2 modules -> ranking.md
	$(PY) -m steerexp -m model=$(MODEL) method=pca_diff,vjp_steer,random module=hs,o_proj $(ARGS)

sweep-modules: $(STAMP)  ## the journal's methods x every module template (MODEL=qwen3_4b_instruct on a GPU; steerexp/conf/experiment/journal_modules.yaml)
	$(PY) -m steerexp -m +experiment=journal_modules model=$(MODEL) $(ARGS)

sweep-losses: $(STAMP)  ## the three losses x the journal's methods (steerexp/conf/experiment/journal_losses.yaml)
	$(PY) -m steerexp -m +experiment=journal_losses model=$(MODEL) $(ARGS)

figures: $(STAMP)  ## regenerate every README figure and multirun_reports/ from an empty cache (about an hour)
	$(PY) scripts/figures.py $(ARGS)

report: $(STAMP)  ## rebuild ranking.md/csv/png of SWEEP=<dir> (default: the newest multirun/<date>/<time>)
	$(PY) -m steerexp.report $(or $(SWEEP),$(LATEST_SWEEP)) $(ARGS)

wandb-sync: $(STAMP)  ## upload offline W&B runs (under multirun/ and outputs/, or SWEEP=<dir>)
	@runs=$$(find $(or $(SWEEP),multirun outputs) -type d -name 'offline-run-*' 2>/dev/null | sort); \
	if [ -z "$$runs" ]; then echo "no offline W&B runs found"; else $(PY) -m wandb sync $$runs; fi

clean:  ## remove outputs, multirun dirs and caches made in this checkout
	rm -rf outputs multirun .pytest_cache
