# resnext3d: every target that needs Python depends on `install`, so one command works on a fresh clone.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
# `make install` installs requirements/$(VARIANT).lock, every version pinned and hashed (`make lock`):
# cpu for the CPU build of torch, cuda for PyPI's torch with the CUDA libraries it needs on Linux.
VARIANT ?= cpu
# torch is installed by its pin, not from the lock. The CPU build of this torch lies on the build
# machines' disk; elsewhere `pip install torch==2.13.0` gets PyPI's multi-GB CUDA build.
TORCH_VERSION := 2.13.0
ifeq ($(VARIANT),cuda)
# `===` leaves out local builds such as 2.13.0+cpu that a --find-links folder may offer.
TORCH ?= torch===$(TORCH_VERSION)
else
TORCH ?= torch==$(TORCH_VERSION)
endif
# The tools that install and lock; pinned too, so a fresh machine gets what the lock was made with.
PIP_VERSION := 26.3
UV_VERSION := 0.13.9
PYTEST_ARGS ?=
UPGRADE ?=
EXP ?=
DATA ?=
ARGS ?=
LOGGER ?=
RUN ?=
STUDY ?=
FOLDS ?= 5

BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LOCK := requirements/$(VARIANT).lock
LATEST := .venv-latest
UV_VENV := .venv-uv
UV_STAMP := $(UV_VENV)/.uv-$(UV_VERSION)
# The independent BraTS 2023 lesion-wise scorer that tests/test_evaluate_crosscheck.py checks
# `resnext3d evaluate` against: its own environment, so none of the project's code or packages
# (torch, MONAI) take part, from requirements/crosscheck.lock (hashed, as the main one).
CROSSCHECK := .venv-crosscheck
CROSSCHECK_LOCK := requirements/crosscheck.lock
CROSSCHECK_STAMP := $(CROSSCHECK)/.installed
MAIN_PACKAGES := torch|lightning|monai|torchmetrics|jsonargparse|numpy|nibabel|wandb
# One universal resolution (markers for Python >= 3.10 and every OS) of pyproject.toml with the dev
# extra and torch==$(TORCH_VERSION); torch itself is left out of the lock (installed by $(TORCH)).
UV_COMPILE = $(UV_VENV)/bin/uv pip compile --quiet --no-python-downloads pyproject.toml - --extra dev \
	--universal --python-version 3.10 --generate-hashes --no-emit-package torch \
	--custom-compile-command "make lock" $(if $(UPGRADE),--upgrade)
EXPERIMENTS := $(sort $(basename $(notdir $(wildcard experiments/*.yaml))))
LOGGERS := $(sort $(basename $(notdir $(wildcard experiments/loggers/*.yaml))))
STUDIES := $(sort $(basename $(notdir $(wildcard experiments/studies/*.yaml))))

.PHONY: help install lock test test-latest test-slow lint train check-data resume study cv models bench bench-seg bench-inference bench-multitask clean

help: ## list the targets
	@echo "resnext3d: 3D ResNeXt for volumetric medical imaging"
	@echo
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-11s %s\n", $$1, $$2}'
	@echo
	@echo "  experiments: $(EXPERIMENTS)   loggers (LOGGER=): $(LOGGERS)   studies: $(STUDIES)"
	@echo "  e.g. make train EXP=brats_cls [DATA=/path/to/BraTS] [ARGS='--trainer.max_epochs 3']"

install: $(STAMP) ## create .venv and install the package with its dev tools (idempotent)

ifeq ($(filter cpu cuda,$(VARIANT)),)
$(error VARIANT=$(VARIANT): choose cpu or cuda)
endif

# torch by its pin with what it requires (where pip finds no CPU build, that is PyPI's CUDA build with
# its CUDA libraries, pinned by torch itself), then exactly the locked versions (hashes checked,
# nothing resolved), then the package built with the locked setuptools; `pip check` fails loudly on an
# inconsistent set.
$(STAMP): pyproject.toml $(LOCK) $(VENV)/.install-args
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "pip==$(PIP_VERSION)"
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet --no-deps --require-hashes -r $(LOCK)
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	$(BIN)/python -m pip check
	touch $@

# What .venv was installed with, rewritten only when it changes: another VARIANT or TORCH reinstalls.
$(VENV)/.install-args: FORCE
	@mkdir -p $(VENV); echo '$(VARIANT) $(TORCH)' | cmp -s - $@ || echo '$(VARIANT) $(TORCH)' > $@

.PHONY: FORCE
FORCE:

# crosscheck.lock takes the versions of the packages it shares with cpu.lock from there (-c), so
# the two scorers differ in their code, not in their numpy or scipy.
lock: $(UV_STAMP) ## refresh requirements/*.lock from pyproject.toml (crosscheck.lock from its .in) with uv (keeps pins that still fit; UPGRADE=1: newest)
	echo "torch==$(TORCH_VERSION)" | $(UV_COMPILE) --config-file requirements/uv-cpu.toml -o requirements/cpu.lock
	@if grep -qE '^(nvidia-|cuda-|triton)' requirements/cpu.lock; then \
		echo "make lock: CUDA libraries in requirements/cpu.lock; update torch's CPU metadata in requirements/uv-cpu.toml" >&2; exit 1; fi
	echo "torch==$(TORCH_VERSION)" | $(UV_COMPILE) --no-config -c requirements/cpu.lock -o requirements/cuda.lock
	$(UV_VENV)/bin/uv pip compile --quiet --no-python-downloads requirements/crosscheck.in \
		--universal --python-version 3.10 --generate-hashes --no-config -c requirements/cpu.lock \
		--custom-compile-command "make lock" $(if $(UPGRADE),--upgrade) -o $(CROSSCHECK_LOCK)

$(UV_STAMP):
	test -x $(UV_VENV)/bin/python || $(PYTHON) -m venv $(UV_VENV)
	$(UV_VENV)/bin/python -m pip install --quiet "uv==$(UV_VERSION)"
	touch $@

test: install ## run the test suite on the CPU, the tests marked slow left out [PYTEST_ARGS=...]
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-latest: ## the tests against the newest versions pyproject.toml allows, in .venv-latest [PYTEST_ARGS=...]
	test -x $(LATEST)/bin/python || $(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/python -m pip install --quiet --upgrade pip
	$(LATEST)/bin/python -m pip install --quiet --upgrade --upgrade-strategy eager -e ".[dev]" "$(TORCH)"
	$(LATEST)/bin/python -m pip check
	@echo "make test-latest: newest allowed versions (requirements/$(VARIANT).lock has the tested ones):"
	@$(LATEST)/bin/python -m pip list --format=freeze | grep -iE '^($(MAIN_PACKAGES))==' | sed 's/^/  /'
	$(LATEST)/bin/python -m pytest $(PYTEST_ARGS)

# RESNEXT3D_CROSSCHECK=required: the cross-check fails, rather than skips, without .venv-crosscheck.
test-slow: install $(CROSSCHECK_STAMP) ## the tests marked slow (every experiment × subcommand, fits in processes of their own, DDP, benchmarks, independent BraTS scorer)
	RESNEXT3D_CROSSCHECK=required $(BIN)/python -m pytest -m slow $(PYTEST_ARGS)

# Exactly the locked versions (hashes checked, nothing resolved) and `pip check`, as for .venv.
$(CROSSCHECK_STAMP): $(CROSSCHECK_LOCK)
	test -x $(CROSSCHECK)/bin/python || $(PYTHON) -m venv $(CROSSCHECK)
	$(CROSSCHECK)/bin/python -m pip install --quiet "pip==$(PIP_VERSION)"
	$(CROSSCHECK)/bin/python -m pip install --quiet --no-deps --require-hashes -r $(CROSSCHECK_LOCK)
	$(CROSSCHECK)/bin/python -m pip check
	touch $@

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

cv: install ## k-fold cross-validation, one run per fold, best scores mean ± std: make cv EXP=<name> [FOLDS=5] [DATA=dir] [ARGS=...]
	@if [ -z "$(EXP)" ] || [ ! -f "experiments/$(EXP).yaml" ]; then \
		echo "make cv: unknown experiment '$(EXP)'. Choose one of: $(EXPERIMENTS)" >&2; \
		echo "  e.g. make cv EXP=$(firstword $(EXPERIMENTS)) FOLDS=5" >&2; exit 2; fi
	$(BIN)/resnext3d cv --config experiments/$(EXP).yaml --folds $(FOLDS) \
		$(if $(DATA),--data.data_dir "$(DATA)") $(ARGS)

bench: install ## benchmark against MONAI's 3D SEResNeXt50/ResNet50, Conv3d rates, a step's profile (≤10 min on 2 cores): make bench [ARGS='--cardinality [only]']
	$(BIN)/python -m benchmarks.bench $(ARGS)

bench-seg: install ## segmentation at equal time: ours vs MONAI SegResNet and nnU-Net's DynUNet: make bench-seg [ARGS=...]
	$(BIN)/python -m benchmarks.bench_seg $(ARGS)

bench-inference: install ## whole-case CPU segmentation per engine (PyTorch, torch.export, onnxruntime, OpenVINO): latency, memory, masks [ARGS=--quick]
	$(BIN)/python -m benchmarks.bench_inference $(ARGS)

bench-multitask: install ## grade and regions from one network vs one network each, at equal time, 3 seeds: make bench-multitask [ARGS=...]
	$(BIN)/python -m benchmarks.bench_multitask $(ARGS)

models: install ## list the encoder presets with parameters and GFLOPs
	$(BIN)/resnext3d models

clean: ## remove the virtual environments and caches (keeps data/ and runs/)
	rm -rf $(VENV) $(LATEST) $(UV_VENV) $(CROSSCHECK) .pytest_cache .ruff_cache *.egg-info
