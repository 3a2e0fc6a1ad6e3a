"""The command line end to end on a tiny checkpoint: convert, run, ppl, and their errors."""
import json
import subprocess
import sys

import numpy as np
import pytest

from intsim.llama import forward
from intsim.modelfile import load_model, load_tokenizer
from tiny_llama import make_tiny_hf

TEXT = ("It was a truth universally acknowledged that a single man in possession of a good "
        "fortune must be in want of a wife. ") * 8


def intsim(*args, check=True):
    r = subprocess.run([sys.executable, "-m", "intsim_app", *map(str, args)], capture_output=True, text=True)
    if check and r.returncode:
        raise AssertionError(f"intsim {' '.join(map(str, args))} -> {r.returncode}\n{r.stderr}")
    return r


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("e2e")
    src = make_tiny_hf(d / "hf", n_layers=2, dim=64, n_heads=4, n_kv_heads=2, vocab_size=300, max_pos=128)
    model = d / "tiny.intsim"
    intsim("convert", src, "--out", model)
    text = d / "text.txt"
    text.write_text(TEXT)
    return src, model, text


def test_run_prints_text_and_a_reproducible_logits_hash(tiny):
    _, model, _ = tiny
    a = json.loads(intsim("run", model, "--prompt", "a single man", "--max-new-tokens", "5", "--json").stdout)
    b = json.loads(intsim("run", model, "--prompt", "a single man", "--max-new-tokens", "5", "--json").stdout)
    assert a["logits_sha256"] == b["logits_sha256"] and a["new_tokens"] == b["new_tokens"]
    assert len(a["new_tokens"]) == 5 and isinstance(a["text"], str)
    # the CLI's first greedy token is the argmax of an in-process forward over the prompt
    m = load_model(model)
    ids = np.array(load_tokenizer(m).encode("a single man").ids)
    P, _ = forward(m, ids)
    assert a["new_tokens"][0] == int(np.argmax(P[-1]))


def test_ppl_reports_integer_and_float(tiny):
    _, model, text = tiny
    r = json.loads(intsim("ppl", model, "--text", text, "--ctx", "32", "--max-tokens", "96", "--json").stdout)
    assert {"ppl_int", "ppl_float", "tokens", "ratio"} <= set(r)
    assert r["tokens"] == 3 * 31 and r["windows"] == 3
    # a random tiny model: both perplexities near the vocabulary size, and close to each other
    assert 30 < r["ppl_float"] < 3000 and 0.8 < r["ratio"] < 1.25


def test_cli_errors_name_the_file_or_argument(tiny, tmp_path):
    _, model, text = tiny
    r = intsim("run", tmp_path / "missing.intsim", "--prompt", "x", check=False)
    assert r.returncode == 2 and "missing.intsim" in r.stderr
    r = intsim("run", model, "--prompt", "x", "--max-new-tokens", "0", check=False)
    assert r.returncode == 2 and "--max-new-tokens" in r.stderr
    r = intsim("run", model, "--prompt", TEXT * 3, "--max-new-tokens", "4", check=False)
    assert r.returncode == 2 and "context" in r.stderr
    bad = tmp_path / "truncated.intsim"
    bad.write_bytes(model.read_bytes()[:1000])
    r = intsim("run", bad, "--prompt", "x", check=False)
    assert r.returncode == 2 and "truncated.intsim" in r.stderr
    for cmd in (["run", "--help"], ["ppl", "--help"], ["convert", "--help"]):
        assert "usage" in intsim(*cmd).stdout.lower()


def test_ppl_layers_reports_a_small_error_per_layer(tiny):
    _, model, text = tiny
    r = json.loads(intsim("ppl", model, "--text", text, "--ctx", "32", "--max-tokens", "32",
                          "--layers", "--json").stdout)
    errs = r["layer_rel_rms_error"]
    assert len(errs) == 3                       # embedding + 2 layers
    # W8A8: the embedding's per-row 8-bit codes err by ~0.3 % RMS; the stream stays within 10 %
    assert errs[0] < 0.01 and max(errs) < 0.10, errs
