"""Group-wise activations for DI-MatMul's input (docs/SPEC.md section 4.8, ``a_group``):
the NumPy reference and the Numba kernels equal, both equal a Python-integer recompute
from the spec's text, the fold bound 2^E K (2^A-1)((2^W-1) max m + max|b|) is attained
exactly and one column more is refused, and bad layouts are refused by name."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from intsim import oracle
from intsim.errors import IntsimError, IntsimOverflowError
from intsim.matmul import (A_GROUP_EMAX, B_LIMIT, M_LIMIT, QWeight, di_matmul, di_matmul_acc,
                           fold_layout, p_bound, requant_groups)
from intsim.options import Spec
from intsim.qtensor import Dyadic, QTensor

E = A_GROUP_EMAX
RULES = ("floor", "half_up", "half_even", "half_away")


def _oracle_groups(row, m_in, k_in, A, Ga, spec):
    """SPEC 4.8 step 1 in Python ints: (codes, zg per group, e per group, m, k)."""
    row = [int(x) for x in row]
    sc = oracle.requant_scale(min(row), max(row), m_in, k_in, A, False, spec)
    zp, codes, _ = oracle.requant_codes(row, m_in, sc, spec.rounding)
    K = len(row)
    na = -(-K // Ga)
    if not sc.by_scale:
        return codes, [zp] * na, [0] * na, sc.m, sc.k
    Q = 2 ** A - 1
    codes, zg, eg = list(codes), [], []
    for a in range(na):
        g = [x >> sc.sh for x in row[a * Ga:(a + 1) * Ga]]
        lo, hi = min(min(g), 0), max(max(g), 0)
        L = m_in * (hi - lo)
        # the largest e in [0, E]: exact rationals, L 2^(e_fit + e) <= Q m
        ea = max(c for c in range(E + 1)
                 if (L << max(sc.e + c, 0)) <= (Q * sc.m) << max(-(sc.e + c), 0))
        d = sc.e + ea
        z = oracle.quot(-lo * m_in, sc.m, d, spec.rounding)
        for j, x in enumerate(g):
            codes[a * Ga + j] = min(max(oracle.quot(x * m_in, sc.m, d, spec.rounding) + z, 0), Q)
        zg.append(z)
        eg.append(ea)
    return codes, zg, eg, sc.m, sc.k


def _oracle_P(x: QTensor, w: QWeight, A, Ga, spec):
    """P of SPEC 4.8 steps 1-3 in Python ints, straight from the real values:
    sum_j (x_q - zg) 2^(E - e) (m q + b)."""
    K = w.q.shape[1]
    v = x.centered().reshape(-1, K)
    out = []
    for row, mi, ki in zip(v.tolist(), np.broadcast_to(x.scale.m, v.shape[:1]).tolist(),
                           np.broadcast_to(x.scale.k, v.shape[:1]).tolist()):
        codes, zg, eg, _, _ = _oracle_groups(row, int(mi), int(ki), A, min(Ga, K), spec)
        Gw = w.group_size
        out.append([sum((c - zg[j // min(Ga, K)]) * (int(w.m[n, j // Gw]) * int(w.q[n, j]) + int(w.b[n, j // Gw]))
                        << (E - eg[j // min(Ga, K)]) for j, c in enumerate(codes))
                    for n in range(w.q.shape[0])])
    return out


def _weight(rng, N, K, W, Gw, mmax=2 ** 16 - 1):
    q = rng.integers(0, 2 ** W, (N, K)).astype(np.uint8)
    m = rng.integers(0, mmax + 1, (N, K // Gw))
    zp = rng.integers(0, 2 ** W, (N, K // Gw))
    return QWeight(q, W, Gw, m, -m * zp, int(rng.integers(-20, 20)))


@st.composite
def cases(draw):
    A = draw(st.sampled_from([2, 4, 6, 8]))
    W = draw(st.sampled_from([2, 4, 8]))
    Ga = draw(st.sampled_from([1, 2, 3, 4, 8, 16, 32]))
    nk = draw(st.integers(1, 5))
    kind = draw(st.sampled_from(["channel", "finer", "coarser"]))
    if kind == "channel":
        K = draw(st.integers(1, 70))
        Gw = K
    elif kind == "finer":                 # Gw a multiple of Ga
        Gw = Ga * draw(st.integers(1, 3))
        K = Gw * nk
    else:                                 # Ga a multiple of Gw
        Gw = draw(st.sampled_from([d for d in (1, 2, 4, 8) if Ga % d == 0] or [1]))
        K = Ga * nk
    T = draw(st.integers(1, 5))
    N = draw(st.integers(1, 9))
    seed = draw(st.integers(0, 2 ** 32 - 1))
    mag = draw(st.sampled_from([1, 3, 100, 2 ** 15, 2 ** 40, 2 ** 61 - 1]))
    rule = draw(st.sampled_from(RULES))
    outlier = draw(st.booleans())
    return A, W, Ga, Gw, K, T, N, seed, mag, rule, outlier


def _input(rng, T, K, mag, outlier):
    v = rng.integers(-mag, mag + 1, (T, K), dtype=np.int64)
    if outlier:                           # massive activations: a few large channels
        v = v // 1000
        v[:, rng.integers(0, K)] = mag
    if T > 1:
        v[-1] = 0                         # an all-zero row: the zero-scale fallback
    m_in = rng.integers(0, 2 ** 28 + 1, T)
    k_in = rng.integers(-40, 40, T)
    return QTensor.exact(v, Dyadic(m_in, k_in))


@settings(deadline=None, max_examples=60)
@given(cases())
def test_reference_numba_oracle_equal(c):
    A, W, Ga, Gw, K, T, N, seed, mag, rule, outlier = c
    rng = np.random.default_rng(seed)
    spec = Spec(rounding=rule, overflow="saturate")
    w = _weight(rng, N, K, W, Gw)
    x = _input(rng, T, K, mag, outlier)
    P_r, s_r, st_r = di_matmul_acc(x, w, A, spec, "reference", a_group=Ga)
    P_n, s_n, st_n = di_matmul_acc(x, w, A, spec, "numba", a_group=Ga)
    assert np.array_equal(P_r, P_n)
    assert np.array_equal(s_r.m, s_n.m) and np.array_equal(s_r.k, s_n.k)
    assert st_r == st_n
    assert P_r.tolist() == _oracle_P(x, w, A, Ga, spec)
    assert st_r["p_absmax"] <= st_r["p_bound"]
    q_r = requant_groups(x.centered(), x.scale, A, Ga, spec, "reference")
    q_n = requant_groups(x.centered(), x.scale, A, Ga, spec, "numba")
    for a, b in zip(q_r[:1] + q_r[2:4], q_n[:1] + q_n[2:4]):
        assert np.array_equal(a, b)
    assert np.array_equal(q_r[1].m, q_n[1].m) and np.array_equal(q_r[1].k, q_n[1].k)
    y_r, _ = di_matmul(x, w, A, 8, False, spec, "reference", a_group=Ga)
    y_n, _ = di_matmul(x, w, A, 8, False, spec, "numba", a_group=Ga)
    assert np.array_equal(y_r.q, y_n.q) and np.array_equal(y_r.zp, y_n.zp)


def test_codes_oracle_and_refinement():
    """One outlier channel: its group keeps e = 0, the quiet groups gain bits (e > 0), a
    zero group takes e = E with codes 0 at zero point 0; codes equal the oracle's."""
    spec = Spec()
    row = [-240, 0, 225, 232, 3, -2, 1, 0, 0, 0, 0, 0]
    q, sc, zg, eg, _ = requant_groups(np.array([row]), Dyadic(np.array([1]), np.array([0])), 4, 4,
                                      spec, "reference")
    codes, zo, eo, m, k = _oracle_groups(row, 1, 0, 4, 4, spec)
    assert q[0].tolist() == codes and zg[0].tolist() == zo and eg[0].tolist() == eo
    assert eo[0] == 0 and eo[1] >= 4 and eo[2] == E and codes[8:] == [0] * 4 and zo[2] == 0
    # the refined group's step is 2^-e of the row's: its decoded values are closer
    assert (int(sc.m[0]), int(sc.k[0])) == (m, k)


def test_fold_bound_attained_and_refused():
    """At A = W = 8, m = 2^24 - 1, b = 2^32 - 1, constant rows (every group at e = 0):
    |P| = 2^E K (2^A - 1)((2^W - 1) max m + max |b|) exactly, recomputed in Python ints;
    the largest K under 2^61 - 1 passes and the next power of two is refused by name."""
    K = 8
    w = QWeight(np.full((2, K), 255, np.uint8), 8, K, np.full((2, 1), M_LIMIT), np.full((2, 1), B_LIMIT), 0)
    x = QTensor.exact(np.array([[255] * K, [-255] * K]), Dyadic(np.array([1, 1]), np.array([0, 0])))
    bound = (K * 255 * (255 * M_LIMIT + B_LIMIT)) << E
    assert bound == p_bound(K, 8, 8, M_LIMIT, B_LIMIT) * 2 ** E
    for be in ("reference", "numba"):
        P, _, st_ = di_matmul_acc(x, w, 8, Spec(), be, a_group=4)
        assert P.tolist() == [[bound] * 2, [-bound] * 2] == _oracle_P(x, w, 8, 4, Spec())
        assert st_["p_bound"] == bound
    Kmax = (2 ** 61 - 1) // ((255 * (255 * M_LIMIT + B_LIMIT)) << E)
    assert Kmax == 4120

    def call(K, a_group):
        wk = QWeight(np.zeros((1, K), np.uint8), 8, K, np.full((1, 1), M_LIMIT), np.full((1, 1), B_LIMIT), 0)
        return di_matmul_acc(QTensor.exact(np.zeros((1, K), np.int64), Dyadic(np.array([1]), np.array([0]))),
                             wk, 8, Spec(), "reference", a_group=a_group)
    assert call(Kmax, 8)[2]["p_bound"] <= 2 ** 61 - 1
    with pytest.raises(IntsimOverflowError, match="a_group: 2\\^E"):
        call(Kmax + 1, 8)
    call(Kmax + 1, None)              # per token the same weight passes: the option's refusal


def test_layouts_and_refusals():
    assert fold_layout(576, 576, 128) == 128          # per channel: act groups, the last short
    assert fold_layout(576, 64, 32) == 32             # Ga divides Gw
    assert fold_layout(512, 32, 128) == 32            # Gw divides Ga
    assert fold_layout(576, 64, 1000) == 64           # one activation group
    with pytest.raises(IntsimError, match="a_group: activation groups of 48 and weight groups of 64"):
        fold_layout(576, 64, 48)
    rng = np.random.default_rng(0)
    w = _weight(rng, 3, 12, 4, 12)
    x = _input(rng, 2, 12, 100, False)
    with pytest.raises(IntsimError, match="a_group: .*requant_mode 'fitted'"):
        di_matmul_acc(x, w, 4, Spec(requant_mode="range"), "reference", a_group=4)
    for bad in (0, True, 2 ** 17, 4.0):
        with pytest.raises(IntsimError, match="a_group"):
            di_matmul_acc(x, w, 4, Spec(), "reference", a_group=bad)
    with pytest.raises(IntsimError, match="a_group: .*no GPU twin"):
        di_matmul_acc(x, w, 4, Spec(), "cuda", a_group=4)


#: a row whose scale is exactly 2^12 per code at A = 4 (R = 15 * 2^12) and whose second
#: group refines by 2^8 to 16 per code: 8, 24, -40, 56 and its zero point 40 / 16 are ties
TIE_ROW = [-30720, 30720, 0, 0, 8, 24, -40, 56]


def test_ties_follow_the_rule():
    """The refined group's codes and zero point sit on exact ties: each tie rule gives
    its own P (four different ones), each the oracle's."""
    w = QWeight(np.eye(8, dtype=np.uint8), 8, 8, np.ones((8, 1), np.int64), np.zeros((8, 1), np.int64), 0)
    x = QTensor.exact(np.array([TIE_ROW]), Dyadic(np.array([1]), np.array([0])))
    seen = set()
    for rule in RULES:
        spec = Spec(rounding=rule)
        P, _, st_ = di_matmul_acc(x, w, 4, spec, "numba", a_group=4)
        assert P.tolist() == _oracle_P(x, w, 4, 4, spec)
        assert st_["a_group_e_max"] == E
        seen.add(tuple(P[0, 4:].tolist()))
    assert len(seen) == 4


@settings(deadline=None, max_examples=40)
@given(st.sampled_from([(16, 16), (16, 32), (32, 16), (32, 32), (32, 64), (64, 32)]),
       st.integers(1, 4), st.integers(1, 20), st.integers(1, 3), st.sampled_from([2, 4, 8]),
       st.sampled_from([2, 4, 8]), st.integers(0, 2 ** 32 - 1), st.booleans())
def test_packed_group_gemv_equals_reference(g, nf, N, T, A, W, seed, extreme):
    """``gemm.gemv_acc_packed_groups`` (the fused path's one-token-row kernel with
    activation groups) on a PackedWeight equals ``matmul._di_acc_grp_ref`` on the row
    layout: fold groups of 16..64 over K = Gf * nf, N not a multiple of 8 (padding rows),
    every group exponent from 0 to E, and at the extremes (codes, m and |b| at their limits)."""
    from intsim.gemm import PackedWeight, gemv_acc_packed_groups
    from intsim.matmul import _di_acc_grp_ref, _fold_qsum
    Ga, Gw = g
    Gf = min(Ga, Gw)
    K = max(Ga, Gw) * nf
    rng = np.random.default_rng(seed)
    if extreme:
        m = np.full((N, K // Gw), M_LIMIT)
        w = QWeight(np.full((N, K), 2 ** W - 1, np.uint8), W, Gw, m, np.full((N, K // Gw), -B_LIMIT), 0)
        xq = np.full((T, K), 2 ** A - 1, np.uint8)
    else:
        w = _weight(rng, N, K, W, Gw)
        xq = rng.integers(0, 2 ** A, (T, K)).astype(np.uint8)
    na = K // Ga
    zg = rng.integers(0, 2 ** A, (T, na)).astype(np.int64)
    eg = rng.integers(0, E + 1, (T, na)).astype(np.int64)
    pk = PackedWeight([w])
    Np = pk.qsum.shape[0]
    qsf = np.zeros((Np, K // Gf), np.int64)
    qsf[:N] = _fold_qsum(w, Gf)
    P = np.full((T, Np), -7, np.int64)
    gemv_acc_packed_groups(xq, zg, eg, pk.wp, qsf, pk.m, pk.b, Gw, Ga, Gf, E, P)
    want, _ = _di_acc_grp_ref(xq, zg, eg, w, Ga, Gf)
    assert np.array_equal(P[:, :N], want)
    assert not P[:, N:].any()                       # the padding rows' outputs are 0
