"""The reference functions that :mod:`intsim.mutants` changes one step of, each written once
more with knobs: with every knob at its default a variant computes exactly what its
reference computes (tests/test_mutants.py holds each equal to its reference on many
inputs); a mutant sets one knob.  Same signatures as the references (``name`` of each
below), so a mutant swaps a variant in where the op module calls its reference.

Only the mutants use this module; the runtime never does.  Integer only (the float scan
applies).
"""
from __future__ import annotations

import numpy as np

from .exp import T_BITS, _exp_apply_ref, _exp_unit_ref
from .fixedpoint import (RC_CEIL, RC_FLOOR, RC_HALF_UP, _div_round_ref, _fit_ref, _isqrt_ref,
                         _rshift_round_ref, bit_length_ref)
from .norm import SUMSQ_BITS, fixed_preshift
from .requant import PRE_BITS, _code_range
from .residual import ALIGN_BITS
from .softmax import RECIP_BITS, _clip_threshold_ref


def wrap_signed(x, bits: int):
    """``x`` in a ``bits``-wide two's-complement register: wraps modulo 2^bits."""
    h = np.int64(1) << np.int64(bits - 1)
    return ((np.asarray(x, dtype=np.int64) + h) & ((h << 1) - 1)) - h


def _site(rule, code: int) -> int:
    return code if rule is None else rule(code)


# ------------------------------------------------------------ dyadic fit (fixedpoint._fit_ref)

def _fit_quot(num, den, kk, rcode):
    pos = np.maximum(kk, 0)
    negk = np.maximum(-kk, 0)
    tiny = bit_length_ref(den) + negk >= 63
    q = _div_round_ref(num << pos, den << np.where(tiny, 0, negk), rcode)
    return np.where(tiny, np.where((num > 0) & (rcode == RC_CEIL), 1, 0), q)


def fit_variant(num, den, m_bits, k_lo, k_hi, code, *, norm_rounded=False, carry_saturates=False):
    """``fixedpoint._fit_ref``.  ``norm_rounded``: step 2 decides the normalization on the
    quotient rounded by the fit's own rule, not on the floor quotient; ``carry_saturates``:
    step 4 clamps a rounding carry to ``2^m_bits - 1`` instead of halving m and k."""
    num, den = np.broadcast_arrays(np.asarray(num, dtype=np.int64), np.asarray(den, dtype=np.int64))
    k_lo = np.broadcast_to(np.asarray(k_lo, dtype=np.int64), num.shape)
    k_hi = np.broadcast_to(np.asarray(k_hi, dtype=np.int64), num.shape)
    top = np.int64(1) << np.int64(m_bits)
    k = np.int64(m_bits) - 1 - (bit_length_ref(num) - bit_length_ref(den))
    low = _fit_quot(num, den, k, code if norm_rounded else RC_FLOOR) < (top >> 1)
    k = np.where(low, k + 1, k)
    m = _fit_quot(num, den, k, code)
    carry = m >= top
    if carry_saturates:
        m = np.where(carry, top - 1, m)
    else:
        m = np.where(carry, m >> 1, m)
        k = np.where(carry, k - 1, k)
    lo = k < k_lo
    m_c = np.where(k > k_hi, _fit_quot(num, den, np.minimum(k, k_hi), code), m)
    m_c = np.where(lo, top - 1, m_c)
    zero = num == 0
    return (np.where(zero, 0, m_c).astype(np.int64),
            np.where(zero, np.clip(0, k_lo, k_hi), np.clip(k, k_lo, k_hi)).astype(np.int64), lo & ~zero)


# ------------------------------------------------------------ requantizer (requant._requant_ref)

def _row_range(v, symmetric, with_zero):
    if symmetric:
        R = np.maximum(np.abs(v.min(axis=-1)), np.abs(v.max(axis=-1)))
        return np.zeros_like(R), R
    lo, hi = v.min(axis=-1), v.max(axis=-1)
    if with_zero:
        lo, hi = np.minimum(lo, 0), np.maximum(hi, 0)
    return lo, hi - lo


def _divide(rule, a, m_o, e, code):
    """``rnd(a * 2^e / m_o)`` (requant._code_div_ref) by the site's ``rule``."""
    a2, d2 = a << np.maximum(e, 0), m_o << np.maximum(-e, 0)
    if rule == "trunc":
        return np.where(a < 0, _div_round_ref(a2, d2, RC_CEIL), _div_round_ref(a2, d2, RC_FLOOR))
    return _div_round_ref(a2, d2, _site(rule, code))


def requant_variant(v, m_in, k_in, bits, symmetric, m_bits, k_lo, k_hi, code, fitted, *,
                    pre_bits=PRE_BITS, pre_round=False, with_zero=True, fit_den_pow2=False,
                    fit_rule=None, zp_rule=None, codes_rule=None, wrap=False):
    """``requant._requant_ref``.  ``pre_bits``: the pre-shift's width (32); ``pre_round``:
    the pre-shift rounds half up instead of flooring; ``with_zero``: the range contains 0;
    ``fit_den_pow2``: the scale fit divides by 2^b (2^(b-1) symmetric) instead of Q;
    ``fit_rule`` / ``zp_rule`` / ``codes_rule``: the rounding of the scale fit, the zero
    point, the codes (a rule of the run's code, or "trunc"); ``wrap``: codes outside
    [lo_q, Q] wrap in the b-bit register instead of being clamped."""
    Q = np.int64(_code_range(bits, symmetric))
    _, R = _row_range(v, symmetric, with_zero)
    sh = np.maximum(bit_length_ref(R) - pre_bits, 0)
    vs = _rshift_round_ref(v, sh[..., None], RC_HALF_UP) if pre_round else v >> sh[..., None]
    lo, Rs = _row_range(vs, symmetric, with_zero)
    zero = Rs == 0
    fcode = RC_CEIL if fitted else code
    m, e, sat = _fit_ref(m_in * Rs, Q + np.int64(fit_den_pow2), m_bits, k_lo - k_in + sh,
                         k_hi - k_in + sh, _site(fit_rule, fcode))
    by_scale = fitted & ~sat & (m > 0) & (bit_length_ref(m) - np.minimum(e, 0) <= 62)
    Rd = np.where(zero, 1, Rs)
    md, ed = np.where(by_scale, m, 1), np.where(by_scale, e, 0)
    a_in = np.where(by_scale, m_in, 1)
    zp_r = _divide(zp_rule, -lo * Q, Rd, np.int64(0), code)
    zp_f = _divide(zp_rule, -lo * a_in, md, ed, code)
    zp = np.where(zero, 0, np.where(by_scale, zp_f, zp_r))
    q_r = _divide(codes_rule, vs * Q, Rd[..., None], np.int64(0), code)
    q_f = _divide(codes_rule, vs * a_in[..., None], md[..., None], ed[..., None], code)
    q = np.where(by_scale[..., None], q_f, q_r) + zp[..., None]
    lo_q = -Q if symmetric else 0
    if wrap:
        q = wrap_signed(q, bits) if symmetric else q & Q
    else:
        q = np.clip(q, lo_q, Q)
    q = np.where(zero[..., None], 0, q)
    k = np.where(m == 0, np.clip(0, k_lo, k_hi), e + k_in - sh)
    return q, zp, m, k, int(np.count_nonzero(sat))


# ------------------------------------------------------------ DI-Exp (exp._exp_unit_ref, _exp_apply_ref)

def exp_unit_variant(m, k, code, *, log2e="shift_add", cap=True):
    """``exp._exp_unit_ref``.  ``log2e``: step 0a's ``m_f`` as the shift-add
    ``m + (m >> 1) - (m >> 4)``, ``"one_half"`` (``m + (m >> 1)``, log2 e ~ 1.5) or
    ``"product"`` (``(23 m + 8) >> 4``, the product rounded); ``cap``: step 0b's T cap
    (False: ``j`` only keeps ``2^k'`` inside int64, T grows with the scale)."""
    m = np.asarray(m, dtype=np.int64)
    k = np.asarray(k, dtype=np.int64)
    if log2e == "one_half":
        mf = m + (m >> 1)
    elif log2e == "product":
        mf = (23 * m + 8) >> 4
    else:
        mf = m + (m >> 1) - (m >> 4)
    j = np.maximum(np.int64(0), k - (T_BITS - 1) - bit_length_ref(mf) if cap else k - 62)
    kk = k - j
    pos = kk > 0
    num = np.left_shift(np.int64(1), np.where(pos, kk, 0))
    T = np.where(pos, np.maximum(_div_round_ref(num, mf, code), 1), 1)
    return T.astype(np.int64), j.astype(np.int64)


def exp_apply_variant(x, T, j, code, *, chord_trunc=False, out_rounded=False):
    """``exp._exp_apply_ref``.  ``chord_trunc``: step 4 halves r toward zero, not floor;
    ``out_rounded``: step 5 rounds ``e / 2^q`` half up instead of flooring."""
    xs = _rshift_round_ref(np.asarray(x, dtype=np.int64), np.broadcast_to(j, np.shape(x)), code)
    n = -xs
    q = n // T
    r = q * T - n
    e = (-((-r) >> 1) if chord_trunc else r >> 1) + T
    qs = np.minimum(q, 63)
    out = _rshift_round_ref(e, qs, RC_HALF_UP) if out_rounded else e >> qs
    return np.where(q >= 63, 0, out).astype(np.int64)


# ------------------------------------------------------------ DI-ClippedSoftmax (softmax._*_ref)

def center_clip_variant(x, vis, m, k, c, code, *, max_all=False):
    """``softmax._center_clip_ref``.  ``max_all``: the row max includes the masked columns."""
    any_v = vis.any(axis=-1)
    mx = np.where(vis | max_all, x, np.iinfo(np.int64).min).max(axis=-1)
    mx = np.where(any_v, mx, 0)
    xt = np.where(vis, x - mx[:, None], 0)
    C = _clip_threshold_ref(c, m, k, code)
    xt = np.maximum(xt, -C[:, None])
    return np.where(m[:, None] == 0, 0, xt).astype(np.int64)


def exp_norm_variant(xq, vis, mr, kr, F, p_max, recip, code, *, masked_in_sum=False,
                     recip_rounded=False, p_rule=None, wrap=False, other_div=False, ef_bits=64):
    """``softmax._exp_norm_ref``.  ``masked_in_sum``: masked columns' DI-Exp (of 0, = T) enter
    S; ``recip_rounded``: ``f`` rounded half up, not floored; ``p_rule``: the rounding of
    p; ``wrap``: p wraps modulo 2^p_out instead of saturating; ``other_div``: the IntDiv
    form the spec did not choose; ``ef_bits``: the width of the ``e * f`` register."""
    zero = mr == 0
    xq = np.where(vis & ~zero[:, None], xq, 0)
    T, j = _exp_unit_ref(np.where(zero, 1, mr), np.where(zero, 0, kr), code)
    e_all = _exp_apply_ref(xq, T[:, None], j[:, None], code)
    e = np.where(vis, e_all, 0)
    S = (e_all if masked_in_sum else e).sum(axis=-1)
    Sd = np.maximum(S, 1)[:, None]
    pcode = _site(p_rule, code)
    if recip != other_div:
        top = np.int64(2 ** RECIP_BITS - 1)
        f = _div_round_ref(top, Sd, RC_HALF_UP) if recip_rounded else top // Sd
        ef = e * f if ef_bits >= 64 else wrap_signed(e * f, ef_bits)
        p = _rshift_round_ref(ef, np.int64(RECIP_BITS - F), pcode)
    else:
        p = _div_round_ref(e << np.int64(F), Sd, pcode)
    return (p & p_max if wrap else np.minimum(p, p_max)).astype(np.int64)


# ------------------------------------------------------------ DI-Norm (norm._di_norm_ref)

def norm_variant(q, zp, n_c, p2, p_fixed, m_bits, k_lo, k_hi, code, *, p_delta=0,
                 fixed16=False, mean_first=False):
    """``norm._di_norm_ref``.  ``p_delta``: step 2's pre-shift P moved by this many (>= 0
    kept); ``fixed16``: the fixed pre-shift of a 16-bit input replaces the per-row one;
    ``mean_first``: ``sumsq // C`` before the square root and ``n_C = 1`` (the division
    the spec folds into the constant)."""
    d = q.astype(np.int64) - zp.astype(np.int64)[..., None]
    sumsq = (d * d).sum(axis=-1)
    zero = sumsq == 0
    if mean_first:
        sumsq = sumsq // q.shape[-1]
        n_c, p2 = 1 << 30, 30
    if fixed16 and p_fixed < 0:
        p_fixed = fixed_preshift(q.shape[-1], 16)
    p = (SUMSQ_BITS - bit_length_ref(sumsq)) >> 1 if p_fixed < 0 else np.full(sumsq.shape, p_fixed)
    p = np.where(zero, 0, np.maximum(p + p_delta, 0))
    r = np.where(zero, 1, np.maximum(_isqrt_ref(sumsq << (2 * p)), 1))
    m, e, sat = _fit_ref(np.int64(n_c), r, m_bits, k_lo - p2 + p, k_hi - p2 + p, code)
    k0 = min(max(0, k_lo), k_hi)
    k = np.where(m == 0, k0, e + p2 - p)
    return (np.where(zero, 0, m).astype(np.int64), np.where(zero, k0, k).astype(np.int64),
            int(np.count_nonzero(sat & ~zero)))


# ------------------------------------------------------------ RoPE, residual, fold, DI-MatMul

def rope_variant(q, zp, pos, cos_q, sin_q, n_heads, head_dim, drop_bits, code, *,
                 interleaved=False, reversed_=False, wrap_bits=0):
    """``rope._rope_ref``.  ``interleaved``: channel 2i pairs with 2i + 1 (Meta's layout);
    ``reversed_``: the rotation by -angle (sin's sign flipped); ``wrap_bits``: the products'
    register width (0: int64)."""
    T, hd2 = q.shape[0], head_dim // 2
    d = (q.astype(np.int64) - zp.astype(np.int64)[:, None]).reshape(T, n_heads, head_dim)
    a, b = (d[..., 0::2], d[..., 1::2]) if interleaved else (d[..., :hd2], d[..., hd2:])
    c = cos_q[pos].astype(np.int64)[:, None, :]
    s = sin_q[pos].astype(np.int64)[:, None, :]
    y1, y2 = (a * c + b * s, b * c - a * s) if reversed_ else (a * c - b * s, a * s + b * c)
    y = np.stack([y1, y2], axis=-1) if interleaved else np.concatenate([y1, y2], axis=-1)
    y = y.reshape(T, n_heads * head_dim)
    if wrap_bits:
        y = wrap_signed(y, wrap_bits)
    return _rshift_round_ref(y, np.int64(drop_bits), code) if drop_bits else y


def align_variant(qa, za, ma, ka, qb, zb, mb, kb, code, *, to_coarse=False):
    """``residual._align_ref``.  ``to_coarse``: the fine term is always rounded to the coarse
    exponent (the paper's "align with a rounding shift"), instead of the coarse term being
    shifted to the fine one whenever that fits 60 bits."""
    va = (qa.astype(np.int64) - za[:, None]) * ma[:, None]
    vb = (qb.astype(np.int64) - zb[:, None]) * mb[:, None]
    a_coarse = ka <= kb
    vc, vf = np.where(a_coarse[:, None], va, vb), np.where(a_coarse[:, None], vb, va)
    kc, kf = np.minimum(ka, kb), np.maximum(ka, kb)
    L = bit_length_ref(np.abs(vc).max(axis=1))
    if to_coarse:
        sc, K = np.zeros_like(kc), kc
    else:
        sc = np.where(L == 0, 0, np.minimum(kf - kc, ALIGN_BITS - L))
        K = np.where(L == 0, kf, kc + sc)
    sf = kf - K
    s = (vc << sc[:, None]) + _rshift_round_ref(vf, sf[:, None], code)
    return s, K, int(np.count_nonzero((sf > 0) & (vf != 0).any(axis=1)))


def fold_variant(v, m, k, vis, guard, code, *, kref_all=False):
    """``attention._fold_ref``.  ``kref_all``: the row's reference exponent is the minimum
    over all columns, the masked ones included (prefill then differs from decode)."""
    big = np.int64(2 ** 62)
    kref = np.where(vis | kref_all, k, big).min(axis=-1)
    kref = np.where(kref == big, 0, kref)
    sh = np.where(vis, k - kref[..., None], 0)
    out = _rshift_round_ref((v * m) << np.int64(guard), sh, code)
    return np.where(vis, out, 0), kref


def acc_variant(xq, zx, w, *, offset=True, acc_bits=0):
    """``matmul._di_acc_ref``.  ``offset``: the fold's ``b * xs`` term (False: dropped);
    ``acc_bits``: the group accumulator's register width (0: int64)."""
    T, K = xq.shape
    N, G, ng = w.q.shape[0], w.group_size, w.n_groups
    xg = (xq.astype(np.int64) - zx.astype(np.int64)[:, None]).reshape(T, ng, G)
    qg = w.q.astype(np.int64).reshape(N, ng, G)
    acc = np.zeros((T, N, ng), dtype=np.int64)
    for g in range(ng):
        acc[:, :, g] = xg[:, g, :] @ qg[:, g, :].T
    if acc_bits:
        acc = wrap_signed(acc, acc_bits)
    P = (acc * w.m[None, :, :]).sum(axis=2)
    if offset:
        P = P + (xg.sum(axis=2)[:, None, :] * w.b[None, :, :]).sum(axis=2)
    return P, int(np.abs(acc).max()) if acc.size else 0


# ------------------------------------------------------------ the graph (llama.head_in_bits, pv_in_bits)

def head_in_bits_variant(widths, *, use_a=False):
    """``llama.head_in_bits``: the LM head's input width.  ``use_a``: the layers' A,
    whatever ``head_a_bits`` says (a head wired to the activation width of the layers)."""
    return widths.a_bits if use_a else widths.head_in_bits


def pv_in_bits_variant(widths, *, use_a=False):
    """``llama.pv_in_bits``: the probabilities' width into PV.  ``use_a``: A, whatever
    ``pv_bits`` says (a PV datapath whose probability port was sized for A-bit codes)."""
    return widths.a_bits if use_a else widths.pv_in_bits


# ------------------------------------------------------------ group-wise activations (matmul, SPEC 4.8)

def group_codes_variant(v, m_in, k_in, bits, Ga, spec, *, shared_zero_point=False, emax=None):
    """``matmul._group_codes_ref``.  ``shared_zero_point``: every group keeps the row's
    zero point (one zero point per token, as the per-token quantizer has), its codes
    clamped into [0, Q]; ``emax``: the group exponent's cap instead of E."""
    from .matmul import A_GROUP_EMAX, group_codes_with
    return group_codes_with(v, m_in, k_in, bits, Ga, spec, A_GROUP_EMAX if emax is None else emax,
                            shared_zero_point)


def group_fold_variant(xq, zg, eg, w, Ga, Gf, *, shift_by_e=False):
    """``matmul._di_acc_grp_ref``.  ``shift_by_e``: each group's term is shifted left by its
    own exponent e instead of E - e (the alignment inverted)."""
    from .matmul import A_GROUP_EMAX
    T, K = xq.shape
    P = np.zeros((T, w.q.shape[0]), dtype=np.int64)
    amax = 0
    for f0 in range(0, K, Gf):
        sl = slice(f0, min(K, f0 + Gf))
        a, wg = f0 // Ga, f0 // w.group_size
        xc = xq[:, sl].astype(np.int64) - zg[:, a][:, None]
        acc = xc @ w.q[:, sl].astype(np.int64).T
        amax = max(amax, int(np.abs(acc).max()) if acc.size else 0)
        term = acc * w.m[None, :, wg] + xc.sum(axis=1)[:, None] * w.b[None, :, wg]
        sh = eg[:, a] if shift_by_e else A_GROUP_EMAX - eg[:, a]
        P += term << sh[:, None]
    return P, amax


# ------------------------------------------------------------ online Hadamard rotation (SPEC 7.6)

def fwht_variant(y, b, code, *, growth_bits=True, diff_reversed=False, block_div=1):
    """``hadamard._fwht_ref``.  ``growth_bits``: False leaves log2 b out of the pre-shift,
    ``sh = max(0, bitlen(max|y|) - 60)`` (the transform's growth not budgeted: outputs up to
    2^(60 + log2 b), wrapping in int64 beyond 2^63); ``diff_reversed``: each butterfly's
    difference is taken ``c - a`` instead of ``a - c``; ``block_div``: the butterflies stop
    at blocks of ``b / block_div`` (stages missing)."""
    from .hadamard import ROT_OUT_BITS
    T, C = y.shape
    lb = b.bit_length() - 1
    L = bit_length_ref(np.abs(y).max(axis=1)) if C else np.zeros(T, dtype=np.int64)
    sh = np.maximum(L + (lb if growth_bits else 0) - ROT_OUT_BITS, 0).astype(np.int64)
    z = _rshift_round_ref(y, sh[:, None], code)
    h = 1
    while h < b // block_div:
        z = z.reshape(T, C // (2 * h), 2, h)
        a, c = z[:, :, 0, :], z[:, :, 1, :]
        z = np.stack([a + c, c - a if diff_reversed else a - c], axis=2)
        h *= 2
    return z.reshape(T, C), sh


# ------------------------------------------------------------ two-step group scales (matmul, SPEC 4.9)

def two_step_variant(acc, xs, c, u, beta, *, inner_bits=0, offset_unfactored=False):
    """``matmul._fold_two_step_ref``.  ``inner_bits``: the inner sum held in a register that
    wide (wraps; 0: int64); ``offset_unfactored``: the offset term multiplies the weight's
    own ``b = c beta`` instead of ``beta`` (a datapath that factors the mantissas but not
    the offsets)."""
    b = c[:, None] * beta if offset_unfactored else beta
    inner = (acc * u[None, :, :]).sum(axis=2) + (xs[:, None, :] * b[None, :, :]).sum(axis=2)
    if inner_bits:
        inner = wrap_signed(inner, inner_bits)
    return inner, inner * c[None, :]
