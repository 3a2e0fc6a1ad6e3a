"""DI-Exp (intsim.exp): Numba == reference, the paper's Algorithm 1 in Python ints,
accuracy against float exp in units of 1/T, overflow bounds at the extremes, bad input.

The Python-int model ``py_exp_unit`` / ``py_exp`` is also used by test_softmax.py and
test_swiglu.py.
"""
import functools
import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import assume, example, given, strategies as st
from hypothesis.extra.numpy import arrays

from intsim.errors import IntsimError
from intsim.exp import K_LIMIT, LOG2E_Q4, M_LIMIT, T_BITS, X_LIMIT, di_exp
from intsim.fixedpoint import ROUNDINGS, dyadic_fit
from intsim.options import Spec
from intsim.qtensor import Dyadic

# ------------------------------------------------------------ Python-int model

def py_round(num: int, den: int, rounding: str) -> int:
    """Round the exact rational num/den (den >= 1) by a named tie rule, in Python ints
    (written independently of intsim.fixedpoint: floor quotient, then 2*rem vs den)."""
    fl, rem = divmod(num, den)
    if rounding == "floor" or 2 * rem < den:
        return fl
    if 2 * rem > den:
        return fl + 1
    return {"half_up": fl + 1, "half_even": fl + (fl % 2), "half_away": fl + (num > 0)}[rounding]


def py_exp_unit(m: int, k: int, rounding: str):
    """Steps 0-1 in Python ints: returns (T, j, m_f)."""
    m_f = m + (m >> 1) - (m >> 4)
    j = max(0, k - (T_BITS - 1) - m_f.bit_length())
    kk = k - j
    num, den = (2 ** kk, m_f) if kk >= 0 else (1, m_f << -kk)
    T = max(1, py_round(num, den, rounding))           # also for k' <= 0
    return T, j, m_f


@functools.lru_cache(maxsize=64)
def pow2(j: int) -> int:
    return 2 ** j                  # cached: j reaches 2^20 (a million-bit int)


def py_exp(x: int, T: int, j: int, rounding: str) -> int:
    """Steps 2-5 exactly as Algorithm 1 writes them, with t = -T (Python ints never wrap)."""
    xs = py_round(x, pow2(j), rounding)
    t = -T
    q = xs // t                    # floor(x / t), Python floor division
    r = xs - q * t
    e = (r >> 1) - t
    assert q >= 0 and t < r <= 0 and 1 <= e <= T
    return e >> q if q < 63 else 0


def py_di_exp(x: np.ndarray, m: np.ndarray, k: np.ndarray, rounding: str):
    out = np.zeros(x.shape, dtype=object)
    Ts = np.zeros(x.shape[:-1], dtype=object)
    for idx in np.ndindex(*x.shape[:-1]):
        T, j, _ = py_exp_unit(int(m[idx]), int(k[idx]), rounding)
        Ts[idx] = T
        for c in range(x.shape[-1]):
            out[idx + (c,)] = py_exp(int(x[idx + (c,)]), T, j, rounding)
    return out, Ts


# ------------------------------------------------------------------- constants

LOG2E = 1 / math.log(2)
#: max over f in [0, 1] of (1 - f/2) - 2^-f: the chord error of step 4, at
#: f* = log2(2 ln 2) (where d/df = 0), value 1 - f*/2 - 1/(2 ln 2) = 0.04305
CHORD_MAX = 1 - math.log2(2 * math.log(2)) / 2 - 1 / (2 * math.log(2))
#: log2(e) ~ 1.4375 with m >= 2^7: m_f / m in [1.4375 - 0.5/128, 1.4375 + (15/16)/128],
#: so the exponent is scaled by c in [0.99369, 1.00147]; max_y |2^(-c y) - 2^(-y)| ~
#: |c - 1| / (c e) <= 0.00234 of full scale.
LOG2E_TERM = 0.0024
#: floors of steps 4-5 (<= 1/2 + 1 unit), the rounding of T (<= 0.5/T relative in c,
#: <= 0.19 units) or the normalization shift (<= 0.35 units, only when T >= 2^29)
FLOOR_UNITS = 2.0


def test_log2e_constant_rederived():
    assert LOG2E_Q4 == 23 and Fraction(LOG2E_Q4, 16) == 1 + Fraction(1, 2) - Fraction(1, 16)
    assert abs(LOG2E_Q4 / 16 / LOG2E - 1) < 0.0037
    for m in list(range(1, 4096)) + [2 ** 31 - 1, 2 ** 31 - 2]:
        m_f = m + (m >> 1) - (m >> 4)
        d = Fraction(m_f) - Fraction(23 * m, 16)
        assert Fraction(-1, 2) <= d <= Fraction(15, 16)
    assert abs(CHORD_MAX - max(1 - f / 2 - 2 ** -f for f in np.linspace(0, 1, 100001))) < 1e-9
    assert 0.0430 < CHORD_MAX < 0.0431


def test_exp_unit_matches_paper_numbers():
    """illm-method: a 16-bit input over a clip range of 15 gives -t ~ 3039, 8 bits ~ 12."""
    for Q, lo, hi in ((65535, 3000, 3080), (255, 11, 13)):
        m, k, _ = dyadic_fit(15, Q, 8, (-128, 127), backend="reference")
        _, T = di_exp(np.zeros((1, 1), np.int64), Dyadic(m.reshape(1), k.reshape(1)))
        assert lo <= int(T[0]) <= hi


# ------------------------------------------------------ (a) kernel == reference

X_EL = st.integers(-X_LIMIT, 0) | st.integers(-5000, 0)
M_EL = st.integers(1, M_LIMIT) | st.integers(1, 300)
K_EL = st.integers(-K_LIMIT, K_LIMIT) | st.integers(-4, 80)


@st.composite
def exp_cases(draw):
    rows = draw(st.integers(1, 4))
    cols = draw(st.integers(1, 6))
    x = draw(arrays(np.int64, (rows, cols), elements=X_EL, fill=st.nothing()))
    m = draw(arrays(np.int64, (rows,), elements=M_EL, fill=st.nothing()))
    k = draw(arrays(np.int64, (rows,), elements=K_EL, fill=st.nothing()))
    return x, m, k, draw(st.sampled_from(ROUNDINGS))


def _ex(x, m, k, r="half_up"):
    return (np.array(x, np.int64), np.array(m, np.int64), np.array(k, np.int64), r)


@given(exp_cases())
@example(_ex([[0, 0, 0]], [1], [0]))
@example(_ex([[-X_LIMIT, 0]], [M_LIMIT], [K_LIMIT]))
@example(_ex([[-X_LIMIT, -1]], [1], [-K_LIMIT]))
@example(_ex([[-1], [-2]], [16, 17], [61, 62]))
@example(_ex([[-5, -5, -5, -5]], [255], [13], "half_even"))
@example(_ex([[-3]], [2], [1], "half_away"))
def test_di_exp_kernel_equals_reference(case):
    x, m, k, rounding = case
    spec = Spec(rounding=rounding)
    out_n, T_n = di_exp(x, Dyadic(m, k), spec=spec, backend="numba")
    out_r, T_r = di_exp(x, Dyadic(m, k), spec=spec, backend="reference")
    assert out_n.dtype == out_r.dtype == np.int64
    assert np.array_equal(out_n, out_r) and np.array_equal(T_n, T_r)


@given(exp_cases())
@example(_ex([[0, -1, -2, -3]], [1], [0]))
@example(_ex([[-7, -100, -X_LIMIT]], [M_LIMIT], [62]))
def test_di_exp_reference_equals_algorithm1_in_python_ints(case):
    """The reference is Algorithm 1 (plus the documented normalization), in exact ints."""
    x, m, k, rounding = case
    out, T = di_exp(x, Dyadic(m, k), spec=Spec(rounding=rounding), backend="reference")
    py_out, py_T = py_di_exp(x, m, k, rounding)
    assert out.tolist() == py_out.tolist() and T.tolist() == py_T.tolist()


def test_di_exp_shapes_and_scalar_scale():
    x = -np.arange(24, dtype=np.int64).reshape(2, 3, 4)
    m = np.array([[200, 150, 130], [255, 128, 190]])
    k = np.array([[10, 12, 14], [8, 9, 20]])
    out, T = di_exp(x, Dyadic(m, k))
    assert out.shape == x.shape and T.shape == (2, 3)
    py_out, py_T = py_di_exp(x, m, k, "half_up")
    assert out.tolist() == py_out.tolist() and T.tolist() == py_T.tolist()
    out1, T1 = di_exp(x[0, 0], Dyadic(np.int64(200), np.int64(10)))
    assert out1.tolist() == out[0, 0].tolist() and T1.shape == ()


# --------------------------------------------------- (b) close to float exp

@given(m=st.integers(128, M_LIMIT), dk=st.integers(4, 80),
       ys=arrays(np.float64, 8, elements=st.floats(0, 40), fill=st.nothing()),
       rounding=st.sampled_from(ROUNDINGS))
@example(m=128, dk=4, ys=np.linspace(0, 3, 8), rounding="half_up")
@example(m=255, dk=16, ys=np.linspace(0, 1.4, 8), rounding="floor")
@example(m=M_LIMIT, dk=80, ys=np.linspace(0, 25, 8), rounding="half_even")
def test_di_exp_close_to_float(m, dk, ys, rounding):
    """|out - T exp(x s)| <= (CHORD_MAX + LOG2E_TERM) T + FLOOR_UNITS, in units of 1/T.

    Domain: normalized mantissas m >= 2^7 (every dynamic scale is one) and 2^k/m >= 8.
    """
    k = m.bit_length() + dk
    s = m * 2.0 ** -k
    x = np.array([-min(math.floor(y / s), X_LIMIT) for y in ys], dtype=np.int64)
    out, T = di_exp(x[None, :], Dyadic(np.array([m]), np.array([k])),
                    spec=Spec(rounding=rounding), backend="reference")
    T = int(T[0])
    xs = np.array([Fraction(int(v)) * m / 2 ** k for v in x], dtype=object)
    want = np.array([T * math.exp(float(v)) for v in xs])
    err = np.abs(out[0] - want)
    tol = (CHORD_MAX + LOG2E_TERM) * T + FLOOR_UNITS
    assert err.max() <= tol, (T, err.max(), tol)
    # the tolerance is not vacuous: the chord error is one-sided (out >= exp - floors)
    assert np.all(out[0] - want >= -FLOOR_UNITS)


def test_di_exp_zero_and_underflow_points():
    """out(0) = T exactly; out reaches 0 once q exceeds bitlen(T) (exp below ~2^-bitlen(T))."""
    m, k = 200, 20
    x = -np.arange(0, 40 * 2 ** 20 // 200, 997, dtype=np.int64)
    out, T = di_exp(x[None, :], Dyadic(np.array([m]), np.array([k])))
    T = int(T[0])
    assert out[0, 0] == T
    assert np.all(np.diff(out[0]) <= 0)                 # monotone in x
    q = (-x) // T
    assert np.all(out[0][q >= T.bit_length()] == 0)
    assert np.all(out[0][q < T.bit_length() - 1] > 0)


# ------------------------------------------------------------ (c) overflow

EXTREME_M = [1, 2, 15, 16, 17, 127, 128, 255, 2 ** 16 - 1, 2 ** 28, M_LIMIT]
EXTREME_K = [-K_LIMIT, -64, -1, 0, 1, 29, 30, 31, 45, 60, 61, 62, 63, 90, 127, K_LIMIT]


def test_di_exp_overflow_bounds_at_extremes():
    """Every intermediate in Python ints, for extreme scales and inputs, fits its bound."""
    for rounding in ROUNDINGS:
        cases = [(m, k) for m in EXTREME_M for k in EXTREME_K]
        units, rows = [], []
        for m, k in cases:
            T, j, m_f = py_exp_unit(m, k, rounding)
            assert 1 <= m_f < 2 ** 32
            assert k - j <= 61                           # 2^k' formed in int64
            assert 1 <= T <= 2 ** T_BITS
            if j > 0:
                assert T >= 2 ** (T_BITS - 1)            # normalization keeps T large
            units.append((T, j))
            rows.append([0, -1, -2, -(T - 1), -T, -T - 1, -(2 ** 40), -X_LIMIT, -X_LIMIT + 1])
        x = np.array(rows, dtype=np.int64)
        scale = Dyadic(np.array([c[0] for c in cases]), np.array([c[1] for c in cases]))
        for backend in ("reference", "numba"):
            out, Tc = di_exp(x, scale, spec=Spec(rounding=rounding), backend=backend)
            for (T, j), row, orow, t in zip(units, rows, out.tolist(), Tc.tolist()):
                assert t == T
                for v, o in zip(row, orow):
                    n = -py_round(v, pow2(j), rounding)
                    assert 0 <= n <= X_LIMIT and (n // T) * T <= n
                    assert o == py_exp(v, T, j, rounding)
                    assert 0 <= o <= T


# --------------------------------------------------------------- bad input

def test_di_exp_bad_input():
    one = Dyadic(np.array([200]), np.array([10]))
    with pytest.raises(IntsimError, match=r"x: DI-Exp needs x <= 0.*got 3 at index \(0, 1\)"):
        di_exp(np.array([[0, 3]]), one)
    with pytest.raises(IntsimError, match=r"^x:"):
        di_exp(np.array([[-(2 ** 63)]], dtype=np.int64), one)
    with pytest.raises(IntsimError, match=r"^x:"):
        di_exp(np.array([[-1.0]]), one)
    with pytest.raises(IntsimError, match=r"^x:"):
        di_exp(np.array([[2 ** 64 - 1]], dtype=np.uint64), one)   # would wrap to -1
    with pytest.raises(IntsimError, match=r"^x:"):
        di_exp([[-1]], one)
    with pytest.raises(IntsimError, match=r"^x:"):
        di_exp(np.array(-1), one)
    with pytest.raises(IntsimError, match=r"scale\.m"):
        di_exp(np.array([[-1]]), Dyadic(np.array([0]), np.array([10])))
    with pytest.raises(IntsimError, match=r"scale\.k"):
        di_exp(np.array([[-1]]), Dyadic(np.array([5]), np.array([K_LIMIT + 1])))
    with pytest.raises(IntsimError, match=r"scale: shape"):
        di_exp(np.array([[-1], [-2]]), Dyadic(np.array([5, 6, 7]), np.array([1, 2, 3])))
    with pytest.raises(IntsimError, match=r"scale: expected a Dyadic"):
        di_exp(np.array([[-1]]), (5, 1))
    with pytest.raises(IntsimError, match=r"backend"):
        di_exp(np.array([[-1]]), one, backend="gpu")
