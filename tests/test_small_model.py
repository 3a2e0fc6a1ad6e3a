"""The project's own small LLaMA (models/small, trained by converters/train_small.py).

The committed float folder converts; its integer W8A8 model agrees with the float model on a
held-out passage (top-1 next token) and continues a prompt with the float model's greedy
tokens; the fused fast path equals the op-by-op reference on it; the training script's PyTorch
model is the same function as the float reference the converter is measured against.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from converters.convert import convert
from converters.float_model import FloatLlama
from intsim.runner import forward, generate
from intsim.modelfile import load_model, load_tokenizer

SMALL = Path(__file__).resolve().parent.parent / "models" / "small"

#: a held-out passage: *Persuasion* (Austen, 1818; public domain), chapter 4, first paragraph
#: (lines 755-769 of ~/.cache/intsim/texts/persuasion.txt; never trained on).  307 tokens.
HELD_OUT = """\
He was not Mr Wentworth, the former curate of Monkford, however
suspicious appearances may be, but a Captain Frederick Wentworth, his
brother, who being made commander in consequence of the action off St
Domingo, and not immediately employed, had come into Somersetshire, in
the summer of 1806; and having no parent living, found a home for half
a year at Monkford.  He was, at that time, a remarkably fine young man,
with a great deal of intelligence, spirit, and brilliancy; and Anne an
extremely pretty girl, with gentleness, modesty, taste, and feeling.
Half the sum of attraction, on either side, might have been enough, for
he had nothing to do, and she had hardly anybody to love; but the
encounter of such lavish recommendations could not fail.  They were
gradually acquainted, and when acquainted, rapidly and deeply in love.
It would be difficult to say which had seen highest perfection in the
other, or which had been the happiest: she, in receiving his
declarations and proposals, or he in having them accepted.
"""

#: integer W8A8 vs float: share of positions whose top-1 next token agrees.  Measured 0.972 on
#: this passage (and on a 434-token and the first 512-token stretch of Persuasion): a flip needs
#: the float top-2 margin to be below the W8A8 logit error.  0.93 leaves room for ~12 more flips
#: from a legitimate change of rounding; a real fault (a wrong RoPE pairing, scale or head group)
#: drops agreement far below it (a model predicting unrelated tokens agrees ~0).
MIN_TOP1_AGREEMENT = 0.93
#: ... and their mean next-token NLL on it may differ by at most this (nats).  Measured: float
#: 3.608, integer 3.611 on a 434-token passage (+0.003); 0.05 nats is a 5 % perplexity change.
MAX_NLL_DIFF = 0.05

PROMPT = "It is a truth universally"
#: greedy tokens compared between integer and float (measured: the first 40 agree)
N_GREEDY = 16


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    out = tmp_path_factory.mktemp("small") / "small-w8a8.intsim"
    convert(SMALL, out)
    model = load_model(out)
    return model, load_tokenizer(model), FloatLlama.from_hf(SMALL)


@pytest.fixture(scope="module")
def held_out(small):
    model, tok, fm = small
    ids = np.asarray(tok.encode(HELD_OUT, add_special_tokens=False).ids, dtype=np.int64)
    ref, ref_s = forward(model, ids, backend="reference")
    return ids, ref, ref_s, fm.logits(ids)


def test_committed_folder_is_what_train_meta_says():
    cfg = json.loads((SMALL / "config.json").read_text())
    meta = json.loads((SMALL / "train_meta.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"] and cfg["tie_word_embeddings"] is True
    # GQA, so the integer grouped-query path is the one exercised
    assert cfg["num_key_value_heads"] < cfg["num_attention_heads"]
    tok_sha = hashlib.sha256((SMALL / "tokenizer.json").read_bytes()).hexdigest()
    assert tok_sha == meta["data"]["tokenizer_sha256"]
    assert {"persuasion.txt", "hamlet.txt"} <= set(meta["data"]["held_out_files"])
    assert not {"persuasion.txt", "hamlet.txt"} & set(meta["data"]["train_files"])
    from converters.texts import EXPECTED_SHA256
    for name, digest in meta["data"]["input_sha256"].items():
        assert EXPECTED_SHA256[name] == digest, name
    # every stored tensor counted: the meta's parameter count is the file's
    from safetensors import safe_open
    with safe_open(str(SMALL / "model.safetensors"), framework="np") as f:
        n = sum(int(np.prod(f.get_slice(k).get_shape())) for k in f.keys())
    assert n == meta["model"]["parameters"]
    assert (SMALL / "model.safetensors").stat().st_size < 20 * 2 ** 20


def test_held_out_passage_is_from_persuasion():
    p = Path("~/.cache/intsim/texts/persuasion.txt").expanduser()
    if not p.is_file():
        pytest.skip("texts not fetched (python -m converters.texts)")
    assert HELD_OUT in p.read_text()


def test_integer_top1_agrees_with_float_on_held_out_text(small, held_out):
    from converters.evaluate import dequantize_logits, nll_from_logits
    ids, ref, ref_s, flog = held_out
    agree = float(np.mean(ref.argmax(1) == flog.argmax(1)))
    assert agree >= MIN_TOP1_AGREEMENT, agree
    nll_i = nll_from_logits(dequantize_logits(ref, ref_s.m, ref_s.k), ids).mean()
    nll_f = nll_from_logits(flog, ids).mean()
    assert abs(nll_i - nll_f) <= MAX_NLL_DIFF, (nll_i, nll_f)
    # the model has learned English: far below the uniform 4096-way guess (8.3 nats)
    assert nll_f < 4.5, nll_f


def test_fast_path_equals_reference_on_held_out_text(small, held_out):
    model, _, _ = small
    ids, ref, ref_s, _ = held_out
    fast, fast_s = forward(model, ids)                  # numba backend: the fused path
    assert np.array_equal(fast, ref)
    assert np.array_equal(fast_s.m, ref_s.m) and np.array_equal(fast_s.k, ref_s.k)


def test_integer_greedy_continuation_equals_float(small):
    model, tok, fm = small
    ids = np.asarray(tok.encode(PROMPT).ids, dtype=np.int64)
    new_int, _ = generate(model, ids, N_GREEDY)
    seq = list(ids)
    for _ in range(len(new_int)):
        seq.append(int(fm.logits(np.asarray(seq))[-1].argmax()))
    assert new_int == seq[len(ids):], (tok.decode(new_int), tok.decode(seq[len(ids):]))
    assert len(new_int) == N_GREEDY                     # no early end-of-text
    text = tok.decode(new_int)
    words = [w for w in text.replace("\n", " ").split(" ") if w]
    assert len(words) >= 6 and sum(w.strip(".,;:!?[]'\"").isalpha() for w in words) >= 0.8 * len(words), text


def test_training_model_is_the_float_reference(tmp_path):
    """converters.train_small's PyTorch LLaMA, exported, equals converters.float_model."""
    torch = pytest.importorskip("torch")
    from converters import train_small as ts
    tk = ts.train_tokenizer([HELD_OUT * 3], 300)
    a = ts.ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16, ffn_dim=96,
                     vocab_size=tk.get_vocab_size(), max_pos=64)
    torch.manual_seed(0)
    m = ts.SmallLlama(a)
    with torch.no_grad():                              # non-trivial gains
        for name, p in m.named_parameters():
            if p.dim() == 1:
                p.uniform_(0.5, 1.5)
    ts.export(m, tk, a, tmp_path, "float32")
    ids = ts.encode(tk, HELD_OUT)[:64]
    diff = ts.check_against_numpy(m, tmp_path, ids)
    with torch.no_grad():
        scale = float(m(torch.from_numpy(ids[None]))[0].abs().max())
    assert diff <= 1e-4 * scale, (diff, scale)
