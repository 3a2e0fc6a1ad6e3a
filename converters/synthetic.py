"""A seeded synthetic LLaMA block, prepared the way a real checkpoint is: float weights in,
integer codes and dyadic scales out.  Used by ``intsim demo`` and by tests that need a
whole block of integer parameters without a checkpoint.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from intsim.matmul import QWeight

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
               max_pos: int = 64, w_bits: int = 4, group_size: int = 32) -> SyntheticBlock:
    rng = np.random.default_rng(seed)
    head_dim = dim // n_heads

    def lin(n, k, bits=w_bits, g=group_size):
        return quantize_weight(rng.standard_normal((n, k)) * (1.0 / np.sqrt(k)), bits, g)

    emb_q, emb_m, emb_k = quantize_embedding(rng.standard_normal((vocab, dim)) * 0.5)
    cos_q, sin_q = rope_tables(head_dim, max_pos, 10000.0, 14)
    return SyntheticBlock(vocab, dim, n_heads, head_dim, ffn, emb_q, emb_m, emb_k,
                          lin(dim, dim), lin(dim, dim), lin(dim, dim), lin(dim, dim),
                          lin(ffn, dim), lin(ffn, dim), lin(dim, ffn), lin(vocab, dim, 8, dim),
                          cos_q, sin_q)
