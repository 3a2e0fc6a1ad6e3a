"""``intsim run`` and ``intsim ppl``: the model file in, text or perplexity out.

``run`` is integer only from token ids to logits (greedy argmax).  ``ppl`` needs a
log-softmax, so it hands the integer logits to the float side (``converters.evaluate``)
at the very end, and runs the float reference of the same checkpoint beside it.
"""
from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np

from .errors import IntsimError
from .llama import KVCache, forward, generate
from .modelfile import load_model, load_tokenizer


def _progress(label: str):
    def show(i: int, n: int) -> None:
        if sys.stderr.isatty() or i == n:
            bar = "#" * (30 * i // n)
            print(f"\r{label} [{bar:<30}] {i}/{n}", end="\n" if i == n else "", file=sys.stderr,
                  flush=True)
    return show


def run_prompt(model_path: str, prompt: str, max_new_tokens: int = 32, backend: str = "numba",
               stream=None) -> dict:
    model = load_model(model_path)
    tok = load_tokenizer(model)
    ids = np.array(tok.encode(prompt).ids, dtype=np.int64)
    if ids.size == 0:
        raise IntsimError("prompt: encodes to no tokens")
    if ids.size + max_new_tokens > model.config.max_pos:
        raise IntsimError(f"prompt: {ids.size} tokens + {max_new_tokens} new exceed the model's "
                          f"context of {model.config.max_pos}")
    h = hashlib.sha256()
    t0 = time.perf_counter()
    new, logits = generate(model, ids, max_new_tokens, backend,
                           on_token=(lambda t: stream(tok.decode([t]))) if stream else None)
    dt = time.perf_counter() - t0
    for row in logits:
        h.update(np.ascontiguousarray(row, dtype=np.int64).tobytes())
    return {"prompt_tokens": ids.tolist(), "new_tokens": new, "text": tok.decode(new),
            "logits_sha256": h.hexdigest(), "seconds": round(dt, 3)}


def cmd_run(args) -> int:
    if args.max_new_tokens < 1:
        raise IntsimError(f"--max-new-tokens: {args.max_new_tokens} must be >= 1")
    if args.json:
        print(json.dumps(run_prompt(args.model, args.prompt, args.max_new_tokens)))
        return 0
    print(args.prompt, end="", flush=True)
    res = run_prompt(args.model, args.prompt, args.max_new_tokens,
                     stream=lambda s: print(s, end="", flush=True))
    print()
    print(f"[{len(res['new_tokens'])} tokens in {res['seconds']} s; sha256 of all int64 logits rows: "
          f"{res['logits_sha256']}]", file=sys.stderr)
    return 0


def int_nll_fn(model, backend: str = "numba"):
    """Per-position negative log-likelihood of a window from the integer model."""
    from converters.evaluate import dequantize_logits, nll_from_logits   # float: evaluation only

    def nll(window: np.ndarray) -> np.ndarray:
        P, s = forward(model, window.astype(np.int64), None, backend)
        return nll_from_logits(dequantize_logits(P, s.m, s.k), window)
    return nll


def float_reference_dir(model) -> Path:
    """The float checkpoint the model was converted from (re-imported when it was a GGUF)."""
    src = model.meta.get("source", {})
    path = Path(src.get("path", ""))
    if not path.exists():
        raise IntsimError(f"float reference: the source {path} recorded in the model file is gone; "
                          f"pass --float-src DIR")
    if src.get("kind") != "gguf":
        return path
    from converters.gguf_import import import_gguf
    cache = Path.home().joinpath(".cache", "intsim", "hf", src["sha256"][path.name][:16])
    if not (cache / "config.json").exists():
        import_gguf(path, cache)
    return cache


def cmd_ppl(args) -> int:
    from converters.evaluate import nll_from_logits, perplexity, read_text_tokens
    from converters.float_model import FloatLlama
    model = load_model(args.model)
    tok = load_tokenizer(model)
    tokens = read_text_tokens(args.text, tok, args.max_tokens)
    ctx = min(args.ctx, model.config.max_pos)
    t0 = time.perf_counter()
    res_int = perplexity(int_nll_fn(model), tokens, ctx, _progress("integer"))
    t_int = time.perf_counter() - t0
    out = {"ppl_int": res_int["ppl"], "tokens": res_int["tokens"], "windows": res_int["windows"],
           "ctx": ctx, "int_seconds": round(t_int, 1), "model": str(args.model)}
    if not args.no_float:
        fdir = Path(args.float_src) if args.float_src else float_reference_dir(model)
        fm = FloatLlama.from_hf(fdir)
        t0 = time.perf_counter()
        res_f = perplexity(lambda w: nll_from_logits(fm.logits(w), w), tokens, ctx, _progress("float"))
        out.update(ppl_float=res_f["ppl"], ratio=res_int["ppl"] / res_f["ppl"],
                   float_seconds=round(time.perf_counter() - t0, 1))
    if args.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print(f"{k:>14}: {v:.4f}" if isinstance(v, float) else f"{k:>14}: {v}")
    return 0


def add_run_parsers(sub) -> None:
    r = sub.add_parser("run", help="greedy generation with the integer model",
                       description="Greedy generation, integer only from token ids to logits. "
                                   "Prints the text and the sha256 of every step's int64 logits.")
    r.add_argument("model", metavar="MODEL", help="integer model file from 'intsim convert'")
    r.add_argument("--prompt", required=True, help="prompt text")
    r.add_argument("--max-new-tokens", type=int, default=32, metavar="N", help="tokens to generate (default 32)")
    r.add_argument("--json", action="store_true", help="print one JSON object")
    r.set_defaults(func=cmd_run)
    p = sub.add_parser("ppl", help="perplexity of the integer model and of its float reference",
                       description="Perplexity over consecutive non-overlapping windows of --ctx "
                                   "tokens of a text file, for the integer model and for the float "
                                   "checkpoint it was converted from. Log-softmax is taken in "
                                   "float64 at the very end, outside the integer datapath.")
    p.add_argument("model", metavar="MODEL", help="integer model file")
    p.add_argument("--text", required=True, metavar="FILE", help="UTF-8 text file")
    p.add_argument("--max-tokens", type=int, default=None, metavar="N", help="score only the first N tokens")
    p.add_argument("--ctx", type=int, default=512, metavar="N", help="window length (default 512)")
    p.add_argument("--float-src", metavar="DIR", help="float HF folder (default: the source in the model file)")
    p.add_argument("--no-float", action="store_true", help="skip the float reference")
    p.add_argument("--json", action="store_true", help="print one JSON object (ppl_int, ppl_float, tokens, ...)")
    p.set_defaults(func=cmd_ppl)
