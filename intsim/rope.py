"""Integer RoPE: rotate pairs of centered codes by integer cos/sin tables.

Layout: Hugging Face LLaMA ("rotate_half"): inside each head of ``head_dim`` channels,
channel ``i`` pairs with channel ``i + head_dim/2`` and both use frequency ``i``.  The
tables ``cos_q``, ``sin_q`` (shape [max_pos, head_dim/2], signed Q1.f codes,
``f = spec.rope_frac_bits``) are DATA built once on the float side
(``converters.rope_tables``) and shipped in the model file: the integer runtime never
evaluates a cosine.  Spec: docs/SPEC.md, RoPE.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from .errors import IntsimError, IntsimOverflowError, check_int, check_int_array, check_range
from .fixedpoint import _check_backend, kernel, _rshift_round_ref, rounding_code, rshift_round_nb
from .options import DEFAULT_SPEC, Spec
from .qtensor import Dyadic, QTensor

#: largest |q - zp| accepted: |a c - b s| <= 2 * 2^16 * 2^f = 2^(17+f) <= 2^41 (f <= 24)
ROPE_D_LIMIT = 2 ** 16


def check_positions(positions, T: int, max_pos: int) -> np.ndarray:
    """``positions``: integer array of shape (T,) with values in [0, max_pos); names the
    first bad value and its index."""
    check_int_array("positions", positions, ndim=1)
    if positions.shape != (T,):
        raise IntsimError(f"positions: shape {positions.shape} != ({T},) (one per token row of x)")
    p64 = positions.astype(np.int64)
    bad = np.flatnonzero((p64 < 0) | (p64 >= max_pos))
    if bad.size:
        i = int(bad[0])
        raise IntsimOverflowError(
            f"positions: value {int(p64[i])} at index {i} is outside [0, max_pos) with "
            f"max_pos = {max_pos} (the rows of the cos/sin tables)")
    return p64


def _rope_ref(q, zp, pos, cos_q, sin_q, n_heads, head_dim, drop_bits, code):
    T = q.shape[0]
    hd2 = head_dim // 2
    d = (q.astype(np.int64) - zp.astype(np.int64)[:, None]).reshape(T, n_heads, head_dim)
    a = d[..., :hd2]                                  # |a|, |b| <= 2^16
    b = d[..., hd2:]
    c = cos_q[pos].astype(np.int64)[:, None, :]        # |c|, |s| <= 2^f
    s = sin_q[pos].astype(np.int64)[:, None, :]
    y1 = a * c - b * s                                 # |.| <= 2^(17+f) <= 2^41
    y2 = a * s + b * c
    y = np.concatenate([y1, y2], axis=-1).reshape(T, n_heads * head_dim)
    if drop_bits:
        y = _rshift_round_ref(y, np.int64(drop_bits), code)
    return y


@njit(cache=True)
def rope_head(q, zq, p, cos_q, sin_q, base, hd, drop, code, y):
    """The Numba kernel of one head of :func:`rope`: codes ``q[base:base + hd]`` (zero
    point ``zq``) at position ``p`` into ``y[0:hd]``: ``y[i] = a c - b s``,
    ``y[i + hd/2] = a s + b c`` (|.| <= 2^(17 + f), f <= 24); ``drop`` > 0 rounds both
    right by ``drop`` bits (tie rule ``code``)."""
    hd2 = hd // 2
    for i in range(hd2):
        a = np.int64(q[base + i]) - zq
        b = np.int64(q[base + hd2 + i]) - zq
        c = np.int64(cos_q[p, i])
        s = np.int64(sin_q[p, i])
        y1 = a * c - b * s
        y2 = a * s + b * c
        if drop:
            y1 = rshift_round_nb(y1, drop, code)
            y2 = rshift_round_nb(y2, drop, code)
        y[i] = y1
        y[hd2 + i] = y2


@njit(cache=True)
def _rope_nb(q, zp, pos, cos_q, sin_q, n_heads, head_dim, drop_bits, code):
    """:func:`rope_head` over every token and head."""
    T = q.shape[0]
    y = np.empty((T, n_heads * head_dim), dtype=np.int64)
    for t in range(T):
        for h in range(n_heads):
            base = h * head_dim
            rope_head(q[t], np.int64(zp[t]), pos[t], cos_q, sin_q, base, head_dim, drop_bits,
                      code, y[t, base:base + head_dim])
    return y


def rope(x: QTensor, positions: np.ndarray, cos_q: np.ndarray, sin_q: np.ndarray,
         n_heads: int, head_dim: int, spec: Spec = DEFAULT_SPEC, backend: str = "numba",
         drop_bits: int | None = None) -> tuple[np.ndarray, Dyadic]:
    """Rotate each head's channel pairs by the position's integer cos/sin; exact.

    Inputs: ``x`` codes (T, n_heads * head_dim), per-token scale ``(m_x, k_x)``, any
    zero point, ``|q - zp| <= 2^16``; ``positions`` int (T,) in ``[0, max_pos)``;
    ``cos_q``, ``sin_q`` int16/int32 (max_pos, head_dim/2) in ``[-2^f, 2^f]``,
    ``f = spec.rope_frac_bits`` (cos_q ≈ cos(pos * theta^(-2i/head_dim)) * 2^f).

    Per token t, head h, i < head_dim/2, with ``a = x[t, h, i] - zp``,
    ``b = x[t, h, i + head_dim/2] - zp``, ``c = cos_q[pos_t, i]``, ``s = sin_q[pos_t, i]``
    (all int64):

        y[t, h, i]              = a*c - b*s
        y[t, h, i + head_dim/2] = a*s + b*c

    Bound: ``|a*c - b*s| <= |a||c| + |b||s| <= 2 * 2^16 * 2^f = 2^(17+f) <= 2^41``
    (f <= 24), far inside int64.  (Tighter, by Cauchy-Schwarz: ``<= sqrt(a^2+b^2) *
    sqrt(c^2+s^2) <= 2^16.5 * (2^f + 1)``, which at f = 14 is below 2^31 - 1, so
    hardware may use int32 there.)

    Output: ``(y_i64, Dyadic(m_x, k_x + f - drop_bits))``, y of shape (T, n_heads *
    head_dim), centered (zero point 0).  With ``drop_bits = 0`` (default) nothing is
    rounded: the consumer requantizes per (token, head).  ``drop_bits`` in ``[0, f]``
    rounds ``y`` right by that many bits (``rshift_round``, tie rule ``spec.rounding``);
    ``drop_bits = f`` returns to the input's scale (|y| then <= 2^17).
    Error against the exact float rotation: each table entry is within 2^-(f+1) of its
    real value, so ``|y * 2^-f - y_real| <= (|a| + |b|) * 2^-(f+1)`` input units
    (plus 1/2 output unit when ``drop_bits > 0``).
    """
    _check_backend(backend)
    if not isinstance(x, QTensor):
        raise IntsimError(f"x: expected a QTensor, got {type(x).__name__}")
    n_heads = check_int("n_heads", n_heads, 1)
    head_dim = check_int("head_dim", head_dim, 2)
    if head_dim % 2:
        raise IntsimError(f"head_dim: {head_dim} is odd; RoPE pairs channel i with i + head_dim/2")
    f = spec.rope_frac_bits
    drop_bits = check_int("drop_bits", spec.rope_drop_bits if drop_bits is None else drop_bits, 0, f)
    if x.q.ndim != 2 or x.q.shape[1] != n_heads * head_dim:
        raise IntsimError(f"x: shape {x.q.shape} != (T, n_heads * head_dim) = "
                          f"(T, {n_heads * head_dim})")
    for name, tab in (("cos_q", cos_q), ("sin_q", sin_q)):
        check_int_array(name, tab, ndim=2, dtypes=(np.int16, np.int32))
        if tab.shape[0] < 1 or tab.shape[1] != head_dim // 2:
            raise IntsimError(f"{name}: shape {tab.shape} != (max_pos, head_dim/2) = "
                              f"(max_pos, {head_dim // 2})")
        check_range(f"{name} (Q1.{f} codes)", tab, -(2 ** f), 2 ** f)
    if cos_q.shape != sin_q.shape:
        raise IntsimError(f"sin_q: shape {sin_q.shape} != cos_q shape {cos_q.shape}")
    T = x.q.shape[0]
    pos = check_positions(positions, T, cos_q.shape[0])
    zp = np.asarray(x.zp, dtype=np.int64)
    check_range("x zero point", zp, -ROPE_D_LIMIT, ROPE_D_LIMIT)
    check_range("x (q - zp)", x.centered(), -ROPE_D_LIMIT, ROPE_D_LIMIT)
    code = rounding_code(spec.rounding)
    if backend == "reference":
        y = _rope_ref(x.q, zp, pos, cos_q, sin_q, n_heads, head_dim, drop_bits, code)
    else:
        y = kernel(backend, _rope_nb, "rope")(np.ascontiguousarray(x.q), zp, pos, np.ascontiguousarray(cos_q),
                     np.ascontiguousarray(sin_q), n_heads, head_dim, drop_bits, code)
    return y, Dyadic(x.scale.m.copy(), x.scale.k + (f - drop_bits))
