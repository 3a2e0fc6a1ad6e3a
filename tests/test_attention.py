"""Attention pieces: scale fold, QK^T, PV — kernel == reference, exact vs Python ints, bounds."""
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from intsim.attention import fold_scales, pv, qk_scores
from intsim.errors import IntsimError, IntsimOverflowError
from intsim.options import Spec

roundings = st.sampled_from(["floor", "half_up", "half_even", "half_away"])


@st.composite
def fold_case(draw):
    R, n = draw(st.integers(1, 4)), draw(st.integers(1, 12))
    vals = draw(arrays(np.int64, (R, n), elements=st.integers(-(2 ** 31), 2 ** 31), fill=st.nothing()))
    m = draw(arrays(np.int64, (R, n), elements=st.integers(0, 2 ** 16), fill=st.nothing()))
    k = draw(arrays(np.int64, (R, n), elements=st.integers(-40, 90), fill=st.nothing()))
    vis = draw(arrays(np.bool_, (R, n), elements=st.booleans(), fill=st.nothing()))
    guard = draw(st.integers(0, 14))
    return vals, m, k, vis, guard


@given(fold_case(), roundings)
@example((np.array([[5, -5, 3]]), np.array([[255, 255, 1]]), np.array([[3, 70, 3]]),
          np.array([[True, True, False]]), 0), "half_even")
@example((np.array([[1, 2]]), np.array([[1, 1]]), np.array([[0, 0]]), np.array([[False, False]]), 4), "half_up")
def test_fold_kernel_equals_reference(case, rounding):
    vals, m, k, vis, guard = case
    spec = Spec(rounding=rounding)
    a, sa = fold_scales(vals, m, k, guard, vis, spec, "numba")
    b, sb = fold_scales(vals, m, k, guard, vis, spec, "reference")
    assert np.array_equal(a, b) and np.array_equal(sa.k, sb.k) and np.array_equal(sa.m, sb.m)


@given(fold_case())
def test_fold_is_exact_within_guard_and_rounded_beyond(case):
    """out * 2^-(kref+guard) against vals * m * 2^-k: within half a unit of 2^-(kref+guard)
    (half_up), and exactly equal for the columns at the row's coarsest exponent (no shift)."""
    vals, m, k, vis, guard = case
    out, sc = fold_scales(vals, m, k, guard, vis, Spec(), "reference")
    for r in range(vals.shape[0]):
        vk = [int(k[r, j]) for j in range(vals.shape[1]) if vis[r, j]]
        if not vk:
            assert not out[r].any()
            continue
        kref = min(vk)
        assert int(sc.k[r]) == kref + guard
        for j in range(vals.shape[1]):
            if not vis[r, j]:
                assert out[r, j] == 0
                continue
            exact = Fraction(int(vals[r, j]) * int(m[r, j]) * 2 ** guard, 2 ** (int(k[r, j]) - kref))
            assert abs(int(out[r, j]) - exact) <= Fraction(1, 2)
            if k[r, j] == kref:
                assert int(out[r, j]) == exact


def test_fold_bounds_and_bad_input():
    with pytest.raises(IntsimOverflowError, match="guard"):
        fold_scales(np.array([[2 ** 40]]), np.array([[2 ** 10]]), np.array([[0]]), 16)
    with pytest.raises(IntsimError, match="broadcast"):
        fold_scales(np.array([[1, 2]]), np.array([1, 2, 3]), np.array([0]), 0)
    with pytest.raises(IntsimError, match=">= 0"):
        fold_scales(np.array([[1, 2]]), np.array([[-1, 2]]), np.array([[0, 0]]), 0)
    with pytest.raises(IntsimError, match="vals"):
        fold_scales(np.array([[1.5]]), np.array([[1]]), np.array([[0]]), 0)


@st.composite
def qk_case(draw):
    Hkv, rep = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    T, S, hd = draw(st.integers(1, 5)), draw(st.integers(1, 6)), draw(st.integers(1, 8))
    el = st.integers(-255, 255)
    qc = draw(arrays(np.int64, (T, Hkv * rep, hd), elements=el, fill=st.nothing()))
    kc = draw(arrays(np.int64, (S, Hkv, hd), elements=el, fill=st.nothing()))
    return qc, kc


@given(qk_case())
@example((np.full((1, 2, 3), -255), np.full((2, 1, 3), 255)))
def test_qk_kernel_equals_reference_equals_python(case):
    qc, kc = case
    a, b = qk_scores(qc, kc, "numba"), qk_scores(qc, kc, "reference")
    assert np.array_equal(a, b)
    rep = qc.shape[1] // kc.shape[1]
    h, i, j = qc.shape[1] - 1, qc.shape[0] - 1, kc.shape[0] - 1
    assert int(a[h, i, j]) == sum(int(x) * int(y) for x, y in zip(qc[i, h], kc[j, h // rep]))


@given(qk_case())
def test_pv_kernel_equals_reference_equals_python(case):
    qc, kc = case                       # reuse shapes: p [H, T, S] from qc's T, v = kc
    H, S = qc.shape[1], kc.shape[0]
    p = np.abs(np.resize(qc, (H, qc.shape[0], S)))
    a, b = pv(p, kc, "numba"), pv(p, kc, "reference")
    assert np.array_equal(a, b)
    rep = H // kc.shape[1]
    i, h, d = 0, H - 1, kc.shape[2] - 1
    assert int(a[i, h, d]) == sum(int(p[h, i, j]) * int(kc[j, h // rep, d]) for j in range(S))


def test_attention_matmul_bounds_and_shapes():
    big = np.full((1, 1, 40000), 255)
    with pytest.raises(IntsimOverflowError, match="int32"):
        qk_scores(big, big)
    with pytest.raises(IntsimOverflowError, match="qc"):
        qk_scores(np.full((1, 1, 2), 40000), np.ones((1, 1, 2), np.int64))
    with pytest.raises(IntsimError, match="multiple"):
        qk_scores(np.ones((1, 3, 2), np.int64), np.ones((1, 2, 2), np.int64))
    with pytest.raises(IntsimError, match="positions"):
        pv(np.ones((1, 1, 3), np.int64), np.ones((2, 1, 2), np.int64))
