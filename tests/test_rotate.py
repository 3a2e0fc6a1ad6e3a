"""Hadamard rotations in the converter (``intsim convert --rotate``, converters.rotate):
the matrices are Hadamard, the folds leave the float model's function unchanged, the
converted model carries the online block and runs the same integers on every path, and
every bad combination is refused naming the option."""
from __future__ import annotations

import json

import numpy as np
import pytest

from converters.float_model import FloatLlama, load_hf_weights
from converters.rotate import (RotateError, down_block, fold_down, hadamard_matrix, parse_rotate,
                               residual_rotation, rotate_layer)
from intsim import llama, runner
from intsim.modelfile import load_model, read_header
from model_helpers import ROOT, convert_small

SMALL = ROOT.joinpath("models", "small")
IDS = np.array([1107, 15, 1671, 33, 400, 9, 2718, 77, 5, 1200])
KEYS = {"wq": "self_attn.q_proj.weight", "wk": "self_attn.k_proj.weight",
        "wv": "self_attn.v_proj.weight", "wo": "self_attn.o_proj.weight",
        "w_gate": "mlp.gate_proj.weight", "w_up": "mlp.up_proj.weight",
        "w_down": "mlp.down_proj.weight"}


@pytest.mark.parametrize("n", [1, 2, 12, 20, 48, 72, 256, 576, 768, 960, 1536, 2048, 3072, 4096, 5120])
def test_hadamard_orders(n):
    H = hadamard_matrix(n)
    assert set(np.unique(H)) <= {-1, 1}
    assert np.array_equal(H @ H.T, n * np.eye(n, dtype=np.int64))


@pytest.mark.parametrize("n", [3, 6, 10, 0])
def test_hadamard_order_refused(n):
    with pytest.raises(RotateError, match=f"dim: no Hadamard matrix of order {n}"):
        hadamard_matrix(n)


def test_residual_rotation_orthogonal_and_seeded():
    R = residual_rotation(576, 3)
    assert np.abs(R @ R.T - np.eye(576)).max() < 1e-12
    assert np.array_equal(R, residual_rotation(576, 3))
    assert not np.array_equal(R, residual_rotation(576, 4))


def test_parse_and_block_refusals():
    assert parse_rotate("down, residual") == ("residual", "down")
    assert parse_rotate(None) == ()
    with pytest.raises(RotateError, match="--rotate: spin"):
        parse_rotate("residual,spin")
    assert down_block(1536) == 512 and down_block(768, 64) == 64
    with pytest.raises(RotateError, match="--down-block: block 1024 does not divide"):
        down_block(1536, 1024)
    with pytest.raises(RotateError, match="ffn_dim 765 is odd"):
        down_block(765)


def _rotated_hf(cfg, w, seed=0, rotate_head=True):
    """The HF weights with γ folded and the residual rotation applied through the converter's
    own function (rotate_layer): a float model that should compute the same logits."""
    R = residual_rotation(cfg.dim, seed)
    out = dict(w)
    for i in range(cfg.n_layers):
        p = f"model.layers.{i}."
        lw = {k: w[p + n].astype(np.float64) for k, n in KEYS.items()}
        ga, gf = w[p + "input_layernorm.weight"], w[p + "post_attention_layernorm.weight"]
        for k in ("wq", "wk", "wv"):
            lw[k] = lw[k] * ga[None, :]
        for k in ("w_gate", "w_up"):
            lw[k] = lw[k] * gf[None, :]
        lw = rotate_layer(R, lw)
        out.update({p + n: lw[k] for k, n in KEYS.items()})
        out[p + "input_layernorm.weight"] = np.ones(cfg.dim)
        out[p + "post_attention_layernorm.weight"] = np.ones(cfg.dim)
    head = w.get("lm_head.weight", w["model.embed_tokens.weight"]) * w["model.norm.weight"][None, :]
    out["lm_head.weight"] = head @ R if rotate_head else head
    out["model.embed_tokens.weight"] = w["model.embed_tokens.weight"] @ R
    out["model.norm.weight"] = np.ones(cfg.dim)
    return out


def test_rotations_leave_the_float_function_unchanged():
    cfg, w = load_hf_weights(SMALL)
    base = FloatLlama(cfg, w).logits(IDS)
    rot = FloatLlama(cfg, _rotated_hf(cfg, w)).logits(IDS)
    assert np.abs(rot - base).max() <= 1e-3 * np.abs(base).max()    # float32 round-off only
    # and a rotation left out of one place (the LM head) is seen by the same comparison
    bad = FloatLlama(cfg, _rotated_hf(cfg, w, rotate_head=False)).logits(IDS)
    assert np.abs(bad - base).max() > 1e-1 * np.abs(base).max()


@pytest.mark.parametrize("b", [2, 8, 256])
def test_down_fold_undoes_the_runtime_transform(b):
    """W' = W blockdiag(H_b) / b, fed blockdiag(H_b) y (the runtime's un-normalized transform,
    built here from the matrix definition H[i, j] = (-1)^popcount(i & j)), gives W y."""
    rng = np.random.default_rng(b)
    W, y = rng.standard_normal((5, 768)), rng.standard_normal((3, 768))
    i = np.arange(b)
    H = np.array([[(-1) ** bin(r & c).count("1") for c in i] for r in i], dtype=np.float64)
    Hy = (y.reshape(3, -1, b) @ H.T).reshape(3, 768)
    assert np.allclose(Hy @ fold_down(W, b).T, y @ W.T, rtol=1e-12, atol=1e-12)
    assert not np.allclose(Hy @ W.T, y @ W.T)


@pytest.fixture(scope="module")
def rotated(tmp_path_factory):
    d = tmp_path_factory.mktemp("rotate")
    r = convert_small(d.joinpath("rot.intsim"), "--wbits", "4", "--abits", "4", "--rotate", "residual,down",
                 "--down-block", "128")
    assert r.returncode == 0, r.stderr
    assert "residual rotation, down rotation (blocks of 128)" in r.stderr
    return d.joinpath("rot.intsim")


def test_converted_model_header_and_paths(rotated):
    h = read_header(rotated)
    assert h["widths"]["down_rot"] == 128
    m = load_model(rotated)
    rot = m.meta["quantizer"]["rotation"]
    assert rot["residual"]["order"] == 256 and rot["down"]["block"] == 128
    assert all(L.attn_norm_w is None and L.ffn_norm_w is None for L in m.layers)   # γ folded
    ref = llama.forward(m, IDS, backend="reference")
    for out in (llama.forward(m, IDS), runner.forward(m, IDS)):
        assert np.array_equal(out[0], ref[0]) and np.array_equal(out[1].k, ref[1].k)
    assert runner.last_decline() is None          # the fused path ran it


def test_plain_conversion_unchanged_by_the_option(tmp_path):
    """A model converted without --rotate has no rotation key and no down_rot."""
    r = convert_small(tmp_path.joinpath("p.intsim"))
    assert r.returncode == 0, r.stderr
    h = read_header(tmp_path.joinpath("p.intsim"))
    assert "down_rot" not in h["widths"]
    assert "rotation" not in json.dumps(h.get("meta", {}))


@pytest.mark.parametrize("args, msg", [
    (["--rotate", "residual", "--norm-gain", "channel"], "norm_gain: 'channel' keeps RMSNorm"),
    (["--rotate", "down", "--down-block", "48"], "--down-block: 48 is not a power of two"),
    (["--down-block", "64"], "--down-block: given without --rotate down"),
    (["--rotate", "spin"], "--rotate: spin is not one of residual, down"),
])
def test_refusals(tmp_path, args, msg):
    out = tmp_path.joinpath("x.intsim")
    r = convert_small(out, *args)
    assert r.returncode == 2 and msg in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and not out.exists()


def test_recipe_sets_and_records_its_options(tmp_path):
    from converters.recipes import RECIPES
    out = tmp_path.joinpath("r.intsim")
    r = convert_small(out, "--recipe", "w4a4", "--wbits", "4")          # agreeing with it is fine
    assert r.returncode == 0, r.stderr
    m = load_model(out)
    assert m.meta["recipe"]["name"] == "w4a4" and m.meta["recipe"]["variant"] == "rotation"
    want = RECIPES["w4a4"]
    assert (m.widths.w_bits, m.widths.a_bits) == (want["w_bits"], want["a_bits"])
    assert m.widths.head_in_bits == want.get("head_a_bits", want["a_bits"])
    assert (m.widths.down_rot is not None) == ("down" in want.get("rotate", ()))
    assert ("rotation" in m.meta["quantizer"]) == bool(want.get("rotate"))


@pytest.mark.parametrize("args, msg", [
    (["--recipe", "w4a4", "--wbits", "6"], "--wbits: 6 given with --recipe w4a4, which sets it to 4"),
    (["--recipe", "w6a6", "--abits", "8"], "--abits: 8 given with --recipe w6a6, which sets it to 6"),
])
def test_recipe_contradicted_is_refused(tmp_path, args, msg):
    out = tmp_path.joinpath("x.intsim")
    r = convert_small(out, *args)
    assert r.returncode == 2 and msg in r.stderr, r.stderr
    assert not out.exists()
