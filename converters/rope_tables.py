"""Float side of integer RoPE: build the integer cos/sin tables once, at conversion.

The tables are DATA shipped in the model file next to the weights: the integer runtime
(``intsim.rope.rope``) only indexes them, it never evaluates a cosine.  Built in float64
NumPy; rounding is half away from zero, ``round(v * 2^f)``, so every entry is within
``2^-(f+1)`` of ``cos``/``sin`` of its (float64) angle.
"""
from __future__ import annotations

import numpy as np


def rope_inv_freq(head_dim: int, theta: float = 10000.0) -> np.ndarray:
    """LLaMA's frequencies ``theta^(-2i/head_dim)``, i < head_dim/2, float64."""
    i = np.arange(0, head_dim, 2, dtype=np.float64)
    return 1.0 / (float(theta) ** (i / head_dim))


def round_half_away(v: np.ndarray) -> np.ndarray:
    """Round to nearest, ties away from zero (float64 in, float64 integral values out)."""
    return np.sign(v) * np.floor(np.abs(v) + 0.5)


def rope_tables(head_dim: int, max_pos: int, theta: float = 10000.0, frac_bits: int = 14,
                inv_freq: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Integer RoPE tables ``(cos_q, sin_q)``, shape [max_pos, head_dim/2].

    ``cos_q[p, i] = round_half_away(cos(p * inv_freq[i]) * 2^frac_bits)`` (same for sin),
    values in ``[-2^f, 2^f]``: signed Q1.f.  Dtype int16 when ``f <= 14`` (2^14 fits),
    else int32.  ``inv_freq`` overrides LLaMA's default frequencies (e.g. a checkpoint's
    scaled ``rope_scaling`` frequencies); it must have head_dim/2 entries.  Angles are
    formed in float64 (Hugging Face forms them in float32; the float64 table is the
    closer one to the exact rotation).
    """
    if head_dim < 2 or head_dim % 2:
        raise ValueError(f"head_dim: {head_dim} must be even and >= 2")
    if max_pos < 1:
        raise ValueError(f"max_pos: {max_pos} must be >= 1")
    if not 1 <= frac_bits <= 30:
        raise ValueError(f"frac_bits: {frac_bits} is outside [1, 30]")
    if inv_freq is None:
        inv_freq = rope_inv_freq(head_dim, theta)
    inv_freq = np.asarray(inv_freq, dtype=np.float64)
    if inv_freq.shape != (head_dim // 2,):
        raise ValueError(f"inv_freq: shape {inv_freq.shape} != ({head_dim // 2},)")
    ang = np.outer(np.arange(max_pos, dtype=np.float64), inv_freq)
    one = float(2 ** frac_bits)
    dt = np.int16 if frac_bits <= 14 else np.int32
    cos_q = round_half_away(np.cos(ang) * one).astype(dt)
    sin_q = round_half_away(np.sin(ang) * one).astype(dt)
    return cos_q, sin_q
