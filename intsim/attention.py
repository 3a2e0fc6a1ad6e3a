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
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from .errors import IntsimError, IntsimOverflowError, check_int, check_int_array, check_range
from .fixedpoint import (ABS_LIMIT, _check_backend, _rshift_round_ref, rounding_code,
                         rshift_round_nb)
from .options import DEFAULT_SPEC, Spec
from .qtensor import Dyadic

I32_MAX = 2 ** 31 - 1
I16_MAX = 2 ** 15 - 1


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


@njit(cache=True, parallel=True)
def _fold_nb(v, m, k, vis, guard, code, out, kref):
    R, n = v.shape
    for r in prange(R):
        kr = np.int64(2 ** 62)
        for j in range(n):
            if vis[r, j] and k[r, j] < kr:
                kr = k[r, j]
        if kr == np.int64(2 ** 62):
            kr = 0
        kref[r] = kr
        for j in range(n):
            if vis[r, j]:
                out[r, j] = rshift_round_nb((v[r, j] * m[r, j]) << guard, k[r, j] - kr, code)
            else:
                out[r, j] = 0


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
        _fold_nb(v2, np.ascontiguousarray(m64).reshape(-1, n), np.ascontiguousarray(k64).reshape(-1, n),
                 np.ascontiguousarray(vis).reshape(-1, n), guard, code, out, kref)
        out, kref = out.reshape(vals.shape), kref.reshape(rows)
    return out, Dyadic(np.ones(rows, dtype=np.int64), kref + guard)


# ------------------------------------------------------------ attention matmuls

def _groups(H: int, Hkv: int) -> int:
    if Hkv < 1 or H % Hkv:
        raise IntsimError(f"heads: {H} query heads are not a multiple of {Hkv} kv heads")
    return H // Hkv


def _bound(name, n, a, b):
    amax = int(np.abs(a).max()) if a.size else 0
    bmax = int(np.abs(b).max()) if b.size else 0
    if n * amax * bmax > I32_MAX:
        raise IntsimOverflowError(f"{name}: {n} * {amax} * {bmax} exceeds the int32 accumulator "
                                  f"(2^31 - 1)")


@njit(cache=True, parallel=True)
def _qk_nb(qc, kc, rep, out):
    T, H, hd = qc.shape
    S = kc.shape[0]
    for h in prange(H):
        g = h // rep
        for i in range(T):
            for j in range(S):
                acc = np.int32(0)
                for d in range(hd):
                    acc += np.int32(qc[i, h, d]) * np.int32(kc[j, g, d])
                out[h, i, j] = acc


def qk_scores(qc: np.ndarray, kc: np.ndarray, backend: str = "numba") -> np.ndarray:
    """``acc[h, i, j] = sum_d qc[i, h, d] * kc[j, h // rep, d]``: int32 accumulators, exact.

    ``qc``: centered query codes [T, H, hd]; ``kc``: centered key codes [S, Hkv, hd]
    (``q - zp`` per (token, head)), each within [-(2^15 - 1), 2^15 - 1] (checked);
    returned as int64 [H, T, S].
    Bound: ``hd * max|qc| * max|kc| <= 2^31 - 1`` (checked; hd <= 33025 at A = 8).
    """
    _check_backend(backend)
    check_int_array("qc", qc, ndim=3)
    check_int_array("kc", kc, ndim=3)
    T, H, hd = qc.shape
    S, Hkv, hd2 = kc.shape
    if hd2 != hd:
        raise IntsimError(f"kc: head_dim {hd2} != qc head_dim {hd}")
    rep = _groups(H, Hkv)
    check_range("qc", qc, -I16_MAX, I16_MAX)     # the kernel reads int16 codes
    check_range("kc", kc, -I16_MAX, I16_MAX)
    _bound("q @ k", hd, qc, kc)
    if backend == "reference":
        kx = np.repeat(kc.astype(np.int64), rep, axis=1)          # [S, H, hd]
        return np.einsum("ihd,jhd->hij", qc.astype(np.int64), kx)
    out = np.empty((H, T, S), dtype=np.int32)
    _qk_nb(np.ascontiguousarray(qc, dtype=np.int16), np.ascontiguousarray(kc, dtype=np.int16), rep, out)
    return out.astype(np.int64)


@njit(cache=True, parallel=True)
def _pv_nb(pc, vc, rep, out):
    H, T, S = pc.shape
    hd = vc.shape[2]
    for h in prange(H):
        g = h // rep
        for i in range(T):
            acc = np.zeros(hd, dtype=np.int32)
            for j in range(S):
                p = np.int32(pc[h, i, j])
                if p != 0:
                    for d in range(hd):
                        acc[d] += p * np.int32(vc[j, g, d])
            for d in range(hd):
                out[i, h, d] = acc[d]


def pv(pc: np.ndarray, vc: np.ndarray, backend: str = "numba") -> np.ndarray:
    """``out[i, h, d] = sum_j pc[h, i, j] * vc[j, h // rep, d]``: int32 accumulators, exact.

    ``pc``: centered probability codes [H, T, S]; ``vc``: centered value codes
    [S, Hkv, hd], each within [-(2^15 - 1), 2^15 - 1] (checked); returned as int64 [T, H, hd].
    Bound: ``S * max|pc| * max|vc| <= 2^31 - 1`` (checked; S <= 33025 at A = 8).
    """
    _check_backend(backend)
    check_int_array("pc", pc, ndim=3)
    check_int_array("vc", vc, ndim=3)
    H, T, S = pc.shape
    S2, Hkv, hd = vc.shape
    if S2 != S:
        raise IntsimError(f"vc: {S2} positions != probabilities' {S}")
    rep = _groups(H, Hkv)
    check_range("pc", pc, -I16_MAX, I16_MAX)     # the kernel reads int16 codes
    check_range("vc", vc, -I16_MAX, I16_MAX)
    _bound("p @ v", S, pc, vc)
    if backend == "reference":
        vx = np.repeat(vc.astype(np.int64), rep, axis=1)          # [S, H, hd]
        return np.einsum("hij,jhd->ihd", pc.astype(np.int64), vx)
    out = np.empty((T, H, hd), dtype=np.int32)
    _pv_nb(np.ascontiguousarray(pc, dtype=np.int16), np.ascontiguousarray(vc, dtype=np.int16), rep, out)
    return out.astype(np.int64)
