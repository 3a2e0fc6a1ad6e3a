"""Residual add of two differently scaled per-token tensors into the 16-bit stream.

Both operands carry their own per-row dyadic scale.  The add aligns them to a common
exponent (exactly whenever that fits int64, which is every practical case), sums in
int64 and requantizes the sum per token with ``requant_rows`` (signed, symmetric,
``spec.residual_bits``).  Spec: docs/SPEC.md, Residual add.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from .errors import IntsimError, check_range
from .fixedpoint import _check_backend, kernel, _rshift_round_ref, bit_length_nb, bit_length_ref, \
    rounding_code, rshift_round_nb
from .options import DEFAULT_SPEC, Spec
from .qtensor import Dyadic, QTensor
from .requant import requant_rows

#: largest |q - zp| of an operand; with m <= 2^31 - 1, |v| = |(q - zp) m| < 2^47
RES_D_LIMIT = 2 ** 16 - 1
#: operand exponents accepted (requant_rows' own k_in bound)
RES_K_LIMIT = 2 ** 20
#: the shifted coarse term stays below 2^ALIGN_BITS; with |v_fine| < 2^47 the sum is
#: below 2^60 + 2^47 <= 2^61 - 1, requant_rows' input bound
ALIGN_BITS = 60


def _align_ref(qa, za, ma, ka, qb, zb, mb, kb, code):
    va = (qa.astype(np.int64) - za[:, None]) * ma[:, None]       # |.| < 2^47
    vb = (qb.astype(np.int64) - zb[:, None]) * mb[:, None]
    a_coarse = ka <= kb
    vc = np.where(a_coarse[:, None], va, vb)
    vf = np.where(a_coarse[:, None], vb, va)
    kc = np.minimum(ka, kb)
    kf = np.maximum(ka, kb)
    L = bit_length_ref(np.abs(vc).max(axis=1))                    # 0 for an all-zero row
    sc = np.where(L == 0, 0, np.minimum(kf - kc, ALIGN_BITS - L))  # coarse left shift
    K = np.where(L == 0, kf, kc + sc)                             # common exponent
    sf = kf - K                                                   # fine right shift, >= 0
    s = (vc << sc[:, None]) + _rshift_round_ref(vf, sf[:, None], code)
    rounded = int(np.count_nonzero((sf > 0) & (vf != 0).any(axis=1)))
    return s, K, rounded


@njit(cache=True)
def align_row(qa, za, ma, ka, qb, zb, mb, kb, code, s):
    """The Numba kernel of one row of :func:`residual_add`'s steps 1-3: fills ``s`` with
    the aligned sum and returns ``(K, rounded)``, the common exponent and whether the
    fine term was rounded (sf > 0 with a non-zero fine value; tie rule ``code``).
    |s| < 2^60 + 2^47 (residual_add's proof)."""
    C = qa.shape[0]
    a_coarse = ka <= kb
    kc = min(ka, kb)
    kf = max(ka, kb)
    amax = np.int64(0)
    for j in range(C):
        vc = (np.int64(qa[j]) - za) * ma if a_coarse else (np.int64(qb[j]) - zb) * mb
        amax = max(amax, abs(vc))
    L = bit_length_nb(amax)
    sc = np.int64(0) if L == 0 else min(kf - kc, ALIGN_BITS - L)
    K = kf if L == 0 else kc + sc
    sf = kf - K
    any_f = False
    for j in range(C):
        va = (np.int64(qa[j]) - za) * ma
        vb = (np.int64(qb[j]) - zb) * mb
        vc = va if a_coarse else vb
        vf = vb if a_coarse else va
        any_f |= vf != 0
        s[j] = (vc << sc) + rshift_round_nb(vf, sf, code)
    return K, sf > 0 and any_f


@njit(cache=True)
def _align_nb(qa, za, ma, ka, qb, zb, mb, kb, code):
    """:func:`align_row` over the rows."""
    rows, C = qa.shape
    s = np.empty((rows, C), dtype=np.int64)
    K = np.empty(rows, dtype=np.int64)
    rounded = 0
    for i in range(rows):
        K[i], r = align_row(qa[i], za[i], ma[i], ka[i], qb[i], zb[i], mb[i], kb[i], code, s[i])
        rounded += r
    return s, K, rounded


def _flat(x: QTensor):
    C = x.q.shape[-1]
    return (np.ascontiguousarray(x.q).reshape(-1, C),
            np.ascontiguousarray(x.zp, dtype=np.int64).ravel(),
            np.ascontiguousarray(x.scale.m).ravel(), np.ascontiguousarray(x.scale.k).ravel())


def residual_add(a: QTensor, b: QTensor, spec: Spec = DEFAULT_SPEC,
                 backend: str = "numba") -> tuple[QTensor, dict]:
    """``a + b`` requantized per token to ``spec.residual_bits`` signed symmetric codes.

    Inputs: two QTensors of the same shape (..., C), any widths, signedness and zero
    points, ``|q - zp| <= 2^16 - 1``, per-row scales ``(m, k)``, ``|k| <= 2^20``.

    Per row, integer only (``rnd`` = ``spec.rounding``):

    1. ``va = (qa - za) * ma``, ``vb = (qb - zb) * mb`` (int64, ``< 2^16 * 2^31 = 2^47``).
    2. coarse/fine: the operand with the smaller exponent ``kc`` is the coarse one
       (a on a tie), the other the fine one, ``kf``; ``D = kf - kc``.
       ``L = bitlen(max_j |v_coarse|)`` (0 when that row is all zero).
    3. shifts: ``sc = min(D, 60 - L)``, common exponent ``K = kc + sc``, ``sf = kf - K``;
       if ``L = 0``: ``sc = 0``, ``K = kf``, ``sf = 0``.
       ``sum = (v_coarse << sc) + rnd(v_fine / 2^sf)``.
       Exact (``sf = 0``) whenever ``L + D <= 60``.  Bound: ``|v_coarse << sc| < 2^(L+sc)
       <= 2^60``, ``|v_fine| < 2^47``, so ``|sum| < 2^60 + 2^47 <= 2^61 - 1``.
    4. ``requant_rows(sum, Dyadic(1, K), residual_bits, symmetric=True, spec)``.

    When ``sf > 0`` (only if ``L + D > 60``) the fine term loses at most 1/2 unit of
    ``2^-K`` (< 1 under ``floor``), while the coarse row reaches ``>= 2^59`` units and the
    fine one ``< 2^(47 - sf) <= 2^46``, so ``max|sum| > 2^58`` units and one output LSB is
    ``> 2^58 / 2^23 = 2^35`` units: the rounding is below ``2^-36`` output LSB.

    The output scale is refitted per token, so the stream's codes never saturate; only
    the scale's exponent can run out (``requant_rows`` raises or counts it).
    Returns ``(QTensor, stats)``, stats = {"scale_saturated": rows whose scale saturated,
    "rows_rounded": rows where the fine term was rounded (step 3, sf > 0)}.
    """
    _check_backend(backend)
    for name, x in (("a", a), ("b", b)):
        if not isinstance(x, QTensor):
            raise IntsimError(f"{name}: expected a QTensor, got {type(x).__name__}")
    if a.q.shape != b.q.shape:
        raise IntsimError(f"b: shape {b.q.shape} != a shape {a.q.shape}")
    if a.q.shape[-1] == 0:
        raise IntsimError(f"a: needs a non-empty last axis, got shape {a.q.shape}")
    for name, x in (("a", a), ("b", b)):
        check_range(f"{name} zero point", np.asarray(x.zp, dtype=np.int64), -RES_D_LIMIT, RES_D_LIMIT)
        check_range(f"{name} (q - zp)", x.centered(), -RES_D_LIMIT, RES_D_LIMIT)
        check_range(f"{name} scale k", x.scale.k, -RES_K_LIMIT, RES_K_LIMIT)
    code = rounding_code(spec.rounding)
    fa, fb = _flat(a), _flat(b)
    if backend == "reference":
        s, K, rounded = _align_ref(*fa, *fb, code)
    else:
        s, K, rounded = kernel(backend, _align_nb, "align")(*fa, *fb, code)
    rows = a.q.shape[:-1]
    out, nsat = requant_rows(s.reshape(a.q.shape), Dyadic(np.ones(rows, dtype=np.int64),
                                                          K.reshape(rows)),
                             spec.residual_bits, True, spec, backend, name="a + b")
    return out, {"scale_saturated": nsat, "rows_rounded": rounded}
