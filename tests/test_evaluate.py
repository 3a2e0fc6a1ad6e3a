"""Perplexity harness, log-softmax, integer-logit dequantization and error metrics
(converters.evaluate)."""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from converters.evaluate import (dequantize_logits, load_tokenizer, nll_from_logits, per_layer_error,
                                 perplexity, read_text_tokens, rel_rms_error)

#: nll_from_logits (float64, max-subtracted) vs math.fsum/math.exp per row: both are float64 with
#: a handful of roundings on values of magnitude <= ~50, so they agree to ~1e-13 absolute.
NLL_ATOL = 1e-12


class Recorder:
    """An nll_fn that records its windows and scores token j with the value ids[j] / 100."""

    def __init__(self):
        self.windows = []

    def __call__(self, window):
        self.windows.append(np.array(window))
        return window[1:].astype(np.float64) / 100.0


@pytest.mark.parametrize("n, ctx, windows, scored", [
    (3 * 8, 8, 3, 3 * 7),          # full windows only: W * (ctx - 1)
    (2 * 8 + 5, 8, 3, 2 * 7 + 4),  # a short last window scores its n - 1 tokens
    (2 * 8 + 1, 8, 2, 2 * 7),      # a last window of 1 token scores nothing: skipped
    (2, 2, 1, 1),
])
def test_perplexity_windows_and_counted_tokens(n, ctx, windows, scored):
    tokens = np.arange(100, 100 + n)
    rec = Recorder()
    r = perplexity(rec, tokens, ctx=ctx)
    assert (r["windows"], r["tokens"], r["ctx"]) == (windows, scored, ctx)
    # consecutive non-overlapping windows, each starting from an empty context
    assert [w.tolist() for w in rec.windows] == [tokens[s:s + ctx].tolist() for s in range(0, n, ctx)
                                                 if len(tokens[s:s + ctx]) >= 2]
    # the scored tokens are every token except each window's first one
    firsts = set(range(0, n, ctx))
    counted = [tokens[j] for j in range(n) if j not in firsts and j < windows * ctx]
    assert len(counted) == scored
    want = math.fsum(t / 100.0 for t in counted) / scored
    assert r["nll"] == pytest.approx(want, rel=1e-14)
    assert r["ppl"] == pytest.approx(math.exp(want), rel=1e-14)


def test_perplexity_of_uniform_logits_is_vocab_size():
    V = 37
    tokens = np.random.default_rng(0).integers(0, V, 50)
    r = perplexity(lambda w: nll_from_logits(np.zeros((len(w), V), np.float32), w), tokens, ctx=16)
    assert r["ppl"] == pytest.approx(V, rel=1e-12)


def test_perplexity_progress_callback():
    calls = []
    perplexity(Recorder(), np.arange(10), ctx=3, progress=lambda i, n: calls.append((i, n)))
    assert calls == [(1, 3), (2, 3), (3, 3)]        # 10 tokens, ctx 3: the 1-token tail is skipped


def test_perplexity_bad_input():
    with pytest.raises(ValueError, match="ctx"):
        perplexity(Recorder(), np.arange(10), ctx=1)
    with pytest.raises(ValueError, match="tokens"):
        perplexity(Recorder(), np.arange(1), ctx=4)
    with pytest.raises(ValueError, match="tokens"):
        perplexity(Recorder(), np.zeros((2, 4), np.int64), ctx=4)
    with pytest.raises(ValueError, match="tokens"):
        perplexity(Recorder(), np.zeros(8), ctx=4)
    with pytest.raises(ValueError, match="nll_fn.*shape"):
        perplexity(lambda w: np.zeros(len(w)), np.arange(8), ctx=4)
    with pytest.raises(ValueError, match="nll_fn.*NaN"):
        perplexity(lambda w: np.full(len(w) - 1, np.nan), np.arange(8), ctx=4)
    r = perplexity(lambda w: np.full(len(w) - 1, np.inf), np.arange(8), ctx=4)
    assert r["ppl"] == math.inf


def _direct_nll(logits, ids):
    out = []
    for j in range(len(ids) - 1):
        row = [float(v) for v in logits[j]]
        out.append(-(row[ids[j + 1]] - math.log(math.fsum(math.exp(v) for v in row))))
    return np.array(out)


def test_nll_from_logits_close_to_direct_float64():
    rng = np.random.default_rng(5)
    logits = (rng.standard_normal((70, 50)) * 8).astype(np.float32)
    ids = rng.integers(0, 50, 70)
    got = nll_from_logits(logits, ids, chunk=16)          # several chunks plus a short one
    assert got.dtype == np.float64 and got.shape == (69,)
    np.testing.assert_allclose(got, _direct_nll(logits, ids), rtol=0, atol=NLL_ATOL)


def test_nll_from_logits_is_stable_for_huge_logits():
    rng = np.random.default_rng(6)
    logits = rng.standard_normal((10, 20))
    ids = rng.integers(0, 20, 10)
    shifted = nll_from_logits(logits + 1e4, ids)          # exp(1e4) would overflow unshifted
    assert np.isfinite(shifted).all()
    np.testing.assert_allclose(shifted, _direct_nll(logits, ids), rtol=0, atol=1e-9)
    assert nll_from_logits(logits[:1], ids[:1]).shape == (0,)
    with pytest.raises(ValueError, match="ids"):
        nll_from_logits(logits, ids + 20)
    with pytest.raises(ValueError, match="logits/ids"):
        nll_from_logits(logits, ids[:5])


def test_dequantize_logits_exact_values():
    assert dequantize_logits(np.array([[3]]), np.array([5]), np.array([1]))[0, 0] == 7.5
    P = np.array([[3, -3, 0], [7, 1, -2 ** 31]], dtype=np.int32)
    m = np.array([5, 3], dtype=np.int64)
    k = np.array([1, -2], dtype=np.int64)                 # -2: a left shift by 2
    got = dequantize_logits(P, m, k)
    assert got.dtype == np.float64
    assert got.tolist() == [[7.5, -7.5, 0.0], [84.0, 12.0, -3 * 2 ** 33]]
    # products below 2^53 are exact: compare with exact rationals
    P = np.array([[2 ** 31 - 1, -(2 ** 31 - 1)]], dtype=np.int64)
    m, k = np.array([2 ** 21 - 1]), np.array([40])
    got = dequantize_logits(P, m, k)
    for a, b in zip(got[0], P[0]):
        assert Fraction(a) == Fraction(int(b) * (2 ** 21 - 1), 2 ** 40)
    # scalar scale and 1-D logits
    assert dequantize_logits(np.array([1, 2]), 3, 2).tolist() == [0.75, 1.5]


def test_dequantize_logits_bad_input():
    with pytest.raises(ValueError, match="P"):
        dequantize_logits(np.array([[1.5]]), np.array([1]), np.array([0]))
    with pytest.raises(ValueError, match="m"):
        dequantize_logits(np.array([[1], [2]]), np.array([1, 2, 3]), np.array([0]))
    with pytest.raises(ValueError, match="k"):
        dequantize_logits(np.array([[1]]), np.array([1]), np.array([2000]))
    with pytest.raises(ValueError, match="P"):
        dequantize_logits(np.array([[2 ** 53 + 1]]), np.array([1]), np.array([0]))
    with pytest.raises(ValueError, match="P"):
        dequantize_logits(np.zeros((1, 1, 1), np.int64), 1, 0)


def test_rel_rms_and_per_layer_error():
    b = np.array([[3.0, -4.0]])
    assert rel_rms_error(b * 1.01, b) == pytest.approx(0.01, rel=1e-12)
    assert rel_rms_error(b + np.array([[0.3, 0.4]]), b) == pytest.approx(0.1, rel=1e-12)
    assert rel_rms_error(np.zeros(3), np.zeros(3)) == 0.0
    assert rel_rms_error(np.ones(3), np.zeros(3)) == math.inf
    assert per_layer_error([b, b * 2], [b, b]) == [0.0, pytest.approx(1.0)]
    with pytest.raises(ValueError, match="taps"):
        per_layer_error([b], [b, b])
    with pytest.raises(ValueError, match="shapes"):
        rel_rms_error(np.zeros(2), np.zeros(3))


def test_read_text_tokens(tmp_path):
    from tiny_llama import make_tiny_hf
    d = make_tiny_hf(tmp_path / "m")
    text = "The quick brown fox jumps over the lazy dog.\nNumbers: 42 and 1024.\n" * 3
    f = tmp_path / "t.txt"
    f.write_text(text, encoding="utf-8")
    tok = load_tokenizer(d)
    want = tok.encode(text, add_special_tokens=False).ids
    for source in (d, d / "tokenizer.json", tok, str(d)):
        ids = read_text_tokens(f, source)
        assert ids.dtype == np.int64 and ids.tolist() == want
    assert read_text_tokens(f, d, max_tokens=7).tolist() == want[:7]
    assert tok.decode(want) == text                       # byte-level: nothing lost
    with pytest.raises(ValueError, match="max_tokens"):
        read_text_tokens(f, d, max_tokens=0)
    with pytest.raises(ValueError, match="tokenizer"):
        read_text_tokens(f, tmp_path / "nope")
