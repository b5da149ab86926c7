# inatloc-nb: two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
DEMO_DIR ?= demo_output

.PHONY: env demo beyond test lab clean

env: $(STAMP)

# Re-installs only when the dependency list changes; otherwise a no-op.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]' -c constraints.txt
	@touch $(STAMP)

demo: env
	$(BIN)/inatloc-nb demo --out $(DEMO_DIR)

# Single level vs mixed labelling vs multi-head on two synthetic worlds (docs/granularity.md).
# configs/beyond.yaml reads its mixed labellings from $(BEYOND_DIR).
BEYOND_DIR := demo_output/beyond
# One single-threaded run per core.
CORES := $(shell nproc)
BEYOND_SWEEP := OMP_NUM_THREADS=1 $(BIN)/inatloc-nb sweep configs/beyond.yaml --results $(BEYOND_DIR) --max-parallel $(CORES)
beyond: env
	$(BEYOND_SWEEP) --grid main --grid multihead --grid short
	for world in demo wide; do \
	  $(BIN)/inatloc-nb choose-levels $(BEYOND_DIR) --dataset $$world --schedule 3 \
	    --out $(BEYOND_DIR)/mixed-$$world.csv || exit 1; \
	done
	$(BEYOND_SWEEP)
	$(BIN)/papermill notebooks/05_choosing_granularity.ipynb $(BEYOND_DIR)/05_choosing_granularity.ipynb \
	  -p results_dir $(abspath $(BEYOND_DIR)) --cwd notebooks
	$(BIN)/inatloc-nb report $(BEYOND_DIR) --out $(BEYOND_DIR)/report

test: env
	$(BIN)/python -m pytest -q tests

lab: env
	$(BIN)/jupyter lab notebooks

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache $(DEMO_DIR) test-artifacts
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
