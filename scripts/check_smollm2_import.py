#!/usr/bin/env python
"""Sanity-check an imported SmolLM2 folder (from ``python -m converters.gguf_import``).

Checks, printing what it finds:

1. tensor statistics (embedding, a q_proj) and config;
2. the tokenizer: encodes "The capital of France is", round-trips the evaluation texts exactly
   (from ``python -m converters.texts``);
3. a plain NumPy float64 forward pass of the imported weights (HF layout, rotate-half RoPE):
   greedy continuation of a prompt;
4. if ``llama_cpp`` (llama-cpp-python) happens to be importable: token ids and logits against
   llama.cpp's own reading of the GGUF -- an independent check of the q/k un-permutation, the
   name mapping and the tokenizer.  llama.cpp multiplies Q4_1 weights by 8-bit-quantized
   activations, so its logits differ slightly; the argmax should agree almost everywhere.

Usage: python scripts/check_smollm2_import.py [IMPORTED_DIR] [--texts DIR]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from converters.gguf_import import find_smollm2, import_gguf  # noqa: E402
from converters.texts import DEFAULT_CACHE_DIR  # noqa: E402


def rms_norm(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def forward(t: dict[str, np.ndarray], cfg: dict, ids: list[int]) -> np.ndarray:
    """Logits (T, vocab) in float64 for the token ids ``ids`` (no cache, causal)."""
    T, hd = len(ids), cfg["head_dim"]
    nh, nkv, eps = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["rms_norm_eps"]
    w = {k: v.astype(np.float64) for k, v in t.items()}
    h = w["model.embed_tokens.weight"][ids]
    inv = cfg["rope_theta"] ** (-np.arange(0, hd, 2) / hd)
    ang = np.arange(T)[:, None] * inv[None, :]
    cos = np.concatenate([np.cos(ang)] * 2, axis=-1)[:, None, :]
    sin = np.concatenate([np.sin(ang)] * 2, axis=-1)[:, None, :]

    def rope(x):  # x (T, heads, hd), rotate-half convention
        x1, x2 = x[..., : hd // 2], x[..., hd // 2:]
        return x * cos + np.concatenate([-x2, x1], axis=-1) * sin

    mask = np.triu(np.full((T, T), -np.inf), 1)
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        x = rms_norm(h, w[p + "input_layernorm.weight"], eps)
        q = rope((x @ w[p + "self_attn.q_proj.weight"].T).reshape(T, nh, hd))
        k = rope((x @ w[p + "self_attn.k_proj.weight"].T).reshape(T, nkv, hd))
        v = (x @ w[p + "self_attn.v_proj.weight"].T).reshape(T, nkv, hd)
        k = np.repeat(k, nh // nkv, axis=1)
        v = np.repeat(v, nh // nkv, axis=1)
        s = np.einsum("thd,shd->hts", q, k) / np.sqrt(hd) + mask
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        o = np.einsum("hts,shd->thd", s, v).reshape(T, nh * hd)
        h = h + o @ w[p + "self_attn.o_proj.weight"].T
        x = rms_norm(h, w[p + "post_attention_layernorm.weight"], eps)
        g = x @ w[p + "mlp.gate_proj.weight"].T
        u = x @ w[p + "mlp.up_proj.weight"].T
        h = h + (g / (1 + np.exp(-g)) * u) @ w[p + "mlp.down_proj.weight"].T
    h = rms_norm(h, w["model.norm.weight"], eps)
    head = w.get("lm_head.weight", w["model.embed_tokens.weight"])
    return h @ head.T


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", nargs="?", default="/tmp/smollm2_hf")
    ap.add_argument("--texts", default=str(DEFAULT_CACHE_DIR))
    args = ap.parse_args()
    from safetensors.numpy import load_file
    from tokenizers import Tokenizer

    folder = Path(args.folder)
    gguf_path = find_smollm2()
    if not (folder / "model.safetensors").is_file():
        import_gguf(gguf_path, folder)
    cfg = json.loads((folder / "config.json").read_text())
    t0 = time.perf_counter()
    tensors = load_file(str(folder / "model.safetensors"))
    print(f"loaded {len(tensors)} tensors in {time.perf_counter() - t0:.2f} s")
    for name in ("model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight",
                 "model.layers.0.self_attn.k_proj.weight", "model.norm.weight"):
        a = tensors[name]
        print(f"  {name:45s} {str(a.shape):14s} mean {a.mean():+.5f} std {a.std():.5f} "
              f"min {a.min():+.4f} max {a.max():+.4f}")

    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    prompt = "The capital of France is"
    enc = tok.encode(prompt)
    print(f"tokens of {prompt!r}: {enc.ids} {enc.tokens}")
    texts = Path(args.texts).expanduser()
    for name in ("persuasion.txt", "hamlet.txt", "austen_train.txt", "shakespeare.txt"):
        p = texts / name
        if not p.is_file():
            print(f"  ({p} missing: run python -m converters.texts)")
            continue
        s = p.read_text(encoding="utf-8")
        t0 = time.perf_counter()
        ids = tok.encode(s).ids
        back = tok.decode(ids, skip_special_tokens=False)
        print(f"  {name}: {len(s):,} chars -> {len(ids):,} tokens ({len(s) / len(ids):.2f} "
              f"chars/token) in {time.perf_counter() - t0:.2f} s; round-trip "
              f"{'exact' if back == s else 'DIFFERS'}")

    ids = list(enc.ids)
    for _ in range(8):
        ids.append(int(np.argmax(forward(tensors, cfg, ids)[-1])))
    print(f"numpy greedy: {tok.decode(ids)!r}")

    try:
        import llama_cpp
    except ImportError:
        print("llama_cpp not importable: skipping the comparison with llama.cpp")
        return 0
    sentences = [prompt, "Hello world! 12345 apples, 3.14159 and naïve café — “quotes”.",
                 "  leading spaces\n\ttabs and\r\nCRLF  ", "<|im_start|>user\nHi<|im_end|>",
                 "Wentworth's 1814 letter: 'I can listen no longer in silence.'"]
    llm = llama_cpp.Llama(model_path=str(gguf_path), n_ctx=512, logits_all=True, verbose=False,
                          n_threads=2)
    for s in sentences:
        a = tok.encode(s).ids
        b = llm.tokenize(s.encode("utf-8"), add_bos=False, special=True)
        print(f"  ids {'match' if a == list(b) else 'DIFFER'}: {s!r}"
              + ("" if a == list(b) else f"\n    ours {a}\n    llama.cpp {list(b)}"))
    p = texts / "persuasion.txt"
    if p.is_file():
        s = p.read_text(encoding="utf-8")
        a = tok.encode(s).ids
        b = list(llm.tokenize(s.encode("utf-8"), add_bos=False, special=False))
        print(f"  Persuasion ids: ours {len(a)}, llama.cpp {len(b)}: "
              f"{'identical' if a == b else 'DIFFER'}")
    else:
        s = "It was a fine day. " * 20
    ids = tok.encode(s).ids[:128]
    ours = forward(tensors, cfg, ids)
    llm.reset()
    llm.eval(ids)
    ref = np.array(llm.scores[: len(ids)], dtype=np.float64)
    diff = np.abs(ours - ref)
    agree = np.mean(ours.argmax(-1) == ref.argmax(-1))
    print(f"logits vs llama.cpp over {len(ids)} positions: max |diff| {diff.max():.4f}, mean "
          f"{diff.mean():.4f} (logit std {ref.std():.3f}); argmax agreement {agree:.3f}")
    # the same with q/k left in GGUF row order, to show the check is sensitive to it
    bad = dict(tensors)
    for i in range(cfg["num_hidden_layers"]):
        for nm, nh in (("q_proj", cfg["num_attention_heads"]), ("k_proj", cfg["num_key_value_heads"])):
            key = f"model.layers.{i}.self_attn.{nm}.weight"
            w = tensors[key]
            half = w.shape[0] // nh // 2
            bad[key] = w.reshape(nh, 2, half, -1).swapaxes(1, 2).reshape(w.shape)
    wrong = forward(bad, cfg, ids)
    print(f"  (with q/k rows left interleaved: mean |diff| {np.abs(wrong - ref).mean():.4f}, "
          f"argmax agreement {np.mean(wrong.argmax(-1) == ref.argmax(-1)):.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
