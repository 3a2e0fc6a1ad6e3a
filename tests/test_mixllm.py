"""Mixed precision between output channels (MixLLM): selection at equal budgets, per-row
widths through the weight quantizer, the converter, the model file and the interpreter."""
from __future__ import annotations

import numpy as np
import pytest

from converters.convert import ConvertError, build_model
from converters.mixllm import MixError, average_bits, read_row_bits, save_row_bits, select
from converters.weights import dequantize_weight, quantize_weight
from intsim.errors import IntsimError
from intsim.llama import forward
from intsim.matmul import QWeight
from intsim.modelfile import linear_shapes, load_model, save_model
from tiny_llama import make_tiny_hf

IDS = np.array([3, 17, 42, 5, 99, 7, 1, 64, 0, 127])


def test_select_local_and_global_spend_the_same_budget():
    rng = np.random.default_rng(0)
    shapes = {(0, "wq"): (40, 16), (0, "w_down"): (16, 64), (1, "wq"): (40, 16)}
    sal = {k: rng.exponential(size=n) for k, (n, _) in shapes.items()}
    sal[(1, "wq")] *= 100.0                      # one layer far more salient than the others
    loc = select(sal, shapes, 0.25, "local")
    glo = select(sal, shapes, 0.25, "global")
    total = sum(n * k for n, k in shapes.values())
    for rb in (loc, glo):
        hi = sum(int((rb[k] == 8).sum()) * shapes[k][1] for k in shapes)
        assert abs(hi - 0.25 * total) <= 64          # within one (widest) channel
        assert set(np.unique(np.concatenate(list(rb.values())))) <= {4, 8}
    # local keeps a quarter of every linear; global spends the budget on the salient layer
    for k, (n, _) in shapes.items():
        assert int((loc[k] == 8).sum()) == int(np.ceil(0.25 * n))
    assert (glo[(1, "wq")] == 8).sum() > (loc[(1, "wq")] == 8).sum()
    # the most salient channel of each linear is always kept under local
    for k in shapes:
        assert loc[k][np.argmax(sal[k])] == 8
    assert abs(average_bits(loc, shapes) - 5.0) < 0.2 and abs(average_bits(glo, shapes) - 5.0) < 0.2


def test_select_refusals():
    shapes = {(0, "wq"): (4, 4)}
    sal = {(0, "wq"): np.ones(4)}
    with pytest.raises(MixError, match="scope"):
        select(sal, shapes, 0.1, "everywhere")
    with pytest.raises(MixError, match="frac"):
        select(sal, shapes, 1.5, "local")
    with pytest.raises(MixError, match="low/high"):
        select(sal, shapes, 0.1, "local", 8, 4)


def test_quantize_weight_per_row_bits_matches_single_width_rows():
    """Each row quantized at its own width is exactly what that width alone gives it."""
    rng = np.random.default_rng(1)
    w = rng.standard_normal((6, 32))
    rb = np.array([4, 8, 4, 6, 8, 4])
    q = quantize_weight(w, rb, 16)
    assert q.bits == 8 and np.array_equal(q.row_bits, rb)
    full = dequantize_weight(q)
    for n, b in enumerate(rb):
        alone = quantize_weight(w, int(b), 16)
        # same per-group float scale; mantissas share the matrix exponent, so compare values
        ref = dequantize_weight(alone)[n]
        assert np.abs(full[n] - w[n]).max() <= np.abs(ref - w[n]).max() * 1.05 + 1e-12
        assert q.q[n].max() <= 2 ** b - 1
    with pytest.raises(ValueError, match="bits"):
        quantize_weight(w, np.array([4, 9, 4, 4, 4, 4]), 16)


def test_qweight_row_bits_are_checked():
    q = np.array([[15, 3], [200, 1]], dtype=np.uint8)
    m, b = np.ones((2, 1), np.int64), np.zeros((2, 1), np.int64)
    QWeight(q, 8, 2, m, b, 0, np.array([4, 8], np.uint8))
    with pytest.raises(IntsimError, match="row 1 holds code 200"):
        QWeight(q, 8, 2, m, b, 0, np.array([4, 4], np.uint8))
    with pytest.raises(IntsimError, match="row_bits"):
        QWeight(q, 8, 2, m, b, 0, np.array([4, 9], np.uint8))
    with pytest.raises(IntsimError, match="row_bits: shape"):
        QWeight(q, 8, 2, m, b, 0, np.array([4], np.uint8))


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    d = tmp_path_factory.mktemp("mix")
    src = make_tiny_hf(d / "hf", seed=2)
    plain, _ = build_model(src)
    shapes = {(i, n): s for i in range(plain.config.n_layers)
              for n, s in linear_shapes(plain.config).items()}
    rng = np.random.default_rng(3)
    rb = select({k: rng.random(s[0]) for k, s in shapes.items()}, shapes, 0.2, "global")
    f = save_row_bits(d / "rb.safetensors", rb, {"scope": "global", "frac": 0.2})
    model, tok = build_model(src, w_bits=8, row_bits=f)
    return src, f, rb, model, save_model(model, d / "m.intsim", tok), shapes


def test_converter_applies_row_bits_and_file_round_trips(mixed):
    src, f, rb, model, path, _ = mixed
    back = load_model(path)
    for i, (L1, L2) in enumerate(zip(model.layers, back.layers)):
        for n in ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down"):
            a, b = getattr(L1, n), getattr(L2, n)
            assert a.bits == 8 and np.array_equal(a.row_bits, rb[(i, n)])
            assert np.array_equal(a.row_bits, b.row_bits) and np.array_equal(a.q, b.q)
            low = rb[(i, n)] == 4
            assert a.q[low].max(initial=0) <= 15
            if (~low).any():                     # 8-bit rows use their range
                assert a.q[~low].max() > 15
    assert back.meta["row_bits"]["scope"] == "global"
    assert any((v == 8).any() for v in rb.values()) and any((v == 4).any() for v in rb.values())


def test_mixed_model_fast_path_equals_reference(mixed):
    model = mixed[3]
    a, b = forward(model, IDS, backend="numba"), forward(model, IDS, backend="reference")
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1].k, b[1].k)


def test_row_bits_file_refusals(mixed, tmp_path):
    src, f, rb, model, _, shapes = mixed
    c = model.config
    short = {k: v for k, v in rb.items() if k[0] == 0}
    g = save_row_bits(tmp_path / "short.safetensors", short, {})
    with pytest.raises(ConvertError, match=r"layers\.1\.wq\.row_bits' is missing"):
        build_model(src, row_bits=g)
    with pytest.raises(ConvertError, match=r"widths \[4, 8\] outside \[2, 6\]"):
        build_model(src, w_bits=6, row_bits=f)
    bad = dict(rb)
    bad[(0, "wq")] = bad[(0, "wq")][:-1]
    h = save_row_bits(tmp_path / "bad.safetensors", bad, {})
    with pytest.raises(MixError, match=r"layers\.0\.wq\.row_bits.*expected uint8"):
        read_row_bits(h, c.n_layers, linear_shapes(c), 8)


def test_salience_is_zero_for_an_exactly_representable_channel(tmp_path):
    pytest.importorskip("torch", reason="MixLLM salience needs PyTorch (optional extra)")
    from safetensors.numpy import load_file, save_file

    from converters.mixllm import channel_salience
    src = make_tiny_hf(tmp_path / "hf", seed=4)
    w = load_file(str(src / "model.safetensors"))
    name = "model.layers.0.self_attn.o_proj.weight"
    w[name][5] = 0.0                             # a zero row quantizes exactly at 4 bits
    save_file(w, str(src / "model.safetensors"))
    sal = channel_salience(src, [np.arange(3, 40), np.arange(50, 90)], low=4, group_size=16)
    s = sal[(0, "wo")]
    assert s[5] == 0.0 and (np.delete(s, 5) > 0).all()
    assert all((v >= 0).all() and np.isfinite(v).all() for v in sal.values())


def test_calibration_windows_refuse_held_out_texts(tmp_path):
    from converters.mixllm import calib_windows
    for name in ("persuasion.txt", "hamlet.txt", "shakespeare.txt"):
        (tmp_path / name).write_text("word " * 2000)
        with pytest.raises(MixError, match=name.replace(".", r"\.") + ".*held-out"):
            calib_windows(tmp_path / "tokenizer.json", tmp_path / name, 1, 8, 0)
    with pytest.raises(MixError, match=r"absent\.txt: cannot read the calibration text"):
        calib_windows(tmp_path / "tokenizer.json", tmp_path / "absent.txt", 1, 8, 0)
