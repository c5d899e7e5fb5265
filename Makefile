# resnext3d: every target that needs Python depends on `install`, so one command works on a fresh clone.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
# The CPU build of this torch lies on the build machines' disk; a newer or unpinned torch pulls a
# multi-GB CUDA build. Override for GPU machines, e.g. `make install TORCH=torch==2.13.0+cu128`.
TORCH ?= torch==2.13.0
EXP ?=
DATA ?=
ARGS ?=
LOGGER ?=
RUN ?=
STUDY ?=

BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
EXPERIMENTS := $(sort $(basename $(notdir $(wildcard experiments/*.yaml))))
LOGGERS := $(sort $(basename $(notdir $(wildcard experiments/loggers/*.yaml))))
STUDIES := $(sort $(basename $(notdir $(wildcard experiments/studies/*.yaml))))

.PHONY: help install test test-slow lint train check-data resume study models bench bench-seg clean

help: ## list the targets
	@echo "resnext3d: 3D ResNeXt for volumetric medical imaging"
	@echo
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-11s %s\n", $$1, $$2}'
	@echo
	@echo "  experiments: $(EXPERIMENTS)   loggers (LOGGER=): $(LOGGERS)   studies: $(STUDIES)"
	@echo "  e.g. make train EXP=brats_cls [DATA=/path/to/BraTS] [ARGS='--trainer.max_epochs 3']"

install: $(STAMP) ## create .venv and install the package with its dev tools (idempotent)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[dev]" "$(TORCH)"
	touch $@

test: install ## run the test suite (CPU, minutes)
	$(BIN)/python -m pytest

test-slow: install ## the tests marked slow (multi-process DDP, end-to-end benchmark)
	$(BIN)/python -m pytest -m slow

lint: install ## ruff check and format check
	$(BIN)/ruff check resnext3d tests benchmarks
	$(BIN)/ruff format --check resnext3d tests benchmarks

train: install ## train an experiment: make train EXP=<name> [DATA=dir] [LOGGER=wandb|csv] [ARGS=...]
	@if [ -z "$(EXP)" ] || [ ! -f "experiments/$(EXP).yaml" ]; then \
		echo "make train: unknown experiment '$(EXP)'. Choose one of: $(EXPERIMENTS)" >&2; \
		echo "  e.g. make train EXP=$(firstword $(EXPERIMENTS))" >&2; exit 2; fi
	@if [ -n "$(LOGGER)" ] && [ ! -f "experiments/loggers/$(LOGGER).yaml" ]; then \
		echo "make train: unknown LOGGER '$(LOGGER)'. Choose one of: $(LOGGERS)" >&2; exit 2; fi
	$(BIN)/resnext3d fit --config experiments/$(EXP).yaml \
		$(if $(LOGGER),--config experiments/loggers/$(LOGGER).yaml) \
		$(if $(DATA),--data.data_dir "$(DATA)") $(ARGS)

check-data: install ## read every file of a dataset, list every problem: make check-data DATA=dir [ARGS='--task segmentation']
	@if [ -z "$(DATA)" ]; then \
		echo "make check-data: say which dataset, e.g. make check-data DATA=data/BraTS2021" >&2; exit 2; fi
	$(BIN)/resnext3d check-data "$(DATA)" $(ARGS)

resume: install ## resume a run in its own directory from its last.ckpt: make resume RUN=runs/<exp>/<run> [ARGS=...]
	@if [ -z "$(RUN)" ]; then echo "make resume: give the run directory, e.g. make resume RUN=runs/brats_cls/<run>" >&2; exit 2; fi
	$(BIN)/resnext3d fit --resume "$(RUN)" $(ARGS)

study: install ## cardinality at equal complexity, one run per variant and seed: make study STUDY=<name> [ARGS=...]
	@if [ -z "$(STUDY)" ] || [ ! -f "experiments/studies/$(STUDY).yaml" ]; then \
		echo "make study: unknown study '$(STUDY)'. Choose one of: $(STUDIES)" >&2; \
		echo "  e.g. make study STUDY=$(firstword $(STUDIES))" >&2; exit 2; fi
	$(BIN)/resnext3d study experiments/studies/$(STUDY).yaml $(ARGS)

bench: install ## benchmark against MONAI's 3D SEResNeXt50/ResNet50 (≤10 min on 2 cores): make bench [ARGS=...]
	$(BIN)/python -m benchmarks.bench $(ARGS)

bench-seg: install ## segmentation at equal time: ours vs MONAI SegResNet and nnU-Net's DynUNet: make bench-seg [ARGS=...]
	$(BIN)/python -m benchmarks.bench_seg $(ARGS)

models: install ## list the encoder presets with parameters and GFLOPs
	$(BIN)/resnext3d models

clean: ## remove the virtual environment and caches (keeps data/ and runs/)
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
