"""Residual add: kernel == reference, close to exact a + b, overflow bounds, zero points,
the rounded-alignment path, bad input."""
import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from intsim.errors import IntsimError, IntsimOverflowError
from intsim.fixedpoint import ROUND_CODE
from intsim.options import Spec
from intsim.qtensor import Dyadic, QTensor, dtype_for
from intsim.requant import requant_rows
from intsim.residual import ALIGN_BITS, RES_K_LIMIT, _align_nb, _align_ref, _flat, residual_add

roundings = st.sampled_from(["floor", "half_up", "half_even", "half_away"])
M_MAX = 2 ** 31 - 1


def qt(q, zp, m, k, bits, signed):
    q = np.asarray(q)
    rows = q.shape[:-1]
    return QTensor(q.astype(dtype_for(bits, signed)), np.asarray(zp, dtype=np.int32).reshape(rows),
                   Dyadic(np.asarray(m, dtype=np.int64).reshape(rows), np.asarray(k, dtype=np.int64).reshape(rows)),
                   bits, signed)


@st.composite
def operand(draw, shape, m_hi=M_MAX, k_lo=-RES_K_LIMIT, k_hi=RES_K_LIMIT):
    bits = draw(st.integers(2, 16))
    signed = draw(st.booleans())
    lo, hi = (-(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1) if signed else (0, 2 ** bits - 1)
    rows = shape[0]
    q = draw(arrays(np.int64, shape, elements=st.integers(lo, hi), fill=st.nothing()))
    zp = draw(arrays(np.int64, (rows,), elements=st.integers(lo, hi), fill=st.nothing()))
    m = draw(arrays(np.int64, (rows,), elements=st.integers(0, m_hi), fill=st.nothing()))
    # huge scales (k near -2^20) saturate, tiny ones (k near 2^20) refit at k_max
    ks = st.one_of(st.integers(max(k_lo, -70), min(k_hi, 70)), st.integers(k_lo, k_hi))
    k = draw(arrays(np.int64, (rows,), elements=ks, fill=st.nothing()))
    return qt(q, zp, m, k, bits, signed)


pairs = st.tuples(st.integers(1, 4), st.integers(1, 16)).flatmap(lambda s: st.tuples(operand(s), operand(s)))


def same(x, y):
    (a, sa), (b, sb) = x, y
    return (sa == sb and a.q.dtype == b.q.dtype and np.array_equal(a.q, b.q) and np.array_equal(a.zp, b.zp)
            and np.array_equal(a.scale.m, b.scale.m) and np.array_equal(a.scale.k, b.scale.k))


def ex(qa, za, ma, ka, qb, zb, mb, kb, bits=16, signed=False):
    return (qt([qa], [za], [ma], [ka], bits, signed), qt([qb], [zb], [mb], [kb], bits, signed))


@given(pairs, roundings, st.integers(8, 16), st.integers(2, 16), st.sampled_from([4, 8, 16]))
@example(ex([0, 0], 0, 0, 0, [0, 0], 0, 0, 0), "half_up", 16, 8, 8)                    # both zero
@example(ex([5, 5], 5, 255, 3, [1, 2], 0, 255, 70), "half_up", 16, 8, 8)               # coarse all zp
@example(ex([65535, 0], 0, M_MAX, -7, [1, 65535], 0, M_MAX, 6), "half_even", 16, 8, 16)  # L + D = 60
@example(ex([65535, 0], 0, M_MAX, -7, [1, 65535], 0, M_MAX, 7), "half_away", 16, 8, 16)  # L + D = 61
@example(ex([5, 5], 5, 255, 3, [1, 2], 0, 255, 900), "half_up", 16, 8, 8)              # tiny scale
@example(ex([3], 0, 1, -RES_K_LIMIT, [65535], 0, M_MAX, RES_K_LIMIT), "floor", 16, 8, 4)  # single column
@example(ex([7, 7], 0, 9, 4, [7, 7], 0, 9, 4), "half_up", 8, 2, 4)                     # equal k, all equal
def test_residual_kernel_equals_reference(ab, rounding, rbits, m_bits, k_bits):
    a, b = ab
    spec = Spec(rounding=rounding, residual_bits=rbits, m_bits=m_bits, k_bits=k_bits, overflow="saturate")
    ra = residual_add(a, b, spec, "numba")
    rb = residual_add(a, b, spec, "reference")
    assert same(ra, rb)
    assert ra[0].signed and ra[0].bits == rbits and not ra[0].zp.any()


def exact_real(x: QTensor, i, j):
    return (int(x.q[i, j]) - int(x.zp[i])) * x.scale.as_fraction(i)


# Tolerance in OUTPUT LSBs (the fitted scale s_out) of the dequantized sum against the exact
# a + b: the code rounding (1/2), the scale's fit error over codes up to |q| (relative
# FIT_REL = 1/(2^M - 1): half a mantissa ULP, 2^-M except where a quotient rounds up onto
# 2^(M-1)), the requantizer's floor pre-shift (< 2^-31 of the range, < 2^-15 LSB at 16 bits)
# and the alignment rounding (< 2^-36 LSB, docstring proof) — 2^-10 covers both; all divided
# by (1 - FIT_REL) because the ideal LSB is at most s_out / (1 - FIT_REL).
def tol_lsb(q, m_bits):
    fit_rel = Fraction(1, 2 ** m_bits - 1)
    return (Fraction(1, 2) + Fraction(1, 2 ** 10) + abs(q) * fit_rel) / (1 - fit_rel)


@given(st.tuples(st.integers(1, 3), st.integers(1, 12)).flatmap(
    lambda s: st.tuples(operand(s, 2 ** 16 - 1, 0, 80), operand(s, 2 ** 16 - 1, 0, 80))),
    st.sampled_from([8, 12, 16]), st.sampled_from([4, 8, 16]))
@example(ex([65535, 1], 0, 65535, 0, [1, 65535], 0, 65535, 80), 16, 8)   # the rounded path
def test_residual_close_to_exact(ab, rbits, m_bits):
    a, b = ab
    out, _ = residual_add(a, b, Spec(residual_bits=rbits, m_bits=m_bits, k_bits=16), "reference")
    for i in range(a.q.shape[0]):
        s_out = out.scale.as_fraction(i)
        for j in range(a.q.shape[1]):
            true = exact_real(a, i, j) + exact_real(b, i, j)
            if s_out == 0:
                assert true == 0
                continue
            got = int(out.q[i, j]) * s_out
            assert abs(got - true) / s_out <= tol_lsb(int(out.q[i, j]), m_bits), (i, j)


def test_residual_rounded_path_is_reported_and_negligible():
    # a's unit is 2^90 times b's: aligning exactly would need 2^(31 + 90); b rounds to 0
    a = qt([[32767, -3]], [0], [65535], [0], 16, True)
    b = qt([[1, 32767]], [0], [65535], [90], 16, True)
    out, st_ = residual_add(a, b)
    assert st_["rows_rounded"] == 1 and st_["scale_saturated"] == 0
    ref, _ = requant_rows(a.centered() * 65535, Dyadic(np.array([1]), np.array([0])), 16, True)
    assert np.array_equal(out.q, ref.q) and np.array_equal(out.scale.m, ref.scale.m)


def test_residual_zero_operand_contributes_nothing_and_zp_is_removed():
    # a: unsigned codes all at its zero point (real 0); b: asymmetric with zp = 100
    a = qt([[200, 200, 200]], [200], [255], [12], 8, False)
    b = qt([[0, 100, 255]], [100], [181], [9], 8, False)
    spec = Spec(requant_mode="range")      # codes from the exact range: the top code is 32767
    for be in ("numba", "reference"):
        out, _ = residual_add(a, b, spec, backend=be)
        ref, _ = requant_rows(b.centered() * 181, Dyadic(np.array([1]), np.array([9])), 16, True, spec)
        assert np.array_equal(out.q, ref.q) and np.array_equal(out.scale.k, ref.scale.k)
        assert int(out.q[0, 1]) == 0 and int(out.q[0, 2]) == 32767      # b's zp is real zero


def test_residual_one_dimensional_rows():
    a = QTensor(np.array([1, -2], np.int8), np.int32(0), Dyadic(np.array(128), np.array(7)), 8, True)
    out, _ = residual_add(a, a, Spec(requant_mode="range"))
    assert out.q.shape == (2,) and out.q.tolist() == [16384, -32767]


def py_sum(a: QTensor, b: QTensor, rounding):
    out, Ks = [], []
    for i in range(a.q.shape[0]):
        va = [(int(v) - int(a.zp[i])) * int(a.scale.m[i]) for v in a.q[i]]
        vb = [(int(v) - int(b.zp[i])) * int(b.scale.m[i]) for v in b.q[i]]
        ka, kb = int(a.scale.k[i]), int(b.scale.k[i])
        assert max(map(abs, va + vb)) < 2 ** 47
        vc, vf, kc, kf = (va, vb, ka, kb) if ka <= kb else (vb, va, kb, ka)
        L = max(map(abs, vc)).bit_length()
        sc = 0 if L == 0 else min(kf - kc, ALIGN_BITS - L)
        K = kf if L == 0 else kc + sc
        sf = kf - K
        assert all(abs(v << sc) < 2 ** 60 for v in vc)
        row = [(c << sc) + rnd(Fraction(f, 2 ** sf), rounding) for c, f in zip(vc, vf)]
        assert all(abs(v) <= 2 ** 61 - 1 for v in row)                # requant_rows' input bound
        out.append(row)
        Ks.append(K)
    return out, Ks


def rnd(fr: Fraction, rounding):
    fl = math.floor(fr)
    rem = fr - fl
    if rounding == "floor" or rem < Fraction(1, 2):
        return fl
    if rem > Fraction(1, 2):
        return fl + 1
    return {"half_up": fl + 1, "half_even": fl + (fl & 1), "half_away": fl + 1 if fr > 0 else fl}[rounding]


@pytest.mark.parametrize("rounding", ["floor", "half_up", "half_even", "half_away"])
def test_residual_overflow_bounds_with_python_ints(rounding):
    """Extreme operands (|q - zp| = 2^16 - 1, m = 2^31 - 1, k at +-2^20, differences at the
    exact/rounded threshold): the int64 sums of both backends equal the Python-int sums."""
    big = [65535, 0, 1]
    cases = []
    for ka, kb in ((0, 0), (-7, 6), (-7, 7), (-RES_K_LIMIT, RES_K_LIMIT), (RES_K_LIMIT, -RES_K_LIMIT), (5, 13)):
        a = qt([big, [0, 0, 0]], [0, 65535], [M_MAX, M_MAX], [ka, ka], 16, False)
        b = qt([[0, 65535, 32768], [65535, 1, 0]], [65535, 0], [M_MAX, 1], [kb, kb], 16, False)
        cases.append((a, b))
    for a, b in cases:
        want, Ks = py_sum(a, b, rounding)
        code = ROUND_CODE[rounding]
        for f in (_align_ref, _align_nb):
            s, K, _ = f(*_flat(a), *_flat(b), code)
            assert s.tolist() == want and K.tolist() == Ks
        residual_add(a, b, Spec(rounding=rounding, overflow="saturate"))     # runs, no raise


def test_residual_bad_input():
    a = qt([[1, 2]], [0], [1], [0], 8, True)
    with pytest.raises(IntsimError, match="b: shape"):
        residual_add(a, qt([[1, 2, 3]], [0], [1], [0], 8, True))
    with pytest.raises(IntsimError, match="a: expected a QTensor"):
        residual_add(np.ones((1, 2), np.int8), a)
    with pytest.raises(IntsimOverflowError, match=r"b \(q - zp\)"):
        residual_add(a, qt([[32767, 0]], [-32769], [1], [0], 16, True))
    with pytest.raises(IntsimOverflowError, match="a scale k"):
        residual_add(qt([[1, 2]], [0], [1], [RES_K_LIMIT + 1], 8, True), a)
    with pytest.raises(IntsimError, match="backend"):
        residual_add(a, a, backend="gpu")
