# enas4d developer entry points. `make` (or `make help`) lists the targets.
# Every target that needs Python installs .venv first; installs are cached by a stamp file.

PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.install-stamp
# Torch is pinned here and in setup.cfg: other versions mean multi-GB downloads.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
# Extra pytest arguments, e.g. `make test PYTEST_ARGS="-k digits -x"`.
PYTEST_ARGS ?=
# Parallel test workers (pytest-xdist); `make test XDIST=` runs in one process.
# One torch thread per worker: 2 workers x 1 thread fills 2 cores without oversubscription.
XDIST ?= -n 2
PYTEST := OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q $(XDIST)

.DEFAULT_GOAL := help
.PHONY: help install test test-all demo bench cifar10-reference clean distclean

help: ## Show this help
	@echo "usage: make <target> [PY=python3]"
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | \
		awk 'BEGIN {FS = ":.*## "}; {printf "  \033[36m%-10s\033[0m %s\n", $$1, $$2}'

$(BIN)/python:
	$(PY) -m venv $(VENV)

# Re-runs whenever the dependency metadata changes (setup.cfg / pyproject.toml are newer than the stamp).
$(STAMP): setup.cfg pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install $(TORCH_PINS)
	$(BIN)/python -m pip install -e '.[dev]'
	@touch $@

install: $(STAMP) ## Create .venv with pinned torch and install enas4d[dev] (editable)

test: install ## Run the fast test suite (slow tests deselected)
	$(PYTEST) $(PYTEST_ARGS)

test-all: install ## Run every test, slow ones included
	$(PYTEST) -m "slow or not slow" $(PYTEST_ARGS)

DEMO := outputs/demo
demo: install ## Train on the bundled digits, search at a MAC budget, export, evaluate (~4 min on 2 cores)
	$(BIN)/enas4d-train experiment=digits_demo hydra.run.dir=$(DEMO)/train
	$(BIN)/enas4d-search search=digits_demo ckpt=$(DEMO)/train/checkpoints/last.ckpt hydra.run.dir=$(DEMO)/search
	$(BIN)/enas4d-export ckpt=$(DEMO)/train/checkpoints/last.ckpt result=$(DEMO)/search/result.json \
		out=$(DEMO)/export overwrite=true hydra.run.dir=$(DEMO)/export-log
	$(BIN)/enas4d-evaluate model=$(DEMO)/export hydra.run.dir=$(DEMO)/evaluate-log

# QUICK=1: the smoke variant (a few batches per epoch, small searches; under 15 minutes).
# GPU=1: train on one GPU with a 60-epoch static budget (trainer=gpu).
cifar10-reference: install ## CIFAR-10: static ResNet-20 vs enas4d (S2DNAS) at the same training time -> outputs/cifar10_reference/results.md
	$(BIN)/python tools/cifar10_reference.py $(if $(QUICK),--quick,) $(if $(GPU),--gpu --epochs 60,) $(if $(TRANSFORM),--transform $(TRANSFORM),)

bench: install ## Run the benchmark scripts in tools/ (each prints ratios measured side by side)
	$(BIN)/python tools/bench_supernet.py --threads 1
	$(BIN)/python tools/bench_train.py --threads 1
	$(BIN)/python tools/bench_search.py
	$(BIN)/python tools/bench_export.py --threads 1

clean: ## Remove run outputs and caches (keeps .venv)
	rm -rf outputs multirun lightning_logs .pytest_cache build dist *.egg-info
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +

distclean: clean ## Also remove .venv
	rm -rf $(VENV)
