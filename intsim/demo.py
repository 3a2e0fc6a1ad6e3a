"""``intsim demo``: every integer operator, chained like one LLaMA block, on seeded inputs.

The parameters come from ``converters.synthetic`` (float weights prepared into integer
codes and dyadic scales, as a real checkpoint is); from the token ids on, the chain is
integer only.  Attention here uses one K and one V scale per head over all tokens
(the full per-token folding of docs/SPEC.md belongs to the model interpreter).
"""
from __future__ import annotations

import hashlib

import numpy as np

from .embedding import embed
from .head import argmax, inv_sqrt_dyadic
from .matmul import di_matmul, di_matmul_acc
from .norm import di_norm
from .options import DEFAULT_SPEC, Spec
from .qtensor import Dyadic, QTensor
from .requant import requant_rows
from .residual import residual_add
from .rope import rope
from .softmax import di_clipped_softmax
from .swiglu import di_swiglu

A_BITS = 8


def _attention(hn, blk, pos, spec, backend, taps):
    T, H, hd = hn.shape[0], blk.n_heads, blk.head_dim
    q, _ = di_matmul(hn, blk.wq, A_BITS, 16, True, spec, backend)
    k, _ = di_matmul(hn, blk.wk, A_BITS, 16, True, spec, backend)
    v, _ = di_matmul(hn, blk.wv, A_BITS, 8, False, spec, backend)
    qr, qs = rope(q, pos, blk.cos_q, blk.sin_q, H, hd, spec, backend)
    kr, ks = rope(k, pos, blk.cos_q, blk.sin_q, H, hd, spec, backend)
    taps += [("q_proj", q), ("k_proj", k), ("v_proj", v),
             ("q_rope", QTensor.exact(qr, qs)), ("k_rope", QTensor.exact(kr, ks))]
    # Q per (token, head); K and V one scale per head over all tokens (demo simplification)
    qh, _ = requant_rows(qr.reshape(T, H, hd), Dyadic(qs.m[:, None].repeat(H, 1), qs.k[:, None].repeat(H, 1)),
                         A_BITS, False, spec, backend, name="q_rope")
    kh, _ = requant_rows(*_per_head_one_scale(kr, ks, T, H, hd), A_BITS, False, spec, backend,
                         name="k_rope")
    qc = qh.centered()                                       # [T, H, hd]
    kc = kh.centered().reshape(H, T, hd)                     # [H, T, hd]
    scores = np.einsum("thd,hsd->hts", qc, kc)               # int64, |.| <= hd * 255^2
    c = inv_sqrt_dyadic(hd, spec.m_bits)
    m = qh.scale.m.T[:, :, None] * kh.scale.m[:, None, None] * c.m   # [H, T, 1]
    kk = qh.scale.k.T[:, :, None] + kh.scale.k[:, None, None] + c.k
    sc = Dyadic(np.broadcast_to(m, (H, T, 1))[..., 0], np.broadcast_to(kk, (H, T, 1))[..., 0])
    p = di_clipped_softmax(scores, sc, causal=True, spec=spec, backend=backend)
    taps += [("scores", QTensor.exact(scores, sc)), ("softmax", p)]
    # V: one scale for the whole tensor, so the heads concatenate under one row scale
    vq, _ = requant_rows(*_aligned(v.centered(), v.scale, 1, T * H * hd), A_BITS, False, spec,
                         backend, name="v")
    vc = vq.centered().reshape(T, H, hd)
    att = np.einsum("hts,shd->thd", p.q.astype(np.int64), vc).reshape(T, H * hd)
    att_scale = Dyadic(np.full(T, int(vq.scale.m[0])), np.full(T, int(vq.scale.k[0]) + int(p.scale.k.flat[0])))
    o, _ = di_matmul(QTensor.exact(att, att_scale), blk.wo, A_BITS, 16, True, spec, backend)
    taps += [("pv", QTensor.exact(att, att_scale)), ("o_proj", o)]
    return o


def _aligned(vals, scale, rows, cols):
    """Re-express per-token values under one exponent (the finest), exactly (small demo
    sizes: |vals * m| << (k_max - k) stays far inside int64), reshaped to (rows, cols)."""
    kmax = int(scale.k.max())
    out = (vals * scale.m[:, None]) << (kmax - scale.k)[:, None]
    return out.reshape(rows, cols), Dyadic(np.ones(rows, dtype=np.int64), np.full(rows, kmax))


def _per_head_one_scale(kr, ks, T, H, hd):
    vals, sc = _aligned(kr, ks, T, H * hd)
    return vals.reshape(T, H, hd).transpose(1, 0, 2).reshape(H, T * hd), \
        Dyadic(np.ones(H, dtype=np.int64), np.full(H, int(sc.k[0])))


def run_chain(blk, ids: np.ndarray, spec: Spec = DEFAULT_SPEC, backend: str = "numba"):
    """Run the block; return the list of (name, QTensor) taps in execution order."""
    taps = []
    pos = np.arange(ids.shape[0], dtype=np.int64)
    h = embed(ids, blk.emb_q, blk.emb_m, blk.emb_k, backend=backend)          # [T, D] int8
    taps.append(("embed", h))
    hn, _ = di_norm(h, spec, backend)
    taps.append(("attn_norm", hn))
    o = _attention(hn, blk, pos, spec, backend, taps)
    h, _ = residual_add(h, o, spec, backend)                                   # [T, D] int16
    taps.append(("residual_1", h))
    hn, _ = di_norm(h, spec, backend)
    g, _ = di_matmul(hn, blk.w_gate, A_BITS, spec.swiglu_in_bits, False, spec, backend)
    u, _ = di_matmul(hn, blk.w_up, A_BITS, spec.swiglu_in_bits, False, spec, backend)
    y, ys = di_swiglu(g, u, spec=spec, backend=backend)
    d, _ = di_matmul(QTensor.exact(y, ys), blk.w_down, A_BITS, 16, True, spec, backend)
    h, _ = residual_add(h, d, spec, backend)
    taps += [("ffn_norm", hn), ("gate", g), ("up", u), ("swiglu", QTensor.exact(y, ys)),
             ("down", d), ("residual_2", h)]
    hf, _ = di_norm(h, spec, backend)
    logits, ls, _ = di_matmul_acc(hf, blk.w_head, A_BITS, spec, backend)       # [T, V] int64
    taps += [("final_norm", hf), ("logits", QTensor.exact(logits, ls))]
    nxt = argmax(logits, backend)
    taps.append(("argmax", QTensor.exact(nxt[:, None], Dyadic(np.ones(len(nxt), np.int64),
                                                               np.zeros(len(nxt), np.int64)))))
    return taps


def digest(t: QTensor) -> str:
    h = hashlib.sha256()
    for a in (t.q, t.zp, t.scale.m, t.scale.k):
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]
