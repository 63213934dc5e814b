PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev

.PHONY: run test check bench clean

$(STAMP): requirements.txt pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.txt
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

$(DEV_STAMP): $(STAMP) requirements-dev.txt
	$(BIN)/pip install -q -r requirements-dev.txt
	touch $(DEV_STAMP)

run: $(STAMP)
	$(BIN)/raysim run scenarios/quickstart.yaml

# The linter and the type checker (configured in pyproject.toml), then the tests and the
# docstring examples.
check: $(DEV_STAMP)
	$(BIN)/ruff check raysim tests analysis examples bench
	$(BIN)/mypy

# Tests run in TEST_WORKERS processes (each with its own small Ray instance); those that time
# wall-clock behaviour run alone afterwards, so that no other test competes for the cores.
TEST_WORKERS ?= 2

test: check
	$(BIN)/python -m pytest -n $(TEST_WORKERS) -m "not wallclock" tests
	$(BIN)/python -m pytest -m wallclock tests
	$(BIN)/python -m pytest --doctest-modules raysim

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache
