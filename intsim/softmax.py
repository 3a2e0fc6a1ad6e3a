"""DI-ClippedSoftmax: I-LLM's integer softmax with the Eq. 10 clip.  Spec: docs/SPEC.md section 6.

Per query row of exact integer scores ``x`` (real value ``x * s``, ``s = m * 2^-k``
per row), with ``V`` the visible columns (mask / causal) and ``rnd`` = ``spec.rounding``:

1. max and clip, exact integers.  ``x~ = x - max_V x`` (<= 0 on V);
   ``C = clamp(rnd(c * 2^k / m), 1, 2^61)``; ``x~ = max(x~, -C)``; 0 off V.
2. requantize.  ``requant_rows(x~, s, softmax_in_bits, asymmetric)`` -> codes and a new
   row scale; ``x_q = q - zp`` in ``[-(2^b - 1), 0]`` (0 off V).
3. exponentiate.  ``e = DI-Exp(x_q)`` (module intsim.exp), 0 off V;  ``S = sum e``.
4. normalize to ``F`` fraction bits (``F = p_out`` by default), saturating at
   ``2^p_out - 1``:  "divide":      ``p = min(rnd(e * 2^F / S), 2^p_out - 1)``
                     "reciprocal":  ``f = floor((2^62 - 1) / S)`` once per row,
                                    ``p = min(rnd(e * f / 2^(62 - F)), 2^p_out - 1)``.
   Output: unsigned ``p_out``-bit codes, zero point 0, scale ``2^-F`` for every row.

A row with no visible column gives all-zero probabilities; a row whose scores are all
equal (or whose scale is 0) gives the uniform distribution up to rounding.

The arithmetic exists twice: the NumPy reference (``_center_clip_ref``, ``requant_rows``'
reference, ``_exp_norm_ref``) and the Numba kernel :func:`softmax_row`, one row over its
visible columns, which the whole-tensor op and the fused forward both call.  Masked
columns do not enter it: in the reference they are zeros after step 1, and every later
step they could touch (the requantizer's range, which always contains 0 because the
max element is 0 after centering; the sum S) is unchanged by zeros.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from .errors import IntsimError, check_choice, check_int, check_int_array, check_range
# absolute import: the float scan (tests/test_no_float.py) flags a module named "exp"
from intsim.exp import _exp_apply_ref, _exp_unit_ref, exp_apply_nb, exp_recip_nb, exp_unit_nb, row_scale
from .fixedpoint import (kernel, _as_i64, _check_backend, _div_round_ref, _rshift_round_ref, bit_length_nb,
                         bit_length_ref, div_round_nb, rounding_code, rshift_round_nb)
from .options import DEFAULT_SPEC, SOFTMAX_DIVS, Spec
from .qtensor import Dyadic, QTensor, dtype_for, gather_visible, scatter_visible
from .requant import M_IN_LIMIT, check_saturation, requant_row, requant_rows

#: |scores| <= 2^60 - 1, so x - max >= -(2^61 - 2) fits requant_rows' 2^61 - 1
SCORE_LIMIT = 2 ** 60 - 1
#: clip threshold cap: C >= 2^61 exceeds every |x - max|, i.e. the clip is a no-op
CLIP_CAP = 2 ** 61
#: R of the reciprocal: f = floor((2^62 - 1) / S), so e * f <= 2^62 - 1 (e <= S)
RECIP_BITS = 62
#: sum bound: S <= cols * 2^30 <= 2^61 (T <= 2^30, intsim.exp)
COLS_LIMIT = 2 ** 31
#: softmax_in_bits beyond requant_rows' 16-bit codes are refused
IN_BITS_MAX = 16


# ------------------------------------------------------------ clip threshold C

def _clip_threshold_ref(c, m, k, code):
    """``clamp(rnd(c * 2^k / m), 1, 2^61)`` per row, exact for every k (int64).

    c in [1, 1000] (10 bits), 0 <= m <= 2^28, |k| <= 2^20.  m = 0 gives the cap.
    * k < 0:  ``rnd(c / (m << -k))``; if bitlen(m) - k > 62 the divisor exceeds 2c and
      every tie rule gives 0.
    * 0 <= k <= 62 - bitlen(c):  ``rnd((c << k) / m)`` with c << k < 2^62.
    * larger k: ``A = c << k0`` (k0 = 62 - bitlen(c), A < 2^62), ``i = k - k0 >= 1``:
      ``A * 2^i / m = q1 * 2^i + r1 * 2^i / m`` (q1, r1 = divmod(A, m)); the sum is at
      least 2^61 (the cap) when i >= bitlen(m) or q1 >= 2^(61 - i); otherwise
      ``(q1 << i) + rnd((r1 << i) / m)`` is exact (r1 << i < 2^57; the floor
      quotient's parity, which half_even reads, is that of the second term as i >= 1).
    """
    m = np.asarray(m, dtype=np.int64)
    k = np.asarray(k, dtype=np.int64)
    c = np.int64(c)
    bm = bit_length_ref(m)
    bc = int(bit_length_ref(c))
    md = np.maximum(m, 1)
    # k < 0
    neg_ok = (k < 0) & (bm - k <= 62)
    sh_n = np.where(neg_ok, -k, 0)
    c_neg = np.where(neg_ok, _div_round_ref(c, md << sh_n, code), 0)
    # 0 <= k <= 62 - bitlen(c)
    mid = (k >= 0) & (k <= 62 - bc)
    c_mid = _div_round_ref(c << np.where(mid, k, 0), md, code)
    # k > 62 - bitlen(c)
    k0 = 62 - bc
    i = np.where(k > k0, k - k0, 1)
    A = c << np.int64(k0)
    q1 = A // md
    r1 = A - q1 * md
    fits = (i < bm) & (q1 < (np.int64(1) << np.clip(61 - i, 0, 62)))
    ic = np.where(fits, i, 0)
    c_big = np.where(fits, (q1 << ic) + _div_round_ref(r1 << ic, md, code), CLIP_CAP)
    C = np.where(k < 0, c_neg, np.where(mid, c_mid, c_big))
    C = np.where(m == 0, CLIP_CAP, C)
    return np.clip(C, 1, CLIP_CAP).astype(np.int64)


@njit(cache=True)
def _clip_threshold_nb(c, m, k, code):
    if m == 0:
        return np.int64(CLIP_CAP)
    bm = bit_length_nb(m)
    bc = bit_length_nb(c)
    if k < 0:
        if bm - k > 62:
            C = np.int64(0)
        else:
            C = div_round_nb(c, m << (-k), code)
    elif k <= 62 - bc:
        C = div_round_nb(c << k, m, code)
    else:
        k0 = 62 - bc
        i = k - k0
        A = c << k0
        q1 = A // m
        r1 = A - q1 * m
        if i >= bm or q1 >= (np.int64(1) << (61 - i)):
            C = np.int64(CLIP_CAP)
        else:
            C = (q1 << i) + div_round_nb(r1 << i, m, code)
    return min(max(C, np.int64(1)), np.int64(CLIP_CAP))


# ------------------------------------------------------- step 1: max and clip

def _center_clip_ref(x, vis, m, k, c, code):
    any_v = vis.any(axis=-1)
    lowest = np.iinfo(np.int64).min
    mx = np.where(vis, x, lowest).max(axis=-1)
    mx = np.where(any_v, mx, 0)
    xt = np.where(vis, x - mx[:, None], 0)            # >= -(2^61 - 2) on V
    C = _clip_threshold_ref(c, m, k, code)
    xt = np.maximum(xt, -C[:, None])
    return np.where(m[:, None] == 0, 0, xt).astype(np.int64)


@njit(cache=True, inline="always")
def _clip_row(x, ms, ks, clip, code, xt):
    """Step 1 on one row's visible scores ``x`` (n >= 1) into ``xt`` (may be ``x``):
    ``max(x - max x, -C)``, or 0 for a row scale of 0."""
    n = x.shape[0]
    mx = x[0]
    for j in range(1, n):
        mx = max(mx, x[j])
    thr = _clip_threshold_nb(clip, ms, ks, code)
    for j in range(n):
        xt[j] = max(x[j] - mx, -thr) if ms != 0 else 0


@njit(cache=True)
def _center_clip_nb(x, vis, m, k, c, code, xt):
    """Step 1 of every row (:func:`_clip_row` on its visible columns, 0 elsewhere)."""
    rows, C = x.shape
    buf = np.empty(C, dtype=np.int64)
    for i in range(rows):
        n = gather_visible(x[i], vis[i], buf)
        if n:
            _clip_row(buf[:n], m[i], k[i], c, code, buf[:n])
        scatter_visible(buf, vis[i], xt[i])


# --------------------------------------------- steps 3-4: DI-Exp and normalize

def _exp_norm_ref(xq, vis, mr, kr, F, p_max, recip, code):
    zero = mr == 0                                     # real spread below the scale: x_q := 0
    xq = np.where(vis & ~zero[:, None], xq, 0)
    T, j = _exp_unit_ref(np.where(zero, 1, mr), np.where(zero, 0, kr), code)
    e = np.where(vis, _exp_apply_ref(xq, T[:, None], j[:, None], code), 0)   # <= T <= 2^30
    S = e.sum(axis=-1)                                 # <= cols * 2^30 <= 2^61
    Sd = np.maximum(S, 1)[:, None]                     # S = 0 only for a row without V
    if recip:
        f = (np.int64(2 ** RECIP_BITS - 1)) // Sd      # one divide per row
        p = _rshift_round_ref(e * f, np.int64(RECIP_BITS - F), code)   # e*f <= 2^62 - 1
    else:
        p = _div_round_ref(e << np.int64(F), Sd, code)  # e * 2^F <= 2^46
    return np.minimum(p, p_max).astype(np.int64)


@njit(cache=True)
def softmax_row(x, ms, ks, clip, in_bits, F, p_max, recip, m_bits, k_lo, k_hi, code, fitted,
                cq, p):
    """The Numba kernel of one row of :func:`di_clipped_softmax` (steps 1-4) over its n >= 1
    visible scores ``x`` (int64, row scale ``ms 2^-ks``; overwritten with the clipped
    scores); ``cq`` int64 scratch of n; the probabilities go to ``p`` (n entries, any
    integer dtype; may be ``x``).  Returns 1 when step 2's scale saturated, else 0.
    Tie rule ``code`` for C, the requantization, DI-Exp's T and p; the reciprocal floors.
    Bounds as :func:`di_clipped_softmax`: ``S <= n 2^30``, ``e 2^F <= 2^46``,
    ``e f <= 2^62 - 1``."""
    n = x.shape[0]
    _clip_row(x, ms, ks, clip, code, x)
    zc, mr, kr, sat = requant_row(x, np.int64(0), ms, ks, in_bits, False, m_bits, k_lo, k_hi,
                                  code, fitted, cq)
    zero = mr == 0                                     # real spread below the scale: x_q := 0
    if zero:
        T, j = exp_unit_nb(np.int64(1), np.int64(0), code)
    else:
        T, j = exp_unit_nb(mr, kr, code)
    MT = exp_recip_nb(T)
    S = np.int64(0)
    for jj in range(n):
        e = exp_apply_nb(np.int64(0) if zero else cq[jj] - zc, T, j, MT, code)
        cq[jj] = e
        S += e                                         # <= cols * 2^30 <= 2^61
    S = max(S, np.int64(1))
    if recip:
        f = np.int64(2 ** RECIP_BITS - 1) // S
        sh = np.int64(RECIP_BITS) - F
        for jj in range(n):
            p[jj] = min(rshift_round_nb(cq[jj] * f, sh, code), p_max)
    else:
        for jj in range(n):
            p[jj] = min(div_round_nb(cq[jj] << F, S, code), p_max)
    return sat


@njit(cache=True)
def _softmax_nb(x, vis, m, k, clip, in_bits, F, p_max, recip, m_bits, k_lo, k_hi, code, fitted,
                p):
    """:func:`softmax_row` over every row's visible columns (0 elsewhere); returns the
    number of saturated step-2 scales."""
    rows, C = x.shape
    buf = np.empty(C, dtype=np.int64)
    cq = np.empty(C, dtype=np.int64)
    nsat = 0
    for i in range(rows):
        n = gather_visible(x[i], vis[i], buf)
        if n:
            nsat += softmax_row(buf[:n], m[i], k[i], clip, in_bits, F, p_max, recip, m_bits,
                                k_lo, k_hi, code, fitted, cq[:n], buf[:n])
        scatter_visible(buf, vis[i], p[i])
    return nsat


# ------------------------------------------------------------------ public op

def visibility(shape: tuple, mask=None, causal: bool = False, q_offset: int = 0) -> np.ndarray:
    """Boolean array of ``shape`` (..., rows, cols): True where a score is visible.

    ``mask`` (bool, broadcastable to shape, True = visible) and the causal rule
    ``col <= row + q_offset`` (row, col: indices along the last two axes) combine by AND.
    """
    vis = np.ones(shape, dtype=np.bool_)
    if mask is not None:
        if not isinstance(mask, np.ndarray) or mask.dtype != np.bool_:
            kind = f"array of dtype {mask.dtype}" if isinstance(mask, np.ndarray) else \
                type(mask).__name__
            raise IntsimError(f"mask: expected a bool numpy array (True = visible), got {kind}")
        try:
            vis = vis & np.broadcast_to(mask, shape)
        except ValueError:
            raise IntsimError(f"mask: shape {mask.shape} does not broadcast to scores "
                              f"shape {shape}") from None
    if not isinstance(causal, (bool, np.bool_)):
        raise IntsimError(f"causal: expected a bool, got {type(causal).__name__}")
    if causal:
        if len(shape) < 2:
            raise IntsimError(f"causal: scores need a row axis, got shape {shape}")
        q_offset = check_int("q_offset", q_offset, -(2 ** 31), 2 ** 31)
        rows, cols = shape[-2], shape[-1]
        vis = vis & (np.arange(cols)[None, :] <= np.arange(rows)[:, None] + q_offset)
    return np.ascontiguousarray(vis)


def di_clipped_softmax(scores: np.ndarray, scale: Dyadic, mask=None, causal: bool = False,
                       q_offset: int = 0, spec: Spec = DEFAULT_SPEC, backend: str = "numba",
                       p_frac_bits: int | None = None) -> QTensor:
    """DI-ClippedSoftmax over the last axis: integer scores -> p_out-bit probabilities.

    Inputs: ``scores`` integers (..., cols), ``|x| <= 2^60 - 1``, ``1 <= cols <= 2^31``;
    ``scale`` a Dyadic per row (shape ``scores.shape[:-1]`` or scalar),
    ``0 <= m <= 2^28``, ``|k| <= 2^20``; ``mask`` bool broadcastable to scores (True =
    visible) and/or ``causal`` (row i sees cols ``j <= i + q_offset``).
    Options: ``spec.softmax_clip`` c (real units), ``spec.softmax_in_bits`` b (<= 16),
    ``spec.softmax_p_out``, ``spec.softmax_div``, ``spec.rounding``; keyword
    ``p_frac_bits`` F in [1, p_out] (default ``spec.softmax_p_frac``, None = p_out; the
    paper's scale is p_out - 1).

    Steps (module docstring): max over visible columns; ``x~ = max(x - max, -C)`` with
    ``C = clamp(rnd(c * 2^k / m), 1, 2^61)``; ``requant_rows`` to b-bit asymmetric codes,
    ``x_q = q - zp`` in ``[-(2^b - 1), 0]``; ``e = DI-Exp(x_q)``, ``S = sum e``;
    ``p = min(rnd(e * 2^F / S), 2^p_out - 1)`` ("divide") or with the row reciprocal
    ``f = floor((2^62 - 1) / S)``, ``p = min(rnd(e * f / 2^(62 - F)), 2^p_out - 1)``.

    Overflow: ``|x - max| <= 2^61 - 2``; ``C`` formed exactly (``_clip_threshold_ref``);
    ``e <= T <= 2^30`` so ``S <= 2^31 * 2^30 = 2^61``; ``e * 2^F <= 2^46``;
    ``e * f <= e * (2^62 - 1) / S <= 2^62 - 1``.  The max element has ``x_q = 0`` and
    ``e = T``, so ``S >= 1`` on every row with a visible column.
    Tie rule: ``spec.rounding`` for C, the requantization, DI-Exp's T and p; the
    reciprocal floors.  "reciprocal" is at most 1 LSB below "divide" (``e * (2^62/S - f)
    < 2e <= 2^31``, i.e. < 2^-15 LSB before the rounding).
    Returns a QTensor: unsigned ``p_out``-bit codes, zp 0, scale ``Dyadic(1, F)`` per row.
    Masked entries are 0; a row without visible columns is all 0.  Saturation: only a
    probability above ``1 - 2^-(F+1)`` (possible when F = p_out) clamps to 2^p_out - 1.
    """
    _check_backend(backend)
    code = rounding_code(spec.rounding)
    check_int_array("scores", scores)
    if scores.ndim < 1 or scores.shape[-1] == 0:
        raise IntsimError(f"scores: needs a non-empty last axis, got shape {scores.shape}")
    if scores.shape[-1] > COLS_LIMIT:
        raise IntsimError(f"scores: {scores.shape[-1]} columns exceed {COLS_LIMIT}")
    x64 = _as_i64("scores", scores)                    # refuses uint64 beyond int64
    check_range("scores", x64, -SCORE_LIMIT, SCORE_LIMIT)
    rows = scores.shape[:-1]
    m, k = row_scale("scale", scale, rows, m_lo=0, m_hi=M_IN_LIMIT)
    p_out = spec.softmax_p_out
    in_bits = check_int("spec.softmax_in_bits", spec.softmax_in_bits, 2, IN_BITS_MAX)
    if p_frac_bits is None:
        p_frac_bits = spec.softmax_p_frac
    F = p_out if p_frac_bits is None else check_int("p_frac_bits", p_frac_bits, 1, p_out)
    recip = check_choice("spec.softmax_div", spec.softmax_div, SOFTMAX_DIVS) == "reciprocal"
    vis = visibility(scores.shape, mask, causal, q_offset)

    C = scores.shape[-1]
    x2 = np.ascontiguousarray(x64).reshape(-1, C)
    v2 = vis.reshape(-1, C)
    m1, k1 = m.ravel(), k.ravel()
    p_max = 2 ** p_out - 1
    what = "scores - rowmax (clipped)"
    if backend == "reference":
        xt = _center_clip_ref(x2, v2, m1, k1, spec.softmax_clip, code)
        qt, _ = requant_rows(xt, Dyadic(m1, k1), in_bits, symmetric=False, spec=spec,
                             backend=backend, name=what)
        xq = qt.q.astype(np.int64) - qt.zp.astype(np.int64)[:, None]
        p = _exp_norm_ref(xq, v2, qt.scale.m, qt.scale.k, F, p_max, recip, code)
    else:
        p = np.empty_like(x2)
        k_lo, k_hi = spec.k_range
        nsat = kernel(backend, _softmax_nb, "softmax")(x2, v2, m1, k1, np.int64(spec.softmax_clip), in_bits, F, p_max, recip,
                           spec.m_bits, k_lo, k_hi, code, spec.requant_mode == "fitted", p)
        check_saturation(what, nsat, spec)
    return QTensor(p.reshape(scores.shape).astype(dtype_for(p_out, False)),
                   np.zeros(rows, dtype=np.int32),
                   Dyadic(np.ones(rows, dtype=np.int64), np.full(rows, F, dtype=np.int64)),
                   p_out, False)


def softmax_clip(scores: np.ndarray, scale: Dyadic, mask=None, spec: Spec = DEFAULT_SPEC,
                 backend: str = "numba") -> np.ndarray:
    """DI-ClippedSoftmax step 1 alone (the ``.clip`` stage of a softmax record).

    Per row of integer scores (..., C) with scale ``m * 2^-k`` and visible columns V
    (``mask``, bool broadcastable, True = visible):
    ``x~ = max(x - max_V x, -C)`` with ``C = clamp(rnd(c * 2^k / m), 1, 2^61)``
    (c = ``spec.softmax_clip``, tie rule ``spec.rounding``); 0 off V and on rows with
    m = 0.  Exact int64 otherwise (``|x - max| <= 2^61 - 2`` for ``|x| <= 2^60 - 1``).
    The arithmetic is :func:`di_clipped_softmax`'s own (``_center_clip_ref`` / ``_nb``);
    intsim.golden records it as a stage of each softmax op.
    """
    _check_backend(backend)
    check_int_array("scores", scores)
    if scores.ndim < 1 or scores.shape[-1] == 0:
        raise IntsimError(f"scores: needs a non-empty last axis, got shape {scores.shape}")
    rows, C = scores.shape[:-1], scores.shape[-1]
    m, k = row_scale("scale", scale, rows)
    vis = visibility(scores.shape, mask)
    x2 = np.ascontiguousarray(scores, dtype=np.int64).reshape(-1, C)
    v2, m1, k1 = vis.reshape(-1, C), m.ravel(), k.ravel()
    code = rounding_code(spec.rounding)
    if backend == "reference":
        xt = _center_clip_ref(x2, v2, m1, k1, spec.softmax_clip, code)
    else:
        xt = np.empty_like(x2)
        kernel(backend, _center_clip_nb, "center_clip")(x2, v2, m1, k1, np.int64(spec.softmax_clip),
                                                        code, xt)
    return xt.reshape(scores.shape)
