"""Dynamic per-row (per-token) integer requantization: the heart of DI-MatMul.

``requant_rows(v, scale_in, bits, symmetric)`` takes exact integers ``v`` (int64, shape
(..., C)) whose real value is ``v * scale_in`` per row and re-expresses each row as
``bits``-wide codes with a fresh dyadic scale fitted from the row's own range.  The
same function quantizes a DI-MatMul input to A bits and requantizes its int32/int64
accumulator to the output width.  Spec: docs/SPEC.md section 3.

Per row, all integer (``Q`` the code range, ``rnd`` the spec's tie rule):

1. range.  asymmetric: ``lo = min(0, min v)``, ``hi = max(0, max v)``, ``R = hi - lo``
   (the range always contains 0, so the zero point is a code in [0, Q]);
   symmetric: ``R = max |v|``.
2. pre-shift.  ``sh = max(0, bitlen(R) - 32)``; ``v' = v >> sh`` (floor) and the range
   is recomputed from v'.  Afterwards ``R' <= 2^32`` and ``|v'| <= 2^32``.  The floor
   loses less than 2^-31 of the range, far below one output LSB (Q <= 2^16).
3. codes.  asymmetric, ``Q = 2^bits - 1``: ``zp = rnd(-lo' * Q / R')`` in [0, Q],
   ``q = clamp(rnd(v' * Q / R') + zp, 0, Q)`` (the clamp acts only on a tie at an end);
   symmetric, ``Q = 2^(bits-1) - 1``: ``q = rnd(v' * Q / R')``, |q| <= Q, zp = 0.
   Overflow: |v' * Q| <= 2^32 * (2^16 - 1) < 2^48.
4. scale.  ``s_out = s_in * 2^sh * R' / Q`` = ``fit(m_in * R' / Q) * 2^-(k_in - sh)``
   with :func:`dyadic_fit` (mantissa ``spec.m_bits``, exponent range ``spec.k_range``
   on the final k).  Bound: m_in <= 2^28 so m_in * R' <= 2^60.
5. zero row (R' = 0): q = 0, zp = 0, scale m = 0 (k = 0 clamped into range).
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from .errors import IntsimError, IntsimOverflowError, check_int, check_int_array, check_range
from .fixedpoint import (ROUND_CODE, CEIL, _div_round_ref, _fit_ref, _check_backend, bit_length_nb,
                         bit_length_ref, div_round_nb, dyadic_fit_nb, rounding_code)
from .options import DEFAULT_SPEC, Spec
from .qtensor import Dyadic, QTensor, dtype_for

CEIL_CODE = ROUND_CODE[CEIL]
#: |v| bound of the requantizer's input (keeps R = hi - lo inside int64)
V_LIMIT = 2 ** 61 - 1
#: bound of the input mantissa (m_in * R' <= 2^28 * 2^32 = 2^60 < dyadic_fit's 2^61)
M_IN_LIMIT = 2 ** 28
PRE_BITS = 32


def _code_range(bits: int, symmetric: bool) -> int:
    return 2 ** (bits - 1) - 1 if symmetric else 2 ** bits - 1


def _code_div_ref(a, m_o, e, code):
    """``rnd(a * 2^e / m_o)`` exactly: ``a << e`` for e >= 0, else ``m_o << -e``."""
    pos = np.maximum(e, 0)
    return _div_round_ref(a << pos, m_o << np.maximum(-e, 0), code)


def _requant_ref(v, m_in, k_in, bits, symmetric, m_bits, k_lo, k_hi, code, fitted):
    Q = np.int64(_code_range(bits, symmetric))
    if symmetric:
        R = np.maximum(np.abs(v.min(axis=-1)), np.abs(v.max(axis=-1)))
    else:
        R = np.maximum(v.max(axis=-1), 0) - np.minimum(v.min(axis=-1), 0)
    sh = np.maximum(bit_length_ref(R) - PRE_BITS, 0)
    vs = v >> sh[..., None]
    if symmetric:
        Rs = np.maximum(np.abs(vs.min(axis=-1)), np.abs(vs.max(axis=-1)))
        lo = np.zeros_like(Rs)
    else:
        lo = np.minimum(vs.min(axis=-1), 0)
        Rs = np.maximum(vs.max(axis=-1), 0) - lo
    zero = Rs == 0
    # scale: final k = e + k_in - sh must lie in [k_lo, k_hi]
    m, e, sat = _fit_ref(m_in * Rs, Q, m_bits, k_lo - k_in + sh, k_hi - k_in + sh,
                         CEIL_CODE if fitted else code)
    # rows whose codes follow the fitted scale: not saturated, non-zero, and m << -e inside
    # int64 (only a scale refitted at k_max can fail that; such rows keep range codes)
    by_scale = fitted & ~sat & (m > 0) & (bit_length_ref(m) - np.minimum(e, 0) <= 62)
    Rd = np.where(zero, 1, Rs)
    md = np.where(by_scale, m, 1)
    ed = np.where(by_scale, e, 0)
    a_in = np.where(by_scale, m_in, 1)
    zp_r = _div_round_ref(-lo * Q, Rd, code)
    zp_f = _code_div_ref(-lo * a_in, md, ed, code)
    zp = np.where(zero, 0, np.where(by_scale, zp_f, zp_r))
    q_r = _div_round_ref(vs * Q, Rd[..., None], code)
    q_f = _code_div_ref(vs * a_in[..., None], md[..., None], ed[..., None], code)
    q = np.where(by_scale[..., None], q_f, q_r)
    lo_q = -Q if symmetric else 0
    q = np.clip(q + zp[..., None], lo_q, Q)
    q = np.where(zero[..., None], 0, q)
    k = np.where(m == 0, np.clip(0, k_lo, k_hi), e + k_in - sh)
    return q, zp, m, k, int(np.count_nonzero(sat))


@njit(cache=True, inline="always")
def _code_div_nb(a, m_o, e, code):
    if e >= 0:
        return div_round_nb(a << e, m_o, code)
    return div_round_nb(a, m_o << (-e), code)


@njit(cache=True, parallel=True)
def _requant_nb(v, m_in, k_in, bits, symmetric, m_bits, k_lo, k_hi, code, fitted, q_out):
    rows, C = v.shape
    Q = (np.int64(1) << (bits - 1)) - 1 if symmetric else (np.int64(1) << bits) - 1
    zp = np.zeros(rows, dtype=np.int64)
    m = np.zeros(rows, dtype=np.int64)
    k = np.zeros(rows, dtype=np.int64)
    sat_rows = np.zeros(rows, dtype=np.int64)
    for i in prange(rows):
        vmin = v[i, 0]
        vmax = v[i, 0]
        for j in range(1, C):
            x = v[i, j]
            if x < vmin:
                vmin = x
            if x > vmax:
                vmax = x
        if symmetric:
            R = max(abs(vmin), abs(vmax))
        else:
            R = max(vmax, 0) - min(vmin, 0)
        sh = max(bit_length_nb(R) - 32, 0)
        vmin >>= sh
        vmax >>= sh
        if symmetric:
            Rs = max(abs(vmin), abs(vmax))
            lo = np.int64(0)
        else:
            lo = min(vmin, 0)
            Rs = max(vmax, 0) - lo
        if Rs == 0:
            for j in range(C):
                q_out[i, j] = 0
            k[i] = min(max(0, k_lo), k_hi)
            continue
        mi, e, sat = dyadic_fit_nb(m_in[i] * Rs, Q, m_bits, k_lo - k_in[i] + sh,
                                   k_hi - k_in[i] + sh, 4 if fitted else code)
        m[i] = mi
        k[i] = e + k_in[i] - sh if mi != 0 else min(max(0, k_lo), k_hi)
        if sat:
            sat_rows[i] = 1
        by_scale = fitted and not sat and mi > 0 and bit_length_nb(mi) - min(e, 0) <= 62
        if by_scale:
            z = _code_div_nb(-lo * m_in[i], mi, e, code)
        elif symmetric:
            z = np.int64(0)
        else:
            z = div_round_nb(-lo * Q, Rs, code)
        zp[i] = z
        qlo = -Q if symmetric else np.int64(0)
        for j in range(C):
            if by_scale:
                t = _code_div_nb((v[i, j] >> sh) * m_in[i], mi, e, code) + z
            else:
                t = div_round_nb((v[i, j] >> sh) * Q, Rs, code) + z
            q_out[i, j] = min(max(t, qlo), Q)
    return zp, m, k, sat_rows.sum()


def requant_rows(v: np.ndarray, scale_in: Dyadic, bits: int, symmetric: bool = False,
                 spec: Spec = DEFAULT_SPEC, backend: str = "numba",
                 name: str = "v") -> tuple[QTensor, int]:
    """Requantize each row of exact integers ``v`` to ``bits``-wide codes.

    ``v``: integer array (..., C), |v| <= 2^61 - 1; ``scale_in``: the real value of one
    unit of v, one Dyadic per row (shape (...)) or a scalar Dyadic, m <= 2^28.
    Returns the QTensor (asymmetric: unsigned codes, zp in [0, 2^bits - 1];
    symmetric: signed codes in [-(2^(bits-1) - 1), 2^(bits-1) - 1], zp = 0) and the
    number of rows whose scale saturated (exponent range exhausted).  With
    ``spec.overflow == "raise"`` a saturated scale raises instead.
    Tie rule: ``spec.rounding`` for every division and the dyadic fit; the pre-shift
    floors (module docstring).
    """
    _check_backend(backend)
    check_int_array(name, v)
    bits = check_int("bits", bits, 2, 16)
    if v.ndim < 1 or v.shape[-1] == 0:
        raise IntsimError(f"{name}: needs a non-empty last axis, got shape {v.shape}")
    v64 = v.astype(np.int64, copy=False)
    check_range(name, v64, -V_LIMIT, V_LIMIT)
    rows = v.shape[:-1]
    m_in = np.broadcast_to(scale_in.m, rows).astype(np.int64)
    k_in = np.broadcast_to(scale_in.k, rows).astype(np.int64)
    check_range(f"{name} scale m", m_in, 0, M_IN_LIMIT)
    check_range(f"{name} scale k", k_in, -(2 ** 20), 2 ** 20)
    code = rounding_code(spec.rounding)
    k_lo, k_hi = spec.k_range
    fitted = spec.requant_mode == "fitted"
    if backend == "reference":
        q, zp, m, k, nsat = _requant_ref(v64, m_in, k_in, bits, symmetric, spec.m_bits,
                                         k_lo, k_hi, code, fitted)
    else:
        C = v.shape[-1]
        v2 = np.ascontiguousarray(v64).reshape(-1, C)
        q = np.empty(v2.shape, dtype=np.int64)
        zp, m, k, nsat = _requant_nb(v2, np.ascontiguousarray(m_in).ravel(),
                                     np.ascontiguousarray(k_in).ravel(), bits, symmetric,
                                     spec.m_bits, k_lo, k_hi, code, fitted, q)
        q, zp, m, k = q.reshape(v.shape), zp.reshape(rows), m.reshape(rows), k.reshape(rows)
    if nsat and spec.overflow == "raise":
        raise IntsimOverflowError(
            f"{name}: {nsat} row scale(s) exceed the largest dyadic scale of m_bits="
            f"{spec.m_bits}, k_bits={spec.k_bits} (use overflow='saturate' to clamp and count)")
    dt = dtype_for(bits, symmetric)
    return QTensor(q.astype(dt), zp.astype(np.int32), Dyadic(m, k), bits, symmetric), nsat
