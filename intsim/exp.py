"""DI-Exp: I-LLM's dynamic integer exponential (paper Algorithm 1).  Spec: docs/SPEC.md section 5.

For integers ``x <= 0`` whose real value is ``x * s`` with a per-row dyadic scale
``s = m * 2^-k``, DI-Exp returns integers ``out`` and a per-row unit ``T = -t >= 1`` with

    out / T  ~=  exp(x * s)            (the output scale 1/T is not dyadic; it cancels
                                        in the ratios softmax and sigmoid take)

Per row (``rnd`` = ``spec.rounding``), all int64:

0. ``m_f = m + (m >> 1) - (m >> 4)``        m * log2(e) with log2(e) ~ LOG2E_Q4 / 16
   ``j   = max(0, k - 29 - bitlen(m_f))``   normalization (not in the paper, see 1.)
   ``k'  = k - j``;  ``x' = rnd(x / 2^j)``   (j = 0: x' = x, the paper's algorithm exactly)
1. ``T = max(1, rnd(2^k' / m_f))``          T = -t, the number of x' units per halving
2. ``q = floor(-x' / T)``                   q >= 0   (= floor(x'/t), floor division)
3. ``r = x' + q*T``                         r in (-T, 0]   (= x' - q*t)
4. ``e = (r >> 1) + T``                     T * 2^(-f) ~= T * (1 - f/2), f = -r/T in [0, 1)
5. ``out = e >> q``                         (q >= 63 gives 0)

The normalization in step 0 caps T at 2^30: when the paper's T would exceed 2^30 (a
scale finer than ~1e-9), x drops its surplus fraction bits instead of T growing.  It
changes out by less than 0.35 units of 1/T and bounds every consumer's products.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from .errors import IntsimError, check_int_array, check_range
from .fixedpoint import (kernel, ABS_LIMIT, _as_i64, _check_backend, _div_round_ref, _rshift_round_ref,
                         bit_length_nb, bit_length_ref, div_round_nb, rounding_code,
                         rshift_round_nb)
from .options import DEFAULT_SPEC, Spec
from .qtensor import Dyadic

#: log2(e) in Q4: 0b1_0111 / 16 = 1 + 1/2 - 1/16 = 1.4375 ~= log2(e) = 1.442695 (-0.36 %);
#: applied as the shift-add m + (m >> 1) - (m >> 4).
LOG2E_Q4 = 0b1_0111
#: T = -t <= 2^T_BITS: the normalization of step 0 keeps 2^k' / m_f <= 2^30.
T_BITS = 30
#: x range: -(2^62 - 1) <= x <= 0 (every intermediate is bounded by |x| or by T)
X_LIMIT = ABS_LIMIT
#: scale bounds: 1 <= m <= 2^31 - 1 (Dyadic's limit), |k| <= 2^20
M_LIMIT = 2 ** 31 - 1
K_LIMIT = 2 ** 20
#: reciprocal precision of step 2's floor(n / T): MT = floor(2^57 / T), T <= 2^30
EXP_SHIFT = 57
#: a quotient q >= EXP_Q_ZERO gives out = 0 (e >> q with e <= 2^30)
EXP_Q_ZERO = 63


# ------------------------------------------------------------------ the row unit T

def _exp_unit_ref(m, k, code):
    """Per-row ``(T, j)`` of steps 0-1.  m >= 1 (int64 arrays of one shape)."""
    m = np.asarray(m, dtype=np.int64)
    k = np.asarray(k, dtype=np.int64)
    mf = m + (m >> 1) - (m >> 4)                       # <= 1.5 m < 2^32; >= 1 for m >= 1
    j = np.maximum(np.int64(0), k - (T_BITS - 1) - bit_length_ref(mf))
    kk = k - j                                         # <= 29 + bitlen(m_f) <= 61
    pos = kk > 0
    num = np.left_shift(np.int64(1), np.where(pos, kk, 0))    # 2^k' <= 2^61
    # k' <= 0: 2^k'/m_f <= 1 rounds to 0 or 1 under every tie rule, so T = 1.
    T = np.where(pos, np.maximum(_div_round_ref(num, mf, code), 1), 1)
    return T.astype(np.int64), j.astype(np.int64)


@njit(cache=True)
def exp_unit_nb(m, k, code):
    """Scalar kernel of steps 0-1: returns ``(T, j)`` for a row scale m * 2^-k, m >= 1."""
    mf = m + (m >> 1) - (m >> 4)
    j = max(np.int64(0), k - (T_BITS - 1) - bit_length_nb(mf))
    kk = k - j
    if kk <= 0:
        return np.int64(1), np.int64(j)
    T = div_round_nb(np.int64(1) << kk, mf, code)
    return np.int64(max(T, 1)), np.int64(j)


# ------------------------------------------------------------- the element steps

def _exp_apply_ref(x, T, j, code):
    """Steps 2-5 for x <= 0 (int64), with ``T``, ``j`` broadcast against x."""
    x = np.asarray(x, dtype=np.int64)
    xs = _rshift_round_ref(x, np.broadcast_to(j, x.shape), code)  # x' <= 0
    n = -xs                                            # 0 <= n <= 2^62 - 1
    q = n // T                                         # floor, q >= 0
    r = q * T - n                                      # in (-T, 0]; |q*T| <= n
    e = (r >> 1) + T                                   # in [1, T], T <= 2^30
    return np.where(q >= 63, 0, e >> np.minimum(q, 63)).astype(np.int64)


@njit(cache=True, inline="always")
def exp_recip_nb(T):
    """Per-row constant of :func:`exp_apply_nb`: ``MT = floor(2^57 / T)``."""
    return (np.int64(1) << EXP_SHIFT) // T


@njit(cache=True, inline="always")
def exp_apply_nb(x, T, j, MT, code):
    """The Numba kernel of steps 2-5 for one element x <= 0, with the row's ``(T, j)``
    from :func:`exp_unit_nb` and ``MT`` from :func:`exp_recip_nb`; the same integer as
    :func:`_exp_apply_ref`.

    ``n = -x'`` >= 0.  ``n >= 63 T`` means ``q = floor(n / T) >= 63``: out = 0.  Else
    ``n < 63 T <= 63 * 2^30`` and ``n MT < 63 * 2^57 < 2^63``; ``n / T - n MT / 2^57 <
    n / 2^57 < 1``, so ``(n MT) >> 57`` is q or q - 1 and one remainder test fixes it.
    ``r = q T - n = -(n - q T)``.
    """
    if j > 0:
        x = rshift_round_nb(x, j, code)
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
def _di_exp_nb(x, m, k, code, out, T_out):
    rows, C = x.shape
    for i in range(rows):
        T, j = exp_unit_nb(m[i], k[i], code)
        MT = exp_recip_nb(T)
        T_out[i] = T
        for c in range(C):
            out[i, c] = exp_apply_nb(x[i, c], T, j, MT, code)


def _di_exp_ref(x, m, k, code):
    T, j = _exp_unit_ref(m, k, code)
    return _exp_apply_ref(x, T[..., None], j[..., None], code), T


# ------------------------------------------------------------------- public op

def row_scale(name: str, scale, rows: tuple, m_lo: int = 0, m_hi: int = M_LIMIT,
              k_lim: int = K_LIMIT) -> tuple[np.ndarray, np.ndarray]:
    """Validate a per-row Dyadic (shape ``rows`` or scalar) and broadcast it to ``rows``."""
    if not isinstance(scale, Dyadic):
        raise IntsimError(f"{name}: expected a Dyadic, got {type(scale).__name__}")
    if scale.shape not in (rows, ()):
        raise IntsimError(f"{name}: shape {scale.shape} is neither the row shape {rows} nor ()")
    m = np.ascontiguousarray(np.broadcast_to(scale.m, rows), dtype=np.int64)
    k = np.ascontiguousarray(np.broadcast_to(scale.k, rows), dtype=np.int64)
    check_range(f"{name}.m", m, m_lo, m_hi)
    check_range(f"{name}.k", k, -k_lim, k_lim)
    return m, k


def di_exp(x: np.ndarray, scale: Dyadic, spec: Spec = DEFAULT_SPEC,
           backend: str = "numba") -> tuple[np.ndarray, np.ndarray]:
    """DI-Exp: ``out ~= T * exp(x * m * 2^-k)`` per row, integer only.

    Inputs: ``x`` integers of shape (..., C), ``-(2^62 - 1) <= x <= 0`` (a positive x
    raises: DI-Exp's inputs are max-subtracted); ``scale`` a Dyadic per row (shape
    ``x.shape[:-1]``, or scalar), ``1 <= m <= 2^31 - 1``, ``|k| <= 2^20``.
    Returns ``(out, T)``: ``out`` int64 of x's shape with ``0 <= out <= T``, and ``T``
    int64 per row, ``1 <= T <= 2^30``; the output scale is ``1/T`` (``T`` is the
    paper's ``-t``).

    Steps (module docstring): ``m_f = m + (m>>1) - (m>>4)``; normalization
    ``j = max(0, k - 29 - bitlen(m_f))``, ``x' = round(x / 2^j)``, ``k' = k - j``;
    ``T = max(1, round(2^k' / m_f))``; ``q = floor(-x'/T)``; ``r = x' + q*T``;
    ``e = (r >> 1) + T``; ``out = e >> q`` (0 for q >= 63).

    Overflow (int64 throughout): ``m_f <= 1.5 m < 2^32``; ``2^k' <= 2^(29+32) = 2^61``;
    ``T <= 2^30`` (``2^k'/m_f <= 2^(k'-bitlen(m_f)+1) <= 2^30``); ``n = -x' <= 2^62 - 1``;
    ``q*T <= n``; ``|r| < T``; ``1 <= e <= T``.
    Tie rules: ``spec.rounding`` for T and for the normalization shift; steps 2-5
    floor (floor division and arithmetic shifts, as the paper writes them).
    Accuracy (m >= 2^7, docs/SPEC.md section 5.4): ``|out - T*exp(x*s)| <= 0.0431 T
    + 0.0024 T + 2`` units of 1/T -- the chord 1 - f/2 for 2^-f, then log2(e) ~ 1.4375
    and the rounding of T, then the floors.
    """
    _check_backend(backend)
    code = rounding_code(spec.rounding)
    check_int_array("x", x)
    if x.ndim < 1:
        raise IntsimError(f"x: needs at least one axis, got shape {x.shape}")
    x64 = _as_i64("x", x)                              # refuses uint64 beyond int64
    if x64.size and int(x64.max()) > 0:
        idx = np.unravel_index(int(np.argmax(x64)), x64.shape)
        raise IntsimError(f"x: DI-Exp needs x <= 0 (max-subtracted input), got "
                          f"{int(x64.max())} at index {tuple(int(i) for i in idx)}")
    check_range("x", x64, -X_LIMIT, 0)
    rows = x.shape[:-1]
    m, k = row_scale("scale", scale, rows, m_lo=1)
    if backend == "reference":
        return _di_exp_ref(x64, m, k, code)
    C = x.shape[-1]
    x2 = np.ascontiguousarray(x64).reshape(-1, C)
    out = np.empty(x2.shape, dtype=np.int64)
    T = np.empty(x2.shape[0], dtype=np.int64)
    kernel(backend, _di_exp_nb, "di_exp")(x2, m.ravel(), k.ravel(), code, out, T)
    return out.reshape(x.shape), T.reshape(rows)
