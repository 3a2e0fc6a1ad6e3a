"""converters.ablate: the hybrid float/integer forward and the spec override of intsim ppl.

The hybrid must be the integer model exactly when every operator is integer, and the
float reference exactly when every operator is float; in between, each operator switched
in alone must stay close to the float model (a broken hand-over would not)."""
import inspect

import numpy as np
import pytest

from converters.ablate import OPS, Hybrid, dequantize, fake_quant, wide
from converters.convert import build_model
from converters.evaluate import dequantize_logits, nll_from_logits, perplexity
from converters.float_model import FloatLlama
from converters.ppl import int_nll_fn, override_spec
from intsim.errors import IntsimError
from intsim.llama import KVCache, attention, forward
from intsim.options import Spec
from intsim.rope import rope
from tiny_llama import make_tiny_hf

#: 140 tokens: two query blocks of the float attention (BLOCK = 128)
T = 140


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    src = make_tiny_hf(tmp_path_factory.mktemp("ablate") / "hf", n_layers=2, dim=64, n_heads=4,
                       n_kv_heads=2, vocab_size=300, max_pos=256)
    model, _ = build_model(src)
    ids = np.random.default_rng(7).integers(0, 300, T)
    return src, model, FloatLlama.from_hf(src), ids


def _models(tiny):
    """The folded-gain model, and the kept-gain one where the converter offers it."""
    src, model, _, _ = tiny
    out = [model]
    if "norm_gain" in inspect.signature(build_model).parameters:
        out.append(build_model(src, norm_gain="channel")[0])
    out.append(build_model(src, a_bits=4, head_a_bits=8)[0])      # the LM head input wider than A
    return out


def test_all_integer_equals_the_integer_model_exactly(tiny):
    _, _, fm, ids = tiny
    for model in _models(tiny):
        P, s = forward(model, ids, backend="reference")   # == the numba paths (test_llama)
        want = dequantize_logits(P, s.m, s.k)
        got = Hybrid(model, fm, OPS).logits(ids)
        assert np.array_equal(got, want)


def test_all_integer_perplexity_equals_intsim_ppl(tiny):
    _, model, fm, ids = tiny
    a = perplexity(Hybrid(model, fm, OPS).nll, ids, 64)
    b = perplexity(int_nll_fn(model, backend="reference"), ids, 64)
    assert a["ppl"] == b["ppl"] and a["tokens"] == b["tokens"] == 63 + 63 + 11


def test_all_float_equals_the_float_model_exactly(tiny):
    _, model, fm, ids = tiny
    assert np.array_equal(Hybrid(model, fm, (), "float").logits(ids), fm.logits(ids))


#: mean NLL (nats) tolerance of integer operators switched in, against the float model.
#: Measured on this model: the W8A8 fake-quant base is 0.002 nats from float, each operator
#: alone or all of them together within 0.005.  Halving a hand-over scale (a wrong exponent)
#: moves the NLL by 0.026 (SwiGLU) to 1.4 (DI-MatMul), so 0.02 catches it with 4x margin
#: over the measured spread.
NLL_TOL = 0.02


@pytest.mark.parametrize("base", ["fake", "float"])
def test_each_operator_alone_stays_close_to_float(tiny, base):
    _, model, fm, ids = tiny
    ref = nll_from_logits(fm.logits(ids), ids).mean()
    for op in OPS:
        got = Hybrid(model, fm, (op,), base).nll(ids).mean()
        assert abs(got - ref) < NLL_TOL, (op, base, got, ref)


def test_cumulative_chain_runs_and_stays_close(tiny):
    _, model, fm, ids = tiny
    ref = nll_from_logits(fm.logits(ids), ids).mean()
    for i in range(len(OPS) + 1):
        got = Hybrid(model, fm, OPS[:i]).nll(ids).mean()
        assert np.isfinite(got) and abs(got - ref) < NLL_TOL, (OPS[:i], got, ref)


def test_an_integer_operator_changes_the_result(tiny):
    """Switching an operator really swaps it (the hybrid is not ignoring the choice)."""
    _, model, fm, ids = tiny
    base = Hybrid(model, fm, ()).logits(ids[:40])
    for op in OPS:
        assert not np.array_equal(Hybrid(model, fm, (op,)).logits(ids[:40]), base), op
    base = Hybrid(model, fm, ("matmul",)).logits(ids[:40])
    for op in ("softmax", "rope"):      # in the integer attention graph: the op vs its stand-in
        assert not np.array_equal(Hybrid(model, fm, ("matmul", op)).logits(ids[:40]), base), op


def test_attention_stand_in_ops_take_the_ops_place(tiny):
    """intsim.llama.attention's ``ops`` hook, which the hybrid's float RoPE / softmax ride
    on: a stand-in gets the op's own arguments (both RoPE calls, with H then Hkv heads) and
    its result is what flows on; without one the graph is forward()'s."""
    _, model, _, ids = tiny
    c, T = model.config, 24
    taps = {}
    forward(model, ids[:T], backend="reference", tap=lambda name, t: taps.setdefault(name, t))
    hn = taps.get("layers.1.attn_norm_w", taps["layers.1.attn_norm"])      # attention's input
    want = taps["layers.1.attn.o_proj"]
    pos = np.arange(T)
    visible = pos[None, :] <= pos[:, None]
    heads = []

    def spy(x, positions, cos_q, sin_q, n_heads, *args, **kwargs):
        heads.append(n_heads)
        return rope(x, positions, cos_q, sin_q, n_heads, *args, **kwargs)

    def negated(*args, **kwargs):        # q.k unchanged where both are negated: K only
        y, s = rope(*args, **kwargs)
        return (-y if args[4] == c.n_kv_heads else y), s

    def run(ops):
        return attention(model, 1, hn, pos, visible, KVCache.empty(model, T), "reference", None,
                         ops=ops)
    for got in (run(None), run({}), run({rope: spy})):
        assert all(np.array_equal(a, b) for a, b in zip(
            (got.q, got.zp, got.scale.m, got.scale.k), (want.q, want.zp, want.scale.m, want.scale.k)))
    assert heads == [c.n_heads, c.n_kv_heads]
    assert not np.array_equal(run({rope: negated}).q, want.q)


def test_hybrid_refuses_bad_arguments(tiny):
    _, model, fm, _ = tiny
    with pytest.raises(ValueError, match="int_ops"):
        Hybrid(model, fm, ("exp",))
    with pytest.raises(ValueError, match="base"):
        Hybrid(model, fm, (), "half")


def test_wide_hand_over_is_exact_to_2_pow_minus_39():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((5, 33)) * np.array([1e-6, 1.0, 3e4, 0.0, 1.0])[:, None]
    x[4, :] = 0.0
    x[4, 3] = -2.5
    w = wide(x)
    err = np.abs(dequantize(w) - x).max(axis=1)
    amax = np.abs(x).max(axis=1)
    assert np.all(err <= amax * 2.0 ** -39)
    assert np.abs(w.q).max() < 2 ** 39 and np.all(dequantize(w)[3] == 0)


def test_fake_quant_error_is_half_a_step_and_keeps_zero():
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((6, 50)) + np.arange(6)[:, None]).astype(np.float32)
    y = fake_quant(x, 8)
    lo, hi = np.minimum(x.min(1), 0), np.maximum(x.max(1), 0)
    step = (hi - lo) / 255
    assert np.all(np.abs(y - x).max(1) <= step * 0.5 * (1 + 1e-5))
    assert np.array_equal(fake_quant(np.zeros((2, 4)), 8), np.zeros((2, 4), np.float32))
    assert len(np.unique(y[0])) <= 256


# ------------------------------------------------------------------ intsim ppl --spec

def _ref_logits(model, ids):
    return forward(model, ids, backend="reference")[0]


def test_spec_override_of_a_runtime_option_equals_reconversion(tiny):
    src, model, _, ids = tiny
    over = override_spec(model, '{"softmax_clip": 2, "softmax_in_bits": 8}')
    conv, _ = build_model(src, spec=Spec(softmax_clip=2, softmax_in_bits=8))
    a, b = _ref_logits(over, ids[:50]), _ref_logits(conv, ids[:50])
    assert np.array_equal(a, b) and not np.array_equal(a, _ref_logits(model, ids[:50]))
    assert over.meta["spec_override"] == {"softmax_clip": 2, "softmax_in_bits": 8}


def test_spec_override_of_m_bits_refits_the_embedding_like_reconversion(tiny):
    src, model, _, ids = tiny
    over = override_spec(model, {"m_bits": 5})
    conv, _ = build_model(src, spec=Spec(m_bits=5))
    for name in ("emb_q", "emb_m", "emb_k"):
        assert np.array_equal(getattr(over, name), getattr(conv, name)), name
    assert int(over.emb_m.max()) < 2 ** 5 <= int(model.emb_m.max())
    assert np.array_equal(_ref_logits(over, ids[:50]), _ref_logits(conv, ids[:50]))


def test_spec_override_refusals_name_the_option(tiny, tmp_path):
    src, model, _, _ = tiny
    with pytest.raises(IntsimError, match="rope_frac_bits"):
        override_spec(model, {"rope_frac_bits": 12})
    with pytest.raises(IntsimError, match="unknown option"):
        override_spec(model, {"softmax_klip": 3})
    with pytest.raises(IntsimError, match="softmax_clip"):
        override_spec(model, {"softmax_clip": 0})
    with pytest.raises(IntsimError, match="JSON"):
        override_spec(model, "{softmax_clip: 3}")
    other = make_tiny_hf(tmp_path / "other", n_layers=2, dim=64, n_heads=4, n_kv_heads=2,
                         vocab_size=300, max_pos=256, seed=5)
    with pytest.raises(IntsimError, match="does not reproduce"):
        override_spec(model, {"m_bits": 6}, float_src=other)


# ------------------------------------------------------------------ command line

def test_cli_rows_reproduce_the_in_process_numbers(tiny, tmp_path, capsys):
    """`ops --int all` is intsim ppl's number; `clip` rows are `intsim ppl --spec` rows."""
    import json

    from converters.ablate import main
    from converters.convert import convert
    from converters.ppl import cmd_ppl
    from intsim_app.cli import build_parser
    src, _, _, _ = tiny
    path = convert(src, tmp_path / "tiny.intsim")
    text = tmp_path / "t.txt"
    text.write_text("The quick brown fox jumps over the lazy dog; then the dog sleeps. " * 6)
    common = ["--text", str(text), "--max-tokens", "96", "--ctx", "48"]
    main(["ops", str(path), *common, "--int", "all"])
    ops = json.loads(capsys.readouterr().out)
    cmd_ppl(build_parser().parse_args(["ppl", str(path), *common, "--no-float", "--json"]))
    ppl = json.loads(capsys.readouterr().out)
    assert ops["ppl"] == ppl["ppl_int"] and ops["tokens"] == ppl["tokens"] == 94
    main(["clip", str(path), *common, "--clips", "3"])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["spec"]["softmax_clip"] for r in rows] == [15, 3]    # stored clip first
    assert rows[0]["ppl"] == ppl["ppl_int"] and rows[0]["dnll"] == 0.0
    cmd_ppl(build_parser().parse_args(["ppl", str(path), *common, "--no-float", "--json",
                                       "--spec", '{"softmax_clip": 3}']))
    assert json.loads(capsys.readouterr().out)["ppl_int"] == rows[1]["ppl"]
