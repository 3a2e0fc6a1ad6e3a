"""A seeded synthetic LLaMA block, prepared the way a real checkpoint is: float weights in,
integer codes and dyadic scales out.  ``make_demo_model`` wraps it as the one-layer model
``intsim demo`` runs; ``make_model`` builds whole random models for interpreter tests.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from intsim.matmul import QWeight
from intsim.model import IntModel, LayerParams, ModelConfig, Widths
from intsim.options import Spec

from .embedding import quantize_embedding
from .rope_tables import rope_tables
from .weights import quantize_weight


@dataclass(frozen=True)
class SyntheticBlock:
    vocab: int
    dim: int
    n_heads: int
    head_dim: int
    ffn: int
    emb_q: np.ndarray
    emb_m: np.ndarray
    emb_k: np.ndarray
    wq: QWeight
    wk: QWeight
    wv: QWeight
    wo: QWeight
    w_gate: QWeight
    w_up: QWeight
    w_down: QWeight
    w_head: QWeight
    cos_q: np.ndarray
    sin_q: np.ndarray


def make_block(seed: int = 0, vocab: int = 256, dim: int = 64, n_heads: int = 4, ffn: int = 128,
               max_pos: int = 64, w_bits: int = 4, group_size: int = 32,
               spec: Spec | None = None) -> SyntheticBlock:
    """The block's parameters; the embedding scales and RoPE tables follow ``spec``
    (mantissa / exponent widths, table fraction bits) as the converter's do."""
    spec = Spec() if spec is None else spec
    rng = np.random.default_rng(seed)
    head_dim = dim // n_heads

    def lin(n, k, bits=w_bits, g=group_size):
        return quantize_weight(rng.standard_normal((n, k)) * (1.0 / np.sqrt(k)), bits, g)

    emb_q, emb_m, emb_k = quantize_embedding(rng.standard_normal((vocab, dim)) * 0.5, 8, spec.m_bits,
                                             spec.k_range)
    cos_q, sin_q = rope_tables(head_dim, max_pos, 10000.0, spec.rope_frac_bits)
    return SyntheticBlock(vocab, dim, n_heads, head_dim, ffn, emb_q, emb_m, emb_k,
                          lin(dim, dim), lin(dim, dim), lin(dim, dim), lin(dim, dim),
                          lin(ffn, dim), lin(ffn, dim), lin(dim, ffn), lin(vocab, dim, 8, dim),
                          cos_q, sin_q)


def make_demo_model(seed: int = 0, spec: Spec | None = None) -> IntModel:
    """``intsim demo``'s model: ``make_block(seed)`` as a one-layer ``IntModel`` (W4 g32 /
    A8, one kv head per query head, no norm gains: DI-Norm alone), run by the interpreter's
    own ``forward``."""
    spec = Spec() if spec is None else spec
    blk = make_block(seed, spec=spec)
    max_pos = blk.cos_q.shape[0]
    cfg = ModelConfig(1, blk.dim, blk.n_heads, blk.n_heads, blk.head_dim, blk.ffn, blk.vocab, max_pos,
                      "10000.0", 1, 2)
    layer = LayerParams(blk.wq, blk.wk, blk.wv, blk.wo, blk.w_gate, blk.w_up, blk.w_down)
    return IntModel(cfg, Widths(w_bits=blk.wq.bits, a_bits=8, group_size=blk.wq.group_size), spec,
                    blk.emb_q, blk.emb_m, blk.emb_k, (layer,), blk.w_head, blk.cos_q, blk.sin_q,
                    meta={"source": f"converters.synthetic.make_demo_model(seed={seed})"})


def make_model(seed: int = 0, n_layers: int = 2, dim: int = 64, n_heads: int = 4, n_kv_heads: int = 2,
               ffn: int = 96, vocab: int = 128, max_pos: int = 64, w_bits: int = 8, a_bits: int = 8,
               group_size: int = 0, spec=None, alpha: bool = False, norm_weights: bool = False,
               head_a_bits: int | None = None, a_group: int | None = None,
               down_rot: int | None = None, pv_bits: int | None = None):
    """A seeded random LLaMA as an ``IntModel`` (no checkpoint, no tokenizer): for tests
    of the interpreter.  Weights ~ N(0, 1/fan_in); γ's are folded in as the converter does,
    and with ``norm_weights`` each layer also keeps per-channel DI-Norm weights (16-bit
    mantissas around 2^12, a few negative, exponent 12) as ``--norm-gain channel`` does;
    ``head_a_bits``: the LM head's input width (None: ``a_bits``); ``a_group``: group-wise
    activations (docs/SPEC.md section 4.8; None: per token); ``down_rot``: the block of the
    online Hadamard rotation of down_proj's input (docs/SPEC.md section 7.6; None: none);
    ``pv_bits``: the probabilities' width into PV (docs/SPEC.md section 14.2; None: ``a_bits``)."""
    spec = Spec() if spec is None else spec
    rng = np.random.default_rng(seed)
    hd = dim // n_heads

    def lin(n, k, bits=w_bits, g=group_size):
        gamma = 1.0 + 0.1 * rng.standard_normal(k)
        return quantize_weight(rng.standard_normal((n, k)) / np.sqrt(k) * gamma, bits, g or k)

    layers = []
    for _ in range(n_layers):
        a_inv, a_k = None, 0
        if alpha:
            a_k = 20
            a_inv = np.rint(np.exp(0.3 * rng.standard_normal(ffn)) * 2 ** a_k).astype(np.int64)
        norms = {}
        if norm_weights:
            for n in ("attn_norm", "ffn_norm"):
                g = np.exp(0.7 * rng.standard_normal(dim)) * np.where(rng.random(dim) < 0.1, -1, 1)
                norms[f"{n}_w"] = np.clip(np.rint(g * 2 ** 12), -32767, 32767).astype(np.int16)
                norms[f"{n}_k"] = 12
        layers.append(LayerParams(lin(n_heads * hd, dim), lin(n_kv_heads * hd, dim), lin(n_kv_heads * hd, dim),
                                  lin(dim, n_heads * hd), lin(ffn, dim), lin(ffn, dim), lin(dim, ffn),
                                  a_inv, a_k, **norms))
    emb_q, emb_m, emb_k = quantize_embedding(rng.standard_normal((vocab, dim)) * 0.5)
    cos_q, sin_q = rope_tables(hd, max_pos, 10000.0, spec.rope_frac_bits)
    cfg = ModelConfig(n_layers, dim, n_heads, n_kv_heads, hd, ffn, vocab, max_pos, "10000.0", 1, 2)
    return IntModel(cfg, Widths(w_bits=w_bits, a_bits=a_bits, group_size=group_size,
                                head_a_bits=head_a_bits, a_group=a_group, down_rot=down_rot,
                                pv_bits=pv_bits), spec,
                    emb_q, emb_m, emb_k, tuple(layers), lin(vocab, dim, 8, dim), cos_q, sin_q)
