"""DI-SwiGLU (intsim.swiglu): Numba == reference for both sigmoid frames, the reference ==
a Python-int transcription, the stable frame against float x1 sigmoid(x1/alpha) x2 with
a derived tolerance, the row-max frame's collapse, overflow bounds, bad input.
"""
import math

import numpy as np
import pytest
from hypothesis import example, given, strategies as st
from hypothesis.extra.numpy import arrays

from intsim.errors import IntsimError
from intsim.fixedpoint import ROUNDINGS
from intsim.options import Spec
from intsim.qtensor import Dyadic, QTensor
from intsim.requant import requant_rows
from intsim.swiglu import (ALPHA_K_LIMIT, ALPHA_M_LIMIT, GUARD_LIMIT, SCALE_K_LIMIT,
                           SCALE_M_LIMIT, di_swiglu)
from test_exp import py_exp, py_exp_unit, py_round
from test_softmax import C_HI, C_LO, RHO_CHORD

# ------------------------------------------------------------ Python-int model


def py_swiglu(gate, up, mc, ka, g, spec):
    """The op in Python ints; asserts every bound of the docstring on the way."""
    a1, a2 = gate.centered().reshape(-1, gate.shape[-1]), up.centered().reshape(-1, up.shape[-1])
    m1s, k1s = gate.scale.m.ravel().tolist(), gate.scale.k.ravel().tolist()
    m2s, k2s = up.scale.m.ravel().tolist(), up.scale.k.ravel().tolist()
    B, rnd, C = spec.sigmoid_bits, spec.rounding, a1.shape[1]
    ka = 0 if mc is None else ka                       # alpha = 1: alpha_k is ignored
    mc = [1] * C if mc is None else [int(v) for v in mc]
    ys, ms, ks = [], [], []
    for i, (m1, k1, m2, k2) in enumerate(zip(m1s, k1s, m2s, k2s)):
        T, j, _ = py_exp_unit(max(m1, 1), k1 + ka + g, rnd)
        assert 1 <= T <= 2 ** 30
        z = [(int(a1[i, c]) * mc[c]) << g for c in range(C)]
        assert all(abs(v) <= 2 ** 56 for v in z)
        if spec.sigmoid_frame == "stable":
            sig = []
            for v in z:
                e = py_exp(-abs(v), T, j, rnd)
                assert (T << B) <= 2 ** 54 and T + e <= 2 ** 31
                sig.append(py_round((T if v >= 0 else e) << B, T + e, rnd))
        else:
            M = max(0, max(z))
            e2 = py_exp(-M, T, j, rnd)
            sig = []
            for v in z:
                assert -(2 ** 57) <= v - M <= 0
                e1 = py_exp(v - M, T, j, rnd)
                sig.append(0 if e1 + e2 == 0 else py_round(e1 << B, e1 + e2, rnd))
        assert all(0 <= s <= 2 ** B for s in sig)
        dead = m1 == 0 or m2 == 0
        y = [0 if dead else int(a1[i, c]) * sig[c] * int(a2[i, c]) for c in range(C)]
        assert all(abs(v) < 2 ** 56 for v in y)
        mm, kk = m1 * m2, k1 + k2 + B
        assert mm <= 2 ** 56
        if mm > 2 ** 28:                                 # refit to 28 bits, as documented
            sh = mm.bit_length() - 28
            mm = py_round(mm, 2 ** sh, rnd)
            if mm == 2 ** 28:
                mm, sh = mm >> 1, sh + 1
            kk -= sh
        ys.append(y), ms.append(mm), ks.append(kk)
    return ys, ms, ks


# ------------------------------------------------------------------ strategies

@st.composite
def qtensors(draw, rows, C, signed=None):
    bits = draw(st.integers(2, 16))
    signed = draw(st.booleans()) if signed is None else signed
    if signed:
        lim = 2 ** (bits - 1) - 1
        q = draw(arrays(np.int64, (rows, C), elements=st.integers(-lim, lim), fill=st.nothing()))
        zp = np.zeros(rows, np.int64)
    else:
        top = 2 ** bits - 1
        q = draw(arrays(np.int64, (rows, C), elements=st.integers(0, top), fill=st.nothing()))
        zp = draw(arrays(np.int64, (rows,), elements=st.integers(0, top), fill=st.nothing()))
    m = draw(arrays(np.int64, (rows,), fill=st.nothing(),
                    elements=st.integers(0, SCALE_M_LIMIT) | st.integers(100, 300)))
    k = draw(arrays(np.int64, (rows,), elements=st.integers(-SCALE_K_LIMIT, SCALE_K_LIMIT)
                    | st.integers(-10, 40), fill=st.nothing()))
    return QTensor(q, zp, Dyadic(m, k), bits, signed)


@st.composite
def swiglu_cases(draw):
    rows, C = draw(st.integers(1, 4)), draw(st.integers(1, 8))
    gate, up = draw(qtensors(rows, C)), draw(qtensors(rows, C))
    mc = draw(st.none() | arrays(np.int64, (C,), elements=st.integers(1, ALPHA_M_LIMIT)
                                 | st.integers(1, 300), fill=st.nothing()))
    ka = draw(st.integers(0, ALPHA_K_LIMIT))
    g = draw(st.integers(0, GUARD_LIMIT))
    spec = Spec(rounding=draw(st.sampled_from(ROUNDINGS)),
                sigmoid_frame=draw(st.sampled_from(["stable", "rowmax"])),
                sigmoid_bits=draw(st.integers(4, 24)))
    return gate, up, mc, ka, g, spec


def _q(q, zp, m, k, bits=8, signed=False):
    q = np.array(q, np.int64)
    rows = q.shape[0]
    return QTensor(q, np.broadcast_to(np.array(zp, np.int64), (rows,)).copy(),
                   Dyadic(np.broadcast_to(np.array(m, np.int64), (rows,)).copy(),
                          np.broadcast_to(np.array(k, np.int64), (rows,)).copy()), bits, signed)


def _ex(gate, up, mc=None, ka=0, g=8, **spec):
    return gate, up, None if mc is None else np.array(mc, np.int64), ka, g, Spec(**spec)


HI16 = 2 ** 16 - 1
EX_BIG = _ex(_q([[0, HI16, 1, HI16]], HI16, SCALE_M_LIMIT, -SCALE_K_LIMIT, 16),
             _q([[HI16, 0, 0, HI16]], 0, SCALE_M_LIMIT, SCALE_K_LIMIT, 16),
             [ALPHA_M_LIMIT] * 4, ALPHA_K_LIMIT, GUARD_LIMIT, sigmoid_bits=24)


# ------------------------------------------------------ (a) kernel == reference

@given(swiglu_cases())
@example(EX_BIG)
@example(EX_BIG[:5] + (Spec(sigmoid_frame="rowmax", sigmoid_bits=24),))
@example(_ex(_q([[128, 128, 128]], 128, 200, 10), _q([[3, 4, 5]], 0, 200, 10)))   # z = 0
@example(_ex(_q([[7]], 3, 0, 10), _q([[9]], 1, 200, 10)))                          # m1 = 0
@example(_ex(_q([[255, 0, 200]], 0, 255, 5), _q([[1, 2, 3]], 0, 255, 5), g=0,
             sigmoid_frame="rowmax"))                                              # collapse
def test_swiglu_kernel_equals_reference(case):
    gate, up, mc, ka, g, spec = case
    yn, sn = di_swiglu(gate, up, mc, ka, spec=spec, backend="numba", guard_bits=g)
    yr, sr = di_swiglu(gate, up, mc, ka, spec=spec, backend="reference", guard_bits=g)
    assert yn.dtype == yr.dtype == np.int64
    assert np.array_equal(yn, yr)
    assert np.array_equal(sn.m, sr.m) and np.array_equal(sn.k, sr.k)


@given(swiglu_cases())
@example(EX_BIG)
@example(EX_BIG[:5] + (Spec(sigmoid_frame="rowmax", rounding="half_even", sigmoid_bits=4),))
def test_swiglu_reference_equals_python_int_model(case):
    gate, up, mc, ka, g, spec = case
    y, s = di_swiglu(gate, up, mc, ka, spec=spec, backend="reference", guard_bits=g)
    ys, ms, ks = py_swiglu(gate, up, mc, ka, g, spec)
    assert y.reshape(-1, y.shape[-1]).tolist() == ys
    assert s.m.ravel().tolist() == ms and s.k.ravel().tolist() == ks


# ----------------------------------------- (b) stable frame close to float

#: max over u of u * sigma(u) * (1 - sigma(u)) (at u ~ 1.5434): how much a relative
#: error |c - 1| of the exponent moves sigma, per unit of |c - 1|
U_SIG_MAX = 0.2240
#: the chord's log-odds error ln(RHO_CHORD) = 0.0596 moves sigma by at most 1/4 of it
CHORD_SIG = math.log(RHO_CHORD) / 4
#: floors of DI-Exp (1.5 units of e) and the normalization shift: |d sigma| <= 2/T
FLOOR_SIG = 2.0


def test_sigmoid_constants_rederived():
    u = np.linspace(0, 10, 200001)
    sg = 1 / (1 + np.exp(-u))
    peak = (u * sg * (1 - sg)).max()
    assert abs(peak - 0.22387) < 1e-5 and peak <= U_SIG_MAX < peak + 1e-3
    f = np.linspace(0, 1, 100001)
    assert abs(RHO_CHORD - ((1 - f / 2) * 2 ** f).max()) < 1e-9


@pytest.mark.parametrize("alpha", [False, True])
@pytest.mark.parametrize("g", [0, 8])
@given(seed=st.integers(0, 2 ** 32 - 1))
def test_swiglu_stable_close_to_float(alpha, g, seed):
    """|y - a1 a2 2^B sigma(x1/alpha)| <= |a1 a2| * TOL_SIG in output LSBs (s1 s2 2^-B), with
    TOL_SIG = 2^B (CHORD_SIG + U_SIG_MAX max|c - 1| + FLOOR_SIG / T_lo) + 1/2 sigmoid LSBs.

    Domain: normalized gate mantissa m1 in [128, 255], 8-bit inputs.  With alpha = 1 and
    no guard bits, T = 1/(s1 log2 e) is small (a few units) and the 2/T term dominates:
    the guard shift (default 8) is what makes the sigmoid accurate.
    """
    rng = np.random.default_rng(seed)
    rows, C, B = 8, 16, 15
    m1 = rng.integers(128, 256, rows)
    k1 = np.array([int(v).bit_length() for v in m1]) + rng.integers(2, 9, rows)   # s1 ~ 2^-2..2^-8
    gate = _q(rng.integers(0, 256, (rows, C)), rng.integers(0, 256, rows), m1, k1)
    up = _q(rng.integers(0, 256, (rows, C)), rng.integers(0, 256, rows),
            rng.integers(128, 256, rows), rng.integers(8, 16, rows))
    ka = 12
    mc = rng.integers(2 ** 10, 2 ** 14, C) if alpha else None
    y, s = di_swiglu(gate, up, mc, ka, spec=Spec(sigmoid_bits=B), backend="reference",
                     guard_bits=g)
    a1, a2 = gate.centered().astype(float), up.centered().astype(float)
    inv_alpha = (mc / 2.0 ** ka) if alpha else np.ones(C)
    u = a1 * (m1 / 2.0 ** k1)[:, None] * inv_alpha[None, :]                 # x1 / alpha
    want = a1 * a2 * 2.0 ** B / (1 + np.exp(-u))
    kz = k1 + (ka if alpha else 0) + g
    T_lo = np.minimum(2.0 ** kz / (1.4375 * m1 + 1) - 0.5, 2.0 ** 29)
    T_lo = np.maximum(T_lo, 1.0)
    dc = np.maximum(1 - C_LO / (1 + 0.5 / T_lo), C_HI / np.maximum(1 - 0.5 / T_lo, 1e-9) - 1)
    tol_sig = 2.0 ** B * (CHORD_SIG + U_SIG_MAX * dc + FLOOR_SIG / T_lo) + 0.5
    err = np.abs(y - want)
    bound = np.abs(a1 * a2) * tol_sig[:, None] + 1e-6
    assert np.all(err <= bound), (err / bound).max()
    # the scale is exact: s1 * s2 * 2^-B
    assert s.m.tolist() == (gate.scale.m * up.scale.m).tolist()
    assert s.k.tolist() == (gate.scale.k + up.scale.k + B).tolist()


@given(v=st.integers(1, 255), m1=st.integers(128, 255), k1=st.integers(8, 20),
       g=st.integers(0, GUARD_LIMIT), B=st.integers(4, 24), rounding=st.sampled_from(ROUNDINGS))
def test_swiglu_stable_sigmoid_is_symmetric(v, m1, k1, g, B, rounding):
    """sigma(z) + sigma(-z) = 2^B up to the two roundings: the stable frame uses one e for
    both signs (T/(T+e) and e/(T+e)), so the codes sum to 2^B - 1 .. 2^B + 1."""
    gate = _q([[256 + v, 256 - v, 256]], 256, m1, k1, 9)
    up = _q([[1, 1, 1]], 0, 200, 10)
    y, _ = di_swiglu(gate, up, spec=Spec(sigmoid_bits=B, rounding=rounding), guard_bits=g)
    s_pos, s_neg, s_zero = y[0, 0] // v, y[0, 1] // -v, y[0, 2]
    assert y[0, 0] % v == 0 and y[0, 1] % v == 0 and s_zero == 0
    assert 2 ** B - 1 <= s_pos + s_neg <= 2 ** B + 1
    assert s_pos >= 2 ** (B - 1) >= s_neg                               # sigma(z >= 0) >= 1/2


# -------------------------------------------------------- row-max frame

def test_swiglu_rowmax_collapses_where_stable_does_not():
    """Paper frame: with a large row max M both e^(z-M) and e^(-M) underflow, so sigma
    = 0/0 := 0 where the true sigmoid is ~1; the stable frame keeps it."""
    s1_m, s1_k, B = 163, 10, 15                              # s1 = 163/1024 ~ 0.159
    gate = _q([[255, 13 + 128, 128 - 13, 128]], 128, s1_m, s1_k)   # x1 ~ 20.3, 2.07, -2.07, 0
    up = _q([[1, 1, 1, 1]], 0, 200, 10)
    a1 = gate.centered()[0].astype(float)
    true = 1 / (1 + np.exp(-a1 * s1_m / 2 ** s1_k))
    y_st, _ = di_swiglu(gate, up, spec=Spec(sigmoid_frame="stable"))
    y_rm, _ = di_swiglu(gate, up, spec=Spec(sigmoid_frame="rowmax"))
    y_rm_ref, _ = di_swiglu(gate, up, spec=Spec(sigmoid_frame="rowmax"), backend="reference")
    assert np.array_equal(y_rm, y_rm_ref)
    sig_st = y_st[0, :3] / a1[:3] / 2 ** B
    sig_rm = y_rm[0, :3] / a1[:3] / 2 ** B
    assert np.all(np.abs(sig_st - true[:3]) < 0.02)           # stable: accurate
    assert sig_rm[0] == 1.0                                    # e1 = T, e2 = 0
    assert sig_rm[1] == 0.0 and true[1] > 0.88                 # collapsed: 0/0 -> 0
    assert sig_rm[2] == 0.0
    # without the large element the row max is small and the paper frame is fine
    y_small, _ = di_swiglu(_q([[13 + 128, 128 - 13, 128]], 128, s1_m, s1_k),
                           _q([[1, 1, 1]], 0, 200, 10), spec=Spec(sigmoid_frame="rowmax"))
    assert abs(y_small[0, 0] / 13 / 2 ** B - true[1]) < 0.02


def test_swiglu_rowmax_all_negative_row_uses_M_zero():
    """M = max(0, row max): for an all-negative row both DI-Exp inputs stay <= 0 and the
    frame computes e^z / (e^z + 1) (the paper leaves M < 0 open)."""
    gate = _q([[100, 110, 120]], 128, 200, 10)                 # x1 < 0
    up = _q([[1, 1, 1]], 0, 200, 10)
    y, _ = di_swiglu(gate, up, spec=Spec(sigmoid_frame="rowmax"))
    a1 = gate.centered()[0]
    true = 1 / (1 + np.exp(-a1 * 200 / 1024))
    assert np.all(np.abs(y[0] / a1 / 2 ** 15 - true) < 0.02)


# ------------------------------------------------------------ (c) overflow

def test_swiglu_overflow_bounds_at_extremes():
    """Python ints recompute every intermediate (asserted in py_swiglu) at the extremes:
    16-bit codes at +-(2^16 - 1), m_c = 2^24, guard 16, sigmoid_bits 24, scales at limits."""
    cases = []
    for sgn in (1, -1):
        q1 = [[HI16, 0, HI16 // 2, 1], [0, HI16, HI16, 0]]
        zp1 = [0, HI16] if sgn > 0 else [HI16, 0]
        for (m1, k1) in ((SCALE_M_LIMIT, -SCALE_K_LIMIT), (1, SCALE_K_LIMIT), (255, 0), (255, 40)):
            gate = _q(q1, zp1, m1, k1, 16)
            up = _q([[HI16, 0, HI16, 0], [0, HI16, 0, HI16]], [0, HI16], SCALE_M_LIMIT,
                    SCALE_K_LIMIT, 16)
            for mc, ka in (([ALPHA_M_LIMIT] * 4, 0), ([ALPHA_M_LIMIT] * 4, ALPHA_K_LIMIT),
                           (None, 0)):
                cases.append((gate, up, mc, ka))
    for gate, up, mc, ka in cases:
        for frame in ("stable", "rowmax"):
            for B in (4, 24):
                spec = Spec(sigmoid_frame=frame, sigmoid_bits=B)
                mca = None if mc is None else np.array(mc, np.int64)
                ys, ms, ks = py_swiglu(gate, up, mca, ka, GUARD_LIMIT, spec)
                for backend in ("reference", "numba"):
                    y, s = di_swiglu(gate, up, mca, ka, spec=spec, backend=backend,
                                     guard_bits=GUARD_LIMIT)
                    assert y.tolist() == ys and s.m.tolist() == ms and s.k.tolist() == ks


def test_swiglu_output_scale_refit_and_consumable():
    """m1 m2 <= 2^28 stays exact; a 16-bit mantissa product is refitted to 28 bits (rel.
    error <= 2^-28) so that the down projection's requant_rows accepts it."""
    for m, exact in ((255, True), (2 ** 14 - 1, True), (2 ** 16 - 1, False)):
        gate = _q([[10, 250, 128]], 128, m, 20)
        up = _q([[3, 200, 77]], 100, m, 18)
        y, s = di_swiglu(gate, up)
        true = m * m / 2.0 ** (20 + 18 + 15)
        got = s.m[0] / 2.0 ** s.k[0]
        if exact:
            assert s.m[0] == m * m and s.k[0] == 20 + 18 + 15
        else:
            assert 2 ** 27 <= s.m[0] < 2 ** 28 and abs(got / true - 1) <= 2.0 ** -28
        requant_rows(y, s, 8)                                    # accepted as is


def test_swiglu_dead_rows():
    gate = _q([[7, 9], [7, 9]], [3, 3], [0, 200], 10)
    up = _q([[9, 1], [9, 1]], [1, 1], [200, 0], 10)
    for backend in ("numba", "reference"):
        y, s = di_swiglu(gate, up, backend=backend)
        assert y.tolist() == [[0, 0], [0, 0]] and s.m.tolist() == [0, 0]


# --------------------------------------------------------------- bad input

def test_swiglu_bad_input():
    g = _q([[1, 2, 3]], 0, 200, 10)
    u = _q([[1, 2, 3]], 0, 200, 10)
    with pytest.raises(IntsimError, match=r"^up: shape"):
        di_swiglu(g, _q([[1, 2]], 0, 200, 10))
    with pytest.raises(IntsimError, match=r"^gate: expected a QTensor"):
        di_swiglu(np.array([[1, 2, 3]]), u)
    with pytest.raises(IntsimError, match=r"^alpha_inv: length"):
        di_swiglu(g, u, np.array([1, 2], np.int64), 4)
    with pytest.raises(IntsimError, match=r"^alpha_inv"):
        di_swiglu(g, u, np.array([1, -2, 3], np.int64), 4)
    with pytest.raises(IntsimError, match=r"^alpha_inv"):
        di_swiglu(g, u, np.array([1, 0, 3], np.int64), 4)
    with pytest.raises(IntsimError, match=r"^alpha_inv"):
        di_swiglu(g, u, np.array([1, ALPHA_M_LIMIT + 1, 3], np.int64), 4)
    with pytest.raises(IntsimError, match=r"^alpha_inv"):
        di_swiglu(g, u, np.array([1.0, 2.0, 3.0]), 4)
    with pytest.raises(IntsimError, match=r"^alpha_k"):
        di_swiglu(g, u, np.array([1, 2, 3], np.int64), ALPHA_K_LIMIT + 1)
    with pytest.raises(IntsimError, match=r"^guard_bits"):
        di_swiglu(g, u, guard_bits=GUARD_LIMIT + 1)
    with pytest.raises(IntsimError, match=r"^gate\.scale\.m"):
        di_swiglu(_q([[1, 2, 3]], 0, SCALE_M_LIMIT + 1, 10), u)
    with pytest.raises(IntsimError, match=r"^up\.scale\.k"):
        di_swiglu(g, _q([[1, 2, 3]], 0, 200, SCALE_K_LIMIT + 1))
    with pytest.raises(IntsimError, match=r"^gate\.bits"):
        di_swiglu(_q([[1, 2, 3]], 0, 200, 10, bits=20), u)
    with pytest.raises(IntsimError, match=r"backend"):
        di_swiglu(g, u, backend="tpu")
