"""Tests of DI-MatMul (intsim/matmul.py) and the float-side weight quantizer.

(a) Numba (fused tile kernel) == NumPy reference, exactly: P, its scale, the output codes,
    zero points, scales and stats, over independent extremes of every input;
(b) the op against float64 math on the same integer inputs, within a tolerance in output
    LSBs derived from the requantizer (below), and the quantizer against the float weight;
(c) at the extremes of the declared ranges every intermediate, recomputed in Python
    ints, fits its container; beyond them the op raises naming the argument.
"""
import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import numpy as np
import pytest
from hypothesis import assume, example, given

from converters.weights import dequantize_weight, quantize_weight
from intsim.errors import IntsimError, IntsimOverflowError
from intsim.fixedpoint import ROUNDINGS
from intsim.matmul import (ACC_LIMIT, B_LIMIT, M_LIMIT, P_LIMIT, QWeight, acc_bound,
                           di_matmul, di_matmul_acc, max_group_size, p_bound)
from intsim.options import DEFAULT_SPEC, Spec
from intsim.qtensor import Dyadic, QTensor
from intsim.requant import requant_rows


def _qtensor(q, zp, m, k, bits, signed):
    return QTensor(np.asarray(q).astype(np.int32), np.asarray(zp, dtype=np.int32),
                   Dyadic(np.asarray(m, dtype=np.int64), np.asarray(k, dtype=np.int64)),
                   bits, signed)


def _case(xq, x_signed, x_bits, zp, sm, sk, wq, W, G, m, b, k, A, out_bits, out_sym, rnd):
    """One DI-MatMul case as a tuple (what the strategy draws and @example passes)."""
    x = _qtensor(xq, zp, sm, sk, x_bits, x_signed)
    w = QWeight(np.asarray(wq, dtype=np.uint8), W, G, np.asarray(m, dtype=np.int64),
                np.asarray(b, dtype=np.int64), k)
    return x, w, A, out_bits, out_sym, Spec(rounding=rnd, overflow="saturate")


@st.composite
def cases(draw):
    A = draw(st.integers(2, 8))
    W = draw(st.integers(2, 8))
    T = draw(st.integers(1, 7))
    N = draw(st.integers(1, 12))
    G = draw(st.integers(1, 40))
    K = G * draw(st.integers(1, 3))
    x_bits = draw(st.sampled_from([4, 8, 12, 16]))
    x_signed = draw(st.booleans())
    lo, hi = (-(2 ** (x_bits - 1) - 1), 2 ** (x_bits - 1) - 1) if x_signed else (0, 2 ** x_bits - 1)
    xq = draw(hnp.arrays(np.int32, (T, K), elements=st.integers(lo, hi), fill=st.nothing()))
    zp = (np.zeros(T, np.int32) if x_signed else
          draw(hnp.arrays(np.int32, T, elements=st.integers(0, hi), fill=st.nothing())))
    sm = draw(hnp.arrays(np.int64, T, elements=st.integers(0, 255), fill=st.nothing()))
    sk = draw(hnp.arrays(np.int64, T, elements=st.integers(-10, 40), fill=st.nothing()))
    ng = K // G
    wq = draw(hnp.arrays(np.uint8, (N, K), elements=st.integers(0, 2 ** W - 1), fill=st.nothing()))
    m = draw(hnp.arrays(np.int64, (N, ng), elements=st.integers(0, M_LIMIT), fill=st.nothing()))
    b = draw(hnp.arrays(np.int64, (N, ng), elements=st.integers(-B_LIMIT, B_LIMIT),
                        fill=st.nothing()))
    k = draw(st.integers(-40, 60))
    out_bits = draw(st.integers(2, 16))
    return _case(xq, x_signed, x_bits, zp, sm, sk, wq, W, G, m, b, k, A, out_bits,
                 draw(st.booleans()), draw(st.sampled_from(ROUNDINGS)))


def _all_max_case():
    T, N, K = 4, 10, 48
    return _case(np.full((T, K), 32767), True, 16, np.zeros(T), [255] * T, [0] * T,
                 np.full((N, K), 255), 8, 16, np.full((N, 3), M_LIMIT), np.full((N, 3), B_LIMIT),
                 0, 8, 16, True, "half_up")


def _zero_row_case():
    T, N, K = 3, 9, 32
    xq = np.arange(T * K).reshape(T, K) % 200
    xq[1] = 0
    return _case(xq, False, 8, [0, 0, 7], [100, 0, 100], [3, 3, 3], np.arange(N * K).reshape(N, K)
                 % 16, 4, 32, np.full((N, 1), 1000), np.full((N, 1), -8000), 10, 4, 8, False,
                 "half_even")


def _single_column_case():
    return _case([[5], [-7]], True, 8, [0, 0], [9, 9], [1, 2], [[3], [0]], 2, 1, [[1], [2]],
                 [[-3], [5]], -3, 2, 2, False, "half_away")


def _equal_rows_case():
    T, N, K = 5, 8, 20
    return _case(np.full((T, K), 9), False, 4, np.full(T, 9), [1] * T, [0] * T,
                 np.full((N, K), 7), 3, 20, np.full((N, 1), 3), np.full((N, 1), 0), 0, 6, 4,
                 False, "floor")


def _run(case, backend):
    x, w, A, ob, osym, spec = case
    P, s, st_acc = di_matmul_acc(x, w, A, spec, backend)
    y, st_out = di_matmul(x, w, A, ob, osym, spec, backend)
    return P, s, st_acc, y, st_out


# ---------------------------------------------------------------- (a) kernel == reference

@given(cases())
@example(_all_max_case())
@example(_zero_row_case())
@example(_single_column_case())
@example(_equal_rows_case())
def test_di_matmul_kernel_equals_reference(case):
    P0, s0, a0, y0, o0 = _run(case, "reference")
    P1, s1, a1, y1, o1 = _run(case, "numba")
    assert P0.dtype == P1.dtype == np.int64
    np.testing.assert_array_equal(P1, P0)
    np.testing.assert_array_equal(s1.m, s0.m)
    np.testing.assert_array_equal(s1.k, s0.k)
    assert a1 == a0 and o1 == o0
    for f in ("q", "zp"):
        np.testing.assert_array_equal(getattr(y1, f), getattr(y0, f))
        assert getattr(y1, f).dtype == getattr(y0, f).dtype
    np.testing.assert_array_equal(y1.scale.m, y0.scale.m)
    np.testing.assert_array_equal(y1.scale.k, y0.scale.k)
    assert (y1.bits, y1.signed) == (y0.bits, y0.signed)


def test_di_matmul_kernel_equals_reference_large():
    """Real-size-like shapes: every tile shape, several chunks, group-wise and per-channel,
    leading batch axes."""
    rng = np.random.default_rng(11)
    for (T, N, K, G, W, A) in [(7, 101, 256, 64, 4, 8), (1, 130, 512, 512, 8, 8),
                               (10, 50, 96, 32, 3, 6)]:
        wf = rng.standard_normal((N, K)) * 0.02
        w = quantize_weight(wf, W, G)
        xq = rng.integers(-32767, 32768, (2, T, K))
        x = _qtensor(xq, np.zeros((2, T)), np.full((2, T), 200), np.full((2, T), 22), 16, True)
        for osym in (False, True):
            r = di_matmul(x, w, A, 8, osym, backend="reference")
            n = di_matmul(x, w, A, 8, osym, backend="numba")
            np.testing.assert_array_equal(n[0].q, r[0].q)
            np.testing.assert_array_equal(n[0].scale.m, r[0].scale.m)
            assert n[1] == r[1]
            assert n[0].q.shape == (2, T, N)


# ---------------------------------------------------------------- (b) close to float

def tol_lsb(out_bits: int, symmetric: bool, m_bits: int, mode: str = "fitted") -> float:
    """Bound on |decoded output - exact product| in output LSBs (the fitted output scale).

    P is exact, so all error comes from requant_rows(P): with Q the code range,
    R' the (pre-shifted) row range and s = s_in 2^sh R'/Q the ideal output scale,
    * code rounding: rnd(v'Q/R') is within 1/2, and the asymmetric zero point
      rnd(-lo'Q/R') adds another 1/2 (the end clamp acts only on a tie): 1/2 or 1 LSB;
    * scale fit ("range" mode only: "fitted" computes codes against the stored scale):
      s_fit = s (1 + e), |e| <= 2^-m_bits, scales a code of magnitude <= Q: Q e / (1 - e) LSB;
    * pre-shift floor: under 2^sh s_in = s Q / R' <= Q 2^-31 LSB (R' >= 2^31 when sh > 0);
    plus 1e-6 LSB for the float64 evaluation of the reference.
    """
    Q = 2 ** (out_bits - 1) - 1 if symmetric else 2 ** out_bits - 1
    e = 2.0 ** -m_bits
    fit = Q * e / (1 - e) if mode == "range" else 0.0
    return (0.5 if symmetric else 1.0) + fit + Q * 2.0 ** -31 + 1e-6


def _float_of(qt):
    q = qt.q.astype(np.float64) - qt.zp.astype(np.float64)[..., None]
    return q * np.ldexp(qt.scale.m.astype(np.float64), -qt.scale.k)[..., None]


@pytest.mark.parametrize("W,G,A", [(2, 32, 4), (3, 64, 6), (4, 128, 8), (6, 256, 8),
                                   (8, 256, 8), (4, 256, 4)])
@pytest.mark.parametrize("out_bits,out_sym", [(8, False), (4, False), (16, True), (8, True)])
@pytest.mark.parametrize("mode", ["fitted", "range"])
def test_di_matmul_close_to_float(W, G, A, out_bits, out_sym, mode):
    rng = np.random.default_rng(W * 1000 + G + A + out_bits)
    T, N, K = 6, 40, 256
    wf = rng.standard_normal((N, K)) * 0.02
    wf[:, 3] *= 20                                          # an outlier input channel
    w = quantize_weight(wf, W, G)
    xf = rng.standard_normal((T, K)) * np.linspace(0.1, 30, T)[:, None]
    xf[0] = 0.0                                             # an all-zero token
    xq = np.rint(xf * 1000).astype(np.int32).clip(-32767, 32767)
    x = _qtensor(xq, np.zeros(T), np.full(T, 131), np.full(T, 17), 16, True)
    spec = Spec(requant_mode=mode)
    y, stats = di_matmul(x, w, A, out_bits, out_sym, spec, backend="reference")
    assert stats["out_scale_saturated"] == 0 and stats["in_scale_saturated"] == 0
    # the exact product of the step-1 input and the integer weight, in float64
    xa, _ = requant_rows(x.centered(), x.scale, A, False, spec, "reference")
    exact = _float_of(xa) @ dequantize_weight(w).T
    got = _float_of(y)
    lsb = np.ldexp(y.scale.m.astype(np.float64), -y.scale.k)
    live = y.scale.m > 0
    assert np.all(y.scale.m[live] >= 2 ** (spec.m_bits - 1))  # normalized: the bound applies
    err = np.abs(got[live] - exact[live]) / lsb[live, None]
    assert err.max() <= tol_lsb(out_bits, out_sym, spec.m_bits, mode)
    assert not live[0] and np.all(got[0] == 0) and np.all(exact[0] == 0)


def test_di_matmul_acc_is_the_exact_product():
    """P * scale equals the float64 product of the step-1 input and the weight (exact:
    every term is an integer times a power of two, and the sum stays below 2^53)."""
    rng = np.random.default_rng(3)
    w = quantize_weight(rng.standard_normal((20, 64)) * 0.05, 4, 16, scale_mant_bits=10)
    x = _qtensor(rng.integers(0, 256, (5, 64)), rng.integers(0, 256, 5), [77] * 5, [9] * 5, 8,
                 False)
    P, s, _ = di_matmul_acc(x, w, 6, backend="reference")
    xa, _ = requant_rows(x.centered(), x.scale, 6, False)
    xi = (xa.q.astype(np.int64) - xa.zp[:, None]).astype(np.float64)
    wi = np.ldexp(dequantize_weight(w), w.k)                 # integers m q + b
    np.testing.assert_array_equal(P.astype(np.float64), xi @ wi.T)
    np.testing.assert_array_equal(s.m, xa.scale.m)
    np.testing.assert_array_equal(s.k, xa.scale.k + w.k)


@pytest.mark.parametrize("bits,G,M", [(2, 16, 16), (4, 32, 16), (4, 128, 8), (8, 64, 16),
                                      (3, 96, 12), (8, 192, 24)])
def test_quantize_weight_close_to_float(bits, G, M):
    """|dequantized - w| <= s'/2 per element plus, at the range ends only, the clamp of a
    code when the represented scale s' = m 2^-k fell below s: (Q |s - s'| + s'/2)."""
    rng = np.random.default_rng(bits * 100 + G)
    N, K = 24, 384
    wf = rng.standard_normal((N, K)) * 0.03
    wf[5] = np.abs(wf[5])                                   # a row that never goes negative
    wf[6, :G] = 0.0                                         # an all-zero group
    w = quantize_weight(wf, bits, G, scale_mant_bits=M)
    assert w.q.dtype == np.uint8 and w.bits == bits and w.group_size == G
    Q = 2 ** bits - 1
    ng = K // G
    wg = wf.reshape(N, ng, G)
    s = (np.maximum(wg.max(2), 0) - np.minimum(wg.min(2), 0)) / Q
    s_eff = np.ldexp(w.m.astype(np.float64), -w.k)
    assert w.m.max() < 2 ** M and w.m.max() >= 2 ** (M - 1)
    assert np.all(np.abs(s_eff - s) <= np.ldexp(0.5, -w.k) * (1 + 1e-12))
    tol = s_eff / 2 + Q * np.abs(s - s_eff) + s_eff / 2 + 1e-15
    err = np.abs(dequantize_weight(w) - wf).reshape(N, ng, G).max(axis=2)
    assert np.all(err <= tol)
    assert np.all(dequantize_weight(w)[6, :G] == 0)
    # the zero point form: b = -m zp with zp a code in [0, Q]
    zp = np.where(w.m > 0, -w.b // np.maximum(w.m, 1), 0)
    assert np.all(w.b == -w.m * zp) and zp.min() >= 0 and zp.max() <= Q


def test_quantize_weight_zero_matrix_and_bounds():
    w = quantize_weight(np.zeros((3, 8)), 4, 4)
    assert w.m.max() == 0 and w.q.max() == 0 and np.all(dequantize_weight(w) == 0)
    wf = np.linspace(-1, 1, 16).reshape(2, 8)
    lo, hi = np.full((2, 1), -0.5), np.full((2, 1), 0.5)
    w = quantize_weight(wf, 4, 8, bounds=(lo, hi))          # LWC-style clipping
    # clipped to the grid [-zp s', (15 - zp) s'], which the zero-point rounding may shift
    # by up to s'/2 = 1/30 against [lo, hi]
    assert np.abs(dequantize_weight(w)).max() <= 0.5 + 0.5 / 15 + 1e-4
    assert np.abs(dequantize_weight(w)).max() >= 0.5 - 1e-4


def test_quantize_weight_bad_input():
    good = np.ones((2, 8))
    for kw, name in [(dict(w_float=np.ones(8)), "w_float"),
                     (dict(w_float=np.array([[np.nan] * 8])), "w_float"),
                     (dict(bits=9), "bits"), (dict(bits=1), "bits"),
                     (dict(group_size=3), "group_size"), (dict(group_size=0), "group_size"),
                     (dict(scale_mant_bits=25), "scale_mant_bits"),
                     (dict(bounds=(np.ones((2, 1)), np.ones((2, 1)))), "bounds"),
                     (dict(bounds=(np.zeros((2, 2)), np.ones((2, 2)))), "bounds")]:
        args = dict(w_float=good, bits=4, group_size=8) | kw
        with pytest.raises(ValueError, match=name):
            quantize_weight(**args)


# ---------------------------------------------------------------- (c) overflow

@pytest.mark.parametrize("A", [4, 6, 8])
@pytest.mark.parametrize("W", [2, 3, 4, 6, 8])
def test_di_matmul_overflow_group_limits(A, W):
    """The int32 limit on G for each width pair, re-derived in Python ints; one more
    column raises naming group_size (the check runs before any array is touched)."""
    g = max_group_size(A, W)
    assert g * (2 ** A - 1) * (2 ** W - 1) <= 2 ** 31 - 1 < (g + 1) * (2 ** A - 1) * (2 ** W - 1)
    assert acc_bound(g, A, W) <= ACC_LIMIT < acc_bound(g + 1, A, W)


def test_di_matmul_overflow_at_extremes_fits():
    """G = 33025 (the largest for A = W = 8), every code at its extreme, m and b at their
    limits: acc = G * 255 * 255 attains the int32 bound, and P (recomputed in Python ints)
    stays under p_bound <= 2^61 - 1; both backends give exactly that P."""
    A = W = 8
    G = max_group_size(A, W)
    T, N = 3, 9
    # x rows: all at +max -> x_q = 255, zx = 0 (the range [0, max] contains 0)
    x = _qtensor(np.full((T, G), 32767), np.zeros(T), [255] * T, [0] * T, 16, True)
    q = np.full((N, G), 255, np.uint8)
    m = np.full((N, 1), M_LIMIT)
    b = np.array([[B_LIMIT if n % 2 else -B_LIMIT] for n in range(N)])
    w = QWeight(q, W, G, m, b, 0)
    acc = G * 255 * 255                                      # Python int
    assert acc <= 2 ** 31 - 1
    xs = G * 255
    want = [[M_LIMIT * acc + int(b[n, 0]) * xs for n in range(N)] for _ in range(T)]
    pb = p_bound(G, A, W, M_LIMIT, B_LIMIT)
    assert max(abs(v) for row in want for v in row) <= pb <= P_LIMIT
    for backend in ("reference", "numba"):
        P, s, stats = di_matmul_acc(x, w, A, backend=backend)
        assert P.tolist() == want
        assert stats["acc_absmax"] == acc == stats["acc_bound"]
        y, _ = di_matmul(x, w, A, 16, True, backend=backend)
        assert y.q.dtype == np.int16


def test_di_matmul_overflow_raises_beyond():
    A = W = 8
    G = max_group_size(A, W) + 1
    x = _qtensor(np.ones((1, G)), [0], [1], [0], 8, True)
    w = QWeight(np.zeros((1, G), np.uint8), W, G, np.ones((1, 1), np.int64), np.zeros((1, 1), np.int64), 0)
    with pytest.raises(IntsimOverflowError, match="group_size"):
        di_matmul_acc(x, w, A)
    # the same K in two groups is fine
    w2 = QWeight(np.zeros((1, G), np.uint8), W, G // 2, np.ones((1, 2), np.int64),
                 np.zeros((1, 2), np.int64), 0)
    assert di_matmul_acc(x, w2, A)[0].shape == (1, 1)
    # P bound: K = 2^21 at the largest m and b exceeds 2^61 - 1
    K, G = 2 ** 21, 2048
    assert p_bound(K, 8, 8, M_LIMIT, B_LIMIT) > P_LIMIT
    w3 = QWeight(np.zeros((1, K), np.uint8), 8, G, np.full((1, K // G), M_LIMIT),
                 np.full((1, K // G), B_LIMIT), 0)
    x3 = _qtensor(np.zeros((1, K)), [0], [1], [0], 8, True)
    with pytest.raises(IntsimOverflowError, match="w.m / w.b"):
        di_matmul_acc(x3, w3, 8)


# ---------------------------------------------------------------- bad input

def test_qweight_bad_input():
    q = np.zeros((2, 8), np.uint8)
    one = np.ones((2, 1), np.int64)
    QWeight(q, 4, 8, one, one, 0)                            # fine
    bad = [(dict(q=q.astype(np.int8)), "QWeight.q"), (dict(q=np.zeros(8, np.uint8)), "QWeight.q"),
           (dict(q=np.full((2, 8), 16, np.uint8)), "QWeight.q"),
           (dict(bits=9), "QWeight.bits"), (dict(bits=1), "QWeight.bits"),
           (dict(group_size=3), "QWeight.group_size"), (dict(group_size=0), "QWeight.group_size"),
           (dict(m=-one), "QWeight.m"), (dict(m=one * 2 ** 24), "QWeight.m"),
           (dict(m=np.ones((2, 2), np.int64)), "QWeight.m"),
           (dict(m=one.astype(np.float64)), "QWeight.m"),
           (dict(b=one * 2 ** 32), "QWeight.b"), (dict(k=2 ** 17), "QWeight.k"),
           (dict(k=1.5), "QWeight.k")]
    for kw, name in bad:
        args = dict(q=q, bits=4, group_size=8, m=one, b=one, k=0) | kw
        with pytest.raises(IntsimError, match=name):
            QWeight(**args)


def test_di_matmul_bad_input():
    w = QWeight(np.zeros((2, 8), np.uint8), 4, 8, np.ones((2, 1), np.int64),
                np.zeros((2, 1), np.int64), 0)
    x = _qtensor(np.zeros((3, 8)), np.zeros(3), [1] * 3, [0] * 3, 8, True)
    with pytest.raises(IntsimError, match="x"):
        di_matmul(x.q, w, 8, 8, False)
    with pytest.raises(IntsimError, match="w"):
        di_matmul(x, w.q, 8, 8, False)
    with pytest.raises(IntsimError, match="x: last axis"):
        di_matmul(_qtensor(np.zeros((3, 4)), np.zeros(3), [1] * 3, [0] * 3, 8, True), w, 8, 8,
                  False)
    for a in (1, 9, 8.0):
        with pytest.raises(IntsimError, match="a_bits"):
            di_matmul(x, w, a, 8, False)
    with pytest.raises(IntsimError, match="out_bits"):
        di_matmul(x, w, 8, 17, False)
    with pytest.raises(IntsimError, match="out_symmetric"):
        di_matmul(x, w, 8, 8, "yes")
    with pytest.raises(IntsimError, match="backend"):
        di_matmul(x, w, 8, 8, False, backend="gpu")
