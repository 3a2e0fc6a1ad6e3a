"""The fused path of a forward on the Numba backend: the same integers, fewer crossings.

``intsim.llama.forward`` is the graph, the executable spec: one Python call per operator,
each validating its arguments and wrapping its result in ``QTensor`` / ``Dyadic``, about
750 Python crossings per token.  This module runs the SAME graph in one compiled call:
the layer loop runs inside Numba and calls each operator's own row kernel
(``requant.requant_row``, ``norm.norm_row``, ``rope.rope_head``, ``attention.qk_row``,
``attention.fold_row``, ``softmax.softmax_row``, ``attention.pv_row``,
``residual.align_row``, ``swiglu.swiglu_row``, ``gemm``'s DI-MatMul cores) on raw
arrays.  It holds orchestration only, no arithmetic of its own: buffers, loop order,
threads, weight packing and a typed configuration (``intsim.fastmodel``: ``FastConfig``,
built with the weight lists by ``prepare``).

What it does differently from the op-by-op graph (each an identity on integers):

* one input quantization per distinct input: q/k/v (and gate/up) read the same normed
  tensor, so its requantization runs once, not three times (deterministic); with
  group-wise activations (``Widths.a_group``) it is ``matmul.group_requant_row`` and the
  matmuls run ``gemm``'s group fold on the row-layout weights, a model without groups
  passing ``None`` for the group buffers so that none of it is compiled for it;
* attention works per query row over the row's visible positions only: masked columns
  are exact zeros in the graph, and every step they enter (row max and min over a range
  that always contains 0, sums, matmuls) is unchanged by zeros (softmax.py's docstring);
* the keys and values are also kept in the layouts the attention kernels read fastest
  (per kv head: key zero point, scale and code sum in contiguous rows; values
  transposed), in a side table of this module (:class:`_Derived`), rebuilt from the
  cache's own arrays whenever another path wrote the cache (``KVCache.version``);
* the matmuls read the row-layout weights in 3 x 3 vector tiles (prefill), or packed
  copies with one contiguous stream per 8 output channels (one token row, and every row
  of a call on the row path below; q/k/v and gate/up stacked into one matrix each),
  intsim.gemm.

Threads: with ``numba.get_num_threads() > 1`` a prefill on the full variant (below)
splits every stage over threads (9 parallel regions per layer); one token row runs on one
thread unless ``GEMV_PARALLEL``.  Parallel regions wait for every thread, so a second
process on the same cores slows them down badly: run with NUMBA_NUM_THREADS=1 when
sharing cores.

When it declines (``prepare`` or ``forward_fast`` return a reason string instead of a
result: a bound it cannot prove statically, a group size that is not a multiple of 16,
a cache not made by ``KVCache.empty``, a mask whose rows are not one range, a context
beyond the PV int32 bound, a scale that saturated under ``overflow = "raise"``), the
runner (intsim.runner) runs the op-by-op graph instead and logs the reason.

Compile time (the cold start of a fresh clone; docs/RESULTS.md, "Cold start"):
``_forward_nb`` is the one compiled entry, and every row and stage function here is
inlined into it at Numba IR level (``inline="always"``): a separately compiled callee is
optimized and turned into machine code on its own and then again inside every caller
that links it, which at five levels of nesting was most of the compile.  It compiles in
two variants, told apart by the type of its last argument ``full`` (:func:`choose_path`):
``None``, the row path (one thread, every matmul a GEMV per token row over the packed
copies; Numba prunes each ``full is not None`` branch before typing, so neither the
tiled GEMM nor a parallel region is compiled: the short prompt of ``make run`` and
decoding), or ``True``, the full variant (tiled GEMM and threads for several rows).

Numba caches compiled code per source file: this module's cache does not notice edits
to the kernels it calls in other intsim modules; clear ``__pycache__/*.nbi`` after
changing those.
"""
from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange, typed

from .attention import GUARD_K, GUARD_O, GUARD_V, VT_PAD, fold_row, pv_row, qk_row, score_scales
from .embedding import _embed_nb
# FastModel and _max_context re-exported: callers and tests read them here
from .fastmodel import FastModel, _max_context, prepare, side_get, side_put  # noqa: F401
from .gemm import (VEC, gemm_acc_groups, gemm_acc_groups_par, gemm_acc_multi, gemm_acc_multi_par,
                   gemv_acc_packed, gemv_acc_packed_groups, gemv_acc_packed_par)
from .matmul import group_requant_row
from .hadamard import fwht_row
from .norm import norm_row, norm_weight_row
from .qtensor import Dyadic
from .requant import requant_row
from .residual import align_row
from .rope import rope_head
from .softmax import softmax_row
from .swiglu import swiglu_row


# ------------------------------------------------------------------ stage rows

@njit(cache=True, inline="always")
def _quant_in(t, v, m_in, k_in, bits, cfg, xq, zx, zg, eg, mx, kx):
    """DI-MatMul's input quantization of row t (scale ``(m_in, k_in)``) to ``bits``: per
    token (SPEC section 4.2 step 1: codes ``xq[t]``, zero point ``zx[t]``), or with
    group-wise activations when the model has them (``zg``, ``eg`` int64 [T, groups], else
    None; section 4.8 step 1: ``zg[t]``, ``eg[t]`` per group, ``zx[t]`` 0).  ``(mx[t],
    kx[t])`` is the scale of the matmul's P: the token's, with E added to the exponent for
    groups (P carries ``2^(E - e_a)``).  Tie rule: ``cfg.code`` (spec.rounding) for codes and
    zero points, the scale fit as section 3; bounds: the kernels' own (requant_row's
    int64 input limit, section 4.8's ``L_a 2^d < 2^62``), which ``prepare`` proves."""
    if zg is not None:              # a model without groups passes None: pruned before typing
        K = v.shape[0]
        Ga = min(cfg.a_group, K)
        na = (K + Ga - 1) // Ga
        m, k, s = group_requant_row(v, m_in, k_in, bits, Ga, cfg.a_group_e, cfg.m_bits,
                                    cfg.k_lo, cfg.k_hi, cfg.code, xq[t], zg[t, :na], eg[t, :na])
        zx[t], mx[t], kx[t] = 0, m, k + cfg.a_group_e
        return s
    z, m, k, s = requant_row(v, np.int64(0), m_in, k_in, bits, False, cfg.m_bits, cfg.k_lo,
                             cfg.k_hi, cfg.code, cfg.fitted, xq[t])
    zx[t], mx[t], kx[t] = z, m, k
    return s


@njit(cache=True, inline="always")
def _norm_quant_row(t, h, preshift, cfg, a_bits, xq, zx, zg, eg, mx, kx, g, gk, has_weight, v):
    """DI-Norm of stream row t, its per-channel weight when the model keeps one (into the
    int64 scratch ``v`` of D), then DI-MatMul's input quantization to ``a_bits`` (A, or the
    LM head's input width after the last layer: SPEC section 13.1).  Without a
    weight the row is copied into ``v`` as it is (the same integers; requant_row then
    compiles for one input dtype here, not two)."""
    mn, kn, s1 = norm_row(h[t], np.int64(0), cfg.n_c, cfg.p2, preshift, cfg.m_bits, cfg.k_lo,
                          cfg.k_hi, cfg.code)
    if has_weight:
        norm_weight_row(h[t], np.int64(0), g, v)
        kn += gk
    else:
        for j in range(v.shape[0]):
            v[j] = h[t, j]
    return s1 + _quant_in(t, v, mn, kn, a_bits, cfg, xq, zx, zg, eg, mx, kx)


@njit(cache=True, inline="always")
def _rope_heads(P, t, m_in, k_in, n_heads, pos, cos_q, sin_q, cfg, out, zo, mo, ko, codes, y):
    """q or k of token t: requant to qk_bits (into the int32 scratch ``codes``), RoPE per
    head (int64 scratch ``y`` of hd), each head requantized to A bits into ``out[h]``
    (zero point, scale into zo[h], mo[h], ko[h])."""
    hd = cfg.head_dim
    codes = codes[:P.shape[1]]
    _, mq, kq, sat = requant_row(P[t], np.int64(0), m_in, k_in, cfg.qk_bits, True, cfg.m_bits,
                                 cfg.k_lo, cfg.k_hi, cfg.code, cfg.fitted, codes)
    for h in range(n_heads):
        rope_head(codes, np.int64(0), pos, cos_q, sin_q, h * hd, hd, cfg.rope_drop, cfg.code, y)
        zo[h], mo[h], ko[h], s = requant_row(y, np.int64(0), mq, kq + cfg.rope_shift, cfg.a_bits,
                                             False, cfg.m_bits, cfg.k_lo, cfg.k_hi, cfg.code,
                                             cfg.fitted, out[h])
        sat += s
    return sat


@njit(cache=True, inline="always")
def _qkv_row(t, Pq, Pk, Pv, mx, kx, wk3, pos, cos_q, sin_q, cfg, past,
             Qh, zq, qm, qk, Kq, Kzp, Km, Kk, Vq, Vzp, Vm, Vk, kpar, VT, codes, y):
    """q/k/v outputs of token t: Q and K per (token, head) at A bits after RoPE, V per
    token at A bits; K and V written to the cache at past + t, with the derived copies
    (:class:`_Derived`).  Scratch: ``codes`` int32 of the q width, ``y`` int64 of hd."""
    p = pos[t]
    sat = _rope_heads(Pq, t, mx[t], kx[t] + wk3[0], cfg.n_heads, p, cos_q, sin_q, cfg, Qh[t],
                      zq[t], qm[t], qk[t], codes, y)
    at = past + t
    sat += _rope_heads(Pk, t, mx[t], kx[t] + wk3[1], cfg.n_kv_heads, p, cos_q, sin_q, cfg,
                       Kq[at], Kzp[at], Km[at], Kk[at], codes, y)
    z, m, k, s = requant_row(Pv[t], np.int64(0), mx[t], kx[t] + wk3[2], cfg.a_bits, False,
                             cfg.m_bits, cfg.k_lo, cfg.k_hi, cfg.code, cfg.fitted, Vq[at])
    Vzp[at], Vm[at], Vk[at] = z, m, k
    _derive_position(Kq, Kzp, Km, Kk, Vq, at, kpar, VT)
    return sat + s


@njit(cache=True, inline="always")
def _derive_position(Kq, Kzp, Km, Kk, Vq, at, kpar, VT):
    """The derived copies of position ``at``: per kv head g, ``kpar[g, :, at] = (k_zp, k_m,
    k_k, sum_d k_q)`` and ``VT[g, d, at] = v_q[at, g * hd + d]`` (layout only)."""
    Hkv, hd = Kq.shape[1], Kq.shape[2]
    for g in range(Hkv):
        ksum = np.int64(0)
        for d in range(hd):
            ksum += Kq[at, g, d]
        kpar[g, 0, at], kpar[g, 1, at], kpar[g, 2, at], kpar[g, 3, at] = \
            Kzp[at, g], Km[at, g], Kk[at, g], ksum
        for d in range(hd):
            VT[g, d, at] = Vq[at, g * hd + d]


@njit(cache=True)
def _derive_range(Kq, Kzp, Km, Kk, Vq, lo, hi, kpar, VT):
    for at in range(lo, hi):
        _derive_position(Kq, Kzp, Km, Kk, Vq, at, kpar, VT)


@njit(cache=True, inline="always")
def _attn_row(t, h, Qh, zq, sm, sk, Kq, kpar, VT, Vm, Vk, Vzp, lo, hi, cfg, tiled, att, pm, pk,
              raw, sc, cq, pb, s8):
    """Attention of query (token t, head h) over cached positions [lo, hi): scores, the
    key-scale fold, DI-ClippedSoftmax, the value-scale fold, requant to ``cfg.pv_bits`` (A
    unless the model sets pv_bits, SPEC section 14.2), PV (SPEC section 14).  The
    per-position parameters are read through views starting at lo.  ``raw``, ``sc``, ``cq``
    (>= n entries), ``pb`` (>= n + 16; uint8 for codes up to 8 bits, else int16) and ``s8``
    (8) are scratch rows; ``tiled``: the QK^T and PV sums in vector tiles (CPU, hd % 16 == 0)."""
    n = hi - lo
    g = h // (cfg.n_heads // cfg.n_kv_heads)
    scores = sc[:n]
    qk_row(Qh, t, h, zq[t, h], Kq, g, lo, n, kpar[g, 0, lo:hi], kpar[g, 3, lo:hi], tiled, s8,
           raw, scores)
    kr = fold_row(scores, kpar[g, 1, lo:hi], kpar[g, 2, lo:hi], GUARD_K, cfg.code, scores)
    sat = softmax_row(scores, sm[h, t], sk[h, t] + kr + GUARD_K, cfg.softmax_clip,
                      cfg.softmax_in_bits, cfg.p_frac, cfg.p_max, cfg.reciprocal, cfg.m_bits,
                      cfg.k_lo, cfg.k_hi, cfg.code, cfg.fitted, cq[:n], scores)
    vr = fold_row(scores, Vm[lo:hi], Vk[lo:hi], GUARD_V, cfg.code, scores)
    # probabilities times value scales, requantized to pv_bits: scale (1, F + vr + G_V)
    pb[n:n + VEC] = 0                      # the tail that PV tiles read against padding
    zp, mp, kp, s = requant_row(scores, np.int64(0), np.int64(1), cfg.p_frac + vr + GUARD_V,
                                cfg.pv_bits, False, cfg.m_bits, cfg.k_lo, cfg.k_hi, cfg.code,
                                cfg.fitted, pb)
    pm[t, h], pk[t, h] = mp, kp
    hd = cfg.head_dim
    pv_row(pb, zp, VT, g, lo, n, Vzp[lo:hi], tiled, s8, att[t, h * hd:(h + 1) * hd])
    return sat + s


@njit(cache=True, inline="always")
def _heads_quant_row(t, att, pm, pk, cfg, xq, zx, zg, eg, mx, kx, hm, hk, ao):
    """Heads aligned to one exponent per token (the heads fold), then o_proj's input
    quantization.  Scratch: ``hm``, ``hk``, ``ao`` int64 of H * hd."""
    H, hd = cfg.n_heads, cfg.head_dim
    for h in range(H):
        for d in range(hd):
            hm[h * hd + d] = pm[t, h]
            hk[h * hd + d] = pk[t, h]
    kref = fold_row(att[t], hm, hk, GUARD_O, cfg.code, ao)
    return _quant_in(t, ao, np.int64(1), kref + GUARD_O, cfg.a_bits, cfg, xq, zx, zg, eg, mx, kx)


@njit(cache=True, inline="always")
def _attn_token(t, Qh, zq, sm, sk, Kq, kpar, VT, Vm, Vk, Vzp, vlo, vhi, cfg,
                att, pm, pk, xo, zx, zg, eg, mx, kx, p_proto):
    """Every head of token t, then the heads' fold and o_proj's input quantization.
    ``p_proto``: an empty array of the probability row's dtype (FastModel.p_proto)."""
    sat = 0
    n = vhi[t] - vlo[t]
    raw = np.empty(n, dtype=np.int32)
    sc = np.empty(n, dtype=np.int64)
    cq = np.empty(n, dtype=np.int64)
    pb = np.empty(n + VEC, dtype=p_proto.dtype)
    s8 = np.empty(8, dtype=np.int32)
    tiled = cfg.head_dim % VEC == 0
    for h in range(Qh.shape[1]):
        sat += _attn_row(t, h, Qh, zq, sm, sk, Kq, kpar, VT, Vm, Vk, Vzp, vlo[t], vhi[t], cfg,
                         tiled, att, pm, pk, raw, sc, cq, pb, s8)
    D = cfg.n_heads * cfg.head_dim
    return sat + _heads_quant_row(t, att, pm, pk, cfg, xo, zx, zg, eg, mx, kx, np.empty(D, np.int64),
                                  np.empty(D, np.int64), np.empty(D, np.int64))


@njit(cache=True, inline="always")
def _resid_row(t, P, mx, kx, wk, h, hm, hk, cfg, ob, sv):
    """A projection's output (P, scale (mx, kx + wk)) to residual_bits codes (int32 scratch
    ``ob`` of D), added to the stream row (residual_add, int64 scratch ``sv`` of D) and the
    sum requantized to residual_bits: h[t] in place."""
    _, mo, ko, s1 = requant_row(P[t], np.int64(0), mx[t], kx[t] + wk, cfg.residual_bits, True,
                                cfg.m_bits, cfg.k_lo, cfg.k_hi, cfg.code, cfg.fitted, ob)
    K, _ = align_row(h[t], np.int64(0), hm[t], hk[t], ob, np.int64(0), mo, ko, cfg.code, sv)
    _, m, k, s2 = requant_row(sv, np.int64(0), np.int64(1), K, cfg.residual_bits, True,
                              cfg.m_bits, cfg.k_lo, cfg.k_hi, cfg.code, cfg.fitted, h[t])
    hm[t], hk[t] = m, k
    return s1 + s2


@njit(cache=True, inline="always")
def _resid_norm_row(t, P, mx, kx, wk, h, hm, hk, preshift, cfg, a_bits, xq, zx, zg, eg, g, gk, has_weight, ob,
                    sv):
    """The residual add of a projection, then the next DI-Norm and input quantization of
    the updated stream row (mx, kx of row t are read before they are overwritten).
    Scratch: ``ob`` int32 and ``sv`` int64 of D."""
    return (_resid_row(t, P, mx, kx, wk, h, hm, hk, cfg, ob, sv)
            + _norm_quant_row(t, h, preshift, cfg, a_bits, xq, zx, zg, eg, mx, kx, g, gk, has_weight, sv))


@njit(cache=True, inline="always")
def _swiglu_quant_row(t, Pg, Pu, mx, kx, wkg, wku, mc, ka, unit, cfg, xq, zx, zg, eg, mxo, kxo, gb, ub, y, tab):
    """gate/up outputs to swiglu_in_bits, DI-SwiGLU, its online Hadamard rotation when the
    model has one (``cfg.down_rot``), and down_proj's input quantization.
    Scratch: ``gb``, ``ub`` int32 and ``y`` int64 of F, ``tab`` the sigmoid table (int64,
    2^swiglu_in_bits entries, or fewer to compute every element)."""
    B = cfg.swiglu_in_bits
    zgt, mg, kg, s1 = requant_row(Pg[t], np.int64(0), mx[t], kx[t] + wkg, B, False, cfg.m_bits,
                                  cfg.k_lo, cfg.k_hi, cfg.code, cfg.fitted, gb)
    zu, mu, ku, s2 = requant_row(Pu[t], np.int64(0), mx[t], kx[t] + wku, B, False, cfg.m_bits,
                                 cfg.k_lo, cfg.k_hi, cfg.code, cfg.fitted, ub)
    my, ky = swiglu_row(gb, zgt, mg, kg, ub, zu, mu, ku, mc, ka, unit, cfg.sigmoid_guard,
                        cfg.sigmoid_bits, cfg.rowmax, B, cfg.code, tab, y)
    if cfg.down_rot > 0:                   # online Hadamard rotation (SPEC 7.6)
        ky -= fwht_row(y, cfg.down_rot, cfg.code)
    return s1 + s2 + _quant_in(t, y, my, ky, cfg.a_bits, cfg, xq, zx, zg, eg, mxo, kxo)


# ------------------------------------------------------------------ stages (serial / parallel)
# Each stage runs its row function over the token rows, on threads for a prefill, with
# scratch rows of its own (allocated once per thread, or once for the serial loop).
# Numba compiles a prange per function, hence one serial and one parallel body per stage;
# the row path (``full`` None) compiles the serial one only.

@njit(cache=True, inline="always")
def _st_qkv(full, parallel, Pq, Pk, Pv, mx, kx, wk3, pos, cos_q, sin_q, cfg, past,
            Qh, zq, qm, qk, Kq, Kzp, Km, Kk, Vq, Vzp, Vm, Vk, kpar, VT):
    if full is not None and parallel:
        return _st_qkv_par(Pq, Pk, Pv, mx, kx, wk3, pos, cos_q, sin_q, cfg, past,
                           Qh, zq, qm, qk, Kq, Kzp, Km, Kk, Vq, Vzp, Vm, Vk, kpar, VT)
    sat = 0
    codes = np.empty(max(Pq.shape[1], Pk.shape[1]), dtype=np.int32)
    y = np.empty(cfg.head_dim, dtype=np.int64)
    for t in range(Pq.shape[0]):
        sat += _qkv_row(t, Pq, Pk, Pv, mx, kx, wk3, pos, cos_q, sin_q, cfg, past,
                        Qh, zq, qm, qk, Kq, Kzp, Km, Kk, Vq, Vzp, Vm, Vk, kpar, VT, codes, y)
    return sat


@njit(cache=True, parallel=True)
def _st_qkv_par(Pq, Pk, Pv, mx, kx, wk3, pos, cos_q, sin_q, cfg, past,
                Qh, zq, qm, qk, Kq, Kzp, Km, Kk, Vq, Vzp, Vm, Vk, kpar, VT):
    T = Pq.shape[0]
    sats = np.zeros(T, dtype=np.int64)
    for t in prange(T):
        codes = np.empty(max(Pq.shape[1], Pk.shape[1]), dtype=np.int32)
        y = np.empty(cfg.head_dim, dtype=np.int64)
        sats[t] = _qkv_row(t, Pq, Pk, Pv, mx, kx, wk3, pos, cos_q, sin_q, cfg, past,
                           Qh, zq, qm, qk, Kq, Kzp, Km, Kk, Vq, Vzp, Vm, Vk, kpar, VT, codes, y)
    return sats.sum()


@njit(cache=True, inline="always")
def _st_attn(full, parallel, Qh, zq, sm, sk, Kq, kpar, VT, Vm, Vk, Vzp, vlo, vhi, cfg,
             att, pm, pk, xo, zx, zg, eg, mx, kx, p_proto):
    if full is not None and parallel:
        return _st_attn_par(Qh, zq, sm, sk, Kq, kpar, VT, Vm, Vk, Vzp, vlo, vhi,
                            cfg, att, pm, pk, xo, zx, zg, eg, mx, kx, p_proto)
    sat = 0
    for t in range(Qh.shape[0]):
        sat += _attn_token(t, Qh, zq, sm, sk, Kq, kpar, VT, Vm, Vk, Vzp, vlo, vhi,
                           cfg, att, pm, pk, xo, zx, zg, eg, mx, kx, p_proto)
    return sat


@njit(cache=True, parallel=True)
def _st_attn_par(Qh, zq, sm, sk, Kq, kpar, VT, Vm, Vk, Vzp, vlo, vhi, cfg, att,
                 pm, pk, xo, zx, zg, eg, mx, kx, p_proto):
    T = Qh.shape[0]
    sats = np.zeros(T, dtype=np.int64)
    # tokens in the order 0, T-1, 1, T-2, ...: causal rows grow with t, and the threads
    # take equal contiguous blocks of this order, i.e. about equal work
    for ii in prange(T):
        t = ii // 2 if ii % 2 == 0 else T - 1 - ii // 2
        sats[t] = _attn_token(t, Qh, zq, sm, sk, Kq, kpar, VT, Vm, Vk, Vzp, vlo,
                              vhi, cfg, att, pm, pk, xo, zx, zg, eg, mx, kx, p_proto)
    return sats.sum()


@njit(cache=True, inline="always")
def _st_resid_norm(full, parallel, P, mx, kx, wk, h, hm, hk, preshift, cfg, a_bits, xq, zx, zg, eg, g, gk,
                   has_weight):
    if full is not None and parallel:
        return _st_resid_norm_par(P, mx, kx, wk, h, hm, hk, preshift, cfg, a_bits, xq, zx, zg, eg, g, gk,
                                  has_weight)
    sat = 0
    ob = np.empty(h.shape[1], dtype=np.int32)
    sv = np.empty(h.shape[1], dtype=np.int64)
    for t in range(h.shape[0]):
        sat += _resid_norm_row(t, P, mx, kx, wk, h, hm, hk, preshift, cfg, a_bits, xq, zx, zg, eg, g, gk,
                               has_weight, ob, sv)
    return sat


@njit(cache=True, parallel=True)
def _st_resid_norm_par(P, mx, kx, wk, h, hm, hk, preshift, cfg, a_bits, xq, zx, zg, eg, g, gk, has_weight):
    T = h.shape[0]
    sats = np.zeros(T, dtype=np.int64)
    for t in prange(T):
        ob = np.empty(h.shape[1], dtype=np.int32)
        sv = np.empty(h.shape[1], dtype=np.int64)
        sats[t] = _resid_norm_row(t, P, mx, kx, wk, h, hm, hk, preshift, cfg, a_bits, xq, zx, zg, eg, g, gk,
                                  has_weight, ob, sv)
    return sats.sum()


@njit(cache=True, inline="always")
def _st_swiglu(full, parallel, Pg, Pu, mx, kx, wkg, wku, mc, ka, unit, cfg, xq, zx, zg, eg, mxo, kxo):
    if full is not None and parallel:
        return _st_swiglu_par(Pg, Pu, mx, kx, wkg, wku, mc, ka, unit, cfg, xq, zx, zg, eg, mxo, kxo)
    sat = 0
    F = Pg.shape[1]
    gb, ub = np.empty(F, dtype=np.int32), np.empty(F, dtype=np.int32)
    y = np.empty(F, dtype=np.int64)
    tab = np.empty(np.int64(1) << cfg.swiglu_in_bits, dtype=np.int64)
    for t in range(Pg.shape[0]):
        sat += _swiglu_quant_row(t, Pg, Pu, mx, kx, wkg, wku, mc, ka, unit, cfg, xq, zx, zg, eg, mxo, kxo,
                                 gb, ub, y, tab)
    return sat


@njit(cache=True, parallel=True)
def _st_swiglu_par(Pg, Pu, mx, kx, wkg, wku, mc, ka, unit, cfg, xq, zx, zg, eg, mxo, kxo):
    T, F = Pg.shape
    sats = np.zeros(T, dtype=np.int64)
    for t in prange(T):
        gb, ub = np.empty(F, dtype=np.int32), np.empty(F, dtype=np.int32)
        y = np.empty(F, dtype=np.int64)
        tab = np.empty(np.int64(1) << cfg.swiglu_in_bits, dtype=np.int64)
        sats[t] = _swiglu_quant_row(t, Pg, Pu, mx, kx, wkg, wku, mc, ka, unit, cfg, xq, zx, zg, eg, mxo, kxo,
                                    gb, ub, y, tab)
    return sats.sum()


# ------------------------------------------------------------------ matmul dispatch

@njit(cache=True, inline="always")
def _unstack(P, outs, nw):
    """A packed stack's outputs (P: int64 [T, Np], the weights' rows one after another) into
    the first ``nw`` of ``outs``."""
    off = 0
    for i in range(nw):
        o = outs[i]
        for t in range(o.shape[0]):
            for n in range(o.shape[1]):
                o[t, n] = P[t, off + n]
        off += o.shape[1]


@njit(cache=True, inline="always")
def _matmuls(full, cfg, xq, zx, zg, eg, widx, W, pidx, PW, outs):
    """DI-MatMul steps 2-3 of the weights ``widx[i]`` (row layout) that share the input xq,
    into ``outs[i]`` (int64 [T, N] each).  A single token row, and every row on the row
    path (``full`` None), reads the packed stack ``pidx`` (the same weights, rows stacked)
    instead.  ``widx`` and ``outs`` are always
    3-tuples, unused trailing slots holding an empty (0, 0) array, so this compiles once.
    The weights of one call share their group size (a multiple of 16: prepare checks).
    ``W``, ``PW``: the weight lists of :class:`FastModel` (codes, qsum, m, b, G, k; with
    group-wise activations also the fold-group sums and Gf, and per stack its Gf where
    the packed group GEMV takes it, else 0)."""
    Wq, Wqs, Wm, Wb, Gs = W[0], W[1], W[2], W[3], W[4]
    T = xq.shape[0]
    nw = 0
    while nw < 3 and outs[nw].shape[0] == T:
        nw += 1
    if zg is not None:              # group-wise activations (SPEC 4.8)
        Ga, Gf = min(cfg.a_group, xq.shape[1]), W[6][widx[0]]
        if full is None or T == 1:
            if PW[5][pidx] > 0:     # the packed stack, where its fold groups tile K by 16s
                P = np.empty((T, PW[1][pidx].shape[0]), dtype=np.int64)
                gemv_acc_packed_groups(xq, zg, eg, PW[0][pidx], PW[4][pidx], PW[2][pidx],
                                       PW[3][pidx], Gs[widx[0]], Ga, Gf, cfg.a_group_e, P)
                _unstack(P, outs, nw)
                return
        for i in range(nw):         # else the row-layout weights
            wi = widx[i]
            if full is not None and cfg.parallel and T > 1:
                gemm_acc_groups_par(xq, zg, eg, Wq[wi], W[5][wi], Wm[wi], Wb[wi], Gs[wi], Ga, Gf,
                                    cfg.a_group_e, outs[i])
            else:
                gemm_acc_groups(xq, zg, eg, Wq[wi], W[5][wi], Wm[wi], Wb[wi], Gs[wi], Ga, Gf,
                                cfg.a_group_e, outs[i])
        return
    G = Gs[widx[0]]
    if full is None or T == 1:
        Np = PW[1][pidx].shape[0]
        P = np.empty((T, Np), dtype=np.int64)
        if full is not None and cfg.gemv_parallel:
            gemv_acc_packed_par(xq, zx, PW[0][pidx], PW[1][pidx], PW[2][pidx], PW[3][pidx], G, P)
        else:
            gemv_acc_packed(xq, zx, PW[0][pidx], PW[1][pidx], PW[2][pidx], PW[3][pidx], G, P)
        _unstack(P, outs, nw)
    elif cfg.parallel:
        gemm_acc_multi_par(xq, zx, Wq, Wqs, Wm, Wb, nw, widx, G, outs)
    else:
        gemm_acc_multi(xq, zx, Wq, Wqs, Wm, Wb, nw, widx, G, outs)


# ------------------------------------------------------------------ the whole forward

@njit(cache=True, inline="always")
def _layer(full, li, T, cfg, par, h, hm, hk, xq, zx, zg, eg, mx, kx, pos, vlo, vhi, past, W, Wk, PW,
           AL, NW, NK, NU, cos_q, sin_q, C, bufs):
    """One decoder layer on the stream h (in place); xq/zx/mx/kx hold its attention norm's
    quantized input on entry and the next norm's on exit.  ``C``: this layer's cache
    arrays (k_q, k_zp, k_m, k_k, v_q, v_zp, v_m, v_k, k_par, v_t); ``bufs``: per-forward
    scratch (Qh, zq, qm, qk, sm, sk, att, pm, pk, xo) and the probability row's dtype
    carrier (FastModel.p_proto); ``AL``: (alpha, alpha_k, alpha_unit) of every layer; ``zg``,
    ``eg``: the group-wise activations' scratch, or None (:func:`_forward_nb`)."""
    Qh, zq, qm, qk, sm, sk, att, pm, pk, xo, p_proto = bufs
    alpha, alpha_k, alpha_unit = AL
    Wq = W[0]
    w0 = 7 * li
    nul = np.empty((0, 0), dtype=np.int64)      # unused slots of _matmuls' 3-tuples
    Pq = np.empty((T, Wq[w0].shape[0]), dtype=np.int64)
    Pk = np.empty((T, Wq[w0 + 1].shape[0]), dtype=np.int64)
    Pv = np.empty((T, Wq[w0 + 2].shape[0]), dtype=np.int64)
    _matmuls(full, cfg, xq, zx, zg, eg, (w0, w0 + 1, w0 + 2), W, 4 * li, PW, (Pq, Pk, Pv))
    sat = _st_qkv(full, par, Pq, Pk, Pv, mx, kx, Wk[w0:w0 + 3], pos, cos_q, sin_q, cfg, past,
                  Qh, zq, qm, qk, C[0], C[1], C[2], C[3], C[4], C[5], C[6], C[7], C[8], C[9])
    score_scales(qm, qk, cfg.inv_sqrt_m, cfg.inv_sqrt_k, cfg.code, sm, sk)
    sat += _st_attn(full, par, Qh, zq, sm, sk, C[0], C[8], C[9], C[6], C[7], C[5], vlo, vhi,
                    cfg, att, pm, pk, xo, zx, zg, eg, mx, kx, p_proto)
    Po = np.empty((T, Wq[w0 + 3].shape[0]), dtype=np.int64)
    _matmuls(full, cfg, xo, zx, zg, eg, (w0 + 3, w0, w0), W, 4 * li + 1, PW, (Po, nul, nul))
    i = 2 * li + 1
    sat += _st_resid_norm(full, par, Po, mx, kx, Wk[w0 + 3], h, hm, hk, cfg.preshift_res, cfg, cfg.a_bits,
                          xq, zx, zg, eg, NW[i], NK[i], NU[i] == 0)
    Pg = np.empty((T, Wq[w0 + 4].shape[0]), dtype=np.int64)
    Pu = np.empty((T, Wq[w0 + 5].shape[0]), dtype=np.int64)
    _matmuls(full, cfg, xq, zx, zg, eg, (w0 + 4, w0 + 5, w0), W, 4 * li + 2, PW, (Pg, Pu, nul))
    xf = np.empty((T, Pg.shape[1]), dtype=np.uint8)
    sat += _st_swiglu(full, par, Pg, Pu, mx, kx, Wk[w0 + 4], Wk[w0 + 5], alpha[li], alpha_k[li],
                      alpha_unit[li], cfg,
                      xf, zx, zg, eg, mx, kx)
    Pd = np.empty((T, Wq[w0 + 6].shape[0]), dtype=np.int64)
    _matmuls(full, cfg, xf, zx, zg, eg, (w0 + 6, w0, w0), W, 4 * li + 3, PW, (Pd, nul, nul))
    i = 2 * li + 2                  # the last stage, 2 nL, is the final norm: the head's input
    a_next = cfg.head_a_bits if i == NW.shape[0] - 1 else cfg.a_bits
    return sat + _st_resid_norm(full, par, Pd, mx, kx, Wk[w0 + 6], h, hm, hk, cfg.preshift_res, cfg, a_next,
                                xq, zx, zg, eg, NW[i], NK[i], NU[i] == 0)


@njit(cache=True)
def _forward_nb(ids, pos, vlo, vhi, past, cfg, emb_q, emb_m, emb_k, cos_q, sin_q, W, Wk, PW,
                alpha, alpha_k, alpha_unit, NW, NK, NU, cache, full, last_only, p_proto, zg, eg):
    """Every layer and the LM head; returns (logits [T, V], m [T], k [T], saturations);
    ``last_only``: the LM head of the last row alone (logits [1, V], m [1], k [1]; every
    layer still runs on all T rows, which fill the cache).

    ``W``: the row-layout weight lists (codes, qsum, m, b) and group sizes, index
    ``7 * layer + j`` (j = q, k, v, o, gate, up, down; the head last), ``Wk`` their
    exponents; ``PW``: the packed stacks (index ``4 * layer + j``, j = qkv, o, gate+up,
    down; the head last); ``cache``: per layer the tuple of :func:`_layer`'s ``C``;
    ``p_proto``: an empty array of the probability row's dtype (FastModel.p_proto: uint8, or
    int16 for pv_bits > 8; a model of each compiles its own variant); ``zg``, ``eg``: int64
    [T, groups] scratch for group-wise activations' zero points and exponents (SPEC 4.8), or
    None for a model without (its variant compiles no group code).
    """
    T = ids.shape[0]
    H, hd = cfg.n_heads, cfg.head_dim
    D = emb_q.shape[1]
    par = cfg.parallel and T > 1
    # embedding (a gather): the stream, zero point 0, per-row scale
    codes, hm, hk = _embed_nb(ids, emb_q, emb_m, emb_k)
    h = np.empty((T, D), dtype=np.int16)
    h[:] = codes
    xq = np.empty((T, D), dtype=np.uint8)
    zx = np.empty(T, dtype=np.int64)
    mx = np.empty(T, dtype=np.int64)
    kx = np.empty(T, dtype=np.int64)
    bufs = (np.empty((T, H, hd), dtype=np.uint8), np.empty((T, H), dtype=np.int64),
            np.empty((T, H), dtype=np.int64), np.empty((T, H), dtype=np.int64),
            np.empty((H, T), dtype=np.int64), np.empty((H, T), dtype=np.int64),
            np.empty((T, H * hd), dtype=np.int64), np.empty((T, H), dtype=np.int64),
            np.empty((T, H), dtype=np.int64), np.empty((T, H * hd), dtype=np.uint8), p_proto)
    # DI-Norm weights of stage i (2l: layer l's attention norm, 2l + 1: its ffn norm,
    # 2 nL: the final norm, always folded into the head): NW[i], NK[i], none when NU[i]
    sat = 0
    v = np.empty(D, dtype=np.int64)
    for t in range(T):
        sat += _norm_quant_row(t, h, cfg.preshift_emb, cfg, cfg.a_bits, xq, zx, zg, eg, mx, kx, NW[0], NK[0],
                               NU[0] == 0, v)
    for li in range(len(cache)):
        sat += _layer(full, li, T, cfg, par, h, hm, hk, xq, zx, zg, eg, mx, kx, pos, vlo, vhi, past, W,
                      Wk, PW, (alpha, alpha_k, alpha_unit), NW, NK, NU, cos_q, sin_q, cache[li], bufs)
    # the LM head accumulators of the final normed stream (of its last row alone when
    # last_only: the same row through the same weights, so the same integers)
    wh = 7 * len(cache)
    h0 = T - 1 if last_only else 0
    xh, zh = (xq[h0:].copy(), zx[h0:].copy()) if last_only else (xq, zx)
    zgh, egh = zg, eg
    if zg is not None:
        if last_only:
            zgh, egh = zg[h0:].copy(), eg[h0:].copy()
    logits = np.empty((T - h0, W[0][wh].shape[0]), dtype=np.int64)
    nul = np.empty((0, 0), dtype=np.int64)
    _matmuls(full, cfg, xh, zh, zgh, egh, (wh, wh, wh), W, 4 * len(cache), PW, (logits, nul, nul))
    kout = np.empty(T - h0, dtype=np.int64)
    for t in range(T - h0):
        kout[t] = kx[h0 + t] + Wk[wh]
    return logits, mx[h0:].copy(), kout, sat


# ------------------------------------------------------------------ Python side

#: use the multi-thread packed GEMV for single token rows (else one thread).  Off by
#: default: a decode step would open ~150 parallel regions, each of which waits for a
#: time slice when another process shares the cores (measured: 1 s per token instead
#: of 13 ms on the shared 2-core host); alone on 2 cores it gave +12 % in one run and
#: nothing in another (docs/RESULTS.md; ``intsim bench --model`` times it as ``int_par``).
GEMV_PARALLEL = False
#: the longest call (token rows) that takes the row path (:func:`choose_path`)
ROW_PATH_MAX_T = 16
#: whether this process has run the full variant (then every call takes it)
_full_ran = [False]

# ------------------------------------------------------------------ the cache's derived copies

class _Derived:
    """The fused path's copies of a cache's keys and values in the layouts its kernels
    read (per layer: ``k_par[g, :, j] = (k_zp, k_m, k_k, sum_d k_q)`` of position j, int64
    [Hkv, 4, capacity]; ``v_t[g, d, j] = v_q[j, g * hd + d]``, uint8 [Hkv, hd, capacity +
    16], the last 16 columns padding), valid for ``cache.version == version``."""

    def __init__(self, cache, c):
        cap = cache.capacity
        self.k_par = [np.zeros((c.n_kv_heads, 4, cap), np.int64) for _ in range(c.n_layers)]
        self.v_t = [np.zeros((c.n_kv_heads, c.head_dim, cap + VT_PAD), np.uint8)
                    for _ in range(c.n_layers)]
        self.version = -1
        self.arrays = None

    def fits(self, cache, c) -> bool:
        """The copies have the shapes this cache and model need (a cache whose arrays
        were replaced by larger ones, or one run with another model, gets new copies:
        the kernels write positions up to the capacity without a bounds check)."""
        return (len(self.k_par) == c.n_layers
                and all(k.shape == (c.n_kv_heads, 4, cache.capacity) for k in self.k_par)
                and all(v.shape == (c.n_kv_heads, c.head_dim, cache.capacity + VT_PAD)
                        for v in self.v_t))

    def sync(self, cache) -> None:
        """Rebuild every position below ``cache.length`` when another path wrote the cache
        (an empty cache has none: nothing to compile on a fresh run's first call)."""
        if self.version != cache.version:
            for li in range(len(self.k_par) if cache.length else 0):
                _derive_range(cache.k_q[li], cache.k_zp[li], cache.k_m[li], cache.k_k[li],
                              cache.v_q[li], 0, cache.length, self.k_par[li], self.v_t[li])
            self.version = cache.version


#: per live cache (fastmodel.side_put): its derived copies, and the arrays (with the
#: model config and capacity) of its last passed check
_derived: dict = {}
_checked: dict = {}

_CACHE_DTYPES = (("k_q", np.uint8, 3), ("k_zp", np.int32, 2), ("k_m", np.int64, 2),
                 ("k_k", np.int64, 2), ("v_q", np.uint8, 2), ("v_zp", np.int32, 1),
                 ("v_m", np.int64, 1), ("v_k", np.int64, 1))


def _cache_problem(cache, c) -> str | None:
    """Why the cache is not what KVCache.empty makes (the compiled path's array types)."""
    for name, dt, nd in _CACHE_DTYPES:
        arrs = getattr(cache, name)
        if not isinstance(arrs, (list, tuple)):
            return f"cache.{name} is not a list of arrays, one per layer"
        if len(arrs) != c.n_layers:
            return f"cache.{name} has {len(arrs)} layers"
        for a in arrs:
            if (not isinstance(a, np.ndarray) or a.dtype != dt or a.ndim != nd
                    or not a.flags.c_contiguous or a.shape[0] < cache.capacity):
                return f"cache.{name} is not the {dt.__name__} array KVCache.empty makes"
    return None


def _derived_for(cache, c) -> _Derived:
    """The derived copies of a checked ``cache``, synced (made on first use and kept while
    the cache lives; made again when they no longer fit it, :meth:`_Derived.fits`)."""
    d = side_get(_derived, cache)
    if d is None or not d.fits(cache, c):
        d = side_put(_derived, cache, _Derived(cache, c))
    d.sync(cache)
    return d


def _cache_arrays(cache):
    """The cache's arrays in ``_CACHE_DTYPES`` order, layer by layer, as one tuple, or None
    when an attribute is not a sequence (:func:`_cache_problem` then declines the cache)."""
    try:
        return tuple(a for n, _, _ in _CACHE_DTYPES for a in getattr(cache, n))
    except TypeError:
        return None


def _same_arrays(a, b) -> bool:
    """The same array objects in the same order (held by reference, so an id can not be
    reused by a new array while the memo keeps the old one)."""
    return a is not None and b is not None and len(a) == len(b) and all(x is y for x, y in zip(a, b))


def _checked_cache(cache, c):
    """:func:`_cache_problem`, run unless this cache passed it last time with the same
    model config object, capacity and array objects: the check walks every layer's
    eight arrays, about 50 us, which a decode step would otherwise pay every token.  (An
    array changed in place, ``a.dtype = ...`` or ``a.shape = ...``, keeps its object and
    is not checked again: the cache's arrays are KVCache's to replace, not to reshape.)
    Returns the reason string, or the cache's arrays as the tuple the memo keeps (the
    same tuple object while they stay the same, so :func:`_cache_tuples` compares it by
    identity instead of walking the arrays a second time)."""
    arrays = _cache_arrays(cache)
    memo = side_get(_checked, cache)
    if (memo is not None and memo[0] is c and memo[1] == cache.capacity
            and _same_arrays(memo[2], arrays)):
        return memo[2]
    why = _cache_problem(cache, c)
    if why is not None:
        _checked.pop(id(cache), None)
        return why
    side_put(_checked, cache, (c, cache.capacity, arrays))
    return arrays


def _cache_tuples(cache, d: _Derived, arrays):
    """Per layer the tuple of the cache's arrays and the derived copies, in a typed list
    (memoized on ``arrays``, the tuple :func:`_checked_cache` returned: a typed list
    crosses into the compiled call as one pointer, where a tuple of 10 arrays per layer
    would unbox every array on every call, ~1 ms a decode step)."""
    if d.arrays is None or d.arrays[0] is not arrays:
        per_layer = typed.List([tuple(getattr(cache, n)[li] for n, _, _ in _CACHE_DTYPES)
                                + (d.k_par[li], d.v_t[li]) for li in range(len(d.k_par))])
        d.arrays = (arrays, per_layer)
    return d.arrays[1]


def visible_ranges(visible: np.ndarray):
    """Per query row the visible cached positions as one range [lo, hi), or None when a
    row's visible set is not one contiguous non-empty range."""
    T, S = visible.shape
    if T == 0 or S == 0:
        return None
    any_v = visible.any(axis=1)
    lo = visible.argmax(axis=1)
    hi = S - visible[:, ::-1].argmax(axis=1)
    if not any_v.all() or not np.array_equal(visible.sum(axis=1), hi - lo):
        return None
    return lo.astype(np.int64), hi.astype(np.int64)


def choose_path(T: int, gemv_parallel: bool) -> str:
    """Which compiled variant of :func:`_forward_nb` runs a call of T token rows: "rows"
    (``full=None``: one thread, every matmul a GEMV per token row over the packed weights;
    Numba prunes the other branches before typing, so a run that takes only this path
    compiles neither the tiled GEMM nor a parallel region: the cold start of a short
    prompt) for at most ROW_PATH_MAX_T rows, or "full" (``full=True``: the tiled GEMM
    and threads for several rows, the packed GEMV for one).  Once this process has run
    "full", every call takes it (it holds the single-row code too), so a long prompt
    compiles one variant, not two.  The same integers either way (tests/test_fastpath.py)."""
    if _full_ran[0] or gemv_parallel or T > ROW_PATH_MAX_T:
        return "full"
    return "rows"


def _group_scratch(cfg, c, T: int):
    """``(zg, eg)`` for :func:`_forward_nb`: int64 [T, groups] (the most groups of any
    matmul input: K = dim, heads x head_dim or ffn_dim) with group-wise activations, else
    ``(None, None)``."""
    if not cfg.a_group:
        return None, None
    K = max(c.dim, c.n_heads * c.head_dim, c.ffn_dim)
    na = -(-K // cfg.a_group)
    return np.zeros((T, na), dtype=np.int64), np.zeros((T, na), dtype=np.int64)


def forward_fast(model, ids: np.ndarray, pos: np.ndarray, visible: np.ndarray, cache,
                 path: str | None = None, last_only: bool = False):
    """The fused forward (arguments already validated by the runner): returns ``(logits,
    Dyadic)`` and advances the cache, or a string saying why the graph must run instead.
    ``path``: "rows" or "full" (the compiled variant, :func:`choose_path`; the same
    integers), None to choose by :func:`choose_path`.  ``last_only``: the LM head of the
    last row alone (logits [1, V]; the same integers as that row of the full call)."""
    fm = prepare(model)
    if isinstance(fm, str):
        return fm
    if cache.length + ids.size > fm.max_context:
        return f"{cache.length + ids.size} positions exceed the PV int32 bound ({fm.max_context})"
    arrays = _checked_cache(cache, model.config)
    if isinstance(arrays, str):
        return arrays
    rng = visible_ranges(visible)
    if rng is None:
        return "a row's visible positions are not one contiguous range"
    threads = numba.get_num_threads() > 1
    cfg = fm.cfg._replace(parallel=threads, gemv_parallel=GEMV_PARALLEL and threads)
    path = path or choose_path(ids.size, cfg.gemv_parallel)
    if path == "full":
        _full_ran[0] = True
    d = _derived_for(cache, model.config)
    logits, m, k, sat = _forward_nb(
        np.ascontiguousarray(ids, dtype=np.int64), np.ascontiguousarray(pos, dtype=np.int64),
        rng[0], rng[1], cache.length, cfg, fm.emb_q, fm.emb_m, fm.emb_k, fm.cos_q, fm.sin_q,
        fm.W, fm.Wk, fm.PW, fm.alpha, fm.alpha_k, fm.alpha_unit, fm.NW, fm.NK, fm.NU,
        _cache_tuples(cache, d, arrays), True if path == "full" else None, bool(last_only), fm.p_proto,
        *_group_scratch(fm.cfg, model.config, ids.size))
    if sat and fm.spec.overflow == "raise":
        d.version = -1                   # the cache holds positions the graph will redo
        return "a scale saturated under overflow='raise' (the graph raises, naming the op)"
    cache.length += ids.size
    return logits, Dyadic(m, k)
