"""DI-SwiGLU: I-LLM's integer ``x1 * sigmoid(x1 / alpha) * x2`` (Algorithm 3 with FSBR's
act-smooth divisor).  Spec: docs/SPEC.md section 7.

Inputs are the gate and up DI-MatMul outputs (per-token QTensors).  Per row, all int64,
``B = spec.sigmoid_bits``, ``g = guard_bits``, ``rnd`` = ``spec.rounding``:

1. ``a1 = x1 - zp1``, ``a2 = x2 - zp2``;  ``z = (a1 * m_c) << g``  (1/alpha_c = m_c 2^-k_alpha)
   with the row scale ``s_z = m1 * 2^-(k1 + k_alpha + g)``.
2. ``T, j`` = DI-Exp's row unit for s_z (intsim.exp); then the sigmoid code, with
   ``E(v) = DI-Exp(v)`` for v <= 0:
   "stable":  ``e = E(-|z|)``;  ``sig = rnd(T * 2^B / (T + e))`` if z >= 0,
              ``sig = rnd(e * 2^B / (T + e))`` if z < 0.
   "rowmax":  ``M = max(0, max_row z)``; ``e1 = E(z - M)``, ``e2 = E(-M)``;
              ``sig = rnd(e1 * 2^B / (e1 + e2))``, and 0 when e1 + e2 = 0.
3. ``y = a1 * sig * a2`` exact, with the row scale ``m1 m2 * 2^-(k1 + k2 + B)`` (the
   mantissa product refitted to 28 bits when it exceeds 2^28).

A row whose gate or up scale mantissa is 0 (its real values are all 0) gives y = 0.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from .errors import IntsimError, check_int, check_int_array, check_range
# absolute import: the float scan (tests/test_no_float.py) flags a module named "exp"
from intsim.exp import _exp_apply_ref, _exp_unit_ref, exp_apply_nb, exp_recip_nb, exp_unit_nb
from .fixedpoint import (kernel, _check_backend, _div_round_ref, _fit_ref, div_round_nb,
                         dyadic_fit_nb, rounding_code)
from .options import DEFAULT_SPEC, SIGMOID_FRAMES, Spec
from .qtensor import Dyadic, QTensor
from .requant import M_IN_LIMIT

#: gate/up code width bound: |x - zp| <= 2^16 - 1
IN_BITS_MAX = 16
#: 1/alpha mantissas: 1 <= m_c <= 2^24; shared exponent 0 <= k_alpha <= 48
ALPHA_M_LIMIT = 2 ** 24
ALPHA_K_LIMIT = 48
#: guard shift of z: 0 <= g <= 16, so |z| <= 2^16 * 2^24 * 2^16 = 2^56
GUARD_LIMIT = 16
#: gate/up scale bounds: m <= 2^28 (requant_rows' input bound), |k| <= 2^18 (sums stay
#: within requant_rows' |k| <= 2^20)
SCALE_M_LIMIT = 2 ** 28
SCALE_K_LIMIT = 2 ** 18
#: the output mantissa m1*m2 is kept exact up to 2^28 (the next requant_rows' bound),
#: else refitted to FIT_BITS bits by dyadic_fit (relative error <= 2^-28)
FIT_BITS = 28


# ----------------------------------------------------------------- sigmoid codes

def _sigmoid_ref(z, m1, k1, B, rowmax, code):
    T, j = _exp_unit_ref(np.maximum(m1, 1), k1, code)
    T2, j2 = T[:, None], j[:, None]
    if not rowmax:
        e = _exp_apply_ref(-np.abs(z), T2, j2, code)   # |z| <= 2^56, e <= T
        num = np.where(z >= 0, T2, e)
        return _div_round_ref(num << np.int64(B), T2 + e, code)   # T*2^B <= 2^54, T+e <= 2^31
    M = np.maximum(z.max(axis=-1), 0)[:, None]
    e1 = _exp_apply_ref(z - M, T2, j2, code)           # z - M >= -2^57
    e2 = _exp_apply_ref(-M, T2, j2, code)              # one per row
    den = e1 + e2
    sig = _div_round_ref(e1 << np.int64(B), np.maximum(den, 1), code)
    return np.where(den == 0, 0, sig)                  # 0/0 (both underflow) -> 0


@njit(cache=True, inline="always")
def _sigmoid_code(z, M, T, j, MT, e2, B, rowmax, code):
    """Step 2's sigmoid code of one z (module docstring), ``e2 = E(-M)`` for rowmax."""
    if not rowmax:
        e = exp_apply_nb(-abs(z), T, j, MT, code)          # |z| <= 2^56, e <= T
        num = T if z >= 0 else e
        return div_round_nb(num << B, T + e, code)         # T 2^B <= 2^54, T + e <= 2^31
    e1 = exp_apply_nb(z - M, T, j, MT, code)               # z - M >= -2^57
    den = e1 + e2
    if den == 0:
        return np.int64(0)                                  # 0/0 (both underflow) -> 0
    return div_round_nb(e1 << B, den, code)


@njit(cache=True)
def swiglu_row(g, zg, mg, kg, u, zu, mu, ku, mc, ka, unit_alpha, guard, B, rowmax, table_bits, code,
               tab, y):
    """The Numba kernel of one row of :func:`di_swiglu` (steps 1-3): gate codes ``g``
    (zero point ``zg``, scale ``mg 2^-kg``) and up codes ``u`` into ``y``; returns the
    output scale ``(m, k)``.  Bounds: |z| <= 2^56, e <= T <= 2^30, T 2^B <= 2^54.

    With every ``1/alpha = 1`` (``unit_alpha``: all ``mc == 1``, decided once by the
    caller) the sigmoid code depends on the row and
    the gate code only (``z = (g - zg) << guard``); when the gate codes are unsigned
    ``table_bits``-bit codes (0: not), their ``2^table_bits`` values are no more than the
    row's columns and the int64 scratch ``tab`` holds them, it is tabulated once per code:
    the same integers, fewer divides.
    """
    C = g.shape[0]
    dead = mg == 0 or mu == 0
    T, j = exp_unit_nb(max(mg, np.int64(1)), kg + ka + guard, code)
    MT = exp_recip_nb(T)
    M = np.int64(0)
    e2 = np.int64(0)
    if rowmax:
        for c in range(C):
            M = max(M, ((np.int64(g[c]) - zg) * mc[c]) << guard)
        e2 = exp_apply_nb(-M, T, j, MT, code)
    ncodes = np.int64(1) << table_bits
    if unit_alpha and table_bits > 0 and ncodes <= C and ncodes <= tab.shape[0]:
        for q in range(ncodes):
            tab[q] = _sigmoid_code((q - zg) << guard, M, T, j, MT, e2, B, rowmax, code)
        for c in range(C):
            a1 = np.int64(g[c]) - zg
            a2 = np.int64(0) if dead else np.int64(u[c]) - zu
            y[c] = a1 * tab[g[c]] * a2
    else:
        for c in range(C):
            a1 = np.int64(g[c]) - zg
            a2 = np.int64(0) if dead else np.int64(u[c]) - zu
            y[c] = a1 * _sigmoid_code((a1 * mc[c]) << guard, M, T, j, MT, e2, B, rowmax,
                                      code) * a2
    mm = mg * mu                                       # <= 2^56
    kk = kg + ku + B
    if mm <= M_IN_LIMIT:
        return mm, kk
    mf, e, _ = dyadic_fit_nb(mm, np.int64(1), FIT_BITS, np.int64(-64), np.int64(0), code)
    return mf, kk + e                                  # mm ~= mf * 2^-e, e <= 0


@njit(cache=True)
def _swiglu_nb(gq, zg, mg, kg, uq, zu, mu, ku, mc, ka, unit_alpha, guard, B, rowmax, table_bits,
               code, y, m_out, k_out):
    """:func:`swiglu_row` over the rows."""
    tab = np.empty(np.int64(1) << table_bits, dtype=np.int64)
    for i in range(gq.shape[0]):
        m_out[i], k_out[i] = swiglu_row(gq[i], zg[i], mg[i], kg[i], uq[i], zu[i], mu[i], ku[i],
                                        mc, ka, unit_alpha, guard, B, rowmax, table_bits, code, tab,
                                        y[i])


def _out_scale_ref(m1, m2, kk, code):
    mm = m1 * m2
    big = mm > M_IN_LIMIT
    mf, e, _ = _fit_ref(np.where(big, mm, 1), np.int64(1), FIT_BITS, -64, 0, code)
    return np.where(big, mf, mm).astype(np.int64), np.where(big, kk + e, kk).astype(np.int64)


# ------------------------------------------------------------------- public op

def _check_q(name: str, x) -> QTensor:
    if not isinstance(x, QTensor):
        raise IntsimError(f"{name}: expected a QTensor, got {type(x).__name__}")
    check_int(f"{name}.bits", x.bits, 2, IN_BITS_MAX)
    check_range(f"{name}.scale.m", x.scale.m, 0, SCALE_M_LIMIT)
    check_range(f"{name}.scale.k", x.scale.k, -SCALE_K_LIMIT, SCALE_K_LIMIT)
    a = x.centered()
    check_range(f"{name} - zp", a, -(2 ** IN_BITS_MAX - 1), 2 ** IN_BITS_MAX - 1)
    return a


def di_swiglu(gate: QTensor, up: QTensor, alpha_inv: np.ndarray | None = None,
              alpha_k: int = 0, spec: Spec = DEFAULT_SPEC, backend: str = "numba",
              guard_bits: int | None = None) -> tuple[np.ndarray, Dyadic]:
    """DI-SwiGLU: ``y ~= x1 * sigmoid(x1 / alpha) * x2`` per token, integer only.

    Inputs: ``gate`` (x1) and ``up`` (x2) QTensors of equal shape (..., C), at most 16
    bits, ``|q - zp| <= 2^16 - 1``, scale mantissas ``<= 2^28``, ``|k| <= 2^18``.
    ``alpha_inv``: None (alpha = 1) or int mantissas [C], ``1 <= m_c <= 2^24``, with the
    shared exponent ``alpha_k`` in [0, 48]: ``1/alpha_c = m_c * 2^-alpha_k``.
    Options: ``spec.sigmoid_frame`` ("stable" | "rowmax"), ``spec.sigmoid_bits`` B,
    ``spec.rounding``; keyword ``guard_bits`` g in [0, 16] (default ``spec.sigmoid_guard_bits``, 8; paper 0).

    Steps (module docstring): ``z = ((x1 - zp1) * m_c) << g`` with scale
    ``m1 * 2^-(k1 + alpha_k + g)``; DI-Exp's row unit T for that scale; the sigmoid code
    ``sig`` in [0, 2^B] ("stable": ``rnd(T 2^B/(T+e))`` for z >= 0, ``rnd(e 2^B/(T+e))``
    for z < 0, ``e = DI-Exp(-|z|)``; "rowmax": ``rnd(e1 2^B/(e1+e2))``, ``e1 =
    DI-Exp(z - M)``, ``e2 = DI-Exp(-M)``, ``M = max(0, row max z)``, 0 when both are 0);
    ``y = (x1 - zp1) * sig * (x2 - zp2)``.

    Returns ``(y, scale)``: y int64 (..., C), ``|y| <= (2^16-1)^2 * 2^24 < 2^56``;
    scale per row ``m = m1 * m2`` (exact when <= 2^28, else ``dyadic_fit`` to 28 bits
    with ``spec.rounding``, relative error <= 2^-28), ``k = k1 + k2 + B`` (+ the fit's
    exponent).  No requantization: the down projection's DI-MatMul requantizes y itself.
    Overflow: ``|z| <= 2^16 * 2^24 * 2^16 = 2^56``; ``|z - M| <= 2^57``; ``e, e1, e2 <=
    T <= 2^30``; ``T * 2^B <= 2^54``; ``T + e <= 2^31``; ``m1 * m2 <= 2^56``.
    Tie rule: ``spec.rounding`` (T, the sigmoid divide, the fit); DI-Exp's floors.
    Rows with ``m1 == 0`` or ``m2 == 0`` (all-zero real input): y = 0, scale m = 0.
    """
    _check_backend(backend)
    code = rounding_code(spec.rounding)
    a1 = _check_q("gate", gate)
    a2 = _check_q("up", up)
    if gate.shape != up.shape:
        raise IntsimError(f"up: shape {up.shape} != gate shape {gate.shape}")
    C = gate.shape[-1]
    g = check_int("guard_bits", spec.sigmoid_guard_bits if guard_bits is None else guard_bits,
                  0, GUARD_LIMIT)
    if alpha_inv is None:
        mc = np.ones(C, dtype=np.int64)
        ka = 0
    else:
        check_int_array("alpha_inv", alpha_inv, ndim=1)
        if alpha_inv.shape != (C,):
            raise IntsimError(f"alpha_inv: length {alpha_inv.shape[0]} != channels {C}")
        mc = alpha_inv.astype(np.int64)
        check_range("alpha_inv", mc, 1, ALPHA_M_LIMIT)
        ka = check_int("alpha_k", alpha_k, 0, ALPHA_K_LIMIT)
    B = spec.sigmoid_bits
    rowmax = spec.sigmoid_frame == "rowmax"
    if spec.sigmoid_frame not in SIGMOID_FRAMES:
        raise IntsimError(f"spec.sigmoid_frame: {spec.sigmoid_frame!r}")
    rows = gate.shape[:-1]
    m1 = gate.scale.m.reshape(-1)
    m2 = up.scale.m.reshape(-1)
    kz = gate.scale.k.reshape(-1) + ka + g
    a1f = np.ascontiguousarray(a1).reshape(-1, C)
    if backend == "reference":
        dead = ((m1 == 0) | (m2 == 0))[:, None]
        a2f = np.where(dead, 0, a2.reshape(-1, C))
        kk = gate.scale.k.reshape(-1) + up.scale.k.reshape(-1) + B
        z = (a1f * mc[None, :]) << np.int64(g)
        sig = _sigmoid_ref(z, m1, kz, B, rowmax, code)
        y = a1f * sig * a2f
        m_out, k_out = _out_scale_ref(m1, m2, kk, code)
    else:
        y = np.empty_like(a1f)
        m_out = np.empty_like(m1)
        k_out = np.empty_like(m1)
        zg, zu, mg, kg, mu, ku = (np.ascontiguousarray(np.broadcast_to(a, rows), dtype=np.int64).ravel()
                                  for a in (gate.zp, up.zp, gate.scale.m, gate.scale.k, up.scale.m,
                                            up.scale.k))
        table_bits = 0 if gate.signed else gate.bits      # the sigmoid table indexes by code
        kernel(backend, _swiglu_nb, "swiglu")(np.ascontiguousarray(gate.q).reshape(-1, C), zg, mg, kg,
                   np.ascontiguousarray(up.q).reshape(-1, C), zu, mu, ku, np.ascontiguousarray(mc),
                   np.int64(ka), bool((mc == 1).all()), np.int64(g), np.int64(B), rowmax,
                   np.int64(table_bits), code, y, m_out, k_out)
    return y.reshape(gate.shape), Dyadic(m_out.reshape(rows), k_out.reshape(rows))
