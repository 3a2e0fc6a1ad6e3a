"""DI-Norm: kernel == reference, close to float RMSNorm, overflow bounds, edge cases, bad input."""
import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from intsim.errors import IntsimError, IntsimOverflowError
from intsim.norm import NORM_C_LIMIT, NORM_D_LIMIT, di_norm, fixed_preshift, sqrt_c_const
from intsim.options import Spec
from intsim.qtensor import Dyadic, QTensor, dtype_for

roundings = st.sampled_from(["floor", "half_up", "half_even", "half_away"])


def qt(q, zp, bits, signed):
    q = np.asarray(q)
    rows = q.shape[:-1]
    return QTensor(q.astype(dtype_for(bits, signed)), np.asarray(zp, dtype=np.int32).reshape(rows),
                   Dyadic(np.full(rows, 200), np.full(rows, 9)), bits, signed)


@st.composite
def norm_inputs(draw, max_rows=4, max_c=24):
    bits = draw(st.integers(2, 16))
    signed = draw(st.booleans())
    lo, hi = (-(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1) if signed else (0, 2 ** bits - 1)
    rows, C = draw(st.integers(1, max_rows)), draw(st.integers(1, max_c))
    q = draw(arrays(np.int64, (rows, C), elements=st.integers(lo, hi), fill=st.nothing()))
    zp = draw(arrays(np.int64, (rows,), elements=st.integers(lo, hi), fill=st.nothing()))
    return qt(q, zp, bits, signed)


def same(a, b):
    return (a[1] == b[1] and np.array_equal(a[0].scale.m, b[0].scale.m)
            and np.array_equal(a[0].scale.k, b[0].scale.k) and a[0].q is b[0].q)


@given(norm_inputs(), roundings, st.integers(2, 16), st.sampled_from([4, 8]),
       st.sampled_from(["row", "fixed"]))
@example(qt([[0, 0, 0]], [0], 8, True), "half_up", 8, 8, "row")                      # zero row
@example(qt([[7, 7, 7]], [7], 8, False), "half_up", 8, 8, "fixed")                   # all == zp
@example(qt([[5, 5, 5, 5]], [0], 8, False), "half_even", 8, 8, "row")                # all equal
@example(qt([[2 ** 16 - 1, 0]], [0], 16, False), "half_away", 16, 8, "row")          # +-max
@example(qt([[0] * 5], [2 ** 16 - 1], 16, False), "floor", 2, 4, "fixed")
@example(qt([[-32767], [32767], [1]], [0, 0, 0], 16, True), "half_up", 8, 8, "row")  # one column
def test_norm_kernel_equals_reference(x, rounding, m_bits, k_bits, preshift):
    spec = Spec(rounding=rounding, m_bits=m_bits, k_bits=k_bits, overflow="saturate")
    a = di_norm(x, spec, "numba", preshift)
    b = di_norm(x, spec, "reference", preshift)
    assert same(a, b)
    assert a[0].q is x.q and a[0].zp is x.zp and a[0].bits == x.bits and a[0].signed == x.signed


# Tolerance of the output scale against float RMSNorm (no eps), relative: the dyadic fit's
# half-ULP, 1/(2^m_bits - 1) (not 2^-m_bits: a quotient in [2^(M-1) - 1/2, 2^(M-1)) rounds up
# to the normalized 2^(M-1) and keeps that k, e.g. 0.9378 -> 8 * 2^-3 at M = 4), plus the two isqrt truncations 1/n_C + 1/r (n_C >= 2^29.5, r >= 2^30
# under the "row" pre-shift, so < 2^-28.5), plus 2^-40 for the float64 oracle itself.
# An element's error in OUTPUT LSBs (units of s_out) is then |q - zp| * REL / (1 - REL).
def rel_tol(m_bits, isqrt_rel=2.0 ** -28):
    return 1 / (2.0 ** m_bits - 1) + isqrt_rel + 2.0 ** -40


@given(norm_inputs(), st.integers(4, 16))
@example(qt([[2 ** 16 - 1] * 3 + [0]], [0], 16, False), 8)
@example(qt([[1, 0, 0, 0, 0, 0, 0, 0]], [0], 8, True), 8)
def test_norm_close_to_float(x, m_bits):
    d = x.centered().astype(np.float64)
    sumsq = (d * d).sum(axis=-1)
    assume(np.all(sumsq > 0))
    y, _ = di_norm(x, Spec(m_bits=m_bits), "reference")
    s_true = np.sqrt(d.shape[-1] / sumsq)
    s_out = y.scale.m * np.ldexp(1.0, -y.scale.k)
    rel = rel_tol(m_bits)
    assert np.all(np.abs(s_out / s_true - 1) <= rel)
    err_lsb = np.abs(d * s_out[..., None] - d / np.sqrt(sumsq / d.shape[-1])[..., None]) / s_out[..., None]
    assert np.all(err_lsb <= np.abs(d) * rel / (1 - rel))


@given(norm_inputs(), st.integers(4, 16))
def test_norm_fixed_preshift_close_to_float(x, m_bits):
    """"fixed" keeps r = floor(2^P sqrt(sumsq)): its truncation bound grows as the row shrinks."""
    d = x.centered()
    sumsq = (d * d).sum(axis=-1)
    assume(np.all(sumsq > 0))
    y, _ = di_norm(x, Spec(m_bits=m_bits), "reference", preshift="fixed")
    P = fixed_preshift(d.shape[-1], x.bits)
    s_true = np.sqrt(d.shape[-1] / sumsq.astype(np.float64))
    s_out = y.scale.m * np.ldexp(1.0, -y.scale.k)
    r_min = np.ldexp(np.sqrt(sumsq.astype(np.float64)), P) - 1
    assert np.all(np.abs(s_out / s_true - 1) <= rel_tol(m_bits, 2.0 ** -29 + 1 / r_min))


def test_norm_overflow_bounds_with_python_ints():
    """Every intermediate, recomputed in Python ints at the extremes, fits its bound."""
    D = NORM_D_LIMIT
    for C in (1, 2, 3, 4095, 4096, NORM_C_LIMIT - 1, NORM_C_LIMIT):
        n_c, p2 = sqrt_c_const(C)
        assert (C << 2 * p2) <= 2 ** 61 - 1 and n_c == math.isqrt(C << 2 * p2)
        assert 2 ** 29 <= n_c <= 2 ** 61 - 1                    # dyadic_fit numerator bound
        for bits in (2, 8, 16):
            P = fixed_preshift(C, bits)
            assert (C * (2 ** bits - 1) ** 2) << 2 * P <= 2 ** 62 - 1
        for sumsq in (1, 2, C * D * D):
            assert sumsq < 2 ** 48
            P = (62 - sumsq.bit_length()) >> 1
            assert (sumsq << 2 * P) <= 2 ** 62 - 1              # isqrt's bound
            r = math.isqrt(sumsq << 2 * P)
            assert 2 ** 30 <= r <= 2 ** (61 - 16) - 1           # fit den bound at m_bits = 16
    # the largest row the op accepts runs, identically in both backends, with no saturation
    x = qt(np.full((1, NORM_C_LIMIT), D), [0], 16, False)
    for spec in (Spec(), Spec(m_bits=16, k_bits=4, overflow="saturate")):
        a, b = di_norm(x, spec), di_norm(x, spec, "reference")
        assert same(a, b) and a[1] == 0
    # the largest scale (C = 2^16, sumsq = 1) fits even the narrowest exponent: never saturates
    x = qt(np.eye(1, NORM_C_LIMIT, dtype=np.int64), [0], 2, False)
    y, nsat = di_norm(x, Spec(m_bits=2, k_bits=4))
    assert nsat == 0 and y.scale.as_fraction(0) == 256


def test_norm_outside_declared_range_raises():
    with pytest.raises(IntsimError, match="x: bits"):
        di_norm(QTensor(np.zeros((1, 2), np.int32), np.zeros(1, np.int32),
                        Dyadic(np.ones(1, np.int64), np.zeros(1, np.int64)), 17, True))
    with pytest.raises(IntsimError, match="x: row length"):
        di_norm(qt(np.zeros((1, NORM_C_LIMIT + 1)), [0], 8, True))
    with pytest.raises(IntsimOverflowError, match=r"x \(q - zp\)"):
        di_norm(qt([[32767, 0]], [-32769], 16, True))
    with pytest.raises(IntsimOverflowError, match="x zero point"):
        di_norm(qt([[1, 0]], [2 ** 20], 8, True))


def test_norm_zero_row_gives_zero_scale():
    x = qt([[3, 3, 3], [3, 4, 3]], [3, 3], 4, False)
    for be in ("numba", "reference"):
        y, _ = di_norm(x, Spec(), be)
        assert int(y.scale.m[0]) == 0 and int(y.scale.k[0]) == 0 and int(y.scale.m[1]) > 0


def test_norm_single_channel_is_sign():
    # C = 1: RMSNorm(x) = x / |x| = +-1
    x = qt([[-7], [1], [32767]], [0, 0, 0], 16, True)
    y, _ = di_norm(x, Spec(m_bits=8))
    real = [(int(y.q[i, 0]) - int(y.zp[i])) * y.scale.as_fraction(i) for i in range(3)]
    assert all(abs(abs(v) - 1) <= Fraction(1, 255) for v in real) and real[0] < 0 < real[1]


def test_norm_known_value():
    # row (3, -4): mean square 12.5, s_out = 1/sqrt(12.5) = 0.28284...; m_bits = 8 -> 145 * 2^-9
    y, _ = di_norm(qt([[3, -4]], [0], 8, True), Spec(m_bits=8, rounding="half_up"))
    assert (int(y.scale.m[0]), int(y.scale.k[0])) == (round(2 ** 9 / math.sqrt(12.5)), 9)


def test_norm_bad_input():
    with pytest.raises(IntsimError, match="x: expected a QTensor"):
        di_norm(np.zeros((1, 2), np.int8))
    with pytest.raises(IntsimError, match="preshift"):
        di_norm(qt([[1]], [0], 8, True), preshift="none")
    with pytest.raises(IntsimError, match="backend"):
        di_norm(qt([[1]], [0], 8, True), backend="gpu")


# ------------------------------------------------------------------ per-channel norm weight

from intsim.norm import NORM_W_K_MAX, NORM_W_LIMIT, norm_weight   # noqa: E402


@st.composite
def weighted_inputs(draw):
    x = draw(norm_inputs())
    C = x.q.shape[-1]
    g = draw(arrays(np.int64, (C,), elements=st.integers(-NORM_W_LIMIT, NORM_W_LIMIT),
                    fill=st.nothing()))
    return x, g.astype(np.int16), draw(st.integers(0, NORM_W_K_MAX))


@given(weighted_inputs())
@example((qt([[2 ** 16 - 1, 0]], [0], 16, False), np.array([NORM_W_LIMIT, -NORM_W_LIMIT], np.int16), 31))
@example((qt([[0, 0]], [2 ** 16 - 1], 16, False), np.array([-NORM_W_LIMIT, 1], np.int16), 0))
def test_norm_weight_kernel_equals_reference(args):
    x, g, gk = args
    a, b = norm_weight(x, g, gk, "numba"), norm_weight(x, g, gk, "reference")
    assert np.array_equal(a.q, b.q) and a.q.dtype == np.int64 and a.bits == b.bits
    assert np.array_equal(a.scale.m, x.scale.m) and np.array_equal(a.scale.k, x.scale.k + gk)


@given(weighted_inputs())
def test_norm_weight_is_exact_against_python_ints(args):
    """Exact product: the real value of every element equals (q - zp) s_x g 2^-gk."""
    x, g, gk = args
    y = norm_weight(x, g, gk)
    for i in range(x.q.shape[0]):
        for j in range(x.q.shape[1]):
            want = Fraction(int(x.q[i, j]) - int(x.zp[i])) * x.scale.as_fraction(i) * int(g[j]) / 2 ** gk
            assert Fraction(int(y.q[i, j])) * y.scale.as_fraction(i) == want


def test_norm_weight_overflow_bound_with_python_ints():
    """|y| <= (2^16 - 1)(2^15 - 1) < 2^31 at the extremes, both signs, both backends."""
    bound = NORM_D_LIMIT * NORM_W_LIMIT
    assert bound < 2 ** 31
    x = qt([[2 ** 16 - 1, 0, 2 ** 16 - 1, 0]], [0], 16, False)
    g = np.array([NORM_W_LIMIT, NORM_W_LIMIT, -NORM_W_LIMIT, -NORM_W_LIMIT], np.int16)
    for backend in ("numba", "reference"):
        y = norm_weight(x, g, 0, backend).q
        assert [int(v) for v in y[0]] == [bound, 0, -bound, 0]
    x = qt([[0, 2 ** 16 - 1]], [2 ** 16 - 1], 16, False)
    assert int(norm_weight(x, g[:2], 0).q[0, 0]) == -bound


def test_norm_weight_bad_input():
    x = qt([[1, 2, 3]], [0], 8, True)
    with pytest.raises(IntsimError, match=r"weight: shape"):
        norm_weight(x, np.ones(2, np.int16), 0)
    with pytest.raises(IntsimError, match="weight"):
        norm_weight(x, np.array([1, 2, 40000]), 0)      # outside 16 bits
    with pytest.raises(IntsimError, match="weight exponent"):
        norm_weight(x, np.ones(3, np.int16), NORM_W_K_MAX + 1)
    with pytest.raises(IntsimError, match="weight"):
        norm_weight(x, np.ones(3), 0)
    with pytest.raises(IntsimError, match="x: expected a QTensor"):
        norm_weight(np.ones((1, 3)), np.ones(3, np.int16), 0)
