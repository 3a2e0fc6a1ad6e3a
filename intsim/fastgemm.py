"""Packed-weight DI-MatMul core for single token rows (decode): the same integers as
``intsim.matmul._di_acc_ref``, read from a weight copy laid out for one sequential stream.

Why a second layout: a GEMV reads every weight byte once, so it runs at the speed the
weights stream from memory.  In the row layout ``q[N, K]`` the 1 x 8 register tile of
``intsim.gemm`` reads eight rows K bytes apart at once; the packed layout puts, for each
block of ``PACK_N`` = 8 output channels and each step of 16 input features, the 8 x 16
codes next to each other:

    packed[((n // 8) * (K // 16) + j // 16) * 128 + (n % 8) * 16 + j % 16] = q[n, j]

so one tile reads one contiguous stream (measured on the 2-core Zen 3 host: 134 MB of
SmolLM2 weights in 8.6 ms against 15.5 ms for the row layout, single thread).  N is
padded with zero rows to a multiple of 8 (their outputs are never read).  The packed
form needs ``G % 16 == 0`` (a group is a whole number of 16-code steps); other group
sizes keep the row-layout kernel.

Several weights that read the same input (q, k and v; gate and up) are packed into ONE
matrix, their rows stacked: one pass over the input, one loop, the same integers per
output channel as separate calls (each channel's sum only involves its own row).

Exactness: every product is an 8-bit code pair formed in 32 bits; a group's tile sum is
``raw = sum_{j in g} x_q * q`` with ``0 <= raw <= acc_bound(G, A, W) <= 2^31 - 1``
(checked by ``matmul.check_bounds`` before any call, both codes >= 0), then exactly as
``_di_acc_nb``: ``acc = raw - zx * qsum`` (int64, the centered group sum) and
``P += m * acc + b * xs`` (int64, every partial sum bounded by ``matmul.p_bound``).
No rounding, so no tie rule.
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from .errors import IntsimError

#: output channels per packed block (the register tile of one token row)
PACK_N = 8
#: input features per vector step (16 codes widened to 16-bit lanes)
VEC = 16
#: packed blocks per parallel chunk of the multi-thread GEMV
_CHUNK_BLOCKS = 8

_I32 = ir.IntType(32)
_I64 = ir.IntType(64)


@intrinsic
def dot_tile_flat(typingctx, x, xoff, xrs, w, woff, wstep, wcs, nsteps, s, R, C):
    """``s[r*C + c] = sum_{i < nsteps} sum_{l < 16} x[xoff + r*xrs + 16i + l] *
    w[woff + i*wstep + c*wcs + l]`` in int32 (R, C compile-time constants).

    ``x``, ``w``: C-contiguous uint8/int8 arrays of any rank, addressed by flat element
    offsets (bytes); ``s``: int32 array with >= R*C elements.  The row layout of
    ``intsim.gemm`` is ``wstep = 16, wcs = K``; the packed layout ``wstep = 16*C,
    wcs = 16``.  No bounds checks: the callers guarantee the offsets.  Each step widens
    16 codes per operand to 32 bits, multiplies lane-wise and adds even and odd products
    into 8 lanes (x86 backends select ``vpmaddwd``); exact, as in ``gemm._dot_tile``.
    """
    if not (isinstance(R, types.IntegerLiteral) and isinstance(C, types.IntegerLiteral)):
        return None
    for a in (x, w):
        if not (isinstance(a, types.Array) and a.layout == "C"
                and a.dtype in (types.int8, types.uint8)):
            return None
    nr, nc = R.literal_value, C.literal_value
    sig = types.void(x, xoff, xrs, w, woff, wstep, wcs, nsteps, s, R, C)

    def codegen(context, builder, sig, args):
        xoff_v, xrs_v, woff_v, wstep_v, wcs_v, ns_v = [
            context.cast(builder, args[i], sig.args[i], types.int64) for i in (1, 2, 4, 5, 6, 7)]
        xarr = context.make_array(sig.args[0])(context, builder, args[0])
        warr = context.make_array(sig.args[3])(context, builder, args[3])
        sarr = context.make_array(sig.args[8])(context, builder, args[8])
        byte_p = ir.IntType(8).as_pointer()
        xb = builder.gep(builder.bitcast(xarr.data, byte_p), [xoff_v])
        wb = builder.gep(builder.bitcast(warr.data, byte_p), [woff_v])
        xrow = [builder.gep(xb, [builder.mul(xrs_v, _I64(r))]) for r in range(nr)]
        wcol = [builder.gep(wb, [builder.mul(wcs_v, _I64(c))]) for c in range(nc)]
        v16_i8 = ir.VectorType(ir.IntType(8), VEC)
        v16 = ir.VectorType(_I32, VEC)
        v8 = ir.VectorType(_I32, VEC // 2)
        zero8 = ir.Constant(v8, [0] * (VEC // 2))
        even = ir.Constant(v8, list(range(0, VEC, 2)))
        odd = ir.Constant(v8, list(range(1, VEC, 2)))
        x_signed = sig.args[0].dtype.signed
        w_signed = sig.args[3].dtype.signed

        entry = builder.basic_block
        loop = builder.append_basic_block("ftile_loop")
        done = builder.append_basic_block("ftile_done")
        builder.cbranch(builder.icmp_signed(">", ns_v, _I64(0)), loop, done)

        builder.position_at_end(loop)
        i = builder.phi(_I64)
        accs = [builder.phi(v8) for _ in range(nr * nc)]
        i.add_incoming(_I64(0), entry)
        for a in accs:
            a.add_incoming(zero8, entry)
        kx = builder.mul(i, _I64(VEC))
        kw = builder.mul(i, wstep_v)

        def load(base, k, signed):
            p = builder.bitcast(builder.gep(base, [k]), v16_i8.as_pointer())
            v = builder.load(p, align=1)
            return builder.sext(v, v16) if signed else builder.zext(v, v16)

        xv = [load(xrow[r], kx, x_signed) for r in range(nr)]
        wv = [load(wcol[c], kw, w_signed) for c in range(nc)]
        new = []
        for r in range(nr):
            for c in range(nc):
                p = builder.mul(xv[r], wv[c])             # |p| <= 255^2: exact in 32 bits
                pair = builder.add(builder.shuffle_vector(p, p, even),
                                   builder.shuffle_vector(p, p, odd))
                new.append(builder.add(accs[r * nc + c], pair))
        i_next = builder.add(i, _I64(1))
        i.add_incoming(i_next, loop)
        for a, v in zip(accs, new):
            a.add_incoming(v, loop)
        builder.cbranch(builder.icmp_signed("<", i_next, ns_v), loop, done)

        builder.position_at_end(done)
        finals = []
        for j in range(nr * nc):                          # all phis first (LLVM rule)
            ph = builder.phi(v8)
            ph.add_incoming(zero8, entry)
            ph.add_incoming(new[j], loop)
            finals.append(ph)
        if nc == 8:
            # eight accumulators -> one vector of their eight lane sums, by a pairwise
            # tree (sums of the same terms, int32, each bounded like the final sum):
            # ~10 vector ops instead of eight separate horizontal reductions
            def hadd(x, y):                   # per 128-bit half: x0+x1, x2+x3, y0+y1, y2+y3
                lo = ir.Constant(v8, [0, 2, 8, 10, 4, 6, 12, 14])
                hi = ir.Constant(v8, [1, 3, 9, 11, 5, 7, 13, 15])
                return builder.add(builder.shuffle_vector(x, y, lo),
                                   builder.shuffle_vector(x, y, hi))
            lo4 = ir.Constant(v8, [0, 1, 2, 3, 8, 9, 10, 11])
            hi4 = ir.Constant(v8, [4, 5, 6, 7, 12, 13, 14, 15])
            for r in range(nr):
                a = finals[r * 8:(r + 1) * 8]
                h = [hadd(a[0], a[1]), hadd(a[2], a[3]), hadd(a[4], a[5]), hadd(a[6], a[7])]
                q0, q1 = hadd(h[0], h[1]), hadd(h[2], h[3])
                tot = builder.add(builder.shuffle_vector(q0, q1, lo4),
                                  builder.shuffle_vector(q0, q1, hi4))
                dst = builder.bitcast(builder.gep(sarr.data, [_I64(r * 8)]), v8.as_pointer())
                builder.store(tot, dst, align=4)
            return context.get_dummy_value()
        reduce_add = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(_I32, [v8]), "llvm.vector.reduce.add.v8i32")
        for j, ph in enumerate(finals):
            builder.store(builder.call(reduce_add, [ph]), builder.gep(sarr.data, [_I64(j)]))
        return context.get_dummy_value()

    return sig, codegen


# ------------------------------------------------------------------ packing

class PackedWeight:
    """One or more ``QWeight`` s with equal K and group size, rows stacked and packed.

    ``wp``: uint8 [Np * K] packed codes (Np = N padded to a multiple of 8);
    ``qsum``, ``m``, ``b``: int64 [Np, K/G] (zero on the padding rows); ``N``: the real
    number of rows; ``offsets``: first row of each source weight; ``G``, ``K``.
    """

    def __init__(self, weights):
        K, G = weights[0].q.shape[1], weights[0].group_size
        for w in weights:
            if w.q.shape[1] != K or w.group_size != G:
                raise IntsimError("weights: packed weights need one K and one group size")
        if G % VEC:
            raise IntsimError(f"group_size: {G} is not a multiple of {VEC}")
        q = np.concatenate([w.q for w in weights], axis=0)
        N = q.shape[0]
        Np = -(-N // PACK_N) * PACK_N
        ng = K // G

        def pad(a, dtype):
            out = np.zeros((Np,) + a.shape[1:], dtype=dtype)
            out[:N] = a
            return out
        qp = pad(q, np.uint8)
        self.wp = np.ascontiguousarray(
            qp.reshape(Np // PACK_N, PACK_N, K // VEC, VEC).transpose(0, 2, 1, 3)).reshape(-1)
        self.qsum = pad(np.concatenate([w.qsum for w in weights]), np.int64)
        self.m = pad(np.concatenate([w.m for w in weights]), np.int64)
        self.b = pad(np.concatenate([w.b for w in weights]), np.int64)
        self.N, self.K, self.G, self.ng = N, K, G, ng
        self.offsets = np.cumsum([0] + [w.q.shape[0] for w in weights])


# ------------------------------------------------------------------ GEMV kernels

@njit(cache=True)
def _row_group_sums(xq, t, zx, G, xs):
    """``xs[g] = sum_{j in g} (x_q[t, j] - zx)`` (|xs| <= G (2^A - 1), int64)."""
    K = xq.shape[1]
    for g in range(K // G):
        sx = np.int64(0)
        for j in range(g * G, g * G + G):
            sx += np.int64(xq[t, j])
        xs[g] = sx - G * zx


@njit(cache=True, inline="always")
def _gemv_blocks(xq, t, zx, wp, qsum, m, b, G, xs, b_lo, b_hi, s, P):
    K = xq.shape[1]
    ng = K // G
    steps = G // VEC
    xbase = t * K
    for blk in range(b_lo, b_hi):
        n0 = blk * PACK_N
        base = blk * K * PACK_N
        for c in range(PACK_N):
            P[t, n0 + c] = 0
        for g in range(ng):
            dot_tile_flat(xq, xbase + g * G, 0, wp, base + g * G * PACK_N, VEC * PACK_N, VEC,
                          steps, s, 1, PACK_N)
            xsg = xs[g]
            for c in range(PACK_N):
                n = n0 + c
                acc = np.int64(s[c]) - zx * qsum[n, g]      # sum_{j in g} (x_q - zx) * q
                P[t, n] += m[n, g] * acc + b[n, g] * xsg


@njit(cache=True)
def gemv_acc_packed(xq, zx, wp, qsum, m, b, G, P):
    """DI-MatMul steps 2-3 on a packed weight, one token row at a time, single thread.

    ``xq``: uint8 [T, K] codes (C-contiguous), ``zx``: int64 [T]; ``wp``, ``qsum``,
    ``m``, ``b``: a :class:`PackedWeight`'s arrays; ``P``: int64 [T, Np] output (the
    padding columns receive 0).  Same integers as ``matmul._di_acc_ref``.
    """
    T, K = xq.shape
    nblk = qsum.shape[0] // PACK_N
    xs = np.empty(K // G, dtype=np.int64)
    s = np.empty(PACK_N, dtype=np.int32)
    for t in range(T):
        _row_group_sums(xq, t, zx[t], G, xs)
        _gemv_blocks(xq, t, zx[t], wp, qsum, m, b, G, xs, 0, nblk, s, P)


@njit(cache=True, parallel=True)
def gemv_acc_packed_par(xq, zx, wp, qsum, m, b, G, P):
    """:func:`gemv_acc_packed` with the blocks split over threads (same integers)."""
    T, K = xq.shape
    nblk = qsum.shape[0] // PACK_N
    nchunks = (nblk + _CHUNK_BLOCKS - 1) // _CHUNK_BLOCKS
    xs = np.empty((T, K // G), dtype=np.int64)
    for t in range(T):
        _row_group_sums(xq, t, zx[t], G, xs[t])
    for ci in prange(nchunks * T):
        t = ci // nchunks
        c0 = (ci % nchunks) * _CHUNK_BLOCKS
        s = np.empty(PACK_N, dtype=np.int32)
        _gemv_blocks(xq, t, zx[t], wp, qsum, m, b, G, xs[t], c0, min(nblk, c0 + _CHUNK_BLOCKS),
                     s, P)


# ------------------------------------------------------------------ GEMM (row layout)

#: register tile of the multi-row kernel (R token rows x C weight rows) and weight rows
#: per chunk (a multiple of 3 and of 8: 48 rows x K codes stay in L1/L2 while the token
#: rows stream past)
_GR, _GC, _GNC = 3, 3, 48


@njit(cache=True, inline="always")
def _gemm_tile(xq, zx, xs, q, qsum, m, b, G, t0, n0, R, C, s, P):
    """P[t0:t0+R, n0:n0+C] for all groups (R, C compile-time): tile sums, then the exact
    fold of ``_di_acc_nb`` (``acc = raw - zx qsum``, ``P += m acc + b xs``, int64)."""
    K = xq.shape[1]
    for r in range(R):
        for c in range(C):
            P[t0 + r, n0 + c] = 0
    for g in range(K // G):
        dot_tile_flat(xq, t0 * K + g * G, K, q, n0 * K + g * G, VEC, K, G // VEC, s, R, C)
        gu = np.uint64(g)
        for r in range(R):
            tu = np.uint64(t0 + r)       # unsigned indices: no negative-index wraparound code
            zt = zx[tu]
            xsg = xs[tu, gu]
            for c in range(C):
                n = np.uint64(n0 + c)
                acc = np.int64(s[r * C + c]) - zt * qsum[n, gu]
                P[tu, n] += m[n, gu] * acc + b[n, gu] * xsg


@njit(cache=True, inline="always")
def _raw_tile(xq, q, t0, n0, c0, R, C, s, raw):
    """One group-free tile: ``raw[t, n - c0] = sum_j x_q[t, j] q[n, j]`` (int32)."""
    K = xq.shape[1]
    dot_tile_flat(xq, t0 * K, K, q, n0 * K, VEC, K, K // VEC, s, R, C)
    for r in range(R):
        for c in range(C):
            raw[np.uint64(t0 + r), np.uint64(n0 - c0 + c)] = s[r * C + c]


@njit(cache=True)
def _gemm_chunk(xq, zx, xs, q, qsum, m, b, G, n_lo, n_hi, P):
    T, K = xq.shape
    s = np.empty(_GR * _GC + PACK_N, dtype=np.int32)
    if G == K:
        # one group (per-channel weights): the tiles write the raw int32 sums of the
        # chunk, then one pass folds them, P = m (raw - zx qsum) + b xs (int64; unsigned
        # indices, so the pass has no negative-index wraparound code and vectorizes)
        raw = np.empty((T, _GNC), dtype=np.int32)
        t0 = 0
        while t0 + _GR <= T:
            n0 = n_lo
            while n0 + _GC <= n_hi:
                _raw_tile(xq, q, t0, n0, n_lo, _GR, _GC, s, raw)
                n0 += _GC
            while n0 < n_hi:
                for r in range(_GR):
                    _raw_tile(xq, q, t0 + r, n0, n_lo, 1, 1, s, raw)
                n0 += 1
            t0 += _GR
        while t0 < T:
            n0 = n_lo
            while n0 + PACK_N <= n_hi:
                _raw_tile(xq, q, t0, n0, n_lo, 1, PACK_N, s, raw)
                n0 += PACK_N
            while n0 < n_hi:
                _raw_tile(xq, q, t0, n0, n_lo, 1, 1, s, raw)
                n0 += 1
            t0 += 1
        z = np.uint64(0)
        for t in range(T):
            tu = np.uint64(t)
            zt = zx[tu]
            xst = xs[tu, z]
            for c in range(n_hi - n_lo):
                n = np.uint64(n_lo + c)
                P[tu, n] = m[n, z] * (np.int64(raw[tu, np.uint64(c)]) - zt * qsum[n, z]) \
                    + b[n, z] * xst
        return
    t0 = 0
    while t0 + _GR <= T:
        n0 = n_lo
        while n0 + _GC <= n_hi:
            _gemm_tile(xq, zx, xs, q, qsum, m, b, G, t0, n0, _GR, _GC, s, P)
            n0 += _GC
        while n0 < n_hi:
            for r in range(_GR):
                _gemm_tile(xq, zx, xs, q, qsum, m, b, G, t0 + r, n0, 1, 1, s, P)
            n0 += 1
        t0 += _GR
    while t0 < T:
        n0 = n_lo
        while n0 + PACK_N <= n_hi:
            _gemm_tile(xq, zx, xs, q, qsum, m, b, G, t0, n0, 1, PACK_N, s, P)
            n0 += PACK_N
        while n0 < n_hi:
            _gemm_tile(xq, zx, xs, q, qsum, m, b, G, t0, n0, 1, 1, s, P)
            n0 += 1
        t0 += 1


@njit(cache=True)
def _all_group_sums(xq, zx, G):
    T, K = xq.shape
    xs = np.empty((T, K // G), dtype=np.int64)
    for t in range(T):
        _row_group_sums(xq, t, zx[t], G, xs[t])
    return xs


@njit(cache=True)
def gemm_acc_rows(xq, zx, q, qsum, m, b, G, P):
    """DI-MatMul steps 2-3 on the row-layout weight (``QWeight.q``), single thread: the
    same integers as ``matmul._di_acc_ref``, for ``G % 16 == 0``.  3 x 3 register tiles
    (1 x 8 for leftover token rows), chunks of 48 weight rows."""
    N = q.shape[0]
    xs = _all_group_sums(xq, zx, G)
    for c0 in range(0, N, _GNC):
        _gemm_chunk(xq, zx, xs, q, qsum, m, b, G, c0, min(N, c0 + _GNC), P)


@njit(cache=True, parallel=True)
def gemm_acc_rows_par(xq, zx, q, qsum, m, b, G, P):
    """:func:`gemm_acc_rows` with the weight-row chunks split over threads."""
    N = q.shape[0]
    xs = _all_group_sums(xq, zx, G)
    nch = (N + _GNC - 1) // _GNC
    for ci in prange(nch):
        c0 = ci * _GNC
        _gemm_chunk(xq, zx, xs, q, qsum, m, b, G, c0, min(N, c0 + _GNC), P)


@njit(cache=True, parallel=True)
def gemm_acc_multi_par(xq, zx, Wq, Wqs, Wm, Wb, nw, widx, G, outs):
    """:func:`gemm_acc_rows` for the weights ``Wq[widx[i]]``, i < nw (with their qsum, m,
    b lists) that read the same input, into ``outs[i]``: all chunks in ONE parallel
    region.  One group size G (a multiple of 16)."""
    starts = np.zeros(nw + 1, dtype=np.int64)
    for i in range(nw):
        starts[i + 1] = starts[i] + (Wq[widx[i]].shape[0] + _GNC - 1) // _GNC
    xs = _all_group_sums(xq, zx, G)
    for ci in prange(starts[nw]):
        i = 0
        while ci >= starts[i + 1]:
            i += 1
        w = widx[i]
        c0 = (ci - starts[i]) * _GNC
        N = Wq[w].shape[0]
        _gemm_chunk(xq, zx, xs, Wq[w], Wqs[w], Wm[w], Wb[w], G, c0, min(N, c0 + _GNC), outs[i])


@njit(cache=True)
def gemm_acc_multi(xq, zx, Wq, Wqs, Wm, Wb, nw, widx, G, outs):
    """Single-thread :func:`gemm_acc_multi_par`."""
    xs = _all_group_sums(xq, zx, G)
    for i in range(nw):
        w = widx[i]
        N = Wq[w].shape[0]
        for c0 in range(0, N, _GNC):
            _gemm_chunk(xq, zx, xs, Wq[w], Wqs[w], Wm[w], Wb[w], G, c0, min(N, c0 + _GNC), outs[i])
