"""Running the graph: the fused path when it applies, the op-by-op graph otherwise.

``forward`` here has the signature of ``intsim.llama.forward`` (the graph) and returns
the same integers: on the Numba backend without a tap it first tries the fused path
(intsim.fastpath, one compiled call per forward), on ``backend="cuda"`` the same fused
forward on an NVIDIA GPU (intsim.cudapath; with a tap, the graph runs op by op on the GPU,
intsim.cudaops); when that declines, it says why in a
debug log line (logger ``intsim.runner``; ``last_decline()`` keeps the latest reason,
``fused_status(model)`` tells whether a model can take the fused path at all) and the
graph runs.  A tap always gets the graph: it observes every op call.
``forward_batch`` and ``generate`` are built on it.
"""
from __future__ import annotations

import logging

import numpy as np

from . import fastpath, llama
from .embedding import check_token_ids
from .errors import trusted
from .head import argmax
from .llama import KVCache
from .model import IntModel
from .qtensor import Dyadic

log = logging.getLogger("intsim.runner")
_last = {"decline": None}


def fused_status(model: IntModel) -> str | None:
    """None when the model can run on the fused path, else the reason it cannot."""
    fm = fastpath.prepare(model)
    return fm if isinstance(fm, str) else None


def last_decline() -> str | None:
    """Why the latest ``forward`` on the Numba backend without a tap ran the graph (None
    when it ran fused)."""
    return _last["decline"]


def forward(model: IntModel, ids: np.ndarray, cache: KVCache | None = None,
            backend: str = "numba", tap=None, segments: np.ndarray | None = None,
            last_only: bool = False) -> tuple[np.ndarray, Dyadic]:
    """``intsim.llama.forward``'s integers (arguments and result alike), fused when it can.

    ``last_only``: the logits of the last position alone (``[1, V]`` and its Dyadic), the
    same integers as the last row of the full call; the fused CPU path then runs the LM
    head on that row only (every other path computes all rows and keeps the last)."""
    if backend in ("cuda", "numba") and tap is None:
        ids, cache, pos, visible = llama.check_call(model, ids, cache, segments)
        if backend == "cuda":
            from . import cudapath                   # imports numba.cuda only when asked for
            fused, kw = cudapath.forward_cuda, {}
        else:
            fused, kw = fastpath.forward_fast, {"last_only": last_only}
        with trusted():       # inputs checked above; intermediates' ranges are proved (SPEC)
            out = fused(model, ids, pos, visible, cache, **kw)
        _last["decline"] = out if isinstance(out, str) else None
        if not isinstance(out, str):
            return _last_row(out) if last_only else out
        log.debug("fused path (%s) declined, running the graph op by op on the CPU: %s", backend, out)
        backend = "numba"
    out = llama.forward(model, ids, cache, backend, tap, segments)
    return _last_row(out) if last_only else out


def _last_row(out: tuple[np.ndarray, Dyadic]) -> tuple[np.ndarray, Dyadic]:
    """The last row of ``(logits, Dyadic)`` (already so when the fused path made it)."""
    logits, d = out
    return logits[-1:], Dyadic(d.m[-1:], d.k[-1:])


def forward_batch(model: IntModel, prompts: list, backend: str = "numba") -> list:
    """Logits of several prompts computed in ONE packed call (block-diagonal causal
    attention); each prompt gets exactly the logits it gets alone."""
    ids = np.concatenate([check_token_ids(p, model.config.vocab_size) for p in prompts])
    seg = np.repeat(np.arange(len(prompts)), [len(p) for p in prompts])
    logits, _ = forward(model, ids, None, backend, segments=seg)
    return np.split(logits, np.cumsum([len(p) for p in prompts])[:-1])


def generate(model: IntModel, ids: np.ndarray, max_new_tokens: int, backend: str = "numba",
             stop_at_eos: bool = True, on_token=None) -> tuple[list, list]:
    """Greedy decoding: prefill ``ids``, then one token at a time through the KV cache.

    Returns ``(new_ids, logits_list)``: the generated ids and, for each of them, the int64
    logits row it was chosen from (the prompt's last position first).  ``on_token(id)``
    is called per new token.
    """
    ids = check_token_ids(ids, model.config.vocab_size)
    cache = KVCache.empty(model, min(model.config.max_pos, ids.size + max_new_tokens))
    logits, _ = forward(model, ids, cache, backend, last_only=True)   # the prompt's last row
    out_ids, out_logits = [], [logits[-1:]]
    for step in range(max_new_tokens):
        nxt = int(argmax(out_logits[-1], "numba" if backend == "cuda" else backend)[0])
        out_ids.append(nxt)
        if on_token:
            on_token(nxt)
        if (step == max_new_tokens - 1 or (stop_at_eos and nxt == model.config.eos_id)
                or cache.length >= cache.capacity):
            break
        logits, _ = forward(model, np.array([nxt], dtype=np.int64), cache, backend)
        out_logits.append(logits)
    return out_ids, out_logits
