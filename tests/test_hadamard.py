"""The online Hadamard rotation of down_proj's input (``intsim.hadamard.hadamard_rows``,
``Widths.down_rot``; docs/SPEC.md section 7.6).

* the NumPy reference, the Numba row kernel (and ``backend="cuda"``, its CPU form) equal a
  Python-integer recompute written from the spec's text (intsim.oracle.hadamard_row: the
  explicit product with ``(-1)^popcount(i & j)``, after the pre-shift with the run's tie
  rule) on hypothesis inputs up to |y| = 2^61 - 1, every tie rule;
* the growth bound ``|out| <= b max|y|`` is attained (the rows of H_b themselves), and the
  2^60 bound is attained at the extremes (|y| = 2^61 - 1, b = 2 and b = 2^15);
* the pre-shift rounds by the run's tie rule: a row of exact ties gives four different
  outputs under the four rules, each the oracle's;
* bad blocks, widths, scales and dtypes are refused naming the argument;
* a model with ``down_rot`` gives the same integers on the graph (reference and Numba) and
  the fused CPU path (prefill, decode through the KV cache), and other integers than the
  same weights without the rotation.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, strategies as st

from intsim import oracle
from intsim.errors import IntsimError, IntsimOverflowError
from intsim.hadamard import (ROT_BLOCK_LIMIT, ROT_IN_LIMIT, ROT_K_LIMIT, ROT_OUT_BITS, default_block,
                             hadamard_rows, sylvester)
from intsim.options import Spec
from intsim.qtensor import Dyadic

RULES = ("floor", "half_up", "half_even", "half_away")
BACKENDS = ("reference", "numba", "cuda")
TOP = ROT_IN_LIMIT                                    # 2^61 - 1, requant_rows' own input bound


def _dy(m, k) -> Dyadic:
    return Dyadic(np.asarray(m, dtype=np.int64), np.asarray(k, dtype=np.int64))


def _oracle(y: np.ndarray, b: int, rule: str):
    """(out, pre-shift per row) of every row of ``y`` [..., C] by intsim.oracle."""
    rows = [oracle.hadamard_row(r, b, rule) for r in y.reshape(-1, y.shape[-1]).tolist()]
    return [r[0] for r in rows], [r[1] for r in rows]


def _check_all_backends(y, m, k, b, rule):
    """Every backend against the oracle: values, the scale (m kept, k lowered by the
    pre-shift) and the count of shifted rows."""
    want, sh = _oracle(y, b, rule)
    lead = y.shape[:-1]
    for be in BACKENDS:
        out, sc, st_ = hadamard_rows(y, _dy(m, k), b, Spec(rounding=rule), be)
        assert out.dtype == np.int64 and out.shape == y.shape
        assert out.reshape(-1, y.shape[-1]).tolist() == want, be
        assert np.array_equal(sc.m, np.broadcast_to(m, lead))
        assert sc.k.reshape(-1).tolist() == [int(x) - s for x, s in
                                             zip(np.broadcast_to(k, lead).reshape(-1), sh)]
        assert st_ == {"rows_shifted": sum(s > 0 for s in sh)}
    return want, sh


# ------------------------------------------------------------------ against the oracle

@st.composite
def cases(draw):
    lb = draw(st.integers(1, 7))
    b = 2 ** lb
    C = b * draw(st.integers(1, 4))
    T = draw(st.integers(1, 4))
    mag = draw(st.sampled_from([1, 7, 2 ** 20, 2 ** 40, 2 ** 57, 2 ** 59 + 3, TOP]))
    seed = draw(st.integers(0, 2 ** 32 - 1))
    rule = draw(st.sampled_from(RULES))
    lead3 = draw(st.booleans())
    return b, C, T, mag, seed, rule, lead3


@given(cases())
def test_backends_equal_the_python_int_product(c):
    b, C, T, mag, seed, rule, lead3 = c
    rng = np.random.default_rng(seed)
    y = rng.integers(-mag, mag + 1, (T, C), dtype=np.int64)
    if T > 1:
        y[0] = 0                                       # a zero row: sh = 0, out = 0
        y[-1, rng.integers(0, C)] = mag * (1 if rng.integers(0, 2) else -1)   # the row's extreme
    m = rng.integers(0, 2 ** 31, T)
    k = rng.integers(-ROT_K_LIMIT, ROT_K_LIMIT + 1, T)
    if lead3 and T % 2 == 0:                           # [2, T / 2, C] with a [2, T / 2] scale
        y, m, k = y.reshape(2, T // 2, C), m.reshape(2, T // 2), k.reshape(2, T // 2)
    want, sh = _check_all_backends(y, m, k, b, rule)
    bound = 2 ** ROT_OUT_BITS
    assert all(abs(v) <= bound for r in want for v in r)
    for r, s in zip(y.reshape(-1, C).tolist(), sh):        # sh = 0 exactly when it fits
        assert (s == 0) == (max(map(abs, r)).bit_length() + b.bit_length() - 1 <= ROT_OUT_BITS)


def test_a_scalar_scale_broadcasts_over_the_rows():
    y = np.arange(24, dtype=np.int64).reshape(3, 8) - 11
    _check_all_backends(y, np.int64(5), np.int64(-3), 4, "half_up")


def test_the_matrix_is_sylvesters_and_its_own_inverse_up_to_b():
    for b in (2, 4, 8, 64):
        H = sylvester(b).astype(np.int64)
        assert H.tolist() == [[(-1) ** (i & j).bit_count() for j in range(b)] for i in range(b)]
        assert np.array_equal(H @ H, b * np.eye(b, dtype=np.int64))
        y = np.random.default_rng(b).integers(-1000, 1000, (2, 3 * b))
        out, _, _ = hadamard_rows(y, _dy([1, 1], [0, 0]), b)
        blocks = y.reshape(2, 3, b) @ H.T                  # blockdiag(H_b) per row
        assert np.array_equal(out, blocks.reshape(2, 3 * b))
        back, _, _ = hadamard_rows(out, _dy([1, 1], [0, 0]), b)
        assert np.array_equal(back, b * y)                 # H_b H_b = b I


# ------------------------------------------------------------------ the bounds

@pytest.mark.parametrize("b", [2, 8, 128])
def test_growth_bound_attained(b):
    """Row i of H_b times v (v = the largest magnitude with sh = 0) rotates to b v in
    position i: the log2 b bits of growth are needed."""
    lb = b.bit_length() - 1
    v = 2 ** (ROT_OUT_BITS - lb) - 1                        # bitlen 60 - lb: no pre-shift
    H = sylvester(b).astype(np.int64)
    y = np.concatenate([v * H, -v * H[::-1]], axis=1)      # [b, 2b]: two blocks per row
    want, sh = _check_all_backends(y, np.ones(b, np.int64), np.zeros(b, np.int64), b, "half_up")
    assert sh == [0] * b
    for i, r in enumerate(want):
        assert max(map(abs, r)) == b * v and r[i] == b * v and r[b + b - 1 - i] == -b * v


@pytest.mark.parametrize("rule", RULES)
def test_the_2_to_60_bound_at_the_extremes(rule):
    """|y| = 2^61 - 1: b = 2 shifts by 2, b = 4 by 3 and b = 2^15 by 16; the bound 2^60 is
    reached exactly (to nearest the pre-shifted 2^61 - 1 rounds up to 2^(61 - sh); floor
    reaches -2^60 from -(2^61 - 1) and stays below 2^60 on the positive side)."""
    for b, sh in ((2, 2), (4, 3)):
        y = np.array([[TOP] * b, [-TOP] * b, [TOP, -TOP] * (b // 2)], dtype=np.int64)
        want, got_sh = _check_all_backends(y, [3, 3, 3], [7, 7, 7], b, rule)
        assert got_sh == [sh] * 3
        assert want[0][0] == b * oracle.rshift(TOP, sh, rule) == \
            (2 ** ROT_OUT_BITS if rule != "floor" else 2 ** ROT_OUT_BITS - b)
        assert want[1][0] == b * oracle.rshift(-TOP, sh, rule) == -(2 ** ROT_OUT_BITS)
    b = ROT_BLOCK_LIMIT                                    # the largest block: 15 bits of growth
    y = np.full((2, b), TOP, dtype=np.int64)
    y[1] = -TOP
    for be in ("reference", "numba"):
        out, sc, st_ = hadamard_rows(y, _dy([1, 1], [0, 0]), b, Spec(rounding=rule), be)
        assert st_ == {"rows_shifted": 2} and sc.k.tolist() == [-16, -16]
        assert out[:, 0].tolist() == [b * oracle.rshift(TOP, 16, rule), -(2 ** 60)]
        assert not out[:, 1:].any()
        assert int(out[0, 0]) == (2 ** 60 if rule != "floor" else 2 ** 60 - 2 ** 15)


def test_the_preshift_boundary():
    """L + log2 b = 60 keeps the row exact (sh = 0); one bit more shifts by one."""
    b = 16
    for v, sh in ((2 ** 56 - 1, 0), (2 ** 56, 1)):
        y = np.array([[v] + [0] * (b - 1)], dtype=np.int64)
        _, got = _check_all_backends(y, [1], [0], b, "half_even")
        assert got == [sh]


#: y / 2 = 2^57 + 1/2, -(2^57 + 1/2), 2^57 + 3/2, -(2^57 + 3/2): ties, rounded apart by
#: every rule (bitlen 59 + log2 4 = 61: sh = 1)
TIES = [2 ** 58 + 1, -(2 ** 58 + 1), 2 ** 58 + 3, -(2 ** 58 + 3)]
#: the pre-shifted row each rule must give (from the rule's text)
TIES_SHIFTED = {"floor": [0, -1, 1, -2], "half_up": [1, 0, 2, -1],
                "half_even": [0, 0, 2, -2], "half_away": [1, -1, 2, -2]}


def test_preshift_ties_follow_the_rule():
    y = np.array([TIES], dtype=np.int64)
    H = sylvester(4).astype(np.int64)
    seen = set()
    for rule in RULES:
        want, sh = _check_all_backends(y, [1], [0], 4, rule)
        assert sh == [1]
        pre = (np.array(want[0]) @ H) // 4                 # H H = 4 I: the pre-shifted row
        assert (pre - np.array([2 ** 57, -(2 ** 57), 2 ** 57, -(2 ** 57)])).tolist() == TIES_SHIFTED[rule]
        seen.add(tuple(want[0]))
    assert len(seen) == 4


# ------------------------------------------------------------------ refusals

def test_default_block():
    assert [default_block(c) for c in (1536, 12, 96, 7, 2 ** 20)] == [512, 4, 32, 1, ROT_BLOCK_LIMIT]


@pytest.mark.parametrize("args,exc,match", [
    (dict(block=6), IntsimError, r"^block: 6 is not a power of two .*4 divides 12"),
    (dict(block=8), IntsimError, r"^block: block 8 does not divide the 12 channels .*: 4\)"),
    (dict(block=1), IntsimError, r"^block: 1 is outside \[2, 32768\]"),
    (dict(block=65536), IntsimError, r"^block: 65536 is outside \[2, 32768\]"),
    (dict(block=True), IntsimError, r"^block: expected an integer, got bool"),
    (dict(block=4.0), IntsimError, r"^block: expected an integer, got float"),
    (dict(y=np.full((2, 12), 2 ** 61)), IntsimOverflowError, r"^y: value 2305843009213693952 at index \(0, 0\)"),
    (dict(y=np.full((2, 12), -(2 ** 61))), IntsimOverflowError, r"^y: value -2305843009213693952"),
    (dict(y=np.zeros((2, 12))), IntsimError, r"^y: expected an integer dtype, got float64"),
    (dict(y=[[1] * 12] * 2), IntsimError, r"^y: expected an integer numpy array"),
    (dict(y=np.zeros((2, 0), np.int64)), IntsimError, r"^y: needs a non-empty last axis"),
    (dict(scale=_dy([1, 1], [0, ROT_K_LIMIT + 1])), IntsimOverflowError, r"^scale k: value 1048513 at index \(1,\)"),
    (dict(scale=_dy([1, 1], [-ROT_K_LIMIT - 1, 0])), IntsimOverflowError, r"^scale k: value -1048513"),
    (dict(scale=(1, 0)), IntsimError, r"^scale: expected a Dyadic, got tuple"),
    (dict(scale=_dy([1, 1, 1], [0, 0, 0])), IntsimError, r"^scale: shape \(3,\) does not fit the rows \(2,\)"),
    (dict(backend="gpu"), IntsimError, r"^backend: 'gpu' is not one of"),
    (dict(spec=Spec(), block=3), IntsimError, r"^block: 3 is not a power of two"),
])
def test_refusals_name_the_argument(args, exc, match):
    a = dict(y=np.ones((2, 12), np.int64), scale=_dy([1, 1], [0, 0]), block=4)
    a.update(args)
    with pytest.raises(exc, match=match):
        hadamard_rows(**a)


def test_the_limits_themselves_pass():
    y = np.array([[TOP, -TOP, 0, 1]], dtype=np.int64)
    for k in (ROT_K_LIMIT, -ROT_K_LIMIT):
        out, sc, _ = hadamard_rows(y, _dy([2 ** 31 - 1], [k]), 4)
        assert int(sc.k[0]) == k - 3 and int(np.abs(out).max()) <= 2 ** 60
