"""Exact 8-bit integer matmul cores: one vector tile, the DI-MatMul integer core in two
weight layouts, and the plain int8/uint8 matmul.

The vector tile :func:`dot_tile_flat` emits, for an R x C tile of outputs, one loop over K
in steps of 16 that keeps R*C vector accumulators of 8 int32 lanes in registers.  Each
step loads 16 codes of each of the R x rows and C w rows, widens them to 32 bits (zero-
or sign-extension by dtype), multiplies lane-wise and adds the even and odd products of
each pair into the 8 lanes.  This portable loop is plain integer vector IR (no target
intrinsic, no float): ``acc += even(x*w) + odd(x*w)``.  On x86 the backend recognises
the pattern as ``vpmaddwd`` (16 x 16-bit multiplies, pairwise added into 8 x 32 bits;
``vpdpwssd``, the same sums fused with the add, where AVX-512 VNNI is targeted); elsewhere
it compiles to ordinary vector code with the same result.  Where Numba's JIT targets
AVX-512 VNNI and both operands are 8-bit, the tile is built instead on ``vpdpbusd`` (64
byte products per instruction, :mod:`intsim.tile_vnni`; :mod:`intsim.isa` chooses, and
``INTSIM_ISA=avx2`` forces the portable loop): same sums, same int32 result.

Why it is exact: every operand is an 8-bit code widened to 32 bits (|x|, |w| <= 255), so
each product and each pair sum is formed exactly in 32 bits, and every partial sum is a
sum of a subset of the terms of the final result: bounded by ``K * max|x| * max|w|``
(both unsigned: by the final sum).  The callers check that bound against 2^31 - 1
(``matmul.check_bounds``, :func:`check_int32_bound`), so int32 never wraps.

Users of the tile (every one exact, no rounding, so no tie rule):

* DI-MatMul steps 2-3 (docs/SPEC.md section 4.2, 4.7) on the row layout ``QWeight.q``
  [N, K]: :func:`gemm_acc_rows` (and ``_par``, threads over chunks of 48 weight rows;
  ``gemm_acc_multi`` for several weights that read one input).  The tile gives ``raw =
  sum_{j in g} x_q * q`` (both codes >= 0); then ``acc = raw - zx * qsum`` (the centered
  group sum, int64) and ``P += m * acc + b * xs`` (int64, bounded by ``matmul.p_bound``).
* the same on a packed copy for single token rows (:class:`PackedWeight`,
  :func:`gemv_acc_packed`): one contiguous stream per 8 output channels.
* :func:`int_matmul`, the plain ``x @ w.T`` that ``intsim bench`` times against BLAS.

Loop structure (2 cores, 32 KiB L1d and 512 KiB L2 per core): chunks of 48 weight rows (a
chunk of 48 rows x 4096 bytes stays in L2); inside a chunk the 3-row x tile is reused
against every 3-row weight tile; single rows use 1 x 8 tiles, ragged edges 1 x 1 tiles,
and a scalar loop adds the last ``kn mod 16`` columns.  Measured figures: docs/SPEC.md
section 4.7 and ``intsim bench``.
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from . import tile_vnni
from .errors import IntsimError, IntsimOverflowError, check_choice, check_int_array
from .isa import has_vnni

#: input features per vector step (16 codes widened to 32-bit lanes)
VEC = 16
#: output channels per packed block (the register tile of one token row)
PACK_N = 8
#: register tile of the multi-row kernels (R token rows x C weight rows) and weight rows
#: per chunk (a multiple of 3 and of 8: 48 rows x K codes stay in L1/L2 while the token
#: rows stream past)
_TR, _TC, _TC1, _NC = 3, 3, PACK_N, 48
#: packed blocks per parallel chunk of the multi-thread GEMV
_CHUNK_BLOCKS = 8
#: largest |sum| an int32 accumulator may hold
I32_MAX = 2 ** 31 - 1

KERNELS = ("tiled", "dot")

_I32 = ir.IntType(32)
_I64 = ir.IntType(64)


# ------------------------------------------------------------------ the vector tile

@intrinsic
def dot_tile_flat(typingctx, x, xoff, xrs, w, woff, wstep, wcs, nsteps, s, R, C):
    """``s[r*C + c] = sum_{i < nsteps} sum_{l < 16} x[xoff + r*xrs + 16i + l] *
    w[woff + i*wstep + c*wcs + l]`` in int32 (R, C compile-time constants).

    ``x``, ``w``: C-contiguous uint8/int8/int16 arrays of any rank, addressed by flat
    element offsets; ``s``: int32 array with >= R*C elements.  The row layout is
    ``wstep = 16, wcs = K``; the packed layout ``wstep = 16*C, wcs = 16``.  No bounds
    checks: the callers guarantee the offsets.  Each step widens 16 codes per operand to
    32 bits, multiplies lane-wise and adds even and odd products into 8 lanes (x86
    backends select ``vpmaddwd``); 8-bit operands on AVX-512 VNNI use ``vpdpbusd``
    (:mod:`intsim.tile_vnni`); exact either way (module docstring).
    """
    # why one function: Numba's @intrinsic contract is one typing function returning its
    # codegen closure; the closure emits the tile's whole loop as one block of LLVM IR
    if not (isinstance(R, types.IntegerLiteral) and isinstance(C, types.IntegerLiteral)):
        return None
    for a in (x, w):
        if not (isinstance(a, types.Array) and a.layout == "C"
                and a.dtype in (types.int8, types.uint8, types.int16)):
            return None
    nr, nc = R.literal_value, C.literal_value
    sig = types.void(x, xoff, xrs, w, woff, wstep, wcs, nsteps, s, R, C)

    def codegen(context, builder, sig, args):
        xoff_v, xrs_v, woff_v, wstep_v, wcs_v, ns_v = [
            context.cast(builder, args[i], sig.args[i], types.int64) for i in (1, 2, 4, 5, 6, 7)]
        xarr = context.make_array(sig.args[0])(context, builder, args[0])
        warr = context.make_array(sig.args[3])(context, builder, args[3])
        sarr = context.make_array(sig.args[8])(context, builder, args[8])
        xel = ir.IntType(sig.args[0].dtype.bitwidth)
        wel = ir.IntType(sig.args[3].dtype.bitwidth)
        xb = builder.gep(builder.bitcast(xarr.data, xel.as_pointer()), [xoff_v])
        wb = builder.gep(builder.bitcast(warr.data, wel.as_pointer()), [woff_v])
        xrow = [builder.gep(xb, [builder.mul(xrs_v, _I64(r))]) for r in range(nr)]
        wcol = [builder.gep(wb, [builder.mul(wcs_v, _I64(c))]) for c in range(nc)]
        xs, ws = sig.args[0].dtype.signed, sig.args[3].dtype.signed

        def portable(i0, inits):
            finals = _portable_loop(builder, xrow, wcol, (xel, xs), (wel, ws), wstep_v, ns_v, i0,
                                    inits, nr, nc)
            _store_sums(builder, finals, sarr.data, nr, nc)

        if xel.width == 8 and wel.width == 8 and has_vnni():
            tile_vnni.emit(builder, xrow, wcol, wstep_v, ns_v, xs, ws, nr, nc, sarr.data, portable)
        else:
            portable(_I64(0), None)
        return context.get_dummy_value()

    return sig, codegen


def _portable_loop(builder, xrow, wcol, xty, wty, wstep_v, ns_v, i0, inits, nr, nc):
    """The portable tile loop over steps ``[i0, nsteps)`` from the <8 x i32> accumulators
    ``inits`` (None: zeros); returns the R*C final accumulators.  Each step widens 16 codes
    per operand to 32 bits and adds ``even(x*w) + odd(x*w)`` into 8 lanes (x86:
    ``vpmaddwd``)."""
    v16 = ir.VectorType(_I32, VEC)
    v8 = ir.VectorType(_I32, VEC // 2)
    zero8 = ir.Constant(v8, [0] * (VEC // 2))
    inits = inits if inits is not None else [zero8] * (nr * nc)
    even = ir.Constant(v8, list(range(0, VEC, 2)))
    odd = ir.Constant(v8, list(range(1, VEC, 2)))
    pre = builder.basic_block
    loop = builder.append_basic_block("ftile_loop")
    done = builder.append_basic_block("ftile_done")
    builder.cbranch(builder.icmp_signed("<", i0, ns_v), loop, done)

    builder.position_at_end(loop)
    i = builder.phi(_I64)
    accs = [builder.phi(v8) for _ in range(nr * nc)]
    i.add_incoming(i0, pre)
    for a, v in zip(accs, inits):
        a.add_incoming(v, pre)
    kx = builder.mul(i, _I64(VEC))
    kw = builder.mul(i, wstep_v)

    def load(base, k, ty):
        el, signed = ty
        p = builder.bitcast(builder.gep(base, [k]), ir.VectorType(el, VEC).as_pointer())
        v = builder.load(p, align=1)
        return builder.sext(v, v16) if signed else builder.zext(v, v16)

    xv = [load(xrow[r], kx, xty) for r in range(nr)]
    wv = [load(wcol[c], kw, wty) for c in range(nc)]
    new = []
    for r in range(nr):
        for c in range(nc):
            # 8-bit codes: |p| <= 255^2; int16 operands: every pair and lane sum is a
            # partial sum, bounded by the caller's checked K max|x| max|w| <= 2^31 - 1
            p = builder.mul(xv[r], wv[c])
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
        ph.add_incoming(inits[j], pre)
        ph.add_incoming(new[j], loop)
        finals.append(ph)
    return finals


def _store_sums(builder, finals, sdata, nr, nc):
    """``s[r*C + c]`` = the lane sum of accumulator (r, c)."""
    v8 = ir.VectorType(_I32, VEC // 2)
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
            dst = builder.bitcast(builder.gep(sdata, [_I64(r * 8)]), v8.as_pointer())
            builder.store(tot, dst, align=4)
        return
    reduce_add = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(_I32, [v8]), "llvm.vector.reduce.add.v8i32")
    for j, ph in enumerate(finals):
        builder.store(builder.call(reduce_add, [ph]), builder.gep(sdata, [_I64(j)]))


@njit(cache=True, inline="always")
def tile_sums(x, t0, w, n0, k0, kn, s, R, C):
    """``s[r*C + c] = sum_{k0 <= k < k0 + kn} x[t0 + r, k] * w[n0 + c, k]`` (int32) for 2-d
    C-contiguous row-layout operands: the vector tile over ``kn // 16`` steps, then a
    scalar loop over the last ``kn mod 16`` columns (exact: every partial sum is bounded
    like the final one)."""
    K = x.shape[1]
    steps = kn // VEC
    dot_tile_flat(x, t0 * K + k0, K, w, n0 * w.shape[1] + k0, VEC, w.shape[1], steps, s, R, C)
    tail = k0 + steps * VEC
    if tail < k0 + kn:
        for r in range(R):
            for c in range(C):
                acc = np.int32(0)
                for k in range(tail, k0 + kn):
                    acc = np.int32(acc + np.int32(x[t0 + r, k]) * np.int32(w[n0 + c, k]))
                s[r * C + c] = np.int32(s[r * C + c] + acc)


# ------------------------------------------------------------------ DI-MatMul core (row layout)

@njit(cache=True, inline="always")
def fold_group(raw, zx, qsum, m, b, xs):
    """DI-MatMul step 3 for one group (docs/SPEC.md section 4.7): the raw int32 sum of
    code products ``raw = sum x_q q`` becomes the centered accumulator ``acc = raw - zx
    qsum`` and enters the int64 fold as ``m acc + b xs``.  Exact (bounds: matmul.p_bound)."""
    return m * (np.int64(raw) - zx * qsum) + b * xs


@njit(cache=True)
def _row_group_sums(xq, t, zx, G, xs):
    """``xs[g] = sum_{j in g} (x_q[t, j] - zx)`` (|xs| <= G (2^A - 1), int64)."""
    K = xq.shape[1]
    for g in range(K // G):
        sx = np.int64(0)
        for j in range(g * G, g * G + G):
            sx += np.int64(xq[t, j])
        xs[g] = sx - G * zx


@njit(cache=True)
def _all_group_sums(xq, zx, G):
    T, K = xq.shape
    xs = np.empty((T, K // G), dtype=np.int64)
    for t in range(T):
        _row_group_sums(xq, t, zx[t], G, xs[t])
    return xs


@njit(cache=True, inline="always")
def _gemm_tile(xq, zx, xs, q, qsum, m, b, G, t0, n0, R, C, s, P, mx):
    """P[t0:t0+R, n0:n0+C] for all groups (R, C compile-time): tile sums, then the exact
    fold ``acc = raw - zx qsum``, ``P += m acc + b xs`` (int64).  Returns the running
    max |acc| (the overflow report's peak counter)."""
    K = xq.shape[1]
    for r in range(R):
        for c in range(C):
            P[t0 + r, n0 + c] = 0
    for g in range(K // G):
        tile_sums(xq, t0, q, n0, g * G, G, s, R, C)
        gu = np.uint64(g)
        for r in range(R):
            tu = np.uint64(t0 + r)       # unsigned indices: no negative-index wraparound code
            zt = zx[tu]
            xsg = xs[tu, gu]
            for c in range(C):
                n = np.uint64(n0 + c)
                a = abs(np.int64(s[r * C + c]) - zt * qsum[n, gu])     # |acc|, the peak
                mx = a if a > mx else mx
                P[tu, n] += fold_group(s[r * C + c], zt, qsum[n, gu], m[n, gu], b[n, gu], xsg)
    return mx


@njit(cache=True, inline="always")
def _raw_tile(xq, q, t0, n0, c0, R, C, s, raw):
    """One group-free tile: ``raw[t, n - c0] = sum_j x_q[t, j] q[n, j]`` (int32)."""
    tile_sums(xq, t0, q, n0, 0, xq.shape[1], s, R, C)
    for r in range(R):
        for c in range(C):
            raw[np.uint64(t0 + r), np.uint64(n0 - c0 + c)] = s[r * C + c]


@njit(cache=True)
def _gemm_chunk_one_group(xq, zx, xs, q, qsum, m, b, n_lo, n_hi, s, P):
    """:func:`_gemm_chunk` for one group (per-channel weights, G = K): the tiles write the
    raw int32 sums of the chunk, then one pass folds them, ``P = m (raw - zx qsum) + b xs``
    (int64; unsigned indices, so the pass has no negative-index wraparound code and
    vectorizes).  Returns max |acc|."""
    T = xq.shape[0]
    raw = np.empty((T, _NC), dtype=np.int32)
    t0 = 0
    while t0 + _TR <= T:
        n0 = n_lo
        while n0 + _TC <= n_hi:
            _raw_tile(xq, q, t0, n0, n_lo, _TR, _TC, s, raw)
            n0 += _TC
        while n0 < n_hi:
            for r in range(_TR):
                _raw_tile(xq, q, t0 + r, n0, n_lo, 1, 1, s, raw)
            n0 += 1
        t0 += _TR
    while t0 < T:
        n0 = n_lo
        while n0 + _TC1 <= n_hi:
            _raw_tile(xq, q, t0, n0, n_lo, 1, _TC1, s, raw)
            n0 += _TC1
        while n0 < n_hi:
            _raw_tile(xq, q, t0, n0, n_lo, 1, 1, s, raw)
            n0 += 1
        t0 += 1
    z = np.uint64(0)
    mx = np.int64(0)
    for t in range(T):
        tu = np.uint64(t)
        zt = zx[tu]
        xst = xs[tu, z]
        for c in range(n_hi - n_lo):
            n = np.uint64(n_lo + c)
            r = raw[tu, np.uint64(c)]
            a = abs(np.int64(r) - zt * qsum[n, z])                    # |acc|, the peak
            mx = a if a > mx else mx
            P[tu, n] = fold_group(r, zt, qsum[n, z], m[n, z], b[n, z], xst)
    return mx


@njit(cache=True)
def _gemm_chunk(xq, zx, xs, q, qsum, m, b, G, n_lo, n_hi, P):
    """DI-MatMul steps 2-3 for weight rows [n_lo, n_hi) (at most 48) and every token row;
    returns max |acc| over the chunk."""
    T, K = xq.shape
    s = np.empty(_TR * _TC + _TC1, dtype=np.int32)
    if G == K:
        return _gemm_chunk_one_group(xq, zx, xs, q, qsum, m, b, n_lo, n_hi, s, P)
    mx = np.int64(0)
    t0 = 0
    while t0 + _TR <= T:
        n0 = n_lo
        while n0 + _TC <= n_hi:
            mx = _gemm_tile(xq, zx, xs, q, qsum, m, b, G, t0, n0, _TR, _TC, s, P, mx)
            n0 += _TC
        while n0 < n_hi:
            for r in range(_TR):
                mx = _gemm_tile(xq, zx, xs, q, qsum, m, b, G, t0 + r, n0, 1, 1, s, P, mx)
            n0 += 1
        t0 += _TR
    while t0 < T:
        n0 = n_lo
        while n0 + _TC1 <= n_hi:
            mx = _gemm_tile(xq, zx, xs, q, qsum, m, b, G, t0, n0, 1, _TC1, s, P, mx)
            n0 += _TC1
        while n0 < n_hi:
            mx = _gemm_tile(xq, zx, xs, q, qsum, m, b, G, t0, n0, 1, 1, s, P, mx)
            n0 += 1
        t0 += 1
    return mx


@njit(cache=True)
def gemm_acc_rows(xq, zx, q, qsum, m, b, G, P):
    """DI-MatMul steps 2-3 on the row-layout weight (``QWeight.q``), single thread: the
    same integers as ``matmul._di_acc_ref``, any group size.  Returns max |acc|."""
    N = q.shape[0]
    xs = _all_group_sums(xq, zx, G)
    mx = np.int64(0)
    for c0 in range(0, N, _NC):
        mx = max(mx, _gemm_chunk(xq, zx, xs, q, qsum, m, b, G, c0, min(N, c0 + _NC), P))
    return mx


@njit(cache=True, parallel=True)
def gemm_acc_rows_par(xq, zx, q, qsum, m, b, G, P):
    """:func:`gemm_acc_rows` with the weight-row chunks split over threads."""
    N = q.shape[0]
    xs = _all_group_sums(xq, zx, G)
    nch = (N + _NC - 1) // _NC
    mx = np.zeros(max(nch, 1), dtype=np.int64)
    for ci in prange(nch):
        c0 = ci * _NC
        mx[ci] = _gemm_chunk(xq, zx, xs, q, qsum, m, b, G, c0, min(N, c0 + _NC), P)
    return mx.max()


@njit(cache=True, parallel=True)
def gemm_acc_multi_par(xq, zx, Wq, Wqs, Wm, Wb, nw, widx, G, outs):
    """:func:`gemm_acc_rows` for the weights ``Wq[widx[i]]``, i < nw (with their qsum, m,
    b lists) that read the same input, into ``outs[i]``: all chunks in ONE parallel
    region.  One group size G."""
    starts = np.zeros(nw + 1, dtype=np.int64)
    for i in range(nw):
        starts[i + 1] = starts[i] + (Wq[widx[i]].shape[0] + _NC - 1) // _NC
    xs = _all_group_sums(xq, zx, G)
    for ci in prange(starts[nw]):
        i = 0
        while ci >= starts[i + 1]:
            i += 1
        w = widx[i]
        c0 = (ci - starts[i]) * _NC
        N = Wq[w].shape[0]
        _gemm_chunk(xq, zx, xs, Wq[w], Wqs[w], Wm[w], Wb[w], G, c0, min(N, c0 + _NC), outs[i])


@njit(cache=True)
def gemm_acc_multi(xq, zx, Wq, Wqs, Wm, Wb, nw, widx, G, outs):
    """Single-thread :func:`gemm_acc_multi_par`."""
    xs = _all_group_sums(xq, zx, G)
    for i in range(nw):
        w = widx[i]
        N = Wq[w].shape[0]
        for c0 in range(0, N, _NC):
            _gemm_chunk(xq, zx, xs, Wq[w], Wqs[w], Wm[w], Wb[w], G, c0, min(N, c0 + _NC), outs[i])


# ------------------------------------------------------------------ DI-MatMul core, group-wise activations

@njit(cache=True)
def _fold_group_sums(xq, zg, Ga, Gf):
    """``xs[t, f] = sum_{j in f} (x_q[t, j] - zg[t, a(f)])`` per fold group f (the last
    may be short); |xs| <= Gf (2^A - 1), int64."""
    T, K = xq.shape
    nf = (K + Gf - 1) // Gf
    xs = np.empty((T, nf), dtype=np.int64)
    for t in range(T):
        for f in range(nf):
            j0 = f * Gf
            j1 = min(K, j0 + Gf)
            sx = np.int64(0)
            for j in range(j0, j1):
                sx += np.int64(xq[t, j])
            xs[t, f] = sx - (j1 - j0) * zg[t, j0 // Ga]
    return xs


@njit(cache=True, inline="always")
def _gemm_tile_groups(xq, zg, eg, xs, q, qsf, m, b, Gw, Ga, Gf, E, t0, n0, R, C, s, P, mx):
    """:func:`_gemm_tile` over fold groups f (SPEC 4.8): tile sums over f's columns, then
    ``P += fold_group(raw, zg[a], qsf[f], m[wg], b[wg], xs[f]) << (E - eg[a])`` (int64,
    exact: bound ``matmul.check_group_bounds``).  Returns the running max |acc|."""
    K = xq.shape[1]
    for r in range(R):
        for c in range(C):
            P[t0 + r, n0 + c] = 0
    for f in range((K + Gf - 1) // Gf):
        k0 = f * Gf
        tile_sums(xq, t0, q, n0, k0, min(Gf, K - k0), s, R, C)
        fu = np.uint64(f)
        wg = np.uint64(k0 // Gw)
        ag = np.uint64(k0 // Ga)
        for r in range(R):
            tu = np.uint64(t0 + r)
            zt = zg[tu, ag]
            sh = E - eg[tu, ag]
            xsf = xs[tu, fu]
            for c in range(C):
                n = np.uint64(n0 + c)
                a = abs(np.int64(s[r * C + c]) - zt * qsf[n, fu])          # |acc|, the peak
                mx = a if a > mx else mx
                P[tu, n] += fold_group(s[r * C + c], zt, qsf[n, fu], m[n, wg], b[n, wg], xsf) << sh
    return mx


@njit(cache=True)
def _gemm_chunk_groups(xq, zg, eg, xs, q, qsf, m, b, Gw, Ga, Gf, E, n_lo, n_hi, P):
    """:func:`_gemm_chunk`'s tiling (3 x 3, 1 x 8, 1 x 1) with :func:`_gemm_tile_groups`."""
    T = xq.shape[0]
    s = np.empty(_TR * _TC + _TC1, dtype=np.int32)
    mx = np.int64(0)
    t0 = 0
    while t0 + _TR <= T:
        n0 = n_lo
        while n0 + _TC <= n_hi:
            mx = _gemm_tile_groups(xq, zg, eg, xs, q, qsf, m, b, Gw, Ga, Gf, E, t0, n0, _TR, _TC, s, P, mx)
            n0 += _TC
        while n0 < n_hi:
            for r in range(_TR):
                mx = _gemm_tile_groups(xq, zg, eg, xs, q, qsf, m, b, Gw, Ga, Gf, E, t0 + r, n0, 1, 1, s,
                                       P, mx)
            n0 += 1
        t0 += _TR
    while t0 < T:
        n0 = n_lo
        while n0 + _TC1 <= n_hi:
            mx = _gemm_tile_groups(xq, zg, eg, xs, q, qsf, m, b, Gw, Ga, Gf, E, t0, n0, 1, _TC1, s, P, mx)
            n0 += _TC1
        while n0 < n_hi:
            mx = _gemm_tile_groups(xq, zg, eg, xs, q, qsf, m, b, Gw, Ga, Gf, E, t0, n0, 1, 1, s, P, mx)
            n0 += 1
        t0 += 1
    return mx


@njit(cache=True, parallel=True)
def gemm_acc_groups_par(xq, zg, eg, q, qsf, m, b, Gw, Ga, Gf, E, P):
    """DI-MatMul steps 2-3 with group-wise activations (docs/SPEC.md section 4.8) on the
    row-layout weight: ``xq`` uint8 [T, K], ``zg``, ``eg`` int64 [T, ceil(K / Ga)] (group
    zero points and exponents), ``qsf`` int64 [N, nf] (weight code sums per fold group
    of Gf), ``m``, ``b`` [N, K / Gw]; P int64 [T, N].  The same integers as
    ``matmul._di_acc_grp_ref``; threads over chunks of 48 weight rows.  Returns max |acc|.
    Exact (no rounding, so no tie rule).  Bounds: each fold group's acc is int32, |acc| <=
    Gf (2^A - 1)(2^W - 1) as in step 2; P is int64, every partial sum bounded by 2^E times
    step 3's bound ``matmul.p_bound``, both checked by the caller
    (``matmul.check_group_bounds``, refused by name past 2^31 - 1 and 2^61 - 1)."""
    N = q.shape[0]
    xs = _fold_group_sums(xq, zg, Ga, Gf)
    nch = (N + _NC - 1) // _NC
    mx = np.zeros(max(nch, 1), dtype=np.int64)
    for ci in prange(nch):
        c0 = ci * _NC
        mx[ci] = _gemm_chunk_groups(xq, zg, eg, xs, q, qsf, m, b, Gw, Ga, Gf, E, c0, min(N, c0 + _NC), P)
    return mx.max()


@njit(cache=True)
def gemm_acc_groups(xq, zg, eg, q, qsf, m, b, Gw, Ga, Gf, E, P):
    """:func:`gemm_acc_groups_par` on one thread (the same integers; the fused path's decode
    and single-thread calls).  Exact (no rounding, so no tie rule); bounds as
    :func:`gemm_acc_groups_par` (int32 acc per fold group, int64 P within 2^E times
    ``matmul.p_bound``, checked by ``matmul.check_group_bounds``).  Returns max |acc|."""
    xs = _fold_group_sums(xq, zg, Ga, Gf)
    return _gemm_chunk_groups(xq, zg, eg, xs, q, qsf, m, b, Gw, Ga, Gf, E, 0, q.shape[0], P)


# ------------------------------------------------------------------ DI-MatMul core (packed, one token row)

class PackedWeight:
    """One or more ``QWeight`` s with equal K and group size, rows stacked and packed for
    single token rows (decode): a GEMV reads every weight byte once, so it runs at the
    speed the weights stream from memory.  For each block of ``PACK_N`` = 8 output
    channels and each step of 16 input features the 8 x 16 codes lie next to each other,

        packed[((n // 8) * (K // 16) + j // 16) * 128 + (n % 8) * 16 + j % 16] = q[n, j]

    so one 1 x 8 tile reads one contiguous stream (measured: 134 MB of SmolLM2 weights in
    8.6 ms against 15.5 ms for the row layout, single thread).  N is padded with zero rows
    to a multiple of 8 (their outputs are never read); ``G % 16 == 0`` is required.
    Several weights that read the same input (q, k and v; gate and up) are stacked into
    one matrix: one pass over the input, the same integers per output channel.

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
                P[t, n] += fold_group(s[c], zx, qsum[n, g], m[n, g], b[n, g], xsg)


@njit(cache=True)
def gemv_acc_packed(xq, zx, wp, qsum, m, b, G, P):
    """DI-MatMul steps 2-3 on a packed weight, one token row at a time, single thread.

    ``xq``: uint8 [T, K] codes (C-contiguous), ``zx``: int64 [T]; ``wp``, ``qsum``,
    ``m``, ``b``: a :class:`PackedWeight`'s arrays; ``P``: int64 [T, Np] output (the
    padding columns receive 0).  Same integers as ``matmul._di_acc_ref`` (module docstring).
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


@njit(cache=True)
def gemv_acc_packed_groups(xq, zg, eg, wp, qsf, m, b, Gw, Ga, Gf, E, P):
    """:func:`gemm_acc_groups` on a packed weight (group-wise activations, SPEC 4.8), one
    token row at a time, one thread: per block of 8 outputs and fold group f, the tile's
    raw sums over f's ``Gf`` columns (``Gf % 16 == 0``), then ``P += fold_group(raw,
    zg[a], qsf[n, f], m[n, wg], b[n, wg], xs[f]) << (E - eg[a])``.  ``qsf`` int64 [Np,
    K / Gf]: the packed rows' code sums per fold group.  The same integers as
    ``matmul._di_acc_grp_ref``; exact (no rounding, so no tie rule); bounds as
    :func:`gemm_acc_groups_par` (int32 raw sums per fold group, int64 P within 2^E times
    ``matmul.p_bound``, checked by ``matmul.check_group_bounds``)."""
    T, K = xq.shape
    nf = K // Gf
    s = np.empty(PACK_N, dtype=np.int32)
    for t in range(T):
        xs = _fold_group_sums(xq[t:t + 1], zg[t:t + 1], Ga, Gf)[0]
        for blk in range(qsf.shape[0] // PACK_N):
            n0, base = blk * PACK_N, blk * K * PACK_N
            for c in range(PACK_N):
                P[t, n0 + c] = 0
            for f in range(nf):
                dot_tile_flat(xq, t * K + f * Gf, 0, wp, base + f * Gf * PACK_N, VEC * PACK_N,
                              VEC, Gf // VEC, s, 1, PACK_N)
                a, wg = f * Gf // Ga, f * Gf // Gw
                for c in range(PACK_N):
                    n = n0 + c
                    P[t, n] += fold_group(s[c], zg[t, a], qsf[n, f], m[n, wg], b[n, wg],
                                          xs[f]) << (E - eg[t, a])


# ------------------------------------------------------------------ plain int8 matmul (bench core)

def _int_matmul_ref(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Reference: int64 products, int64 sums, one output at a time along K (exact)."""
    x64 = x.astype(np.int64)
    w64 = w.astype(np.int64)
    out = np.zeros((x.shape[0], w.shape[0]), dtype=np.int64)
    for k in range(x.shape[1]):
        out += x64[:, k, None] * w64[None, :, k]
    return out.astype(np.int32)


@njit(cache=True, parallel=True)
def _int_matmul_dot_nb(x, w, out):
    """Simple kernel: one int32 dot product per output, parallel over weight rows."""
    T, K = x.shape
    N = w.shape[0]
    for n in prange(N):
        for t in range(T):
            acc = np.int32(0)
            for k in range(K):
                acc = np.int32(acc + np.int32(x[t, k]) * np.int32(w[n, k]))
            out[t, n] = acc


@njit(cache=True, inline="always")
def _int_tile(x, w, t0, n0, R, C, s, out):
    tile_sums(x, t0, w, n0, 0, x.shape[1], s, R, C)
    for r in range(R):
        for c in range(C):
            out[t0 + r, n0 + c] = s[r * C + c]


@njit(cache=True, parallel=True)
def _int_matmul_nb(x, w, out):
    """Fast kernel: chunks of _NC weight rows in parallel, register tiles inside (3 x 3,
    1 x 8 for leftover token rows, 1 x 1 at the ragged edges)."""
    T = x.shape[0]
    N = w.shape[0]
    nchunks = (N + _NC - 1) // _NC
    for ci in prange(nchunks):
        s = np.empty(_TR * _TC + _TC1, dtype=np.int32)
        n_lo = ci * _NC
        n_hi = min(N, n_lo + _NC)
        t0 = 0
        while t0 + _TR <= T:
            n0 = n_lo
            while n0 + _TC <= n_hi:
                _int_tile(x, w, t0, n0, _TR, _TC, s, out)
                n0 += _TC
            while n0 < n_hi:
                for r in range(_TR):
                    _int_tile(x, w, t0 + r, n0, 1, 1, s, out)
                n0 += 1
            t0 += _TR
        while t0 < T:
            n0 = n_lo
            while n0 + _TC1 <= n_hi:
                _int_tile(x, w, t0, n0, 1, _TC1, s, out)
                n0 += _TC1
            while n0 < n_hi:
                _int_tile(x, w, t0, n0, 1, 1, s, out)
                n0 += 1
            t0 += 1


def _abs_max(a: np.ndarray) -> int:
    if a.size == 0:
        return 0
    return max(abs(int(a.min())), abs(int(a.max())))


def matmul_bound(K: int, x_absmax: int, w_absmax: int) -> int:
    """Largest |sum| of K products (and of every partial sum): K * max|x| * max|w|."""
    return K * x_absmax * w_absmax


def check_int32_bound(name: str, K: int, x: np.ndarray, w: np.ndarray) -> int:
    """Raise unless K * max|x| * max|w| <= 2^31 - 1; return the bound.

    Tries the dtype ranges first (no pass over the data), then the actual maxima.
    """
    dt_bound = matmul_bound(K, max(abs(int(np.iinfo(x.dtype).min)), int(np.iinfo(x.dtype).max)),
                            max(abs(int(np.iinfo(w.dtype).min)), int(np.iinfo(w.dtype).max)))
    if dt_bound <= I32_MAX:
        return dt_bound
    bound = matmul_bound(K, _abs_max(x), _abs_max(w))
    if bound > I32_MAX:
        raise IntsimOverflowError(
            f"{name}: K * max|x| * max|w| = {bound} exceeds the int32 accumulator (2^31 - 1); "
            f"split K")
    return bound


def int_matmul(x: np.ndarray, w: np.ndarray, backend: str = "numba",
               kernel: str = "tiled") -> np.ndarray:
    """Exact integer matmul ``out[t, n] = sum_k x[t, k] * w[n, k]``, int32 result.

    x: [T, K] int8 or uint8; w: [N, K] int8 or uint8 (weights stored (N, K)).
    Accumulator: int32.  Bound: every partial sum is at most K * max|x| * max|w| in
    magnitude (a partial sum has a subset of the final sum's terms); checked against
    2^31 - 1 before the kernel runs (uint8 x uint8 passes for K <= 33025, int8 x int8
    for K <= 131071), else ``IntsimOverflowError`` naming x @ w.
    Exact: no rounding, so no tie rule.  backend: "numba" (``kernel`` "tiled", the
    register-tiled vector kernel, or "dot", the simple one) or "reference".
    """
    check_choice("backend", backend, ("numba", "reference"))
    check_choice("kernel", kernel, KERNELS)
    check_int_array("x", x, ndim=2, dtypes=(np.int8, np.uint8))
    check_int_array("w", w, ndim=2, dtypes=(np.int8, np.uint8))
    if x.shape[1] != w.shape[1]:
        raise IntsimError(f"w: K = {w.shape[1]} does not match x's K = {x.shape[1]}")
    check_int32_bound("x @ w", x.shape[1], x, w)
    if backend == "reference":
        return _int_matmul_ref(x, w)
    out = np.empty((x.shape[0], w.shape[0]), dtype=np.int32)
    if out.size == 0:
        return out
    if x.shape[1] == 0:
        out[...] = 0
        return out
    xc, wc = np.ascontiguousarray(x), np.ascontiguousarray(w)
    (_int_matmul_nb if kernel == "tiled" else _int_matmul_dot_nb)(xc, wc, out)
    return out
