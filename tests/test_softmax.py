"""DI-ClippedSoftmax (intsim.softmax): Numba == reference, the reference == a Python-int
transcription, accuracy against float softmax with a derived per-element tolerance,
row sums, reciprocal vs divide, masks and special rows, overflow bounds, bad input.
"""
import functools
import math

import numpy as np
import pytest
from hypothesis import example, given, strategies as st
from hypothesis.extra.numpy import arrays

from intsim.errors import IntsimError, IntsimOverflowError
from intsim.fixedpoint import ROUNDINGS
from intsim.options import Spec
from intsim.qtensor import Dyadic
from intsim.requant import requant_rows
from intsim.softmax import (CLIP_CAP, RECIP_BITS, SCORE_LIMIT, _clip_threshold_nb,
                            _clip_threshold_ref, visibility)
from intsim.softmax import di_clipped_softmax as _softmax

#: the hand-derived values in this file are at the paper's 8-bit probabilities; a call
#: that passes its own spec overrides this (the model default is p_out = 16, tested in
#: test_softmax_close_to_float and through the whole graph in test_llama.py)
di_clipped_softmax = functools.partial(_softmax, spec=Spec(softmax_p_out=8))
from test_exp import py_exp, py_exp_unit, py_round

K_LIM = 2 ** 20
M_LIM = 2 ** 28


# ------------------------------------------------------------ Python-int model

def py_clip_threshold(c: int, m: int, k: int, rounding: str) -> int:
    """clamp(round(c 2^k / m), 1, 2^61) straight from the definition (big Python ints)."""
    if m == 0:
        return CLIP_CAP
    num, den = (c << k, m) if k >= 0 else (c, m << -k)
    return min(max(py_round(num, den, rounding), 1), CLIP_CAP)


def py_softmax(x, vis, m, k, spec, F, check_bounds=True):
    """The whole op in Python ints (requant_rows' reference for step 2); asserts bounds."""
    R, C = x.shape
    rnd, c = spec.rounding, spec.softmax_clip
    xt = [[0] * C for _ in range(R)]
    for i in range(R):
        cols = [j for j in range(C) if vis[i, j]]
        if not cols or m[i] == 0:
            continue
        mx = max(int(x[i, j]) for j in cols)
        thr = py_clip_threshold(c, int(m[i]), int(k[i]), rnd)
        assert 1 <= thr <= CLIP_CAP
        for j in cols:
            d = int(x[i, j]) - mx
            assert -(2 ** 61 - 2) <= d <= 0
            xt[i][j] = max(d, -thr)
    qt, _ = requant_rows(np.array(xt, dtype=np.int64), Dyadic(m, k), spec.softmax_in_bits,
                         symmetric=False, spec=spec, backend="reference")
    xq = qt.q.astype(np.int64) - qt.zp.astype(np.int64)[:, None]
    p_max = 2 ** spec.softmax_p_out - 1
    p = [[0] * C for _ in range(R)]
    for i in range(R):
        mr, kr = int(qt.scale.m[i]), int(qt.scale.k[i])
        T, j_, _ = py_exp_unit(1, 0, rnd) if mr == 0 else py_exp_unit(mr, kr, rnd)
        e = [py_exp(0 if mr == 0 else int(xq[i, j]), T, j_, rnd) if vis[i, j] else 0
             for j in range(C)]
        S = sum(e)
        if check_bounds:
            assert all(0 <= v <= T <= 2 ** 30 for v in e)
            assert S <= C * 2 ** 30 and S <= 2 ** 61
        if S == 0:
            continue
        if spec.softmax_div == "divide":
            assert all((v << F) <= 2 ** 46 for v in e)
            p[i] = [min(py_round(v << F, S, rnd), p_max) for v in e]
        else:
            f = (2 ** RECIP_BITS - 1) // S
            assert all(v * f <= 2 ** 62 - 1 for v in e)
            p[i] = [min(py_round(v * f, 2 ** (RECIP_BITS - F), rnd), p_max) for v in e]
    return p


# ------------------------------------------------------------------ strategies

@st.composite
def softmax_cases(draw, max_cols=7):
    b = draw(st.integers(1, 2))
    rows = draw(st.integers(1, 4))
    cols = draw(st.integers(1, max_cols))
    el = st.integers(-SCORE_LIMIT, SCORE_LIMIT) | st.integers(-3000, 3000) | \
        st.sampled_from([0, SCORE_LIMIT, -SCORE_LIMIT])
    x = draw(arrays(np.int64, (b, rows, cols), elements=el, fill=st.nothing()))
    m = draw(arrays(np.int64, (b, rows), elements=st.integers(0, M_LIM) | st.integers(100, 300),
                    fill=st.nothing()))
    k = draw(arrays(np.int64, (b, rows), elements=st.integers(-K_LIM, K_LIM) | st.integers(-70, 90),
                    fill=st.nothing()))
    mshape = draw(st.sampled_from([None, (b, rows, cols), (cols,), (rows, 1)]))
    mask = None if mshape is None else draw(arrays(np.bool_, mshape, elements=st.booleans(),
                                                   fill=st.nothing()))
    causal = draw(st.booleans())
    q_offset = draw(st.integers(-3, 3))
    p_out = draw(st.integers(2, 16))
    spec = Spec(rounding=draw(st.sampled_from(ROUNDINGS)),
                softmax_in_bits=draw(st.integers(4, 16)),
                softmax_clip=draw(st.sampled_from([1, 15, 1000]) | st.integers(1, 1000)),
                softmax_p_out=p_out, softmax_div=draw(st.sampled_from(["reciprocal", "divide"])),
                overflow="saturate")
    pf = draw(st.none() | st.integers(1, p_out))
    return x, m, k, mask, causal, q_offset, spec, pf


def _case(x, m, k, mask=None, causal=False, q_offset=0, pf=None, **spec):
    x = np.array(x, dtype=np.int64)
    if x.ndim == 2:
        x = x[None]
    rows = x.shape[:-1]
    m = np.broadcast_to(np.array(m, dtype=np.int64), rows).copy()
    k = np.broadcast_to(np.array(k, dtype=np.int64), rows).copy()
    spec.setdefault("overflow", "saturate")
    return x, m, k, mask, causal, q_offset, Spec(**spec), pf


def _run(case, backend):
    x, m, k, mask, causal, q_offset, spec, pf = case
    return di_clipped_softmax(x, Dyadic(m, k), mask=mask, causal=causal, q_offset=q_offset,
                              spec=spec, backend=backend, p_frac_bits=pf)


# ------------------------------------------------------ (a) kernel == reference

@given(softmax_cases())
@example(_case([[5, 5, 5, 5]], 200, 10))                                   # all equal
@example(_case([[7]], 200, 10))                                            # one column
@example(_case([[1, 2], [3, 4]], 200, 10, mask=np.array([[False, False], [True, False]])))
@example(_case([[SCORE_LIMIT, -SCORE_LIMIT, 0]], M_LIM, K_LIM, softmax_div="divide"))
@example(_case([[SCORE_LIMIT, -SCORE_LIMIT, 0]], 1, -K_LIM, softmax_p_out=16))
@example(_case([[0, -1, -2, -3]], 0, 5))                                   # zero scale
@example(_case([[0, 1, 2, 3]] * 4, 255, 12, causal=True, q_offset=-1, pf=7))
@example(_case([[0, -1]], 1, -5))                                          # C clamped to 1
@example(_case([[0, -1, -3, -5, -6, -100]], 200, 10, softmax_clip=1, softmax_p_out=16))  # clip
def test_softmax_kernel_equals_reference(case):
    a, b = _run(case, "numba"), _run(case, "reference")
    assert a.q.dtype == b.q.dtype and a.bits == b.bits and not a.signed
    assert np.array_equal(a.q, b.q)
    assert np.array_equal(a.scale.m, b.scale.m) and np.array_equal(a.scale.k, b.scale.k)
    assert np.array_equal(a.zp, b.zp) and not a.zp.any()


@given(softmax_cases(max_cols=5))
@example(_case([[SCORE_LIMIT, -SCORE_LIMIT, 0]], M_LIM, K_LIM))
@example(_case([[3, 3, -9]], 3, 62 - 4 + 2, softmax_clip=15))              # split branch of C
@example(_case([[0, -1, -3, -5, -6, -100]], 200, 10, softmax_clip=1, softmax_p_out=16))  # clip
def test_softmax_reference_equals_python_int_model(case):
    x, m, k, mask, causal, q_offset, spec, pf = case
    got = _run(case, "reference")
    vis = visibility(x.shape, mask, causal, q_offset).reshape(-1, x.shape[-1])
    F = spec.softmax_p_out if pf is None else pf
    want = py_softmax(x.reshape(-1, x.shape[-1]), vis, m.ravel(), k.ravel(), spec, F)
    assert got.q.reshape(-1, x.shape[-1]).tolist() == want


@given(c=st.integers(1, 1000), m=st.integers(0, M_LIM) | st.integers(1, 20),
       k=st.integers(-K_LIM, K_LIM) | st.integers(-70, 120) | st.sampled_from([52, 53, 58, 59, 91]),
       rounding=st.sampled_from(ROUNDINGS))
@example(c=1000, m=1, k=K_LIM, rounding="half_up")
@example(c=1000, m=M_LIM, k=-K_LIM, rounding="half_even")
@example(c=15, m=3, k=60, rounding="half_even")
@example(c=1, m=2, k=-1, rounding="half_away")
def test_clip_threshold_exact(c, m, k, rounding):
    """The split computation of C (k beyond 62 - bitlen(c)) equals the big-int definition."""
    code = ["floor", "half_up", "half_even", "half_away"].index(rounding)
    want = py_clip_threshold(c, m, k, rounding)
    got_r = int(_clip_threshold_ref(c, np.array([m]), np.array([k]), code)[0])
    got_n = int(_clip_threshold_nb(np.int64(c), np.int64(m), np.int64(k), code))
    assert got_r == got_n == want


# ------------------------------------------------- (b) close to float softmax

#: the chord (1 - f/2) for 2^-f overestimates by a factor in [1, RHO_CHORD],
#: max at f = 2 - 1/ln 2:  (1/(2 ln 2)) * 2^(2 - 1/ln 2) = 1.06138
RHO_CHORD = 2 ** (2 - 1 / math.log(2)) / (2 * math.log(2))
#: log2(e) ~ 1.4375 for a normalized 8-bit mantissa m_r in [128, 255] of the requantized
#: scale: the exponent is multiplied by c = (2^k/(T m_f)) * (m_f / (m_r log2 e)), the
#: second factor in [C_LO, C_HI] (m_f/m_r in [1.4375 - 0.5/128, 1.4375 + (15/16)/128])
C_LO = (1.4375 - 0.5 / 128) * math.log(2)
C_HI = (1.4375 + 15 / 16 / 128) * math.log(2)
#: floors of DI-Exp steps 4-5: out >= T * (chord value) - 1.5
FLOOR = 1.5
#: requant's fitted scale: relative error <= 2^-m_bits (m_bits = 8)
FIT_REL = 2.0 ** -8
#: the reciprocal's floor: < 2^-15 LSB below the exact quotient (docstring)
RECIP_LSB = 2.0 ** -15


def softmax_bounds(y, s_in, R_int, Q, F):
    """Per-element bounds [lo, hi] (in output LSBs) on the codes, from float math only.

    y: float clipped real scores x~ of the visible entries (<= 0, >= -c); s_in: the
    score scale; R_int: the row's integer range after the clip; Q = 2^in_bits - 1.
    Each DI-Exp output is T a_i rho_i - delta_i with a_i = exp(y_i), delta_i in [0, 1.5],
    and ln rho_i in [L_lo, L_hi] from: the chord [0, ln RHO_CHORD]; the exponent factor c
    acting on |y_i|; the requantization (+-s_r/2) and the clip threshold's rounding (+-s_in/2
    near the clip).  p_i is increasing in its own A_i and decreasing in the others'.
    """
    a = np.exp(y)
    if R_int == 0:
        n = len(y)
        return np.full(n, 2.0 ** F / n - 0.5), np.full(n, 2.0 ** F / n + 0.5)
    s_r = R_int * s_in * (1 + FIT_REL) / Q                      # largest requant scale
    T_lo = 1 / (s_r * C_HI / math.log(2)) - 0.5                  # smallest T (>= 1)
    T_lo = max(T_lo, 1.0)
    c_lo, c_hi = C_LO / (1 + 0.5 / T_lo), C_HI / max(1 - 0.5 / T_lo, 1e-9)
    eps = s_r / 2 + np.where(y <= y.min() + s_in, s_in / 2, 0.0)  # requant, clip rounding
    ay = np.abs(y) + eps
    L_hi = math.log(RHO_CHORD) + ay * max(1 - c_lo, 0) + eps
    L_lo = -ay * max(c_hi - 1, 0) - eps
    hi_A = a * np.exp(L_hi)
    lo_A = np.maximum(a * np.exp(L_lo) - FLOOR / T_lo, 0)
    p_hi = hi_A / (hi_A + (lo_A.sum() - lo_A))
    p_lo = lo_A / np.maximum(lo_A + (hi_A.sum() - hi_A), 1e-300)
    return 2.0 ** F * p_lo - 0.5 - RECIP_LSB, 2.0 ** F * p_hi + 0.5


@pytest.mark.parametrize("in_bits", [16, 8])
@pytest.mark.parametrize("div", ["reciprocal", "divide"])
@pytest.mark.parametrize("p_out", [8, 16])
@given(seed=st.integers(0, 2 ** 32 - 1))
def test_softmax_close_to_float(in_bits, div, p_out, seed):
    """Every code lies within the derived per-element bound around float softmax.

    For the default (16-bit input, p_out = 8) the bound's width stays below +-7 LSB for
    rows of <= 16 keys (the chord's ln(1.0614)/4 = 0.0149 of full scale dominates); at the
    paper's 8-bit input T ~ 12 and the floors make the bound (and the error) much wider.
    """
    rng = np.random.default_rng(seed)
    rows, cols, c = 6, int(rng.integers(1, 17)), 15
    spec = Spec(softmax_in_bits=in_bits, softmax_div=div, softmax_p_out=p_out)
    F, p_max = p_out, 2 ** p_out - 1
    m = rng.integers(128, 2 ** 16, rows)
    k = np.array([int(v).bit_length() for v in m]) + rng.integers(8, 15, rows)  # s_in < 2^-7
    s_in = m / 2.0 ** k
    spread = rng.choice([0.0, 0.5, 5.0, 20.0, 60.0], rows)      # real range of each row
    x = np.round(rng.uniform(-1, 0, (rows, cols)) * spread[:, None] / s_in[:, None])
    x = x.astype(np.int64) + rng.integers(-1000, 1000, (rows, 1))
    mask = rng.random((rows, cols)) < 0.8
    out = di_clipped_softmax(x[None], Dyadic(m[None], k[None]), mask=mask[None], spec=spec,
                             backend="reference").q[0].astype(np.int64)
    Q = 2 ** in_bits - 1
    for i in range(rows):
        vis = mask[i]
        assert np.all(out[i][~vis] == 0)
        if not vis.any():
            continue
        xi = x[i][vis]
        C_int = py_clip_threshold(c, int(m[i]), int(k[i]), "half_up")
        xt = np.maximum(xi - xi.max(), -C_int)
        R_int = int(-xt.min())
        y = np.maximum((xi - xi.max()) * s_in[i], -c)                # float clip at exactly c
        lo, hi = softmax_bounds(y, s_in[i], R_int, Q, F)
        got = out[i][vis]
        assert np.all(got >= np.minimum(np.floor(lo), p_max)), (i, got, lo)
        assert np.all(got <= np.minimum(np.ceil(hi), p_max)), (i, got, hi)
        if in_bits == 16 and vis.sum() <= 16:
            p_float = 2.0 ** F * np.exp(y) / np.exp(y).sum()
            width = 7 * 2 ** (F - 8)        # the bound scales with the output resolution
            assert np.all(hi - p_float <= width) and np.all(p_float - lo <= width)


# ------------------------------------------------------ row sums, div modes

@given(softmax_cases())
@example(_case([[5] * 7], 200, 10, softmax_p_out=3))
@example(_case([[5] * 7], 200, 10, rounding="floor"))
def test_softmax_row_sums(case):
    """Nearest modes: |sum p - 2^F| <= n (1/2 + 2^-15) + 1; floor: 0 <= 2^F - sum p <
    n (1 + 2^-15) + 1 (each p the rounding of its exact share e 2^F / S, minus the
    reciprocal's < 2^-15; +1 for a saturated code).  Rows without visible keys sum to 0."""
    x, m, k, mask, causal, q_offset, spec, pf = case
    p = _run(case, "reference")
    F = spec.softmax_p_out if pf is None else pf
    vis = visibility(x.shape, mask, causal, q_offset)
    n = vis.sum(axis=-1)
    tot = p.q.astype(np.int64).sum(axis=-1)
    dev = tot - 2 ** F
    assert np.all(tot[n == 0] == 0)
    nz = n > 0
    if spec.rounding == "floor":
        assert np.all(dev[nz] <= 0) and np.all(-dev[nz] < n[nz] * (1 + RECIP_LSB) + 1)
    else:
        assert np.all(np.abs(dev[nz]) <= n[nz] * (0.5 + RECIP_LSB) + 1)


@given(softmax_cases())
def test_softmax_reciprocal_within_one_lsb_below_divide(case):
    x, m, k, mask, causal, q_offset, spec, pf = case
    d = {}
    for div in ("reciprocal", "divide"):
        sp = Spec(**{**spec.to_dict(), "softmax_div": div})
        d[div] = _run((x, m, k, mask, causal, q_offset, sp, pf), "reference").q.astype(np.int64)
    diff = d["divide"] - d["reciprocal"]
    assert np.all((diff == 0) | (diff == 1))


# -------------------------------------------------------- masks, special rows

@pytest.mark.parametrize("backend", ["numba", "reference"])
def test_softmax_special_rows(backend):
    F = 8
    sm = lambda x, m=200, k=10, **kw: di_clipped_softmax(    # noqa: E731
        np.array(x, np.int64), Dyadic(np.full(len(x), m), np.full(len(x), k)),
        backend=backend, **kw).q.astype(np.int64)
    # fully masked row -> all zero, the other rows unaffected
    p = sm([[9, 1, 4], [9, 1, 4]], mask=np.array([[False] * 3, [True] * 3]))
    assert p[0].tolist() == [0, 0, 0] and p[1].sum() > 200
    # all-equal row -> uniform round(2^F / n); single column -> saturated 1.0
    for n in (1, 2, 3, 5, 7):
        want = min(py_round(2 ** F, n, "half_up"), 255)
        assert sm([[-77] * n]).tolist() == [[want] * n]
    assert sm([[3]]).tolist() == [[255]]
    assert di_clipped_softmax(np.array([[3]]), Dyadic(np.array([9]), np.array([3])),
                              p_frac_bits=7, backend=backend).q.tolist() == [[128]]
    # zero scale (all real 0) -> uniform
    assert sm([[1, -500, 70, 3]], m=0).tolist() == [[64] * 4]
    # clip: entries far below max - c all become exactly max - c (equal codes)
    s = sm([[0, -16 * 2 ** 10 // 200, -1000 * 2 ** 10 // 200, -3]])
    assert s[0, 1] == s[0, 2] and s[0, 0] > s[0, 3] > 0
    # a score LSB above 2c (k = -5: 6.25 real per unit): C clamps to 1, order is kept
    assert sm([[0, -1]], m=200, k=-5).tolist() == [[255, 0]]


@pytest.mark.parametrize("backend", ["numba", "reference"])
@pytest.mark.parametrize("q_offset", [-2, 0, 1, 5])
def test_softmax_causal_mask(backend, q_offset):
    rows, cols = 4, 6
    x = np.zeros((2, rows, cols), np.int64)
    p = di_clipped_softmax(x, Dyadic(np.full((2, rows), 200), np.full((2, rows), 10)),
                           causal=True, q_offset=q_offset, backend=backend).q.astype(np.int64)
    for i in range(rows):
        n = min(max(i + q_offset + 1, 0), cols)
        want = [min(py_round(256, n, "half_up"), 255)] * n + [0] * (cols - n) if n else [0] * cols
        assert p[0, i].tolist() == want and p[1, i].tolist() == want
    # causal AND mask
    mask = np.ones(cols, bool)
    mask[0] = False
    p2 = di_clipped_softmax(x, Dyadic(np.full((2, rows), 200), np.full((2, rows), 10)),
                            mask=mask, causal=True, q_offset=q_offset, backend=backend).q
    assert np.all(p2[..., 0] == 0)


def test_softmax_output_qtensor():
    p = di_clipped_softmax(np.zeros((2, 3, 4), np.int64),
                           Dyadic(np.full((2, 3), 200), np.full((2, 3), 10)),
                           spec=Spec(softmax_p_out=12), p_frac_bits=11)
    assert p.bits == 12 and not p.signed and p.q.dtype == np.uint16
    assert p.scale.m.tolist() == [[1] * 3] * 2 and p.scale.k.tolist() == [[11] * 3] * 2
    assert p.q.tolist() == [[[512] * 4] * 3] * 2


# ------------------------------------------------------------ (c) overflow

def test_softmax_overflow_bounds_at_extremes():
    """Python-int recompute of every intermediate (asserted inside py_softmax) at the
    extremes: +-2^60 scores, extreme scales, and a long row with T at its 2^30 cap."""
    cols = 4096
    long_row = np.zeros((1, cols), np.int64)
    long_row[0, 1::2] = -1
    cases = [
        (np.array([[SCORE_LIMIT, -SCORE_LIMIT, 0, SCORE_LIMIT - 1]]), [M_LIM], [K_LIM]),
        (np.array([[SCORE_LIMIT, -SCORE_LIMIT, 0, 1]]), [1], [-K_LIM]),
        (np.array([[SCORE_LIMIT, -SCORE_LIMIT, 0, 1]]), [M_LIM], [0]),
        (np.array([[-SCORE_LIMIT, -SCORE_LIMIT + 1, -SCORE_LIMIT]]), [1], [61]),
        (long_row, [2 ** 16 - 1], [80]),                           # T capped: tiny spread
    ]
    for x, m, k in cases:
        for div in ("reciprocal", "divide"):
            for p_out, pf in ((16, None), (16, 15), (2, 1), (8, None)):
                spec = Spec(softmax_div=div, softmax_p_out=p_out, overflow="saturate")
                m_, k_ = np.array(m, np.int64), np.array(k, np.int64)
                vis = np.ones(x.shape, bool)
                F = p_out if pf is None else pf
                want = py_softmax(x, vis, m_, k_, spec, F)
                for backend in ("reference", "numba"):
                    got = di_clipped_softmax(x, Dyadic(m_, k_), spec=spec, backend=backend,
                                             p_frac_bits=pf)
                    assert got.q.tolist() == want
    # the long row really reached T = 2^29..2^30 and S ~ cols * T
    qt, _ = requant_rows(long_row, Dyadic(np.array([2 ** 16 - 1]), np.array([80])), 16)
    T, j, _ = py_exp_unit(int(qt.scale.m[0]), int(qt.scale.k[0]), "half_up")
    assert j > 0 and 2 ** 29 <= T <= 2 ** 30


def test_softmax_requant_scale_saturation_raises_by_default():
    # a real spread far beyond the exponent range of the requantized scale: no clip
    # (c = 1000 is tiny compared to 2^40 units of s = 2^28 * 2^-(-60)) -> scale saturates
    x = np.array([[0, -(2 ** 40)]])
    with pytest.raises(IntsimOverflowError, match="scores - rowmax"):
        di_clipped_softmax(x, Dyadic(np.array([2 ** 28]), np.array([-(2 ** 20)])),
                           spec=Spec(softmax_clip=1000))


# --------------------------------------------------------------- bad input

def test_softmax_bad_input():
    s1 = Dyadic(np.array([200]), np.array([10]))
    x = np.array([[1, 2, 3]])
    with pytest.raises(IntsimError, match=r"^scores:"):
        di_clipped_softmax(np.array([[1.0, 2.0]]), s1)
    with pytest.raises(IntsimError, match=r"^scores:"):
        di_clipped_softmax(np.array([[2 ** 64 - 1, 0]], dtype=np.uint64), s1)
    with pytest.raises(IntsimError, match=r"^scores:"):
        di_clipped_softmax(np.array([[SCORE_LIMIT + 1, 0]]), s1)
    with pytest.raises(IntsimError, match=r"^scores:"):
        di_clipped_softmax(np.zeros((1, 0), np.int64), Dyadic(np.array([1]), np.array([1])))
    with pytest.raises(IntsimError, match=r"^scale: shape"):
        di_clipped_softmax(x, Dyadic(np.array([1, 2]), np.array([1, 2])))
    with pytest.raises(IntsimError, match=r"^scale\.m"):
        di_clipped_softmax(x, Dyadic(np.array([M_LIM + 1]), np.array([1])))
    with pytest.raises(IntsimError, match=r"^scale\.k"):
        di_clipped_softmax(x, Dyadic(np.array([5]), np.array([K_LIM + 1])))
    with pytest.raises(IntsimError, match=r"^mask:"):
        di_clipped_softmax(x, s1, mask=np.array([1, 0, 1]))
    with pytest.raises(IntsimError, match=r"^mask:"):
        di_clipped_softmax(x, s1, mask=np.array([True, False]))
    with pytest.raises(IntsimError, match=r"^causal:"):
        di_clipped_softmax(np.array([1, 2]), Dyadic(np.int64(5), np.int64(3)), causal=True)
    with pytest.raises(IntsimError, match=r"^causal:"):
        di_clipped_softmax(x, s1, causal=1)
    with pytest.raises(IntsimError, match=r"^q_offset:"):
        di_clipped_softmax(x, s1, causal=True, q_offset=1.5)
    with pytest.raises(IntsimError, match=r"^p_frac_bits:"):
        di_clipped_softmax(x, s1, p_frac_bits=9)
    with pytest.raises(IntsimError, match=r"^p_frac_bits:"):
        di_clipped_softmax(x, s1, p_frac_bits=0)
    with pytest.raises(IntsimError, match=r"softmax_in_bits"):
        di_clipped_softmax(x, s1, spec=Spec(softmax_in_bits=20))
    with pytest.raises(IntsimError, match=r"backend"):
        di_clipped_softmax(x, s1, backend="gpu")
