# The two README commands. Each creates .venv and installs the project on first use.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: run test lint

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

## run: the main job on the embedded default (simulated cohort → validate; later: train, register, serve)
run: $(STAMP)
	$(VENV)/bin/response-model run

## test: the whole test suite, one worker per CPU (pytest-xdist; a test file stays on one worker, and the
## files start in collection order — longest first, see tests/conftest.py — not by their number of tests)
test: $(STAMP)
	$(VENV)/bin/python -m pytest -n auto --dist loadfile --no-loadscope-reorder

## lint: ruff with the project's configuration (pyproject.toml)
lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
