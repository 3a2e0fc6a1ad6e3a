"""The fused path's per-model constants (:class:`FastModel`, built once per model by
:func:`prepare`) and the checks that decide whether a model can take the fused path at
all (:func:`_unsupported`): pure Python, no compiled code; ``intsim.fastpath`` runs the
compiled forward on them.
"""
from __future__ import annotations

import weakref
from typing import NamedTuple

import numpy as np
from numba import typed

# absolute import: the float scan (tests/test_no_float.py) flags a module named "exp"
from intsim.exp import T_BITS
from .attention import GUARD_K, GUARD_O, GUARD_V, I32_MAX, PV_BITS_LIMIT, pv_max_context
from .errors import IntsimError
from .fixedpoint import ABS_LIMIT, rounding_code
from .gemm import PackedWeight
from .head import inv_sqrt_dyadic
from .matmul import A_GROUP_EMAX, _fold_qsum, check_bounds, check_group_bounds, fold_layout
from .norm import NORM_C_LIMIT, fixed_preshift, sqrt_c_const
from .qtensor import dtype_for
from .swiglu import ALPHA_K_LIMIT, GUARD_LIMIT


class FastConfig(NamedTuple):
    """The model's widths and spec options as the compiled path reads them."""
    code: int              # spec.rounding's code (fixedpoint.ROUND_CODE)
    m_bits: int
    k_lo: int
    k_hi: int
    fitted: bool           # spec.requant_mode == "fitted"
    a_bits: int
    head_a_bits: int       # the LM head's input width (Widths.head_in_bits: a_bits by default)
    pv_bits: int           # the probabilities' width into PV (Widths.pv_in_bits: a_bits by default)
    qk_bits: int
    residual_bits: int
    swiglu_in_bits: int
    softmax_in_bits: int
    softmax_clip: int
    p_frac: int            # F, the probabilities' fraction bits
    p_max: int             # 2^p_out - 1
    reciprocal: bool       # spec.softmax_div == "reciprocal"
    sigmoid_bits: int
    rowmax: bool           # spec.sigmoid_frame == "rowmax"
    sigmoid_guard: int
    rope_shift: int        # rope_frac_bits - rope_drop_bits: RoPE's exponent step
    rope_drop: int
    n_c: int               # DI-Norm's sqrt(C) constant and its shift (norm.sqrt_c_const)
    p2: int
    preshift_emb: int      # DI-Norm's fixed pre-shift of the embedding / residual stream,
    preshift_res: int      # or -1 for the per-row one
    inv_sqrt_m: int        # 1/sqrt(head_dim) (head.inv_sqrt_dyadic)
    inv_sqrt_k: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    down_rot: int          # Widths.down_rot's block (hadamard.fwht_row), 0 = no rotation
    parallel: bool         # threads over token rows and weight chunks (set per call)
    gemv_parallel: bool
    a_group: int           # Widths.a_group (SPEC 4.8), 0 = per-token activations
    a_group_e: int         # E, the largest group refinement exponent (matmul.A_GROUP_EMAX)



#: the fold bound |vals * m| << guard <= 2^62 - 1 (attention.fold_scales)
FOLD_LIMIT = ABS_LIMIT
_prepared: dict = {}


class FastModel:
    """Per-model constants and weight lists of the fused path (built once, cached)."""

    def __init__(self, model, stacks):
        c, w, spec = model.config, model.widths, model.spec
        ws = []
        for L in model.layers:
            ws += [L.wq, L.wk, L.wv, L.wo, L.w_gate, L.w_up, L.w_down]
        ws.append(model.w_head)
        C = np.ascontiguousarray
        # with group-wise activations (SPEC 4.8) also, per weight, the code sums per fold
        # group and Gf (matmul.fold_layout); without, qsum and G stand in (unread)
        ag = w.a_group
        Gfs = [fold_layout(x.q.shape[1], x.group_size, ag) if ag else x.group_size for x in ws]
        self.W = (typed.List([C(x.q) for x in ws]), typed.List([C(x.qsum) for x in ws]),
                  typed.List([C(x.m) for x in ws]), typed.List([C(x.b) for x in ws]),
                  np.array([x.group_size for x in ws], dtype=np.int64),
                  typed.List([C(_fold_qsum(x, Gf)) if ag else C(x.qsum)
                              for x, Gf in zip(ws, Gfs)]),
                  np.array(Gfs, dtype=np.int64))
        self.Wk = np.array([x.k for x in ws], dtype=np.int64)
        self.PW = tuple(typed.List([getattr(s, a) for s in stacks]) for a in ("wp", "qsum", "m", "b"))
        self.PW += _packed_fold_sums(model, stacks)
        F = c.ffn_dim
        self.alpha = np.ones((c.n_layers, F), dtype=np.int64)
        self.alpha_k = np.zeros(c.n_layers, dtype=np.int64)
        for i, L in enumerate(model.layers):
            if L.alpha_inv is not None:
                self.alpha[i] = L.alpha_inv.astype(np.int64)
                self.alpha_k[i] = L.alpha_k
        self.alpha_unit = (self.alpha == 1).all(axis=1)       # per layer: every 1/alpha is 1
        nst = 2 * c.n_layers + 1
        self.NW = np.ones((nst, c.dim), dtype=np.int64)
        self.NK = np.zeros(nst, dtype=np.int64)
        self.NU = np.ones(nst, dtype=np.int64)
        for i, L in enumerate(model.layers):
            for j, (g, gk) in enumerate(((L.attn_norm_w, L.attn_norm_k),
                                         (L.ffn_norm_w, L.ffn_norm_k))):
                if g is not None:
                    self.NW[2 * i + j] = g.astype(np.int64)
                    self.NK[2 * i + j] = gk
                    self.NU[2 * i + j] = 0
        self.emb_q = C(model.emb_q)
        self.emb_m = model.emb_m.astype(np.int64)
        self.emb_k = model.emb_k.astype(np.int64)
        self.cos_q = C(model.cos_q, dtype=np.int32)
        self.sin_q = C(model.sin_q, dtype=np.int32)
        self.cfg = _config(model)
        self.spec = spec
        self.max_context = _max_context(w.a_bits, w.pv_in_bits)
        # the probability row of PV (fastpath._attn_token): uint8 codes up to 8 bits (the
        # vector tile's 8-bit form), int16 above (codes <= 2^15 - 1); this empty array only
        # carries the dtype into the compiled call
        self.p_proto = np.empty(0, np.uint8 if w.pv_in_bits <= 8 else np.int16)


def _stack_sources(model) -> list:
    """The weights of each packed stack, in :func:`prepare`'s order."""
    out = []
    for L in model.layers:
        out += [[L.wq, L.wk, L.wv], [L.wo], [L.w_gate, L.w_up], [L.w_down]]
    return out + [[model.w_head]]


def _packed_fold_sums(model, stacks) -> tuple:
    """With group-wise activations (SPEC 4.8): per packed stack its rows' code sums per fold
    group (int64 [Np, K / Gf], zero on the padding rows) and Gf where the packed group
    GEMV (``gemm.gemv_acc_packed_groups``) can take it (fold groups of a multiple of 16
    that tile K), else 0; without groups the stacks' qsum and zeros stand in (unread)."""
    ag = model.widths.a_group
    sums, gf = [], []
    for st, ws in zip(stacks, _stack_sources(model)):
        K = st.K
        Gf = fold_layout(K, st.G, ag) if ag else 0
        if Gf and Gf % 16 == 0 and K % Gf == 0:
            q = np.zeros((st.qsum.shape[0], K // Gf), dtype=np.int64)
            q[:st.N] = np.concatenate([_fold_qsum(w, Gf) for w in ws])
            sums.append(q)
            gf.append(Gf)
        else:
            sums.append(st.qsum)
            gf.append(0)
    return typed.List(sums), np.array(gf, dtype=np.int64)


def _config(model) -> FastConfig:
    c, w, spec = model.config, model.widths, model.spec
    k_lo, k_hi = spec.k_range
    n_c, p2 = sqrt_c_const(c.dim)
    inv = inv_sqrt_dyadic(c.head_dim, spec.m_bits)
    fixed = spec.norm_preshift == "fixed"
    return FastConfig(
        code=rounding_code(spec.rounding), m_bits=spec.m_bits, k_lo=k_lo, k_hi=k_hi,
        fitted=spec.requant_mode == "fitted", a_bits=w.a_bits, head_a_bits=w.head_in_bits,
        pv_bits=w.pv_in_bits, qk_bits=w.qk_bits,
        residual_bits=spec.residual_bits, swiglu_in_bits=spec.swiglu_in_bits,
        softmax_in_bits=spec.softmax_in_bits, softmax_clip=spec.softmax_clip,
        p_frac=spec.softmax_p_out if spec.softmax_p_frac is None else spec.softmax_p_frac,
        p_max=2 ** spec.softmax_p_out - 1, reciprocal=spec.softmax_div == "reciprocal",
        sigmoid_bits=spec.sigmoid_bits, rowmax=spec.sigmoid_frame == "rowmax",
        sigmoid_guard=spec.sigmoid_guard_bits,
        rope_shift=spec.rope_frac_bits - spec.rope_drop_bits, rope_drop=spec.rope_drop_bits,
        n_c=n_c, p2=p2, preshift_emb=fixed_preshift(c.dim, w.emb_bits) if fixed else -1,
        preshift_res=fixed_preshift(c.dim, spec.residual_bits) if fixed else -1,
        inv_sqrt_m=int(inv.m), inv_sqrt_k=int(inv.k), n_heads=c.n_heads,
        n_kv_heads=c.n_kv_heads, head_dim=c.head_dim, down_rot=w.down_rot or 0, parallel=False,
        gemv_parallel=False, a_group=w.a_group or 0, a_group_e=A_GROUP_EMAX)


def _max_context(a_bits: int, p_bits: int) -> int:
    """Longest context whose PV int32 sums are bounded, P-bit probabilities against A-bit
    values: S (2^P - 1)(2^A - 1) <= 2^31 - 1 (attention.pv_max_context)."""
    return pv_max_context(a_bits, p_bits)


def _unsupported(model) -> str | None:
    """Why the fused path cannot prove every check the graph makes beyond value ranges,
    or None when it can (then the graph's checks provably pass)."""
    c, w, spec = model.config, model.widths, model.spec
    A = w.a_bits
    ag = w.a_group
    if ag is not None and spec.requant_mode != "fitted":
        return "a_group needs requant_mode 'fitted' (the graph refuses it by name)"

    def bounds(K, x, bits):         # SPEC 4.4, or 4.8's with group-wise activations
        return check_bounds(K, x, bits) if ag is None else check_group_bounds(K, x, bits, ag)
    try:
        for L in model.layers:
            for x, K in ((L.wq, c.dim), (L.wk, c.dim), (L.wv, c.dim), (L.wo, c.n_heads * c.head_dim),
                         (L.w_gate, c.dim), (L.w_up, c.dim), (L.w_down, c.ffn_dim)):
                bounds(K, x, A)
            if L.alpha_inv is not None and not (0 <= L.alpha_k <= ALPHA_K_LIMIT
                                                and L.alpha_inv.shape == (c.ffn_dim,)
                                                and L.alpha_inv.dtype.kind in "iu"):
                return "a layer's 1/alpha is outside DI-SwiGLU's declared range"
        bounds(c.dim, model.w_head, w.head_in_bits)
    except IntsimError as e:
        return f"a DI-MatMul bound does not hold statically ({e})"
    qmax = 2 ** A - 1
    m_max = 2 ** spec.m_bits - 1
    p_max = 2 ** spec.softmax_p_out - 1
    checks = (
        (2 <= A <= 8 and 2 <= w.head_in_bits <= 8 and 2 <= w.qk_bits <= 16
         and A <= w.pv_in_bits <= PV_BITS_LIMIT,
         "a_bits, head_a_bits, pv_bits or qk_bits outside the fused buffers"),
        (c.dim <= NORM_C_LIMIT, "dim exceeds DI-Norm's channel limit"),
        (model.emb_q.dtype == dtype_for(w.emb_bits, True), "embedding codes of another dtype"),
        (model.cos_q.dtype in (np.int16, np.int32) and model.sin_q.dtype in (np.int16, np.int32),
         "RoPE tables of another dtype"),
        (c.head_dim * qmax * qmax <= I32_MAX, "the QK^T int32 bound"),
        ((c.head_dim * qmax * qmax * m_max) << GUARD_K <= FOLD_LIMIT, "the key fold bound"),
        ((p_max * m_max) << GUARD_V <= FOLD_LIMIT, "the value fold bound"),
        ((I32_MAX * m_max) << GUARD_O <= FOLD_LIMIT, "the heads fold bound"),
        (0 <= spec.sigmoid_guard_bits <= GUARD_LIMIT, "sigmoid guard bits out of range"),
        (T_BITS == 30, "DI-Exp's unit cap"))
    for ok, why in checks:
        if not ok:
            return f"cannot prove {why}"
    return None


def side_get(table: dict, obj):
    """The value :func:`side_put` stored in ``table`` for this very object (not for an
    earlier one whose id it reuses), else None."""
    hit = table.get(id(obj))
    return hit[1] if hit is not None and hit[0]() is obj else None


def side_put(table: dict, obj, value):
    """Keep ``value`` for ``obj`` in ``table`` while ``obj`` lives (keyed by id, the entry
    dropped with the object: models and KV caches are not hashable by value); returns
    ``value``.  The fused paths' side tables (prepared models, derived cache copies,
    device copies) all go through this pair."""
    key = id(obj)
    table[key] = (weakref.ref(obj, lambda _r, k=key: table.pop(k, None)), value)
    return value


def prepare(model) -> FastModel | str:
    """The model's :class:`FastModel` (built on first use), or the reason the fused path
    declines this model."""
    hit = side_get(_prepared, model)
    if hit is not None:
        return hit
    why = _unsupported(model)
    fm = why
    if why is None:
        try:
            fm = FastModel(model, [PackedWeight(ws) for ws in _stack_sources(model)])
        except IntsimError as e:   # a group size that is not a multiple of 16, or mixed ones
            fm = f"the weights cannot be packed ({e})"
    return side_put(_prepared, model, fm)
