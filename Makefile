# intsim: every target creates and uses the project's own virtual environment (.venv).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: run test bench clean venv

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

## main job (for now a demo over the operators on fixed inputs)
run: $(STAMP)
	$(VENV)/bin/intsim demo

## the test suite (CI profile: derandomized hypothesis)
test: $(STAMP)
	$(PY) -m pytest -q

## speed against float32 BLAS on the same machine, in the same run
bench: $(STAMP)
	$(VENV)/bin/intsim bench

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
