"""``intsim run``: the model file in, greedy text out, integer only from token ids to
logits.  (``intsim ppl`` lives on the float side, ``converters/ppl.py``: perplexity needs
a log-softmax.)
"""
from __future__ import annotations

import hashlib
import json
import sys
import time

import numpy as np

from .compile_notice import announce_compiles
from .errors import IntsimError
from .runner import generate
from .modelfile import load_model, load_tokenizer


def run_prompt(model_path: str, prompt: str, max_new_tokens: int = 32, backend: str = "numba",
               stream=None, on_ready=None) -> dict:
    """Greedy generation from a model file.  ``stream(text)`` gets each new token's text;
    ``on_ready()`` is called once the model is loaded and the prompt checked, before the
    first forward (so nothing is printed for a run that fails to start)."""
    model = load_model(model_path)
    tok = load_tokenizer(model)
    ids = np.array(tok.encode(prompt).ids, dtype=np.int64)
    if ids.size == 0:
        raise IntsimError("prompt: encodes to no tokens")
    if ids.size + max_new_tokens > model.config.max_pos:
        raise IntsimError(f"prompt: {ids.size} tokens + {max_new_tokens} new exceed the model's "
                          f"context of {model.config.max_pos}")
    if on_ready is not None:
        on_ready()
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
    announce_compiles(newline_first=not args.json)   # stderr, only when Numba must compile
    if args.json:
        print(json.dumps(run_prompt(args.model, args.prompt, args.max_new_tokens, args.backend)))
        _say_fallback(args.backend)
        return 0
    res = run_prompt(args.model, args.prompt, args.max_new_tokens, args.backend,
                     stream=lambda s: print(s, end="", flush=True),
                     on_ready=lambda: print(args.prompt, end="", flush=True))
    print(flush=True)       # the text's newline before the stderr summary, also when piped
    n = len(res["new_tokens"])
    print(f"[{n} token{'' if n == 1 else 's'} in {res['seconds']} s; sha256 of all int64 logits rows: "
          f"{res['logits_sha256']}]", file=sys.stderr)
    _say_fallback(args.backend)
    return 0


def _say_fallback(backend: str) -> None:
    """An explicit ``--backend cuda`` that ran on the CPU says so (the integers are the same)."""
    from .runner import last_decline
    if backend == "cuda" and last_decline() is not None:
        print(f"intsim: note: --backend cuda ran on the CPU: {last_decline()}", file=sys.stderr)


def add_run_parsers(sub) -> None:
    r = sub.add_parser("run", help="greedy generation with the integer model",
                       description="Greedy generation, integer only from token ids to logits. "
                                   "Prints the text and the sha256 of every step's int64 logits.")
    r.add_argument("model", metavar="MODEL", help="integer model file from 'intsim convert'")
    r.add_argument("--prompt", required=True, help="prompt text")
    r.add_argument("--max-new-tokens", type=int, default=32, metavar="N", help="tokens to generate (default 32)")
    r.add_argument("--json", action="store_true", help="print one JSON object")
    r.add_argument("--backend", choices=("numba", "cuda"), default="numba",
                   help="numba: the CPU (default); cuda: the same integers on an NVIDIA GPU "
                        "(falls back to the CPU, with a debug log line, where it declines)")
    r.set_defaults(func=cmd_run)
