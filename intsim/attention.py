"""Attention's integer pieces: the two attention matmuls and the scale fold.

Spec: docs/SPEC.md section 14.  Q and K are per-(token, head) A-bit codes, V per-token
A-bit codes; their scales differ along the axes that QK^T and PV reduce or that softmax
normalizes over, so before those steps the scales are folded into the integers:

``fold_scales(vals, m, k, guard, visible)``, per row (all but the last axis):

    kref  = min over visible columns of k            (the coarsest exponent the row sees)
    out_j = rnd((vals_j * m_j) << guard  /  2^(k_j - kref))     visible columns
    out_j = 0                                                   masked columns
    row scale = 1 * 2^-(kref + guard)

so ``out_j * 2^-(kref + guard) ~= vals_j * m_j * 2^-k_j``: exact for every column whose
exponent is within ``guard`` of the coarsest, rounded at 2^-guard of the coarsest unit
otherwise (tie rule ``spec.rounding``).  ``kref`` depends only on visible columns, so a
causal row's result depends only on the keys it may see: prefill == decode.
Bound: ``|vals * m| << guard <= 2^62 - 1``, checked.

``qk_scores``: ``acc[h, i, j] = sum_d qc[i, h, d] * kc[j, g(h), d]`` (g = h // (H / Hkv),
grouped-query attention), int32: ``|acc| <= hd * max|qc| * max|kc|``, checked <= 2^31 - 1.
``pv``: ``out[i, h, d] = sum_j pc[h, i, j] * vc[j, g(h), d]``, int32:
``|out| <= S * max|pc| * max|vc|``, checked <= 2^31 - 1.  Both exact (no rounding).
With P-bit probability codes and A-bit values that is ``S (2^P - 1)(2^A - 1) <= 2^31 - 1``
for every input: :func:`pv_max_context` (``Widths.pv_bits``, docs/SPEC.md section 14.2).
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from .errors import IntsimError, IntsimOverflowError, check_int, check_int_array, check_range
from .fixedpoint import (kernel, ABS_LIMIT, _check_backend, _rshift_round_ref, dyadic_fit_nb,
                         rounding_code, rshift_round_nb)
from .gemm import VEC, dot_tile_flat
from .options import DEFAULT_SPEC, Spec
from .qtensor import Dyadic, gather_visible, scatter_visible
from .requant import M_IN_LIMIT

I32_MAX = 2 ** 31 - 1
I16_MAX = 2 ** 15 - 1
#: guard bits of the three scale folds of the graph (section 14); each keeps
#: |vals * m| << guard < 2^62 for the widths the model allows: keys |acc| <= 256 * 255^2
#: < 2^24, m < 2^16; probabilities p < 2^16, m < 2^16; head outputs |acc| < 2^31, m < 2^16.
GUARD_K, GUARD_V, GUARD_O = 16, 16, 12
#: the widest probability codes into PV (``Widths.pv_bits``): the PV kernels read centered
#: codes as int16 (:func:`pv`, and the fused path's probability row), so 2^15 - 1 is the
#: largest code; 16 bits would need another container (docs/SPEC.md section 14.2)
PV_BITS_LIMIT = 15
#: padding columns of a transposed value block (pv_row's tiles read up to 15 positions
#: past the last one, against zero probabilities)
VT_PAD = VEC


# ------------------------------------------------------------------ scale fold

def _fold_ref(v, m, k, vis, guard, code):
    big = np.int64(2 ** 62)
    kk = np.where(vis, k, big)
    kref = kk.min(axis=-1)
    none = kref == big
    kref = np.where(none, 0, kref)
    sh = np.where(vis, k - kref[..., None], 0)
    out = _rshift_round_ref((v * m) << np.int64(guard), sh, code)
    return np.where(vis, out, 0), kref


@njit(cache=True)
def fold_row(v, m, k, guard, code, out):
    """The Numba kernel of one row of :func:`fold_scales` over its visible columns:
    ``kref = min k``, ``out_j = rnd((v_j * m_j) << guard / 2^(k_j - kref))`` (tie rule
    ``code``); returns kref.  ``out`` may be ``v``.  Bound: ``|v_j * m_j| << guard <= 2^62 -
    1``, checked by :func:`fold_scales` and proved for the graph's guards (``GUARD_*``)."""
    n = v.shape[0]
    kr = k[0]
    for j in range(1, n):
        kr = min(kr, k[j])
    for j in range(n):
        out[j] = rshift_round_nb((np.int64(v[j]) * m[j]) << guard, k[j] - kr, code)
    return kr


@njit(cache=True, parallel=True)
def _fold_nb(v, m, k, vis, guard, code, out, kref):
    """:func:`fold_row` over every row's visible columns (0 elsewhere, kref 0 for a row
    without any)."""
    R, n = v.shape
    for r in prange(R):
        bv = np.empty(n, dtype=np.int64)
        bm = np.empty(n, dtype=np.int64)
        bk = np.empty(n, dtype=np.int64)
        c = gather_visible(v[r], vis[r], bv)
        gather_visible(m[r], vis[r], bm)
        gather_visible(k[r], vis[r], bk)
        kref[r] = fold_row(bv[:c], bm[:c], bk[:c], guard, code, bv[:c]) if c else 0
        scatter_visible(bv, vis[r], out[r])


def fold_scales(vals: np.ndarray, m: np.ndarray, k: np.ndarray, guard: int, visible=None,
                spec: Spec = DEFAULT_SPEC, backend: str = "numba",
                name: str = "vals") -> tuple[np.ndarray, Dyadic]:
    """Fold per-column scales ``m_j * 2^-k_j`` into the integers of each row (module doc).

    ``vals``: integers (..., n); ``m`` (>= 0), ``k``: integers broadcastable to vals;
    ``visible``: bool broadcastable to vals (True = the column takes part) or None;
    ``guard``: 0..62.  Returns ``(out_i64, Dyadic(1, kref + guard))`` with one scale per
    row.  A row with no visible column gives zeros and kref = 0.
    Tie rule: ``spec.rounding``.  Bound ``|vals * m| <= 2^(62 - guard) - 1`` is checked.
    """
    _check_backend(backend)
    check_int_array(name, vals)
    guard = check_int("guard", guard, 0, 62)
    if vals.ndim < 1 or vals.shape[-1] == 0:
        raise IntsimError(f"{name}: needs a non-empty last axis, got shape {vals.shape}")
    try:
        m64 = np.broadcast_to(np.asarray(m, dtype=np.int64), vals.shape)
        k64 = np.broadcast_to(np.asarray(k, dtype=np.int64), vals.shape)
        vis = (np.ones(vals.shape, np.bool_) if visible is None else
               np.broadcast_to(np.asarray(visible, dtype=np.bool_), vals.shape))
    except ValueError:
        raise IntsimError(f"{name}: scales or mask do not broadcast to shape {vals.shape}") from None
    v64 = vals.astype(np.int64, copy=False)
    if m64.size:
        if int(m64.min()) < 0:
            raise IntsimError(f"{name}: scale mantissas must be >= 0")
        lim = ((ABS_LIMIT + 1) >> guard) - 1
        vmax, mmax = int(np.abs(v64).max()), int(m64.max())
        if vmax * mmax > lim:
            raise IntsimOverflowError(f"{name}: |vals| * m = {vmax * mmax} exceeds 2^(62 - guard) - 1 "
                                      f"with guard {guard}")
    code = rounding_code(spec.rounding)
    rows = vals.shape[:-1]
    if backend == "reference":
        out, kref = _fold_ref(v64, m64, k64, vis, guard, code)
    else:
        n = vals.shape[-1]
        v2 = np.ascontiguousarray(v64).reshape(-1, n)
        out = np.empty_like(v2)
        kref = np.empty(v2.shape[0], dtype=np.int64)
        kernel(backend, _fold_nb, "fold")(v2, np.ascontiguousarray(m64).reshape(-1, n), np.ascontiguousarray(k64).reshape(-1, n),
                 np.ascontiguousarray(vis).reshape(-1, n), guard, code, out, kref)
        out, kref = out.reshape(vals.shape), kref.reshape(rows)
    return out, Dyadic(np.ones(rows, dtype=np.int64), kref + guard)


@njit(cache=True)
def score_scales(qm, qk, inv_m, inv_k, code, sm, sk):
    """The Numba form of the scores' row scale ``llama.mul_scales(s_q, 1/sqrt(hd))`` for
    query scales ``qm, qk`` [T, H] into ``sm, sk`` [H, T]: the mantissa products, or, when
    one exceeds 2^28 (the requantizer's input bound), every row refitted to 28 bits
    (``dyadic_fit``, tie rule ``code``)."""
    T, H = qm.shape
    mmax = np.int64(0)
    for t in range(T):
        for h in range(H):
            mmax = max(mmax, qm[t, h] * inv_m)
    for t in range(T):
        for h in range(H):
            m = qm[t, h] * inv_m
            k = qk[t, h] + inv_k
            if mmax > M_IN_LIMIT:
                mf, kf, _ = dyadic_fit_nb(m, np.int64(1), 28, np.int64(-(2 ** 20)),
                                          np.int64(2 ** 20), code)
                m = mf
                k += kf
            sm[h, t] = m
            sk[h, t] = k


# ------------------------------------------------------------ attention matmuls

def _kv_per_query_head_ref(x: np.ndarray, rep: int) -> np.ndarray:
    """Keys or values [S, Hkv, hd] as the H = Hkv * rep query heads read them, int64
    [S, H, hd]: query head h reads kv head h // rep (grouped-query attention; one named
    site, so that intsim.mutants can swap the head mapping of the reference)."""
    return np.repeat(x.astype(np.int64), rep, axis=1)


def _groups(H: int, Hkv: int) -> int:
    if Hkv < 1 or H % Hkv:
        raise IntsimError(f"heads: {H} query heads are not a multiple of {Hkv} kv heads")
    return H // Hkv


def _check_operands(backend, a_name, a, b_name, b):
    """Both operands of an attention matmul: 3-d integer arrays within int16 (the kernel
    reads int16 codes)."""
    _check_backend(backend)
    for name, x in ((a_name, a), (b_name, b)):
        check_int_array(name, x, ndim=3)
        check_range(name, x, -I16_MAX, I16_MAX)


def _bound(name, n, a, b):
    amax = int(np.abs(a).max()) if a.size else 0
    bmax = int(np.abs(b).max()) if b.size else 0
    if n * amax * bmax > I32_MAX:
        raise IntsimOverflowError(f"{name}: {n} * {amax} * {bmax} exceeds the int32 accumulator "
                                  f"(2^31 - 1)")


def pv_max_context(a_bits: int, p_bits: int) -> int:
    """The longest context S whose PV int32 sums are bounded for every input: probability
    codes of ``p_bits`` (``Widths.pv_in_bits``) against A-bit value codes,
    ``S (2^P - 1)(2^A - 1) <= 2^31 - 1`` (docs/SPEC.md section 14.2; the fused paths decline a
    longer context, ``intsim.fastmodel``)."""
    return I32_MAX // ((2 ** a_bits - 1) * (2 ** p_bits - 1))


def _pv_bound(S: int, pc, vc) -> None:
    """PV's int32 bound over the operands' own maxima, ``S max|pc| max|vc| <= 2^31 - 1``
    (one named site, so that intsim.mutants can swap the bound PV is checked against)."""
    _bound("p @ v", S, pc, vc)


@njit(cache=True)
def qk_row(Q, t, h, zq, K, g, lo, n, kz, ksum, tiled, s8, raw, out):
    """The Numba kernel of one query row of the scores: ``out[jj] = sum_d (Q[t, h, d] - zq)
    (K[lo + jj, g, d] - kz[jj])`` for jj < n, exact int64.

    The raw sums ``raw[jj] = sum_d Q[t, h, d] K[lo + jj, g, d]`` run in the vector tile
    (``tiled``: hd % 16 == 0; 1 x 8 tiles over the keys, ``s8`` an int32 scratch of 8)
    or a scalar loop, int32: every
    partial sum is bounded by the caller's checked ``hd max|Q| max|K| <= 2^31 - 1``.  The
    zero points enter after: ``sum (q - zq)(k - zk) = raw - zk sum q - zq sum k + hd zq zk``
    with ``ksum[jj] = sum_d K[lo + jj, g, d]`` (exact in int64).
    """
    H, hd = Q.shape[1], Q.shape[2]
    Hkv = K.shape[1]
    sq = np.int64(0)
    for d in range(hd):
        sq += Q[t, h, d]
    if tiled:
        xoff = (t * H + h) * hd
        jj = 0
        while jj + 8 <= n:
            dot_tile_flat(Q, xoff, 0, K, ((lo + jj) * Hkv + g) * hd, VEC, Hkv * hd, hd // VEC,
                          s8, 1, 8)
            for c in range(8):
                raw[jj + c] = s8[c]
            jj += 8
        while jj < n:
            dot_tile_flat(Q, xoff, 0, K, ((lo + jj) * Hkv + g) * hd, VEC, 0, hd // VEC, s8, 1, 1)
            raw[jj] = s8[0]
            jj += 1
    else:
        for jj in range(n):
            a32 = np.int32(0)
            for d in range(hd):
                a32 += np.int32(Q[t, h, d]) * np.int32(K[lo + jj, g, d])
            raw[jj] = a32
    c0 = hd * zq
    for jj in range(n):
        out[jj] = np.int64(raw[jj]) - kz[jj] * sq - zq * ksum[jj] + c0 * kz[jj]


@njit(cache=True, parallel=True)
def _qk_nb(qc, kc, rep, tiled, out):
    """:func:`qk_row` for every (head, query) over all keys (centered codes: zero points 0)."""
    T, H, hd = qc.shape
    S = kc.shape[0]
    zeros = np.zeros(S, dtype=np.int64)
    for h in prange(H):
        raw = np.empty(S, dtype=np.int32)
        s8 = np.empty(8, dtype=np.int32)
        for i in range(T):
            qk_row(qc, i, h, np.int64(0), kc, h // rep, 0, S, zeros, zeros, tiled, s8, raw, out[h, i])


def qk_scores(qc: np.ndarray, kc: np.ndarray, backend: str = "numba") -> np.ndarray:
    """``acc[h, i, j] = sum_d qc[i, h, d] * kc[j, h // rep, d]``: int32 accumulators, exact.

    ``qc``: centered query codes [T, H, hd]; ``kc``: centered key codes [S, Hkv, hd]
    (``q - zp`` per (token, head)), each within [-(2^15 - 1), 2^15 - 1] (checked);
    returned as int64 [H, T, S].
    Bound: ``hd * max|qc| * max|kc| <= 2^31 - 1`` (checked; hd <= 33025 at A = 8).
    """
    _check_operands(backend, "qc", qc, "kc", kc)
    T, H, hd = qc.shape
    S, Hkv, hd2 = kc.shape
    if hd2 != hd:
        raise IntsimError(f"kc: head_dim {hd2} != qc head_dim {hd}")
    rep = _groups(H, Hkv)
    _bound("q @ k", hd, qc, kc)
    if backend == "reference":
        kx = _kv_per_query_head_ref(kc, rep)                          # [S, H, hd]
        return np.einsum("ihd,jhd->hij", qc.astype(np.int64), kx)
    out = np.empty((H, T, S), dtype=np.int64)
    kernel(backend, _qk_nb, "qk")(np.ascontiguousarray(qc, dtype=np.int16), np.ascontiguousarray(kc, dtype=np.int16), rep,
           hd % VEC == 0, out)
    return out


@njit(cache=True)
def pv_row(p, zp, VT, g, lo, n, vz, tiled, s8, out):
    """The Numba kernel of one (query, head) row of PV: ``out[d] = sum_{jj < n} (p[jj] - zp)
    (VT[g, d, lo + jj] - vz[jj])``, exact int64, over the values transposed per kv head
    (``VT[g, d, j]`` = value d of head g at position j).

    ``tiled`` (hd % 16 == 0, and zp == 0 as every probability row has): the raw sums
    ``sum p VT`` run in 1 x 8 vector tiles over ``ceil(n / 16)`` steps, so ``p`` must hold
    zeros at [n, n + 16) and VT readable columns up to lo + n + 16 (``VT_PAD``); int32,
    bounded by the caller's checked ``n max|p| max|v| <= 2^31 - 1``; then ``- sum p vz``
    (``s8``: an int32 scratch of 8).
    """
    hd = VT.shape[1]
    if tiled and zp == 0:
        corr = np.int64(0)
        for jj in range(n):
            corr += np.int64(p[jj]) * np.int64(vz[jj])
        Sp = VT.shape[2]
        nst = (n + VEC - 1) // VEC
        for d0 in range(0, hd, 8):
            dot_tile_flat(p, 0, 0, VT, (g * hd + d0) * Sp + lo, VEC, Sp, nst, s8, 1, 8)
            for c in range(8):
                out[d0 + c] = np.int64(s8[c]) - corr
        return
    for d in range(hd):
        o = np.int64(0)
        for jj in range(n):
            o += (np.int64(p[jj]) - zp) * (np.int64(VT[g, d, lo + jj]) - np.int64(vz[jj]))
        out[d] = o


@njit(cache=True, parallel=True)
def _pv_nb(pc, VT, rep, tiled, out):
    """:func:`pv_row` for every (head, query) over all positions (centered codes)."""
    H, T, S = pc.shape
    zeros = np.zeros(S, dtype=np.int64)
    for h in prange(H):
        pb = np.zeros(S + VT_PAD, dtype=pc.dtype)
        s8 = np.empty(8, dtype=np.int32)
        for i in range(T):
            pb[:S] = pc[h, i]
            pv_row(pb, np.int64(0), VT, h // rep, 0, S, zeros, tiled, s8, out[i, h])


def pv(pc: np.ndarray, vc: np.ndarray, backend: str = "numba") -> np.ndarray:
    """``out[i, h, d] = sum_j pc[h, i, j] * vc[j, h // rep, d]``: int32 accumulators, exact.

    ``pc``: centered probability codes [H, T, S]; ``vc``: centered value codes
    [S, Hkv, hd], each within [-(2^15 - 1), 2^15 - 1] (checked); returned as int64 [T, H, hd].
    Bound: ``S * max|pc| * max|vc| <= 2^31 - 1`` (checked; for every input at P-bit
    probabilities and A-bit values S <= :func:`pv_max_context`: 33025 at A = P = 8).
    """
    _check_operands(backend, "pc", pc, "vc", vc)
    H, T, S = pc.shape
    S2, Hkv, hd = vc.shape
    if S2 != S:
        raise IntsimError(f"vc: {S2} positions != probabilities' {S}")
    rep = _groups(H, Hkv)
    _pv_bound(S, pc, vc)
    if backend == "reference":
        vx = _kv_per_query_head_ref(vc, rep)                          # [S, H, hd]
        return np.einsum("hij,jhd->ihd", pc.astype(np.int64), vx)
    out = np.empty((T, H, hd), dtype=np.int64)
    VT = np.zeros((Hkv, hd, S + VT_PAD), dtype=np.int16)
    VT[:, :, :S] = vc.transpose(1, 2, 0)
    kernel(backend, _pv_nb, "pv")(np.ascontiguousarray(pc, dtype=np.int16), VT, rep, hd % VEC == 0, out)
    return out
