"""The fused forward on an NVIDIA GPU (``--backend cuda``): the graph's integers, bit for bit.

The CPU fused path (intsim.fastpath) runs each stage of a layer as a loop over token rows
calling one stage-row function (``_norm_quant_row``, ``_qkv_row``, ``_attn_row``,
``_heads_quant_row``, ``_resid_norm_row``, ``_swiglu_quant_row``), and those call the
operators' own row kernels (``requant_row``, ``norm_row``, ``rope_head``, ``qk_row``,
``fold_row``, ``softmax_row``, ``pv_row``, ``align_row``, ``swiglu_row``).  Here every
stage is a CUDA kernel that runs the SAME stage-row function, compiled by Numba for the
GPU: one thread per token row (per (token, head) for attention), its scratch rows slices
of device arrays.  So no operator's arithmetic is restated for the GPU: each rounding is
the operator's own, under its named tie rule; the attention sums take their scalar form
(``tiled=False``: the CPU's vector tile is x86 IR).  DI-MatMul's integer core runs one
warp per output (``cudaops._k_matmul``), its group fold the shared ``gemm.fold_group``.

Orchestration (this module): the model's weights go to the device once
(:class:`CudaModel`); the KV cache is mirrored on the device with the fused layouts
(:class:`_DeviceCache`), uploaded when another path wrote the cache (``KVCache.version``),
and each call copies the positions it wrote back into the host cache, so the host
``KVCache`` stays the one state every backend reads.  The layer loop runs on the host,
launching about 15 kernels a layer; the device buffers of a call are made once per (tokens,
positions rounded up to a power of two) and reused by later calls of that size.

Tested without a GPU under Numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``): there the
kernels run as Python and call the same compiled row functions, with the simulator's
array wrappers unwrapped (``intsim.cudaops.host_call``).  On the GPU machine the whole forward is
compared with the CPU backend (tests/test_cuda.py, ``scripts/cuda_check.py``).
"""
from __future__ import annotations

import numpy as np
from numba import cuda

from . import fastpath as fp
from .attention import score_scales
from .cudaops import _k_embed, grid as _grid, matmul_launch
from .cudaops import host_call as _host_call
from .fastmodel import side_get, side_put
from .qtensor import Dyadic

_norm_quant_row = _host_call(fp._norm_quant_row)
_qkv_row = _host_call(fp._qkv_row)
_attn_row = _host_call(fp._attn_row)
_heads_quant_row = _host_call(fp._heads_quant_row)
_resid_norm_row = _host_call(fp._resid_norm_row)
_swiglu_quant_row = _host_call(fp._swiglu_quant_row)
_score_scales = _host_call(score_scales)


# ------------------------------------------------------------------ kernels

@cuda.jit
def _k_norm_quant(h, preshift, cfg, a_bits, xq, zx, mx, kx, g, gk, has_weight, V, sats):
    t = cuda.grid(1)
    if t < h.shape[0]:
        sats[t] += _norm_quant_row(t, h, preshift, cfg, a_bits, xq, zx, None, None, mx, kx, g, gk,
                                   has_weight, V[t])


@cuda.jit
def _k_qkv(Pq, Pk, Pv, mx, kx, wk3, pos, cos_q, sin_q, cfg, past, Qh, zq, qm, qk, Kq, Kzp, Km,
           Kk, Vq, Vzp, Vm, Vk, kpar, VT, codes, y, sats):
    t = cuda.grid(1)
    if t < Pq.shape[0]:
        sats[t] += _qkv_row(t, Pq, Pk, Pv, mx, kx, wk3, pos, cos_q, sin_q, cfg, past, Qh, zq, qm,
                            qk, Kq, Kzp, Km, Kk, Vq, Vzp, Vm, Vk, kpar, VT, codes[t], y[t])


@cuda.jit
def _k_score_scales(qm, qk, inv_m, inv_k, code, sm, sk):
    if cuda.grid(1) == 0:                   # one decision over all rows (llama.mul_scales)
        _score_scales(qm, qk, inv_m, inv_k, code, sm, sk)


@cuda.jit
def _k_attn(Qh, zq, sm, sk, Kq, kpar, VT, Vm, Vk, Vzp, vlo, vhi, cfg, att, pm, pk, raw, sc, cq,
            pb, s8, sats):
    i = cuda.grid(1)
    H = Qh.shape[1]
    if i < Qh.shape[0] * H:
        t = i // H
        h = i - t * H
        sats[i] += _attn_row(t, h, Qh, zq, sm, sk, Kq, kpar, VT, Vm, Vk, Vzp, vlo[t], vhi[t], cfg,
                             False, att, pm, pk, raw[i], sc[i], cq[i], pb[i], s8[i])


@cuda.jit
def _k_heads(att, pm, pk, cfg, xq, zx, mx, kx, hm, hk, ao, sats):
    t = cuda.grid(1)
    if t < att.shape[0]:
        sats[t] += _heads_quant_row(t, att, pm, pk, cfg, xq, zx, None, None, mx, kx, hm[t], hk[t],
                                    ao[t])


@cuda.jit
def _k_resid_norm(P, mx, kx, wk, h, hm, hk, preshift, cfg, a_bits, xq, zx, g, gk, has_weight, ob,
                  sv, sats):
    t = cuda.grid(1)
    if t < h.shape[0]:
        sats[t] += _resid_norm_row(t, P, mx, kx, wk, h, hm, hk, preshift, cfg, a_bits, xq, zx, None, None,
                                   g, gk, has_weight, ob[t], sv[t])


@cuda.jit
def _k_swiglu(Pg, Pu, mx, kx, wkg, wku, mc, ka, unit, cfg, xq, zx, mxo, kxo, gb, ub, y, tab, sats):
    t = cuda.grid(1)
    if t < Pg.shape[0]:
        sats[t] += _swiglu_quant_row(t, Pg, Pu, mx, kx, wkg, wku, mc, ka, unit, cfg, xq, zx, None, None,
                                     mxo, kxo, gb[t], ub[t], y[t], tab[t])


# ------------------------------------------------------------------ host side

class CudaModel:
    """The model's arrays on the device (uploaded once), with the CPU fused path's
    constants (:class:`intsim.fastpath.FastModel`)."""

    def __init__(self, model, fm):
        up = cuda.to_device
        self.fm = fm
        self.layers = []
        for L in model.layers:
            ws = [L.wq, L.wk, L.wv, L.wo, L.w_gate, L.w_up, L.w_down]
            self.layers.append([(up(np.ascontiguousarray(w.q)), up(w.qsum), up(w.m), up(w.b),
                                 w.group_size, w.k) for w in ws])
        w = model.w_head
        self.head = (up(np.ascontiguousarray(w.q)), up(w.qsum), up(w.m), up(w.b), w.group_size, w.k)
        self.alpha = [up(fm.alpha[i]) for i in range(len(model.layers))]
        self.NW = [up(fm.NW[i]) for i in range(fm.NW.shape[0])]
        self.emb = (up(fm.emb_q), up(fm.emb_m), up(fm.emb_k))
        self.cos_q, self.sin_q = up(fm.cos_q), up(fm.sin_q)
        self.wk3 = [up(np.array([W[0][5], W[1][5], W[2][5]], dtype=np.int64)) for W in self.layers]
        self.pools: dict = {}                # (T, S capacity) -> _Buffers, reused across calls


_models: dict = {}
_caches: dict = {}


def _side(table: dict, obj, make):
    """A per-object value kept while ``obj`` lives, made by ``make()`` on first use (the
    fused path's side tables, :func:`intsim.fastmodel.side_get`)."""
    hit = side_get(table, obj)
    return hit if hit is not None else side_put(table, obj, make())


def prepare(model):
    """The model's :class:`CudaModel`, or the reason the GPU path declines it."""
    if not cuda.is_available():
        return "no CUDA device (numba.cuda.is_available() is False)"
    if model.widths.a_group is not None:
        return (f"a_group = {model.widths.a_group}: group-wise activations have no GPU twin "
                f"(docs/SPEC.md section 4.8)")
    fm = fp.prepare(model)
    if isinstance(fm, str):
        return fm
    return _side(_models, model, lambda: CudaModel(model, fm))


_CACHE_NAMES = ("k_q", "k_zp", "k_m", "k_k", "v_q", "v_zp", "v_m", "v_k")


class _DeviceCache:
    """The KV cache on the device: the eight arrays per layer and the fused layouts."""

    def __init__(self):
        self.arrays = None
        self.version = -1

    def sync(self, cache, c):
        if self.version == cache.version and self.arrays is not None:
            return self.arrays
        d = fp._Derived(cache, c)
        d.sync(cache)
        self.arrays = [tuple(cuda.to_device(getattr(cache, n)[li]) for n in _CACHE_NAMES)
                       + (cuda.to_device(d.k_par[li]), cuda.to_device(d.v_t[li]))
                       for li in range(c.n_layers)]
        self.version = cache.version
        return self.arrays

    def write_back(self, cache, lo, hi):
        """Positions [lo, hi) of the eight canonical arrays into the host cache."""
        for li, arrs in enumerate(self.arrays):
            for n, a in zip(_CACHE_NAMES, arrs):
                getattr(cache, n)[li][lo:hi] = a[lo:hi].copy_to_host()
        cache.version += 1                   # a write the CPU fused path must notice
        self.version = cache.version


class _Buffers:
    """Per-call device arrays: the stream, the quantized inputs, attention's per-head
    values and every kernel's scratch rows (one row per thread)."""

    def __init__(self, c, cfg, T, S, p_dtype):
        z = cuda.device_array
        H, hd, D, F = c.n_heads, c.head_dim, c.dim, c.ffn_dim
        self.h = z((T, D), np.int16)
        self.hm, self.hk = z(T, np.int64), z(T, np.int64)
        self.xq, self.zx = z((T, D), np.uint8), z(T, np.int64)
        self.mx, self.kx = z(T, np.int64), z(T, np.int64)
        self.Qh = z((T, H, hd), np.uint8)
        self.zq, self.qm, self.qk = z((T, H), np.int64), z((T, H), np.int64), z((T, H), np.int64)
        self.sm, self.sk = z((H, T), np.int64), z((H, T), np.int64)
        self.att = z((T, H * hd), np.int64)
        self.pm, self.pk = z((T, H), np.int64), z((T, H), np.int64)
        self.xo = z((T, H * hd), np.uint8)
        self.xf = z((T, F), np.uint8)
        self.sats = cuda.to_device(np.zeros(T * H, np.int64))
        # scratch rows
        self.v = z((T, D), np.int64)
        self.ob = z((T, D), np.int32)
        self.codes = z((T, max(H, c.n_kv_heads) * hd), np.int32)
        self.y = z((T, hd), np.int64)
        self.raw = z((T * H, S), np.int32)
        self.sc, self.cq = z((T * H, S), np.int64), z((T * H, S), np.int64)
        self.pb = z((T * H, S + fp.VEC), p_dtype)       # probability rows (FastModel.p_proto)
        self.s8 = z((T * H, 8), np.int32)
        self.hm3, self.hk3, self.ao = (z((T, H * hd), np.int64) for _ in range(3))
        self.gb, self.ub, self.yf = z((T, F), np.int32), z((T, F), np.int32), z((T, F), np.int64)
        self.tab = z((T, 1 << cfg.swiglu_in_bits), np.int64)
        self.out: dict = {}                 # DI-MatMul outputs and peaks by width

    def mm_out(self, key, n):
        """The (T, n) int64 output of the matmul ``key`` and a peaks array, kept for reuse."""
        hit = self.out.get(key)
        if hit is None:
            T = self.h.shape[0]
            hit = self.out[key] = (cuda.device_array((T, n), np.int64),
                                   cuda.device_array((T, n), np.int64))
        return hit


def _matmul(b, key, x, zx, w):
    """DI-MatMul steps 2-3 of one weight ``w`` (device tuple) on input codes x, into the
    reused output ``key`` of the call's buffers (returned)."""
    q, qsum, m, bb, G, _ = w
    out, peaks = b.mm_out(key, q.shape[0])              # peaks: the op's peak |acc|, unused here
    matmul_launch(x, zx, q, qsum, m, bb, G, out, peaks)
    return out


def _layer(cm, li, b, cfg, c, T, pos, vlo, vhi, past, C):
    """One decoder layer: the stages of ``fastpath._layer``, each a kernel."""
    fm = cm.fm
    W = cm.layers[li]
    g1 = _grid(T)
    Pq, Pk, Pv = (_matmul(b, key, b.xq, b.zx, W[j]) for j, key in enumerate(("q", "k", "v")))
    wk3 = cm.wk3[li]
    _k_qkv[g1](Pq, Pk, Pv, b.mx, b.kx, wk3, pos, cm.cos_q, cm.sin_q, cfg, past, b.Qh, b.zq, b.qm,
               b.qk, *C, b.codes, b.y, b.sats)
    _k_score_scales[1, 1](b.qm, b.qk, cfg.inv_sqrt_m, cfg.inv_sqrt_k, cfg.code, b.sm, b.sk)
    kq, kzp, km, kk, vq, vzp, vm, vk, kpar, vt = C
    _k_attn[_grid(T * c.n_heads)](b.Qh, b.zq, b.sm, b.sk, kq, kpar, vt, vm, vk, vzp, vlo, vhi, cfg,
                                  b.att, b.pm, b.pk, b.raw, b.sc, b.cq, b.pb, b.s8, b.sats)
    _k_heads[g1](b.att, b.pm, b.pk, cfg, b.xo, b.zx, b.mx, b.kx, b.hm3, b.hk3, b.ao, b.sats)
    Po = _matmul(b, "o", b.xo, b.zx, W[3])
    i = 2 * li + 1
    _k_resid_norm[g1](Po, b.mx, b.kx, W[3][5], b.h, b.hm, b.hk, cfg.preshift_res, cfg, cfg.a_bits, b.xq,
                      b.zx, cm.NW[i], fm.NK[i], fm.NU[i] == 0, b.ob, b.v, b.sats)
    Pg, Pu = _matmul(b, "gate", b.xq, b.zx, W[4]), _matmul(b, "up", b.xq, b.zx, W[5])
    _k_swiglu[g1](Pg, Pu, b.mx, b.kx, W[4][5], W[5][5], cm.alpha[li], fm.alpha_k[li], fm.alpha_unit[li],
                  cfg, b.xf, b.zx, b.mx, b.kx, b.gb, b.ub, b.yf, b.tab, b.sats)
    Pd = _matmul(b, "down", b.xf, b.zx, W[6])
    i = 2 * li + 2                  # after the last layer: the final norm, the head's input
    a_next = cfg.head_a_bits if li == c.n_layers - 1 else cfg.a_bits
    _k_resid_norm[g1](Pd, b.mx, b.kx, W[6][5], b.h, b.hm, b.hk, cfg.preshift_res, cfg, a_next, b.xq,
                      b.zx, cm.NW[i], fm.NK[i], fm.NU[i] == 0, b.ob, b.v, b.sats)


def _buffers(cm, c, cfg, T, S):
    """The call's device buffers: made for (T, S rounded up to a power of two) once and
    reused by later calls of that size (scratch rows only need >= S entries); the
    saturation counts are zeroed."""
    cap = 1 << max(S - 1, 1).bit_length()
    b = cm.pools.get((T, cap))
    if b is None:
        if len(cm.pools) >= 8:
            cm.pools.clear()
        b = cm.pools[(T, cap)] = _Buffers(c, cfg, T, cap, cm.fm.p_proto.dtype)
        b.zeros = np.zeros(b.sats.shape[0], np.int64)
    b.sats.copy_to_device(b.zeros)
    return b


def forward_cuda(model, ids: np.ndarray, pos: np.ndarray, visible: np.ndarray, cache):
    """The fused forward on the GPU (arguments validated by the runner): ``(logits, Dyadic)``
    with the cache advanced, or a string saying why the CPU must run instead."""
    cm = prepare(model)
    if isinstance(cm, str):
        return cm
    fm, c = cm.fm, model.config
    T, past = ids.size, cache.length
    if past + T > fm.max_context:
        return f"{past + T} positions exceed the PV int32 bound ({fm.max_context})"
    why = fp._checked_cache(cache, c)
    if isinstance(why, str):
        return why
    rng = fp.visible_ranges(visible)
    if rng is None:
        return "a row's visible positions are not one contiguous range"
    cfg = fm.cfg._replace(parallel=False, gemv_parallel=False)
    dc = _side(_caches, cache, _DeviceCache)
    C = dc.sync(cache, c)
    b = _buffers(cm, c, cfg, T, int(rng[1].max()))
    ids_d, pos_d = cuda.to_device(np.ascontiguousarray(ids, np.int64)), cuda.to_device(np.ascontiguousarray(pos, np.int64))
    vlo, vhi = cuda.to_device(rng[0]), cuda.to_device(rng[1])
    g1 = _grid(T)
    _k_embed[g1](ids_d, *cm.emb, b.h, b.hm, b.hk)
    _k_norm_quant[g1](b.h, cfg.preshift_emb, cfg, cfg.a_bits, b.xq, b.zx, b.mx, b.kx, cm.NW[0], fm.NK[0],
                      fm.NU[0] == 0, b.v, b.sats)
    for li in range(c.n_layers):
        _layer(cm, li, b, cfg, c, T, pos_d, vlo, vhi, past, C[li])
    logits = _matmul(b, "head", b.xq, b.zx, cm.head)
    sat = int(b.sats.copy_to_host().sum())
    if sat and fm.spec.overflow == "raise":
        dc.version = -1                      # the device cache holds positions the CPU redoes
        return "a scale saturated under overflow='raise' (the graph raises, naming the op)"
    dc.write_back(cache, past, past + T)
    cache.length += T
    return logits.copy_to_host(), Dyadic(b.mx.copy_to_host(), b.kx.copy_to_host() + cm.head[5])
