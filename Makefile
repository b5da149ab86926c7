# inatloc-nb: two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
DEMO_DIR ?= demo_output

.PHONY: env demo test lab clean

env: $(STAMP)

# Re-installs only when the dependency list changes; otherwise a no-op.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	@touch $(STAMP)

demo: env
	$(BIN)/inatloc-nb demo --out $(DEMO_DIR)

test: env
	$(BIN)/python -m pytest -q tests

lab: env
	$(BIN)/jupyter lab notebooks

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache $(DEMO_DIR) test-artifacts
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
