"""Float32 NumPy reference of a Hugging Face LLaMA checkpoint.

This is the float baseline the integer model is measured against (perplexity, per-layer
error).  It lives on the float side: ``intsim/`` never imports it.

The math is the Hugging Face ``LlamaForCausalLM`` forward, in float32 throughout:

- RMSNorm: ``y = γ * (x * 1/sqrt(mean(x^2) + eps))``, the mean over the hidden axis;
- rotary embedding in the "rotate half" form: the pair of channel ``i`` is channel
  ``i + head_dim/2``; ``inv_freq[i] = 1 / theta^(2i/head_dim)`` (then scaled by the rope
  type, ``converters.hfconfig.RopeConfig.inv_freq``), angle ``pos * inv_freq[i]``
  formed in float32 like Hugging Face does (``rope_angles="float64"`` forms it in float64, as
  ``converters.rope_tables`` does for the integer tables);
- attention: ``softmax(q k^T / sqrt(head_dim) + causal mask) v`` per head, softmax in float32;
  with grouped-query attention query head ``h`` reads key/value head ``h // (n_heads/n_kv_heads)``;
- MLP: ``down(silu(gate(x)) * up(x))``, ``silu(x) = x / (1 + exp(-x))``;
- pre-norm residual blocks; final RMSNorm; LM head, the token embedding when tied.

Shapes below use T = tokens, D = hidden size, H = query heads, KV = key/value heads,
hd = head dim, F = FFN size, V = vocabulary.

The config is read by :func:`converters.hfconfig.read_llama_config` (both transformers 4
and 5 spellings; RoPE ``default``, ``linear`` and ``llama3``, whose scaled frequencies
enter the rotary angles here exactly as they enter the integer tables).  Anything else
(other rope types, biases, another activation or ``model_type``) is refused with a
``ConfigError`` (a ValueError) that names the key.
"""
from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np

from .hfconfig import ConfigError, LlamaConfig

__all__ = ["LlamaConfig", "FloatLlama", "load_hf_weights", "rope_cos_sin", "rms_norm",
           "weight_names"]


def weight_names(cfg: LlamaConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor a LLaMA checkpoint must hold (lm_head aside), with its shape."""
    D, F, q_out, kv_out = cfg.dim, cfg.ffn_dim, cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
    shapes = {"model.embed_tokens.weight": (cfg.vocab_size, D), "model.norm.weight": (D,)}
    for i in range(cfg.n_layers):
        p = f"model.layers.{i}."
        shapes.update({
            p + "input_layernorm.weight": (D,),
            p + "self_attn.q_proj.weight": (q_out, D),
            p + "self_attn.k_proj.weight": (kv_out, D),
            p + "self_attn.v_proj.weight": (kv_out, D),
            p + "self_attn.o_proj.weight": (D, q_out),
            p + "post_attention_layernorm.weight": (D,),
            p + "mlp.gate_proj.weight": (F, D),
            p + "mlp.up_proj.weight": (F, D),
            p + "mlp.down_proj.weight": (D, F),
        })
    return shapes


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """All tensors of one .safetensors file as float32 (F32, F16 and BF16 accepted)."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    dtypes = {k: v["dtype"] for k, v in header.items() if k != "__metadata__"}
    if any(dt not in ("F32", "F16", "BF16") for dt in dtypes.values()):
        bad = {k: dt for k, dt in dtypes.items() if dt not in ("F32", "F16", "BF16")}
        raise ValueError(f"{path}: tensors of unsupported dtype {bad} (float checkpoints only)")
    if "BF16" not in dtypes.values():
        from safetensors.numpy import load_file
        return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in load_file(str(path)).items()}
    # NumPy has no bfloat16: widen the raw 16-bit patterns (bf16 is the top half of an f32)
    raw = np.memmap(path, dtype=np.uint8, mode="r")
    out = {}
    for k, info in header.items():
        if k == "__metadata__":
            continue
        a, b = info["data_offsets"]
        buf = raw[8 + n + a: 8 + n + b]
        if info["dtype"] == "BF16":
            v = (buf.view("<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            v = buf.view("<f4" if info["dtype"] == "F32" else "<f2").astype(np.float32)
        out[k] = v.reshape(info["shape"])
    return out


def load_hf_weights(model_dir: os.PathLike[str] | str) -> tuple[LlamaConfig, dict[str, np.ndarray]]:
    """Read ``config.json`` and the weights (``model.safetensors`` or sharded with an index).

    Returns the validated config and a dict name -> float32 array holding exactly the names of
    :func:`weight_names` plus ``lm_head.weight`` (the embedding itself when tied).  Refuses
    missing, misshapen or unexpected tensors (biases included) with a ValueError naming them.
    """
    d = Path(model_dir)
    cfg_path = d / "config.json"
    if not cfg_path.is_file():
        raise ValueError(f"model_dir: {d} has no config.json")
    cfg = LlamaConfig.from_dict(json.loads(cfg_path.read_text()), str(cfg_path))
    single, index = d / "model.safetensors", d / "model.safetensors.index.json"
    if single.is_file():
        files = [single]
    elif index.is_file():
        files = sorted({d / f for f in json.loads(index.read_text())["weight_map"].values()})
    else:
        raise ValueError(f"model_dir: {d} has neither model.safetensors nor "
                         "model.safetensors.index.json")
    tensors: dict[str, np.ndarray] = {}
    for f in files:
        tensors.update(_read_safetensors(f))
    # checkpoints of older transformers carry the (recomputed) RoPE frequencies: not weights
    tensors = {k: v for k, v in tensors.items() if not k.endswith("rotary_emb.inv_freq")}

    want = weight_names(cfg)
    missing = [k for k in want if k not in tensors]
    if missing:
        raise ValueError(f"weights: missing {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    extra = sorted(set(tensors) - set(want) - {"lm_head.weight"})
    if extra:
        raise ValueError(f"weights: unexpected tensors {extra[:5]}{' ...' if len(extra) > 5 else ''} "
                         "(biases and other extras are not part of this LLaMA forward)")
    for k, shape in want.items():
        if tensors[k].shape != shape:
            raise ValueError(f"weights: {k} has shape {tensors[k].shape}, config implies {shape}")
    w = {k: tensors[k] for k in want}
    if cfg.tie_embeddings:      # Hugging Face ties whenever the config says so
        w["lm_head.weight"] = w["model.embed_tokens.weight"]
    elif "lm_head.weight" in tensors:
        if tensors["lm_head.weight"].shape != (cfg.vocab_size, cfg.dim):
            raise ValueError(f"weights: lm_head.weight has shape {tensors['lm_head.weight'].shape}, "
                             f"config implies {(cfg.vocab_size, cfg.dim)}")
        w["lm_head.weight"] = tensors["lm_head.weight"]
    elif cfg.tie_embeddings is None:
        w["lm_head.weight"] = w["model.embed_tokens.weight"]
    else:
        raise ValueError("weights: lm_head.weight is missing and config.json says "
                         "tie_word_embeddings = false")
    return cfg, w


def rope_cos_sin(cfg: LlamaConfig, n_pos: int,
                 angles: str = "hf_float32") -> tuple[np.ndarray, np.ndarray]:
    """cos and sin of the rotary angles at positions 0..n_pos-1, float32 [n_pos, hd/2].

    ``inv_freq`` is :meth:`converters.hfconfig.RopeConfig.inv_freq` (``1 / theta^(2i/hd)``,
    scaled by a ``linear`` or ``llama3`` rope type).  ``angles="hf_float32"`` forms
    ``inv_freq`` and each angle ``pos * inv_freq`` in float32 like Hugging Face (then cos/sin
    of that float32 angle, rounded to float32); ``"float64"`` keeps inv_freq and the angle in
    float64 (the integer RoPE tables' choice).  They differ by < 3e-5 rad at position 512
    (float32 spacing near 511).
    """
    hd = cfg.head_dim
    if angles == "hf_float32":
        inv = cfg.rope.inv_freq(hd, "float32")
        ang = (np.arange(n_pos, dtype=np.float32)[:, None] * inv[None, :]).astype(np.float64)
    elif angles == "float64":
        inv = cfg.rope.inv_freq(hd, "float64")
        ang = np.arange(n_pos, dtype=np.float64)[:, None] * inv[None, :]
    else:
        raise ValueError(f"angles: {angles!r} is not 'hf_float32' or 'float64'")
    return np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)


def rms_norm(x: np.ndarray, gamma: np.ndarray, eps: float) -> np.ndarray:
    """``gamma * (x / sqrt(mean(x^2) + eps))`` over the last axis, float32 like Hugging Face."""
    var = np.mean(np.square(x), axis=-1, keepdims=True, dtype=np.float32)
    return gamma * (x * (np.float32(1.0) / np.sqrt(var + np.float32(eps))))


def _rotate(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """Rotate-half RoPE: x [..., T, hd], cos/sin [T, hd/2]: (a, b) -> (a cos - b sin, b cos + a sin)."""
    half = x.shape[-1] // 2
    a, b = x[..., :half], x[..., half:]
    return np.concatenate([a * cos - b * sin, b * cos + a * sin], axis=-1)


def _causal_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, block: int = 128) -> np.ndarray:
    """softmax(q k^T / sqrt(hd) + causal mask) v with grouped heads, float32.

    q [H, T, hd] (query head h reads kv head h // (H/KV)), k, v [KV, T, hd] -> [H, T, hd].
    Query rows go in blocks of ``block``: a block only multiplies the keys up to its last
    position, and only its diagonal square needs the -inf mask (every row keeps its own
    position, so no row is all -inf).  Softmax subtracts the row max before exp.
    """
    H, T, hd = q.shape
    KV = k.shape[0]
    qg = q.reshape(KV, H // KV, T, hd)                     # [KV, R, T, hd]
    out = np.empty_like(qg)
    scale = np.float32(1.0 / np.sqrt(hd))
    tri = np.triu(np.full((block, block), -np.inf, dtype=np.float32), 1)
    for a in range(0, T, block):
        b = min(a + block, T)
        s = qg[:, :, a:b] @ k[:, None, :b].transpose(0, 1, 3, 2)    # [KV, R, b-a, b]
        s *= scale
        s[..., a:b] += tri[:b - a, :b - a]
        s -= s.max(axis=-1, keepdims=True)
        np.exp(s, out=s)
        s /= s.sum(axis=-1, keepdims=True)
        out[:, :, a:b] = s @ v[:, None, :b]                          # [KV, R, b-a, hd]
    return out.reshape(H, T, hd)


def _silu(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):        # exp(-x) -> inf for x < -88: silu -> -0, correct
        return x / (np.float32(1.0) + np.exp(-x))


class FloatLlama:
    """Float32 LLaMA forward over a whole sequence (causal prefill, no cache).

    >>> m = FloatLlama.from_hf("/tmp/smollm2_hf")
    >>> logits = m.logits(ids)                          # float32 [T, V]
    >>> logits, taps = m.logits(ids, hidden_taps=True)  # taps: L+1 arrays float32 [T, D]
    """

    def __init__(self, cfg: LlamaConfig, weights: dict[str, np.ndarray], rope_angles: str = "hf_float32"):
        self.cfg = cfg
        self.rope_angles = rope_angles
        rope_cos_sin(cfg, 1, rope_angles)           # validates rope_angles
        self.w = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in weights.items()}
        self._cos = self._sin = np.zeros((0, cfg.head_dim // 2), np.float32)

    @classmethod
    def from_hf(cls, model_dir: os.PathLike[str] | str, rope_angles: str = "hf_float32") -> "FloatLlama":
        cfg, w = load_hf_weights(model_dir)
        return cls(cfg, w, rope_angles)

    def _rope(self, T: int) -> tuple[np.ndarray, np.ndarray]:
        if self._cos.shape[0] < T:
            self._cos, self._sin = rope_cos_sin(self.cfg, max(T, 512), self.rope_angles)
        return self._cos[:T], self._sin[:T]

    def _check_ids(self, ids) -> np.ndarray:
        ids = np.asarray(ids)
        if ids.ndim != 1 or ids.size == 0 or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"ids: need a non-empty 1-D integer array, got {ids.dtype} {ids.shape}")
        if ids.min() < 0 or ids.max() >= self.cfg.vocab_size:
            raise ValueError(f"ids: token ids must lie in [0, {self.cfg.vocab_size}), got "
                             f"[{ids.min()}, {ids.max()}]")
        return ids.astype(np.int64)

    def _attention(self, h: np.ndarray, p: str, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
        c, w = self.cfg, self.w
        T, hd, KV = h.shape[0], c.head_dim, c.n_kv_heads
        q = (h @ w[p + "q_proj.weight"].T).reshape(T, c.n_heads, hd).transpose(1, 0, 2)   # [H, T, hd]
        k = (h @ w[p + "k_proj.weight"].T).reshape(T, KV, hd).transpose(1, 0, 2)          # [KV, T, hd]
        v = (h @ w[p + "v_proj.weight"].T).reshape(T, KV, hd).transpose(1, 0, 2)          # [KV, T, hd]
        q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
        o = _causal_attention(q, k, v).transpose(1, 0, 2).reshape(T, c.n_heads * hd)  # [T, H*hd]
        return o @ w[p + "o_proj.weight"].T                                               # [T, D]

    def _mlp(self, h: np.ndarray, p: str) -> np.ndarray:
        w = self.w
        g = h @ w[p + "gate_proj.weight"].T                                               # [T, F]
        u = h @ w[p + "up_proj.weight"].T                                                 # [T, F]
        return (_silu(g) * u) @ w[p + "down_proj.weight"].T                               # [T, D]

    def logits(self, ids, hidden_taps: bool = False):
        """Logits float32 [T, V] of a causal prefill of ``ids`` (positions 0..T-1).

        With ``hidden_taps=True`` returns ``(logits, taps)``: ``taps[0]`` is the embedding
        output and ``taps[i]`` (1 <= i <= L) the residual stream after layer i, each float32
        [T, D] (the final RMSNorm is not applied to them).
        """
        ids = self._check_ids(ids)
        c, w = self.cfg, self.w
        cos, sin = self._rope(ids.shape[0])
        x = w["model.embed_tokens.weight"][ids]                                           # [T, D]
        taps = [x.copy()] if hidden_taps else None
        for i in range(c.n_layers):
            p = f"model.layers.{i}."
            x = x + self._attention(rms_norm(x, w[p + "input_layernorm.weight"], c.rms_eps),
                                    p + "self_attn.", cos, sin)
            x = x + self._mlp(rms_norm(x, w[p + "post_attention_layernorm.weight"], c.rms_eps),
                              p + "mlp.")
            if hidden_taps:
                taps.append(x.copy())
        x = rms_norm(x, w["model.norm.weight"], c.rms_eps)
        out = x @ w["lm_head.weight"].T                                                   # [T, V]
        return (out, taps) if hidden_taps else out

    def nll(self, ids) -> np.ndarray:
        """Per-position negative log-likelihood float64 [T-1] of ids[1:] (see converters.evaluate)."""
        from converters.evaluate import nll_from_logits
        return nll_from_logits(self.logits(ids), ids)
