"""intsim.oracle (the Python-int restatement) against the int64 NumPy references.

Every comparison is exact.  The references are intsim.fixedpoint's and intsim.requant's
own ``backend="reference"`` functions; the tie flags are checked against exact rational
arithmetic (fractions.Fraction) and against the reference codes under the three
nearest tie rules."""
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from intsim import oracle
from intsim.fixedpoint import (CEIL, FLOOR, HALF_AWAY, HALF_EVEN, HALF_UP, ROUNDINGS, div_round,
                               dyadic_fit, isqrt, rshift_round)
from intsim.errors import IntsimError
from intsim.options import Spec
from intsim.qtensor import Dyadic
from intsim.requant import requant_rows

ALL_RULES = (FLOOR, HALF_UP, HALF_EVEN, HALF_AWAY, CEIL)
NEAREST = (HALF_UP, HALF_EVEN, HALF_AWAY)


# ------------------------------------------------------------------ rounding

def _ties_and_randoms(rng, n=400):
    """(a, b) pairs: random, and exact halves (a = (2j + 1) * b / 2 for even b), both signs."""
    a = rng.integers(-2 ** 40, 2 ** 40, n)
    b = rng.integers(1, 2 ** 20, n)
    half = rng.integers(1, 2 ** 19, n) * 2
    j = rng.integers(-2 ** 18, 2 ** 18, n)
    return np.concatenate([a, (2 * j + 1) * (half // 2)]), np.concatenate([b, half])


@pytest.mark.parametrize("rule", ALL_RULES)
def test_rnd_and_is_tie_equal_div_round(rule):
    a, b = _ties_and_randoms(np.random.default_rng(1))
    ref = div_round(a, b, rule, backend="reference")
    assert [oracle.rnd(int(x), int(y), rule) for x, y in zip(a, b)] == ref.tolist()
    # a tie is exactly where the quotient is q + 1/2
    assert [oracle.is_tie(int(x), int(y)) for x, y in zip(a, b)] == \
        [Fraction(int(x), int(y)).denominator == 2 for x, y in zip(a, b)]


@pytest.mark.parametrize("rule", ALL_RULES)
def test_rshift_and_shift_tie_equal_rshift_round(rule):
    rng = np.random.default_rng(2)
    x = np.concatenate([rng.integers(-2 ** 50, 2 ** 50, 300), np.array([0, 1, -1, 24, -24, 8, -8])])
    s = np.concatenate([rng.integers(0, 40, 300), np.array([0, 1, 1, 4, 4, 4, 4])])
    ref = rshift_round(x, s, rule, backend="reference")
    assert [oracle.rshift(int(v), int(k), rule) for v, k in zip(x, s)] == ref.tolist()
    assert [oracle.shift_tie(int(v), int(k)) for v, k in zip(x, s)] == \
        [int(k) > 0 and Fraction(int(v), 2 ** int(k)).denominator == 2 for v, k in zip(x, s)]
    assert oracle.shift_tie(0b1011000, 4) and not oracle.shift_tie(0b1011001, 4)
    assert not oracle.shift_tie(8, 0) and not oracle.shift_tie(8, -1)


def test_rnd_names_its_rules():
    assert [oracle.rnd(-5, 2, r) for r in ALL_RULES] == [-3, -2, -2, -3, -2]
    assert [oracle.rnd(5, 2, r) for r in ALL_RULES] == [2, 3, 2, 3, 3]
    with pytest.raises(IntsimError, match="unknown rule"):
        oracle.rnd(5, 2, "half_down")


def test_isqrt_equals_reference():
    rng = np.random.default_rng(3)
    n = np.concatenate([rng.integers(0, 2 ** 62 - 1, 500), np.array([0, 1, 2, 3, 4, 2 ** 62 - 1])])
    sq = rng.integers(0, 2 ** 31 - 1, 100)
    n = np.concatenate([n, sq * sq, sq * sq - 1])
    n = n[n >= 0]
    assert [oracle.isqrt(int(v)) for v in n] == isqrt(n, backend="reference").tolist()


# ------------------------------------------------------------------ dyadic fit

@pytest.mark.parametrize("rule", ALL_RULES)
@pytest.mark.parametrize("m_bits,k_range", [(8, (-128, 127)), (4, (-8, 7)), (12, (0, 40))])
def test_dyadic_fit_equals_reference(rule, m_bits, k_range):
    rng = np.random.default_rng(4)
    num = np.concatenate([rng.integers(0, 2 ** 61 - 1, 300), rng.integers(0, 1000, 100),
                          np.array([0, 1, 2 ** 61 - 1])])
    den = rng.integers(1, 2 ** (61 - m_bits) - 1, num.size)
    m, k, sat = dyadic_fit(num, den, m_bits, k_range, rule, backend="reference")
    got = [oracle.dyadic_fit(int(a), int(b), m_bits, *k_range, rule) for a, b in zip(num, den)]
    assert got == list(zip(m.tolist(), k.tolist(), sat.tolist()))


@given(num=st.integers(1, 2 ** 61 - 1), den=st.integers(1, 2 ** 45 - 1),
       rule=st.sampled_from(list(ROUNDINGS)))
def test_fit_exponent_equals_dyadic_fit(num, den, rule):
    _, k, sat = dyadic_fit(np.int64(num), np.int64(den), 8, (-(2 ** 20), 2 ** 20), rule,
                           backend="reference")
    assert not sat and oracle.fit_exponent(num, den, 8, rule) == int(k)


# ------------------------------------------------------------------ the requantizer

def _rows(rng, bits: int, symmetric: bool):
    """(v, m_in, k_in): random rows of every magnitude (pre-shifts), zero rows, m_in = 0,
    and tie-heavy rows (range 2Q with unit scale: every odd value is a code tie)."""
    Q = (1 << (bits - 1)) - 1 if symmetric else (1 << bits) - 1
    C = 9
    rows, ms, ks = [], [], []
    for mag in (2 ** 6, 2 ** 20, 2 ** 40, 2 ** 60):
        for _ in range(6):
            rows.append(rng.integers(-mag, mag, C))
            ms.append(int(rng.integers(0, 2 ** 28)))
            ks.append(int(rng.integers(-40, 60)))
    for _ in range(8):                                    # tie-heavy
        r = rng.integers(-2 * Q, 2 * Q + 1, C) if symmetric else rng.integers(0, 2 * Q + 1, C)
        r[0] = 2 * Q
        rows.append(r)
        ms.append(1)
        ks.append(0)
    rows += [np.zeros(C, dtype=np.int64), rng.integers(-50, 50, C)]
    ms += [3, 0]                                          # a zero row; m_in = 0
    ks += [5, 7]
    rows.append(rng.integers(-2 ** 30, 2 ** 30, C))       # a scale below k_min: saturates
    ms.append(2 ** 28)
    ks.append(-2 ** 20)
    rows.append(rng.integers(-3, 3, C))                   # a scale above k_max: refitted
    ms.append(1)
    ks.append(2 ** 20)
    return np.array(rows, dtype=np.int64), np.array(ms), np.array(ks)


def _pre_rounding_code(x: int, bits: int, symmetric: bool, spec: Spec, m_in: int, k_in: int,
                       m_out: int, k_out: int, row_sat: bool, v_row) -> Fraction:
    """Element x's code before rounding, from the definitions (docs/SPEC.md 3), with the
    reference's own output scale: ``v' * Q / R'`` (range mode, and the rows fitted mode
    cannot divide by their scale), ``v' 2^sh m_in 2^-k_in / (m_out 2^-k_out)`` otherwise."""
    Q = (1 << (bits - 1)) - 1 if symmetric else (1 << bits) - 1
    vals = [int(y) for y in v_row]
    R = max(abs(min(vals)), abs(max(vals))) if symmetric else max(max(vals), 0) - min(min(vals), 0)
    sh = max(R.bit_length() - 32, 0)
    vs = [y >> sh for y in vals]
    Rs = max(abs(min(vs)), abs(max(vs))) if symmetric else max(max(vs), 0) - min(min(vs), 0)
    e = k_out - k_in + sh
    if spec.requant_mode == "fitted" and not row_sat and m_out > 0 and m_out.bit_length() - min(e, 0) <= 62:
        return (x >> sh) * m_in * Fraction(2) ** (sh - k_in) / (m_out * Fraction(2) ** -k_out)
    return Fraction((x >> sh) * Q, Rs)


@pytest.mark.parametrize("mode", ["fitted", "range"])
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("bits", [4, 8, 16])
def test_requant_row_equals_reference_under_every_rule(mode, symmetric, bits):
    """Codes, zero points, scales, saturations and k_need against requant_rows(...,
    backend="reference") under every tie rule; tie flags against exact fractions and
    against the reference's codes under the three nearest rules."""
    rng = np.random.default_rng(10 * bits + symmetric)
    v, m_in, k_in = _rows(rng, bits, symmetric)
    n_ties = 0
    codes_of, zps_of, ties_of = {}, {}, {}
    for rule in ROUNDINGS:
        spec = Spec(rounding=rule, requant_mode=mode, overflow="saturate")
        k_lo, k_hi = spec.k_range
        ref, nsat = requant_rows(v, Dyadic(m_in, k_in), bits, symmetric, spec, backend="reference")
        got = [oracle.requant_row(v[i], m_in[i], k_in[i], bits, symmetric, spec) for i in range(len(v))]
        assert [g[2] for g in got] == ref.q.astype(np.int64).tolist()
        assert [g[1] for g in got] == ref.zp.astype(np.int64).tolist()
        assert [(g[0].m, g[0].k) for g in got] == list(zip(ref.scale.m.tolist(), ref.scale.k.tolist()))
        assert sum(g[0].sat for g in got) == nsat >= 1
        for i, (sc, _, _, ties) in enumerate(got):
            _, row_sat = requant_rows(v[i:i + 1], Dyadic(m_in[i:i + 1], k_in[i:i + 1]), bits, symmetric,
                                      spec, backend="reference")
            assert sc.sat == bool(row_sat)
            # k_need: the run's exponent wherever the range did not clamp it
            k_ref = int(ref.scale.k[i])
            if sc.k_need is None:
                assert int(ref.scale.m[i]) == 0 and (int(m_in[i]) == 0 or not v[i].any())
            elif k_lo <= sc.k_need <= k_hi and int(ref.scale.m[i]):
                assert sc.k_need == k_ref
            else:
                assert (sc.k_need < k_lo) == bool(row_sat)
            want = [_pre_rounding_code(int(x), bits, symmetric, spec, int(m_in[i]), int(k_in[i]),
                                       int(ref.scale.m[i]), k_ref, bool(row_sat), v[i]).denominator == 2
                    if v[i].any() else False for x in v[i]]
            assert ties == want, (rule, i)
            n_ties += sum(ties)
        codes_of[rule] = ref.q.astype(np.int64)
        zps_of[rule] = ref.zp.astype(np.int64)
        ties_of[rule] = np.array([g[3] for g in got])
    assert n_ties > 0                                       # the tie-heavy rows did their job
    # the reference's own view: with the zero point unchanged, codes differ between the
    # nearest rules only at a tie the oracle flagged
    same_zp = (zps_of[HALF_UP] == zps_of[HALF_EVEN]) & (zps_of[HALF_UP] == zps_of[HALF_AWAY])
    differ = (codes_of[HALF_UP] != codes_of[HALF_EVEN]) | (codes_of[HALF_UP] != codes_of[HALF_AWAY])
    differ &= same_zp[:, None]
    assert differ.any() or mode == "range"
    for rule in NEAREST:
        assert not (differ & ~ties_of[rule]).any()
