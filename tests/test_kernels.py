"""Each operator's Numba row kernel (the one its whole-tensor op and the fused forward
both call) equals its NumPy reference, row by row, over hypothesis inputs with independent
extremes: the requantizer row, the fixed-point primitives (branch-free roundings, the
reciprocal divide by a scale), DI-Exp's element step, DI-SwiGLU's row (per element and
tabulated), DI-Norm's row, the residual alignment, RoPE of one head, and the DI-MatMul
cores (packed GEMV, row-layout GEMM).
"""
import numba
import numpy as np
import pytest
from hypothesis import assume, example, given, strategies as st
from hypothesis.extra.numpy import arrays

from intsim.errors import IntsimError
from intsim.exp import EXP_SHIFT, _exp_apply_ref, _exp_unit_ref, exp_apply_nb
from intsim.fixedpoint import (RECIP_SHIFT, ROUND_CODE, _div_round_ref, _rshift_round_ref,
                               bit_length_nb, div_by_scale_nb, div_round_nb, round_qr_nb,
                               rshift_round_nb)
from intsim.gemm import (PackedWeight, gemm_acc_multi, gemm_acc_multi_par, gemm_acc_rows,
                         gemm_acc_rows_par, gemv_acc_packed, gemv_acc_packed_par)
from intsim.matmul import QWeight, _di_acc_ref
from intsim.norm import _di_norm_ref, fixed_preshift, norm_row, sqrt_c_const
from intsim.options import Spec
from intsim.requant import M_IN_LIMIT, V_LIMIT, _requant_ref, requant_row
from intsim.residual import _align_ref, align_row
from intsim.rope import _rope_ref, rope_head
from intsim.swiglu import _out_scale_ref, _sigmoid_ref, swiglu_row

ROUNDINGS = ["floor", "half_up", "half_even", "half_away"]


# ------------------------------------------------------------------ requantizer row

vals = st.one_of(st.integers(-(2 ** 20), 2 ** 20), st.integers(-V_LIMIT, V_LIMIT),
                 st.integers(-300, 300))


@given(arrays(np.int64, st.integers(1, 24), elements=vals, fill=st.nothing()),
       st.integers(2, 16), st.booleans(), st.sampled_from(ROUNDINGS),
       st.one_of(st.integers(0, 2 ** 16), st.integers(0, M_IN_LIMIT)), st.integers(-60, 60),
       st.sampled_from(["fitted", "range"]), st.sampled_from([4, 8, 12, 16]),
       st.sampled_from([4, 8, 16]))
@example(np.zeros(3, dtype=np.int64), 8, False, "half_up", 200, 10, "fitted", 8, 8)
@example(np.full(3, 7, dtype=np.int64), 8, False, "half_up", 200, 10, "fitted", 8, 8)
@example(np.array([V_LIMIT, -V_LIMIT, 0]), 16, True, "half_even", 2 ** 16, -60, "fitted", 16, 16)
@example(np.array([-(2 ** 32) + 1, 2 ** 32 - 1, 0]), 16, False, "half_away", M_IN_LIMIT, 60,
         "fitted", 16, 16)
@example(np.array([3, -9]), 8, False, "half_up", 255, -2000, "fitted", 8, 8)     # saturates
@example(np.array([3, -9, 1]), 8, False, "half_up", 1, 200, "fitted", 8, 4)       # k above range
@example(np.array([-5]), 4, False, "half_even", 1, 0, "fitted", 4, 4)
def test_requant_row_kernel_equals_reference(v, bits, sym, rounding, m_in, k_in, mode, m_bits,
                                             k_bits):
    spec = Spec(rounding=rounding, requant_mode=mode, m_bits=m_bits, k_bits=k_bits)
    k_lo, k_hi = spec.k_range
    code = ROUND_CODE[rounding]
    q, zp, m, k, nsat = _requant_ref(v[None, :], np.array([m_in]), np.array([k_in]), bits, sym,
                                     m_bits, k_lo, k_hi, code, mode == "fitted")
    out = np.empty(v.size, dtype=np.int64)
    z2, m2, k2, s2 = requant_row(v, np.int64(0), np.int64(m_in), np.int64(k_in), bits, sym,
                                 m_bits, k_lo, k_hi, code, mode == "fitted", out)
    assert np.array_equal(out, q[0]) and (z2, m2, k2, s2) == (zp[0], m[0], k[0], nsat)


@given(arrays(np.int16, st.integers(1, 40), elements=st.integers(-(2 ** 15) + 1, 2 ** 15 - 1),
              fill=st.nothing()),
       st.integers(-(2 ** 15), 2 ** 15), st.integers(2, 8), st.sampled_from(ROUNDINGS),
       st.integers(0, 2 ** 16), st.integers(-30, 30))
def test_requant_row_zero_point_and_narrow_dtypes_equal_reference(v, zin, bits, rounding, m_in,
                                                                 k_in):
    """The row reads any integer dtype and subtracts the input zero point itself; codes
    land in a narrow output dtype."""
    code = ROUND_CODE[rounding]
    v64 = v.astype(np.int64) - zin
    q, zp, m, k, nsat = _requant_ref(v64[None, :], np.array([m_in]), np.array([k_in]), bits,
                                     False, 8, -128, 127, code, True)
    out = np.empty(v.size, dtype=np.uint8)
    res = requant_row(v, np.int64(zin), np.int64(m_in), np.int64(k_in), bits, False, 8, -128,
                      127, code, True, out)
    assert np.array_equal(out, q[0].astype(np.uint8)) and res == (zp[0], m[0], k[0], nsat)


# ------------------------------------------------------------------ bit length

@given(st.one_of(st.integers(0, 2 ** 63 - 1), st.integers(0, 300)))
@example(0)
@example(1)
@example(2 ** 62)
@example(2 ** 63 - 1)
def test_bit_length_nb_matches_python(v):
    """fixedpoint.bit_length_nb (count-leading-zeros form) on every width, int64 and uint8."""
    assert bit_length_nb(np.int64(v)) == v.bit_length()
    if v < 256:
        assert bit_length_nb(np.uint8(v)) == v.bit_length()


# ------------------------------------------------------------------ fixed-point primitives (branch-free roundings)

@given(st.one_of(st.integers(-(2 ** 62) + 1, 2 ** 62 - 1), st.integers(-40, 40)),
       st.one_of(st.integers(0, 70), st.just(0), st.just(1), st.just(62), st.just(63)),
       st.sampled_from(ROUNDINGS + ["ceil"]))
@example(-3, 1, "half_even")       # ties of both parities and signs
@example(-1, 1, "half_away")
@example(5, 1, "half_up")
@example(2 ** 62 - 1, 62, "half_up")
@example(-(2 ** 62) + 1, 62, "floor")
def test_rshift_round_nb_equals_reference(x, s, rounding):
    code = ROUND_CODE[rounding]
    assert rshift_round_nb(np.int64(x), np.int64(s), code) == int(_rshift_round_ref(x, s, code))


@given(st.one_of(st.integers(-(2 ** 62) + 1, 2 ** 62 - 1), st.integers(-50, 50)),
       st.one_of(st.integers(1, 2 ** 62 - 1), st.integers(1, 10)),
       st.sampled_from(ROUNDINGS + ["ceil"]))
@example(-5, 2, "half_even")
@example(-5, 2, "half_away")
@example(7, 2, "half_up")
def test_div_round_nb_equals_reference(a, b, rounding):
    code = ROUND_CODE[rounding]
    assert div_round_nb(np.int64(a), np.int64(b), code) == int(_div_round_ref(a, b, code))
    q, r = divmod(a, b)
    assert round_qr_nb(np.int64(q), np.int64(r), np.int64(b), a < 0, code) == int(_div_round_ref(a, b, code))


# ------------------------------------------------------------------ reciprocal divides

@given(st.integers(-(2 ** 16), 2 ** 16), st.integers(1, 2 ** 16 - 1), st.integers(0, 40),
       st.integers(0, 2 ** 40), st.sampled_from([1, 127, 255, 2 ** 15 - 1, 2 ** 16 - 1]),
       st.sampled_from(ROUNDINGS))
@example(2 ** 16 - 1, 2 ** 16 - 1, 0, 2 ** 16 - 2, 2 ** 16 - 1, "half_even")
@example(-(2 ** 16) + 1, 2 ** 16 - 1, 40, 2 ** 40 - 1, 2 ** 16 - 1, "half_away")
def test_div_by_scale_equals_div_round(q_target, mi, s, low, Q, rounding):
    """a = (q_target * mi) << s plus a low part: quotients inside and beyond [-Q, Q] (the
    latter take the exact divide), every tie rule, remainders at 0 and just below D."""
    assume(mi.bit_length() + s <= 62)
    D = mi << s
    a = q_target * D + low % D
    assume(abs(a) <= 2 ** 62 - 1)
    Q1 = Q + 1
    M = (1 << RECIP_SHIFT) // mi
    code = ROUND_CODE[rounding]
    got = div_by_scale_nb(np.int64(a), np.int64(s), np.int64(mi), np.int64(Q1), np.int64(2 * Q1 * mi),
                        np.int64(M), code)
    assert got == div_round_nb(np.int64(a), np.int64(D), code) == int(_div_round_ref(a, D, code))


@given(st.one_of(st.integers(-(2 ** 17), 0), st.integers(-(2 ** 62) + 1, 0)),
       st.integers(1, 2 ** 31 - 1), st.integers(-200, 200), st.sampled_from(ROUNDINGS))
@example(0, 1, 0, "half_up")
@example(-(2 ** 62) + 1, 2 ** 31 - 1, 200, "floor")
@example(-63, 1, 0, "half_up")                       # q = 63 exactly: 0
@example(-62, 1, 0, "half_up")
def test_exp_apply_nb_equals_reference(x, m, k, rounding):
    code = ROUND_CODE[rounding]
    T, j = _exp_unit_ref(np.array([m]), np.array([k]), code)
    T, j = int(T[0]), int(j[0])
    want = int(_exp_apply_ref(np.array([x]), T, j, code)[0])
    MT = (1 << EXP_SHIFT) // T
    assert exp_apply_nb(np.int64(x), np.int64(T), np.int64(j), np.int64(MT), code) == want


# ------------------------------------------------------------------ DI-SwiGLU row

@st.composite
def swiglu_case(draw):
    nb = draw(st.sampled_from([4, 8, 16]))
    C = draw(st.integers(1, 40))
    codes = st.integers(0, 2 ** nb - 1)
    g = draw(arrays(np.int64, C, elements=codes, fill=st.nothing()))
    u = draw(arrays(np.int64, C, elements=codes, fill=st.nothing()))
    unit = draw(st.booleans())
    mc = np.ones(C, np.int64) if unit else draw(arrays(np.int64, C, elements=st.integers(1, 2 ** 24),
                                                       fill=st.nothing()))
    return nb, g, u, mc, unit, draw(codes), draw(codes)


@given(swiglu_case(), st.one_of(st.just(0), st.integers(1, 2 ** 28)),
       st.one_of(st.just(0), st.integers(1, 2 ** 28)), st.integers(-100, 100),
       st.integers(-100, 100), st.integers(0, 48), st.integers(0, 16), st.integers(4, 24),
       st.booleans(), st.sampled_from(ROUNDINGS))
def test_swiglu_row_kernel_equals_reference(case, mg, mu, kg, ku, ka, gd, B, rowmax, rounding):
    """Per element and tabulated (unit 1/alpha, 2^b codes <= columns) sigmoid codes."""
    nb, g, u, mc, unit, zg, zu = case
    code = ROUND_CODE[rounding]
    y = np.empty(g.size, dtype=np.int64)
    m, k = swiglu_row(g, np.int64(zg), np.int64(mg), np.int64(kg), u, np.int64(zu), np.int64(mu),
                      np.int64(ku), mc, np.int64(ka), bool((mc == 1).all()), np.int64(gd), np.int64(B), rowmax,
                      np.int64(nb), code, np.empty(1 << nb, np.int64), y)
    a1 = (g - zg)[None, :]
    a2 = np.zeros_like(a1) if mg == 0 or mu == 0 else (u - zu)[None, :]
    z = (a1 * mc[None, :]) << np.int64(gd)
    sig = _sigmoid_ref(z, np.array([mg]), np.array([kg + ka + gd]), B, rowmax, code)
    mo, ko = _out_scale_ref(np.array([mg]), np.array([mu]), np.array([kg + ku + B]), code)
    assert np.array_equal(y, (a1 * sig * a2)[0]) and (m, k) == (mo[0], ko[0])


def test_swiglu_row_table_covers_every_code():
    """A row that uses all 16 codes of a 4-bit gate, columns = 16: the table path."""
    g = np.arange(16, dtype=np.int64)
    u = np.arange(15, -1, -1, dtype=np.int64)
    y = np.empty(16, dtype=np.int64)
    swiglu_row(g, np.int64(7), np.int64(150), np.int64(6), u, np.int64(8), np.int64(140), np.int64(7),
               np.ones(16, np.int64), np.int64(0), True, np.int64(8), np.int64(15), False, np.int64(4),
               ROUND_CODE["half_up"], np.empty(16, np.int64), y)
    sig = _sigmoid_ref(((g - 7) << 8)[None, :], np.array([150]), np.array([14]), 15, False, 1)
    assert np.array_equal(y, ((g - 7) * sig[0] * (u - 8)))


# ------------------------------------------------------------------ DI-Norm, residual, RoPE rows

@given(arrays(np.int64, st.integers(1, 64), elements=st.integers(-(2 ** 16) + 1, 2 ** 16 - 1),
              fill=st.nothing()),
       st.sampled_from(ROUNDINGS), st.sampled_from([4, 8, 16]), st.sampled_from([4, 8, 12]),
       st.booleans())
@example(np.zeros(5, dtype=np.int64), "half_up", 8, 8, False)
@example(np.full(64, 2 ** 16 - 1, dtype=np.int64), "half_even", 16, 4, True)
def test_norm_row_kernel_equals_reference(x, rounding, m_bits, k_bits, fixed):
    spec = Spec(m_bits=m_bits, k_bits=k_bits)
    k_lo, k_hi = spec.k_range
    code = ROUND_CODE[rounding]
    n_c, p2 = sqrt_c_const(x.size)
    pf = fixed_preshift(x.size, 16) if fixed else -1
    m, k, nsat = _di_norm_ref(x[None, :], np.zeros(1, np.int64), n_c, p2, pf, m_bits, k_lo, k_hi, code)
    assert norm_row(x, np.int64(0), n_c, p2, pf, m_bits, k_lo, k_hi, code) == (m[0], k[0], nsat)


@given(st.integers(1, 30).flatmap(lambda C: st.tuples(
    arrays(np.int64, C, elements=st.integers(-(2 ** 15) + 1, 2 ** 15 - 1), fill=st.nothing()),
    arrays(np.int64, C, elements=st.integers(-(2 ** 15) + 1, 2 ** 15 - 1), fill=st.nothing()))),
    st.integers(0, 2 ** 31 - 1), st.integers(0, 2 ** 31 - 1), st.integers(-200, 200),
    st.integers(-200, 200), st.sampled_from(ROUNDINGS))
@example((np.zeros(3, np.int64), np.array([1, -1, 5])), 7, 9, 0, 90, "half_even")
def test_residual_row_kernel_equals_reference(ab, ma, mb, ka, kb, rounding):
    qa, qb = ab
    code = ROUND_CODE[rounding]
    z = np.zeros(1, np.int64)
    want, K, _ = _align_ref(qa[None, :], z, np.array([ma]), np.array([ka]), qb[None, :], z,
                            np.array([mb]), np.array([kb]), code)
    s = np.empty(qa.size, dtype=np.int64)
    K2, _ = align_row(qa, np.int64(0), np.int64(ma), np.int64(ka), qb, np.int64(0), np.int64(mb),
                      np.int64(kb), code, s)
    assert K2 == K[0] and np.array_equal(s, want[0])


@given(st.integers(1, 4), st.sampled_from([2, 8, 64]), st.integers(0, 6), st.integers(0, 2 ** 31),
       st.sampled_from(ROUNDINGS), st.integers(8, 24))
def test_rope_head_kernel_equals_reference(H, hd, drop, seed, rounding, f):
    rng = np.random.default_rng(seed)
    q = rng.integers(-(2 ** 15) + 1, 2 ** 15, (1, H * hd))
    cos_q = rng.integers(-(2 ** f), 2 ** f + 1, (9, hd // 2)).astype(np.int32)
    sin_q = rng.integers(-(2 ** f), 2 ** f + 1, (9, hd // 2)).astype(np.int32)
    p = int(rng.integers(0, 9))
    code = ROUND_CODE[rounding]
    drop = min(drop, f)
    want = _rope_ref(q, np.zeros(1, np.int64), np.array([p]), cos_q, sin_q, H, hd, drop, code)[0]
    y = np.empty(hd, dtype=np.int64)
    for h in range(H):
        rope_head(q[0], np.int64(0), p, cos_q, sin_q, h * hd, hd, drop, code, y)
        assert np.array_equal(y, want[h * hd:(h + 1) * hd])


# ------------------------------------------------------------------ packed GEMV

@st.composite
def packed_case(draw):
    G = 16 * draw(st.integers(1, 4))
    K = G * draw(st.integers(1, 3))
    T = draw(st.integers(1, 3))
    ws = []
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 31)))
    extreme = draw(st.booleans())
    for N in draw(st.lists(st.integers(1, 20), min_size=1, max_size=3)):
        q = np.full((N, K), 255, np.uint8) if extreme else rng.integers(0, 256, (N, K)).astype(np.uint8)
        m = np.full((N, K // G), 2 ** 24 - 1) if extreme else rng.integers(0, 2 ** 24, (N, K // G))
        b = rng.choice([-(2 ** 32) + 1, 2 ** 32 - 1], (N, K // G)) if extreme else \
            rng.integers(-(2 ** 32) + 1, 2 ** 32, (N, K // G))
        ws.append(QWeight(q, 8, G, m, b, draw(st.integers(-5, 5))))
    xq = np.full((T, K), 255, np.uint8) if extreme else rng.integers(0, 256, (T, K)).astype(np.uint8)
    zx = rng.integers(0, 256, T)
    return ws, xq, zx


@given(packed_case(), st.booleans())
def test_gemv_packed_kernel_equals_reference(case, parallel):
    ws, xq, zx = case
    pw = PackedWeight(ws)
    P = np.full((xq.shape[0], pw.qsum.shape[0]), -7, dtype=np.int64)
    (gemv_acc_packed_par if parallel else gemv_acc_packed)(xq, zx, pw.wp, pw.qsum, pw.m, pw.b,
                                                            pw.G, P)
    want = np.concatenate([_di_acc_ref(xq, zx, w)[0] for w in ws], axis=1)
    assert np.array_equal(P[:, :pw.N], want) and not P[:, pw.N:].any()


@given(packed_case(), st.integers(1, 11), st.booleans())
def test_gemm_rows_kernel_equals_reference(case, T, parallel):
    """Row-layout GEMM: 3 x 3 tiles, leftover rows (1 x 8, 1 x 1) and columns, one group
    (raw tiles + fold pass) and several groups (fold per tile), one weight and several."""
    ws, xq, zx = case
    rng = np.random.default_rng(T)
    extreme = bool((xq == 255).all())
    xq = np.full((T, xq.shape[1]), 255, np.uint8) if extreme else \
        rng.integers(0, 256, (T, xq.shape[1])).astype(np.uint8)
    zx = rng.integers(0, 256, T)
    want = [_di_acc_ref(xq, zx, w)[0] for w in ws]
    w = ws[0]
    P = np.full((T, w.q.shape[0]), -7, dtype=np.int64)
    (gemm_acc_rows_par if parallel else gemm_acc_rows)(xq, zx, w.q, w.qsum, w.m, w.b, w.group_size, P)
    assert np.array_equal(P, want[0])
    lists = [numba.typed.List([getattr(x, a) for x in ws]) for a in ("q", "qsum", "m", "b")]
    outs = tuple(np.full((T, x.q.shape[0]), -7, dtype=np.int64) for x in ws)
    (gemm_acc_multi_par if parallel else gemm_acc_multi)(xq, zx, *lists, len(ws),
                                                         tuple(range(len(ws))), w.group_size, outs)
    assert all(np.array_equal(o, r) for o, r in zip(outs, want))


@pytest.mark.parametrize("G", [32, 96])
def test_gemm_rows_chunks_equal_reference(G):
    """N = 101: two full 48-row chunks and a ragged one, T = 7: 3 x 3 tiles plus a row."""
    rng = np.random.default_rng(G)
    w = QWeight(rng.integers(0, 256, (101, 96)).astype(np.uint8), 8, G,
                rng.integers(0, 2 ** 24, (101, 96 // G)), rng.integers(-(2 ** 32) + 1, 2 ** 32, (101, 96 // G)), 0)
    xq = rng.integers(0, 256, (7, 96)).astype(np.uint8)
    zx = rng.integers(0, 256, 7)
    for f in (gemm_acc_rows, gemm_acc_rows_par):
        P = np.empty((7, 101), dtype=np.int64)
        f(xq, zx, w.q, w.qsum, w.m, w.b, G, P)
        assert np.array_equal(P, _di_acc_ref(xq, zx, w)[0])


def test_packed_weight_refuses_unpackable_groups():
    w24 = QWeight(np.zeros((4, 48), np.uint8), 8, 24, np.ones((4, 2), np.int64),
                  np.zeros((4, 2), np.int64), 0)
    w16 = QWeight(np.zeros((4, 48), np.uint8), 8, 16, np.ones((4, 3), np.int64),
                  np.zeros((4, 3), np.int64), 0)
    with pytest.raises(IntsimError, match="group_size"):
        PackedWeight([w24])
    with pytest.raises(IntsimError, match="weights"):
        PackedWeight([w16, w24])
