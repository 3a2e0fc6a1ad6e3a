"""Wider probabilities into PV (``Widths.pv_bits``, ``intsim convert --pv-bits``; docs/SPEC.md
section 14.2): DI-ClippedSoftmax's probabilities, folded with the value scales, are
requantized per row to P bits instead of A before the PV matmul.

* the graph requantizes the probabilities (op ``layers.N.attn.p``) to P bits and PV reads
  those codes, every other width stays A, and the option changes the logits;
* the graph on both backends and the fused path (row and full variants, prefill and
  decode) give the same integers with the option on: the small model converted with
  ``--abits 4 --pv-bits 8`` and synthetic models up to P = 15 (the int16 probability row);
* bad values are refused naming the field (Widths, the converter's CLI, a model file's
  header), and nothing is written;
* the header round trip: the key is written only when set, a value equal to A is the
  default (the same file), and loading gives the widths back;
* PV's int32 bound at P bits (SPEC 14.2's table): attained exactly by ``pv`` at the
  longest context, one position more refused naming the op; the fused path runs the
  longest context and declines one position more by name; the overflow report's PV
  entry states the bound at the model's widths.
"""
from __future__ import annotations


import numpy as np
import pytest

from converters.synthetic import make_model
from intsim import fastpath, llama, runner
from intsim.attention import PV_BITS_LIMIT, pv, pv_max_context
from intsim.errors import IntsimError, IntsimOverflowError, trusted
from intsim.llama import KVCache
from intsim.model import Widths
from intsim.modelfile import load_model, read_header, save_model
from intsim.overflow import overflow_report
from intsim.requant import requant_rows
from model_helpers import Calls, convert_small, convert_variants, rewrite_widths, ROOT, same

IDS = np.array([1107, 15, 1671, 33, 400, 9, 2718, 77])


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """The small model at A = 4, converted with and without --pv-bits 8."""
    return convert_variants(tmp_path_factory.mktemp("pvbits"), {
        "a4p8": ["--abits", "4", "--pv-bits", "8"],
        "a4": ["--abits", "4"]})


# ------------------------------------------------------------------ the graph's wiring

def test_the_graph_requantizes_the_probabilities_to_pv_bits(small):
    m, base = load_model(small["a4p8"]), load_model(small["a4"])
    assert (m.widths.a_bits, m.widths.pv_bits, m.widths.pv_in_bits) == (4, 8, 8)
    assert (base.widths.pv_bits, base.widths.pv_in_bits) == (None, 4)
    tap, tap_b = Calls(), Calls()
    logits, _ = llama.forward(m, IDS, backend="reference", tap=tap)
    lb, _ = llama.forward(base, IDS, backend="reference", tap=tap_b)
    for li in range(m.config.n_layers):
        p = tap.by_name[f"layers.{li}.attn.p"]
        assert p.args[2] == 8 and p.fn is requant_rows
        codes = p.result[0]
        assert codes.bits == 8 and codes.q.dtype == np.uint8 and not codes.zp.any()
        # every row's largest code uses the top bit of 8 (the fitted scale is rounded up,
        # so the row maximum lies within a mantissa step below 2^P - 1): P is 8 bits wide
        assert int(codes.q.max()) == 255 and (codes.q.max(axis=-1) >= 2 ** 7).all()
        # PV reads exactly those codes (zero point 0)
        assert np.array_equal(tap.by_name[f"layers.{li}.attn.pv"].args[0], codes.q.astype(np.int64))
        # the other requantizations of attention stay at A
        assert tap.by_name[f"layers.{li}.attn.q"].args[2] == tap.by_name[f"layers.{li}.attn.k"].args[2] == 4
        assert tap.by_name[f"layers.{li}.attn.v_proj"].args[2:4] == (4, 4)
        assert tap_b.by_name[f"layers.{li}.attn.p"].args[2] == 4
    # identical up to layer 0's probabilities, whose codes are the same op at 8 bits
    p0, p0b = tap.by_name["layers.0.attn.p"], tap_b.by_name["layers.0.attn.p"]
    assert np.array_equal(p0.args[0], p0b.args[0])
    q8, _ = requant_rows(p0b.args[0], p0b.args[1], 8, False, m.spec, "reference", name="p")
    assert np.array_equal(q8.q, p0.result[0].q) and np.array_equal(q8.scale.k, p0.result[0].scale.k)
    assert not np.array_equal(lb, logits)


def test_small_model_graph_fused_and_reference_agree(small):
    m = load_model(small["a4p8"])
    assert runner.fused_status(m) is None
    ref = llama.forward(m, IDS, backend="reference")
    assert same(llama.forward(m, IDS, backend="numba"), ref)
    fused = runner.forward(m, IDS)
    assert runner.last_decline() is None and same(fused, ref)
    cache = KVCache.empty(m, IDS.size)
    steps = [runner.forward(m, IDS[:5], cache)] + [runner.forward(m, IDS[i:i + 1], cache)
                                                   for i in range(5, IDS.size)]
    assert runner.last_decline() is None
    assert np.array_equal(np.concatenate([s[0] for s in steps]), ref[0])
    assert np.array_equal(np.concatenate([s[1].m for s in steps]), ref[1].m)


@pytest.mark.parametrize("kw", [dict(w_bits=4, a_bits=4, pv_bits=8, group_size=16),
                                dict(a_bits=6, pv_bits=12, norm_weights=True, head_a_bits=8),
                                dict(a_bits=8, pv_bits=15, alpha=True, n_kv_heads=4)],
                         ids=["w4a4_p8_g16", "a6_p12_normw_head8", "a8_p15_mha"])
@pytest.mark.parametrize("path", ["rows", "full"])
def test_synthetic_models_graph_and_fused_equal_reference(kw, path):
    m = make_model(11, **kw)
    plain = make_model(11, **{k: v for k, v in kw.items() if k != "pv_bits"})
    ids = IDS % m.config.vocab_size
    ref = llama.forward(m, ids, backend="reference")
    assert not np.array_equal(ref[0], llama.forward(plain, ids, backend="reference")[0])
    if path == "rows":
        assert same(llama.forward(m, ids, backend="numba"), ref)
    cache = KVCache.empty(m, ids.size)
    got = []
    for lo, hi in ((0, 5), (5, 6), (6, 7), (7, 8)):
        pos, vis = llama._positions(cache.length, hi - lo, None)
        with trusted():
            out = fastpath.forward_fast(m, ids[lo:hi], pos, vis, cache, path=path)
        assert not isinstance(out, str), out
        got.append(out)
    assert np.array_equal(np.concatenate([g[0] for g in got]), ref[0])
    assert np.array_equal(np.concatenate([g[1].k for g in got]), ref[1].k)
    assert fastpath.prepare(m).p_proto.dtype == (np.uint8 if kw["pv_bits"] <= 8 else np.int16)


# ------------------------------------------------------------------ bad values

@pytest.mark.parametrize("a,bad,match", [
    (4, 3, r"pv_bits: 3 is outside \[a_bits = 4, 15\]"),
    (8, 2, r"pv_bits: 2 is outside \[a_bits = 8, 15\]"),
    (4, 16, r"pv_bits: 16 is outside \[a_bits = 4, 15\]"),
    (4, True, r"pv_bits: expected an integer, got bool"),
    (4, "8", r"pv_bits: expected an integer, got str")])
def test_widths_refuse_bad_pv_bits(a, bad, match):
    with pytest.raises(IntsimError, match=match):
        Widths(a_bits=a, pv_bits=bad)


def test_cli_refuses_a_bad_pv_width_and_writes_nothing(tmp_path):
    out = tmp_path / "m.intsim"
    for a, v in (("4", "3"), ("8", "16")):
        r = convert_small(out, "--abits", a, "--pv-bits", v)
        assert r.returncode == 2
        assert r.stderr.strip().startswith(f"intsim: error: widths: pv_bits: {v} is outside "
                                           f"[a_bits = {a}, 15]"), r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
        assert list(tmp_path.iterdir()) == []
    r = convert_small(out, "--pv-bits", "eight")
    assert r.returncode == 2 and "--pv-bits: invalid int value: 'eight'" in r.stderr
    help_text = convert_small(out, "--help").stdout
    assert "--pv-bits P" in help_text and "section 14.2" in help_text


@pytest.mark.parametrize("bad,match", [(16, r"metadata 'widths': pv_bits: 16 is outside \[a_bits = 4, 15\]"),
                                       (2, r"metadata 'widths': pv_bits: 2 is outside \[a_bits = 4, 15\]"),
                                       ("8", r"metadata 'widths': pv_bits: expected an integer"),
                                       (8.0, r"metadata 'widths': pv_bits: expected an integer")])
def test_loader_refuses_a_bad_header_value_naming_the_file(small, tmp_path, bad, match):
    p = rewrite_widths(small["a4p8"], tmp_path / "bad.intsim", pv_bits=bad)
    with pytest.raises(IntsimError, match=match) as ei:
        load_model(p)
    assert str(p) in str(ei.value)


# ------------------------------------------------------------------ the header round trip

def test_header_round_trip(small, tmp_path):
    h = read_header(small["a4p8"])
    assert h["widths"]["pv_bits"] == 8 and h["widths"]["a_bits"] == 4
    assert "pv_bits" not in read_header(small["a4"])["widths"]
    m = load_model(small["a4p8"])
    again = load_model(save_model(m, tmp_path / "again.intsim", b'{"x": 1}'))
    assert again.widths == m.widths and again.widths.pv_bits == 8
    # an explicit null, and a value equal to A, both read as the default
    for v in (None, 4):
        p = rewrite_widths(small["a4"], tmp_path / f"p{v}.intsim", pv_bits=v)
        assert load_model(p).widths == load_model(small["a4"]).widths
    assert Widths(a_bits=6, pv_bits=6) == Widths(a_bits=6) and "pv_bits" not in Widths(a_bits=6).to_dict()
    assert Widths(a_bits=6, pv_bits=15).to_dict()["pv_bits"] == 15


def test_pv_width_equal_to_a_writes_the_default_file(tmp_path):
    a, b = tmp_path / "a.intsim", tmp_path / "b.intsim"
    assert convert_small(a, "--abits", "6").returncode == 0
    assert convert_small(b, "--abits", "6", "--pv-bits", "6").returncode == 0
    assert a.read_bytes() == b.read_bytes()


# ------------------------------------------------------------------ the bound (SPEC 14.2)

#: the longest context per (A, P): S (2^A - 1)(2^P - 1) <= 2^31 - 1; docs/SPEC.md 14.2's table
CONTEXT_LIMITS = {(4, 4): 9544371, (4, 6): 2272469, (4, 8): 561433, (4, 10): 139946, (4, 12): 34961,
                  (4, 15): 4369, (6, 6): 541064, (6, 8): 133674, (6, 10): 33320, (6, 12): 8324,
                  (6, 15): 1040, (8, 8): 33025, (8, 10): 8232, (8, 12): 2056, (8, 15): 257}


def test_context_limits_are_the_documented_ones():
    for (a, p), s in CONTEXT_LIMITS.items():
        per = (2 ** a - 1) * (2 ** p - 1)
        assert s * per <= 2 ** 31 - 1 < (s + 1) * per
        assert pv_max_context(a, p) == fastpath._max_context(a, p) == s
    assert PV_BITS_LIMIT == 15 and (2 ** PV_BITS_LIMIT - 1) == np.iinfo(np.int16).max
    spec = (ROOT / "docs" / "SPEC.md").read_text().split("### 14.2", 1)[1].split("\n## ", 1)[0]
    for s in set(CONTEXT_LIMITS.values()):
        assert f"{s:,}".replace(",", " ") in spec, s


def _pv_at_extremes(S: int, a: int, p: int):
    """Two query heads on one kv head: head 0's probabilities all 2^P - 1, head 1's zero
    but for one; values +-(2^A - 1) (centered), hd = 2."""
    pc = np.zeros((2, 1, S), np.int64)
    pc[0] = 2 ** p - 1
    pc[1, 0, S // 2] = 2 ** p - 1
    vc = np.empty((S, 1, 2), np.int64)
    vc[:, 0, 0], vc[:, 0, 1] = 2 ** a - 1, -(2 ** a - 1)
    return pc, vc


@pytest.mark.parametrize("a,p", [(8, 15), (8, 12), (6, 15)])
def test_pv_accumulator_at_its_bound_and_one_position_more_refused(a, p):
    S = CONTEXT_LIMITS[(a, p)]
    pc, vc = _pv_at_extremes(S, a, p)
    top = S * (2 ** p - 1) * (2 ** a - 1)
    for backend in ("reference", "numba"):
        out = pv(pc, vc, backend)
        assert out.tolist() == [[[top, -top], [(2 ** p - 1) * (2 ** a - 1), -(2 ** p - 1) * (2 ** a - 1)]]]
        assert top <= 2 ** 31 - 1
        pc1, vc1 = _pv_at_extremes(S + 1, a, p)
        with pytest.raises(IntsimOverflowError, match=r"p @ v: .* exceeds the int32 accumulator"):
            pv(pc1, vc1, backend)


def test_fused_path_runs_the_longest_context_and_declines_one_more():
    """A = 8, P = 15: 257 positions.  Prefilled to 256 and one decode step, the fused path
    equals the graph; the 258th position is declined by name (the runner then runs the
    graph, whose PV refuses by its own check only where the data reach the bound)."""
    m = make_model(4, n_layers=1, a_bits=8, pv_bits=15, max_pos=300)
    fm = fastpath.prepare(m)
    assert fm.max_context == 257 == pv_max_context(8, 15)
    ids = (np.arange(258) * 37 + 5) % m.config.vocab_size
    ref = llama.forward(m, ids[:257], backend="reference")
    cache = KVCache.empty(m, 258)
    got = [runner.forward(m, ids[:256], cache), runner.forward(m, ids[256:257], cache)]
    assert runner.last_decline() is None and cache.length == 257
    assert np.array_equal(np.concatenate([g[0] for g in got]), ref[0])
    pos, vis = llama._positions(cache.length, 1, None)
    with trusted():
        why = fastpath.forward_fast(m, ids[257:], pos, vis, cache)
    assert why == "258 positions exceed the PV int32 bound (257)" and cache.length == 257
    # the same widths at A = 4, P = 8: 561 433 positions (the cache's length stands in)
    m4 = make_model(4, n_layers=1, a_bits=4, pv_bits=8)
    cache = KVCache.empty(m4, 4)
    cache.length = fastpath.prepare(m4).max_context
    assert cache.length == 561433
    with trusted():
        assert "561434 positions exceed the PV int32 bound (561433)" == \
            fastpath.forward_fast(m4, ids[:1], pos[:1] * 0, np.ones((1, 1), bool), cache)


def test_overflow_report_states_pv_bound_at_the_model_widths():
    m = make_model(6, a_bits=4, pv_bits=10)
    ids = IDS % m.config.vocab_size
    rep = overflow_report(m, ids, policy="saturate")
    e = next(x for x in rep.entries if x.name == "layers.0.attn.pv.acc")
    assert e.bound == ids.size * (2 ** 4 - 1) * (2 ** 10 - 1)
    q = next(x for x in rep.entries if x.name == "layers.0.attn.qk.acc")
    assert q.bound == m.config.head_dim * 15 ** 2
