"""Dynamic per-row (per-token) integer requantization: the heart of DI-MatMul.

``requant_rows(v, scale_in, bits, symmetric)`` takes exact integers ``v`` (int64, shape
(..., C)) whose real value is ``v * scale_in`` per row and re-expresses each row as
``bits``-wide codes with a fresh dyadic scale fitted from the row's own range.  The
same function quantizes a DI-MatMul input to A bits and requantizes its int32/int64
accumulator to the output width.  Spec: docs/SPEC.md section 3.

Per row, all integer (``Q`` the code range, ``rnd`` the spec's tie rule; the default
``requant_mode = "fitted"``; ``"range"`` differs in steps 3-4 only, noted there):

1. range.  asymmetric: ``lo = min(0, min v)``, ``hi = max(0, max v)``, ``R = hi - lo``
   (the range always contains 0, so the zero point is a code in [0, Q]);
   symmetric: ``lo = 0``, ``R = max |v|``.
2. pre-shift (floor).  ``sh = max(0, bitlen(R) - 32)``; ``v' = v >> sh`` and the range
   is recomputed from v'.  Afterwards ``R' <= 2^32`` and ``|v'| <= 2^32``.  The floor
   loses less than 2^-31 of the range, far below one output LSB (Q <= 2^16).
3. scale.  ``(m, e) = fit(m_in * R' / Q)`` with :func:`~intsim.fixedpoint.dyadic_fit`
   (mantissa ``spec.m_bits``, rounded UP — ``ceil`` — so that codes computed against the
   scale never exceed Q; ``range`` mode rounds the fit with ``rnd``), final exponent
   ``k = e + k_in - sh`` within ``spec.k_range`` (a saturated fit is counted).
   Bound: m_in <= 2^28 so m_in * R' <= 2^60.
4. codes against the fitted scale.  ``zp = rnd(-lo' * m_in * 2^e / m)`` (0 when
   symmetric), ``q = clamp(rnd(v' * m_in * 2^e / m) + zp, lo_q, Q)`` with ``lo_q = 0``
   (asymmetric, ``Q = 2^bits - 1``) or ``-Q`` (symmetric, ``Q = 2^(bits-1) - 1``).
   Rows whose scale saturated or was refitted at k_max so far that ``m << -e`` would
   leave int64, and every row in ``range`` mode, take the codes from the exact range
   instead: ``zp = rnd(-lo' * Q / R')``, ``q = clamp(rnd(v' * Q / R') + zp, lo_q, Q)``.
   Overflow: ``|v' * m_in * 2^e| <= m * Q < 2^48``; ``|v' * Q| < 2^48``.
5. zero row (R' = 0): q = 0, zp = 0, scale m = 0 (k = 0 clamped into range).

The arithmetic exists twice: ``_requant_ref`` (NumPy, the executable spec) and
:func:`requant_row` (the Numba kernel of one row, which the whole-tensor op and the
fused forward both call); tests hold them equal.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from .errors import IntsimError, IntsimOverflowError, check_int, check_int_array, check_range
from .fixedpoint import (kernel, RC_CEIL, RC_FLOOR, RC_HALF_UP, RECIP_SHIFT, _check_backend, _div_round_ref,
                         _fit_ref, bit_length_nb, bit_length_ref, div_by_scale_nb, div_round_nb,
                         dyadic_fit_nb, rounding_code)
from .options import DEFAULT_SPEC, Spec
from .qtensor import Dyadic, QTensor, dtype_for

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
                         RC_CEIL if fitted else code)
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
    # codes against the fitted scale on by_scale rows, from the exact range on the others;
    # a form no row uses is not computed (the same integers, half the divisions: in fitted
    # mode nearly every row is by_scale, in range mode none is)
    if by_scale.all():
        q = _code_div_ref(vs * a_in[..., None], md[..., None], ed[..., None], code)
    elif not by_scale.any():
        q = _div_round_ref(vs * Q, Rd[..., None], code)
    else:
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
    """``rnd(a * 2^e / m_o)`` exactly: ``a << e`` for e >= 0, else ``m_o << -e``."""
    if e >= 0:
        return div_round_nb(a << e, m_o, code)
    return div_round_nb(a, m_o << (-e), code)


@njit(cache=True, inline="always")
def _row_range(v, zin, symmetric):
    """Steps 1-2 of one row: ``(sh, lo', R')`` of ``v - zin`` after the pre-shift."""
    vmin = np.int64(v[0]) - zin
    vmax = vmin
    for j in range(1, v.shape[0]):
        x = np.int64(v[j]) - zin
        if x < vmin:
            vmin = x
        if x > vmax:
            vmax = x
    R = max(abs(vmin), abs(vmax)) if symmetric else max(vmax, 0) - min(vmin, 0)
    sh = max(bit_length_nb(R) - PRE_BITS, 0)
    vmin >>= sh
    vmax >>= sh
    if symmetric:
        return sh, np.int64(0), max(abs(vmin), abs(vmax))
    lo = min(vmin, 0)
    return sh, lo, max(vmax, 0) - lo


@njit(cache=True, inline="always")
def _codes_floor_half_up(v, zin, sh, m_in, mi, e, z, Q, qlo, code, out):
    """Step 4's codes for ``floor`` and ``half_up`` with one reciprocal multiply each;
    returns False when the proof's range condition failed (impossible; the caller then
    redoes the row exactly).

    q = floor(X / Dd) with X = ((a << sl) + cadd) >> sr (a = ((v - zin) >> sh) m_in):
      floor   e >= 0: X = a << e,                   Dd = mi    (floor(a 2^e / mi))
              e <  0: X = a >> s,                   Dd = mi    (floor(floor(a/2^s)/mi))
      half_up e >= 0: X = (a << (e + 1)) + mi,      Dd = 2 mi  (floor(a 2^e / mi + 1/2))
              e <  0: X = (2a + mi 2^s) >> (s + 1), Dd = mi    (floor(a / D + 1/2))
    |a 2^e / mi| <= Q (step 4's bound), so X / Dd lies in [-Q1, Q1): u = X + Q1 Dd in
    [0, 2 Q1 Dd), 2 Q1 Dd <= 2^34, and q = floor(u / Dd) - Q1 by the reciprocal
    M = floor(2^46 / Dd) (u M < 2 Q1 2^46 <= 2^63, error < 2^-12) and one 0/1
    correction.  |2a + mi 2^s| <= 2^61 + 2^62.  Branch-free over the elements.
    """
    Q1 = Q + 1
    up = np.int64(code == RC_HALF_UP)
    if e >= 0:
        sl, sr = e + up, np.int64(0)
        cadd = mi * up
        Dd = mi << up
    else:
        sl, sr = up, -e + up
        cadd = (mi << -e) * up
        Dd = mi
    U = 2 * Q1 * Dd
    M = (np.int64(1) << RECIP_SHIFT) // Dd
    bad = np.int64(0)
    for j in range(v.shape[0]):
        a = ((np.int64(v[j]) - zin) >> sh) * m_in
        u = (((a << sl) + cadd) >> sr) + Q1 * Dd
        bad |= np.int64(u < 0) | np.int64(u >= U)
        q0 = (u * M) >> RECIP_SHIFT
        q0 += np.int64(u - q0 * Dd >= Dd)
        out[j] = min(max(q0 - Q1 + z, qlo), Q)
    return bad == 0


@njit(cache=True)
def requant_row(v, zin, m_in, k_in, bits, symmetric, m_bits, k_lo, k_hi, code, fitted, out):
    """The Numba kernel of one row of :func:`requant_rows` (module steps 1-5).

    ``v``: 1-d integers of any dtype, real value ``(v - zin) * m_in * 2^-k_in``; ``out``:
    1-d integer array receiving the codes.  Returns ``(zp, m, k, saturated)``.  Step 4's
    division by the fitted scale uses :func:`~intsim.fixedpoint.div_by_scale_nb` (floor
    and half_up: one reciprocal multiply, :func:`_codes_floor_half_up`); equal as
    integers to the reference's ``rnd(a * 2^e / m)``.
    """
    C = v.shape[0]
    Q = (np.int64(1) << (bits - 1)) - 1 if symmetric else (np.int64(1) << bits) - 1
    sh, lo, Rs = _row_range(v, zin, symmetric)
    k0 = np.int64(min(max(0, k_lo), k_hi))
    if Rs == 0:
        for j in range(C):
            out[j] = 0
        return np.int64(0), np.int64(0), k0, 0
    mi, e, sat = dyadic_fit_nb(m_in * Rs, Q, m_bits, k_lo - k_in + sh, k_hi - k_in + sh,
                               RC_CEIL if fitted else code)
    k = e + k_in - sh if mi != 0 else k0
    nsat = 1 if sat else 0
    by_scale = fitted and not sat and mi > 0 and bit_length_nb(mi) - min(e, 0) <= 62
    qlo = -Q if symmetric else np.int64(0)
    if by_scale:
        z = _code_div_nb(-lo * m_in, mi, e, code)
        if code == RC_FLOOR or code == RC_HALF_UP:
            if _codes_floor_half_up(v, zin, sh, m_in, mi, e, z, Q, qlo, code, out):
                return z, mi, k, nsat
        Q1 = Q + 1
        U = 2 * Q1 * mi
        M = (np.int64(1) << RECIP_SHIFT) // mi
        el = max(e, 0)
        s = max(-e, 0)
        for j in range(C):
            a = (((np.int64(v[j]) - zin) >> sh) * m_in) << el
            t = div_by_scale_nb(a, s, mi, Q1, U, M, code) + z
            out[j] = min(max(t, qlo), Q)
        return z, mi, k, nsat
    z = np.int64(0) if symmetric else div_round_nb(-lo * Q, Rs, code)
    for j in range(C):
        t = div_round_nb(((np.int64(v[j]) - zin) >> sh) * Q, Rs, code) + z
        out[j] = min(max(t, qlo), Q)
    return z, mi, k, nsat


@njit(cache=True, parallel=True)
def _requant_nb(v, m_in, k_in, bits, symmetric, m_bits, k_lo, k_hi, code, fitted, q_out):
    """:func:`requant_row` over the rows of ``v`` (threads over rows)."""
    rows = v.shape[0]
    zp = np.zeros(rows, dtype=np.int64)
    m = np.zeros(rows, dtype=np.int64)
    k = np.zeros(rows, dtype=np.int64)
    sat_rows = np.zeros(rows, dtype=np.int64)
    for i in prange(rows):
        zp[i], m[i], k[i], sat_rows[i] = requant_row(v[i], np.int64(0), m_in[i], k_in[i], bits,
                                                     symmetric, m_bits, k_lo, k_hi, code, fitted,
                                                     q_out[i])
    return zp, m, k, sat_rows.sum()


def check_saturation(name: str, nsat: int, spec: Spec) -> None:
    """Under ``spec.overflow == "raise"``, refuse ``nsat`` saturated row scales of ``name``."""
    if nsat and spec.overflow == "raise":
        raise IntsimOverflowError(
            f"{name}: {nsat} row scale(s) exceed the largest dyadic scale of m_bits="
            f"{spec.m_bits}, k_bits={spec.k_bits} (use overflow='saturate' to clamp and count)")


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
        zp, m, k, nsat = kernel(backend, _requant_nb, "requant")(v2, np.ascontiguousarray(m_in).ravel(),
                                     np.ascontiguousarray(k_in).ravel(), bits, symmetric,
                                     spec.m_bits, k_lo, k_hi, code, fitted, q)
        q, zp, m, k = q.reshape(v.shape), zp.reshape(rows), m.reshape(rows), k.reshape(rows)
    check_saturation(name, nsat, spec)
    dt = dtype_for(bits, symmetric)
    return QTensor(q.astype(dt), zp.astype(np.int32), Dyadic(m, k), bits, symmetric), nsat
