"""converters.convert and intsim.modelfile on tiny random LLaMA checkpoints.

Checks every IntModel field against the float checkpoint (within the quantizers' stated
errors), the gamma folding, the exact file round trip, the metadata and hashes, atomic
writing, every refusal of the converter and of the loader (each naming its key or
tensor), FSBR calibration end to end, and a GGUF source.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from converters import convert as CV
from converters.calib import CalibError, save_calib_safetensors
from converters.convert import ConvertError, build_model, convert
from converters.weights import dequantize_weight
from intsim.errors import IntsimError
from intsim.model import IntModel
from intsim.modelfile import (FORMAT_VERSION, MAGIC, load_model, load_tokenizer, model_hash,
                              model_tensors, save_model)
from intsim.options import Spec
from tiny_llama import BOS_ID, EOS_ID, make_tiny_hf

LINEARS = {"wq": "self_attn.q_proj.weight", "wk": "self_attn.k_proj.weight",
           "wv": "self_attn.v_proj.weight", "wo": "self_attn.o_proj.weight",
           "w_gate": "mlp.gate_proj.weight", "w_up": "mlp.up_proj.weight",
           "w_down": "mlp.down_proj.weight"}
#: which RMSNorm gain each linear's input columns carry after folding
GAIN = {"wq": "input_layernorm", "wk": "input_layernorm", "wv": "input_layernorm",
        "w_gate": "post_attention_layernorm", "w_up": "post_attention_layernorm"}


def hf_weights(d: Path) -> dict[str, np.ndarray]:
    out = {}
    for f in sorted(d.glob("*.safetensors")):
        out.update({k: v.astype(np.float64) for k, v in load_file(str(f)).items()})
    return out


def step_tol(lo: np.ndarray, hi: np.ndarray, bits: int, k: int) -> np.ndarray:
    """Max |dequantized - float| inside a group's range [lo, hi] (lo <= 0 <= hi).

    With the float step s = (hi - lo) / Q (Q = 2^bits - 1) and the represented step
    s' = m 2^-k, |s' - s| <= 2^-(k+1) (m = rint(s 2^k), one exponent k per matrix): codes
    round to within s'/2; the zero point is a rounded code, so the grid's top end lies at
    most Q (s - s') + s'/2 below hi, where a clamped value errs by that much.  Hence
    err <= s'/2 + Q |s - s'| <= (s + 2^-(k+1)) / 2 + Q 2^-(k+1)."""
    Q = 2 ** bits - 1
    d = 2.0 ** -(k + 1)
    return (hi - lo) / Q / 2 + d / 2 + Q * d


def weight_tol(w: np.ndarray, bits: int, G: int, k: int) -> np.ndarray:
    """step_tol per weight, for min/max ranges (widened to 0) of each (row, group)."""
    N, K = w.shape
    g = w.reshape(N, K // G, G)
    tol = step_tol(np.minimum(g.min(2), 0), np.maximum(g.max(2), 0), bits, k)
    return np.repeat(tol, G, axis=1)


def assert_weight_close(qw, w_float, bits, G, what):
    err = np.abs(dequantize_weight(qw) - w_float)
    tol = weight_tol(w_float, bits, G, qw.k)
    bad = err > tol
    assert not bad.any(), (f"{what}: {bad.sum()} weights beyond half a step, worst "
                           f"{(err / tol).max():.3f} steps/2")


# ---------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """GQA (4 heads, 2 kv heads), untied, single file; converted once, γ folded."""
    d = tmp_path_factory.mktemp("tiny")
    src = make_tiny_hf(d / "hf")
    out = convert(src, d / "model.intsim", norm_gain="fold")
    return src, out, load_model(out)


@pytest.fixture(scope="module")
def tied(tmp_path_factory):
    d = tmp_path_factory.mktemp("tied")
    src = make_tiny_hf(d / "hf", tie=True, n_kv_heads=4, seed=1)
    out = convert(src, d / "model.intsim", norm_gain="fold")
    return src, out, load_model(out)


# ---------------------------------------------------------------- the IntModel fields

def test_config_widths_spec(tiny):
    src, _, m = tiny
    assert isinstance(m, IntModel)
    c = m.config
    assert (c.n_layers, c.dim, c.n_heads, c.n_kv_heads, c.head_dim, c.ffn_dim, c.vocab_size,
            c.max_pos) == (2, 64, 4, 2, 16, 160, 300, 256)
    assert c.rope_theta == "10000.0" and (c.bos_id, c.eos_id) == (BOS_ID, EOS_ID)
    w = m.widths
    assert (w.w_bits, w.a_bits, w.group_size, w.head_w_bits, w.emb_bits) == (8, 8, 0, 8, 8)
    assert m.spec == Spec()
    assert len(m.layers) == 2


def test_linears_fold_gamma_and_quantize_within_half_step(tiny):
    src, _, m = tiny
    hf = hf_weights(src)
    for i, L in enumerate(m.layers):
        p = f"model.layers.{i}."
        for k, name in LINEARS.items():
            w = hf[p + name]
            if k in GAIN:
                w = w * hf[p + GAIN[k] + ".weight"][None, :]
            qw = getattr(L, k)
            assert qw.bits == 8 and qw.group_size == w.shape[1] and qw.q.dtype == np.uint8
            assert_weight_close(qw, w, 8, w.shape[1], f"layer {i} {k}")
        assert L.alpha_inv is None and L.alpha_k == 0


def test_missing_gamma_fold_would_be_caught(tiny):
    """The tolerance above is tight enough to see an unfolded gain (|gamma - 1| <= 0.1)."""
    src, _, m = tiny
    hf = hf_weights(src)
    w = hf["model.layers.0.self_attn.q_proj.weight"]
    err = np.abs(dequantize_weight(m.layers[0].wq) - w)
    assert (err > weight_tol(w, 8, w.shape[1], m.layers[0].wq.k)).any()


def test_head_folds_final_norm(tiny, tied):
    for src, _, m in (tiny, tied):
        hf = hf_weights(src)
        head = hf.get("lm_head.weight", hf["model.embed_tokens.weight"])
        w = head * hf["model.norm.weight"][None, :]
        assert m.w_head.bits == 8 and m.w_head.group_size == m.config.dim
        assert_weight_close(m.w_head, w, 8, m.config.dim, f"head of {src}")
    assert "lm_head.weight" not in hf_weights(tied[0])
    assert tied[2].meta["source"]["tie_word_embeddings"] is True
    assert tiny[2].meta["source"]["tie_word_embeddings"] is False


def test_embedding_rows_within_half_lsb(tiny):
    src, _, m = tiny
    e = hf_weights(src)["model.embed_tokens.weight"]
    assert m.emb_q.dtype == np.int8 and m.emb_m.dtype == np.int64 and m.emb_k.dtype == np.int64
    scale = m.emb_m.astype(np.float64) * 2.0 ** -m.emb_k.astype(np.float64)
    # per row: the scale is max|w| / 127 rounded UP to an 8-bit mantissa
    amax = np.abs(e).max(1)
    assert np.all(scale >= amax / 127) and np.all(scale < amax / 127 * (1 + 2 ** -7))
    assert np.all(np.abs(m.emb_q * scale[:, None] - e) <= 0.5 * scale[:, None] * (1 + 1e-12))
    assert np.all((m.emb_m >= 128) & (m.emb_m <= 255))      # m_bits = 8, normalized


def test_rope_tables_are_cos_sin(tiny):
    _, _, m = tiny
    c = m.config
    f = m.spec.rope_frac_bits
    assert m.cos_q.dtype == np.int16 and m.cos_q.shape == (c.max_pos, c.head_dim // 2)
    inv = 10000.0 ** (-np.arange(0, c.head_dim, 2) / c.head_dim)
    ang = np.arange(c.max_pos)[:, None] * inv[None, :]
    lsb = 2.0 ** -f
    assert np.abs(m.cos_q * lsb - np.cos(ang)).max() <= lsb / 2 + 1e-12
    assert np.abs(m.sin_q * lsb - np.sin(ang)).max() <= lsb / 2 + 1e-12


def test_explicit_head_dim_gqa_and_group_size(tmp_path):
    src = make_tiny_hf(tmp_path / "hf", n_heads=4, n_kv_heads=1, head_dim=24, seed=2,
                       rope_theta=500000.0)
    out = convert(src, tmp_path / "m.intsim", w_bits=4, a_bits=6, group_size=32,
                  head_w_bits=6, max_pos=40, norm_gain="fold")
    m = load_model(out)
    c = m.config
    assert (c.head_dim, c.n_kv_heads, c.max_pos) == (24, 1, 40)
    assert m.layers[0].wq.shape == (96, 64) and m.layers[0].wk.shape == (24, 64)
    assert m.layers[0].wo.shape == (64, 96)
    assert (m.widths.w_bits, m.widths.a_bits, m.widths.group_size, m.widths.head_w_bits) == \
        (4, 6, 32, 6)
    hf = hf_weights(src)
    L = m.layers[1]
    for k in ("wq", "wo", "w_down"):
        w = hf[f"model.layers.1.{LINEARS[k]}"]
        if k in GAIN:
            w = w * hf[f"model.layers.1.{GAIN[k]}.weight"][None, :]
        qw = getattr(L, k)
        assert qw.bits == 4 and qw.group_size == 32 and qw.n_groups == w.shape[1] // 32
        assert_weight_close(qw, w, 4, 32, k)
    assert m.w_head.bits == 6 and m.w_head.group_size == 64
    assert m.cos_q.shape == (40, 12) and c.rope_theta == "500000.0"
    ang = np.arange(40)[:, None] * 500000.0 ** (-np.arange(0, 24, 2) / 24)[None, :]
    assert np.abs(m.sin_q * 2.0 ** -14 - np.sin(ang)).max() <= 2.0 ** -15 + 1e-12


def test_sharded_equals_single_file(tmp_path, tiny):
    src = make_tiny_hf(tmp_path / "hf", shards=3)
    assert (src / "model.safetensors.index.json").is_file()
    assert not (src / "model.safetensors").exists()
    m = load_model(convert(src, tmp_path / "m.intsim", norm_gain="fold"))
    a, b = model_tensors(m), model_tensors(tiny[2])
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    files = m.meta["source"]["sha256"]
    assert set(files) == {"config.json", "tokenizer.json", "model.safetensors.index.json",
                          "model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors",
                          "model-00003-of-00003.safetensors"}


# ---------------------------------------------------------------- file round trip, metadata

def test_exact_roundtrip_of_every_tensor(tmp_path):
    src = make_tiny_hf(tmp_path / "hf", seed=5)
    model, tok = build_model(src, group_size=16)
    out = save_model(model, tmp_path / "m.intsim", tok)
    back = load_model(out)
    a, b = model_tensors(model), model_tensors(back)
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    for i, (L1, L2) in enumerate(zip(model.layers, back.layers)):
        for k in LINEARS:
            q1, q2 = getattr(L1, k), getattr(L2, k)
            assert (q1.bits, q1.group_size, q1.k) == (q2.bits, q2.group_size, q2.k), (i, k)
    assert (model.w_head.bits, model.w_head.k) == (back.w_head.bits, back.w_head.k)
    assert back.config == model.config and back.widths == model.widths and back.spec == model.spec


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_metadata_and_hashes(tiny):
    src, out, m = tiny
    with safe_open(str(out), framework="np") as f:
        raw = f.metadata()
    assert set(raw) == {"intsim"}
    h = json.loads(raw["intsim"])
    assert h["format"] == MAGIC == "intsim-model" and h["format_version"] == FORMAT_VERSION == 1
    assert h["spec"] == Spec().to_dict()
    assert h["config"]["rope_theta"] == "10000.0"
    assert h["source"]["kind"] == "hf" and h["source"]["path"] == str(src.absolute())
    assert h["source"]["sha256"] == {n: _sha(src / n) for n in
                                     ("config.json", "model.safetensors", "tokenizer.json")}
    assert json.loads(h["source"]["config_json"]) == json.loads((src / "config.json").read_text())
    assert h["calib"] is None and h["alpha_k"] == [None, None]
    assert h["qweights"]["layers.1.w_down"] == {"bits": 8, "group_size": 160,
                                                "k": m.layers[1].w_down.k}
    assert h["tokenizer_sha256"] == _sha(src / "tokenizer.json")
    assert m.meta["file"] == str(out)
    assert model_hash(out) == _sha(out)


def test_tokenizer_is_embedded(tiny):
    from tokenizers import Tokenizer
    src, out, m = tiny
    want = Tokenizer.from_file(str(src / "tokenizer.json"))
    text = "The integer dog jumps 1024 times."
    for tk in (load_tokenizer(out), load_tokenizer(m), load_tokenizer(str(out))):
        assert tk.encode(text).ids == want.encode(text).ids
    with safe_open(str(out), framework="np") as f:
        assert f.get_tensor("tokenizer.json").tobytes() == (src / "tokenizer.json").read_bytes()


# ---------------------------------------------------------------- atomic writing

def _leftovers(d: Path, keep=()):
    return sorted(p.name for p in d.iterdir() if p.name not in keep)


def test_refusal_writes_nothing(tmp_path):
    src = make_tiny_hf(tmp_path / "hf", hidden_act="gelu")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(ConvertError):
        convert(src, out_dir / "m.intsim", norm_gain="fold")
    assert _leftovers(out_dir) == []


@pytest.mark.parametrize("fail_at", ["write", "replace"])
def test_failing_write_leaves_no_file_and_keeps_the_old_one(tmp_path, monkeypatch, fail_at):
    src = make_tiny_hf(tmp_path / "hf")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "m.intsim"
    out.write_bytes(b"previous model")

    def boom(*a, **k):
        raise OSError("disk full (simulated)")

    if fail_at == "write":
        monkeypatch.setattr(os, "fsync", boom)        # after the bytes went to the temp file
    else:
        monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="simulated"):
        convert(src, out, norm_gain="fold")
    assert _leftovers(out_dir) == ["m.intsim"]
    assert out.read_bytes() == b"previous model"
    monkeypatch.undo()
    convert(src, out, norm_gain="fold")                                  # and a later run replaces it
    assert load_model(out).config.n_layers == 2 and _leftovers(out_dir) == ["m.intsim"]


# ---------------------------------------------------------------- converter refusals

CONFIG_REFUSALS = [
    (dict(model_type="mistral"), r"'model_type' is 'mistral'"),
    (dict(architectures=["MistralForCausalLM"]), r"'architectures' is \['MistralForCausalLM'\]"),
    (dict(model_type=None, architectures=None), r"neither 'model_type' nor 'architectures'"),
    (dict(rope_scaling={"rope_type": "yarn", "factor": 2.0}),
     r"'rope_scaling.rope_type' is 'yarn': not supported"),
    (dict(rope_scaling={"type": "dynamic", "factor": 2.0}),
     r"'rope_scaling.type' is 'dynamic': not supported"),
    (dict(rope_theta=None, rope_parameters={"rope_type": "longrope", "rope_theta": 1e4}),
     r"'rope_parameters.rope_type' is 'longrope': not supported"),
    (dict(rope_theta=None, rope_parameters={"rope_type": "llama3", "rope_theta": 1e4,
                                             "factor": 8.0}),
     r"'rope_parameters.low_freq_factor' is missing"),
    (dict(rope_theta=None, rope_parameters={"rope_type": "linear", "rope_theta": 1e4,
                                             "factor": 2.0, "beta_fast": 32}),
     r"'rope_parameters.beta_fast' = 32: a field rope type 'linear' does not take"),
    (dict(rope_theta=5e5, rope_parameters={"rope_type": "default", "rope_theta": 1e4}),
     r"'rope_theta' 500000.0 and 'rope_parameters.rope_theta' 10000.0 disagree"),
    (dict(sliding_window=4096), r"'sliding_window' = 4096: not part of the LLaMA graph"),
    (dict(partial_rotary_factor=0.5), r"'partial_rotary_factor' = 0.5"),
    (dict(attention_bias=True), r"'attention_bias' is True"),
    (dict(mlp_bias=True), r"'mlp_bias' is True"),
    (dict(hidden_act="gelu"), r"'hidden_act' is 'gelu'"),
    (dict(num_key_value_heads=3), r"'num_attention_heads' 4 is not a multiple of "
                                  r"'num_key_value_heads' 3"),
    (dict(hidden_size=None), r"required key 'hidden_size' is missing"),
    (dict(rope_theta="big"), r"'rope_theta' = 'big'"),
    (dict(bos_token_id=300), r"'bos_token_id' = 300 is not a token id"),
    (dict(tie_word_embeddings="yes"), r"'tie_word_embeddings' = 'yes'"),
    (dict(num_hidden_layers=3), r"tensor 'model.layers.2.input_layernorm.weight' is missing"),
    (dict(num_hidden_layers=1), r"unexpected tensor 'model.layers.1"),
    (dict(head_dim=15, num_attention_heads=4), r"head_dim 15 is odd"),
]


@pytest.mark.parametrize("cfg,match", CONFIG_REFUSALS, ids=[m for _, m in CONFIG_REFUSALS])
def test_config_refusals_name_the_key(tmp_path, cfg, match):
    src = make_tiny_hf(tmp_path / "hf", **cfg)
    with pytest.raises(ConvertError, match=match):
        convert(src, tmp_path / "m.intsim", norm_gain="fold")
    assert not (tmp_path / "m.intsim").exists()


def _weights_with(change):
    from tiny_llama import tiny_weights
    w = tiny_weights(n_layers=2, dim=64, n_heads=4, n_kv_heads=2, head_dim=16, ffn_dim=160,
                     vocab_size=300, tie=False, seed=0)
    change(w)
    return w


TENSOR_REFUSALS = [
    (lambda w: w.pop("model.layers.1.mlp.up_proj.weight"),
     r"tensor 'model.layers.1.mlp.up_proj.weight' is missing"),
    (lambda w: w.__setitem__("model.layers.0.self_attn.q_proj.bias", np.zeros(64, np.float32)),
     r"tensor 'model.layers.0.self_attn.q_proj.bias': bias tensors are not supported"),
    (lambda w: w.__setitem__("model.norm.weight", np.ones(64, np.int32)),
     r"tensor 'model.norm.weight': dtype I32, expected one of F32, F16, BF16"),
    (lambda w: w.__setitem__("model.layers.0.self_attn.k_proj.weight",
                             np.zeros((64, 64), np.float32)),
     r"tensor 'model.layers.0.self_attn.k_proj.weight': shape \(64, 64\), expected \(32, 64\)"),
    (lambda w: w.__setitem__("model.layers.0.extra.weight", np.zeros(3, np.float32)),
     r"unexpected tensor 'model.layers.0.extra.weight'"),
    (lambda w: w.pop("lm_head.weight"),
     r"tensor 'lm_head.weight' is missing and 'tie_word_embeddings' is false"),
    (lambda w: w["model.layers.0.mlp.down_proj.weight"].__setitem__((3, 4), np.nan),
     r"tensor 'model.layers.0.mlp.down_proj.weight' holds a non-finite value"),
]


@pytest.mark.parametrize("change,match", TENSOR_REFUSALS, ids=[m for _, m in TENSOR_REFUSALS])
def test_tensor_refusals_name_the_tensor(tmp_path, change, match):
    src = make_tiny_hf(tmp_path / "hf", weights=_weights_with(change))
    with pytest.raises(ConvertError, match=match):
        convert(src, tmp_path / "m.intsim", norm_gain="fold")
    assert _leftovers(tmp_path) == ["hf"]


def test_vocab_size_against_tensors(tmp_path):
    src = make_tiny_hf(tmp_path / "hf", weights=_weights_with(lambda w: None), vocab_size=299)
    with pytest.raises(ConvertError, match=r"tensor 'model.embed_tokens.weight': shape "
                                           r"\(300, 64\), expected \(299, 64\) from "
                                           r"config.json"):
        convert(src, tmp_path / "m.intsim", norm_gain="fold")


def test_tied_lm_head_must_match_embedding(tmp_path):
    w = _weights_with(lambda w: None)
    src = make_tiny_hf(tmp_path / "hf", weights=w, tie_word_embeddings=True)
    with pytest.raises(ConvertError, match=r"'lm_head.weight' differs from "
                                           r"'model.embed_tokens.weight'"):
        convert(src, tmp_path / "m.intsim", norm_gain="fold")
    w["lm_head.weight"] = w["model.embed_tokens.weight"].copy()
    src = make_tiny_hf(tmp_path / "hf2", weights=w, tie_word_embeddings=True)
    m = load_model(convert(src, tmp_path / "m.intsim", norm_gain="fold"))
    assert m.meta["source"]["tie_word_embeddings"] is True


def test_folder_refusals(tmp_path):
    src = make_tiny_hf(tmp_path / "hf")
    out = tmp_path / "m.intsim"
    (src / "tokenizer.json").rename(tmp_path / "tok.json")
    with pytest.raises(ConvertError, match=r"tokenizer.json: missing"):
        convert(src, out, norm_gain="fold")
    (tmp_path / "tok.json").write_text("{not json")
    (tmp_path / "tok.json").rename(src / "tokenizer.json")
    with pytest.raises(ConvertError, match=r"tokenizer.json: not a loadable tokenizer.json"):
        convert(src, out, norm_gain="fold")
    src2 = make_tiny_hf(tmp_path / "small", vocab_size=280)
    cfg = json.loads((src2 / "config.json").read_text())
    from tiny_llama import tiny_tokenizer
    tiny_tokenizer(300).save(str(src2 / "tokenizer.json"))
    with pytest.raises(ConvertError, match=r"300 tokens, more than 'vocab_size' 280"):
        convert(src2, out, norm_gain="fold")
    assert cfg["vocab_size"] == 280
    src3 = make_tiny_hf(tmp_path / "bin")
    (src3 / "model.safetensors").rename(src3 / "pytorch_model.bin")
    with pytest.raises(ConvertError, match=r"no model.safetensors or model.safetensors.index.json "
                                           r"\(found pytorch_model.bin"):
        convert(src3, out, norm_gain="fold")
    src4 = make_tiny_hf(tmp_path / "trunc")
    data = (src4 / "model.safetensors").read_bytes()
    (src4 / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ConvertError, match=r"model.safetensors: not a readable safetensors file"):
        convert(src4, out, norm_gain="fold")
    src5 = make_tiny_hf(tmp_path / "shard", shards=2)
    (src5 / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(ConvertError, match=r"weight file 'model-00002-of-00002.safetensors' is "
                                           r"missing"):
        convert(src5, out, norm_gain="fold")
    (src / "config.json").write_text("[1, 2")
    with pytest.raises(ConvertError, match=r"config.json: not valid JSON"):
        convert(src, out, norm_gain="fold")
    with pytest.raises(ConvertError, match="no such file or folder"):
        convert(tmp_path / "absent", out, norm_gain="fold")
    with pytest.raises(ConvertError, match="is a folder"):
        convert(src, tmp_path, norm_gain="fold")
    assert not out.exists()


def test_argument_refusals(tmp_path):
    src = make_tiny_hf(tmp_path / "hf")
    out = tmp_path / "m.intsim"
    with pytest.raises(ConvertError, match=r"group_size: 48 does not divide K = 64"):
        convert(src, out, group_size=48, norm_gain="fold")
    with pytest.raises(IntsimError, match=r"w_bits: 9 is outside"):
        convert(src, out, w_bits=9, norm_gain="fold")
    with pytest.raises(IntsimError, match=r"max_pos: 0"):
        convert(src, out, max_pos=0, norm_gain="fold")
    assert not out.exists()


def test_bfloat16_and_float16_checkpoints(tmp_path):
    w = _weights_with(lambda w: None)
    # values exactly representable in bfloat16: keep the top 16 bits of each float32
    wb = {k: (v.view(np.uint32) & np.uint32(0xFFFF0000)).view(np.float32) for k, v in w.items()}
    src = make_tiny_hf(tmp_path / "f32", weights=wb)
    # the same values stored as BF16 (safetensors by hand: numpy has no bfloat16)
    header, blobs, off = {}, [], 0
    for k, v in wb.items():
        raw = (v.view(np.uint32) >> 16).astype("<u2").tobytes()
        header[k] = {"dtype": "BF16", "shape": list(v.shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    hb = json.dumps(header).encode()
    hb += b" " * (-len(hb) % 8)
    bf = make_tiny_hf(tmp_path / "bf16", weights=wb)
    (bf / "model.safetensors").write_bytes(len(hb).to_bytes(8, "little") + hb + b"".join(blobs))
    f16 = make_tiny_hf(tmp_path / "f16", weights={k: v.astype(np.float16) for k, v in wb.items()})
    a = model_tensors(load_model(convert(src, tmp_path / "a.intsim", norm_gain="fold")))
    b = model_tensors(load_model(convert(bf, tmp_path / "b.intsim", norm_gain="fold")))
    load_model(convert(f16, tmp_path / "c.intsim", norm_gain="fold"))
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


# ---------------------------------------------------------------- loader refusals

def _rewrite(src_file: Path, dst: Path, *, header=None, tensors=None, raw_meta=None):
    with safe_open(str(src_file), framework="np") as f:
        t = {k: f.get_tensor(k) for k in f.keys()}
        h = json.loads(f.metadata()["intsim"])
    if header:
        header(h)
    if tensors:
        tensors(t)
    meta = raw_meta if raw_meta is not None else {"intsim": json.dumps(h)}
    save_file(t, str(dst), metadata=meta)
    return dst


LOADER_REFUSALS = [
    (dict(raw_meta={}), r"not an intsim model file \(no 'intsim' metadata\)"),
    (dict(raw_meta={"intsim": "{oops"}), r"metadata 'intsim' is not valid JSON"),
    (dict(header=lambda h: h.__setitem__("format", "other")), r"format is not 'intsim-model'"),
    (dict(header=lambda h: h.__setitem__("format_version", 2)),
     r"format_version 2, .* reads format_version 1; regenerate it with: intsim convert SRC "
     r"--out MODEL"),
    (dict(header=lambda h: h.pop("widths")), r"metadata key 'widths' is missing"),
    (dict(header=lambda h: h["config"].pop("dim")), r"metadata 'config': .*dim"),
    (dict(header=lambda h: h["spec"].__setitem__("m_bits", 99)),
     r"metadata 'spec': m_bits: 99 is outside"),
    (dict(header=lambda h: h["qweights"]["layers.0.wv"].__setitem__("bits", 4)),
     r"metadata 'qweights.layers.0.wv': bits 4, group_size 64 disagree"),
    (dict(tensors=lambda t: t.pop("layers.1.w_up.m")), r"tensor 'layers.1.w_up.m' is missing"),
    (dict(tensors=lambda t: t.__setitem__("emb.m", t["emb.m"].astype(np.int32))),
     r"tensor 'emb.m': dtype int32, expected int64"),
    (dict(tensors=lambda t: t.__setitem__("rope.sin", t["rope.sin"][:10])),
     r"tensor 'rope.sin': shape \(10, 8\), expected \(256, 8\)"),
    (dict(tensors=lambda t: t.__setitem__("layers.0.bonus", np.zeros(2, np.int8))),
     r"unexpected tensor 'layers.0.bonus'"),
    (dict(tensors=lambda t: t.pop("tokenizer.json")), r"tensor 'tokenizer.json' is missing"),
    (dict(tensors=lambda t: t["head.q"].__setitem__((0, 0), t["head.q"][0, 0] ^ 1)),
     r"tensor data sha256 .* the file is corrupt"),
]


@pytest.mark.parametrize("kw,match", LOADER_REFUSALS, ids=[m for _, m in LOADER_REFUSALS])
def test_loader_refusals_name_file_and_tensor(tiny, tmp_path, kw, match):
    _, out, _ = tiny
    bad = _rewrite(out, tmp_path / "bad.intsim", **kw)
    with pytest.raises(IntsimError, match=match) as ei:
        load_model(bad)
    assert str(bad) in str(ei.value)


def test_loader_checks_values_and_alpha(tiny, tmp_path):
    _, out, _ = tiny
    # an out-of-range weight mantissa, with the hash check off to reach the value checks
    bad = _rewrite(out, tmp_path / "m.intsim",
                   tensors=lambda t: t["layers.0.wk.m"].__setitem__((0, 0), -5))
    with pytest.raises(IntsimError, match=r"bad.intsim|m.intsim: tensor 'layers.0.wk': "
                                          r"QWeight.m: value -5"):
        load_model(bad, verify=False)
    bad2 = _rewrite(out, tmp_path / "a.intsim",
                    header=lambda h: h.__setitem__("alpha_k", [3, None]),
                    tensors=lambda t: t.__setitem__("layers.0.alpha_inv",
                                                    np.zeros(160, np.int64)))
    with pytest.raises(IntsimError, match=r"tensor 'layers.0.alpha_inv': values \[0, 0\] outside"):
        load_model(bad2, verify=False)


def test_loader_refuses_broken_files(tiny, tmp_path):
    _, out, _ = tiny
    data = out.read_bytes()
    for name, blob in (("trunc", data[:-100]), ("half", data[: len(data) // 2]),
                       ("garbage", b"hello, not a model"), ("empty", b"")):
        p = tmp_path / f"{name}.intsim"
        p.write_bytes(blob)
        with pytest.raises(IntsimError, match=rf"{name}.intsim: not a readable safetensors model "
                                              rf"file .*truncated or corrupt"):
            load_model(p)
        with pytest.raises(IntsimError, match=rf"{name}.intsim"):
            load_tokenizer(p)
    with pytest.raises(IntsimError, match=r"absent.intsim: no such model file; create one with: "
                                          r"intsim convert"):
        load_model(tmp_path / "absent.intsim")
    with pytest.raises(IntsimError, match=r"absent.intsim: cannot read"):
        model_hash(tmp_path / "absent.intsim")
    # a corrupted tokenizer is caught by its own hash
    bad = _rewrite(out, tmp_path / "tok.intsim",
                   tensors=lambda t: t.__setitem__("tokenizer.json", t["tokenizer.json"][:-1]))
    with pytest.raises(IntsimError, match=r"tok.intsim: tensor 'tokenizer.json': sha256 differs"):
        load_tokenizer(bad)


# ---------------------------------------------------------------- FSBR end to end

def _official_params(cfg, seed=0):
    import test_calib
    return test_calib.official_params(seed=seed, n_layers=cfg.n_layers, cfg=cfg)


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_calibrated_conversion(tmp_path, tiny, fmt):
    import test_calib
    from converters import calib as C
    src, _, m0 = tiny
    params = _official_params(m0.config)
    cpath = (test_calib.params_to_pth(tmp_path / "fsbr_parameters.pth", params) if fmt == "pth"
             else save_calib_safetensors(params, tmp_path / "fsbr.safetensors"))
    out = convert(src, tmp_path / "m.intsim", calib=cpath, norm_gain="fold")
    m = load_model(out)
    h = m.meta
    assert h["calib"]["path"] == str(cpath.absolute()) and h["calib"]["sha256"] == _sha(cpath)
    assert h["calib"]["format"] == fmt and h["calib"]["layers"] == 2
    hf = hf_weights(src)
    lcs = C.prepare_calib(params, m.config)
    for i, L in enumerate(m.layers):
        p = f"model.layers.{i}."
        w = {k: hf[p + n] for k, n in LINEARS.items()}
        ga, gf = hf[p + "input_layernorm.weight"], hf[p + "post_attention_layernorm.weight"]
        w, ga, gf, alpha = C.apply_smoothing(w, ga, gf, lcs[i], m.config)
        # alpha_inv: the integer 1/alpha of the x1x2 scale
        assert L.alpha_inv is not None and h["alpha_k"][i] == L.alpha_k
        inv = L.alpha_inv * 2.0 ** -L.alpha_k
        assert np.all(np.abs(inv * alpha - 1) <= 0.5 / L.alpha_inv * (1 + 1e-12))
        for k in LINEARS:
            wf = w[k] * (ga if k in GAIN and GAIN[k] == "input_layernorm" else
                         gf if k in GAIN else 1.0)
            up, low = lcs[i].lwc[k]
            lo, hi = C.lwc_bounds(wf, up, low)
            qw = getattr(L, k)
            deq = dequantize_weight(qw)
            tol = step_tol(lo, hi, 8, qw.k)
            # LWC: every dequantized weight lies inside the learned bounds (+ the tolerance)
            assert np.all(deq <= hi + tol) and np.all(deq >= lo - tol), (i, k)
            # and inside them it is the smoothed, gamma-folded float weight
            inside = (wf <= hi) & (wf >= lo)
            assert inside.mean() > 0.5, (i, k)
            err = np.abs(deq - wf)
            assert np.all(err[inside] <= np.broadcast_to(tol, wf.shape)[inside]), (i, k)


def test_calibration_refusal_before_writing(tmp_path, tiny, capsys):
    src, _, m0 = tiny
    params = _official_params(m0.config)
    params[1]["qkt_smooth_scale"][3] *= 2.0          # breaks the RoPE pair (3, 11)
    cpath = save_calib_safetensors(params, tmp_path / "c.safetensors")
    out = tmp_path / "m.intsim"
    for strict in ("strict", "refuse"):              # "refuse": the option's old name
        with pytest.raises(CalibError, match=r"c.safetensors: layer 1: 'qkt_smooth_scale' "
                                             r"differs between RoPE-paired channels 3 and 11"):
            convert(src, out, calib=cpath, norm_gain="fold", qkt_tie=strict)
        assert not out.exists()
    capsys.readouterr()
    # the default ties the pair, says so in one line, and records it in the header
    m = load_model(convert(src, out, calib=cpath, norm_gain="fold"))
    err = capsys.readouterr().err.splitlines()
    note = [ln for ln in err if "note:" in ln]
    assert len(note) == 1
    assert ("c.safetensors: 'qkt_smooth_scale' differs between RoPE-paired channels in 1 of 2 "
            "layers (1 pairs, factors up to 2x apart)") in note[0]
    assert "docs/SPEC.md section 9.3" in note[0] and "--qkt-tie strict" in note[0]
    assert m.meta["calib"]["qkt_tie"] == "geomean"
    assert m.meta["calib"]["qkt_tied_pairs"] == 1
    # a tied file converts without a note
    params[1]["qkt_smooth_scale"][3] /= 2.0
    convert(src, out, calib=save_calib_safetensors(params, tmp_path / "t.safetensors"),
            norm_gain="fold")
    assert "note:" not in capsys.readouterr().err
    del params[1]
    with pytest.raises(CalibError, match=r"layer count: the file has 1 layers"):
        convert(src, out, calib=save_calib_safetensors(params, tmp_path / "one.safetensors"), norm_gain="fold")


# ---------------------------------------------------------------- command line

def test_cli(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        CV.main(["--help"])
    assert e.value.code == 0
    helptext = capsys.readouterr().out
    for opt in ("SRC", "--out MODEL", "--wbits W", "--abits A", "--group-size G", "--calib FILE",
                "--max-pos N", "--head-abits A"):
        assert opt in helptext
    src = make_tiny_hf(tmp_path / "hf")
    out = tmp_path / "m.intsim"
    assert CV.main([str(src), "--out", str(out), "--wbits", "6", "--group-size", "32"]) == 0
    m = load_model(out)
    assert m.widths.w_bits == 6 and m.widths.group_size == 32
    assert CV.main([str(src), "--out", str(out), "--group-size", "48"]) == 2
    assert "intsim convert: error: group_size: 48 does not divide" in capsys.readouterr().err
    assert CV.main([str(src), "--out", str(out), "--spec", "paper"]) == 0
    assert load_model(out).spec == Spec.paper()
    assert CV.main([str(src), "--out", str(out), "--spec", '{"rope_frac_bits": 16}']) == 0
    m = load_model(out)
    assert m.spec.rope_frac_bits == 16 and m.cos_q.dtype == np.int32
    assert int(np.abs(m.cos_q).max()) == 2 ** 16
    assert CV.main([str(src), "--out", str(out), "--spec", '{"bogus": 1}']) == 2
    assert "--spec: spec options: unknown option(s) ['bogus']" in capsys.readouterr().err


# ---------------------------------------------------------------- GGUF source

def _write_gguf(path: Path, hf_dir: Path):
    """A GGUF (all F32 tensors) holding the tiny HF checkpoint and its tokenizer."""
    gguf = pytest.importorskip("gguf")
    cfg = json.loads((hf_dir / "config.json").read_text())
    tok = json.loads((hf_dir / "tokenizer.json").read_text())
    vocab = sorted(tok["model"]["vocab"].items(), key=lambda kv: kv[1])
    tokens = [t for t, _ in vocab]
    assert [i for _, i in vocab] == list(range(len(tokens)))
    merges = [" ".join(m) if isinstance(m, list) else m for m in tok["model"]["merges"]]
    specials = {a["id"] for a in tok["added_tokens"]}
    n_head, n_kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg["hidden_size"] // n_head

    def interleave(w, nh):            # llama.cpp's q/k row order: rotary pairs adjacent
        return w.reshape(nh, 2, hd // 2, -1).swapaxes(1, 2).reshape(w.shape)

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_rope_dimension_count(hd)
    w.add_rope_freq_base(cfg["rope_theta"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_vocab_size(len(tokens))
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt2")
    w.add_token_list(tokens)
    w.add_token_types([3 if i in specials else 1 for i in range(len(tokens))])
    w.add_token_merges(merges)
    w.add_bos_token_id(cfg["bos_token_id"])
    w.add_eos_token_id(cfg["eos_token_id"])
    names = {"input_layernorm.weight": "attn_norm.weight",
             "post_attention_layernorm.weight": "ffn_norm.weight",
             "self_attn.q_proj.weight": "attn_q.weight", "self_attn.k_proj.weight": "attn_k.weight",
             "self_attn.v_proj.weight": "attn_v.weight",
             "self_attn.o_proj.weight": "attn_output.weight",
             "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
             "mlp.down_proj.weight": "ffn_down.weight"}
    glob = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight":
            "output_norm.weight", "lm_head.weight": "output.weight"}
    for name, a in load_file(str(hf_dir / "model.safetensors")).items():
        if name in glob:
            gname = glob[name]
        else:
            _, _, i, rest = name.split(".", 3)
            gname = f"blk.{i}.{names[rest]}"
        if rest_is(name, "q_proj"):
            a = interleave(a, n_head)
        elif rest_is(name, "k_proj"):
            a = interleave(a, n_kv)
        w.add_tensor(gname, np.ascontiguousarray(a, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def rest_is(name: str, proj: str) -> bool:
    return name.endswith(f"self_attn.{proj}.weight")


def test_gguf_source_equals_hf_source(tmp_path, tiny):
    src, _, m_hf = tiny
    g = _write_gguf(tmp_path / "tiny.gguf", src)
    out = convert(g, tmp_path / "g.intsim", norm_gain="fold")
    m = load_model(out)
    assert m.config == m_hf.config
    a, b = model_tensors(m), model_tensors(m_hf)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    s = m.meta["source"]
    assert s["kind"] == "gguf" and s["path"] == str(g.absolute())
    assert s["sha256"] == {"tiny.gguf": _sha(g)}
    assert set(s["imported_sha256"]) >= {"config.json", "model.safetensors", "tokenizer.json"}
    assert load_tokenizer(m).encode("the lazy dog 42").ids == \
        load_tokenizer(m_hf).encode("the lazy dog 42").ids
    assert _leftovers(tmp_path) == ["g.intsim", "tiny.gguf"]      # the import's temp is gone
    (tmp_path / "bad.gguf").write_bytes(b"GGUF" + b"\0" * 20)
    with pytest.raises(ConvertError, match=r"bad.gguf: corrupt or truncated GGUF"):
        convert(tmp_path / "bad.gguf", tmp_path / "b.intsim", norm_gain="fold")


# ---------------------------------------------------------------- γ kept in DI-Norm

def test_norm_gain_channel_keeps_gamma_per_channel(tmp_path):
    """--norm-gain channel: q..v, gate, up carry no γ; DI-Norm's 16-bit weights are γ within
    half an LSB of their exponent; the file round trip keeps them; the folded model has none."""
    src = make_tiny_hf(tmp_path / "hf", seed=3)
    model, tok = build_model(src, norm_gain="channel")
    hf = hf_weights(src)
    for i, L in enumerate(model.layers):
        p = f"model.layers.{i}."
        for k, name in LINEARS.items():
            w = hf[p + name]
            assert_weight_close(getattr(L, k), w, 8, w.shape[1], f"layer {i} {k} (no γ)")
        for n, hfn in (("attn_norm", "input_layernorm"), ("ffn_norm", "post_attention_layernorm")):
            g, k = getattr(L, f"{n}_w"), getattr(L, f"{n}_k")
            gam = hf[p + hfn + ".weight"]
            assert g.dtype == np.int16 and np.abs(g).max() > 2 ** 14      # the range is used
            assert np.abs(g * 2.0 ** -k - gam).max() <= 2.0 ** -(k + 1)
    back = load_model(save_model(model, tmp_path / "m.intsim", tok))
    for L1, L2 in zip(model.layers, back.layers):
        for n in ("attn_norm_w", "ffn_norm_w"):
            np.testing.assert_array_equal(getattr(L1, n), getattr(L2, n))
        assert (L1.attn_norm_k, L1.ffn_norm_k) == (L2.attn_norm_k, L2.ffn_norm_k)
    folded, _ = build_model(src, norm_gain="fold")
    assert all(L.attn_norm_w is None and L.ffn_norm_w is None for L in folded.layers)


def test_norm_gain_refusals(tmp_path):
    src = make_tiny_hf(tmp_path / "hf", seed=3)
    with pytest.raises(ConvertError, match="norm_gain"):
        build_model(src, norm_gain="sideways")
    with pytest.raises(ConvertError, match=r"layers\.0\.attn_norm_w.*exceeds"):
        CV.quantize_norm_gain(np.array([1.0, 40000.0]), "layers.0.attn_norm_w")
    with pytest.raises(ConvertError, match="layers.1.ffn_norm_w: non-finite"):
        CV.quantize_norm_gain(np.array([1.0, np.nan]), "layers.1.ffn_norm_w")
    model, tok = build_model(src, norm_gain="channel")
    out = save_model(model, tmp_path / "m.intsim", tok)
    # a file whose norm_k metadata is out of range is refused by name
    from safetensors import safe_open
    with safe_open(str(out), "numpy") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    h = json.loads(meta["intsim"])
    h["norm_k"][0][0] = 99
    save_file(tensors, str(tmp_path / "bad.intsim"), metadata={"intsim": json.dumps(h)})
    with pytest.raises(IntsimError, match="norm_k"):
        load_model(tmp_path / "bad.intsim", verify=False)


def test_untied_official_pth_converts_by_default(tmp_path, tiny, capsys):
    """The official I-LLM fsbr_parameters.pth learns q/k factors untied per RoPE pair: the
    command line converts it with no extra flag and one note; --qkt-tie strict refuses."""
    import test_calib
    from intsim_app.cli import main
    src, _, m0 = tiny
    params = _official_params(m0.config, seed=3)
    rng = np.random.default_rng(1)
    for i in params:                               # untie every pair, as the official file is
        params[i]["qkt_smooth_scale"] *= rng.uniform(0.5, 2.0, params[i]["qkt_smooth_scale"].shape)
    cpath = test_calib.params_to_pth(tmp_path / "fsbr_parameters.pth", params)
    out = tmp_path / "m.intsim"
    assert main(["convert", str(src), "--out", str(out), "--calib", str(cpath)]) == 0
    err = capsys.readouterr().err
    notes = [ln for ln in err.splitlines() if "note:" in ln]
    assert len(notes) == 1 and "in 2 of 2 layers" in notes[0] and "geometric mean" in notes[0]
    assert load_model(out).meta["calib"]["qkt_tied_pairs"] == 2 * m0.config.n_kv_heads * 8
    out.unlink()
    assert main(["convert", str(src), "--out", str(out), "--calib", str(cpath),
                 "--qkt-tie", "strict"]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "differs between RoPE-paired channels" in err
    assert not out.exists()
