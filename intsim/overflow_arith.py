"""The exact arithmetic of the overflow report's recomputes (intsim.overflow).

Every recompute is exact.  Two ways to be exact, chosen per op call from a bound:

* **int64, vectorized**, where a bound on the call's actual operands (the op's proven
  bound, docs/SPEC.md, evaluated on the operands' maxima; computed in Python ints) shows
  that no value of the recompute, product, partial sum or shifted term, can leave int64
  (``I64_MAX``), or, where the value then goes through a rounding shift or division,
  the int64 references' input bound (``ROUND_MAX``: intsim.fixedpoint's ``rshift_round``,
  ``div_round`` and ``dyadic_fit``, which equal intsim.oracle bit for bit inside it);
* **Python ints** (object arrays, intsim.oracle) everywhere else: an operand out of its
  proven range (a stress input, a crafted model) is never wrapped, only slower.

The Python-int forms here are the report's recomputes as they were before the int64
path existed; ``overflow_report(..., exact=True)`` uses them throughout and is the
oracle the tests hold the default to (tests/test_overflow.py).
"""
from __future__ import annotations

import numpy as np
from numba import njit

from .fixedpoint import ABS_LIMIT, CEIL, FIT_NUM_LIMIT, dyadic_fit, fit_den_limit, rshift_round
from .fixedpoint import bit_length_ref
from .hadamard import ROT_OUT_BITS
from .oracle import requant_scale, rshift
from .requant import PRE_BITS
from .residual import ALIGN_BITS

REF = "reference"
#: the largest magnitude an int64 recompute may reach: plain products and sums ...
I64_MAX = 2 ** 63 - 1
#: ... and values that then go through a rounding shift, division or fit of
#: intsim.fixedpoint (their references need |x| <= 2^62 - 1)
ROUND_MAX = ABS_LIMIT
#: an exponent range no fit reaches: dyadic_fit with it returns the unclamped exponent
_K_OPEN = (-(2 ** 20), 2 ** 20)


def ints(a) -> np.ndarray:
    """An integer array as an object array of Python ints (exact for any magnitude)."""
    return np.asarray(a).astype(object)


def absmax(a) -> int:
    """max |a| as a Python int (0 for an empty array); exact for int64 and object arrays."""
    if not np.size(a):
        return 0
    a = np.asarray(a)
    if a.dtype != object:
        return max(abs(int(a.max())), abs(int(a.min())))
    return int(np.max(np.abs(a)))


def exact_einsum(spec: str, a: np.ndarray, b: np.ndarray, n: int) -> np.ndarray:
    """A contraction over ``n`` terms, in int64 when ``n * max|a| * max|b| < 2^63`` (then no
    partial sum can wrap), else in Python ints."""
    if n * absmax(a) * absmax(b) < 2 ** 63:
        return np.einsum(spec, a.astype(np.int64), b.astype(np.int64))
    return np.einsum(spec, ints(a), ints(b))


def round_shift(x: np.ndarray, s, rounding: str) -> np.ndarray:
    """``x / 2^s`` rounded by ``rounding`` (the tie rule the caller's op names): an int64
    ``x`` (|x| <= ROUND_MAX by the caller's bound) with intsim.fixedpoint's NumPy
    reference, equal to intsim.oracle.rshift there; an object ``x`` element by element
    with the oracle.  ``s``: an int, or an int64 array broadcast against ``x``."""
    if x.dtype != object:
        return rshift_round(x, s, rounding, backend=REF)
    return np.vectorize(lambda z, n: rshift(int(z), int(n), rounding), otypes=[object])(x, s)


# ------------------------------------------------------------------ DI-MatMul's group sums

@njit(cache=True)
def _group_acc_nb(xc, q, G, acc):
    """``acc[t, n, g] = sum over the g-th group of K of xc[t, k] * q[n, k]`` in int64 (the
    caller's bound: G max|xc| max q < 2^63, so no partial sum wraps)."""
    T, K = xc.shape
    N = q.shape[0]
    for n in range(N):
        for t in range(T):
            for g in range(K // G):
                xs, qs = xc[t, g * G:(g + 1) * G], q[n, g * G:(g + 1) * G]
                s = 0
                for k in range(G):              # slices: a loop LLVM vectorizes
                    s += xs[k] * qs[k]
                acc[t, n, g] = s


@njit(cache=True)
def _group_acc32_nb(xc, q, G, acc):
    """:func:`_group_acc_nb` in int32 lanes, for the caller's tighter bound G max|xc| max q
    <= 2^31 - 1 (every DI-MatMul that ``matmul.acc_bound`` admits): twice the lanes per
    vector, and no partial sum wraps.  The sums are stored as int64."""
    T, K = xc.shape
    N = q.shape[0]
    for n in range(N):
        for t in range(T):
            for g in range(K // G):
                xs, qs = xc[t, g * G:(g + 1) * G], q[n, g * G:(g + 1) * G]
                s = np.int32(0)
                for k in range(G):              # int32 throughout (Numba would widen to int64)
                    s = np.int32(s + np.int32(xs[k]) * np.int32(qs[k]))
                acc[t, n, g] = s


def group_acc(xc: np.ndarray, q: np.ndarray, G: int, compiled: bool) -> np.ndarray:
    """DI-MatMul's group accumulators ``acc[t, n, g]`` of the centred input codes ``xc``
    [T, K] and the weight codes ``q`` [N, K]: int64 when ``G * max|xc| * max q < 2^63``
    (the form of ``intsim.matmul.acc_bound``; summed in int32 lanes when it is at most
    2^31 - 1), else Python ints.  ``compiled``: the int64
    case in the compiled loop, else with NumPy's matmul (the report's original recompute,
    and a run on the reference backend, which compiles nothing)."""
    T, K = xc.shape
    N, ng = q.shape[0], K // G
    bound = G * absmax(xc) * absmax(q)
    exact64 = bound < 2 ** 63
    if bound <= 2 ** 31 - 1 and compiled:
        acc = np.empty((T, N, ng), dtype=np.int64)
        _group_acc32_nb(np.ascontiguousarray(xc, dtype=np.int32), np.ascontiguousarray(q), G, acc)
        return acc
    if exact64 and compiled:
        acc = np.empty((T, N, ng), dtype=np.int64)
        _group_acc_nb(np.ascontiguousarray(xc, dtype=np.int64), np.ascontiguousarray(q), G, acc)
        return acc
    acc = np.empty((T, N, ng), dtype=np.int64 if exact64 else object)
    for g in range(ng):
        xs_ = xc[:, g * G:(g + 1) * G]
        for n0 in range(0, N, 4096):                   # bounded int64 copies of the codes
            qs_ = q[n0:n0 + 4096, g * G:(g + 1) * G].astype(np.int64)
            acc[:, n0:n0 + 4096, g] = (xs_ @ qs_.T) if exact64 else ints(xs_) @ ints(qs_).T
    return acc


# ------------------------------------------------------------------ requantizer exponents

def requant_k_need(v, m_in, k_in, bits: int, symmetric: bool, spec, exact: bool) -> list:
    """Per row of ``v`` (int64 (..., C) flattened to rows): the exponent requant_rows'
    scale fit needs before its range clamp (docs/SPEC.md section 3), None for a zero row
    or a zero input scale.  Python ints row by row (intsim.oracle.requant_scale) when
    ``exact``, or when the rows' extremes or ``m_in * R'`` leave the int64 fit's bounds;
    else the same steps vectorized: the extremes, the floor pre-shift, R' and
    intsim.fixedpoint's reference fit (ceil in "fitted" mode, else ``spec.rounding``)
    with an exponent range it never reaches."""
    C = v.shape[-1]
    v2 = np.asarray(v).reshape(-1, C)
    m2 = np.broadcast_to(m_in, v.shape[:-1]).reshape(-1)
    k2 = np.broadcast_to(k_in, v.shape[:-1]).reshape(-1)
    Q = (1 << (bits - 1)) - 1 if symmetric else (1 << bits) - 1
    if not v2.size:
        return []
    lo, hi = v2.min(axis=1), v2.max(axis=1)
    # |v| <= 2^62 - 1 keeps R and R' in int64; R' < 2^(PRE_BITS + 1)
    fast = (not exact and v2.dtype != object and absmax(lo) <= ROUND_MAX and absmax(hi) <= ROUND_MAX
            and int(m2.min()) >= 0 and absmax(m2) << (PRE_BITS + 1) <= FIT_NUM_LIMIT
            and Q <= fit_den_limit(spec.m_bits))
    if not fast:
        return [requant_scale(int(lo[i]), int(hi[i]), int(m2[i]), int(k2[i]), bits, symmetric,
                              spec).k_need for i in range(v2.shape[0])]
    lo, hi = lo.astype(np.int64), hi.astype(np.int64)
    R = np.maximum(np.abs(lo), np.abs(hi)) if symmetric else np.maximum(hi, 0) - np.minimum(lo, 0)
    sh = np.maximum(bit_length_ref(R) - PRE_BITS, 0)
    lo_s, hi_s = lo >> sh, hi >> sh                     # floor shifts: the shifted extremes
    Rs = (np.maximum(np.abs(lo_s), np.abs(hi_s)) if symmetric
          else np.maximum(hi_s, 0) - np.minimum(lo_s, 0))
    num = m2.astype(np.int64) * Rs
    rule = CEIL if spec.requant_mode == "fitted" else spec.rounding
    _, k, _ = dyadic_fit(num, Q, spec.m_bits, _K_OPEN, rule, backend=REF)
    need = k + k2.astype(np.int64) - sh
    return [None if int(n) == 0 else int(x) for n, x in zip(num, need)]


# ------------------------------------------------------------------ the residual add

def align_add_exact(va, vb, ka, kb, rounding: str):
    """The residual add's aligned sum (docs/SPEC.md section 10) of the rows of ``va * 2^-ka``
    and ``vb * 2^-kb``, in Python ints, row by row: ``(s, K)``.  The coarser operand
    (smaller k) is shifted left by ``sc = min(kf - kc, ALIGN_BITS - L)`` (L: its row's bit
    length), the finer one right by ``kf - K``, rounded by ``rounding``."""
    s = np.empty(va.shape, dtype=object)
    K = np.empty(va.shape[0], dtype=np.int64)
    for i in range(va.shape[0]):
        a_coarse = int(ka[i]) <= int(kb[i])
        vc, vf = (va[i], vb[i]) if a_coarse else (vb[i], va[i])
        kc, kf = min(int(ka[i]), int(kb[i])), max(int(ka[i]), int(kb[i]))
        L = absmax(vc).bit_length()
        sc = 0 if L == 0 else min(kf - kc, ALIGN_BITS - L)
        K[i] = kf if L == 0 else kc + sc
        sf = kf - int(K[i])
        s[i] = [(int(x) << sc) + rshift(int(y), sf, rounding) for x, y in zip(vc, vf)]
    return s, K


def align_add64(va, vb, ka, kb, rounding: str):
    """:func:`align_add_exact` on int64 rows with every ``|v| < 2^ALIGN_BITS`` (the
    caller's bound): then L <= ALIGN_BITS, so ``sc >= 0`` and ``|vc << sc| <
    2^ALIGN_BITS``; ``|vf| <= 2^62 - 1`` for fixedpoint's rounding shift (any shift
    ``>= 0``); the sum is below 2^(ALIGN_BITS + 1).  The same per-row steps, vectorized."""
    ka, kb = np.asarray(ka, dtype=np.int64), np.asarray(kb, dtype=np.int64)
    a_coarse = (ka <= kb)[:, None]
    vc, vf = np.where(a_coarse, va, vb), np.where(a_coarse, vb, va)
    kc, kf = np.minimum(ka, kb), np.maximum(ka, kb)
    L = bit_length_ref(np.abs(vc).max(axis=1))
    sc = np.where(L == 0, 0, np.minimum(kf - kc, ALIGN_BITS - L))
    K = np.where(L == 0, kf, kc + sc)
    return np.left_shift(vc, sc[:, None]) + round_shift(vf, (kf - K)[:, None], rounding), K


# ------------------------------------------------------------------ the Hadamard rotation

def fwht_stages(y: np.ndarray, b: int, rounding: str) -> tuple:
    """The online Hadamard rotation (docs/SPEC.md section 7.6) of the rows of ``y`` [T, C]
    with every butterfly stage kept: ``(out, sh, peak)``, ``peak`` the elementwise largest
    |value| over the pre-shifted rows and every stage (the last is ``out``), the container's
    peak per position.  Per row ``sh = max(0, bitlen(max|y|) + log2 b - ROT_OUT_BITS)``, the
    pre-shift rounded by ``rounding`` (:func:`round_shift`).  ``y``: int64 (the caller's bound: |y| <=
    ROUND_MAX and every stage, at most ``b max|y'|``, inside int64) or an object array of
    Python ints (exact for any magnitude)."""
    T, C = y.shape
    L = np.array([absmax(r).bit_length() for r in y], dtype=np.int64)
    sh = np.maximum(L + b.bit_length() - 1 - ROT_OUT_BITS, 0)
    z = round_shift(y, sh[:, None], rounding)
    peak = np.abs(z)
    h = 1
    while h < b:                                  # stage h: pairs (j, j + h) in runs of 2h
        z = z.reshape(T, C // (2 * h), 2, h)
        z = np.stack([z[:, :, 0] + z[:, :, 1], z[:, :, 0] - z[:, :, 1]], axis=2).reshape(T, C)
        peak = np.maximum(peak, np.abs(z))
        h *= 2
    return z, sh, peak
