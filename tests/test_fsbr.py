"""converters.fsbr: FSBR calibration (PyTorch, optional) on a tiny random LLaMA.

Skipped as a whole when torch is not installed (CI has none).  What is checked:
the fake activation quantizer against intsim's integer requantizer on the same
inputs (codes equal except at float near-ties), the weight quantizer against the
converter's, its hand-written backward against autograd, smoothing as an exact
equivalence in float and as the converter folds it, block-wise reconstruction lowering
the loss from its initialization, the files written being read back by
converters.calib and accepted by ``intsim convert --calib``, and bad input.
"""
from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="converters.fsbr needs PyTorch (the optional "
                                            "[torch] extra); CI runs without it")

from converters import fsbr  # noqa: E402
from converters.calib import CalibError, apply_smoothing, lwc_bounds, prepare_calib, read_calib  # noqa: E402
from converters.weights import dequantize_weight, quantize_weight  # noqa: E402
from intsim.options import Spec  # noqa: E402
from intsim.qtensor import Dyadic  # noqa: E402
from intsim.requant import requant_rows  # noqa: E402

from tiny_llama import make_tiny_hf, tiny_weights  # noqa: E402

#: a code mismatch between float64 fake quantization and the integer requantizer is
#: accepted only where x / s lies this close to a rounding boundary (double rounding of
#: x / s in float64: relative error 2^-52 on values below 2^17)
NEAR_TIE = 1e-9


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny LLaMA with activation outliers, the structure smoothing exists for: a few
    RMSNorm gains x25 (outlier channels into q/k/v and gate/up), a few up and v rows x10
    (outliers into down and o)."""
    kw = dict(n_layers=2, dim=64, n_heads=4, n_kv_heads=2, ffn_dim=128, seed=3)
    w = tiny_weights(**kw, head_dim=16, vocab_size=300, tie=False)
    rng = np.random.default_rng(7)
    for i in range(2):
        p = f"model.layers.{i}."
        for n in ("input_layernorm.weight", "post_attention_layernorm.weight"):
            w[p + n][rng.choice(64, 3, replace=False)] *= 25.0
        w[p + "mlp.up_proj.weight"][rng.choice(128, 4, replace=False)] *= 10.0
        w[p + "self_attn.v_proj.weight"][rng.choice(32, 2, replace=False)] *= 10.0
    return make_tiny_hf(tmp_path_factory.mktemp("fsbr") / "hf", weights=w, **kw)


def _windows(n=4, T=32, seed=0, vocab=300):
    return np.random.default_rng(seed).integers(3, vocab, (n, T))


# ---------------------------------------------------------------- activation quantizer

@pytest.mark.parametrize("bits,symmetric", [(4, False), (6, False), (8, False), (16, False),
                                            (8, True), (16, True)])
@pytest.mark.parametrize("rounding", ["half_up", "half_even"])
@pytest.mark.parametrize("mode", ["fitted", "range"])
def test_fake_act_quantizer_equals_integer_requantizer(bits, symmetric, rounding, mode):
    rng = np.random.default_rng(bits * 7 + symmetric)
    spec = Spec(rounding=rounding, requant_mode=mode)
    rows = 64
    v = rng.integers(-(2 ** 20), 2 ** 20, (rows, 96))
    v[:8] = rng.integers(-40, 40, (8, 96))                    # small ranges: many ties
    v[8] = 0                                                  # a zero row
    v[9] = np.abs(v[9])                                       # one-signed rows
    v[10] = -np.abs(v[10])
    m = rng.integers(1, 2 ** 8, rows)
    k = rng.integers(10, 30, rows)
    qt, _ = requant_rows(v, Dyadic(m, k), bits, symmetric, spec, backend="reference")
    codes = qt.q.astype(np.int64) - qt.zp.astype(np.int64)[:, None]
    x = torch.from_numpy(v * np.ldexp(m.astype(np.float64), -k)[:, None])      # exact
    qf, sf = fsbr.fq_act_codes(x, bits, spec, symmetric=symmetric)
    qf = qf.numpy().astype(np.int64)
    sf = sf.numpy()[:, 0]
    if mode == "fitted":       # the fitted scale itself is the integer one, exactly
        live = qt.scale.m > 0
        want = np.ldexp(qt.scale.m.astype(np.float64), -qt.scale.k.astype(np.int32))
        np.testing.assert_array_equal(sf[live], want[live])
    bad = np.argwhere(qf != codes)
    y = x.numpy() / sf[:, None]
    frac = np.abs(y - np.floor(y) - 0.5)
    for r, c in bad:
        assert frac[r, c] < NEAR_TIE, (r, c, y[r, c], qf[r, c], codes[r, c])
    assert len(bad) < 0.01 * codes.size, len(bad)     # ties are rare even in small rows


def test_fake_act_quantizer_passes_gradient_straight_through():
    x = torch.randn(3, 20, dtype=torch.float64, requires_grad=True)
    y = fsbr.fq_act(x, 4, Spec())
    y.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))
    q, s = fsbr.fq_act_codes(x, 4, Spec())
    assert torch.allclose(y.detach(), q * s)


# ---------------------------------------------------------------- weight quantizer

def _plain_fq_weight(w, bits, G, up, low, r, c):
    """The weight quantizer written with autograd and STE (the reference for the
    hand-written backward)."""
    N, K = w.shape
    Q = 2 ** bits - 1
    ste = lambda y: y + (torch.round(y) - y).detach()   # noqa: E731
    wg = (w * r[:, None] * c[None, :]).reshape(N, K // G, G)
    hi = (torch.sigmoid(up).reshape(N, -1, 1) * wg.amax(-1, keepdim=True)).clamp(min=0)
    lo = (torch.sigmoid(low).reshape(N, -1, 1) * wg.amin(-1, keepdim=True)).clamp(max=0)
    s = (hi - lo) / Q
    zp = torch.clamp(ste(-lo / s), 0, Q)
    q = torch.clamp(ste(wg / s) + zp, 0, Q)
    return ((q - zp) * s).reshape(N, K)


@pytest.mark.parametrize("G", [0, 8])
def test_weight_quantizer_backward_equals_autograd(G):
    rng = np.random.default_rng(5)
    N, K, bits = 12, 32, 3
    ng = K // G if G else 1
    w = torch.from_numpy(rng.standard_normal((N, K)))
    r = torch.from_numpy(rng.uniform(0.5, 2, N)).requires_grad_()
    c = torch.from_numpy(rng.uniform(0.5, 2, K)).requires_grad_()
    up = torch.from_numpy(rng.uniform(-1, 3, (N * ng, 1))).requires_grad_()
    low = torch.from_numpy(rng.uniform(-1, 3, (N * ng, 1))).requires_grad_()
    gout = torch.from_numpy(rng.standard_normal((N, K)))
    a = fsbr.fq_weight(w, bits, G, up, low, r, c)
    ga = torch.autograd.grad((a * gout).sum(), (r, c, up, low))
    b = _plain_fq_weight(w, bits, G or K, up, low, r, c)
    gb = torch.autograd.grad((b * gout).sum(), (r, c, up, low))
    assert torch.allclose(a, b, rtol=0, atol=1e-12)
    for x, y, name in zip(ga, gb, ("r", "c", "up", "low")):
        assert torch.allclose(x, y, rtol=1e-9, atol=1e-12), name


@pytest.mark.parametrize("bits,G", [(8, 0), (4, 0), (4, 16)])
def test_weight_quantizer_equals_converter(bits, G):
    rng = np.random.default_rng(bits + G)
    N, K = 40, 64
    w = rng.standard_normal((N, K)) * rng.uniform(0.2, 1.0, (N, 1))
    ng = K // G if G else 1
    up = rng.uniform(1, 5, (N * ng, 1))
    low = rng.uniform(1, 5, (N * ng, 1))
    fq = fsbr.fq_weight(torch.from_numpy(w), bits, G, torch.from_numpy(up),
                        torch.from_numpy(low)).numpy()
    lo, hi = lwc_bounds(w, up.reshape(N, ng), low.reshape(N, ng), G)
    qw = quantize_weight(w, bits, G or K, 16, bounds=(lo, hi))
    ref = dequantize_weight(qw)
    step = np.repeat((hi - lo) / (2 ** bits - 1), G or K, axis=1)
    zp = np.repeat(-qw.b // np.maximum(qw.m, 1), G or K, axis=1)
    # the converter's scales are 16-bit mantissas over one exponent (relative error
    # <= 2^-16 * max scale / this scale, here < 2^-13): the centred codes agree but at
    # near-ties, and the values within that scale rounding times the code
    codes_ref = qw.q.astype(np.int64) - zp
    codes = np.rint(fq / step).astype(np.int64)
    assert np.array_equal(np.rint(fq / step), fq / step) or np.allclose(fq / step, codes)
    assert np.mean(codes != codes_ref) < 0.01
    assert np.all(np.abs(codes - codes_ref) <= 1)
    same = codes == codes_ref
    np.testing.assert_allclose(fq[same], ref[same], rtol=2 ** -12, atol=1e-12)


# ---------------------------------------------------------------- smoothing

def _layer(tiny, settings, seed=1, random_params=True):
    from converters.float_model import load_hf_weights
    cfg, w = load_hf_weights(tiny)
    L = fsbr._Layer(0, w, cfg, settings, torch.device("cpu"), torch.float64)
    x = torch.from_numpy(np.random.default_rng(seed).standard_normal((2, 16, cfg.dim)))
    rope = fsbr._Rope(cfg, 16, "cpu", torch.float64, None)
    am: dict = {}
    with torch.no_grad():
        fsbr.float_block(L, x, rope, cfg.rms_eps, am)
    L.init_params(am)
    if random_params:
        g = torch.Generator().manual_seed(seed)
        for v in L.smooth.values():          # positive, spread over a decade both ways
            v.data = torch.exp(torch.randn(v.shape, generator=g, dtype=torch.float64) * 0.8)
    return cfg, w, L, x, rope


def test_smoothing_is_an_exact_equivalence_in_float(tiny):
    cfg, _, L, x, rope = _layer(tiny, fsbr.FSBRSettings(samples=2, seqlen=16))
    with torch.no_grad():
        y0 = fsbr.float_block(L, x, rope, cfg.rms_eps)
        y1 = fsbr.float_block(L, x, rope, cfg.rms_eps, smoothed=True)
    assert torch.allclose(y0, y1, rtol=1e-9, atol=1e-9)
    # ... and a paradigm that breaks the equivalence is caught: untie one qkt pair
    L.smooth["qkt_half"].data[0, 0] *= 3
    s = L._qkt(L.smooth["qkt_half"]).detach().clone()
    s[0] *= 2                                   # channel 0 differs from its pair hd/2
    L._qkt = lambda half, s=s: s
    with torch.no_grad():
        y2 = fsbr.float_block(L, x, rope, cfg.rms_eps, smoothed=True)
    assert not torch.allclose(y0, y2, rtol=1e-6, atol=1e-6)


def test_folds_equal_the_converters(tiny):
    cfg, w, L, _, _ = _layer(tiny, fsbr.FSBRSettings(samples=2, seqlen=16), seed=4)
    sd = {k: v.double().numpy() for k, v in L.export().items()}
    lc = prepare_calib({0: sd, 1: sd}, fsbr._Cfg(cfg))[0]
    p = "model.layers.0."
    names = {"wq": "self_attn.q_proj", "wk": "self_attn.k_proj", "wv": "self_attn.v_proj",
             "wo": "self_attn.o_proj", "w_gate": "mlp.gate_proj", "w_up": "mlp.up_proj",
             "w_down": "mlp.down_proj"}
    wf = {k: w[p + v + ".weight"].astype(np.float64) for k, v in names.items()}
    ws, ga, gf, alpha = apply_smoothing(wf, w[p + "input_layernorm.weight"],
                                        w[p + "post_attention_layernorm.weight"], lc, cfg)
    mine, g1, g2, a = L.smoothed()
    short = {"wq": "wq", "wk": "wk", "wv": "wv", "wo": "wo", "w_gate": "wg", "w_up": "wu",
             "w_down": "wd"}
    for k, v in short.items():
        np.testing.assert_allclose(mine[v].detach().numpy(), ws[k], rtol=1e-6, err_msg=k)
    np.testing.assert_allclose(g1.detach().numpy(), ga, rtol=1e-6)
    np.testing.assert_allclose(g2.detach().numpy(), gf, rtol=1e-6)
    np.testing.assert_allclose(a.detach().numpy(), alpha, rtol=1e-6)


def test_smoothquant_init(tiny):
    cfg, w, L, x, rope = _layer(tiny, fsbr.FSBRSettings(samples=2, seqlen=16),
                                random_params=False)
    h = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + cfg.rms_eps) * L.g1
    act = h.abs().reshape(-1, cfg.dim).amax(0)
    wm = torch.cat([L.W["wq"], L.W["wk"], L.W["wv"]]).abs().amax(0)
    want = (act.sqrt() / wm.sqrt()).clamp(min=1e-2)
    assert torch.allclose(L.smooth["qkv_smooth_scale"], want)
    assert torch.equal(L.smooth["qkt_half"], torch.ones_like(L.smooth["qkt_half"]))
    assert torch.equal(L.smooth["x1x2_smooth_scale"],
                       torch.ones_like(L.smooth["x1x2_smooth_scale"]))
    assert all(torch.all(v == 4.0) for v in L.lwc.values())


# ---------------------------------------------------------------- the run and its files

@pytest.fixture(scope="module")
def w4a4_run(tiny):
    st = fsbr.FSBRSettings(w_bits=4, a_bits=4, epochs=4, samples=8, seqlen=32, seed=0)
    return fsbr.run_fsbr(tiny, st, windows=_windows(8), log=lambda m: None, threads=1)


def test_fsbr_lowers_the_block_loss(w4a4_run, tiny):
    _, report = w4a4_run
    for rec in report["layers"]:      # every block ends below its SmoothQuant init
        assert rec["final_loss"] < 0.995 * rec["init_loss"], rec
        assert rec["best_epoch"] >= 0 and rec["final_loss"] == min(rec["epoch_loss"])
    assert report["layers"][0]["final_loss"] < 0.9 * report["layers"][0]["init_loss"]
    # ... and the SmoothQuant init is itself far below no smoothing at all
    st = fsbr.FSBRSettings(w_bits=4, a_bits=4, samples=8, seqlen=32, init_only=True,
                           paradigms=(), lwc=False)
    _, bare = fsbr.run_fsbr(tiny, st, windows=_windows(8), log=lambda m: None, threads=1)
    assert report["layers"][0]["init_loss"] < 0.7 * bare["layers"][0]["final_loss"]


def test_report_names_the_weights_it_was_learned_on(w4a4_run, tiny):
    """``source_sha256``: what a recipe matches a source against (converters.recipes)."""
    import hashlib
    _, report = w4a4_run
    want = {n: hashlib.sha256((Path(tiny) / n).read_bytes()).hexdigest()
            for n in ("config.json", "model.safetensors")}
    assert report["source_sha256"] == want


def test_files_read_back_and_convert_accepts_them(tiny, w4a4_run, tmp_path):
    from converters.convert import main as convert_main
    from converters.float_model import LlamaConfig

    params, report = w4a4_run
    cfg = LlamaConfig.from_dict(json.loads((tiny / "config.json").read_text()))
    paths = fsbr.save_params(params, tmp_path / "calib", "both", cfg, report=report)
    assert set(paths) == {"pth", "safetensors", "report"}
    a, b = read_calib(paths["pth"]), read_calib(paths["safetensors"])
    assert sorted(a) == [0, 1]
    want = {"qkv_smooth_scale", "fc1_smooth_scale", "out_smooth_scale", "qkt_smooth_scale",
            "x1x2_smooth_scale", "fc2_smooth_scale"} | {
        f"{m}.weight_quantizer.{k}" for m in fsbr.OFFICIAL_LINEARS
        for k in ("upbound_factor", "lowbound_factor")}
    for i in (0, 1):
        assert set(a[i]) == want
        for k, v in params[i].items():
            np.testing.assert_array_equal(a[i][k], v.numpy())
            np.testing.assert_array_equal(b[i][k], v.numpy())
    # official layout: a plain {int: OrderedDict} torch pickle
    raw = torch.load(paths["pth"], weights_only=True)
    assert isinstance(raw, dict) and isinstance(raw[0], OrderedDict)
    assert json.loads(paths["report"].read_text())["layers"][0]["layer"] == 0
    for p, gain in ((paths["pth"], "channel"), (paths["safetensors"], "channel"),
                    (paths["pth"], "fold")):
        out = tmp_path / f"{p.suffix[1:]}-{gain}.intsim"
        rc = convert_main([str(tiny), "--out", str(out), "--wbits", "4", "--abits", "4",
                           "--calib", str(p), "--norm-gain", gain])
        assert rc == 0 and out.is_file()


def test_qkt_is_tied_in_rope_pairs(w4a4_run, tiny):
    params, _ = w4a4_run
    hd = 64 // 4
    s = params[0]["qkt_smooth_scale"].numpy().reshape(2, 2, hd // 2)   # [kv head, half, i]
    np.testing.assert_array_equal(s[:, 0], s[:, 1])
    assert not np.all(s == 1)                   # it was learned


def test_disable_and_no_lwc(tiny):
    st = fsbr.FSBRSettings(w_bits=6, a_bits=6, epochs=1, samples=2, seqlen=16,
                           paradigms=("qkv", "fc2"), lwc=False)
    params, report = fsbr.run_fsbr(tiny, st, windows=_windows(2, 16), log=lambda m: None)
    assert set(params[0]) == {"qkv_smooth_scale", "fc2_smooth_scale"}
    st = fsbr.FSBRSettings(w_bits=6, a_bits=6, samples=2, seqlen=16, init_only=True,
                           paradigms=(), lwc=True)
    params, report = fsbr.run_fsbr(tiny, st, windows=_windows(2, 16), log=lambda m: None)
    assert all(k.endswith("bound_factor") for k in params[0])
    assert all(torch.all(v == 4.0) for v in params[0].values())
    assert "init_loss" not in report["layers"][0]


def test_std_norm_and_lwc_init(tiny):
    st = fsbr.FSBRSettings(w_bits=4, a_bits=4, epochs=2, samples=4, seqlen=32, seed=0,
                           std_norm=True, lwc_init=6.0, paradigms=("fc2",))
    params, report = fsbr.run_fsbr(tiny, st, windows=_windows(4), log=lambda m: None)
    for rec in report["layers"]:
        assert rec["final_loss"] <= rec["init_loss"]
    ups = params[0]["mlp.down_proj.weight_quantizer.upbound_factor"]
    assert 5.9 < float(ups.min()) and float(ups.max()) < 6.1 and not torch.all(ups == 6.0)


def test_fake_quant_ppl_all_exact_is_the_float_model(tiny, w4a4_run, tmp_path):
    from converters import fsbr_eval
    from converters.evaluate import nll_from_logits, perplexity, read_text_tokens
    from converters.float_model import FloatLlama, LlamaConfig
    from tiny_llama import TEXT
    text = tmp_path / "t.txt"
    text.write_text(TEXT * 2)
    st = fsbr.FSBRSettings(w_bits=4, a_bits=4, samples=1, seqlen=2)
    everything = fsbr.QUANTIZERS + fsbr_eval.EXTRA
    fq = fsbr_eval.fake_quant_ppl(tiny, st, text, None, everything, 300, 64)
    fm = FloatLlama.from_hf(tiny)
    toks = read_text_tokens(text, tiny / "tokenizer.json", 300)
    ref = perplexity(lambda w: nll_from_logits(fm.logits(w), w), toks, 64)
    assert fq["tokens"] == ref["tokens"]
    assert abs(fq["ppl_fq"] / ref["ppl"] - 1) < 1e-3        # eps dropped, Q1.14 RoPE tables
    cfg = LlamaConfig.from_dict(json.loads((tiny / "config.json").read_text()))
    paths = fsbr.save_params(w4a4_run[0], tmp_path / "c", "pth", cfg)
    quant = fsbr_eval.fake_quant_ppl(tiny, st, text, paths["pth"], (), 300, 64)
    assert quant["ppl_fq"] != fq["ppl_fq"] and np.isfinite(quant["ppl_fq"])
    with pytest.raises(fsbr.FSBRError, match="unknown quantizer"):
        fsbr_eval.fake_quant_ppl(tiny, st, text, None, ("nope",), 300, 64)


def test_checkpoint_resume_gives_the_same_result(tiny, tmp_path):
    st = fsbr.FSBRSettings(w_bits=4, a_bits=4, epochs=1, samples=2, seqlen=16, seed=1)
    win = _windows(2, 16)
    whole, _ = fsbr.run_fsbr(tiny, st, windows=win, log=lambda m: None, threads=1)
    ck = tmp_path / "c.partial.pt"
    fsbr.run_fsbr(tiny, st, windows=win, log=lambda m: None, threads=1, n_layers=1,
                  checkpoint=ck)                      # "interrupted" after layer 0
    logs = []
    resumed, rep = fsbr.run_fsbr(tiny, st, windows=win, log=logs.append, threads=1,
                                 checkpoint=ck)
    assert logs[0].startswith("resuming") and len(rep["layers"]) == 2
    for i in (0, 1):
        for k in whole[i]:
            assert torch.equal(whole[i][k], resumed[i][k]), (i, k)
    other = fsbr.FSBRSettings(w_bits=6, a_bits=6, epochs=1, samples=2, seqlen=16, seed=1)
    with pytest.raises(fsbr.FSBRError, match="different run"):
        fsbr.run_fsbr(tiny, other, windows=win, log=lambda m: None, checkpoint=ck)


# ---------------------------------------------------------------- command line, bad input

def test_cli_writes_both_forms(tiny, tmp_path):
    text = tmp_path / "train.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 60)
    out = tmp_path / "c.pth"
    rc = fsbr.main([str(tiny), "--out", str(out), "--wbits", "8", "--abits", "8",
                    "--epochs", "1", "--samples", "2", "--seqlen", "16", "--text", str(text),
                    "--threads", "1", "--disable", "qkt", "x1x2"])
    assert rc == 0
    for suffix in (".pth", ".safetensors", ".json"):
        assert out.with_suffix(suffix).is_file()
    assert out.with_suffix(".safetensors").stat().st_mode & 0o777 == 0o644   # not mkstemp's 0600
    params = read_calib(out.with_suffix(".pth"))
    assert "qkt_smooth_scale" not in params[0] and "qkv_smooth_scale" in params[0]


def test_cli_refusals(tiny, tmp_path, capsys):
    out = tmp_path / "c.pth"
    assert fsbr.main([str(tiny), "--out", str(out), "--no-smooth", "--no-lwc"]) == 2
    assert "nothing to calibrate" in capsys.readouterr().err
    held = tmp_path / "persuasion.txt"
    held.write_text("x " * 100)
    assert fsbr.main([str(tiny), "--out", str(out), "--text", str(held), "--samples", "1",
                      "--seqlen", "8"]) == 2
    assert "held-out" in capsys.readouterr().err
    # Hamlet, or shakespeare.txt which holds it, is held out too
    for name in ("hamlet.txt", "shakespeare.txt"):
        (tmp_path / name).write_text("x " * 100)
        assert fsbr.main([str(tiny), "--out", str(out), "--text", str(tmp_path / name),
                          "--samples", "1", "--seqlen", "8"]) == 2
        err = capsys.readouterr().err
        assert name in err and "Hamlet" in err
    assert fsbr.main([str(tmp_path / "nope"), "--out", str(out)]) == 2
    assert not list(tmp_path.glob("c.*"))
    with pytest.raises(fsbr.FSBRError, match="w_bits"):
        fsbr.FSBRSettings(w_bits=9)


def test_calibration_windows_are_seeded(tiny, tmp_path):
    text = tmp_path / "train.txt"
    text.write_text("Emma Woodhouse, handsome, clever, and rich. " * 50)
    a = fsbr.calibration_windows(tiny / "tokenizer.json", text, 5, 12, seed=2)
    b = fsbr.calibration_windows(tiny / "tokenizer.json", text, 5, 12, seed=2)
    c = fsbr.calibration_windows(tiny / "tokenizer.json", text, 5, 12, seed=3)
    assert a.shape == (5, 12) and np.array_equal(a, b) and not np.array_equal(a, c)
    with pytest.raises(fsbr.FSBRError, match="fewer than one window"):
        fsbr.calibration_windows(tiny / "tokenizer.json", text, 1, 10 ** 6, seed=2)


def _write(params, path):
    torch.save({i: OrderedDict((k, torch.as_tensor(v)) for k, v in sd.items())
                for i, sd in params.items()}, path)


@pytest.mark.parametrize("case,match", [
    ("extra_layer", "layer count: the file has 3 layers"),
    ("missing_layer", "layer 1 is missing"),
    ("wrong_dim", "layer 0: 'qkv_smooth_scale': shape"),
    ("nan", "layer 1: 'fc2_smooth_scale': non-finite"),
    ("zero", "layer 0: 'out_smooth_scale': scale 0.0 at channel 3 is not positive"),
    ("negative", "layer 1: 'x1x2_smooth_scale': scale -0.5 at channel 0 is not positive"),
    ("lwc_shape", "layer 0: 'mlp.down_proj.weight_quantizer.upbound_factor': shape"),
    ("empty", "layer 0 holds no parameters"),
])
def test_convert_refuses_bad_calibration_before_writing(tiny, w4a4_run, tmp_path, case, match):
    from converters.convert import ConvertError, convert
    params = {i: {k: v.numpy().copy() for k, v in sd.items()} for i, sd in w4a4_run[0].items()}
    if case == "extra_layer":
        params[2] = params[1]
    elif case == "missing_layer":
        del params[1]
    elif case == "wrong_dim":
        params[0]["qkv_smooth_scale"] = np.ones(65, np.float32)
    elif case == "nan":
        params[1]["fc2_smooth_scale"][7] = np.nan
    elif case == "zero":
        params[0]["out_smooth_scale"][3] = 0
    elif case == "negative":
        params[1]["x1x2_smooth_scale"][0] = -0.5
    elif case == "lwc_shape":
        params[0]["mlp.down_proj.weight_quantizer.upbound_factor"] = np.ones((63, 1), np.float32)
    elif case == "empty":
        params = {0: {}, 1: {}}
    path = tmp_path / "bad.pth"
    _write(params, path)
    out = tmp_path / "model.intsim"
    with pytest.raises((CalibError, ConvertError), match=match):
        convert(tiny, out, calib=path)
    assert not out.exists() and not list(tmp_path.glob(".*intsim*"))


def test_calibration_for_another_model_is_refused(w4a4_run, tmp_path):
    from converters.convert import convert
    other = make_tiny_hf(tmp_path / "other", n_layers=2, dim=48, n_heads=4, n_kv_heads=2,
                         head_dim=16, ffn_dim=128, seed=3)
    path = tmp_path / "c.pth"
    _write({i: {k: v.numpy() for k, v in sd.items()} for i, sd in w4a4_run[0].items()}, path)
    out = tmp_path / "m.intsim"
    with pytest.raises(CalibError, match=r"layer 0: '\w+': shape \(64,\), expected \(48,\)"):
        convert(other, out, calib=path)
    assert not out.exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_run_matches_the_cpu_run(tiny):
    """--device cuda: every tensor on one device (a cuda/cpu mix once crashed here), and
    the initialization -- SmoothQuant factors and the init loss -- the same as on the CPU
    up to float32 reduction order."""
    runs = {}
    for dev in ("cpu", "cuda"):
        st = fsbr.FSBRSettings(w_bits=4, a_bits=4, epochs=1, samples=4, seqlen=32, seed=0,
                               device=dev)
        runs[dev] = fsbr.run_fsbr(tiny, st, windows=_windows(4), log=lambda m: None, threads=1)
    (pc, rc), (pg, rg) = runs["cpu"], runs["cuda"]
    assert pc.keys() == pg.keys()
    for i in pc:
        assert pc[i].keys() == pg[i].keys()
        for k in pc[i]:
            assert pg[i][k].device.type == "cpu", (i, k)     # parameters come back on the CPU
    for a, b in zip(rc["layers"], rg["layers"]):
        assert b["init_loss"] == pytest.approx(a["init_loss"], rel=1e-3)


def test_fsbr_eval_only_is_exact_on_everything_else(tiny, tmp_path, capsys):
    """--only X scores the model with X the one quantizer kept: the same perplexity as
    --exact on every other name, and different from keeping none."""
    from converters import fsbr_eval
    from tiny_llama import TEXT
    text = tmp_path / "t.txt"
    text.write_text(TEXT * 2)
    base = [str(tiny), "--wbits", "4", "--abits", "4", "--text", str(text),
            "--max-tokens", "200", "--ctx", "64", "--threads", "1"]

    def run(*extra):
        assert fsbr_eval.main(base + list(extra)) == 0
        return json.loads(capsys.readouterr().out)
    rest = [n for n in fsbr.QUANTIZERS + fsbr_eval.EXTRA if n != "down_in"]
    only = run("--only", "down_in")
    assert only["exact"] == sorted(rest)
    assert only["ppl_fq"] == run("--exact", *rest)["ppl_fq"]
    assert only["ppl_fq"] != run("--exact", *rest, "down_in")["ppl_fq"]
    with pytest.raises(SystemExit):
        fsbr_eval.main(base + ["--only", "down_in", "--exact", "up"])
