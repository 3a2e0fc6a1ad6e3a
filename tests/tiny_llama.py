"""Tiny random Hugging Face LLaMA checkpoints for tests (float side; no network).

``make_tiny_hf(dir, **cfg) -> Path`` writes ``config.json``, the weights (float32, seeded)
as ``model.safetensors`` or as shards with ``model.safetensors.index.json``, and a
``tokenizer.json`` trained here with the ``tokenizers`` library (byte-level BPE, so every
byte string encodes) on a fixed short text.  Weights have realistic scales: every linear
``~ N(0, 1/sqrt(fan_in))``, the embedding ``~ N(0, 1/sqrt(dim))``, RMSNorm gains
``1 + U(-0.1, 0.1)``.  The same arguments always give byte-identical files.

Used by tests/test_convert.py, tests/test_calib.py and the interpreter's tests.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

#: special tokens of the tiny tokenizer: ids 0, 1, 2
SPECIALS = ("<|endoftext|>", "<s>", "</s>")
BOS_ID, EOS_ID = 1, 2

#: the fixed training text of the tiny tokenizer (written for this test suite)
TEXT = (
    "The integer simulator reads a model file and runs every layer with integers only. "
    "Each linear layer multiplies eight bit codes and adds them in a wide accumulator. "
    "The scales are pairs of small integers: a mantissa and a shift. "
    "A token enters as a row of the embedding table, and leaves as the index of the "
    "largest logit. Rounding ties go up, overflow raises, and nothing ever wraps. "
    "The quick brown fox jumps over the lazy dog; then the dog sleeps in the sun. "
    "Numbers such as 42, 1024 and 65535 appear in the text as well as words. "
)


def tiny_tokenizer(vocab_size: int = 300):
    """A byte-level BPE tokenizer of ``vocab_size`` entries trained on TEXT (deterministic)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=1, show_progress=False,
                                  special_tokens=list(SPECIALS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator([TEXT] * 4, trainer=trainer)
    return tk


def tiny_weights(*, n_layers: int, dim: int, n_heads: int, n_kv_heads: int, head_dim: int,
                 ffn_dim: int, vocab_size: int, tie: bool, seed: int) -> dict[str, np.ndarray]:
    """Seeded float32 weights under their Hugging Face LLaMA names."""
    rng = np.random.default_rng(seed)

    def lin(n_out, n_in):
        return (rng.standard_normal((n_out, n_in)) / np.sqrt(n_in)).astype(np.float32)

    def gain(n):
        return (1.0 + rng.uniform(-0.1, 0.1, n)).astype(np.float32)

    q_out, kv_out = n_heads * head_dim, n_kv_heads * head_dim
    w = {"model.embed_tokens.weight": lin(vocab_size, dim)}
    for i in range(n_layers):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = gain(dim)
        w[p + "self_attn.q_proj.weight"] = lin(q_out, dim)
        w[p + "self_attn.k_proj.weight"] = lin(kv_out, dim)
        w[p + "self_attn.v_proj.weight"] = lin(kv_out, dim)
        w[p + "self_attn.o_proj.weight"] = lin(dim, q_out)
        w[p + "post_attention_layernorm.weight"] = gain(dim)
        w[p + "mlp.gate_proj.weight"] = lin(ffn_dim, dim)
        w[p + "mlp.up_proj.weight"] = lin(ffn_dim, dim)
        w[p + "mlp.down_proj.weight"] = lin(dim, ffn_dim)
    w["model.norm.weight"] = gain(dim)
    if not tie:
        w["lm_head.weight"] = lin(vocab_size, dim)
    return w


def make_tiny_hf(directory, *, n_layers: int = 2, dim: int = 64, n_heads: int = 4,
                 n_kv_heads: int = 2, head_dim: int | None = None, ffn_dim: int = 160,
                 vocab_size: int = 300, max_pos: int = 256, rope_theta: float = 10000.0,
                 tie: bool = False, shards: int = 1, seed: int = 0,
                 weights: dict[str, np.ndarray] | None = None, **config_extra) -> Path:
    """Write a tiny LLaMA checkpoint folder into ``directory`` (created) and return it.

    ``head_dim``: None writes no ``head_dim`` key (HF derives dim / n_heads); an int is
    written explicitly.  ``tie``: no ``lm_head.weight``, ``tie_word_embeddings: true``.
    ``shards`` > 1 splits the tensors over ``model-0000i-of-0000n.safetensors`` files with
    an index.  ``weights`` replaces the generated tensors (e.g. to plant a bad one).
    Any other keyword goes into config.json as is (e.g. ``rope_scaling={...}``, or
    ``hidden_act="gelu"``); a value of None removes the key.
    """
    from safetensors.numpy import save_file

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    hd = head_dim if head_dim is not None else dim // n_heads
    tk = tiny_tokenizer(vocab_size)
    if weights is None:
        weights = tiny_weights(n_layers=n_layers, dim=dim, n_heads=n_heads,
                               n_kv_heads=n_kv_heads, head_dim=hd, ffn_dim=ffn_dim,
                               vocab_size=vocab_size, tie=tie, seed=seed)
    cfg = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": dim,
        "intermediate_size": ffn_dim,
        "num_hidden_layers": n_layers,
        "num_attention_heads": n_heads,
        "num_key_value_heads": n_kv_heads,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-5,
        "rope_theta": rope_theta,
        "rope_scaling": None,
        "vocab_size": vocab_size,
        "max_position_embeddings": max_pos,
        "tie_word_embeddings": tie,
        "attention_bias": False,
        "mlp_bias": False,
        "bos_token_id": BOS_ID,
        "eos_token_id": EOS_ID,
        "torch_dtype": "float32",
    }
    if head_dim is not None:
        cfg["head_dim"] = head_dim
    for key, val in config_extra.items():
        if val is None:
            cfg.pop(key, None)
        else:
            cfg[key] = val
    (d / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    tk.save(str(d / "tokenizer.json"))
    names = list(weights)
    if shards <= 1:
        save_file(weights, str(d / "model.safetensors"), metadata={"format": "pt"})
    else:
        weight_map, total = {}, 0
        for s in range(shards):
            fname = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
            part = {n: weights[n] for n in names[s::shards]}
            save_file(part, str(d / fname), metadata={"format": "pt"})
            for n, a in part.items():
                weight_map[n] = fname
                total += a.nbytes
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (d / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return d
