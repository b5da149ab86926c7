# inatloc-nb: two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
DEMO_DIR ?= demo_output

.PHONY: env demo beyond test lab clean

env: $(STAMP)

# Re-installs only when the dependency list changes; otherwise a no-op.
$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]' -c constraints.txt
	@touch $(STAMP)

demo: env
	$(BIN)/inatloc-nb demo --out $(DEMO_DIR)

# The pre-registered replication of the mixed labelling's gain (docs/granularity.md,
# "Replication protocol"; configs/replication.yaml): the select grid (seeds 0-2), the labellings
# chosen from it, the evaluation grid and the mixed runs (seeds 3-6), notebook 05, the report.
# configs/replication.yaml reads its mixed labellings from $(BEYOND_DIR).
BEYOND_DIR := demo_output/replication
BEYOND_WORLDS := demo1 wide1 longtail1
# One single-threaded run per core.
CORES := $(shell nproc)
BEYOND_SWEEP := OMP_NUM_THREADS=1 $(BIN)/inatloc-nb sweep configs/replication.yaml --max-parallel $(CORES)
beyond: env
	$(BEYOND_SWEEP) --results $(BEYOND_DIR)/select --grid select
	for world in $(BEYOND_WORLDS); do \
	  $(BIN)/inatloc-nb choose-levels $(BEYOND_DIR)/select --dataset $$world --schedule 3 \
	    --out $(BEYOND_DIR)/mixed-$$world.csv || exit 1; \
	done
	$(BEYOND_SWEEP) --results $(BEYOND_DIR)/evaluate --grid main --grid mixed
	$(BIN)/papermill notebooks/05_choosing_granularity.ipynb $(BEYOND_DIR)/05_choosing_granularity.ipynb \
	  -p results_dir $(abspath $(BEYOND_DIR)/evaluate) --cwd notebooks
	$(BIN)/inatloc-nb report $(BEYOND_DIR)/evaluate --out $(BEYOND_DIR)/report

# Installs Debian's chromium for the browser tests first when it is missing and it can (root,
# apt-get); INATLOC_NB_PROVISION_CHROMIUM=no turns that off. Skipped browser tests are named
# in the last lines of the run.
test: env
	@.ci/provision-chromium
	$(BIN)/python -m pytest -q --durations=15 tests

lab: env
	$(BIN)/jupyter lab notebooks

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache $(DEMO_DIR) test-artifacts
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
