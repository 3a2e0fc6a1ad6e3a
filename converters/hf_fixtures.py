"""Make the committed RoPE-scaling fixtures: tiny LLaMA checkpoints as transformers saves
them, with transformers' own logits (float side; needs ``torch`` and ``transformers``).

    python -m converters.hf_fixtures --out tests/fixtures/hf_rope

Run it once under transformers 4 and once under transformers 5 (each run writes the files
of its own major version and leaves the other's alone); the tests then need neither torch
nor transformers:

- ``model.safetensors``, ``tokenizer.json``, ``tokens.npy``: shared by every case (seeded
  NumPy weights, so both versions load the same numbers);
- ``<rope_type>/config.v<N>.json``: the ``config.json`` that transformers N's
  ``save_pretrained`` wrote for a model with that rope type (transformers 4: top-level
  ``rope_theta`` and ``rope_scaling``; transformers 5: ``rope_parameters``);
- ``<rope_type>/logits.v<N>.npy``: ``LlamaForCausalLM`` logits, float32 [T, vocab], for
  ``tokens.npy`` at positions 0..T-1 (T = 160, past ``original_max_position_embeddings``
  = 64 of the llama3 case, so the scaling changes the result);
- ``<rope_type>/inv_freq.v<N>.npy``: the rotary module's ``inv_freq`` buffer.

The rope types: ``default`` (rope_theta 5e5: the case a transformers 5 config used to lose),
``linear`` (factor 4) and ``llama3`` (Llama 3.1's shape of parameters at a small scale).
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np

DIMS = dict(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=16,
            max_position_embeddings=256, rms_norm_eps=1e-5, tie_word_embeddings=False,
            bos_token_id=0, eos_token_id=1, hidden_act="silu")
THETA = 500000.0
ROPES = {
    "default": {"rope_type": "default"},
    "linear": {"rope_type": "linear", "factor": 4.0},
    "llama3": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
}
T = 160
SEED = 20261205


def _weights() -> dict[str, np.ndarray]:
    """Seeded weights, scaled so the logits are peaked (a top-1 that means something)."""
    rng = np.random.default_rng(SEED)
    d = DIMS
    D, F, V, hd = d["hidden_size"], d["intermediate_size"], d["vocab_size"], d["head_dim"]
    q, kv = d["num_attention_heads"] * hd, d["num_key_value_heads"] * hd

    def lin(n, k, gain=1.0):
        return (gain * rng.standard_normal((n, k)) / np.sqrt(k)).astype(np.float32)

    w = {"model.embed_tokens.weight": rng.standard_normal((V, D)).astype(np.float32),
         "model.norm.weight": (1 + rng.uniform(-0.1, 0.1, D)).astype(np.float32),
         "lm_head.weight": lin(V, D, 4.0)}
    for i in range(d["num_hidden_layers"]):
        p = f"model.layers.{i}."
        w.update({p + "input_layernorm.weight": (1 + rng.uniform(-0.1, 0.1, D)).astype(np.float32),
                  p + "post_attention_layernorm.weight":
                      (1 + rng.uniform(-0.1, 0.1, D)).astype(np.float32),
                  p + "self_attn.q_proj.weight": lin(q, D, 2.0),
                  p + "self_attn.k_proj.weight": lin(kv, D, 2.0),
                  p + "self_attn.v_proj.weight": lin(kv, D),
                  p + "self_attn.o_proj.weight": lin(D, q),
                  p + "mlp.gate_proj.weight": lin(F, D),
                  p + "mlp.up_proj.weight": lin(F, D),
                  p + "mlp.down_proj.weight": lin(D, F)})
    return w


def _tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    vocab = {"<s>": 0, "</s>": 1, "<unk>": 2}
    vocab.update({f"w{i}": i for i in range(3, DIMS["vocab_size"])})
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    return tk


def _hf_config(rope: dict):
    import transformers
    major = int(transformers.__version__.split(".")[0])
    if major >= 5:
        kw = {"rope_parameters": {**rope, "rope_theta": THETA}}
    else:
        kw = {"rope_theta": THETA, "rope_scaling": None if rope["rope_type"] == "default"
              else dict(rope)}
    return transformers.LlamaConfig(**DIMS, **kw), major


def make(out: Path) -> None:
    import torch
    import transformers
    from safetensors.numpy import save_file
    out.mkdir(parents=True, exist_ok=True)
    w = _weights()
    save_file(w, str(out / "model.safetensors"), metadata={"format": "pt"})
    _tokenizer().save(str(out / "tokenizer.json"))
    rng = np.random.default_rng(SEED + 1)
    tokens = rng.integers(3, DIMS["vocab_size"], T).astype(np.int64)
    np.save(out / "tokens.npy", tokens)
    for name, rope in ROPES.items():
        cfg, major = _hf_config(rope)
        model = transformers.LlamaForCausalLM(cfg).eval()
        missing = model.load_state_dict({k: torch.from_numpy(v) for k, v in w.items()},
                                        strict=False)
        assert not missing.missing_keys, missing.missing_keys
        with tempfile.TemporaryDirectory() as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
            cfg_text = (Path(tmp) / "config.json").read_text()
            back = transformers.LlamaForCausalLM.from_pretrained(tmp).eval()
        with torch.no_grad():
            logits = back(torch.from_numpy(tokens)[None]).logits[0].float().numpy()
        inv = back.model.rotary_emb.inv_freq.float().numpy()
        d = out / name
        d.mkdir(exist_ok=True)
        (d / f"config.v{major}.json").write_text(cfg_text)
        np.save(d / f"logits.v{major}.npy", logits.astype(np.float32))
        np.save(d / f"inv_freq.v{major}.npy", inv.astype(np.float32))
        print(f"{d}: transformers {transformers.__version__}, rope {name}: "
              f"config.v{major}.json, logits {logits.shape}")
    (out / "README.md").write_text(
        "Made by `python -m converters.hf_fixtures --out tests/fixtures/hf_rope` under "
        "transformers 4 and 5 (see its docstring); read by tests/test_hfconfig.py.\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m converters.hf_fixtures",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, metavar="DIR", help="fixture folder to (re)write")
    make(Path(p.parse_args(argv).out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
