"""Perplexity harness and float-side error metrics (evaluation only).

Perplexity over consecutive non-overlapping windows
-----------------------------------------------------
The token stream ``tokens[0..N)`` is cut into windows ``tokens[w*ctx : (w+1)*ctx]``,
``w = 0, 1, ...`` (the last one may be shorter).  Each window is run from an empty context.
Inside a window of length n, positions 1..n-1 are scored: the token at position j is predicted
from the window's tokens 0..j-1.  The first token of every window is context only, never
scored.  Windows with n < 2 (nothing to score) are skipped.  So ``W`` full windows score
``W * (ctx - 1)`` tokens, and

    nll = (sum of the scored tokens' negative log-likelihoods) / N_scored     (nats, float64)
    ppl = exp(nll)

``nll_fn(window_ids) -> float64 [n-1]`` supplies the per-position negative log-likelihoods
(row j-1 belongs to token j); :func:`nll_from_logits` turns float logits into them, for both
the float reference and the integer model (through :func:`dequantize_logits`).

Where integer logits become float
---------------------------------
:func:`dequantize_logits` is the single point where the integer simulator's output turns into
float: ``P * m * 2^-k`` per row, float64.  It serves evaluation only (log-softmax for
perplexity); the integer forward itself never produces or consumes a float.

Command line (float perplexity of a text; ``--torch`` uses converters.torch_llama)::

    python -m converters.evaluate /tmp/smollm2_hf --text persuasion --windows 8 --ctx 512
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

__all__ = ["read_text_tokens", "load_tokenizer", "perplexity", "nll_from_logits",
           "dequantize_logits", "per_layer_error", "rel_rms_error"]


def load_tokenizer(tokenizer):
    """A ``tokenizers.Tokenizer`` from itself, a tokenizer.json path or a model folder holding one."""
    if not isinstance(tokenizer, (str, os.PathLike)):
        if not hasattr(tokenizer, "encode"):
            raise ValueError(f"tokenizer: {type(tokenizer).__name__} has no encode()")
        return tokenizer
    from tokenizers import Tokenizer
    p = Path(tokenizer)
    if p.is_dir():
        p = p / "tokenizer.json"
    if not p.is_file():
        raise ValueError(f"tokenizer: {p} is not a tokenizer.json file")
    return Tokenizer.from_file(str(p))


def read_text_tokens(path: os.PathLike[str] | str, tokenizer,
                     max_tokens: int | None = None) -> np.ndarray:
    """Token ids (int64 [N]) of a UTF-8 text file: the whole text encoded at once, no special
    tokens added (no BOS), then cut to the first ``max_tokens`` ids.

    ``tokenizer``: a ``tokenizers.Tokenizer``, a tokenizer.json path or a model folder.
    Encoding the whole text before cutting keeps the ids of the kept prefix identical to
    those of the full text (cutting the text first could split a word).
    """
    if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
        raise ValueError(f"max_tokens: {max_tokens!r} must be a positive integer or None")
    text = Path(path).read_text(encoding="utf-8")
    tok = load_tokenizer(tokenizer)
    ids = np.asarray(tok.encode(text, add_special_tokens=False).ids, dtype=np.int64)
    return ids if max_tokens is None else ids[:max_tokens]


def nll_from_logits(logits, ids, chunk: int = 64) -> np.ndarray:
    """Negative log-likelihood float64 [T-1] of ``ids[1:]`` under ``logits[:-1]``.

    ``logits``: float [T, V] (row j = the distribution of token j+1); ``ids``: int [T].
    Row by row in float64: ``z = l - max(l)``, ``nll = log(sum(exp(z))) - z[target]``
    (subtracting the row max keeps exp from overflowing).  ``chunk`` rows at a time bound the
    float64 working memory.
    """
    logits = np.asarray(logits)
    ids = np.asarray(ids)
    if logits.ndim != 2 or ids.ndim != 1 or logits.shape[0] != ids.shape[0]:
        raise ValueError(f"logits/ids: need [T, V] and [T], got {logits.shape} and {ids.shape}")
    if not np.issubdtype(ids.dtype, np.integer) or (
            ids.size and (ids.min() < 0 or ids.max() >= logits.shape[1])):
        raise ValueError(f"ids: need integer ids in [0, {logits.shape[1]})")
    T = ids.shape[0]
    out = np.empty(max(T - 1, 0), dtype=np.float64)
    for a in range(0, T - 1, chunk):
        b = min(a + chunk, T - 1)
        z = logits[a:b].astype(np.float64)
        z -= z.max(axis=1, keepdims=True)
        lse = np.log(np.exp(z).sum(axis=1))
        out[a:b] = lse - z[np.arange(b - a), ids[a + 1:b + 1]]
    return out


def perplexity(nll_fn: Callable[[np.ndarray], np.ndarray], tokens, ctx: int = 512,
               progress: Callable[[int, int], None] | None = None) -> dict:
    """Perplexity of ``tokens`` over consecutive non-overlapping windows of ``ctx`` tokens.

    Which tokens count: see the module docstring (every window's positions 1..n-1; windows
    shorter than 2 skipped).  ``nll_fn(window)`` must return n-1 float negative
    log-likelihoods (NaN refused; +inf allowed and gives ppl = inf).  ``progress(i, n)`` is
    called after window i of n (1-based) when given.

    Returns ``{"ppl", "nll", "tokens", "windows", "ctx"}``: ppl = exp(nll), nll the mean
    negative log-likelihood in nats over the ``tokens`` = N_scored scored tokens, ``windows``
    the number of windows scored.
    """
    tokens = np.asarray(tokens)
    if tokens.ndim != 1 or not np.issubdtype(tokens.dtype, np.integer):
        raise ValueError(f"tokens: need a 1-D integer array, got {tokens.dtype} {tokens.shape}")
    if not isinstance(ctx, int) or ctx < 2:
        raise ValueError(f"ctx: {ctx!r} must be an integer >= 2")
    starts = [s for s in range(0, tokens.shape[0], ctx) if min(ctx, tokens.shape[0] - s) >= 2]
    if not starts:
        raise ValueError(f"tokens: {tokens.shape[0]} tokens leave no window of >= 2 tokens")
    total, n_scored = 0.0, 0
    for i, s in enumerate(starts):
        window = tokens[s:s + ctx]
        nll = np.asarray(nll_fn(window), dtype=np.float64)
        if nll.shape != (window.shape[0] - 1,):
            raise ValueError(f"nll_fn: window {i} of {window.shape[0]} tokens returned shape "
                             f"{nll.shape}, expected ({window.shape[0] - 1},)")
        if np.isnan(nll).any():
            raise ValueError(f"nll_fn: window {i} returned NaN")
        total += float(nll.sum())
        n_scored += nll.shape[0]
        if progress is not None:
            progress(i + 1, len(starts))
    mean = total / n_scored
    return {"ppl": math.exp(mean) if mean < 709.0 else math.inf, "nll": mean,
            "tokens": n_scored, "windows": len(starts), "ctx": ctx}


def dequantize_logits(P, m, k) -> np.ndarray:
    """Integer logits to float64: ``P[t, v] * m[t] * 2^-k[t]`` (one dyadic scale per row).

    This is the ONE place where the integer model's output becomes float, for evaluation only
    (perplexity needs a log-softmax).  ``P``: integer [T, V] (or [V]); ``m``, ``k``: integer
    scalars or [T] (one per row), ``k`` a right shift (negative = left shift).

    Precision: P and m are converted to float64 exactly when |P|, |m| <= 2^53 (always for int32
    logits and mantissas); the product is then rounded once, to nearest-even, and scaling by
    2^-k is exact (barring float64 under/overflow).  So the result equals P * m * 2^-k exactly
    when |P * m| < 2^53, and is its correctly rounded float64 otherwise.
    """
    P, m, k = np.asarray(P), np.asarray(m), np.asarray(k)
    for name, a in (("P", P), ("m", m), ("k", k)):
        if not np.issubdtype(a.dtype, np.integer):
            raise ValueError(f"{name}: need an integer array, got {a.dtype}")
    if P.ndim not in (1, 2):
        raise ValueError(f"P: need [T, V] or [V], got shape {P.shape}")
    rows = P.shape[0] if P.ndim == 2 else 1
    for name, a in (("m", m), ("k", k)):
        if a.size != 1 and a.shape != (rows,):
            raise ValueError(f"{name}: need a scalar or one value per row ({rows}), got shape {a.shape}")
    for name, a, lim, why in (("P", P, 2 ** 53, "would round in float64"),
                              ("m", m, 2 ** 53, "would round in float64"),
                              ("k", k, 1000, "leaves the float64 range")):
        if a.size and max(-int(a.min()), int(a.max())) > lim:    # Python ints: no wrap
            raise ValueError(f"{name}: |values| above {lim} are refused ({why})")
    if P.ndim == 2:
        m = m.reshape(-1, 1) if m.size != 1 else m.reshape(())
        k = k.reshape(-1, 1) if k.size != 1 else k.reshape(())
    else:
        m, k = m.reshape(()), k.reshape(())
    return np.ldexp(P.astype(np.float64) * m.astype(np.float64), -k.astype(np.int32))


def rel_rms_error(a, b) -> float:
    """``rms(a - b) / rms(b)`` in float64, ``b`` the reference (0.0 when both are all zero,
    inf when only ``b`` is)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"a/b: shapes differ, {a.shape} vs {b.shape}")
    num, den = float(np.sqrt(np.mean((a - b) ** 2))), float(np.sqrt(np.mean(b ** 2)))
    if den == 0.0:
        return 0.0 if num == 0.0 else math.inf
    return num / den


def per_layer_error(a_taps: Sequence[np.ndarray], b_taps: Sequence[np.ndarray]) -> list[float]:
    """Relative RMS error of each tap of ``a`` against the reference ``b`` (same length lists,
    e.g. ``FloatLlama.logits(ids, hidden_taps=True)[1]`` against dequantized integer taps)."""
    if len(a_taps) != len(b_taps):
        raise ValueError(f"a_taps/b_taps: {len(a_taps)} and {len(b_taps)} taps")
    return [rel_rms_error(a, b) for a, b in zip(a_taps, b_taps)]


def _progress_bar(i: int, n: int) -> None:
    sys.stderr.write(f"\r  window {i}/{n}")
    if i == n:
        sys.stderr.write("\n")
    sys.stderr.flush()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m converters.evaluate",
                                 description="Float perplexity of a HF LLaMA folder on a text.")
    ap.add_argument("model_dir")
    ap.add_argument("--text", default="persuasion",
                    help="a file, or a name in ~/.cache/intsim/texts (persuasion, hamlet, ...)")
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--windows", type=int, default=8, help="score the first WINDOWS*CTX tokens")
    ap.add_argument("--torch", action="store_true", help="use converters.torch_llama (PyTorch)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (with --torch)")
    args = ap.parse_args(argv)

    text = Path(args.text)
    if not text.is_file():
        text = Path("~/.cache/intsim/texts").expanduser() / f"{args.text}.txt"
        if not text.is_file():
            print(f"text: {args.text} not found (fetch with `python -m converters.texts`)",
                  file=sys.stderr)
            return 2
    tokens = read_text_tokens(text, args.model_dir, max_tokens=args.windows * args.ctx)
    if args.torch:
        from converters.torch_llama import TorchLlama
        model = TorchLlama.from_hf(args.model_dir, threads=args.threads)
        nll_fn = lambda w: nll_from_logits(model.prefill(w), w)  # noqa: E731
    else:
        from converters.float_model import FloatLlama
        model = FloatLlama.from_hf(args.model_dir)
        nll_fn = model.nll
    t0 = time.perf_counter()
    r = perplexity(nll_fn, tokens, ctx=args.ctx, progress=_progress_bar)
    dt = time.perf_counter() - t0
    print(f"{'torch' if args.torch else 'numpy'} {text.name}: ppl {r['ppl']:.4f}  nll {r['nll']:.6f}  "
          f"scored {r['tokens']} tokens in {r['windows']} windows of {r['ctx']}  "
          f"({tokens.shape[0] / dt:.1f} tokens/s incl. log-softmax)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
