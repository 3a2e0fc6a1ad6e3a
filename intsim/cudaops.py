"""The operators' whole-tensor functions on an NVIDIA GPU (``backend="cuda"``).

Each operator's public function runs its Numba kernel over the rows of a tensor (a loop,
or ``prange``).  With ``backend="cuda"`` it calls the twin here instead: a CUDA kernel
with one thread per row that calls the SAME row kernel (``requant_row``, ``norm_row``,
``rope_head``, ``align_row``, ``swiglu_row``, ``softmax_row``, ``fold_row``, ``qk_row``,
``pv_row``, DI-Exp's element step, DI-MatMul's ``fold_group``), compiled by Numba for
the GPU.  Each twin has its CPU driver's signature and results, so the op code around it
(argument checks, scales, errors) is the same for both, and the graph, with a tap, runs
op by op on the GPU: the golden export (``intsim golden --backend cuda``) records the
same integers as on the CPU.

Arrays move to and from the device per call (NumPy arrays as kernel arguments): simple,
and slow for whole models; the fused GPU forward (intsim.cudapath) keeps them on the
device.  Under Numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``) the kernels run as
Python and call the compiled row functions with the simulator's array wrappers unwrapped
(:func:`host_call`).
"""
from __future__ import annotations

import numpy as np
from numba import config as numba_config
from numba import cuda, int32, int64, njit

SIMULATED = bool(numba_config.ENABLE_CUDASIM)
# threads per block of the row kernels; under the simulator, which starts a Python thread
# for each, 8 (a block's idle threads are most of its cost there)
TPB = 8 if SIMULATED else 64


def available() -> bool:
    """A GPU Numba can use (or the simulator)."""
    return SIMULATED or cuda.is_available()


def require() -> None:
    """Refuse ``backend="cuda"`` with one clear error where no GPU can be used."""
    if not available():
        from .errors import IntsimError
        raise IntsimError("backend: 'cuda' needs an NVIDIA GPU that Numba can use "
                          "(numba.cuda.is_available() is False); use 'numba'")


def host_call(fn):
    """Under the simulator, kernels are Python and hand the row functions the simulator's
    array wrappers; unwrap them to the NumPy arrays the compiled functions take."""
    if not SIMULATED:
        return fn
    from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray

    def unwrap(a):
        inner = a.__dict__.get("_item") if hasattr(a, "__dict__") else None
        if inner is not None:
            return inner._ary
        return a._ary if isinstance(a, FakeCUDAArray) else a

    def call(*args):
        return fn(*[unwrap(a) for a in args])
    return call


def grid(n: int) -> tuple:
    return (max(1, -(-n // TPB)), TPB)


# absolute imports: the float scan (tests/test_no_float.py) flags a module named "exp"
from intsim.exp import exp_apply_nb, exp_recip_nb, exp_unit_nb  # noqa: E402
from .attention import fold_row, pv_row, qk_row  # noqa: E402
from .gemm import fold_group  # noqa: E402
from .norm import norm_row, norm_weight_row  # noqa: E402
from .qtensor import gather_visible, scatter_visible  # noqa: E402
from .requant import requant_row  # noqa: E402
from .residual import align_row  # noqa: E402
from .rope import rope_head  # noqa: E402
from .softmax import _clip_row, softmax_row  # noqa: E402
from .swiglu import swiglu_row  # noqa: E402

_requant_row, _norm_row, _norm_weight_row = host_call(requant_row), host_call(norm_row), host_call(norm_weight_row)
_rope_head, _align_row, _swiglu_row = host_call(rope_head), host_call(align_row), host_call(swiglu_row)
_softmax_row, _clip_row_h, _fold_row = host_call(softmax_row), host_call(_clip_row), host_call(fold_row)
_qk_row, _pv_row = host_call(qk_row), host_call(pv_row)
_gather, _scatter = host_call(gather_visible), host_call(scatter_visible)
_exp_unit, _exp_recip, _exp_apply = host_call(exp_unit_nb), host_call(exp_recip_nb), host_call(exp_apply_nb)


# ------------------------------------------------------------------ kernels (one thread per row)

@cuda.jit
def _k_requant(v, m_in, k_in, bits, symmetric, m_bits, k_lo, k_hi, code, fitted, q, zp, m, k, sat):
    i = cuda.grid(1)
    if i < v.shape[0]:
        zp[i], m[i], k[i], sat[i] = _requant_row(v[i], np.int64(0), m_in[i], k_in[i], bits, symmetric,
                                                 m_bits, k_lo, k_hi, code, fitted, q[i])


@cuda.jit
def _k_norm(q, zp, n_c, p2, p_fixed, m_bits, k_lo, k_hi, code, m, k, sat):
    i = cuda.grid(1)
    if i < q.shape[0]:
        m[i], k[i], sat[i] = _norm_row(q[i], np.int64(zp[i]), n_c, p2, p_fixed, m_bits, k_lo, k_hi, code)


@cuda.jit
def _k_norm_weight(q, zp, g, out):
    i = cuda.grid(1)
    if i < q.shape[0]:
        _norm_weight_row(q[i], np.int64(zp[i]), g, out[i])


@cuda.jit
def _k_rope(q, zp, pos, cos_q, sin_q, n_heads, head_dim, drop_bits, code, y):
    i = cuda.grid(1)
    if i < q.shape[0] * n_heads:
        t = i // n_heads
        base = (i - t * n_heads) * head_dim
        _rope_head(q[t], np.int64(zp[t]), pos[t], cos_q, sin_q, base, head_dim, drop_bits, code,
                   y[t, base:base + head_dim])


@cuda.jit
def _k_align(qa, za, ma, ka, qb, zb, mb, kb, code, s, K, rounded):
    i = cuda.grid(1)
    if i < qa.shape[0]:
        K[i], r = _align_row(qa[i], za[i], ma[i], ka[i], qb[i], zb[i], mb[i], kb[i], code, s[i])
        rounded[i] = 1 if r else 0


@cuda.jit
def _k_swiglu(gq, zg, mg, kg, uq, zu, mu, ku, mc, ka, unit_alpha, guard, B, rowmax, table_bits, code,
              tab, y, m_out, k_out):
    i = cuda.grid(1)
    if i < gq.shape[0]:
        m_out[i], k_out[i] = _swiglu_row(gq[i], zg[i], mg[i], kg[i], uq[i], zu[i], mu[i], ku[i], mc, ka,
                                         unit_alpha, guard, B, rowmax, table_bits, code, tab[i], y[i])


@cuda.jit
def _k_softmax(x, vis, m, k, clip, in_bits, F, p_max, recip, m_bits, k_lo, k_hi, code, fitted, buf,
               cq, p, sat):
    i = cuda.grid(1)
    if i < x.shape[0]:
        n = _gather(x[i], vis[i], buf[i])
        if n:
            sat[i] = _softmax_row(buf[i, :n], m[i], k[i], clip, in_bits, F, p_max, recip, m_bits,
                                  k_lo, k_hi, code, fitted, cq[i, :n], buf[i, :n])
        _scatter(buf[i], vis[i], p[i])


@cuda.jit
def _k_center_clip(x, vis, m, k, c, code, buf, xt):
    i = cuda.grid(1)
    if i < x.shape[0]:
        n = _gather(x[i], vis[i], buf[i])
        if n:
            _clip_row_h(buf[i, :n], m[i], k[i], c, code, buf[i, :n])
        _scatter(buf[i], vis[i], xt[i])


@cuda.jit
def _k_fold(v, m, k, vis, guard, code, bv, bm, bk, out, kref):
    i = cuda.grid(1)
    if i < v.shape[0]:
        c = _gather(v[i], vis[i], bv[i])
        _gather(m[i], vis[i], bm[i])
        _gather(k[i], vis[i], bk[i])
        kref[i] = _fold_row(bv[i, :c], bm[i, :c], bk[i, :c], guard, code, bv[i, :c]) if c else 0
        _scatter(bv[i], vis[i], out[i])


@cuda.jit
def _k_qk(qc, kc, rep, zeros, s8, raw, out):
    i = cuda.grid(1)
    H, T, S = out.shape
    if i < H * T:
        h = i // T
        t = i - h * T
        _qk_row(qc, t, h, np.int64(0), kc, h // rep, 0, S, zeros, zeros, False, s8[i], raw[i], out[h, t])


@cuda.jit
def _k_pv(pc, VT, rep, zeros, pb, s8, out):
    i = cuda.grid(1)
    H, T, S = pc.shape
    if i < H * T:
        h = i // T
        t = i - h * T
        for j in range(S):
            pb[i, j] = pc[h, t, j]
        _pv_row(pb[i], np.int64(0), VT, h // rep, 0, S, zeros, False, s8[i], out[t, h])


@cuda.jit
def _k_exp(x, m, k, code, out, T_out):
    i = cuda.grid(1)
    if i < x.shape[0]:
        T, j = _exp_unit(m[i], k[i], code)
        MT = _exp_recip(T)
        T_out[i] = T
        for c in range(x.shape[1]):
            out[i, c] = _exp_apply(x[i, c], T, j, MT, code)


WARPS = 4                                    # DI-MatMul: warps (outputs) per block
# lanes per output: a warp on the GPU; 2 under the simulator, which runs every thread as a
# Python thread (the kernel is written for any lane count, and 2 still takes both branches)
LANES = 2 if SIMULATED else 32


@cuda.jit
def _k_matmul(xq, zx, q, qsum, m, b, G, P, amax):
    """DI-MatMul steps 2-3, one warp (``LANES`` threads) per output (t, n), ``WARPS`` per block: each group's
    int32 sum of code products ``raw`` and its input-code sum, split over the lanes and added
    up through shared memory (a wrapping int32 sum and an int64 sum: exact in any order),
    folded by ``fold_group`` (int64) as ``gemm`` does with ``xs = sum x - G zx``; with the
    peak |acc| per output.  Groups of >= LANES codes: the lanes share each group and lane 0
    folds it; smaller groups: each lane takes whole groups and lane 0 adds the lanes' folds.
    Every thread of a block reaches each barrier: a warp past the last output computes a
    copy of the last one and writes nothing."""
    sr = cuda.shared.array((WARPS, LANES), int32)
    ss = cuda.shared.array((WARPS, LANES), int64)
    sp = cuda.shared.array((WARPS, LANES), int64)
    wi = cuda.threadIdx.x // LANES
    lane = cuda.threadIdx.x - wi * LANES
    w = cuda.blockIdx.x * WARPS + wi
    N, T, K = q.shape[0], xq.shape[0], xq.shape[1]
    t = w // N
    n = w - t * N
    live = t < T
    if not live:
        t, n = T - 1, N - 1
    z = zx[t]
    acc = int64(0)
    peak = int64(0)
    if G >= LANES:
        for g in range(K // G):
            raw = int32(0)
            sx = int64(0)
            for j in range(g * G + lane, g * G + G, LANES):
                x = xq[t, j]
                raw = int32(raw + int32(x) * int32(q[n, j]))
                sx += int64(x)
            sr[wi, lane] = raw
            ss[wi, lane] = sx
            cuda.syncthreads()
            if lane == 0:
                for i in range(1, LANES):
                    raw = int32(raw + sr[wi, i])
                    sx += ss[wi, i]
                peak = max(peak, abs(int64(raw) - z * qsum[n, g]))
                acc += fold_group(raw, z, qsum[n, g], m[n, g], b[n, g], sx - G * z)
            cuda.syncthreads()
    else:
        for g in range(lane, K // G, LANES):
            raw = int32(0)
            sx = int64(0)
            for j in range(g * G, g * G + G):
                x = xq[t, j]
                raw = int32(raw + int32(x) * int32(q[n, j]))
                sx += int64(x)
            peak = max(peak, abs(int64(raw) - z * qsum[n, g]))
            acc += fold_group(raw, z, qsum[n, g], m[n, g], b[n, g], sx - G * z)
        ss[wi, lane] = acc
        sp[wi, lane] = peak
        cuda.syncthreads()
        if lane == 0:
            for i in range(1, LANES):
                acc += ss[wi, i]
                peak = max(peak, sp[wi, i])
    if lane == 0 and live:
        P[t, n] = acc
        amax[t, n] = peak


def matmul_launch(xq, zx, q, qsum, m, b, G, P, amax):
    """Launch :func:`_k_matmul` over every output of P (device or host arrays)."""
    blocks = -(-(xq.shape[0] * q.shape[0]) // WARPS)
    if blocks:
        _k_matmul[blocks, WARPS * LANES](xq, zx, q, qsum, m, b, G, P, amax)


@njit(cache=True)
def _gather_row(ids, table_q, table_m, table_k, h, hm, hk, t):
    """Row t of the embedding gather (no arithmetic)."""
    r = ids[t]
    for j in range(h.shape[1]):
        h[t, j] = table_q[r, j]
    hm[t] = table_m[r]
    hk[t] = table_k[r]


_gather_row_h = host_call(_gather_row)


@cuda.jit
def _k_embed(ids, table_q, table_m, table_k, h, hm, hk):
    t = cuda.grid(1)
    if t < ids.shape[0]:
        _gather_row_h(ids, table_q, table_m, table_k, h, hm, hk, t)


# ------------------------------------------------------------------ twins of the CPU drivers
# Inputs go to the device as copies (``_d``), outputs come back into host arrays
# (``_back``): a host array passed straight to a kernel would be copied back after it,
# which fails for the read-only broadcast views the ops hand their drivers.

def _d(a):
    return cuda.to_device(np.ascontiguousarray(a))


def _back(dev, host=None):
    out = dev.copy_to_host()
    if host is not None:
        host[...] = out
    return out


def requant(v, m_in, k_in, bits, symmetric, m_bits, k_lo, k_hi, code, fitted, q):
    """Twin of ``requant._requant_nb``."""
    R = v.shape[0]
    zp, m, k, sat = (cuda.to_device(np.zeros(R, np.int64)) for _ in range(4))
    dq = _d(q)
    _k_requant[grid(R)](_d(v), _d(m_in), _d(k_in), bits, symmetric, m_bits, k_lo, k_hi, code, fitted,
                        dq, zp, m, k, sat)
    _back(dq, q)
    return _back(zp), _back(m), _back(k), int(_back(sat).sum())


def di_norm(q, zp, n_c, p2, p_fixed, m_bits, k_lo, k_hi, code):
    """Twin of ``norm._di_norm_nb``."""
    R = q.shape[0]
    m, k, sat = (cuda.to_device(np.zeros(R, np.int64)) for _ in range(3))
    _k_norm[grid(R)](_d(q), _d(zp), n_c, p2, p_fixed, m_bits, k_lo, k_hi, code, m, k, sat)
    return _back(m), _back(k), int(_back(sat).sum())


def norm_weight(q, zp, g, out):
    """Twin of ``norm._norm_weight_nb``."""
    d = _d(out)
    _k_norm_weight[grid(q.shape[0])](_d(q), _d(zp), _d(g), d)
    _back(d, out)


def rope(q, zp, pos, cos_q, sin_q, n_heads, head_dim, drop_bits, code):
    """Twin of ``rope._rope_nb``."""
    y = cuda.to_device(np.zeros((q.shape[0], n_heads * head_dim), np.int64))
    _k_rope[grid(q.shape[0] * n_heads)](_d(q), _d(zp), _d(pos), _d(cos_q), _d(sin_q), n_heads,
                                        head_dim, drop_bits, code, y)
    return _back(y)


def align(qa, za, ma, ka, qb, zb, mb, kb, code):
    """Twin of ``residual._align_nb``."""
    R = qa.shape[0]
    s = cuda.to_device(np.zeros(qa.shape, np.int64))
    K, rounded = cuda.to_device(np.zeros(R, np.int64)), cuda.to_device(np.zeros(R, np.int64))
    _k_align[grid(R)](_d(qa), _d(za), _d(ma), _d(ka), _d(qb), _d(zb), _d(mb), _d(kb), code, s, K, rounded)
    return _back(s), _back(K), int(_back(rounded).sum())


def swiglu(gq, zg, mg, kg, uq, zu, mu, ku, mc, ka, unit_alpha, guard, B, rowmax, table_bits, code, y,
           m_out, k_out):
    """Twin of ``swiglu._swiglu_nb``."""
    R = gq.shape[0]
    tab = cuda.to_device(np.zeros((R, 1 << int(table_bits)), np.int64))
    dy, dm, dk = _d(y), _d(m_out), _d(k_out)
    _k_swiglu[grid(R)](_d(gq), _d(zg), _d(mg), _d(kg), _d(uq), _d(zu), _d(mu), _d(ku), _d(mc), ka,
                       unit_alpha, guard, B, rowmax, table_bits, code, tab, dy, dm, dk)
    _back(dy, y), _back(dm, m_out), _back(dk, k_out)


def softmax(x, vis, m, k, clip, in_bits, F, p_max, recip, m_bits, k_lo, k_hi, code, fitted, p):
    """Twin of ``softmax._softmax_nb``."""
    R = x.shape[0]
    sat = cuda.to_device(np.zeros(R, np.int64))
    dp = _d(p)
    _k_softmax[grid(R)](_d(x), _d(vis), _d(m), _d(k), clip, in_bits, F, p_max, recip, m_bits, k_lo, k_hi,
                        code, fitted, cuda.to_device(np.zeros(x.shape, np.int64)),
                        cuda.to_device(np.zeros(x.shape, np.int64)), dp, sat)
    _back(dp, p)
    return int(_back(sat).sum())


def center_clip(x, vis, m, k, c, code, xt):
    """Twin of ``softmax._center_clip_nb``."""
    d = _d(xt)
    _k_center_clip[grid(x.shape[0])](_d(x), _d(vis), _d(m), _d(k), c, code,
                                     cuda.to_device(np.zeros(x.shape, np.int64)), d)
    _back(d, xt)


def fold(v, m, k, vis, guard, code, out, kref):
    """Twin of ``attention._fold_nb``."""
    z = [cuda.to_device(np.zeros(v.shape, np.int64)) for _ in range(3)]
    do, dk = _d(out), _d(kref)
    _k_fold[grid(v.shape[0])](_d(v), _d(m), _d(k), _d(vis), guard, code, z[0], z[1], z[2], do, dk)
    _back(do, out), _back(dk, kref)


def qk(qc, kc, rep, tiled, out):
    """Twin of ``attention._qk_nb`` (the scalar sums: ``tiled`` is the CPU's vector tile)."""
    H, T, S = out.shape
    d = _d(out)
    _k_qk[grid(H * T)](_d(qc), _d(kc), rep, _d(np.zeros(S, np.int64)), _d(np.zeros((H * T, 8), np.int32)),
                       _d(np.zeros((H * T, S), np.int32)), d)
    _back(d, out)


def pv(pc, VT, rep, tiled, out):
    """Twin of ``attention._pv_nb`` (scalar sums)."""
    H, T, S = pc.shape
    d = _d(out)
    _k_pv[grid(H * T)](_d(pc), _d(VT), rep, _d(np.zeros(S, np.int64)),
                       _d(np.zeros((H * T, VT.shape[2]), pc.dtype)), _d(np.zeros((H * T, 8), np.int32)), d)
    _back(d, out)


def di_exp(x, m, k, code, out, T):
    """Twin of ``exp._di_exp_nb``."""
    do, dT = _d(out), _d(T)
    _k_exp[grid(x.shape[0])](_d(x), _d(m), _d(k), code, do, dT)
    _back(do, out), _back(dT, T)


def gemm_acc(xq, zx, q, qsum, m, b, G, P):
    """Twin of ``gemm.gemm_acc_rows_par``: DI-MatMul steps 2-3, returns max |acc|."""
    amax = cuda.to_device(np.zeros(P.shape, np.int64))
    dP = _d(P)
    matmul_launch(_d(xq), _d(zx), _d(q), _d(qsum), _d(m), _d(b), G, dP, amax)
    _back(dP, P)
    peaks = _back(amax)
    return int(peaks.max()) if peaks.size else 0


def embed(ids, table_q, table_m, table_k):
    """Twin of ``embedding._embed_nb`` (a gather)."""
    n = ids.size
    q = cuda.to_device(np.zeros((n, table_q.shape[1]), table_q.dtype))
    m, k = cuda.to_device(np.zeros(n, np.int64)), cuda.to_device(np.zeros(n, np.int64))
    _k_embed[grid(n)](_d(ids), _d(table_q), _d(table_m.astype(np.int64)), _d(table_k.astype(np.int64)),
                      q, m, k)
    return _back(q), _back(m), _back(k)
