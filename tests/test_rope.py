"""Integer RoPE: kernel == reference, close to the float (Hugging Face) rotation, overflow,
bad positions and shapes; the float-side table builder."""
import numpy as np
import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from converters.rope_tables import rope_inv_freq, rope_tables, round_half_away
from intsim.errors import IntsimError, IntsimOverflowError
from intsim.options import Spec
from intsim.qtensor import Dyadic, QTensor, dtype_for
from intsim.rope import ROPE_D_LIMIT, rope

roundings = st.sampled_from(["floor", "half_up", "half_even", "half_away"])


def qt(q, zp, bits, signed, m=200, k=9):
    q = np.asarray(q)
    T = q.shape[0]
    return QTensor(q.astype(dtype_for(bits, signed)), np.asarray(zp, dtype=np.int32).reshape(T),
                   Dyadic(np.full(T, m), np.full(T, k)), bits, signed)


@st.composite
def rope_inputs(draw):
    f = draw(st.sampled_from([8, 12, 14, 15, 24]))
    n_heads, hd2 = draw(st.integers(1, 3)), draw(st.integers(1, 4))
    head_dim = 2 * hd2
    T, max_pos = draw(st.integers(1, 4)), draw(st.integers(1, 6))
    bits = draw(st.integers(2, 16))
    signed = draw(st.booleans())
    lo, hi = (-(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1) if signed else (0, 2 ** bits - 1)
    q = draw(arrays(np.int64, (T, n_heads * head_dim), elements=st.integers(lo, hi), fill=st.nothing()))
    zp = draw(arrays(np.int64, (T,), elements=st.integers(lo, hi), fill=st.nothing()))
    tdt = np.int16 if f <= 14 else np.int32
    tab = arrays(tdt, (max_pos, hd2), elements=st.integers(-(2 ** f), 2 ** f), fill=st.nothing())
    cos_q, sin_q = draw(tab), draw(tab)
    pos = draw(arrays(np.int64, (T,), elements=st.integers(0, max_pos - 1), fill=st.nothing()))
    drop = draw(st.integers(0, f))
    return qt(q, zp, bits, signed), pos, cos_q, sin_q, n_heads, head_dim, f, drop


def ext_example(f=24):
    """Extremes: |a| = |b| = 2^16 and |c| = |s| = 2^f (tables at the Q1.f ends)."""
    q = np.array([[65535, 65535], [0, 0]])          # with zp -1 / 2^16: a = b = +-2^16
    tab = np.array([[2 ** f], [-(2 ** f)]], dtype=np.int32 if f > 14 else np.int16)
    return qt(q, [-1, 2 ** 16], 16, False), np.array([0, 1]), tab, tab[::-1].copy(), 1, 2, f, 0


@given(rope_inputs(), roundings)
@example(ext_example(), "half_up")
@example(ext_example(14), "half_even")
@example((qt(np.zeros((1, 4)), [0], 8, True),) + (np.array([0]),) + rope_tables(4, 1) + (1, 4, 14, 14), "floor")
def test_rope_kernel_equals_reference(inp, rounding):
    x, pos, cos_q, sin_q, n_heads, head_dim, f, drop = inp
    spec = Spec(rope_frac_bits=f, rounding=rounding)
    ya, sa = rope(x, pos, cos_q, sin_q, n_heads, head_dim, spec, "numba", drop)
    yb, sb = rope(x, pos, cos_q, sin_q, n_heads, head_dim, spec, "reference", drop)
    assert ya.dtype == yb.dtype == np.int64 and np.array_equal(ya, yb)
    assert np.array_equal(sa.m, sb.m) and np.array_equal(sa.k, sb.k)
    assert np.array_equal(sa.m, x.scale.m) and np.array_equal(sa.k, x.scale.k + f - drop)


def hf_rotate(x, pos, head_dim, n_heads, theta):
    """Float64 oracle in Hugging Face's form: x * cos + rotate_half(x) * sin, per head."""
    inv = rope_inv_freq(head_dim, theta)
    ang = np.outer(pos.astype(np.float64), inv)
    cos = np.concatenate([np.cos(ang), np.cos(ang)], axis=-1)[:, None, :]
    sin = np.concatenate([np.sin(ang), np.sin(ang)], axis=-1)[:, None, :]
    xh = x.reshape(x.shape[0], n_heads, head_dim)
    h = head_dim // 2
    rot = np.concatenate([-xh[..., h:], xh[..., :h]], axis=-1)
    return (xh * cos + rot * sin).reshape(x.shape)


# Tolerance in OUTPUT LSBs (2^(drop - f) input units): each table entry is within 2^-(f+1)
# of its cos/sin, and each output is a sum of two products, so the rotation errs by at most
# (|a| + |b|) * 2^-(f+1) input units = (|a| + |b|) / 2 output LSBs at drop = 0; a rounding
# shift adds 1/2 output LSB (nearest modes).  1e-6 covers the float64 oracle.
TABLE_LSB_PER_UNIT = 0.5


@given(st.sampled_from([2, 8, 64, 128]), st.integers(1, 2), st.integers(1, 5),
       st.sampled_from([10000.0, 500000.0]), st.sampled_from([8, 14, 20]), st.data())
def test_rope_close_to_float(head_dim, n_heads, T, theta, f, data):
    max_pos = 4096
    cos_q, sin_q = rope_tables(head_dim, max_pos, theta, f)
    q = data.draw(arrays(np.int64, (T, n_heads * head_dim), elements=st.integers(-32767, 32767),
                         fill=st.nothing()))
    pos = data.draw(arrays(np.int64, (T,), elements=st.integers(0, max_pos - 1), fill=st.nothing()))
    drop = data.draw(st.sampled_from([0, f // 2, f]))
    x = qt(q, np.zeros(T), 16, True)
    y, sc = rope(x, pos, cos_q, sin_q, n_heads, head_dim, Spec(rope_frac_bits=f), "reference", drop)
    lsb = 2.0 ** (drop - f)
    err_lsb = np.abs(y * lsb - hf_rotate(q.astype(np.float64), pos, head_dim, n_heads, theta)) / lsb
    h = head_dim // 2
    qh = np.abs(q.reshape(T, n_heads, head_dim).astype(np.float64))
    pair = np.concatenate([qh[..., :h] + qh[..., h:]] * 2, axis=-1).reshape(q.shape)
    tol = pair * 2.0 ** -(f + 1) / lsb + (0.5 if drop else 0.0) + 1e-6
    assert np.all(err_lsb <= tol)
    assert np.all(sc.k == 9 + f - drop)


def test_rope_rotates_by_known_angle():
    # position 1 of a 2-channel head at theta = 1: angle 1 rad; (1, 0) -> (cos 1, sin 1)
    cos_q, sin_q = rope_tables(2, 2, theta=1.0, frac_bits=14)
    x = qt([[3, 0]], [0], 8, True)
    y, _ = rope(x, np.array([1]), cos_q, sin_q, 1, 2)
    assert y.tolist() == [[3 * round(np.cos(1) * 2 ** 14), 3 * round(np.sin(1) * 2 ** 14)]]


def test_rope_overflow_bounds_with_python_ints():
    """Extremes, recomputed in Python ints: |a c - b s| <= 2^(17+f) <= 2^41 and kernel exact."""
    for f in (14, 24):
        x, pos, cos_q, sin_q, nh, hd, f, _ = ext_example(f)
        y, _ = rope(x, pos, cos_q, sin_q, nh, hd, Spec(rope_frac_bits=f))
        d = [[int(v) - int(x.zp[t]) for v in x.q[t]] for t in range(2)]
        for t in range(2):
            a, b = d[t]
            c, s = int(cos_q[pos[t], 0]), int(sin_q[pos[t], 0])
            assert max(abs(a), abs(b)) == ROPE_D_LIMIT and max(abs(c), abs(s)) == 2 ** f
            exact = [a * c - b * s, a * s + b * c]
            assert all(abs(v) <= 2 ** (17 + f) <= 2 ** 41 for v in exact)
            assert abs(exact[0]) == 2 ** (17 + f)       # the bound is attained
            assert [int(v) for v in y[t]] == exact
    # the int32 claim at f = 14 (Cauchy-Schwarz): (a^2 + b^2)(c^2 + s^2) < (2^31 - 1)^2 for
    # every entry of a real table and |a|, |b| <= 2^16
    cos_q, sin_q = rope_tables(128, 8192, 10000.0, 14)
    cs_max = int((cos_q.astype(np.int64) ** 2 + sin_q.astype(np.int64) ** 2).max())
    assert 2 * 2 ** 32 * cs_max < (2 ** 31 - 1) ** 2


def test_rope_outside_declared_range_raises():
    cos_q, sin_q = rope_tables(2, 4)
    with pytest.raises(IntsimOverflowError, match=r"x \(q - zp\)"):
        rope(qt([[65535, 0]], [-2], 16, False), np.array([0]), cos_q, sin_q, 1, 2)
    bad = cos_q.copy()
    bad[0, 0] = 2 ** 14 + 1
    with pytest.raises(IntsimOverflowError, match="cos_q"):
        rope(qt([[1, 0]], [0], 8, True), np.array([0]), bad, sin_q, 1, 2)
    with pytest.raises(IntsimError, match="drop_bits"):
        rope(qt([[1, 0]], [0], 8, True), np.array([0]), cos_q, sin_q, 1, 2, drop_bits=15)


@given(st.integers(1, 6), st.data())
def test_rope_bad_positions_name_the_first_bad_value(max_pos, data):
    T = 5
    pos = data.draw(arrays(np.int64, (T,), elements=st.integers(-3, max_pos + 3), fill=st.nothing()))
    badmask = (pos < 0) | (pos >= max_pos)
    assume(badmask.any())
    first = int(np.flatnonzero(badmask)[0])
    cos_q, sin_q = rope_tables(2, max_pos)
    x = qt(np.ones((T, 2)), np.zeros(T), 8, True)
    with pytest.raises(IntsimOverflowError,
                       match=rf"positions: value {int(pos[first])} at index {first} .*max_pos = {max_pos}"):
        rope(x, pos, cos_q, sin_q, 1, 2)


def test_rope_bad_shapes_and_dtypes():
    cos_q, sin_q = rope_tables(4, 3)
    x = qt(np.ones((2, 8)), [0, 0], 8, True)
    pos = np.array([0, 1])
    with pytest.raises(IntsimError, match="head_dim: 3 is odd"):
        rope(qt(np.ones((2, 6)), [0, 0], 8, True), pos, cos_q, sin_q, 2, 3)
    with pytest.raises(IntsimError, match="x: shape"):
        rope(x, pos, cos_q, sin_q, 1, 4)
    with pytest.raises(IntsimError, match="cos_q: shape"):
        rope(x, pos, cos_q[:, :1], sin_q, 2, 4)
    with pytest.raises(IntsimError, match="sin_q: shape"):
        rope(x, pos, cos_q, sin_q[:2], 2, 4)
    with pytest.raises(IntsimError, match="cos_q: expected an integer"):
        rope(x, pos, cos_q.astype(np.float64), sin_q, 2, 4)
    with pytest.raises(IntsimError, match="positions: shape"):
        rope(x, np.array([0]), cos_q, sin_q, 2, 4)
    with pytest.raises(IntsimError, match="positions: expected an integer"):
        rope(x, np.array([0.0, 1.0]), cos_q, sin_q, 2, 4)
    with pytest.raises(IntsimError, match="n_heads"):
        rope(x, pos, cos_q, sin_q, 0, 4)
    with pytest.raises(IntsimError, match="x: expected a QTensor"):
        rope(np.ones((2, 8), np.int8), pos, cos_q, sin_q, 2, 4)


# ---------------------------------------------------------------- float-side tables

@pytest.mark.parametrize("f", [8, 14, 15, 24])
def test_rope_tables_are_rounded_cos_sin(f):
    cos_q, sin_q = rope_tables(64, 4096, 10000.0, f)
    assert cos_q.dtype == (np.int16 if f <= 14 else np.int32) and cos_q.shape == (4096, 32)
    ang = np.outer(np.arange(4096.0), 10000.0 ** (-np.arange(0, 64, 2) / 64))
    # each entry within half a table LSB of the real value (plus float64 noise)
    assert np.abs(cos_q / 2.0 ** f - np.cos(ang)).max() <= 2.0 ** -(f + 1) + 1e-12
    assert np.abs(sin_q / 2.0 ** f - np.sin(ang)).max() <= 2.0 ** -(f + 1) + 1e-12
    assert int(cos_q[0, 0]) == 2 ** f and int(sin_q[0, 0]) == 0
    assert np.abs(cos_q.astype(np.int64)).max() <= 2 ** f


def test_rope_tables_round_half_away_and_custom_freq():
    assert round_half_away(np.array([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 0.49])).tolist() == [-3, -2, -1, 1, 2, 3, 0]
    # a checkpoint's own frequencies: angle p * pi/2 gives cos = 1, 0, -1, 0 exactly at f = 4
    c, s = rope_tables(2, 4, frac_bits=4, inv_freq=np.array([np.pi / 2]))
    assert c[:, 0].tolist() == [16, 0, -16, 0] and s[:, 0].tolist() == [0, 16, 0, -16]
    with pytest.raises(ValueError, match="inv_freq"):
        rope_tables(4, 3, inv_freq=np.ones(3))
    with pytest.raises(ValueError, match="head_dim"):
        rope_tables(3, 3)
