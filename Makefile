# pixeldino — the two commands of the README (`make demo`, `make test`) bootstrap everything they need.
#
# GPU users: install the CUDA build of PyTorch before anything else, e.g.
#   make venv TORCH_SPEC="torch==2.13.0" PIP_TORCH_ARGS="--index-url https://download.pytorch.org/whl/cu128"
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PIP_TORCH_ARGS ?=
CORES ?= $(shell nproc 2>/dev/null || echo 2)
SNAKEMAKE_ARGS ?=

BIN := $(VENV)/bin
STAMP := $(VENV)/.pixeldino-installed

.PHONY: venv demo test test-all check schema lint dryrun report clean-demo bench-gpu

$(STAMP): pyproject.toml requirements/pins.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	@# torch first, pinned, so that nothing else can pull a different (CUDA) build. TORCH_SPEC's default is the
	@# torch line of requirements/pins.txt (tests/test_conda_envs.py checks that they agree).
	$(BIN)/python -m pip install --quiet $(PIP_TORCH_ARGS) "$(TORCH_SPEC)"
	@# Everything else at the tested versions: the pin list as constraints. Its torch line is left out so that a
	@# TORCH_SPEC naming another build or release stays installed instead of being swapped for PyPI's torch.
	grep -v '^torch==' requirements/pins.txt > $(VENV)/constraints.txt
	$(BIN)/python -m pip install --quiet -c $(VENV)/constraints.txt -e ".[dev]"
	@touch $(STAMP)

venv: $(STAMP)

## Run the whole pipeline on the bundled demo (Peel + Bykovsky): results/demo/
demo: $(STAMP)
	$(BIN)/snakemake --cores $(CORES) --configfile config/config.yaml $(SNAKEMAKE_ARGS)

## Run the static checks, then the test suite (fast tests; `make test-all` adds the slow ones)
test: check
	$(BIN)/python -m pytest -q

test-all: check
	$(BIN)/python -m pytest -q -m ""

## Static checks: ruff (lint and format), mypy on the package, the generated config schema up to date
check: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/python -m pixeldino.schema --check

## Regenerate pixeldino/data/config.schema.yaml after changing a stage parameter dataclass
schema: $(STAMP)
	$(BIN)/python -m pixeldino.schema

lint: $(STAMP)
	$(BIN)/snakemake --lint --configfile config/config.yaml

dryrun: $(STAMP)
	$(BIN)/snakemake -n --configfile config/config.yaml

report: $(STAMP)
	$(BIN)/snakemake --cores $(CORES) --configfile config/config.yaml --report results/demo/report.html

## The GPU path measured (needs a CUDA GPU): full-tile inference end to end and the training step (BENCHMARKS.md)
bench-gpu: $(STAMP)
	$(BIN)/python benchmarks/gpu.py --workdir benchmarks/out/gpu-work --out benchmarks/out/gpu.jsonl

clean-demo:
	rm -rf results/demo
