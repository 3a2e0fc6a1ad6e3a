"""The fused forward (intsim.fastpath) equals the op-by-op graph.

Whole model: ``forward_fast`` against ``forward(backend="reference")`` for spec variants,
threads on and off, both compiled variants (the row path and the full one), prefill and
decode, packed prompts, the cache shared with the graph,
and the declines (unsupported bounds, saturation under overflow="raise"), each with its
reason; the runner falls back to the graph and logs why.  The kernels it calls are the
operators' own (tests/test_kernels.py).
"""
import dataclasses
import logging

import numba
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from converters.synthetic import make_model
from intsim import fastpath, runner
from intsim.errors import IntsimOverflowError, trusted
from intsim.fastpath import forward_fast
from intsim.llama import KVCache, _positions, forward
from intsim.options import Spec

ROUNDINGS = ["floor", "half_up", "half_even", "half_away"]
IDS = np.array([3, 17, 42, 5, 99, 7, 1, 64, 0, 127, 9, 33])


# ------------------------------------------------------------------ whole model

def same(a, b):
    return (np.array_equal(a[0], b[0]) and np.array_equal(a[1].m, b[1].m)
            and np.array_equal(a[1].k, b[1].k))


def run_fast(model, ids, cache, segments=None, path=None):
    """forward_fast directly (asserting it ran, i.e. no silent fallback)."""
    pos, vis = _positions(cache.length, ids.size, segments)
    with trusted():
        out = forward_fast(model, ids, pos, vis, cache, path=path)
    assert not isinstance(out, str), f"the fast path declined: {out}"
    return out


MODELS = {
    "default": dict(),
    "w4a4_g32_mha": dict(n_kv_heads=4, w_bits=4, a_bits=4, group_size=32),
    "alpha_rowmax_divide": dict(alpha=True, spec=Spec(sigmoid_frame="rowmax", softmax_div="divide")),
    "m16_refit_half_away": dict(spec=Spec(m_bits=16, k_bits=12, rounding="half_away")),
    "fixed_norm_rope_drop_floor": dict(spec=Spec(norm_preshift="fixed", rope_drop_bits=6,
                                                 rounding="floor", softmax_p_frac=6)),
    "paper_range": dict(spec=Spec.paper()),
    "group16_mqa": dict(group_size=16, n_kv_heads=1, w_bits=6),
    "norm_weights": dict(norm_weights=True, alpha=True),
    "w4a4_head8": dict(w_bits=4, a_bits=4, head_a_bits=8, group_size=16),
    # group-wise activations (SPEC 4.8): inside weight groups, around them, and Ga = 40 over
    # per-channel weights (short last groups at K = 64 and 96), with the head at 8 bits
    "agroup_finer": dict(w_bits=4, a_bits=4, a_group=16, group_size=32),
    "agroup_coarser_head8": dict(w_bits=4, a_bits=4, a_group=32, group_size=16, head_a_bits=8),
    "agroup_ragged": dict(a_bits=6, a_group=40, head_a_bits=8, norm_weights=True, alpha=True),
}


@pytest.fixture(scope="module", params=list(MODELS), ids=list(MODELS))
def model(request):
    return make_model(5, **MODELS[request.param])


@pytest.mark.parametrize("path", ["rows", "full"])
@pytest.mark.parametrize("threads", [1, 2])
def test_forward_fast_equals_reference(model, threads, path):
    ref = forward(model, IDS, backend="reference")
    prev = numba.get_num_threads()
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    try:
        full = run_fast(model, IDS, KVCache.empty(model, IDS.size), path=path)
        cache = KVCache.empty(model, IDS.size)
        steps = [run_fast(model, IDS[i:i + 1], cache, path=path) for i in range(IDS.size)]
    finally:
        numba.set_num_threads(prev)
    assert same(full, ref)
    assert np.array_equal(np.concatenate([s[0] for s in steps]), ref[0])
    assert np.array_equal(np.concatenate([s[1].m for s in steps]), ref[1].m)
    assert np.array_equal(np.concatenate([s[1].k for s in steps]), ref[1].k)
    assert cache.length == IDS.size


@pytest.mark.parametrize("path", ["rows", "full"])
def test_last_only_head_is_the_last_row_bit_for_bit(model, path):
    """``last_only`` runs the LM head on the last row alone: its logits and Dyadic are that
    row of the all-positions call exactly, the cache is the same, and so is the next step."""
    ids = np.concatenate([IDS, IDS[::-1], IDS[:3]])          # 27 rows: > ROW_PATH_MAX_T
    full_cache, last_cache = KVCache.empty(model, ids.size + 1), KVCache.empty(model, ids.size + 1)
    pos, vis = _positions(0, ids.size, None)
    with trusted():
        full = forward_fast(model, ids, pos, vis, full_cache, path=path)
        last = forward_fast(model, ids, pos, vis, last_cache, path=path, last_only=True)
    assert not isinstance(last, str), last
    assert last[0].shape == (1, full[0].shape[1]) and last[1].m.shape == (1,)
    assert np.array_equal(last[0], full[0][-1:])
    assert np.array_equal(last[1].m, full[1].m[-1:]) and np.array_equal(last[1].k, full[1].k[-1:])
    assert last_cache.length == full_cache.length == ids.size
    for f in CACHE_FIELDS:
        assert all(np.array_equal(a, b) for a, b in zip(getattr(full_cache, f), getattr(last_cache, f))), f
    pos, vis = _positions(ids.size, 1, None)
    with trusted():
        step_full = forward_fast(model, IDS[:1], pos, vis, full_cache, path=path)
        step_last = forward_fast(model, IDS[:1], pos, vis, last_cache, path=path, last_only=True)
    assert same(step_full, step_last)


def test_runner_last_only_on_every_path():
    """runner.forward(last_only=True) is the last row of the full call on the fused path,
    the op-by-op graph (a tap) and the reference backend alike."""
    m = make_model(13)
    full = runner.forward(m, IDS)
    assert full[0].shape[0] == IDS.size
    for kw in ({}, {"tap": lambda name, t: None}, {"backend": "reference"}):
        got = runner.forward(m, IDS, last_only=True, **kw)
        assert got[0].shape == (1, full[0].shape[1]), kw
        assert same(got, (full[0][-1:], type(full[1])(full[1].m[-1:], full[1].k[-1:]))), kw


def test_choose_path(monkeypatch):
    """Short calls take the row path (the cold start compiles only it), long ones and the
    parallel GEMV the full variant, and once a process has run the full variant it keeps it."""
    monkeypatch.setattr(fastpath, "_full_ran", [False])
    assert fastpath.choose_path(1, False) == "rows"
    assert fastpath.choose_path(fastpath.ROW_PATH_MAX_T, False) == "rows"
    assert fastpath.choose_path(fastpath.ROW_PATH_MAX_T + 1, False) == "full"
    assert fastpath.choose_path(1, True) == "full"
    m = make_model(12, n_layers=1)
    run_fast(m, IDS[:3], KVCache.empty(m, 3))
    assert fastpath._full_ran == [False]
    run_fast(m, IDS[:3], KVCache.empty(m, 3), path="full")
    assert fastpath.choose_path(1, False) == "full"


def test_forward_fast_parallel_gemv_and_chunks(model, monkeypatch):
    monkeypatch.setattr(fastpath, "GEMV_PARALLEL", True)
    ref = forward(model, IDS, backend="reference")
    cache = KVCache.empty(model, IDS.size)
    parts = [run_fast(model, IDS[a:b], cache) for a, b in ((0, 5), (5, 6), (6, 12))]
    assert np.array_equal(np.concatenate([p[0] for p in parts]), ref[0])


CACHE_FIELDS = ("k_q", "k_zp", "k_m", "k_k", "v_q", "v_zp", "v_m", "v_k")


def test_cache_written_by_either_path_is_the_same():
    """The fast path and KVCache.put (op-by-op path) write identical caches, so the two
    paths can take turns on one cache: the fused path rebuilds its derived copies after
    the graph wrote (KVCache.version)."""
    m = make_model(11)
    fast, slow = KVCache.empty(m, IDS.size), KVCache.empty(m, IDS.size)
    run_fast(m, IDS[:7], fast)
    forward(m, IDS[:7], slow, tap=lambda name, t: None)          # taps force op by op
    for f in CACHE_FIELDS:
        assert all(np.array_equal(a, b) for a, b in zip(getattr(fast, f), getattr(slow, f))), f
    # op-by-op prefill, fast decode, fast prefill of a rewound cache: all == reference
    ref = forward(m, IDS, backend="reference")
    steps = [run_fast(m, IDS[i:i + 1], slow) for i in range(7, IDS.size)]
    assert np.array_equal(np.concatenate([s[0] for s in steps]), ref[0][7:])
    slow.length = 0
    assert same(run_fast(m, IDS, slow), ref)


def test_forward_fast_packed_segments_equal_reference():
    m = make_model(6)
    seg = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 3, 3, 3])
    got = run_fast(m, IDS, KVCache.empty(m, IDS.size), segments=seg)
    assert same(got, forward(m, IDS, backend="reference", segments=seg))


@settings(max_examples=8)
@given(st.lists(st.integers(0, 127), min_size=1, max_size=40), st.integers(0, 2 ** 16))
def test_forward_fast_random_prompts_equal_reference(ids, seed):
    m = _small_model(seed % 4)
    ids = np.array(ids)
    assert same(run_fast(m, ids, KVCache.empty(m, ids.size)), forward(m, ids, backend="reference"))


_SMALL = {}


def _small_model(i):
    if i not in _SMALL:
        _SMALL[i] = make_model(10 + i, n_layers=1, spec=Spec(rounding=ROUNDINGS[i]))
    return _SMALL[i]


def _huge(spec):
    m = make_model(7, n_layers=1, spec=spec)
    return dataclasses.replace(m, emb_k=m.emb_k - 44)


def test_forward_fast_saturation_raises_like_reference():
    """Embedding scales near 2^40 with k_bits = 4: the residual sum's scale exceeds the
    largest dyadic scale.  overflow="raise" raises the op-by-op error (the fast path
    hands over), overflow="saturate" gives the reference's integers."""
    m = _huge(Spec(k_bits=4))
    with pytest.raises(IntsimOverflowError) as ref_err:
        forward(m, IDS, backend="reference")
    with pytest.raises(IntsimOverflowError) as fast_err:
        runner.forward(m, IDS)
    assert str(fast_err.value) == str(ref_err.value)
    assert "saturated" in runner.last_decline()
    pos, vis = _positions(0, IDS.size, None)
    with trusted():
        assert "saturated" in forward_fast(m, IDS, pos, vis, KVCache.empty(m, IDS.size))
    m2 = _huge(Spec(k_bits=4, overflow="saturate"))
    assert same(run_fast(m2, IDS, KVCache.empty(m2, IDS.size)), forward(m2, IDS, backend="reference"))


def test_forward_fast_declines_what_it_cannot_prove():
    """Group sizes that are not a multiple of 16, activation groups on the range-mode scale,
    contexts beyond the PV int32 bound and non-contiguous masks go the op-by-op way (and
    forward() still equals the reference)."""
    g24 = make_model(9, group_size=24, dim=48, n_heads=3, n_kv_heads=1)
    assert "group_size" in fastpath.prepare(g24) and "group_size" in runner.fused_status(g24)
    assert same(runner.forward(g24, IDS), forward(g24, IDS, backend="reference"))
    assert "group_size" in runner.last_decline()
    agr = make_model(5, a_group=16, w_bits=4, a_bits=4, group_size=32, spec=Spec.paper())
    assert "a_group needs requant_mode 'fitted'" in runner.fused_status(agr)   # SPEC 4.8
    m = make_model(8, n_layers=1)
    assert fastpath.visible_ranges(np.array([[True, False, True]])) is None
    assert fastpath.visible_ranges(np.array([[False, False]])) is None
    lo, hi = fastpath.visible_ranges(np.array([[False, True, True], [True, False, False]]))
    assert lo.tolist() == [1, 0] and hi.tolist() == [3, 1]
    assert fastpath._max_context(8, 8) == (2 ** 31 - 1) // 255 ** 2
    odd = KVCache.empty(m, 4)
    odd.k_m = [a.astype(np.int32) for a in odd.k_m]                 # not what empty() makes
    pos, vis = _positions(0, 2, None)
    with trusted():
        assert "cache.k_m" in forward_fast(m, IDS[:2], pos, vis, odd)
    cache = KVCache.empty(m, 4)
    cache.length = fastpath.prepare(m).max_context
    pos, vis = _positions(0, 1, None)
    with trusted():
        assert "PV int32 bound" in forward_fast(m, IDS[:1], pos, vis, cache)
    assert runner.fused_status(m) is None


def test_cache_check_is_redone_when_an_array_is_replaced(monkeypatch):
    """The fused path checks a cache's arrays once per set of array objects: a decode step
    on the same cache does not walk them again, but an array replaced after a good call
    (here with the wrong dtype) is caught on the next call, naming it, and on every call
    after until it is put right; the same cache under a model with another layer count is
    checked again and declined."""
    m = make_model(8, n_layers=2)
    cache = KVCache.empty(m, 6)
    walks = []
    real = fastpath._cache_problem
    monkeypatch.setattr(fastpath, "_cache_problem", lambda c, cfg: walks.append(1) or real(c, cfg))

    def step(model, t0, n):
        pos, vis = _positions(t0, n, None)
        return forward_fast(model, IDS[t0:t0 + n], pos, vis, cache)

    with trusted():
        assert not isinstance(step(m, 0, 2), str)
        assert not isinstance(step(m, 2, 1), str)
        assert len(walks) == 1
        good = cache.v_m[0]
        cache.v_m[0] = good.astype(np.int32)
        assert "cache.v_m" in step(m, 3, 1)
        assert "cache.v_m" in step(m, 3, 1)
        assert len(walks) == 3
        cache.v_m[0] = good
        assert not isinstance(step(m, 3, 1), str)
        assert len(walks) == 4
        other = make_model(8, n_layers=1)
        assert "has 2 layers" in step(other, 4, 1)
        assert len(walks) == 5
        cache.k_q = 5
        assert "cache.k_q is not a list" in step(m, 4, 1)


def test_grown_cache_gets_derived_copies_of_its_capacity():
    """Arrays replaced by larger ones (and the capacity raised) give the fused path's
    derived copies the new capacity, and the logits stay those of a fresh cache."""
    m = make_model(8, n_layers=1)
    cache = KVCache.empty(m, 3)
    with trusted():
        pos, vis = _positions(0, 2, None)
        assert not isinstance(forward_fast(m, IDS[:2], pos, vis, cache), str)
        big = KVCache.empty(m, 8)
        for name, _, _ in fastpath._CACHE_DTYPES:
            for new, old in zip(getattr(big, name), getattr(cache, name)):
                new[:old.shape[0]] = old
            setattr(cache, name, getattr(big, name))
        cache.capacity = 8
        pos, vis = _positions(2, 5, None)
        out, _ = forward_fast(m, IDS[2:7], pos, vis, cache)
        assert fastpath.side_get(fastpath._derived, cache).k_par[0].shape[2] == 8
        fresh = KVCache.empty(m, 8)
        pos, vis = _positions(0, 7, None)
        want, _ = forward_fast(m, IDS[:7], pos, vis, fresh)
    assert np.array_equal(out, want[2:])


def test_runner_logs_why_it_runs_the_graph(caplog):
    """A decline is one debug line naming the reason; the result is the graph's."""
    g24 = make_model(9, group_size=24, dim=48, n_heads=3, n_kv_heads=1)
    with caplog.at_level(logging.DEBUG, logger="intsim.runner"):
        got = runner.forward(g24, IDS[:3])
    assert same(got, forward(g24, IDS[:3], backend="reference"))
    assert any("declined" in r.getMessage() and "group_size" in r.getMessage()
               for r in caplog.records)
    m = make_model(5)
    runner.forward(m, IDS[:3])
    assert runner.last_decline() is None
