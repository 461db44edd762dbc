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

.PHONY: venv demo test test-all lint dryrun report clean-demo bench-gpu

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	@# torch first, pinned, so that nothing else can pull a different (CUDA) build.
	$(BIN)/python -m pip install --quiet $(PIP_TORCH_ARGS) "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

venv: $(STAMP)

## Run the whole pipeline on the bundled demo (Peel + Bykovsky): results/demo/
demo: $(STAMP)
	$(BIN)/snakemake --cores $(CORES) --configfile config/config.yaml $(SNAKEMAKE_ARGS)

## Run the test suite (fast tests; `make test-all` adds the slow ones)
test: $(STAMP)
	$(BIN)/python -m pytest -q

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -m ""

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
