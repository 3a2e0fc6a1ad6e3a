"""Per-row dynamic requantizer: kernel == reference, close to float, overflow, bad input."""
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from intsim.errors import IntsimError, IntsimOverflowError
from intsim.options import Spec
from intsim.qtensor import Dyadic, QTensor
from intsim.requant import V_LIMIT, requant_rows

shapes = st.tuples(st.integers(1, 5), st.integers(1, 24))
vals = st.one_of(st.integers(-(2 ** 20), 2 ** 20), st.integers(-V_LIMIT, V_LIMIT))
roundings = st.sampled_from(["floor", "half_up", "half_even", "half_away"])


def same(a: QTensor, b: QTensor) -> bool:
    return (np.array_equal(a.q, b.q) and a.q.dtype == b.q.dtype and np.array_equal(a.zp, b.zp)
            and np.array_equal(a.scale.m, b.scale.m) and np.array_equal(a.scale.k, b.scale.k))


@given(shapes.flatmap(lambda s: arrays(np.int64, s, elements=vals, fill=st.nothing())),
       st.integers(2, 16), st.booleans(), roundings, st.integers(0, 2 ** 16), st.integers(-60, 60),
       st.sampled_from(["fitted", "range"]))
@example(np.zeros((2, 3), dtype=np.int64), 8, False, "half_up", 200, 10, "fitted")
@example(np.full((2, 3), 7, dtype=np.int64), 8, False, "half_up", 200, 10, "fitted")
@example(np.array([[V_LIMIT, -V_LIMIT, 0]], dtype=np.int64), 16, True, "half_even", 2 ** 16, -60, "fitted")
@example(np.array([[-5], [5]], dtype=np.int64), 4, False, "half_up", 1, 0, "fitted")
@example(np.array([[3, -9]], dtype=np.int64), 8, False, "half_up", 255, -2000, "fitted")   # saturated scale
def test_requant_kernel_equals_reference(v, bits, sym, rounding, m_in, k_in, mode):
    spec = Spec(rounding=rounding, overflow="saturate", requant_mode=mode)
    sc = Dyadic(np.full(v.shape[0], m_in), np.full(v.shape[0], k_in))
    a, na = requant_rows(v, sc, bits, sym, spec)
    b, nb = requant_rows(v, sc, bits, sym, spec, backend="reference")
    assert same(a, b) and na == nb


# Tolerance, in output LSBs, of the dequantized result against the exact real input.
# Both modes: 0.5 LSB from the code rounding (q - zp = rnd(exact), the zero point's own
# rounding cancels), plus up to 0.5 more where an asymmetric code is clamped at Q after
# both it and zp rounded up on ties, plus the floor pre-shift (< 2^-31 of the range,
# < 0.01 LSB).  "range" mode adds the scale's fit error: relative 2^-m_bits over codes up
# to Q, i.e. Q * 2^-m_bits LSB; "fitted" mode computes codes against the fitted scale,
# so the scale's error does not enter.
def tol_lsb(bits, sym, m_bits, mode):
    Q = 2 ** (bits - 1) - 1 if sym else 2 ** bits - 1
    fit = Fraction(Q, 2 ** m_bits) if mode == "range" else 0
    return Fraction(1, 2) + fit + (0 if sym else Fraction(1, 2)) + Fraction(1, 100)


@given(shapes.flatmap(lambda s: arrays(np.int64, s, elements=st.integers(-(2 ** 40), 2 ** 40), fill=st.nothing())),
       st.sampled_from([4, 8, 16]), st.booleans(), st.integers(2 ** 7, 2 ** 8 - 1), st.integers(0, 30),
       st.sampled_from(["fitted", "range"]), st.sampled_from([4, 8, 12]))
@example(np.array([[-100, 0, 300, 299, 7]], dtype=np.int64), 16, True, 255, 3, "fitted", 4)
def test_requant_close_to_exact(v, bits, sym, m_in, k_in, mode, m_bits):
    spec = Spec(requant_mode=mode, m_bits=m_bits)
    q, _ = requant_rows(v, Dyadic(np.full(v.shape[0], m_in), np.full(v.shape[0], k_in)), bits, sym, spec,
                        backend="reference")
    for i in range(v.shape[0]):
        s_in = Fraction(m_in, 2 ** k_in)
        s_out = q.scale.as_fraction(i)
        if s_out == 0:
            assert not v[i].any()
            continue
        for j in range(v.shape[1]):
            real = int(v[i, j]) * s_in
            got = (int(q.q[i, j]) - int(q.zp[i])) * s_out
            assert abs(got - real) / s_out <= tol_lsb(bits, sym, m_bits, mode), (i, j)


@pytest.mark.parametrize("mode", ["fitted", "range"])
def test_requant_uses_the_code_range_and_keeps_zero(mode):
    spec = Spec(requant_mode=mode)
    v = np.array([[-100, 0, 300]], dtype=np.int64)
    q, _ = requant_rows(v, Dyadic(np.array([128]), np.array([7])), 8, False, spec)
    assert int(q.q.min()) == 0 and int(q.q[0, 1]) == int(q.zp[0])   # real zero is exactly a code
    qs, _ = requant_rows(v, Dyadic(np.array([128]), np.array([7])), 8, True, spec)
    assert int(qs.q[0, 1]) == 0 and qs.q.dtype == np.int8
    if mode == "range":       # codes from the exact range reach both ends
        assert int(q.q.max()) == 255 and int(qs.q[0, 2]) == 127
    else:                     # a ceil-fitted scale gives up at most 2^-(M-1) of the range,
        # and the top code is that ideal value rounded (-1/2)
        assert 255 * (1 - Fraction(1, 2 ** 7)) - Fraction(1, 2) <= int(q.q.max()) <= 255
        assert 127 * (1 - Fraction(1, 2 ** 7)) - Fraction(1, 2) <= int(qs.q[0, 2]) <= 127


def test_requant_overflow_bounds_with_python_ints():
    """Largest intermediates for extreme inputs, recomputed in Python ints, fit int64."""
    for sym in (False, True):
        v = np.array([[V_LIMIT, -V_LIMIT, 1, -1]], dtype=np.int64)
        R = 2 * V_LIMIT if not sym else V_LIMIT
        sh = max(R.bit_length() - 32, 0)
        vs = [int(x) >> sh for x in v[0]]
        Rs = (max(max(vs), 0) - min(min(vs), 0)) if not sym else max(abs(x) for x in vs)
        Q = 2 ** 16 - 1
        assert Rs <= 2 ** 32 and max(abs(x) * Q for x in vs) < 2 ** 48
        assert 2 ** 28 * Rs <= 2 ** 61 - 1           # m_in * R' inside dyadic_fit's bound
        q, _ = requant_rows(v, Dyadic(np.array([2 ** 28]), np.array([0])), 16, sym,
                            Spec(overflow="saturate", k_bits=16))
        assert q.q.dtype == (np.int16 if sym else np.uint16)


def test_requant_scale_overflow_raises_or_saturates():
    v = np.array([[2 ** 40, -(2 ** 40)]], dtype=np.int64)
    sc = Dyadic(np.array([255]), np.array([-100]))   # a huge input scale
    with pytest.raises(IntsimOverflowError, match="scale"):
        requant_rows(v, sc, 8, False, Spec())
    q, nsat = requant_rows(v, sc, 8, False, Spec(overflow="saturate"))
    assert nsat == 1 and int(q.scale.m[0]) == 255 and int(q.scale.k[0]) == -128


def test_requant_bad_input():
    sc = Dyadic(np.array([1]), np.array([0]))
    with pytest.raises(IntsimError, match="v"):
        requant_rows(np.array([[1.0, 2.0]]), sc, 8)
    with pytest.raises(IntsimError, match="bits"):
        requant_rows(np.array([[1, 2]]), sc, 1)
    with pytest.raises(IntsimOverflowError, match="v"):
        requant_rows(np.array([[2 ** 62, 0]], dtype=np.int64), sc, 8)
    with pytest.raises(IntsimError, match="last axis"):
        requant_rows(np.zeros((1, 0), dtype=np.int64), sc, 8)
    with pytest.raises(IntsimOverflowError, match="scale m"):
        requant_rows(np.array([[1, 2]]), Dyadic(np.array([2 ** 29]), np.array([0])), 8)
