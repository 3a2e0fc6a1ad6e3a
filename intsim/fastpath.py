"""The fused fast path of ``forward()`` on the Numba backend: the same integers, fewer crossings.

``forward(model, ids, cache)`` (intsim.llama) is the executable spec: one Python call per
operator, each validating its arguments and wrapping its result in ``QTensor`` /
``Dyadic``.  That costs ~750 Python crossings per token.  This module computes the SAME
integers in one compiled call per ``forward()``: the layer loop runs inside Numba and
calls row kernels that repeat each operator's arithmetic step for step on raw arrays.
Nothing here is a new rounding or a new bound; where an operation is computed another
way, the two are equal as integers (proof next to the code) and the tests hold this
path equal to the reference for the whole forward and for every kernel.

What differs from the op-by-op path (all exact):

* one input quantization per distinct input: q/k/v (and gate/up) read the same
  normed tensor, so ``requant_rows`` of it runs once, not three times (deterministic);
* the requantizer's per-element division by the row's fitted scale (``fitted`` mode)
  uses ``floor(a / (m 2^s)) = floor(floor(a / 2^s) / m)`` and an exact reciprocal
  multiply for the small divide; floor and half_up fold the rounding into the dividend
  (``requant_row``), the other rules recompute the remainder (``_div_by_scale``);
* DI-Exp's ``floor(n / T)`` uses the same reciprocal form (``_exp_apply_fast``); with
  unit 1/alpha, DI-SwiGLU's sigmoid code is tabulated per row over the gate codes;
* every tie rule is evaluated without data-dependent branches (``_round_bl``,
  ``_rshift_bl``, ``_div_round_bl``): the same values, no mispredicted branches;
* attention works per query row over the row's visible positions only: masked
  columns are exact zeros in the op-by-op path, and every step they enter (row max and
  min over a range that always contains 0, sums, matmuls) is unchanged by zeros;
  QK^T and PV run on raw codes in the vector tile of intsim.fastgemm, with the zero
  points applied after: ``sum (q - zq)(k - zk) = sum q k - zk sum q - zq sum k +
  hd zq zk``;
* the matmuls read the row-layout weights in 3 x 3 vector tiles (prefill), or packed
  copies with one contiguous stream per 8 output channels (one token row; q/k/v and
  gate/up stacked into one matrix each), intsim.fastgemm.

Threads: with ``numba.get_num_threads() > 1`` a prefill (T > 1) splits every stage
over threads (9 parallel regions per layer); one token row runs on one thread unless
``GEMV_PARALLEL``.  Parallel regions wait for every thread, so a second process on the
same cores slows them down badly: run with NUMBA_NUM_THREADS=1 when sharing cores.

The op-by-op path still runs when a ``tap`` observes intermediates, and as the fallback
whenever this path cannot prove a bound statically or does not cover a configuration
(:func:`prepare` returns None: e.g. a group size that is not a multiple of 16), for a
cache not made by ``KVCache.empty``, a mask whose rows are not one range, or after a
scale saturated under ``overflow = "raise"`` (the op-by-op path then raises the error
naming the operator).

Numba caches compiled code per source file: this module's cache does not notice edits
to the kernels it calls in other intsim modules; clear ``__pycache__/*.nbi`` after
changing those.
"""
from __future__ import annotations

import weakref

import numba
import numpy as np
from numba import njit, prange, typed

from .errors import IntsimError, IntsimOverflowError
# absolute import: the float scan (tests/test_no_float.py) flags a module named "exp"
from intsim.exp import T_BITS, exp_unit_nb
from .fastgemm import (VEC, PackedWeight, dot_tile_flat, gemm_acc_multi, gemm_acc_multi_par,
                       gemv_acc_packed, gemv_acc_packed_par)
from .fixedpoint import (bit_length_nb, div_round_nb, dyadic_fit_nb, isqrt_nb,
                         rounding_code, rshift_round_nb)
from .head import inv_sqrt_dyadic
from .matmul import check_bounds
from .norm import NORM_C_LIMIT, SUMSQ_BITS, fixed_preshift, sqrt_c_const
from .qtensor import Dyadic, dtype_for
from .requant import M_IN_LIMIT, PRE_BITS, _code_div_nb
from .residual import ALIGN_BITS
from .softmax import RECIP_BITS, _clip_threshold_nb
from .swiglu import ALPHA_K_LIMIT, FIT_BITS, GUARD_LIMIT

# the attention folds' guard bits (intsim.llama, SPEC section 14)
GUARD_K, GUARD_V, GUARD_O = 16, 16, 12

#: reciprocal precision of the requantizer's small divide: M = floor(2^46 / m), m < 2^16
RECIP_SHIFT = 46
#: reciprocal precision of DI-Exp's floor(n / T): MT = floor(2^57 / T), T <= 2^30
EXP_SHIFT = 57
#: a DI-Exp quotient q >= EXP_Q_ZERO gives 0 (e >> q with e <= 2^30)
EXP_Q_ZERO = 63
#: padding columns of the transposed values (KVCache.v_t): PV tiles read up to 15
#: positions past the last visible one, against zero probabilities
VT_PAD = VEC
#: I32 accumulator limit of the attention matmuls
I32_MAX = 2 ** 31 - 1
#: the fold bound |vals * m| << guard <= 2^62 - 1 (attention.fold_scales)
FOLD_LIMIT = 2 ** 62 - 1

# ------------------------------------------------------------------ config slots
(C_CODE, C_MBITS, C_KLO, C_KHI, C_FITTED, C_A, C_QKB, C_RESB, C_SWB, C_INB, C_CLIP, C_F,
 C_PMAX, C_RECIP, C_SIGB, C_ROWMAX, C_GSW, C_ROPEF, C_DROP, C_NC, C_P2, C_PFIX_EMB, C_PFIX_RES,
 C_INVM, C_INVK, C_H, C_HKV, C_HD, C_EMBB, C_PAR, C_GEMV_PAR, C_PACKED, C_NCONF) = range(33)


# ------------------------------------------------------------------ row primitives

@njit(cache=True, inline="always")
def _round_bl(q, r, d, neg, code):
    """``fixedpoint._round_qr_nb`` without branches on the data (same values): rounds
    ``q + r/d`` (0 <= r < d) by ``code``; the comparisons become 0/1 integers, so a
    random remainder costs no branch misprediction.  ``2r < 2d <= 2^63`` (callers)."""
    if code == 0:
        return q
    if code == 4:
        return q + np.int64(r > 0)
    two_r = 2 * r
    up = np.int64(two_r > d)
    tie = np.int64(two_r == d)
    if code == 1:                                      # half_up: ties toward +inf
        return q + up + tie
    if code == 2:                                      # half_even: ties to the even one
        return q + up + (tie & q)
    return q + up + (tie & np.int64(not neg))          # half_away: ties away from 0


@njit(cache=True, inline="always")
def _div_round_bl(a, b, code):
    """``fixedpoint.div_round_nb`` (b >= 1) with branch-free rounding (same values)."""
    q = a // b
    return _round_bl(q, a - q * b, b, a < 0, code)


@njit(cache=True, inline="always")
def _rshift_bl(x, s, code):
    """``fixedpoint.rshift_round_nb`` (|x| <= 2^62 - 1, s >= 0), same values, without a
    branch on s for 0 <= s <= 62: floor is ``x >> s``; half_up is ``(x + h) >> s`` with
    ``h = (2^s) >> 1`` (= floor(x / 2^s + 1/2); h = 0 at s = 0; |x| + h < 2^63); the other
    rules read the remainder (s = 0: remainder 0, so q = x)."""
    if s >= 63:
        return rshift_round_nb(x, s, code)
    if code == 1:
        return (x + ((np.int64(1) << s) >> 1)) >> s
    if code == 0:
        return x >> s
    q = x >> s
    return _round_bl(q, x - (q << s), np.int64(1) << s, x < 0, code)


@njit(cache=True, inline="always")
def _div_by_scale(a, s, mi, Q1, U, M, code):
    """``rnd(a / (mi * 2^s))`` (tie rule ``code``), equal to ``div_round_nb(a, mi << s)``.

    Proof.  ``n = a >> s = floor(a / 2^s)``; for an integer ``mi >= 1``
    ``floor(n / mi) = floor(a / (mi 2^s))`` =: q.  With ``u = n + Q1 * mi`` (Q1 = Q + 1)
    the requantizer's bound ``|a / (mi 2^s)| <= Q`` gives ``0 <= u < U = 2 Q1 mi``
    (else: the exact divide below).  ``M = floor(2^46 / mi)``: ``u M <= u 2^46 / mi <
    2 Q1 2^46 <= 2^63`` (Q <= 2^16 - 1), and ``u / mi - u M / 2^46 < u / 2^46 < 1``
    (u < 2^33), so ``q0 = (u M) >> 46`` is ``floor(u / mi)`` or one less; one remainder
    test fixes it.  Then ``q = q0 - Q1``, and the remainder of a by ``D = mi 2^s`` is
    ``r = (r0 << s) + (a - (n << s))`` in ``[0, D)``; the rounding reads (q, r, D, sign)
    exactly as ``div_round_nb``.  ``D <= 2^62`` (the caller's by-scale condition).
    """
    n = a >> s
    u = n + Q1 * mi
    if u < 0 or u >= U:
        return _div_round_bl(a, mi << s, code)
    q0 = (u * M) >> RECIP_SHIFT
    r0 = u - q0 * mi
    if r0 >= mi:
        q0 += 1
        r0 -= mi
    return _round_bl(q0 - Q1, (r0 << s) + (a - (n << s)), mi << s, a < 0, code)


@njit(cache=True)
def requant_row(v, zin, m_in, k_in, bits, symmetric, m_bits, k_lo, k_hi, code, fitted, out):
    """One row of ``requant_rows`` (intsim.requant, SPEC section 3), same integers.

    ``v``: 1-d integers, real value ``(v - zin) * m_in * 2^-k_in``; ``out``: 1-d integer
    array receiving the codes.  Returns ``(zp, m, k, saturated)``.  Steps and bounds as
    ``requant._requant_nb``; the by-scale codes use :func:`_div_by_scale`.
    """
    C = v.shape[0]
    Q = (np.int64(1) << (bits - 1)) - 1 if symmetric else (np.int64(1) << bits) - 1
    vmin = np.int64(v[0]) - zin
    vmax = vmin
    for j in range(1, C):
        x = np.int64(v[j]) - zin
        if x < vmin:
            vmin = x
        if x > vmax:
            vmax = x
    if symmetric:
        R = max(abs(vmin), abs(vmax))
    else:
        R = max(vmax, 0) - min(vmin, 0)
    sh = max(bit_length_nb(R) - PRE_BITS, 0)
    vmin >>= sh
    vmax >>= sh
    if symmetric:
        Rs = max(abs(vmin), abs(vmax))
        lo = np.int64(0)
    else:
        lo = min(vmin, 0)
        Rs = max(vmax, 0) - lo
    k0 = np.int64(min(max(0, k_lo), k_hi))
    if Rs == 0:
        for j in range(C):
            out[j] = 0
        return np.int64(0), np.int64(0), k0, 0
    mi, e, sat = dyadic_fit_nb(m_in * Rs, Q, m_bits, k_lo - k_in + sh, k_hi - k_in + sh,
                               4 if fitted else code)
    k = e + k_in - sh if mi != 0 else k0
    by_scale = fitted and not sat and mi > 0 and bit_length_nb(mi) - min(e, 0) <= 62
    qlo = -Q if symmetric else np.int64(0)
    if by_scale and (code == 0 or code == 1):
        # floor / half_up: q = floor(X / Dd) with X = ((a << sl) + cadd) >> sr:
        #   floor   e >= 0: X = a << e,                   Dd = mi
        #           e <  0: X = a >> s,                   Dd = mi    (floor(floor(a/2^s)/mi))
        #   half_up e >= 0: X = (a << (e + 1)) + mi,      Dd = 2 mi  (floor(a 2^e / mi + 1/2))
        #           e <  0: X = (2a + mi 2^s) >> (s + 1), Dd = mi    (floor(a / D + 1/2))
        # |a 2^e / mi| <= Q (module proof of _div_by_scale), so X / Dd lies in [-Q1, Q1):
        # u = X + Q1 Dd in [0, 2 Q1 Dd), 2 Q1 Dd <= 2^34, and q = floor(u / Dd) - Q1 by
        # the reciprocal M = floor(2^46 / Dd) (u M < 2 Q1 2^46 <= 2^63, error < 2^-12) and
        # one 0/1 correction.  |2a + mi 2^s| <= 2^61 + 2^62.  Branch-free; a violated
        # range (impossible by the proof) is detected and the row redone exactly.
        z = _code_div_nb(-lo * m_in, mi, e, code)
        Q1 = Q + 1
        if e >= 0:
            sl, sr = e + code, np.int64(0)
            cadd = mi if code == 1 else np.int64(0)
            Dd = mi << code
        else:
            sl, sr = np.int64(code), -e + code
            cadd = (mi << -e) if code == 1 else np.int64(0)
            Dd = mi
        U = 2 * Q1 * Dd
        M = (np.int64(1) << RECIP_SHIFT) // Dd
        bad = np.int64(0)
        for j in range(C):
            a = ((np.int64(v[j]) - zin) >> sh) * m_in
            u = (((a << sl) + cadd) >> sr) + Q1 * Dd
            bad |= np.int64(u < 0) | np.int64(u >= U)
            q0 = (u * M) >> RECIP_SHIFT
            q0 += np.int64(u - q0 * Dd >= Dd)
            out[j] = min(max(q0 - Q1 + z, qlo), Q)
        if bad == 0:
            return z, mi, k, 1 if sat else 0
    if by_scale:
        z = _code_div_nb(-lo * m_in, mi, e, code)
        Q1 = Q + 1
        U = 2 * Q1 * mi
        M = (np.int64(1) << RECIP_SHIFT) // mi
        if e >= 0:
            for j in range(C):
                a = ((np.int64(v[j]) - zin) >> sh) * m_in
                t = _div_by_scale(a << e, 0, mi, Q1, U, M, code) + z
                out[j] = min(max(t, qlo), Q)
        else:
            s = -e
            for j in range(C):
                a = ((np.int64(v[j]) - zin) >> sh) * m_in
                t = _div_by_scale(a, s, mi, Q1, U, M, code) + z
                out[j] = min(max(t, qlo), Q)
    else:
        z = np.int64(0) if symmetric else div_round_nb(-lo * Q, Rs, code)
        for j in range(C):
            t = _div_round_bl(((np.int64(v[j]) - zin) >> sh) * Q, Rs, code) + z
            out[j] = min(max(t, qlo), Q)
    return z, mi, k, 1 if sat else 0


@njit(cache=True)
def norm_row(x, zp, n_c, p2, p_fixed, m_bits, k_lo, k_hi, code):
    """One row of DI-Norm (intsim.norm._di_norm_nb): returns ``(m, k, saturated)``."""
    k0 = np.int64(min(max(0, k_lo), k_hi))
    sumsq = np.int64(0)
    for j in range(x.shape[0]):
        d = np.int64(x[j]) - zp
        sumsq += d * d                                # <= C (2^16 - 1)^2 < 2^48
    if sumsq == 0:
        return np.int64(0), k0, 0
    if p_fixed < 0:
        p = (SUMSQ_BITS - bit_length_nb(sumsq)) >> 1
    else:
        p = p_fixed
    r = isqrt_nb(sumsq << (2 * p))
    mi, e, sat = dyadic_fit_nb(np.int64(n_c), r, m_bits, k_lo - p2 + p, k_hi - p2 + p, code)
    k = e + p2 - p if mi != 0 else k0
    return mi, k, 1 if sat else 0


@njit(cache=True, inline="always")
def _exp_apply_fast(x, T, j, MT, code):
    """DI-Exp steps 2-5 (``intsim.exp.exp_apply_nb``), same integer, x <= 0.

    ``n = -x'`` >= 0.  ``n >= 63 T`` means ``q = floor(n / T) >= 63``: 0, as the
    original.  Else ``n < 63 T <= 63 * 2^30``, ``MT = floor(2^57 / T)``: ``n MT <
    63 * 2^57 < 2^63`` and ``n / T - n MT / 2^57 < n / 2^57 < 1``, so ``(n MT) >> 57`` is
    q or q - 1; one remainder test fixes it.  ``r = q T - n = -(n - q T)``.
    """
    if j > 0:
        x = _rshift_bl(x, j, code)
    n = -x
    if n >= EXP_Q_ZERO * T:
        return np.int64(0)
    q = (n * MT) >> EXP_SHIFT
    r0 = n - q * T
    if r0 >= T:
        q += 1
        r0 -= T
    e = ((-r0) >> 1) + T
    return e >> q


@njit(cache=True)
def rope_head(q, zq, p, cos_q, sin_q, base, hd, drop, code, y):
    """RoPE of one head (``rope._rope_nb``): ``y[i] = a c - b s``, ``y[i + hd/2] = a s + b c``,
    |.| <= 2^(17 + f) (f <= 24); ``drop`` > 0 rounds right by ``drop`` bits."""
    hd2 = hd // 2
    for i in range(hd2):
        a = np.int64(q[base + i]) - zq
        b = np.int64(q[base + hd2 + i]) - zq
        c = np.int64(cos_q[p, i])
        s = np.int64(sin_q[p, i])
        y1 = a * c - b * s
        y2 = a * s + b * c
        if drop:
            y1 = _rshift_bl(y1, drop, code)
            y2 = _rshift_bl(y2, drop, code)
        y[i] = y1
        y[hd2 + i] = y2


@njit(cache=True)
def residual_row(qa, ma, ka, qb, mb, kb, code, s):
    """``residual._align_nb`` for one row of two zero-point-0 operands: fills ``s`` and
    returns the common exponent K.  |s| < 2^60 + 2^47 (residual_add's proof)."""
    C = qa.shape[0]
    a_coarse = ka <= kb
    kc = min(ka, kb)
    kf = max(ka, kb)
    amax = np.int64(0)
    for j in range(C):
        vc = np.int64(qa[j]) * ma if a_coarse else np.int64(qb[j]) * mb
        amax = max(amax, abs(vc))
    L = bit_length_nb(amax)
    sc = np.int64(0) if L == 0 else min(kf - kc, ALIGN_BITS - L)
    K = kf if L == 0 else kc + sc
    sf = kf - K
    for j in range(C):
        va = np.int64(qa[j]) * ma
        vb = np.int64(qb[j]) * mb
        vc = va if a_coarse else vb
        vf = vb if a_coarse else va
        s[j] = (vc << sc) + _rshift_bl(vf, sf, code)
    return K


@njit(cache=True, inline="always")
def _sigmoid_code(z, M, T, j, MT, e2, B, rowmax, code):
    """DI-SwiGLU's sigmoid code of one z (``swiglu._sigmoid_row_nb``), same integer."""
    if not rowmax:
        e = _exp_apply_fast(-abs(z), T, j, MT, code)       # |z| <= 2^56, e <= T
        num = T if z >= 0 else e
        return _div_round_bl(num << B, T + e, code)        # T 2^B <= 2^54, T + e <= 2^31
    e1 = _exp_apply_fast(z - M, T, j, MT, code)            # z - M >= -2^57
    den = e1 + e2
    if den == 0:
        return np.int64(0)                                  # 0/0 (both underflow) -> 0
    return _div_round_bl(e1 << B, den, code)


@njit(cache=True)
def swiglu_row(g, zg, mg, kg, u, zu, mu, ku, mc, ka, unit_alpha, cfg, y):
    """One row of DI-SwiGLU (``swiglu._swiglu_nb`` + ``_out_scale_nb``): fills ``y`` and
    returns its scale ``(m, k)``.  Bounds: |z| <= 2^56, e <= T <= 2^30, T 2^B <= 2^54.

    With every 1/alpha = 1 (``unit_alpha``) the sigmoid code depends on the row and the
    gate code only (z = (g - zg) << guard), so when the 2^b possible codes are no more
    than the row's columns it is tabulated once per code: the same integers with fewer
    divides.
    """
    code = cfg[C_CODE]
    gd = cfg[C_GSW]
    B = cfg[C_SIGB]
    rowmax = cfg[C_ROWMAX] != 0
    C = g.shape[0]
    dead = mg == 0 or mu == 0
    kz = kg + ka + gd
    T, j = exp_unit_nb(max(mg, np.int64(1)), kz, code)
    MT = (np.int64(1) << EXP_SHIFT) // T
    M = np.int64(0)
    e2 = np.int64(0)
    if rowmax:
        for c in range(C):
            M = max(M, ((np.int64(g[c]) - zg) * mc[c]) << gd)
        e2 = _exp_apply_fast(-M, T, j, MT, code)
    ncodes = np.int64(1) << cfg[C_SWB]
    if unit_alpha and ncodes <= C:
        tab = np.empty(ncodes, dtype=np.int64)
        for q in range(ncodes):
            tab[q] = _sigmoid_code((q - zg) << gd, M, T, j, MT, e2, B, rowmax, code)
        for c in range(C):
            a1 = np.int64(g[c]) - zg
            a2 = np.int64(0) if dead else np.int64(u[c]) - zu
            y[c] = a1 * tab[g[c]] * a2
    else:
        for c in range(C):
            a1 = np.int64(g[c]) - zg
            a2 = np.int64(0) if dead else np.int64(u[c]) - zu
            y[c] = a1 * _sigmoid_code((a1 * mc[c]) << gd, M, T, j, MT, e2, B, rowmax, code) * a2
    mm = mg * mu                                       # <= 2^56
    kk = kg + ku + B
    if mm <= M_IN_LIMIT:
        return mm, kk
    mf, e, _ = dyadic_fit_nb(mm, np.int64(1), FIT_BITS, np.int64(-64), np.int64(0), code)
    return mf, kk + e


# ------------------------------------------------------------------ stage rows

@njit(cache=True)
def _norm_quant_row(t, h, hbits_pfix, cfg, xq, zx, mx, kx, g, gk, gu):
    """DI-Norm of stream row t, its per-channel weight ``g`` (``norm.norm_weight``: exact
    ``h * g``, |.| < 2^31, exponent ``+ gk``; skipped when ``gu``: no weight), then
    DI-MatMul's input quantization to A bits."""
    code, m_bits, k_lo, k_hi = cfg[C_CODE], cfg[C_MBITS], cfg[C_KLO], cfg[C_KHI]
    mn, kn, s1 = norm_row(h[t], np.int64(0), cfg[C_NC], cfg[C_P2], hbits_pfix, m_bits, k_lo,
                          k_hi, code)
    if gu:
        z, m, k, s2 = requant_row(h[t], np.int64(0), mn, kn, cfg[C_A], False, m_bits, k_lo,
                                  k_hi, code, cfg[C_FITTED] != 0, xq[t])
    else:
        D = h.shape[1]
        v = np.empty(D, dtype=np.int64)
        for j in range(D):
            v[j] = np.int64(h[t, j]) * g[j]
        z, m, k, s2 = requant_row(v, np.int64(0), mn, kn + gk, cfg[C_A], False, m_bits, k_lo,
                                  k_hi, code, cfg[C_FITTED] != 0, xq[t])
    zx[t], mx[t], kx[t] = z, m, k
    return s1 + s2


@njit(cache=True)
def _qkv_row(t, Pq, Pk, Pv, mx, kx, wk3, pos, cos_q, sin_q, cfg, past,
             Qh, zq, qm, qk, Kq, Kzp, Km, Kk, Vq, Vzp, Vm, Vk, kpar, VT):
    """q/k/v outputs of token t: requant to qk_bits (q, k) and A bits (v); RoPE; Q and K
    per (token, head) at A bits; K and V written to the cache at past + t, with the
    cache's derived copies (``KVCache.k_par``, ``v_t``)."""
    code, m_bits, k_lo, k_hi = cfg[C_CODE], cfg[C_MBITS], cfg[C_KLO], cfg[C_KHI]
    fitted = cfg[C_FITTED] != 0
    A, H, Hkv, hd = cfg[C_A], cfg[C_H], cfg[C_HKV], cfg[C_HD]
    fshift = cfg[C_ROPEF] - cfg[C_DROP]
    sat = 0
    p = pos[t]
    y = np.empty(hd, dtype=np.int64)
    hq = np.empty(Pq.shape[1], dtype=np.int32)
    _, mq, kq, s = requant_row(Pq[t], np.int64(0), mx[t], kx[t] + wk3[0], cfg[C_QKB], True,
                               m_bits, k_lo, k_hi, code, fitted, hq)
    sat += s
    for h in range(H):
        rope_head(hq, np.int64(0), p, cos_q, sin_q, h * hd, hd, cfg[C_DROP], code, y)
        z, m, k, s = requant_row(y, np.int64(0), mq, kq + fshift, A, False, m_bits, k_lo, k_hi,
                                 code, fitted, Qh[t, h])
        zq[t, h], qm[t, h], qk[t, h] = z, m, k
        sat += s
    hk = np.empty(Pk.shape[1], dtype=np.int32)
    _, mk, kk, s = requant_row(Pk[t], np.int64(0), mx[t], kx[t] + wk3[1], cfg[C_QKB], True,
                               m_bits, k_lo, k_hi, code, fitted, hk)
    sat += s
    at = past + t
    for g in range(Hkv):
        rope_head(hk, np.int64(0), p, cos_q, sin_q, g * hd, hd, cfg[C_DROP], code, y)
        z, m, k, s = requant_row(y, np.int64(0), mk, kk + fshift, A, False, m_bits, k_lo, k_hi,
                                 code, fitted, Kq[at, g])
        Kzp[at, g], Km[at, g], Kk[at, g] = z, m, k
        ksum = np.int64(0)
        for d in range(hd):
            ksum += Kq[at, g, d]
        kpar[g, 0, at], kpar[g, 1, at], kpar[g, 2, at], kpar[g, 3, at] = z, m, k, ksum
        sat += s
    z, m, k, s = requant_row(Pv[t], np.int64(0), mx[t], kx[t] + wk3[2], A, False, m_bits, k_lo,
                             k_hi, code, fitted, Vq[at])
    Vzp[at], Vm[at], Vk[at] = z, m, k
    for g in range(Hkv):
        for d in range(hd):
            VT[g, d, at] = Vq[at, g * hd + d]
    return sat + s


@njit(cache=True)
def _qk_raw(Qh, t, h, Kq, g, lo, n, tiled, raw):
    """``raw[jj] = sum_d q[t, h, d] k[lo + jj, g, d]`` (raw codes, int32: both >= 0, so
    every partial sum is at most hd (2^A - 1)^2 <= 2^31 - 1, checked in prepare)."""
    H, hd = Qh.shape[1], Qh.shape[2]
    Hkv = Kq.shape[1]
    if tiled:                        # hd % 16 == 0: 1 x 8 vector tiles over the keys
        xoff = (t * H + h) * hd
        s8 = np.empty(8, dtype=np.int32)
        jj = 0
        while jj + 8 <= n:
            dot_tile_flat(Qh, xoff, 0, Kq, ((lo + jj) * Hkv + g) * hd, VEC, Hkv * hd, hd // VEC,
                          s8, 1, 8)
            for c in range(8):
                raw[jj + c] = s8[c]
            jj += 8
        while jj < n:
            dot_tile_flat(Qh, xoff, 0, Kq, ((lo + jj) * Hkv + g) * hd, VEC, 0, hd // VEC, s8, 1, 1)
            raw[jj] = s8[0]
            jj += 1
    else:
        for jj in range(n):
            a32 = np.int32(0)
            for d in range(hd):
                a32 += np.int32(Qh[t, h, d]) * np.int32(Kq[lo + jj, g, d])
            raw[jj] = a32


@njit(cache=True)
def _attn_row(t, h, Qh, zq, sm, sk, Kq, kpar, Vq, VT, Vzp, Vm, Vk, lo, hi, cfg, att, pm, pk,
              raw, sc, cq, pb):
    """Attention of query (token t, head h) over cached positions [lo, hi): scores, the
    key-scale fold, DI-ClippedSoftmax, the value-scale fold, requant to A bits, PV.
    Section 14; each step as its op-by-op kernel on the visible columns (module doc).
    The per-position parameters are read through views starting at lo, so every loop
    index is a plain counter (no negative-index wraparound code in the loops).  ``raw``,
    ``sc``, ``cq`` (>= n entries) and ``pb`` (>= n + 16) are scratch rows."""
    code, m_bits, k_lo, k_hi = cfg[C_CODE], cfg[C_MBITS], cfg[C_KLO], cfg[C_KHI]
    fitted = cfg[C_FITTED] != 0
    H, Hkv, hd = cfg[C_H], cfg[C_HKV], cfg[C_HD]
    tiled = hd % VEC == 0
    g = h // (H // Hkv)
    n = hi - lo
    sat = 0
    kz = kpar[g, 0, lo:hi]
    km = kpar[g, 1, lo:hi]
    kk = kpar[g, 2, lo:hi]
    ks_ = kpar[g, 3, lo:hi]
    vm = Vm[lo:hi]
    vk = Vk[lo:hi]
    vz = Vzp[lo:hi]
    zqv = zq[t, h]
    sq = np.int64(0)
    for d in range(hd):
        sq += Qh[t, h, d]
    kr = kk[0]
    for jj in range(1, n):
        kr = min(kr, kk[jj])
    # scores: sum_d (q - zq)(k - zk) = raw - zk sum q - zq sum k + hd zq zk  (exact, int64)
    _qk_raw(Qh, t, h, Kq, g, lo, n, tiled, raw)
    c0 = hd * zqv
    for jj in range(n):
        acc = np.int64(raw[jj]) - kz[jj] * sq - zqv * ks_[jj] + c0 * kz[jj]
        sc[jj] = _rshift_bl((acc * km[jj]) << GUARD_K, kk[jj] - kr, code)   # the key fold
    mxs = sc[0]
    for jj in range(1, n):
        mxs = max(mxs, sc[jj])
    # DI-ClippedSoftmax: center, clip, requant, DI-Exp, normalize
    ms = sm[h, t]
    ks = sk[h, t] + kr + GUARD_K
    thr = _clip_threshold_nb(cfg[C_CLIP], ms, ks, code)
    for jj in range(n):
        sc[jj] = max(sc[jj] - mxs, -thr) if ms != 0 else 0
    zc, mr, kr2, s = requant_row(sc, np.int64(0), ms, ks, cfg[C_INB], False, m_bits, k_lo,
                                 k_hi, code, fitted, cq)
    sat += s
    zero = mr == 0
    if zero:
        T, jx = exp_unit_nb(np.int64(1), np.int64(0), code)
    else:
        T, jx = exp_unit_nb(mr, kr2, code)
    MT = (np.int64(1) << EXP_SHIFT) // T
    S = np.int64(0)
    for jj in range(n):
        e = _exp_apply_fast(np.int64(0) if zero else cq[jj] - zc, T, jx, MT, code)
        cq[jj] = e
        S += e                                         # <= cols * 2^30 <= 2^61
    S = max(S, np.int64(1))
    F = cfg[C_F]
    pmax = cfg[C_PMAX]
    vr = vk[0]
    for jj in range(1, n):
        vr = min(vr, vk[jj])
    if cfg[C_RECIP]:
        f = np.int64(2 ** RECIP_BITS - 1) // S
        sh = np.int64(RECIP_BITS) - F
        for jj in range(n):
            p = min(_rshift_bl(cq[jj] * f, sh, code), pmax)
            sc[jj] = _rshift_bl((p * vm[jj]) << GUARD_V, vk[jj] - vr, code)
    else:
        for jj in range(n):
            p = min(_div_round_bl(cq[jj] << F, S, code), pmax)
            sc[jj] = _rshift_bl((p * vm[jj]) << GUARD_V, vk[jj] - vr, code)
    # probabilities times value scales, requantized to A bits: scale (1, F + vr + G_V)
    for jj in range(n, n + VEC):
        pb[jj] = 0                       # the tail that PV tiles read against padding
    zp_, mp, kp, s = requant_row(sc, np.int64(0), np.int64(1), F + vr + GUARD_V, cfg[C_A],
                                 False, m_bits, k_lo, k_hi, code, fitted, pb)
    sat += s
    pm[t, h], pk[t, h] = mp, kp
    # PV: sum_j (p - zp)(v - zv).  The probabilities times scales are >= 0, so zp = 0
    # (range [0, R]); then it is sum_j p v - sum_j p zv.  The int32 sums are bounded by
    # S (2^A - 1)^2 <= 2^31 - 1 (checked in prepare); the zero padding of pb meets
    # VT's padding columns.
    corr = np.int64(0)
    for jj in range(n):
        corr += np.int64(pb[jj]) * np.int64(vz[jj])
    if tiled and zp_ == 0:
        Sp = VT.shape[2]
        s8 = np.empty(8, dtype=np.int32)
        nst = (n + VEC - 1) // VEC
        for d0 in range(0, hd, 8):
            dot_tile_flat(pb, 0, 0, VT, (g * hd + d0) * Sp + lo, VEC, Sp, nst, s8, 1, 8)
            for c in range(8):
                att[t, h, d0 + c] = np.int64(s8[c]) - corr
    else:
        base = g * hd
        for d in range(hd):
            o = np.int64(0)
            for jj in range(n):
                o += (np.int64(pb[jj]) - zp_) * (np.int64(Vq[lo + jj, base + d]) - np.int64(vz[jj]))
            att[t, h, d] = o
    return sat


@njit(cache=True)
def _heads_quant_row(t, att, pm, pk, cfg, xq, zx, mx, kx):
    """Heads aligned to one exponent per token (fold, guard 12), then o_proj's input
    quantization.  |att * m| << 12 <= 2^31 2^16 2^12 < 2^62."""
    code = cfg[C_CODE]
    H, hd = cfg[C_H], cfg[C_HD]
    kref = pk[t, 0]
    for h in range(1, H):
        kref = min(kref, pk[t, h])
    ao = np.empty(H * hd, dtype=np.int64)
    for h in range(H):
        for d in range(hd):
            ao[h * hd + d] = _rshift_bl((att[t, h, d] * pm[t, h]) << GUARD_O, pk[t, h] - kref,
                                        code)
    z, m, k, s = requant_row(ao, np.int64(0), np.int64(1), kref + GUARD_O, cfg[C_A], False,
                             cfg[C_MBITS], cfg[C_KLO], cfg[C_KHI], code, cfg[C_FITTED] != 0, xq[t])
    zx[t], mx[t], kx[t] = z, m, k
    return s


@njit(cache=True)
def _resid_row(t, P, mx, kx, wk, h, hm, hk, cfg):
    """A projection's output (P, scale (mx, kx + wk)) to residual_bits codes, added to the
    stream row (residual_add) and the sum requantized to residual_bits: h[t] in place."""
    code, m_bits, k_lo, k_hi = cfg[C_CODE], cfg[C_MBITS], cfg[C_KLO], cfg[C_KHI]
    fitted = cfg[C_FITTED] != 0
    D = h.shape[1]
    ob = np.empty(D, dtype=np.int32)
    _, mo, ko, s1 = requant_row(P[t], np.int64(0), mx[t], kx[t] + wk, cfg[C_RESB], True, m_bits,
                                k_lo, k_hi, code, fitted, ob)
    sv = np.empty(D, dtype=np.int64)
    K = residual_row(h[t], hm[t], hk[t], ob, mo, ko, code, sv)
    _, m, k, s2 = requant_row(sv, np.int64(0), np.int64(1), K, cfg[C_RESB], True, m_bits, k_lo,
                              k_hi, code, fitted, h[t])
    hm[t], hk[t] = m, k
    return s1 + s2


@njit(cache=True)
def _swiglu_row(t, Pg, Pu, mx, kx, wkg, wku, mc, ka, unit, cfg, xq, zx, mxo, kxo):
    """gate/up outputs to swiglu_in_bits, DI-SwiGLU, and down_proj's input quantization."""
    code, m_bits, k_lo, k_hi = cfg[C_CODE], cfg[C_MBITS], cfg[C_KLO], cfg[C_KHI]
    fitted = cfg[C_FITTED] != 0
    F = Pg.shape[1]
    gb = np.empty(F, dtype=np.int32)
    ub = np.empty(F, dtype=np.int32)
    zg, mg, kg, s1 = requant_row(Pg[t], np.int64(0), mx[t], kx[t] + wkg, cfg[C_SWB], False,
                                 m_bits, k_lo, k_hi, code, fitted, gb)
    zu, mu, ku, s2 = requant_row(Pu[t], np.int64(0), mx[t], kx[t] + wku, cfg[C_SWB], False,
                                 m_bits, k_lo, k_hi, code, fitted, ub)
    y = np.empty(F, dtype=np.int64)
    my, ky = swiglu_row(gb, zg, mg, kg, ub, zu, mu, ku, mc, ka, unit, cfg, y)
    z, m, k, s3 = requant_row(y, np.int64(0), my, ky, cfg[C_A], False, m_bits, k_lo, k_hi, code,
                              fitted, xq[t])
    zx[t], mxo[t], kxo[t] = z, m, k
    return s1 + s2 + s3


# ------------------------------------------------------------------ stages (serial / parallel)

@njit(cache=True)
def _st_norm_quant(h, pfix, cfg, xq, zx, mx, kx, g, gk, gu):
    """DI-Norm and input quantization of every row (once per forward: serial)."""
    sat = 0
    for t in range(h.shape[0]):
        sat += _norm_quant_row(t, h, pfix, cfg, xq, zx, mx, kx, g, gk, gu)
    return sat


@njit(cache=True)
def _st_qkv(par, Pq, Pk, Pv, mx, kx, wk3, pos, cos_q, sin_q, cfg, past,
            Qh, zq, qm, qk, Kq, Kzp, Km, Kk, Vq, Vzp, Vm, Vk, kpar, VT):
    if par:
        return _st_qkv_par(Pq, Pk, Pv, mx, kx, wk3, pos, cos_q, sin_q, cfg, past,
                           Qh, zq, qm, qk, Kq, Kzp, Km, Kk, Vq, Vzp, Vm, Vk, kpar, VT)
    sat = 0
    for t in range(Pq.shape[0]):
        sat += _qkv_row(t, Pq, Pk, Pv, mx, kx, wk3, pos, cos_q, sin_q, cfg, past,
                        Qh, zq, qm, qk, Kq, Kzp, Km, Kk, Vq, Vzp, Vm, Vk, kpar, VT)
    return sat


@njit(cache=True, parallel=True)
def _st_qkv_par(Pq, Pk, Pv, mx, kx, wk3, pos, cos_q, sin_q, cfg, past,
                Qh, zq, qm, qk, Kq, Kzp, Km, Kk, Vq, Vzp, Vm, Vk, kpar, VT):
    T = Pq.shape[0]
    sats = np.zeros(T, dtype=np.int64)
    for t in prange(T):
        sats[t] = _qkv_row(t, Pq, Pk, Pv, mx, kx, wk3, pos, cos_q, sin_q, cfg, past,
                           Qh, zq, qm, qk, Kq, Kzp, Km, Kk, Vq, Vzp, Vm, Vk, kpar, VT)
    return sats.sum()


@njit(cache=True)
def _attn_token(t, Qh, zq, sm, sk, Kq, kpar, Vq, VT, Vzp, Vm, Vk, vlo, vhi, cfg,
                att, pm, pk, xo, zx, mx, kx):
    """Every head of token t, then the heads' fold and o_proj's input quantization."""
    sat = 0
    n = vhi[t] - vlo[t]
    raw = np.empty(n, dtype=np.int32)
    sc = np.empty(n, dtype=np.int64)
    cq = np.empty(n, dtype=np.int64)
    pb = np.empty(n + VEC, dtype=np.uint8)
    for h in range(Qh.shape[1]):
        sat += _attn_row(t, h, Qh, zq, sm, sk, Kq, kpar, Vq, VT, Vzp, Vm, Vk, vlo[t], vhi[t], cfg,
                         att, pm, pk, raw, sc, cq, pb)
    return sat + _heads_quant_row(t, att, pm, pk, cfg, xo, zx, mx, kx)


@njit(cache=True)
def _st_attn(par, Qh, zq, sm, sk, Kq, kpar, Vq, VT, Vzp, Vm, Vk, vlo, vhi, cfg,
             att, pm, pk, xo, zx, mx, kx):
    if par:
        return _st_attn_par(Qh, zq, sm, sk, Kq, kpar, Vq, VT, Vzp, Vm, Vk, vlo, vhi,
                            cfg, att, pm, pk, xo, zx, mx, kx)
    sat = 0
    for t in range(Qh.shape[0]):
        sat += _attn_token(t, Qh, zq, sm, sk, Kq, kpar, Vq, VT, Vzp, Vm, Vk, vlo, vhi,
                           cfg, att, pm, pk, xo, zx, mx, kx)
    return sat


@njit(cache=True, parallel=True)
def _st_attn_par(Qh, zq, sm, sk, Kq, kpar, Vq, VT, Vzp, Vm, Vk, vlo, vhi, cfg, att,
                 pm, pk, xo, zx, mx, kx):
    T = Qh.shape[0]
    sats = np.zeros(T, dtype=np.int64)
    # tokens in the order 0, T-1, 1, T-2, ...: causal rows grow with t, and the threads
    # take equal contiguous blocks of this order, i.e. about equal work
    for ii in prange(T):
        t = ii // 2 if ii % 2 == 0 else T - 1 - ii // 2
        sats[t] = _attn_token(t, Qh, zq, sm, sk, Kq, kpar, Vq, VT, Vzp, Vm, Vk, vlo,
                              vhi, cfg, att, pm, pk, xo, zx, mx, kx)
    return sats.sum()


@njit(cache=True)
def _resid_norm_row(t, P, mx, kx, wk, h, hm, hk, pfix, cfg, xq, zx, g, gk, gu):
    """The residual add of a projection (``_resid_row``), then the next DI-Norm and input
    quantization of the updated stream row (``_norm_quant_row``; mx, kx of row t are
    read before they are overwritten)."""
    return (_resid_row(t, P, mx, kx, wk, h, hm, hk, cfg)
            + _norm_quant_row(t, h, pfix, cfg, xq, zx, mx, kx, g, gk, gu))


@njit(cache=True)
def _st_resid_norm(par, P, mx, kx, wk, h, hm, hk, pfix, cfg, xq, zx, g, gk, gu):
    if par:
        return _st_resid_norm_par(P, mx, kx, wk, h, hm, hk, pfix, cfg, xq, zx, g, gk, gu)
    sat = 0
    for t in range(h.shape[0]):
        sat += _resid_norm_row(t, P, mx, kx, wk, h, hm, hk, pfix, cfg, xq, zx, g, gk, gu)
    return sat


@njit(cache=True, parallel=True)
def _st_resid_norm_par(P, mx, kx, wk, h, hm, hk, pfix, cfg, xq, zx, g, gk, gu):
    T = h.shape[0]
    sats = np.zeros(T, dtype=np.int64)
    for t in prange(T):
        sats[t] = _resid_norm_row(t, P, mx, kx, wk, h, hm, hk, pfix, cfg, xq, zx, g, gk, gu)
    return sats.sum()


@njit(cache=True)
def _st_swiglu(par, Pg, Pu, mx, kx, wkg, wku, mc, ka, unit, cfg, xq, zx, mxo, kxo):
    if par:
        return _st_swiglu_par(Pg, Pu, mx, kx, wkg, wku, mc, ka, unit, cfg, xq, zx, mxo, kxo)
    sat = 0
    for t in range(Pg.shape[0]):
        sat += _swiglu_row(t, Pg, Pu, mx, kx, wkg, wku, mc, ka, unit, cfg, xq, zx, mxo, kxo)
    return sat


@njit(cache=True, parallel=True)
def _st_swiglu_par(Pg, Pu, mx, kx, wkg, wku, mc, ka, unit, cfg, xq, zx, mxo, kxo):
    T = Pg.shape[0]
    sats = np.zeros(T, dtype=np.int64)
    for t in prange(T):
        sats[t] = _swiglu_row(t, Pg, Pu, mx, kx, wkg, wku, mc, ka, unit, cfg, xq, zx, mxo, kxo)
    return sats.sum()


# ------------------------------------------------------------------ matmul dispatch

@njit(cache=True)
def _matmuls(cfg, xq, zx, widx, Wq, Wqs, Wm, Wb, Gs, pidx, Pw, Pqs, Pm, Pb, outs):
    """DI-MatMul steps 2-3 of the weights ``widx[i]`` (row layout) that share the input xq,
    into ``outs[i]`` (int64 [T, N] each).  A single token row reads the packed stack
    ``pidx`` (the same weights, rows stacked) instead.  ``widx`` and ``outs`` are always
    3-tuples, unused trailing slots holding an empty (0, 0) array, so this compiles once.
    The weights of one call share their group size (a multiple of 16: prepare checks)."""
    T = xq.shape[0]
    nw = 0
    while nw < 3 and outs[nw].shape[0] == T:
        nw += 1
    G = Gs[widx[0]]
    if T == 1:
        Np = Pqs[pidx].shape[0]
        P = np.empty((1, Np), dtype=np.int64)
        if cfg[C_GEMV_PAR] != 0:
            gemv_acc_packed_par(xq, zx, Pw[pidx], Pqs[pidx], Pm[pidx], Pb[pidx], G, P)
        else:
            gemv_acc_packed(xq, zx, Pw[pidx], Pqs[pidx], Pm[pidx], Pb[pidx], G, P)
        off = 0
        for i in range(nw):
            o = outs[i]
            for n in range(o.shape[1]):
                o[0, n] = P[0, off + n]
            off += o.shape[1]
    elif cfg[C_PAR] != 0:
        gemm_acc_multi_par(xq, zx, Wq, Wqs, Wm, Wb, nw, widx, G, outs)
    else:
        gemm_acc_multi(xq, zx, Wq, Wqs, Wm, Wb, nw, widx, G, outs)


# ------------------------------------------------------------------ the whole forward

@njit(cache=True)
def _forward_nb(ids, pos, vlo, vhi, past, cfg, emb_q, emb_m, emb_k, cos_q, sin_q,
                Wq, Wqs, Wm, Wb, Gs, Wk, Pw, Pqs, Pm, Pb, alpha, alpha_k, NW, NK, NU,
                Kq_l, Kzp_l, Km_l, Kk_l, Vq_l, Vzp_l, Vm_l, Vk_l, Kpar_l, VT_l):
    """Every layer and the LM head; returns (logits [T, V], m [T], k [T], saturations).

    Weight lists (index ``7 * layer + j``, j = q, k, v, o, gate, up, down; the head last):
    codes, qsum, m, b, group size ``Gs`` and exponent ``Wk``; packed stacks (index
    ``4 * layer + j``, j = qkv, o, gate+up, down; the head last).
    """
    T = ids.shape[0]
    nL = len(Kq_l)
    H, Hkv, hd = cfg[C_H], cfg[C_HKV], cfg[C_HD]
    D = emb_q.shape[1]
    par = cfg[C_PAR] != 0 and T > 1
    # embedding (a gather): the stream, zero point 0, per-row scale
    h = np.empty((T, D), dtype=np.int16)
    hm = np.empty(T, dtype=np.int64)
    hk = np.empty(T, dtype=np.int64)
    for t in range(T):
        r = ids[t]
        for j in range(D):
            h[t, j] = emb_q[r, j]
        hm[t] = emb_m[r]
        hk[t] = emb_k[r]
    xq = np.empty((T, D), dtype=np.uint8)
    zx = np.empty(T, dtype=np.int64)
    mx = np.empty(T, dtype=np.int64)
    kx = np.empty(T, dtype=np.int64)
    Qh = np.empty((T, H, hd), dtype=np.uint8)
    zq = np.empty((T, H), dtype=np.int64)
    qm = np.empty((T, H), dtype=np.int64)
    qk = np.empty((T, H), dtype=np.int64)
    sm = np.empty((H, T), dtype=np.int64)
    sk = np.empty((H, T), dtype=np.int64)
    att = np.empty((T, H, hd), dtype=np.int64)
    pm = np.empty((T, H), dtype=np.int64)
    pk = np.empty((T, H), dtype=np.int64)
    xo = np.empty((T, H * hd), dtype=np.uint8)
    nul = np.empty((0, 0), dtype=np.int64)      # unused slots of _matmuls' 3-tuples
    # DI-Norm weights of stage i (2l: layer l's attention norm, 2l + 1: its ffn norm,
    # 2 nL: the final norm, always folded into the head): NW[i], NK[i], unit flag NU[i]
    sat = _st_norm_quant(h, cfg[C_PFIX_EMB], cfg, xq, zx, mx, kx, NW[0], NK[0], NU[0])
    pfix = cfg[C_PFIX_RES]
    for li in range(nL):
        w0 = 7 * li
        # attention block (xq: this layer's normed input, quantized)
        Pq = np.empty((T, Wq[w0].shape[0]), dtype=np.int64)
        Pk = np.empty((T, Wq[w0 + 1].shape[0]), dtype=np.int64)
        Pv = np.empty((T, Wq[w0 + 2].shape[0]), dtype=np.int64)
        _matmuls(cfg, xq, zx, (w0, w0 + 1, w0 + 2), Wq, Wqs, Wm, Wb, Gs, 4 * li, Pw, Pqs, Pm,
                 Pb, (Pq, Pk, Pv))
        wk3 = Wk[w0:w0 + 3]
        sat += _st_qkv(par, Pq, Pk, Pv, mx, kx, wk3, pos, cos_q, sin_q, cfg, past, Qh, zq, qm, qk,
                       Kq_l[li], Kzp_l[li], Km_l[li], Kk_l[li], Vq_l[li], Vzp_l[li], Vm_l[li],
                       Vk_l[li], Kpar_l[li], VT_l[li])
        # row scale of the scores: s_q / sqrt(hd), refitted to 28 bits (all rows) when a
        # mantissa product exceeds 2^28 (llama.mul_scales)
        mmax = np.int64(0)
        for t in range(T):
            for hh in range(H):
                mmax = max(mmax, qm[t, hh] * cfg[C_INVM])
        for t in range(T):
            for hh in range(H):
                m = qm[t, hh] * cfg[C_INVM]
                k = qk[t, hh] + cfg[C_INVK]
                if mmax > M_IN_LIMIT:
                    mf, kf, _ = dyadic_fit_nb(m, np.int64(1), 28, np.int64(-(2 ** 20)),
                                              np.int64(2 ** 20), cfg[C_CODE])
                    m = mf
                    k += kf
                sm[hh, t] = m
                sk[hh, t] = k
        sat += _st_attn(par, Qh, zq, sm, sk, Kq_l[li], Kpar_l[li], Vq_l[li], VT_l[li], Vzp_l[li],
                        Vm_l[li], Vk_l[li], vlo, vhi, cfg, att, pm, pk, xo, zx, mx, kx)
        Po = np.empty((T, Wq[w0 + 3].shape[0]), dtype=np.int64)
        _matmuls(cfg, xo, zx, (w0 + 3, w0, w0), Wq, Wqs, Wm, Wb, Gs, 4 * li + 1, Pw, Pqs, Pm, Pb,
                 (Po, nul, nul))
        sat += _st_resid_norm(par, Po, mx, kx, Wk[w0 + 3], h, hm, hk, pfix, cfg, xq, zx,
                              NW[2 * li + 1], NK[2 * li + 1], NU[2 * li + 1])
        # feed-forward block
        Pg = np.empty((T, Wq[w0 + 4].shape[0]), dtype=np.int64)
        Pu = np.empty((T, Wq[w0 + 5].shape[0]), dtype=np.int64)
        _matmuls(cfg, xq, zx, (w0 + 4, w0 + 5, w0), Wq, Wqs, Wm, Wb, Gs, 4 * li + 2, Pw, Pqs, Pm,
                 Pb, (Pg, Pu, nul))
        Ff = Pg.shape[1]
        xf = np.empty((T, Ff), dtype=np.uint8)
        unit = np.int64(1)
        for c in range(Ff):
            if alpha[li, c] != 1:
                unit = np.int64(0)
        sat += _st_swiglu(par, Pg, Pu, mx, kx, Wk[w0 + 4], Wk[w0 + 5], alpha[li], alpha_k[li], unit,
                          cfg, xf, zx, mx, kx)
        Pd = np.empty((T, Wq[w0 + 6].shape[0]), dtype=np.int64)
        _matmuls(cfg, xf, zx, (w0 + 6, w0, w0), Wq, Wqs, Wm, Wb, Gs, 4 * li + 3, Pw, Pqs, Pm, Pb,
                 (Pd, nul, nul))
        # the residual, then the next layer's (or the final) DI-Norm and quantization
        sat += _st_resid_norm(par, Pd, mx, kx, Wk[w0 + 6], h, hm, hk, pfix, cfg, xq, zx,
                              NW[2 * li + 2], NK[2 * li + 2], NU[2 * li + 2])
    # the LM head accumulators of the final normed stream
    wh = 7 * nL
    logits = np.empty((T, Wq[wh].shape[0]), dtype=np.int64)
    _matmuls(cfg, xq, zx, (wh, wh, wh), Wq, Wqs, Wm, Wb, Gs, 4 * nL, Pw, Pqs, Pm, Pb,
             (logits, nul, nul))
    kout = np.empty(T, dtype=np.int64)
    for t in range(T):
        kout[t] = kx[t] + Wk[wh]
    return logits, mx.copy(), kout, sat


# ------------------------------------------------------------------ Python side

#: use the multi-thread packed GEMV for single token rows (else one thread).  Off by
#: default: a decode step would open ~150 parallel regions, each of which waits for a
#: time slice when another process shares the cores (measured: 1 s per token instead
#: of 13 ms on the shared 2-core host); alone on 2 cores it gives ~100 against ~78 tok/s.
GEMV_PARALLEL = False
_NO_FAST = object()
_prepared: dict = {}


class FastModel:
    """Per-model constants and weight lists of the fast path (built once, cached)."""

    def __init__(self, model):
        c, w, spec = model.config, model.widths, model.spec
        ws = []
        for L in model.layers:
            ws += [L.wq, L.wk, L.wv, L.wo, L.w_gate, L.w_up, L.w_down]
        ws.append(model.w_head)
        C = np.ascontiguousarray
        self.Wq = typed.List([C(x.q) for x in ws])
        self.Wqs = typed.List([C(x.qsum) for x in ws])
        self.Wm = typed.List([C(x.m) for x in ws])
        self.Wb = typed.List([C(x.b) for x in ws])
        self.Gs = np.array([x.group_size for x in ws], dtype=np.int64)
        self.Wk = np.array([x.k for x in ws], dtype=np.int64)
        stacks = []
        try:
            for L in model.layers:
                stacks += [PackedWeight([L.wq, L.wk, L.wv]), PackedWeight([L.wo]),
                           PackedWeight([L.w_gate, L.w_up]), PackedWeight([L.w_down])]
            stacks.append(PackedWeight([model.w_head]))
            self.packed = True
        except IntsimError:   # a group size that is not a multiple of 16, or mixed ones:
            self.packed = False   # prepare() declines, the op-by-op path runs
        if not self.packed:   # typed lists need one element to carry their type
            stacks = [PackedWeight.__new__(PackedWeight)]
            stacks[0].wp = np.zeros(1, np.uint8)
            stacks[0].qsum = stacks[0].m = stacks[0].b = np.zeros((1, 1), np.int64)
        self.Pw = typed.List([s.wp for s in stacks])
        self.Pqs = typed.List([s.qsum for s in stacks])
        self.Pm = typed.List([s.m for s in stacks])
        self.Pb = typed.List([s.b for s in stacks])
        F = c.ffn_dim
        self.alpha = np.ones((c.n_layers, F), dtype=np.int64)
        self.alpha_k = np.zeros(c.n_layers, dtype=np.int64)
        for i, L in enumerate(model.layers):
            if L.alpha_inv is not None:
                self.alpha[i] = L.alpha_inv.astype(np.int64)
                self.alpha_k[i] = L.alpha_k
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
        self.emb_q = np.ascontiguousarray(model.emb_q)
        self.emb_m = model.emb_m.astype(np.int64)
        self.emb_k = model.emb_k.astype(np.int64)
        self.cos_q = np.ascontiguousarray(model.cos_q, dtype=np.int32)
        self.sin_q = np.ascontiguousarray(model.sin_q, dtype=np.int32)
        k_lo, k_hi = spec.k_range
        n_c, p2 = sqrt_c_const(c.dim)
        inv = inv_sqrt_dyadic(c.head_dim, spec.m_bits)
        F_bits = spec.softmax_p_out if spec.softmax_p_frac is None else spec.softmax_p_frac
        fixed = spec.norm_preshift == "fixed"
        cfg = np.zeros(C_NCONF, dtype=np.int64)
        for slot, v in ((C_CODE, rounding_code(spec.rounding)), (C_MBITS, spec.m_bits),
                        (C_KLO, k_lo), (C_KHI, k_hi), (C_FITTED, spec.requant_mode == "fitted"),
                        (C_A, w.a_bits), (C_QKB, w.qk_bits), (C_RESB, spec.residual_bits),
                        (C_SWB, spec.swiglu_in_bits), (C_INB, spec.softmax_in_bits),
                        (C_CLIP, spec.softmax_clip), (C_F, F_bits),
                        (C_PMAX, 2 ** spec.softmax_p_out - 1),
                        (C_RECIP, spec.softmax_div == "reciprocal"), (C_SIGB, spec.sigmoid_bits),
                        (C_ROWMAX, spec.sigmoid_frame == "rowmax"),
                        (C_GSW, spec.sigmoid_guard_bits), (C_ROPEF, spec.rope_frac_bits),
                        (C_DROP, spec.rope_drop_bits), (C_NC, n_c), (C_P2, p2),
                        (C_PFIX_EMB, fixed_preshift(c.dim, w.emb_bits) if fixed else -1),
                        (C_PFIX_RES, fixed_preshift(c.dim, spec.residual_bits) if fixed else -1),
                        (C_INVM, int(inv.m)), (C_INVK, int(inv.k)), (C_H, c.n_heads),
                        (C_HKV, c.n_kv_heads), (C_HD, c.head_dim), (C_EMBB, w.emb_bits),
                        (C_PACKED, self.packed)):
            cfg[slot] = int(v)
        self.cfg = cfg
        self.spec = spec
        self.max_context = _max_context(w.a_bits)


def _max_context(a_bits: int) -> int:
    """Longest context whose PV int32 sums are bounded: S (2^A - 1)^2 <= 2^31 - 1."""
    return I32_MAX // (2 ** a_bits - 1) ** 2


def _supported(model) -> bool:
    """True when every check the op-by-op path makes beyond value ranges provably passes
    (else that path runs, and raises where it must)."""
    c, w, spec = model.config, model.widths, model.spec
    A = w.a_bits
    try:
        for L in model.layers:
            for x, K in ((L.wq, c.dim), (L.wk, c.dim), (L.wv, c.dim), (L.wo, c.n_heads * c.head_dim),
                         (L.w_gate, c.dim), (L.w_up, c.dim), (L.w_down, c.ffn_dim)):
                check_bounds(K, x, A)
            if L.alpha_inv is not None and not (0 <= L.alpha_k <= ALPHA_K_LIMIT
                                                and L.alpha_inv.shape == (c.ffn_dim,)
                                                and L.alpha_inv.dtype.kind in "iu"):
                return False
        check_bounds(c.dim, model.w_head, A)
    except IntsimError:
        return False
    qmax = 2 ** A - 1
    m_max = 2 ** spec.m_bits - 1
    p_max = 2 ** spec.softmax_p_out - 1
    return (2 <= A <= 8 and 2 <= w.qk_bits <= 16 and c.dim <= NORM_C_LIMIT
            and model.emb_q.dtype == dtype_for(w.emb_bits, True)
            and model.cos_q.dtype in (np.int16, np.int32) and model.sin_q.dtype in (np.int16, np.int32)
            and c.head_dim * qmax * qmax <= I32_MAX                         # QK^T int32
            and (c.head_dim * qmax * qmax * m_max) << GUARD_K <= FOLD_LIMIT  # key fold
            and (p_max * m_max) << GUARD_V <= FOLD_LIMIT                      # value fold
            and (I32_MAX * m_max) << GUARD_O <= FOLD_LIMIT                    # heads fold
            and 0 <= spec.sigmoid_guard_bits <= GUARD_LIMIT
            and T_BITS == 30)


def prepare(model):
    """The model's :class:`FastModel` (built on first use), or None when unsupported."""
    key = id(model)
    hit = _prepared.get(key)
    if hit is not None and hit[0]() is model:
        return None if hit[1] is _NO_FAST else hit[1]
    fm = FastModel(model) if _supported(model) else _NO_FAST
    if fm is not _NO_FAST and not fm.packed:
        fm = _NO_FAST
    _prepared[key] = (weakref.ref(model, lambda _r, k=key: _prepared.pop(k, None)), fm)
    return None if fm is _NO_FAST else fm


def _cache_lists(cache):
    """Typed lists over the cache's per-layer arrays (memoized on the cache object)."""
    names = ("k_q", "k_zp", "k_m", "k_k", "v_q", "v_zp", "v_m", "v_k", "k_par", "v_t")
    ident = tuple(id(a) for n in names for a in getattr(cache, n))
    memo = getattr(cache, "_fast_lists", None)
    if memo is not None and memo[0] == ident:
        return memo[1]
    lists = tuple(typed.List(getattr(cache, n)) for n in names)
    cache._fast_lists = (ident, lists)
    return lists


_CACHE_DTYPES = (("k_q", np.uint8, 3), ("k_zp", np.int32, 2), ("k_m", np.int64, 2),
                 ("k_k", np.int64, 2), ("v_q", np.uint8, 2), ("v_zp", np.int32, 1),
                 ("v_m", np.int64, 1), ("v_k", np.int64, 1))


def _cache_ok(cache, c) -> bool:
    """The cache holds what KVCache.empty makes (the compiled path's array types)."""
    if cache.k_par is None or cache.v_t is None:
        return False
    for name, dt, shape in (("k_par", np.int64, (c.n_kv_heads, 4, cache.capacity)),
                            ("v_t", np.uint8, (c.n_kv_heads, c.head_dim, cache.capacity + VT_PAD))):
        arrs = getattr(cache, name)
        if len(arrs) != c.n_layers or any(
                not isinstance(a, np.ndarray) or a.dtype != dt or a.shape != shape
                or not a.flags.c_contiguous for a in arrs):
            return False
    for name, dt, nd in _CACHE_DTYPES:
        arrs = getattr(cache, name)
        if len(arrs) != c.n_layers:
            return False
        for a in arrs:
            if (not isinstance(a, np.ndarray) or a.dtype != dt or a.ndim != nd
                    or not a.flags.c_contiguous or a.shape[0] < cache.capacity):
                return False
    return True


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


def forward_fast(model, ids: np.ndarray, pos: np.ndarray, visible: np.ndarray, cache):
    """The fast path of ``forward()`` (arguments already validated there): returns
    ``(logits, Dyadic)`` and advances the cache, or None when the op-by-op path must run."""
    fm = prepare(model)
    if fm is None or cache.length + ids.size > fm.max_context:
        return None
    if not _cache_ok(cache, model.config):
        return None
    rng = visible_ranges(visible)
    if rng is None:
        return None
    cfg = fm.cfg.copy()
    cfg[C_PAR] = numba.get_num_threads() > 1
    cfg[C_GEMV_PAR] = GEMV_PARALLEL and numba.get_num_threads() > 1
    logits, m, k, sat = _forward_nb(
        np.ascontiguousarray(ids, dtype=np.int64), np.ascontiguousarray(pos, dtype=np.int64),
        rng[0], rng[1], cache.length, cfg, fm.emb_q, fm.emb_m, fm.emb_k, fm.cos_q, fm.sin_q,
        fm.Wq, fm.Wqs, fm.Wm, fm.Wb, fm.Gs, fm.Wk, fm.Pw, fm.Pqs, fm.Pm, fm.Pb, fm.alpha,
        fm.alpha_k, fm.NW, fm.NK, fm.NU, *_cache_lists(cache))
    if sat and fm.spec.overflow == "raise":
        return None                      # the op-by-op path raises, naming the operator
    cache.length += ids.size
    return logits, Dyadic(m, k)
