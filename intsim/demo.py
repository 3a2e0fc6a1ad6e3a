"""``intsim demo``: a one-layer LLaMA through the integer graph, every op's output tabulated.

The model comes in already built (``converters.synthetic.make_demo_model``: float weights
prepared into integer codes and dyadic scales, as a real checkpoint is; the command line
builds it).  From the token ids on, ``intsim.llama.forward`` runs it integer only, the same
graph every model runs (docs/SPEC.md section 14), and a tap collects each op's output.
"""
from __future__ import annotations

import hashlib

import numpy as np

from .head import argmax
from .llama import forward
from .model import IntModel
from .qtensor import Dyadic, QTensor


class _Taps(list):
    """An op-aware tap (intsim.llama's module doc): keeps (name, output) of every op, the
    scale-less exact accumulators ``attn.qk`` / ``attn.pv`` (integer arrays) included."""
    takes_op_calls = True

    def __call__(self, name, value, call):
        self.append((name, value))


def run_chain(model: IntModel, ids: np.ndarray, backend: str = "numba") -> list:
    """Run ``ids`` through ``model``; return (name, output) of every op of ``forward`` in
    execution order, then ``argmax`` (the next tokens).  Each output is a QTensor, except
    the exact QK^T / PV accumulators: integer arrays, their scale folded in by the next op."""
    taps = _Taps()
    logits, _ = forward(model, ids, backend=backend, tap=taps)
    nxt = argmax(logits, backend)
    taps.append(("argmax", QTensor.exact(nxt[:, None], Dyadic(np.ones(len(nxt), np.int64),
                                                               np.zeros(len(nxt), np.int64)))))
    return list(taps)


def digest(t) -> str:
    """sha256 (16 hex digits) of a QTensor's codes, zero points and scale, or of an array."""
    h = hashlib.sha256()
    for a in ((t.q, t.zp, t.scale.m, t.scale.k) if isinstance(t, QTensor) else (t,)):
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]
