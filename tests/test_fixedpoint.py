"""Fixed-point primitives: kernel == reference, reference == exact rational math, bounds."""
import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from intsim.errors import IntsimError, IntsimOverflowError
from intsim.fixedpoint import (ABS_LIMIT, CEIL, FLOOR, HALF_AWAY, HALF_EVEN, HALF_UP, ROUNDINGS,
                               bit_length_ref, div_round, dyadic_fit, dyadic_mul, fit_den_limit,
                               floor_div, isqrt, rshift_round, saturate)

BIG = ABS_LIMIT
i64s = st.integers(-BIG, BIG)
roundings = st.sampled_from(ROUNDINGS + (CEIL,))   # ceil: the requantizer's directed fit


def exact_round(fr: Fraction, rounding: str) -> int:
    """Round a rational with the named tie rule, in Python integers (the oracle)."""
    fl = math.floor(fr)
    rem = fr - fl
    if rounding == FLOOR:
        return fl
    if rounding == CEIL:
        return math.ceil(fr)
    if rem > Fraction(1, 2):
        return fl + 1
    if rem < Fraction(1, 2):
        return fl
    return {HALF_UP: fl + 1, HALF_EVEN: fl + (fl & 1), HALF_AWAY: fl + 1 if fr > 0 else fl}[rounding]


def test_oracle_tie_rules_on_named_points():
    # the oracle itself, pinned on hand-checked ties so it cannot drift with the code
    assert [exact_round(Fraction(v, 2), HALF_UP) for v in (-5, -3, -1, 1, 3, 5)] == [-2, -1, 0, 1, 2, 3]
    assert [exact_round(Fraction(v, 2), HALF_EVEN) for v in (-5, -3, -1, 1, 3, 5)] == [-2, -2, 0, 0, 2, 2]
    assert [exact_round(Fraction(v, 2), HALF_AWAY) for v in (-5, -3, -1, 1, 3, 5)] == [-3, -2, -1, 1, 2, 3]
    assert [exact_round(Fraction(v, 2), FLOOR) for v in (-5, -3, -1, 1, 3, 5)] == [-3, -2, -1, 0, 1, 2]
    assert [exact_round(Fraction(v, 3), CEIL) for v in (-4, -1, 0, 1, 4)] == [-1, 0, 0, 1, 2]


# ---------------------------------------------------------------- rshift_round

@given(arrays(np.int64, st.integers(1, 40), elements=i64s, fill=st.nothing()),
       st.integers(0, 70), roundings)
@example(np.array([BIG, -BIG, 0, 1, -1, 3, -3, 2 ** 61, -(2 ** 61)], dtype=np.int64), 1, HALF_EVEN)
@example(np.array([BIG, -BIG, -1, 1], dtype=np.int64), 62, HALF_UP)
@example(np.array([BIG, -BIG, -1, 1], dtype=np.int64), 63, FLOOR)
def test_rshift_round_kernel_equals_reference(x, s, rounding):
    assert np.array_equal(rshift_round(x, s, rounding), rshift_round(x, s, rounding, backend="reference"))


@given(i64s, st.integers(0, 70), roundings)
@example(5, 1, HALF_UP)
@example(-5, 1, HALF_UP)
@example(-(2 ** 61), 62, HALF_AWAY)
@example(BIG, 62, HALF_EVEN)
def test_rshift_round_equals_exact_rational(x, s, rounding):
    got = int(rshift_round(np.int64(x), s, rounding, backend="reference"))
    assert got == exact_round(Fraction(x, 2 ** s), rounding)
    assert got == int(rshift_round(np.int64(x), s, rounding))


def test_rshift_round_refuses_out_of_range():
    with pytest.raises(IntsimOverflowError, match="x"):
        rshift_round(np.array([2 ** 62], dtype=np.int64), 3)
    with pytest.raises(IntsimOverflowError, match="s"):
        rshift_round(np.array([4], dtype=np.int64), -1)
    with pytest.raises(IntsimError, match="x"):
        rshift_round(np.array([1.5]), 1)
    with pytest.raises(IntsimError, match="rounding"):
        rshift_round(np.array([1]), 1, "nearest")


# ------------------------------------------------------------------ div_round

@given(arrays(np.int64, st.integers(1, 40), elements=i64s, fill=st.nothing()),
       arrays(np.int64, st.integers(1, 40), elements=st.integers(1, BIG), fill=st.nothing()),
       roundings)
@example(np.array([7, -7, 5, -5, BIG, -BIG], dtype=np.int64), np.array([2], dtype=np.int64), HALF_AWAY)
def test_div_round_kernel_equals_reference(a, b, rounding):
    n = min(a.size, b.size)
    a, b = a[:n], b[:n]
    assert np.array_equal(div_round(a, b, rounding), div_round(a, b, rounding, backend="reference"))


@given(i64s, st.integers(1, BIG), roundings)
@example(-7, 2, HALF_EVEN)
@example(-BIG, 1, HALF_UP)
@example(BIG, BIG, HALF_UP)
@example(-3, 6, HALF_UP)
@example(-3, 6, HALF_AWAY)
def test_div_round_equals_exact_rational(a, b, rounding):
    got = int(div_round(np.int64(a), np.int64(b), rounding))
    assert got == exact_round(Fraction(a, b), rounding)


def test_floor_div_is_floor_for_negatives():
    a = np.array([-7, -6, -1, 0, 6, 7], dtype=np.int64)
    assert floor_div(a, np.int64(3)).tolist() == [-3, -2, -1, 0, 2, 2]


def test_div_round_refuses_zero_divisor_and_overflow():
    with pytest.raises(IntsimOverflowError, match="divisor"):
        div_round(np.array([1]), np.array([0]))
    with pytest.raises(IntsimOverflowError, match="a"):
        div_round(np.array([2 ** 62]), np.array([3]))


# ---------------------------------------------------------------------- isqrt

@given(arrays(np.int64, st.integers(1, 50), elements=st.integers(0, BIG), fill=st.nothing()))
@example(np.array([0, 1, 2, 3, 4, 15, 16, 17, BIG, (2 ** 31 - 1) ** 2, (2 ** 31) ** 2 - 1], dtype=np.int64))
def test_isqrt_kernel_equals_reference_equals_math(n):
    a = isqrt(n)
    assert np.array_equal(a, isqrt(n, backend="reference"))
    assert a.tolist() == [math.isqrt(int(v)) for v in n]


def test_isqrt_refuses_negative():
    with pytest.raises(IntsimOverflowError, match="n"):
        isqrt(np.array([-1]))


# ------------------------------------------------------------------ bit length

@given(st.integers(0, 2 ** 63 - 1))
@example(0)
@example(1)
@example(2 ** 62)
@example(2 ** 63 - 1)
def test_bit_length_matches_python(v):
    assert int(bit_length_ref(np.int64(v))) == v.bit_length()


# ------------------------------------------------------------------ dyadic fit

fit_args = st.tuples(st.integers(1, 16), st.integers(0, 2 ** 61 - 1), st.integers(1, 2 ** 45 - 1))


@given(arrays(np.int64, st.integers(1, 30), elements=st.integers(0, 2 ** 61 - 1), fill=st.nothing()),
       st.integers(1, 2 ** 45 - 1), st.integers(2, 16), roundings,
       st.tuples(st.integers(-40, 10), st.integers(0, 80)))
@example(np.array([0, 1, 2 ** 61 - 1, 255, 256], dtype=np.int64), 1, 8, HALF_UP, (-128, 127))
@example(np.array([2 ** 61 - 1], dtype=np.int64), 1, 8, HALF_UP, (0, 10))
def test_dyadic_fit_kernel_equals_reference(num, den, m_bits, rounding, krange):
    assume(den <= fit_den_limit(m_bits) and krange[0] <= krange[1])
    a = dyadic_fit(num, np.int64(den), m_bits, krange, rounding)
    b = dyadic_fit(num, np.int64(den), m_bits, krange, rounding, backend="reference")
    for x, y in zip(a, b):
        assert np.array_equal(x, y)


@given(st.integers(1, 2 ** 61 - 1), st.integers(1, 2 ** 45 - 1), st.integers(2, 16), roundings)
@example(255, 255, 8, HALF_UP)
@example(511, 1, 8, HALF_UP)      # 511 = 0b1_1111_1111 rounds up to 512: the carry path
@example(2 ** 61 - 1, 1, 16, HALF_EVEN)
@example(15005, 16000, 4, HALF_UP)   # 7.50 at k=3 rounds onto 2^(M-1): must normalize to k=4
def test_dyadic_fit_is_normalized_and_correctly_rounded(num, den, m_bits, rounding):
    assume(den <= fit_den_limit(m_bits))
    m, k, sat = (int(v) for v in dyadic_fit(np.int64(num), np.int64(den), m_bits, (-10 ** 6, 10 ** 6), rounding))
    assert not sat
    assert 2 ** (m_bits - 1) <= m < 2 ** m_bits
    ratio = Fraction(num, den)
    # m is the correctly rounded num * 2^k / den, unless a carry halved it (then exact 2^(M-1))
    exact = exact_round(ratio * Fraction(2) ** k, rounding)
    assert m == exact or (m == 2 ** (m_bits - 1) and exact_round(ratio * Fraction(2) ** (k + 1), rounding) == 2 ** m_bits)
    # relative error: half an LSB of a mantissa >= 2^(M-1), i.e. <= 2^-M, for nearest modes;
    # a whole LSB (< 2^-(M-1)) for floor
    bound = ratio / 2 ** m_bits if rounding not in (FLOOR, CEIL) else ratio / 2 ** (m_bits - 1)
    assert abs(Fraction(m) / Fraction(2) ** k - ratio) <= bound


def test_dyadic_fit_exponent_range_edges():
    # too large a value for the range: m saturates at 2^M - 1 and is flagged
    m, k, sat = dyadic_fit(np.int64(1000), np.int64(1), 8, (0, 127))
    assert (int(m), int(k), bool(sat)) == (255, 0, True)
    # too small a value: k clamps to k_hi and m loses bits (here down to 0)
    m, k, sat = dyadic_fit(np.int64(1), np.int64(2 ** 40), 8, (-8, 7))
    assert (int(m), int(k), bool(sat)) == (0, 7, False)
    # a range far below the value's exponent: den << -k_hi would leave int64; the exact
    # quotient is below 1/2, so m = 0 in both backends
    for backend in ("numba", "reference"):
        m, k, sat = dyadic_fit(np.int64(3), np.int64(5), 8, (-1000, -900), backend=backend)
        assert (int(m), int(k), bool(sat)) == (0, -900, False)
    m, k, sat = dyadic_fit(np.int64(0), np.int64(5), 8)
    assert (int(m), int(k)) == (0, 0)


def test_dyadic_fit_refuses_bad_arguments():
    with pytest.raises(IntsimOverflowError, match="num"):
        dyadic_fit(np.int64(2 ** 61), np.int64(1))
    with pytest.raises(IntsimOverflowError, match="den"):
        dyadic_fit(np.int64(1), np.int64(0))
    with pytest.raises(IntsimError, match="m_bits"):
        dyadic_fit(np.int64(1), np.int64(1), m_bits=0)
    with pytest.raises(IntsimError, match="k_range"):
        dyadic_fit(np.int64(1), np.int64(1), k_range=(5, 1))


# ------------------------------------------------------------ dyadic_mul, saturate

@given(st.integers(-(2 ** 31), 2 ** 31), st.integers(0, 2 ** 31 - 1), st.integers(-20, 70), roundings)
def test_dyadic_mul_equals_exact_rational(x, m, k, rounding):
    assume(abs(x * m) * 2 ** max(-k, 0) <= BIG)
    got = int(dyadic_mul(np.int64(x), np.int64(m), np.int64(k), rounding))
    assert got == exact_round(Fraction(x * m) / Fraction(2) ** k, rounding)


def test_dyadic_mul_refuses_overflow():
    with pytest.raises(IntsimOverflowError):
        dyadic_mul(np.int64(2 ** 40), np.int64(2 ** 30), np.int64(0))
    with pytest.raises(IntsimOverflowError, match="left shift"):
        dyadic_mul(np.int64(2 ** 20), np.int64(2 ** 20), np.int64(-30))


def test_saturate_counts():
    x, n = saturate(np.array([-200, -128, 0, 127, 300], dtype=np.int64), -127, 127)
    assert x.tolist() == [-127, -127, 0, 127, 127] and n == 3
