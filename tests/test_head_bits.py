"""The LM head's input width (``Widths.head_a_bits``, ``intsim convert --head-abits``;
docs/SPEC.md section 13.1): the final DI-Norm's output is quantized to its own width for
the head's DI-MatMul while every other matmul input stays at A.

* the graph calls the head with that width and every other DI-MatMul with A, and the
  option changes the logits (a model converted without it differs only there);
* the graph on both backends and the fused path (row and full variants, prefill and
  decode) give the same integers with the option on: the small model converted with
  ``--abits 4 --head-abits 8`` and synthetic models (a wider head, a narrower one);
* bad values are refused naming the field (Widths, the converter's CLI, a model file's
  header), and nothing is written;
* the header round trip: the key is written only when set, a value equal to A is the
  default (the same file), and loading gives the widths back;
* the head accumulator's bound at the wider width (SPEC section 13.1), recomputed in
  Python integers at the extremes.
"""
from __future__ import annotations


import numpy as np
import pytest

from converters.synthetic import make_model
from intsim import llama, runner
from intsim.errors import IntsimError, IntsimOverflowError
from intsim.llama import KVCache
from intsim.matmul import B_LIMIT, M_LIMIT, P_LIMIT, QWeight, check_bounds, di_matmul_acc
from intsim.model import Widths
from intsim.modelfile import load_model, read_header, save_model
from intsim.qtensor import Dyadic, QTensor
from model_helpers import Calls, convert_small, convert_variants, rewrite_widths, ROOT, same

IDS = np.array([1107, 15, 1671, 33, 400, 9, 2718, 77])


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """The small model at A = 4, converted with and without --head-abits 8."""
    return convert_variants(tmp_path_factory.mktemp("headbits"), {
        "a4h8": ["--abits", "4", "--head-abits", "8"],
        "a4": ["--abits", "4"]})


def test_the_graph_gives_the_head_its_own_width(small):
    m, base = load_model(small["a4h8"]), load_model(small["a4"])
    assert (m.widths.a_bits, m.widths.head_a_bits, m.widths.head_in_bits) == (4, 8, 8)
    assert (base.widths.head_a_bits, base.widths.head_in_bits) == (None, 4)
    tap = Calls()
    logits, scale = llama.forward(m, IDS, backend="reference", tap=tap)
    widths = {name: call.args[2] for name, call in tap.calls
              if getattr(call.fn, "__name__", "") in ("di_matmul", "di_matmul_acc")}
    assert widths.pop("logits") == 8
    assert len(widths) == 7 * m.config.n_layers and set(widths.values()) == {4}
    # the head's DI-MatMul at 8 bits on the graph's own final-norm output
    final = next(call.result[0] for name, call in tap.calls if name == "final_norm")
    P, s, _ = di_matmul_acc(final, m.w_head, 8, m.spec, "reference")
    assert np.array_equal(P, logits) and np.array_equal(s.m, scale.m) and np.array_equal(s.k, scale.k)
    # the same model without the option: identical up to the final norm, other logits
    tap_b = Calls()
    lb, _ = llama.forward(base, IDS, backend="reference", tap=tap_b)
    final_b = next(call.result[0] for name, call in tap_b.calls if name == "final_norm")
    assert np.array_equal(final.q, final_b.q) and np.array_equal(final.scale.m, final_b.scale.m)
    assert not np.array_equal(lb, logits)
    P4, _, _ = di_matmul_acc(final, m.w_head, 4, m.spec, "reference")
    assert np.array_equal(P4, lb)


def test_small_model_graph_fused_and_reference_agree(small):
    m = load_model(small["a4h8"])
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


@pytest.mark.parametrize("kw", [dict(w_bits=4, a_bits=4, head_a_bits=8, group_size=16),
                                dict(a_bits=6, head_a_bits=8, norm_weights=True),
                                dict(a_bits=8, head_a_bits=3, alpha=True)],
                         ids=["w4a4_head8_g16", "a6_head8_normw", "a8_head3"])
@pytest.mark.parametrize("path", ["rows", "full"])
def test_synthetic_models_fused_equal_reference(kw, path):
    from intsim.errors import trusted
    from intsim.fastpath import forward_fast
    m = make_model(11, **kw)
    plain = make_model(11, **{k: v for k, v in kw.items() if k != "head_a_bits"})
    ids = IDS % m.config.vocab_size
    ref = llama.forward(m, ids, backend="reference")
    assert not np.array_equal(ref[0], llama.forward(plain, ids, backend="reference")[0])
    cache = KVCache.empty(m, ids.size)
    got = []
    for lo, hi in ((0, 5), (5, 6), (6, 7), (7, 8)):
        pos, vis = llama._positions(cache.length, hi - lo, None)
        with trusted():
            out = forward_fast(m, ids[lo:hi], pos, vis, cache, path=path)
        assert not isinstance(out, str), out
        got.append(out)
    assert np.array_equal(np.concatenate([g[0] for g in got]), ref[0])
    assert np.array_equal(np.concatenate([g[1].k for g in got]), ref[1].k)


# ------------------------------------------------------------------ bad values

@pytest.mark.parametrize("bad,match", [(9, r"head_a_bits: 9 is outside \[2, 8\]"),
                                       (1, r"head_a_bits: 1 is outside \[2, 8\]"),
                                       (True, r"head_a_bits: expected an integer, got bool"),
                                       ("8", r"head_a_bits: expected an integer, got str")])
def test_widths_refuse_bad_head_a_bits(bad, match):
    with pytest.raises(IntsimError, match=match):
        Widths(a_bits=4, head_a_bits=bad)


def test_cli_refuses_a_bad_head_width_and_writes_nothing(tmp_path):
    out = tmp_path / "m.intsim"
    for v in ("9", "0"):
        r = convert_small(out, "--abits", "4", "--head-abits", v)
        assert r.returncode == 2
        assert r.stderr.strip() == f"intsim: error: widths: head_a_bits: {v} is outside [2, 8]"
        assert list(tmp_path.iterdir()) == []
    r = convert_small(out, "--head-abits", "eight")
    assert r.returncode == 2 and "--head-abits: invalid int value: 'eight'" in r.stderr


@pytest.mark.parametrize("bad,match", [(16, r"metadata 'widths': head_a_bits: 16 is outside \[2, 8\]"),
                                       ("8", r"metadata 'widths': head_a_bits: expected an integer"),
                                       (8.0, r"metadata 'widths': head_a_bits: expected an integer")])
def test_loader_refuses_a_bad_header_value_naming_the_file(small, tmp_path, bad, match):
    p = rewrite_widths(small["a4h8"], tmp_path / "bad.intsim", head_a_bits=bad)
    with pytest.raises(IntsimError, match=match) as ei:
        load_model(p)
    assert str(p) in str(ei.value)


# ------------------------------------------------------------------ the header round trip

def test_header_round_trip(small, tmp_path):
    h = read_header(small["a4h8"])
    assert h["widths"]["head_a_bits"] == 8 and h["widths"]["a_bits"] == 4
    assert "head_a_bits" not in read_header(small["a4"])["widths"]
    m = load_model(small["a4h8"])
    again = load_model(save_model(m, tmp_path / "again.intsim", b'{"x": 1}'))
    assert again.widths == m.widths and again.widths.head_a_bits == 8
    # an explicit null, and a value equal to A, both read as the default
    for v in (None, 4):
        p = rewrite_widths(small["a4"], tmp_path / f"h{v}.intsim", head_a_bits=v)
        assert load_model(p).widths == load_model(small["a4"]).widths
    assert Widths(a_bits=6, head_a_bits=6) == Widths(a_bits=6) and Widths(a_bits=6).to_dict() == \
        {"w_bits": 8, "a_bits": 6, "group_size": 0, "head_w_bits": 8, "emb_bits": 8, "qk_bits": 16}


def test_head_width_equal_to_a_writes_the_default_file(tmp_path):
    a, b = tmp_path / "a.intsim", tmp_path / "b.intsim"
    assert convert_small(a, "--abits", "6").returncode == 0
    assert convert_small(b, "--abits", "6", "--head-abits", "6").returncode == 0
    assert a.read_bytes() == b.read_bytes()


# ------------------------------------------------------------------ the bound (SPEC 13.1)

#: the largest model dim D per (head input width, head weight width): the head is one group
#: per output channel (G = K = D), so D (2^Ah - 1)(2^Wh - 1) <= 2^31 - 1; docs/SPEC.md 13.1
HEAD_DIM_LIMITS = {(8, 8): 33025, (6, 8): 133674, (4, 8): 561433, (8, 6): 133674, (8, 4): 561433}


def test_head_dim_limits_are_the_documented_ones():
    for (ah, wh), d in HEAD_DIM_LIMITS.items():
        per = (2 ** ah - 1) * (2 ** wh - 1)
        assert d * per <= 2 ** 31 - 1 < (d + 1) * per
    spec13 = (ROOT / "docs" / "SPEC.md").read_text().split("### 13.1", 1)[1].split("\n## ", 1)[0]
    for d in set(HEAD_DIM_LIMITS.values()):
        assert f"{d:,}".replace(",", " ") in spec13, d


def _final_norm_rows(D: int, top: int) -> QTensor:
    """Two rows shaped like the final DI-Norm's output (16-bit signed codes): all at +max
    and all at -max.  At scale m = top = 2^Ah - 1 the fitted input scale is 2^15, so step 1
    gives codes top against zero point 0, and 0 against top (rnd(32767 top / 2^15) = top)."""
    q = np.stack([np.full(D, 32767), np.full(D, -32767)]).astype(np.int16)
    return QTensor(q, np.zeros(2, np.int32), Dyadic(np.array([top, top]), np.array([0, 0])), 16, True)


@pytest.mark.parametrize("ah", [8, 6])
def test_head_accumulator_at_its_bound_at_the_wider_width(ah):
    """At the head's input width Ah, with the head's per-channel weight at D = the largest
    dim: |acc| = D (2^Ah - 1)(2^8 - 1) exactly, and P (m = 2^24 - 1, |b| = 2^32 - 1) equals
    the Python-integer sum; one column more is refused at Ah but the same head passes at
    A = 4 (the bound is the head's own, at its own width)."""
    D = HEAD_DIM_LIMITS[(ah, 8)]
    top = 2 ** ah - 1
    w = QWeight(np.full((2, D), 255, np.uint8), 8, D, np.full((2, 1), M_LIMIT),
                np.array([[B_LIMIT], [-B_LIMIT]]), 0)
    for backend in ("reference", "numba"):
        P, _, stats = di_matmul_acc(_final_norm_rows(D, top), w, ah, backend=backend)
        assert stats["acc_absmax"] == stats["acc_bound"] == D * top * 255 <= 2 ** 31 - 1
        want = [[sgn * (M_LIMIT * D * top * 255 + b * D * top) for b in (B_LIMIT, -B_LIMIT)]
                for sgn in (1, -1)]
        assert P.tolist() == want and max(abs(v) for r in want for v in r) <= stats["p_bound"] <= P_LIMIT
    wide = QWeight(np.zeros((1, D + 1), np.uint8), 8, D + 1, np.ones((1, 1), np.int64),
                   np.zeros((1, 1), np.int64), 0)
    with pytest.raises(IntsimOverflowError, match="group_size"):
        check_bounds(D + 1, wide, ah)
    check_bounds(D + 1, wide, 4)
