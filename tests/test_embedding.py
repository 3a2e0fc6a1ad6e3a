"""Embedding lookup: kernel == reference, exact gather, bad ids and dtypes; the float-side
per-row quantizer."""
import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, arrays

from converters.embedding import quantize_embedding
from intsim.embedding import embed
from intsim.errors import IntsimError, IntsimOverflowError
from intsim.qtensor import dtype_for


@st.composite
def tables(draw):
    bits = draw(st.integers(2, 16))
    V, D = draw(st.integers(1, 8)), draw(st.integers(1, 8))
    Q = 2 ** (bits - 1) - 1
    tq = draw(arrays(dtype_for(bits, True), (V, D), elements=st.integers(-Q, Q), fill=st.nothing()))
    tm = draw(arrays(np.int64, (V,), elements=st.integers(0, 2 ** 31 - 1), fill=st.nothing()))
    tk = draw(arrays(np.int64, (V,), elements=st.integers(-(2 ** 40), 2 ** 40), fill=st.nothing()))
    ids = draw(arrays(draw(st.sampled_from([np.int32, np.int64, np.uint16])), array_shapes(min_dims=0, max_dims=2),
                      elements=st.integers(0, V - 1), fill=st.nothing()))
    return ids, tq, tm, tk, bits


@given(tables())
@example((np.array([0, 0]), np.array([[-127, 127]], np.int8), np.array([2 ** 31 - 1]), np.array([0]), 8))
def test_embed_kernel_equals_reference(t):
    ids, tq, tm, tk, bits = t
    a = embed(ids, tq, tm, tk, bits)
    b = embed(ids, tq, tm, tk, bits, backend="reference")
    for x, y in ((a.q, b.q), (a.zp, b.zp), (a.scale.m, b.scale.m), (a.scale.k, b.scale.k)):
        assert x.dtype == y.dtype and np.array_equal(x, y)


@given(tables())
def test_embed_is_an_exact_gather(t):
    ids, tq, tm, tk, bits = t
    out = embed(ids, tq, tm, tk, bits)
    assert out.q.shape == ids.shape + (tq.shape[1],) and out.signed and out.bits == bits
    for idx in np.ndindex(ids.shape):
        r = int(ids[idx])
        assert [int(v) for v in out.q[idx]] == [int(v) for v in tq[r]]
        assert (int(out.scale.m[idx]), int(out.scale.k[idx]), int(out.zp[idx])) == (int(tm[r]), int(tk[r]), 0)


@given(st.integers(1, 6), st.data())
def test_embed_bad_ids_name_the_first_bad_id(V, data):
    ids = data.draw(arrays(np.int64, (6,), elements=st.integers(-2, V + 2), fill=st.nothing()))
    bad = np.flatnonzero((ids < 0) | (ids >= V))
    tq, tm, tk = np.zeros((V, 2), np.int8), np.ones(V, np.int64), np.zeros(V, np.int64)
    if bad.size == 0:
        embed(ids, tq, tm, tk)
        return
    with pytest.raises(IntsimOverflowError,
                       match=rf"token ids: id {int(ids[bad[0]])} at index \({int(bad[0])},\).*V = {V}"):
        embed(ids, tq, tm, tk)


def test_embed_overflow_and_ranges():
    # no arithmetic: the extremes pass through unchanged; codes outside the width are refused
    tq = np.array([[-127, 127]], np.int8)
    out = embed(np.array([0]), tq, np.array([2 ** 31 - 1]), np.array([-(2 ** 62)]))
    assert out.q.tolist() == [[-127, 127]] and int(out.scale.k[0]) == -(2 ** 62)
    with pytest.raises(IntsimOverflowError, match="QTensor.q"):
        embed(np.array([0]), np.array([[-128, 0]], np.int8), np.array([1]), np.array([0]))
    with pytest.raises(IntsimOverflowError, match="Dyadic.m"):
        embed(np.array([0]), tq, np.array([-1]), np.array([0]))


def test_embed_bad_dtypes_and_shapes():
    tq, tm, tk = np.zeros((3, 2), np.int8), np.ones(3, np.int64), np.zeros(3, np.int64)
    with pytest.raises(IntsimError, match="token ids: expected an integer dtype"):
        embed(np.array([0.0]), tq, tm, tk)
    with pytest.raises(IntsimError, match="token ids: expected an integer dtype"):
        embed(np.array([True]), tq, tm, tk)
    with pytest.raises(IntsimError, match="token ids: expected an integer numpy array"):
        embed([0, 1], tq, tm, tk)
    with pytest.raises(IntsimError, match="table_q: expected dtype int16"):
        embed(np.array([0]), tq, tm, tk, bits=16)
    with pytest.raises(IntsimError, match="table_q: expected 2-d"):
        embed(np.array([0]), tq[0], tm, tk)
    with pytest.raises(IntsimError, match=r"table_m: shape \(2,\) != \(V,\)"):
        embed(np.array([0]), tq, tm[:2], tk)
    with pytest.raises(IntsimError, match="table_k: expected an integer dtype"):
        embed(np.array([0]), tq, tm, tk.astype(np.float32))
    with pytest.raises(IntsimError, match="bits"):
        embed(np.array([0]), tq, tm, tk, bits=17)


# ------------------------------------------------------------ float-side quantizer

# Tolerance in OUTPUT LSBs (the row's own scale m * 2^-k): round half away from zero of
# w / s errs by at most 1/2 LSB; the scale is rounded UP, so nothing clips.  1e-9 covers
# float64 noise of the division.
EMB_TOL_LSB = 0.5 + 1e-9


@given(arrays(np.float64, st.tuples(st.integers(1, 6), st.integers(1, 12)),
              elements=st.one_of(st.just(0.0), st.floats(-1.0, 1.0, width=32).filter(lambda v: abs(v) > 1e-20)),
              fill=st.nothing()),
       st.sampled_from([4, 8, 16]), st.sampled_from([4, 8, 16]))
@example(np.zeros((2, 3)), 8, 8)
def test_quantize_embedding_close_to_float(w, bits, M):
    tq, tm, tk = quantize_embedding(w, bits, M)
    Q = 2 ** (bits - 1) - 1
    assert tq.dtype == (np.int8 if bits <= 8 else np.int16) and np.abs(tq.astype(np.int64)).max() <= Q
    for r in range(w.shape[0]):
        amax = np.abs(w[r]).max()
        if amax == 0:
            assert (int(tm[r]), int(tk[r])) == (0, 0) and not tq[r].any()
            continue
        assert 2 ** (M - 1) <= tm[r] < 2 ** M
        s = float(tm[r]) * 2.0 ** -int(tk[r])
        assert amax / Q <= s < amax / Q * (1 + 2.0 ** -(M - 1))      # rounded up, < 1 mantissa step
        assert np.all(np.abs(tq[r] * s - w[r]) / s <= EMB_TOL_LSB)
    # and the integer runtime reproduces the same table rows
    out = embed(np.arange(w.shape[0]), tq, tm, tk, bits)
    assert np.array_equal(out.q, tq)


def test_quantize_embedding_bad_input():
    with pytest.raises(ValueError, match="non-finite"):
        quantize_embedding(np.array([[np.nan, 1.0]]))
    with pytest.raises(ValueError, match="2-d"):
        quantize_embedding(np.ones(3))
    with pytest.raises(ValueError, match="k_range"):
        quantize_embedding(np.array([[1e-60, 0.0]]))
