"""Float side of DI-MatMul: quantize a float weight matrix into ``intsim.matmul.QWeight``.

Asymmetric min/max quantization per (output row, group of G input columns), as in
OmniQuant (the quantizer I-LLM's code uses), with two integer-datapath adaptations:

1. the range always contains 0: ``lo = min(min w, 0)``, ``hi = max(max w, 0)``, so the
   zero point is a code in [0, 2^W - 1] without clamping and a group that does not
   straddle 0 (e.g. a constant group) is still represented (OmniQuant's raw min/max
   would need an out-of-range zero point there; LLaMA weight groups straddle 0 in
   practice, so the two agree on real checkpoints);
2. the float group scales ``s = (hi - lo) / (2^W - 1)`` become integer mantissas over ONE
   shared exponent ``k`` for the whole matrix: ``m = rint(s * 2^k)``, k chosen so the
   largest scale's mantissa has exactly ``scale_mant_bits`` bits.  The codes are then
   computed against the represented scale ``m * 2^-k`` (not the float s), so the integer
   weight ``(m q + b) 2^-k`` is the nearest grid point of the grid it actually uses.

Rounding: ``np.rint`` (half to even) for m, zp and the codes; a code outside [0, 2^W-1]
(possible only at the range ends, when m*2^-k rounded below s) is clamped.
"""
from __future__ import annotations

import numpy as np

from intsim.matmul import K_LIMIT, M_LIMIT, QWeight


def quantize_weight(w_float: np.ndarray, bits, group_size: int, scale_mant_bits: int = 16,
                    bounds: tuple[np.ndarray, np.ndarray] | None = None,
                    group_scale_bits: int | None = None) -> QWeight:
    """Quantize ``w_float`` [N, K] to ``bits``-bit codes with group-wise integer scales.

    ``bits``: one width for the matrix, or an integer array [N] of per-output-channel
    widths (mixed precision, MixLLM: the result's ``row_bits``; Q below is then per row).

    ``group_size`` G divides K (G == K: per output channel).  ``scale_mant_bits`` M in
    2..24: the largest group scale gets an M-bit mantissa; a group whose scale is 2^-d of
    the largest keeps about M - d bits (relative scale error <= 2^-(M-d+1)).
    ``bounds``: optional clipping bounds (lo, hi), each [N, K/G] with lo <= 0 <= hi
    (learned weight clipping, LWC); default: the group min/max.

    Per group, float64: ``s = (hi - lo) / Q`` (Q = 2^W - 1); ``m = rint(s * 2^k)``;
    ``s' = m 2^-k``; ``zp = rint(-lo / s')``; ``q = clip(rint(w / s') + zp, 0, Q)``;
    ``b = -m * zp``.  A group with m = 0 (all zero, or a scale below 2^-(k+1)) gets
    q = 0, b = 0: its weights are 0.

    ``group_scale_bits`` U (MixLLM's two-step dequantization, docs/SPEC.md section 4.9):
    every group scale is an U-bit integer ``u`` times a per-output-channel scale ``c 2^-k``,
    so ``m = c * u`` and ``b = -c * u * zp``.  Per row, float64: ``c = ceil(max_g s /
    (2^U - 1) * 2^k)`` with k chosen so the largest c has ``scale_mant_bits`` bits
    (``scale_mant_bits + U <= 24``), then ``u = min(ceil(s / (c 2^-k)), 2^U - 1)``.  Both
    round up (ceil) so that the represented group range covers the float one: no code is
    clamped by a scale rounded down, at the cost of up to one step of u (a relative
    ``1/u``) in the scale.  Then zp and the codes as above, against ``c u 2^-k``.
    """
    w = np.asarray(w_float, dtype=np.float64)
    if w.ndim != 2 or w.shape[0] == 0 or w.shape[1] == 0:
        raise ValueError(f"w_float: expected a non-empty 2-d [N, K] matrix, got shape {w.shape}")
    if not np.all(np.isfinite(w)):
        raise ValueError("w_float: contains a non-finite value")
    row_bits = None
    if isinstance(bits, np.ndarray):
        if bits.shape != (w.shape[0],) or bits.dtype.kind not in "iu":
            raise ValueError(f"bits: a per-row array must be integers of shape ({w.shape[0]},)")
        if bits.min() < 2 or bits.max() > 8:
            raise ValueError(f"bits: per-row widths [{bits.min()}, {bits.max()}] outside [2, 8]")
        row_bits, bits = bits.astype(np.uint8), int(bits.max())
    elif not (isinstance(bits, (int, np.integer)) and 2 <= bits <= 8):
        raise ValueError(f"bits: {bits!r} is outside [2, 8]")
    if not (isinstance(scale_mant_bits, (int, np.integer)) and 2 <= scale_mant_bits <= 24):
        raise ValueError(f"scale_mant_bits: {scale_mant_bits!r} is outside [2, 24]")
    N, K = w.shape
    if not (isinstance(group_size, (int, np.integer)) and 1 <= group_size <= K
            and K % group_size == 0):
        raise ValueError(f"group_size: {group_size!r} does not divide K = {K}")
    G, ng, M = int(group_size), K // int(group_size), int(scale_mant_bits)
    Q = (2 ** bits - 1 if row_bits is None
         else (2.0 ** row_bits.astype(np.int64) - 1)[:, None])        # [N, 1] per row
    wg = w.reshape(N, ng, G)
    if bounds is None:
        lo = np.minimum(wg.min(axis=2), 0.0)
        hi = np.maximum(wg.max(axis=2), 0.0)
    else:
        lo = np.asarray(bounds[0], dtype=np.float64)
        hi = np.asarray(bounds[1], dtype=np.float64)
        if lo.shape != (N, ng) or hi.shape != (N, ng):
            raise ValueError(f"bounds: expected two [N, K/G] = {(N, ng)} arrays")
        if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))
                and np.all(lo <= 0) and np.all(hi >= 0)):
            raise ValueError("bounds: need finite lo <= 0 <= hi")
    s = (hi - lo) / Q
    smax = float(s.max())
    if smax == 0.0:
        z = np.zeros((N, ng), dtype=np.int64)
        return QWeight(np.zeros((N, K), dtype=np.uint8), bits, G, z, z.copy(), 0, row_bits)
    if group_scale_bits is not None:
        m, k = _two_step_mantissas(s, M, group_scale_bits)
    else:
        _, e = np.frexp(smax)                      # smax = f * 2^e, f in [0.5, 1)
        k = M - int(e)                             # smax * 2^k in [2^(M-1), 2^M)
        m = np.rint(np.ldexp(s, k))
        if m.max() >= 2 ** M:                      # rounding carried up to 2^M
            k -= 1
            m = np.rint(np.ldexp(s, k))
    if not -K_LIMIT <= k <= K_LIMIT:
        raise ValueError(f"w_float: shared exponent k = {k} is outside +-{K_LIMIT}")
    m = m.astype(np.int64)
    assert 0 <= m.min() and m.max() <= (M_LIMIT if group_scale_bits else min(M_LIMIT, 2 ** M - 1))
    s_eff = np.ldexp(m.astype(np.float64), -k)  # the represented scale, exact in float64
    live = m > 0
    s_div = np.where(live, s_eff, 1.0)
    zp = np.where(live, np.clip(np.rint(-lo / s_div), 0, Q), 0).astype(np.int64)
    q = np.clip(np.rint(wg / s_div[:, :, None]) + zp[:, :, None], 0, np.asarray(Q)[..., None])
    q = np.where(live[:, :, None], q, 0).astype(np.uint8).reshape(N, K)
    return QWeight(q, bits, G, m, -m * zp, k, row_bits)


def _two_step_mantissas(s: np.ndarray, M: int, U) -> tuple[np.ndarray, int]:
    """Group mantissas ``m = c[n] * u[n, g]`` (float64, integral) and the shared exponent k
    for ``quantize_weight``'s ``group_scale_bits`` U: c with M bits at the largest row,
    u in [0, 2^U - 1], both rounded up (ceil)."""
    if not (isinstance(U, (int, np.integer)) and 2 <= U <= 16 and M + U <= 24):
        raise ValueError(f"group_scale_bits: {U!r} is outside [2, 16] or, with the "
                         f"{M}-bit channel scales, above the 24-bit group mantissa "
                         f"(scale_mant_bits + group_scale_bits <= 24)")
    top = 2 ** int(U) - 1
    cf = s.max(axis=1) / top                       # [N] channel scales, float
    _, e = np.frexp(float(cf.max()))
    k = M - int(e)                                 # max cf * 2^k in [2^(M-1), 2^M)
    c = np.ceil(np.ldexp(cf, k))                   # <= 2^M: c * top < 2^24 (M + U <= 24)
    c_eff = np.where(c > 0, np.ldexp(c, -k), 1.0)[:, None]
    u = np.where(c[:, None] > 0, np.minimum(np.ceil(s / c_eff), top), 0.0)
    return c[:, None] * u, k


def dequantize_weight(w: QWeight) -> np.ndarray:
    """The real weight ``(m q + b) * 2^-k`` as float64 [N, K] (exact while |m q + b| < 2^53)."""
    N, K = w.q.shape
    G = w.group_size
    wi = (w.m[:, :, None] * w.q.astype(np.int64).reshape(N, K // G, G) + w.b[:, :, None])
    return np.ldexp(wi.astype(np.float64), -w.k).reshape(N, K)
