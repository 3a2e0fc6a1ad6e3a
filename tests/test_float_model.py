"""Float reference LLaMA (converters.float_model) and the PyTorch baseline (converters.torch_llama).

Checked against an independent float64 forward written here with plain loops (one position and
one head at a time), against each other, and against model identities that a wrong head
grouping, mask, tie or RoPE pairing would break.
"""
from __future__ import annotations

import json
import math
import struct
import sys

import numpy as np
import pytest

from converters.float_model import FloatLlama, LlamaConfig, load_hf_weights, rms_norm, rope_cos_sin
from converters.hfconfig import RopeConfig
from tiny_llama import make_tiny_hf

#: float32 forward vs a float64 forward, or vs PyTorch's float32 forward: max |Δlogit| relative
#: to max |logit|.  float32 rounds at 6e-8 relative; the tiny models sum <= 160 products per dot
#: and go through 2 layers, so accumulated differences stay near 1e-6 (measured: ~3e-7 on the
#: tiny models, 3e-6 on SmolLM2-135M); 1e-4 leaves room for BLAS/summation-order changes while
#: any real formula error (a missing RoPE pair, wrong group, wrong eps) shows at >= 1e-2.
LOGIT_RTOL = 1e-4

try:
    import torch  # noqa: F401
    HAVE_TORCH = True
except ImportError:
    HAVE_TORCH = False
needs_torch = pytest.mark.skipif(not HAVE_TORCH, reason="torch not installed (pip install 'intsim[torch]')")

CONFIGS = {
    "gqa_untied": dict(n_heads=4, n_kv_heads=2, tie=False),
    "mha_tied": dict(n_heads=4, n_kv_heads=4, tie=True),
    "mqa_head_dim": dict(n_heads=4, n_kv_heads=1, head_dim=24, tie=False),
}


def _ids(n, vocab=300, seed=1):
    return np.random.default_rng(seed).integers(0, vocab, n)


def _close(a, b, rtol=LOGIT_RTOL):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    err = np.abs(a - b).max() / max(np.abs(b).max(), 1e-30)
    assert err <= rtol, f"max rel-to-max error {err:.3g} > {rtol}"


def _naive_forward(cfg: LlamaConfig, w: dict, ids) -> np.ndarray:
    """float64 LLaMA forward, loops over positions and heads, written from the HF formulas."""
    w = {k: v.astype(np.float64) for k, v in w.items()}
    T, hd, half = len(ids), cfg.head_dim, cfg.head_dim // 2
    inv = [cfg.rope_theta ** (-2.0 * i / hd) for i in range(half)]

    def norm(x, g):
        return g * x / math.sqrt(sum(float(t) ** 2 for t in x) / len(x) + cfg.rms_eps)

    def rope(vec, pos):
        out = vec.copy()
        for i in range(half):
            c, s = math.cos(pos * inv[i]), math.sin(pos * inv[i])
            out[i] = vec[i] * c - vec[i + half] * s
            out[i + half] = vec[i + half] * c + vec[i] * s
        return out

    x = [w["model.embed_tokens.weight"][t].copy() for t in ids]
    group = cfg.n_heads // cfg.n_kv_heads
    for layer in range(cfg.n_layers):
        p = f"model.layers.{layer}."
        ks, vs, qs = [], [], []
        for t in range(T):
            h = norm(x[t], w[p + "input_layernorm.weight"])
            q = w[p + "self_attn.q_proj.weight"] @ h
            k = w[p + "self_attn.k_proj.weight"] @ h
            qs.append([rope(q[j * hd:(j + 1) * hd], t) for j in range(cfg.n_heads)])
            ks.append([rope(k[j * hd:(j + 1) * hd], t) for j in range(cfg.n_kv_heads)])
            v = w[p + "self_attn.v_proj.weight"] @ h
            vs.append([v[j * hd:(j + 1) * hd] for j in range(cfg.n_kv_heads)])
        for t in range(T):
            heads = []
            for j in range(cfg.n_heads):
                g = j // group
                sc = [float(qs[t][j] @ ks[u][g]) / math.sqrt(hd) for u in range(t + 1)]
                mx = max(sc)
                e = [math.exp(s - mx) for s in sc]
                heads.append(sum(e[u] / sum(e) * vs[u][g] for u in range(t + 1)))
            x[t] = x[t] + w[p + "self_attn.o_proj.weight"] @ np.concatenate(heads)
            h = norm(x[t], w[p + "post_attention_layernorm.weight"])
            a = w[p + "mlp.gate_proj.weight"] @ h
            a = a / (1.0 + np.exp(-a)) * (w[p + "mlp.up_proj.weight"] @ h)
            x[t] = x[t] + w[p + "mlp.down_proj.weight"] @ a
    return np.stack([w["lm_head.weight"] @ norm(xt, w["model.norm.weight"]) for xt in x])


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_float_model_close_to_naive_float64(tmp_path, name):
    d = make_tiny_hf(tmp_path / name, **CONFIGS[name])
    cfg, w = load_hf_weights(d)
    ids = _ids(24)
    _close(FloatLlama(cfg, w, rope_angles="float64").logits(ids), _naive_forward(cfg, w, ids))


@needs_torch
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_torch_close_to_float_model(tmp_path, name):
    from converters.torch_llama import TorchLlama
    d = make_tiny_hf(tmp_path / name, **CONFIGS[name])
    ids = _ids(150)          # > 128: crosses FloatLlama's attention block boundary
    _close(TorchLlama.from_hf(d).prefill(ids), FloatLlama.from_hf(d).logits(ids))


@needs_torch
def test_torch_decode_with_cache_equals_prefill(tmp_path):
    from converters.torch_llama import TorchLlama
    d = make_tiny_hf(tmp_path / "m", **CONFIGS["gqa_untied"])
    m = TorchLlama.from_hf(d)
    ids = _ids(40)
    full = m.prefill(ids)
    first = m.prefill(ids[:30])                  # prefill restarts the sequence
    _close(first, full[:30])
    for j in range(30, 40):
        _close(m.decode(ids[j]), full[j])
    assert m.pos == 40
    m.reset()
    with pytest.raises(ValueError, match="decode"):
        m.decode(5)


@needs_torch
def test_torch_cache_grows_past_initial_capacity(tmp_path):
    from converters.torch_llama import TorchLlama
    d = make_tiny_hf(tmp_path / "m", **CONFIGS["mqa_head_dim"], max_pos=400)
    m = TorchLlama.from_hf(d)
    ids = _ids(300)                              # initial capacity is 256
    full = m.prefill(ids)
    m.prefill(ids[:250])
    for j in range(250, 300):
        out = m.decode(ids[j])
    _close(out, full[-1])


def _expand_to_mha(cfg: LlamaConfig, w: dict) -> tuple[LlamaConfig, dict]:
    """The same model with every kv head copied for each query head that reads it (HF's
    repeat_kv order: query head h reads kv head h // group)."""
    hd, group = cfg.head_dim, cfg.n_heads // cfg.n_kv_heads
    w2 = dict(w)
    for i in range(cfg.n_layers):
        for n in ("k_proj", "v_proj"):
            key = f"model.layers.{i}.self_attn.{n}.weight"
            blocks = w[key].reshape(cfg.n_kv_heads, hd, -1)
            w2[key] = np.repeat(blocks, group, axis=0).reshape(cfg.n_heads * hd, -1)
    return LlamaConfig(**{**cfg.__dict__, "n_kv_heads": cfg.n_heads}), w2


def test_gqa_equals_expanded_mha(tmp_path):
    d = make_tiny_hf(tmp_path / "m", n_heads=6, n_kv_heads=2, dim=48, head_dim=8)
    cfg, w = load_hf_weights(d)
    ids = _ids(140)
    _close(FloatLlama(cfg, w).logits(ids), FloatLlama(*_expand_to_mha(cfg, w)).logits(ids), 1e-5)
    if HAVE_TORCH:
        from converters.torch_llama import TorchLlama
        _close(TorchLlama(cfg, w).prefill(ids), TorchLlama(*_expand_to_mha(cfg, w)).prefill(ids), 1e-5)


def test_untied_head_is_used_and_tied_uses_embedding(tmp_path):
    tied = make_tiny_hf(tmp_path / "tied", tie=True)
    _, w = load_hf_weights(tied)
    assert w["lm_head.weight"] is w["model.embed_tokens.weight"]
    ids = _ids(20)
    ref = FloatLlama.from_hf(tied).logits(ids)
    w2 = {k: v for k, v in w.items() if k != "lm_head.weight"}
    w2["lm_head.weight"] = 2.0 * w["model.embed_tokens.weight"]     # scaling by 2 is exact
    untied = make_tiny_hf(tmp_path / "untied", tie=False, weights=w2)
    assert np.array_equal(FloatLlama.from_hf(untied).logits(ids), 2.0 * ref)
    # a config that does not say, without lm_head: tied (HF's LlamaConfig would default to
    # untied and leave a random head; we take the only head there is)
    silent = make_tiny_hf(tmp_path / "silent", tie=True, tie_word_embeddings=None)
    assert np.array_equal(FloatLlama.from_hf(silent).logits(ids), ref)


def test_causal_prefix_logits_do_not_see_the_future(tmp_path):
    d = make_tiny_hf(tmp_path / "m", **CONFIGS["gqa_untied"])
    m = FloatLlama.from_hf(d)
    ids = _ids(200)
    full = m.logits(ids)
    for k in (1, 5, 128, 129, 170):
        _close(m.logits(ids[:k]), full[:k], 1e-5)
    changed = ids.copy()
    changed[150:] = (changed[150:] + 7) % 300
    _close(m.logits(changed)[:150], full[:150], 1e-5)


def test_hidden_taps(tmp_path):
    d = make_tiny_hf(tmp_path / "m", n_layers=3)
    m = FloatLlama.from_hf(d)
    ids = _ids(30)
    logits, taps = m.logits(ids, hidden_taps=True)
    assert len(taps) == 4 and all(t.shape == (30, 64) and t.dtype == np.float32 for t in taps)
    assert np.array_equal(taps[0], m.w["model.embed_tokens.weight"][ids])
    assert np.array_equal(rms_norm(taps[-1], m.w["model.norm.weight"], m.cfg.rms_eps)
                          @ m.w["lm_head.weight"].T, logits)
    assert np.array_equal(m.logits(ids), logits)        # taps change nothing


def test_rms_norm_close_to_float64():
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((5, 96)) * 10).astype(np.float32)
    g = rng.uniform(0.5, 1.5, 96).astype(np.float32)
    x64 = x.astype(np.float64)
    want = g * x64 / np.sqrt(np.mean(x64 ** 2, axis=-1, keepdims=True) + 1e-5)
    _close(rms_norm(x, g, 1e-5), want, 1e-6)
    assert rms_norm(np.zeros((1, 8), np.float32), np.ones(8, np.float32), 1e-5).tolist() == [[0.0] * 8]


def test_rope_tables_pair_i_with_i_plus_half():
    cfg = LlamaConfig(n_layers=1, dim=16, n_heads=2, n_kv_heads=2, head_dim=8, ffn_dim=8,
                      vocab_size=4, rms_eps=1e-5, rope=RopeConfig(10000.0), max_pos=600,
                      tie_embeddings=True)
    cos32, sin32 = rope_cos_sin(cfg, 600)
    cos64, sin64 = rope_cos_sin(cfg, 600, angles="float64")
    p, i = 7, 1
    ang = p * 10000.0 ** (-2 * i / 8)
    assert abs(cos64[p, i] - math.cos(ang)) < 1e-7 and abs(sin64[p, i] - math.sin(ang)) < 1e-7
    # HF's float32 angles drift from the float64 ones by < 3e-5 rad over 600 positions
    assert np.abs(cos32 - cos64).max() < 3e-5 and np.abs(sin32 - sin64).max() < 3e-5
    with pytest.raises(ValueError, match="angles"):
        rope_cos_sin(cfg, 4, angles="float16")


def test_sharded_checkpoint_loads_like_single(tmp_path):
    ids = _ids(16)
    one = FloatLlama.from_hf(make_tiny_hf(tmp_path / "one")).logits(ids)
    three = FloatLlama.from_hf(make_tiny_hf(tmp_path / "three", shards=3)).logits(ids)
    assert np.array_equal(one, three)


def _write_bf16(path, tensors: dict):
    """A .safetensors file with BF16 tensors (the top 16 bits of each float32)."""
    header, blobs, off = {}, [], 0
    for k, v in tensors.items():
        b = (np.ascontiguousarray(v, np.float32).view(np.uint32) >> 16).astype("<u2").tobytes()
        header[k] = {"dtype": "BF16", "shape": list(v.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def test_bf16_checkpoint_widens_exactly(tmp_path):
    d = make_tiny_hf(tmp_path / "m")
    _, w = load_hf_weights(d)
    w_bf = {k: (v.view(np.uint32) & np.uint32(0xFFFF0000)).view(np.float32) for k, v in w.items()}
    _write_bf16(d / "model.safetensors", w_bf)
    _, got = load_hf_weights(d)
    assert all(np.array_equal(got[k], w_bf[k]) for k in w_bf)


@pytest.mark.parametrize("extra, match", [
    (dict(rope_scaling={"rope_type": "dynamic", "factor": 2.0}), "rope_scaling.rope_type"),
    (dict(rope_parameters={"rope_type": "yarn", "rope_theta": 1e4}), "rope_type"),
    (dict(attention_bias=True), "attention_bias"),
    (dict(mlp_bias=True), "mlp_bias"),
    (dict(hidden_act="gelu"), "hidden_act"),
    (dict(model_type="mistral"), "model_type"),
    (dict(architectures=["MistralForCausalLM"]), "architectures"),
    (dict(num_key_value_heads=3), "num_key_value_heads"),
])
def test_unsupported_config_refused(tmp_path, extra, match):
    d = make_tiny_hf(tmp_path / "m", **extra)
    with pytest.raises(ValueError, match=match):
        FloatLlama.from_hf(d)


def test_bad_weights_refused(tmp_path):
    _, w = load_hf_weights(make_tiny_hf(tmp_path / "ok"))
    w = {k: v for k, v in w.items()}
    bias = dict(w, **{"model.layers.0.self_attn.q_proj.bias": np.zeros(64, np.float32)})
    with pytest.raises(ValueError, match="unexpected tensors.*q_proj.bias"):
        load_hf_weights(make_tiny_hf(tmp_path / "bias", weights=bias))
    missing = {k: v for k, v in w.items() if "layers.1.mlp.up_proj" not in k}
    with pytest.raises(ValueError, match="missing.*layers.1.mlp.up_proj"):
        load_hf_weights(make_tiny_hf(tmp_path / "missing", weights=missing))
    shaped = dict(w, **{"model.norm.weight": np.ones(63, np.float32)})
    with pytest.raises(ValueError, match="model.norm.weight has shape"):
        load_hf_weights(make_tiny_hf(tmp_path / "shape", weights=shaped))
    no_head = {k: v for k, v in w.items() if k != "lm_head.weight"}
    with pytest.raises(ValueError, match="lm_head.weight is missing.*tie_word_embeddings"):
        load_hf_weights(make_tiny_hf(tmp_path / "nohead", weights=no_head, tie=False))
    with pytest.raises(ValueError, match="config.json"):
        load_hf_weights(tmp_path / "nowhere")


def test_bad_ids_refused(tmp_path):
    m = FloatLlama.from_hf(make_tiny_hf(tmp_path / "m"))
    for bad in ([], [[1, 2]], [0.5, 1.0], [300], [-1]):
        with pytest.raises(ValueError, match="ids"):
            m.logits(np.asarray(bad))


def test_missing_torch_says_how_to_install(monkeypatch):
    import converters.torch_llama as tl
    monkeypatch.setitem(sys.modules, "torch", None)      # makes `import torch` raise
    with pytest.raises(ImportError, match=r"pip install 'intsim\[torch\]'.*torch==2\.13\.0"):
        tl.require_torch()


@needs_torch
def test_bench_torch_reports_rates(tmp_path):
    from converters.torch_llama import bench_torch
    import torch
    before = torch.get_num_threads()
    r = bench_torch(make_tiny_hf(tmp_path / "m"), prompt_len=8, decode_tokens=4, prefill_len=16,
                    threads=1, repeats=1)
    assert r["prefill_torch_tok_s"] > 0 and r["decode_torch_tok_s"] > 0
    assert torch.get_num_threads() == before


@needs_torch
def test_torch_llama_dtype_and_device_choices(tmp_path):
    """bfloat16 weights follow the float32 logits within bf16's precision (8 mantissa bits:
    relative error near 1e-2 after a few layers); an unknown dtype, or CUDA where torch sees
    none, is refused by name."""
    import torch
    from converters.torch_llama import TorchLlama
    d = make_tiny_hf(tmp_path / "m")
    ids = np.arange(12) % 50
    f32 = TorchLlama.from_hf(d).prefill(ids)
    b16 = TorchLlama.from_hf(d, dtype="bfloat16").prefill(ids)
    assert b16.dtype == np.float32 and b16.shape == f32.shape
    rel = np.linalg.norm(b16 - f32) / np.linalg.norm(f32)
    assert 0 < rel < 5e-2, rel
    with pytest.raises(ValueError, match="dtype: one of float32, bfloat16, float16"):
        TorchLlama.from_hf(d, dtype="int8")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device: 'cuda'.*no CUDA device"):
            TorchLlama.from_hf(d, device="cuda")


def test_torch_gpu_bench_rows_only_where_a_gpu_is(tmp_path, monkeypatch):
    """The PyTorch-on-GPU peer adds rows only where torch sees a CUDA device; without one (or
    without torch) it returns nothing and never reads the model."""
    from converters.modelbench import torch_gpu_bench
    try:
        import torch
    except ImportError:
        assert torch_gpu_bench(tmp_path / "absent.intsim") == {}
        return
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert torch_gpu_bench(tmp_path / "absent.intsim") == {}


def test_bench_table_prints_the_gpu_rows():
    from intsim.bench import format_table
    r = {"quick": True, "repeats": 1, "min_time_s": 0, "dtype": "int8", "machine": {
        "cpu": "c", "cores": 1, "numba_threads": 1, "blas": "b", "numpy": "n", "numba": "n"},
        "gpu": "NVIDIA H100", "prefill_gpu_tok_s": 1234.0, "prefill_cpu_tok_s": 99.0,
        "decode_gpu_tok_s": 45.5, "decode_cpu_tok_s": 7.25, "golden_gpu_tokens": 32,
        "golden_gpu_mb_per_s": 321.0, "golden_cpu_mb_per_s": 12.0,
        "prefill_gpu_torch_bfloat16_tok_s": 50000.0, "decode_gpu_torch_bfloat16_tok_s": 300.5}
    for name in ("gemm", "gemv"):
        r.update({f"{name}_shape": {"M": 1, "K": 2, "N": 3}, f"{name}_int_gops": 1.0,
                  f"{name}_f32_gops": 1.0, f"{name}_ratio": 1.0, f"{name}_int_dot_gops": 1.0,
                  f"{name}_di_matmul_gops": 1.0, f"{name}_exact": True})
    from converters.modelbench import PEERS
    r.update({"model": "m.intsim", "int_file_mib": 1.0, "decode_int_tok_s": 150.0,
              "decode_int_tok_s_median": 140.0, "decode_torch_tok_s": 100.0,
              "decode_torch_tok_s_median": 90.0, "decode_ratio": 1.5, "decode_torch_int8_tok_s": 50.0,
              "decode_torch_int8_tok_s_median": 40.0, "decode_ratio_torch_int8": 3.0,
              "prefill_int_tok_s": 600.0, "prefill_int_tok_s_median": 500.0, "torch_peak_rss_mib": 1234,
              "model_peers": [[n, label, list(ops)] for n, (label, ops) in PEERS.items()]})
    lines = format_table(r).splitlines()
    row = next(line for line in lines if line.strip().startswith("PyTorch fp32 eager"))
    assert row.split()[3:] == ["100.0", "/", "90.0", "(1.50x)", "n/a", "-", "1234", "MiB"]
    row = next(line for line in lines if line.strip().startswith("PyTorch int8 dynamic"))
    assert row.split()[3:] == ["50.0", "/", "40.0", "(3.00x)", "n/a", "-", "n/a"]
    row = next(line for line in lines if line.strip().startswith("intsim (integer"))
    assert row.split()[3:] == ["150.0", "/", "140.0", "600.0", "/", "500.0", "n/a", "n/a"]
    text = "\n".join(lines)
    assert ("GPU NVIDIA H100: prefill 1234 tok/s (CPU 99), decode 45.5 tok/s (CPU 7.2), golden "
            "export of 32 tokens 321 MB/s (CPU 12)") in text
    assert "PyTorch bfloat16 on the same GPU: prefill 50000 tok/s, decode 300.5 tok/s" in text
    assert "PyTorch float32" not in text


def test_bench_table_prints_the_golden_row_with_its_cpu_time():
    from intsim.bench import format_table
    r = {"quick": True, "repeats": 1, "min_time_s": 0, "dtype": "int8", "machine": {
        "cpu": "c", "cores": 1, "numba_threads": 1, "blas": "b", "numpy": "n", "numba": "n"},
        "golden_tokens": 256, "golden_seconds": 20.0, "golden_mb": 5000.0, "golden_files": 10763,
        "golden_ops": 1204, "golden_mb_per_s": 250.0, "golden_cpu_s": 16.0, "golden_mb_per_cpu_s": 312.5,
        "golden_plain_forward_s": 0.5, "golden_op_by_op_forward_s": 2.0, "golden_overhead_ratio": 40.0,
        "golden_overhead_vs_op_by_op": 10.0}
    for name in ("gemm", "gemv"):
        r.update({f"{name}_shape": {"M": 1, "K": 2, "N": 3}, f"{name}_int_gops": 1.0,
                  f"{name}_f32_gops": 1.0, f"{name}_ratio": 1.0, f"{name}_int_dot_gops": 1.0,
                  f"{name}_di_matmul_gops": 1.0, f"{name}_exact": True})
    assert ("golden export, 256-token prompt: 20.0 s, 5000 MB in 10763 files (1204 ops), 250 MB/s "
            "(16.0 CPU s, 312 MB per CPU s); 40.0x a plain forward") in format_table(r)


@needs_torch
def test_torch_int8_peer_follows_fp32_and_reports_rates(tmp_path):
    """PyTorch's int8 dynamic quantization (the bench's int8 peer) quantizes every decoder
    linear and keeps the logits near fp32's (per-tensor int8 weights and per-call int8
    activations: a few per cent relative error on the tiny model), and bench_torch times it."""
    import torch
    from converters.torch_llama import TorchLlama, TorchLlamaInt8, bench_torch
    d = make_tiny_hf(tmp_path / "m")
    ids = np.arange(12) % 50
    m8 = TorchLlamaInt8.from_hf(d)
    assert all(type(mod).__module__.startswith("torch.ao.nn.quantized.dynamic")
               for layer in m8.qlin for mod in layer.values())
    f32, i8 = TorchLlama.from_hf(d).prefill(ids), m8.prefill(ids)
    rel = np.linalg.norm(i8 - f32) / np.linalg.norm(f32)
    assert 0 < rel < 0.1, rel
    r = bench_torch(d, prompt_len=8, decode_tokens=4, prefill_len=16, threads=1, repeats=1, int8=True)
    assert r["prefill_torch_tok_s"] > 0 and r["decode_torch_tok_s"] > 0 and r["dtype"] == "int8 dynamic"
    with pytest.raises(ValueError, match="int8: PyTorch's dynamic quantization runs on the CPU"):
        bench_torch(d, int8=True, dtype="bfloat16")


def test_decode_roofline_counts_every_weight_byte_once_and_bounds_decode_by_the_read_rate(tmp_path):
    from model_helpers import convert_small

    from intsim.bench import decode_roofline, format_table
    from intsim.modelfile import load_model
    path = str(tmp_path / "small.intsim")
    assert convert_small(tmp_path / "small.intsim").returncode == 0
    c = load_model(path).config
    D, F, V = c.dim, c.ffn_dim, c.vocab_size
    q, kv = c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim
    per_layer = D * q + 2 * D * kv + q * D + 3 * D * F     # q, k, v, o, gate, up, down
    want = c.n_layers * per_layer + V * D                  # and the LM head
    r = {"read_gbs_nt": 30.0, "decode_int_tok_s": 100.0, "decode_llamacpp_q8_tok_s": 150.0}
    out = decode_roofline(r, path)
    assert out["decode_weight_bytes"] == want
    assert out["decode_bound_tok_s"] == 30e9 / want
    assert out["decode_int_gbs"] == want * 100.0 / 1e9
    assert out["decode_bound_ratio_llamacpp_q8"] == 30e9 / want / 150.0
    assert decode_roofline({"decode_int_tok_s": 1.0}, path) == {}   # no read bandwidth: nothing
    r.update(out)
    r.update({"quick": True, "repeats": 1, "min_time_s": 0, "dtype": "int8", "model": path,
              "int_file_mib": 1.0, "machine": {"cpu": "c", "cores": 1, "numba_threads": 1,
                                               "blas": "b", "numpy": "n", "numba": "n"}})
    for name in ("gemm", "gemv"):
        r.update({f"{name}_shape": {"M": 1, "K": 2, "N": 3}, f"{name}_int_gops": 1.0,
                  f"{name}_f32_gops": 1.0, f"{name}_ratio": 1.0, f"{name}_int_dot_gops": 1.0,
                  f"{name}_di_matmul_gops": 1.0, f"{name}_exact": True})
    line = next(x for x in format_table(r).splitlines() if "decode roofline" in x)
    assert f"reads {want / 1e6:.1f} MB" in line and f"{30e9 / want:.0f} tok/s" in line
    assert f"({30e9 / want / 150.0:.2f}x llama.cpp Q8_0's fastest)" in line
