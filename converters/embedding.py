"""Float side of the embedding: quantize each row symmetrically with its own dyadic scale.

The integer runtime (``intsim.embedding.embed``) only gathers rows of the result.
"""
from __future__ import annotations

import numpy as np


def quantize_embedding(w_float: np.ndarray, bits: int = 8, scale_mant_bits: int = 8,
                       k_range: tuple[int, int] = (-128, 127)):
    """Per-row symmetric quantization of an embedding matrix [V, D].

    Per row r: ``s_r = max_j |w[r, j]| / Q`` with ``Q = 2^(bits-1) - 1``, written as
    ``m * 2^-k`` with ``m`` normalized to ``[2^(M-1), 2^M - 1]`` (``M = scale_mant_bits``)
    and ROUNDED UP (``m = ceil(s_r * 2^k)``; a carry to ``2^M`` halves m and decrements k),
    so that ``|w| / (m 2^-k) <= Q``: the codes ``q = round_half_away(w / (m 2^-k))`` never
    clip.  Relative scale error < 2^-(M-1) (one mantissa step, always upward).
    An all-zero row gets ``q = 0, m = 0, k = 0``.

    Returns ``(table_q, table_m, table_k)``: int8 (bits <= 8) or int16 codes [V, D],
    int64 mantissas [V] and exponents [V].  Raises ValueError for a non-finite weight or
    an exponent outside ``k_range``.
    """
    w = np.asarray(w_float, dtype=np.float64)
    if w.ndim != 2:
        raise ValueError(f"w_float: expected a 2-d [V, D] matrix, got shape {w.shape}")
    if not np.all(np.isfinite(w)):
        raise ValueError("w_float: contains a non-finite value")
    if not 2 <= bits <= 16:
        raise ValueError(f"bits: {bits} is outside [2, 16]")
    if not 2 <= scale_mant_bits <= 30:
        raise ValueError(f"scale_mant_bits: {scale_mant_bits} is outside [2, 30]")
    Q = 2 ** (bits - 1) - 1
    M = scale_mant_bits
    amax = np.abs(w).max(axis=1)
    zero = amax == 0
    s = np.where(zero, 1.0, amax / Q)
    _, ex = np.frexp(s)                      # s = f * 2^ex, f in [0.5, 1)
    k = (M - ex).astype(np.int64)            # s * 2^k in [2^(M-1), 2^M)
    m = np.ceil(np.ldexp(s, k)).astype(np.int64)
    carry = m >= 2 ** M
    m = np.where(carry, m >> 1, m)           # m was exactly 2^M: halve, exact
    k = np.where(carry, k - 1, k)
    m = np.where(zero, 0, m)
    k = np.where(zero, 0, k)
    bad = (k < k_range[0]) | (k > k_range[1])
    if bad.any():
        r = int(np.flatnonzero(bad)[0])
        raise ValueError(f"w_float: row {r} needs scale exponent {int(k[r])} outside k_range {k_range}")
    scale = np.ldexp(m.astype(np.float64), -k)
    scale = np.where(zero, 1.0, scale)
    v = w / scale[:, None]
    q = np.sign(v) * np.floor(np.abs(v) + 0.5)
    q = np.clip(q, -Q, Q)                    # a no-op by the ceil above (kept as a guard)
    q = np.where(zero[:, None], 0, q)
    dt = np.int8 if bits <= 8 else np.int16
    return q.astype(dt), m, k
