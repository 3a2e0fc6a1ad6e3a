"""DI-Norm: RMSNorm as a scale-only integer operator.  Spec: docs/SPEC.md, DI-Norm.

RMSNorm(x) = x / sqrt(mean(x^2)) (γ is folded into the next linear layer by the
converter, eps is dropped: see :func:`di_norm`).  With x = (q - zp) * s per row the row
scale s cancels, so the integer codes pass through unchanged and only a new per-row
scale is computed:

    s_out = sqrt(C) / sqrt(sum_j (q_j - zp)^2)

from two integer square roots and one dyadic fit.  The next DI-MatMul requantizes its
input per token anyway, so no per-element work is needed here.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
from numba import njit

from .errors import (IntsimError, IntsimOverflowError, check_choice, check_int, check_int_array,
                     check_range)
from .fixedpoint import (kernel, _check_backend, _fit_ref, _isqrt_ref, bit_length_nb, bit_length_ref,
                         dyadic_fit_nb, isqrt_nb, rounding_code)
from .options import DEFAULT_SPEC, Spec
from .qtensor import Dyadic, QTensor

#: most channels per row: sumsq <= 2^16 * (2^16 - 1)^2 < 2^48
NORM_C_LIMIT = 2 ** 16
#: largest |q - zp| accepted (a 16-bit code against a 16-bit zero point)
NORM_D_LIMIT = 2 ** 16 - 1
#: sumsq << 2P stays <= 2^62 - 1 (isqrt's bound): bitlen(sumsq) + 2P <= 62
SUMSQ_BITS = 62
#: C << 2P' stays <= 2^61 - 1 (dyadic_fit's numerator bound): bitlen(C) + 2P' <= 61
SQRT_C_BITS = 61
#: pre-shift choices: per row from bitlen(sumsq), or one P fixed by (bits, C)
PRESHIFTS = ("row", "fixed")


@lru_cache(maxsize=64)   # a per-model constant: computed once per distinct argument
def sqrt_c_const(C: int) -> tuple[int, int]:
    """Per-model constant ``(n_C, P')`` with ``n_C = isqrt(C << 2P') = floor(sqrt(C) * 2^P')``.

    ``P' = (61 - bitlen(C)) >> 1`` so ``C << 2P' < 2^61`` and ``n_C >= 2^29`` (bitlen of the
    shifted value is 60 or 61).  Hardware stores the pair; intsim recomputes it (integer).
    """
    c = np.int64(C)
    p2 = (SQRT_C_BITS - int(bit_length_ref(c))) >> 1
    return int(_isqrt_ref(c << np.int64(2 * p2))), p2


def fixed_preshift(C: int, bits: int) -> int:
    """``P`` for ``preshift="fixed"``: ``(62 - bitlen(C * (2^bits - 1)^2)) >> 1``."""
    dmax = (np.int64(1) << np.int64(bits)) - 1
    return (SUMSQ_BITS - int(bit_length_ref(np.int64(C) * dmax * dmax))) >> 1


def _di_norm_ref(q, zp, n_c, p2, p_fixed, m_bits, k_lo, k_hi, code):
    d = q.astype(np.int64) - zp.astype(np.int64)[..., None]
    sumsq_i64 = (d * d).sum(axis=-1)                 # <= C * (2^16 - 1)^2 < 2^48
    zero = sumsq_i64 == 0
    if p_fixed < 0:
        p = (SUMSQ_BITS - bit_length_ref(sumsq_i64)) >> 1
    else:
        p = np.full(sumsq_i64.shape, p_fixed, dtype=np.int64)
    p = np.where(zero, 0, p)
    r = _isqrt_ref(sumsq_i64 << (2 * p))             # sumsq << 2P <= 2^62 - 1
    r = np.where(zero, 1, r)
    # s_out = (n_C 2^-P') / (r 2^-P) = fit(n_C / r) * 2^-(P' - P); final k in [k_lo, k_hi]
    m, e, sat = _fit_ref(np.int64(n_c), r, m_bits, k_lo - p2 + p, k_hi - p2 + p, code)
    k0 = min(max(0, k_lo), k_hi)
    k = np.where(m == 0, k0, e + p2 - p)
    return (np.where(zero, 0, m).astype(np.int64), np.where(zero, k0, k).astype(np.int64),
            int(np.count_nonzero(sat & ~zero)))


@njit(cache=True)
def norm_row(x, zp, n_c, p2, p_fixed, m_bits, k_lo, k_hi, code):
    """The Numba kernel of one row of :func:`di_norm` (steps 1-5): returns ``(m, k,
    saturated)`` for codes ``x`` (1-d, any integer dtype) with zero point ``zp``;
    ``p_fixed < 0`` selects the per-row pre-shift."""
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


@njit(cache=True)
def _di_norm_nb(q, zp, n_c, p2, p_fixed, m_bits, k_lo, k_hi, code):
    """:func:`norm_row` over the rows of ``q``."""
    rows = q.shape[0]
    m = np.zeros(rows, dtype=np.int64)
    k = np.zeros(rows, dtype=np.int64)
    nsat = 0
    for i in range(rows):
        m[i], k[i], sat = norm_row(q[i], np.int64(zp[i]), n_c, p2, p_fixed, m_bits, k_lo, k_hi,
                                   code)
        nsat += sat
    return m, k, nsat


def di_norm(x: QTensor, spec: Spec = DEFAULT_SPEC, backend: str = "numba",
            preshift: str | None = None) -> tuple[QTensor, int]:
    """DI-Norm: RMSNorm without γ and eps; returns the same codes with a new row scale.

    Input: ``x`` with codes (..., C), ``1 <= C <= 2^16``, ``|q - zp| <= 2^16 - 1`` (any
    width <= 16, signed or not, any zero point).  Its scale is ignored: it cancels.
    Output: ``(QTensor(x.q, x.zp, Dyadic(m, k), x.bits, x.signed), n_saturated)``; the
    codes are shared with ``x`` (not copied).  Real output ``(q - zp) * m * 2^-k``
    approximates ``x / sqrt(mean(x^2))``.

    Per row, integer only:

    1. ``sumsq_i64 = sum_j (q_j - zp)^2``.  Bound: ``C * (2^16 - 1)^2 < 2^48``.
    2. pre-shift ``P``: ``preshift="row"`` (default) ``P = (62 - bitlen(sumsq)) >> 1``;
       ``"fixed"`` ``P = (62 - bitlen(C * (2^bits - 1)^2)) >> 1`` for the whole tensor.
       Either way ``bitlen(sumsq << 2P) <= 62``, i.e. ``<= 2^62 - 1`` (isqrt's bound).
       "row" gives r in [2^30, 2^31) for every row; "fixed" needs no per-row shift
       amount but leaves fewer bits in rows of small codes (``r ~ 2^P * sqrt(sumsq)``).
    3. ``r = isqrt(sumsq << 2P) = floor(sqrt(sumsq) * 2^P)``, ``1 <= r < 2^31``.
    4. per-model constant ``(n_C, P') = sqrt_c_const(C)``, ``n_C = floor(sqrt(C) * 2^P')``,
       ``2^29 <= n_C < 2^30.5``.
    5. ``(m, e) = dyadic_fit(n_C, r)`` (mantissa ``spec.m_bits``, tie rule
       ``spec.rounding``), ``k = e + P' - P``: ``s_out = (n_C 2^-P') / (r 2^-P)``.
       Fit bounds: ``n_C < 2^31 <= 2^61 - 1``, ``r < 2^31 <= 2^(61 - m_bits) - 1``.
       The exponent range ``spec.k_range`` applies to the final k (a saturation is
       counted; ``spec.overflow == "raise"`` raises).  Saturation cannot happen within
       Spec's ranges: ``s_out <= sqrt(C) <= 2^8`` and ``m >= 2^(m_bits-1) >= 2`` give
       ``k >= -7 > -8``, the smallest k_min (k_bits = 4).  A tiny scale above k_max
       is refitted at k_max with fewer mantissa bits (dyadic_fit step 5).

    Error of the scale (preshift "row"): relative ``<= 1/(2^m_bits - 1)`` (fit, nearest modes;
    2^-m_bits except when the quotient rounds up onto 2^(m_bits-1))
    ``+ 2^-29`` (the two isqrt truncations, ``1/n_C + 1/r``).
    eps: dropped.  For a non-zero row ``sumsq >= 1``, so nothing divides by zero; the
    float eps acts relative to the real mean square, which depends on the dynamic
    scale this operator never sees (spec text gives the size of the effect).
    All-zero row (``sumsq = 0``): ``m = 0`` (output exactly zero, what RMSNorm with any
    eps > 0 gives), ``k = 0`` clamped into ``spec.k_range``.
    """
    _check_backend(backend)
    preshift = spec.norm_preshift if preshift is None else preshift
    check_choice("preshift", preshift, PRESHIFTS)
    if not isinstance(x, QTensor):
        raise IntsimError(f"x: expected a QTensor, got {type(x).__name__}")
    if x.bits > 16:
        raise IntsimError(f"x: bits {x.bits} > 16 is outside DI-Norm's declared input range")
    C = x.q.shape[-1]
    if not 1 <= C <= NORM_C_LIMIT:
        raise IntsimError(f"x: row length C = {C} is outside [1, {NORM_C_LIMIT}]")
    zp = np.asarray(x.zp, dtype=np.int64)
    check_range("x zero point", zp, -NORM_D_LIMIT, NORM_D_LIMIT)
    check_range("x (q - zp)", x.centered(), -NORM_D_LIMIT, NORM_D_LIMIT)
    code = rounding_code(spec.rounding)
    k_lo, k_hi = spec.k_range
    n_c, p2 = sqrt_c_const(C)
    p_fixed = -1
    if preshift == "fixed":          # P is sized for |q - zp| <= 2^bits - 1 (SPEC section 8.2)
        lim = (1 << x.bits) - 1
        check_range(f"x (q - zp) under the fixed pre-shift (sized for {x.bits}-bit codes)",
                    x.centered(), -lim, lim)
        p_fixed = fixed_preshift(C, x.bits)
    rows = x.q.shape[:-1]
    if backend == "reference":
        m, k, nsat = _di_norm_ref(x.q, zp, n_c, p2, p_fixed, spec.m_bits, k_lo, k_hi, code)
    else:
        q2 = np.ascontiguousarray(x.q).reshape(-1, C)
        m, k, nsat = kernel(backend, _di_norm_nb, "di_norm")(q2, np.ascontiguousarray(zp).ravel(), n_c, p2, p_fixed,
                                 spec.m_bits, k_lo, k_hi, code)
        m, k = m.reshape(rows), k.reshape(rows)
    if nsat and spec.overflow == "raise":
        raise IntsimOverflowError(
            f"x: {nsat} DI-Norm row scale(s) exceed the largest dyadic scale of m_bits="
            f"{spec.m_bits}, k_bits={spec.k_bits} (use overflow='saturate' to clamp and count)")
    return QTensor(x.q, x.zp, Dyadic(m, k), x.bits, x.signed), nsat


# ------------------------------------------------------------------ per-channel norm weight

#: the per-channel weight's mantissas are signed 16-bit, symmetric: |g| <= 2^15 - 1
NORM_W_BITS = 16
NORM_W_LIMIT = 2 ** (NORM_W_BITS - 1) - 1
#: exponent of the weight vector: g_real = g * 2^-gk, 0 <= gk <= 31
NORM_W_K_MAX = 31


def _norm_weight_ref(q, zp, g):
    return (q.astype(np.int64) - zp.astype(np.int64)[..., None]) * g.astype(np.int64)


@njit(cache=True)
def norm_weight_row(x, zp, g, out):
    """The Numba kernel of one row of :func:`norm_weight`: ``out_j = (x_j - zp) * g_j``,
    exact (|.| < 2^16 * 2^15 = 2^31)."""
    for j in range(x.shape[0]):
        out[j] = (np.int64(x[j]) - zp) * np.int64(g[j])


@njit(cache=True)
def _norm_weight_nb(q, zp, g, out):
    for i in range(q.shape[0]):
        norm_weight_row(q[i], np.int64(zp[i]), g, out[i])


def check_norm_weight(name: str, g, gk, C: int) -> tuple[np.ndarray, int]:
    """Validate a per-channel norm weight ``(g, gk)`` for rows of ``C`` channels."""
    check_int_array(name, g, ndim=1)
    if g.shape != (C,):
        raise IntsimError(f"{name}: shape {g.shape} != ({C},), one weight per channel")
    check_range(name, g, -NORM_W_LIMIT, NORM_W_LIMIT)
    check_int(f"{name} exponent", gk, 0, NORM_W_K_MAX)
    return g.astype(np.int64), int(gk)


def norm_weight(x: QTensor, g: np.ndarray, gk: int, backend: str = "numba") -> QTensor:
    """DI-Norm's per-channel weight: ``y_j = (q_j - zp) * g_j`` exactly, scale ``(m, k + gk)``.

    The RMSNorm gain γ (divided by FSBR's qkv/fc1 smoothing factors s) is kept in the
    graph as signed 16-bit mantissas ``g`` with one exponent ``gk`` per vector (real
    weight ``g_j * 2^-gk``; the converter rounds, ties to even, in float) instead of
    being folded into the next linear layer, so the next DI-MatMul's per-token input
    quantizer sees ``x / rms * γ / s``: the form the paper's smoothing is learned for.

    Input: DI-Norm's output, ``|q - zp| <= 2^16 - 1``; ``|g| <= 2^15 - 1``,
    ``0 <= gk <= 31``.  Output: ``QTensor.exact`` of int64 ``y`` with
    ``|y| <= (2^16 - 1)(2^15 - 1) < 2^31``; nothing is rounded (the next DI-MatMul
    requantizes the row to A bits, spec.rounding).
    """
    _check_backend(backend)
    if not isinstance(x, QTensor):
        raise IntsimError(f"x: expected a QTensor, got {type(x).__name__}")
    C = x.q.shape[-1]
    g, gk = check_norm_weight("weight", g, gk, C)
    zp = np.asarray(x.zp, dtype=np.int64)
    if x.bits > 16:
        raise IntsimError(f"x: bits {x.bits} > 16 is outside the norm weight's declared input range")
    check_range("x (q - zp)", x.centered(), -NORM_D_LIMIT, NORM_D_LIMIT)
    if backend == "reference":
        y = _norm_weight_ref(x.q, zp, g)
    else:
        rows = x.q.shape[:-1]
        q2 = np.ascontiguousarray(x.q).reshape(-1, C)
        y = np.empty(q2.shape, dtype=np.int64)
        kernel(backend, _norm_weight_nb, "norm_weight")(q2, np.ascontiguousarray(np.broadcast_to(zp, rows)).ravel(), g, y)
        y = y.reshape(x.q.shape)
    s = x.scale
    return QTensor.exact(y, Dyadic(s.m, np.asarray(s.k, dtype=np.int64) + gk))
