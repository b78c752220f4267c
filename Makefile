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
.PHONY: help install test test-all demo bench clean distclean

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

# TODO(train/search/export owners): once the pipeline lands, extend the recipe below with the
# search and export steps (reading outputs/demo/train) so `make demo` runs end to end.
demo: ## Train, search and export a tiny supernet on the bundled digits data
	@if [ ! -f enas4d/train.py ]; then \
		echo "make demo: training/search/export not yet available"; exit 1; fi
	@$(MAKE) --no-print-directory install
	$(BIN)/enas4d-train experiment=digits_demo hydra.run.dir=outputs/demo/train

bench: ## List the benchmark scripts in tools/ (run one with .venv/bin/python tools/bench_X.py)
	@ls tools/bench_*.py 2>/dev/null || echo "no benchmarks yet (tools/bench_*.py)"

clean: ## Remove run outputs and caches (keeps .venv)
	rm -rf outputs multirun lightning_logs .pytest_cache build dist *.egg-info
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +

distclean: clean ## Also remove .venv
	rm -rf $(VENV)
