"""LM head: integer argmax (lowest index on ties) and the 1/sqrt(head_dim) dyadic constant."""
import math
from decimal import Decimal, getcontext

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from intsim.errors import IntsimError
from intsim.head import INV_SQRT_D_LIMIT, argmax, inv_sqrt_dyadic

I32 = (-(2 ** 31), 2 ** 31 - 1)
I64 = (-(2 ** 63), 2 ** 63 - 1)


def logits_arrays(lo, hi, dtype):
    return arrays(dtype, st.tuples(st.integers(1, 4), st.integers(1, 40)),
                  elements=st.one_of(st.integers(max(lo, -2), 2), st.integers(lo, hi)), fill=st.nothing())


def first_max(row):
    """Oracle: scan left to right, replace only on a strictly larger value."""
    best, arg = None, None
    for j, v in enumerate(int(x) for x in row):
        if best is None or v > best:
            best, arg = v, j
    return arg


@given(st.one_of(logits_arrays(*I32, np.int32), logits_arrays(*I64, np.int64),
                 logits_arrays(0, 2 ** 16 - 1, np.uint16)))
@example(np.array([[I32[1], I32[1], I32[0]]], np.int32))
@example(np.array([[I64[0]]], np.int64))
def test_argmax_kernel_equals_reference(x):
    a, b = argmax(x), argmax(x, backend="reference")
    assert a.dtype == b.dtype == np.int64 and np.array_equal(a, b)


@given(st.integers(1, 50), st.data())
def test_argmax_ties_go_to_lowest_index(V, data):
    row = data.draw(arrays(np.int32, (V,), elements=st.integers(-3, 3), fill=st.nothing()))
    top = data.draw(st.integers(-3, 4))
    ties = data.draw(st.lists(st.integers(0, V - 1), min_size=1, unique=True))
    row = np.minimum(row, top - 1).astype(np.int32)
    row[ties] = top                                   # the maximum, at several positions
    for be in ("numba", "reference"):
        got = int(argmax(row, backend=be))
        assert got == min(ties) == first_max(row)


def test_argmax_shapes():
    x = np.array([[[1, 5, 5], [9, 0, 9]], [[0, 0, 0], [-1, -2, -1]]], np.int32)
    for be in ("numba", "reference"):
        assert argmax(x, backend=be).tolist() == [[1, 0], [0, 0]]
        assert argmax(np.array([7], np.int64), backend=be).shape == ()


def test_argmax_bad_input():
    with pytest.raises(IntsimError, match="logits: expected an integer dtype"):
        argmax(np.array([[0.5, 1.0]]))
    with pytest.raises(IntsimError, match="logits: needs a non-empty"):
        argmax(np.zeros((2, 0), np.int32))
    with pytest.raises(IntsimError, match="logits: needs a non-empty"):
        argmax(np.array(3, np.int32))
    with pytest.raises(IntsimError, match="backend"):
        argmax(np.ones((1, 2), np.int32), backend="fast")


# ------------------------------------------------------------------ 1/sqrt(head_dim)

getcontext().prec = 60


def check_inv_sqrt(d, M):
    c = inv_sqrt_dyadic(d, M)
    m, k = int(c.m), int(c.k)
    assert 2 ** (M - 1) <= m < 2 ** M                             # normalized
    u = Decimal(2) ** k / Decimal(d).sqrt()                       # the exact 2^k / sqrt(d)
    assert abs(Decimal(m) - u) <= Decimal(1) / 2                  # nearest at this k
    assert abs(Decimal(m) / u - 1) <= Decimal(2) ** -M            # relative error <= 2^-M
    return m, k


@given(st.integers(1, INV_SQRT_D_LIMIT), st.integers(2, 16))
@example(1, 2)
@example(INV_SQRT_D_LIMIT, 16)
@example(2, 8)            # 2^k / sqrt(2) just below 2^M: the normalization edge
def test_inv_sqrt_dyadic_is_nearest_normalized(d, M):
    check_inv_sqrt(d, M)


def test_inv_sqrt_dyadic_common_head_dims_in_float():
    # re-derived in float: 1/sqrt(128) = 0.0883883... ~= 181 * 2^-11 (relative error 1.1e-4)
    assert (int(inv_sqrt_dyadic(128, 8).m), int(inv_sqrt_dyadic(128, 8).k)) == (181, 11)
    for d in (64, 80, 96, 112, 128, 256):
        for M in (8, 16):
            c = inv_sqrt_dyadic(d, M)
            assert abs(int(c.m) * 2.0 ** -int(c.k) * math.sqrt(d) - 1) <= 2.0 ** -M
    # powers of 4 are exact
    for j in range(9):
        c = inv_sqrt_dyadic(4 ** j, 8)
        assert int(c.m) * 2.0 ** -int(c.k) == 2.0 ** -j


def test_inv_sqrt_dyadic_all_small_head_dims():
    for d in range(1, 1025):
        check_inv_sqrt(d, 8)


def test_inv_sqrt_dyadic_overflow_bound_and_bad_args():
    # largest k over the declared range: 4^(k+1) stays far inside int64
    for M in (2, 16):
        for d in (1, 2, 3, INV_SQRT_D_LIMIT - 1, INV_SQRT_D_LIMIT):
            k = M - 1 + ((d.bit_length() + 1) >> 1)
            assert k <= 24 and 4 ** (k + 1) <= 2 ** 50
            assert math.isqrt(4 ** (k + 1) // d) <= 2 ** 62 - 1
    with pytest.raises(IntsimError, match="head_dim"):
        inv_sqrt_dyadic(0, 8)
    with pytest.raises(IntsimError, match="head_dim"):
        inv_sqrt_dyadic(INV_SQRT_D_LIMIT + 1, 8)
    with pytest.raises(IntsimError, match="m_bits"):
        inv_sqrt_dyadic(64, 17)
    with pytest.raises(IntsimError, match="head_dim"):
        inv_sqrt_dyadic(64.0, 8)
