"""Exact 8-bit integer matmul cores: int8/uint8 operands, int32 sums.

``int_matmul(x, w)`` computes ``out[t, n] = sum_k x[t, k] * w[n, k]`` exactly, with the
weights stored (N, K) (one output channel per row, K contiguous).  DI-MatMul
(``intsim.matmul``) builds its per-group accumulators from the same tile kernel.

Three implementations, equal bit for bit (tests/test_gemm.py):

``_int_matmul_ref``     NumPy, explicit int64 products and sums (the spec; slow).
``_int_matmul_dot_nb``  Numba, one int32 dot product per output (the simple kernel).
``_int_matmul_nb``      Numba, register-tiled (the fast path, below).

The fast path: ``_dot_tile`` emits, for an R x C tile of outputs, one loop over K in
steps of 16 that keeps R*C vector accumulators of 8 int32 lanes in registers.  Each step
loads 16 codes of each of the R x rows and C w rows, widens them to 32 bits (zero- or
sign-extension by dtype), multiplies lane-wise and adds the even and odd products of each
pair into the 8 lanes.  The LLVM IR it emits is plain integer vector arithmetic (no
target intrinsic, no float): ``acc += even(x*w) + odd(x*w)``.  On x86 the backend
recognises the pattern as ``vpmaddwd`` (16 x 16-bit multiplies, pairwise added into 8 x
32 bits), the instruction int16 GEMM libraries are built on; elsewhere it compiles to
ordinary vector code with the same result.  After the loop the 8 lanes are summed.

Why it is exact: every operand is an 8-bit code widened to 32 bits (|x|, |w| <= 255), so
each product and each pair sum is formed exactly in 32 bits, and every partial sum is a
sum of a subset of the terms of the final result.  With all operands of one sign
(uint8 x uint8) a partial sum never exceeds the final bound; with signs mixed each
partial sum is still bounded by ``K * max|x| * max|w|``.  The public function checks
that bound against 2^31 - 1 before it calls a kernel, so int32 never wraps (the bound
uses the dtype ranges, and the actual maxima when the dtype bound is too large).

Loop structure (2 cores, 32 KiB L1d and 512 KiB L2 per core): ``prange`` over chunks of
``_NC`` weight rows (a chunk of 48 rows x 4096 bytes stays in L2); inside a chunk the
R-row x tile (R x K bytes, in L1) is reused against every C-row weight tile.  Single
rows (GEMV, and the last T mod R rows) use a 1 x ``_TC1`` tile; leftover columns a
1 x 1 tile.  Measured (``intsim bench``, 2-core Zen 3): GEMM (128x4096).(4096x4096)
about 255 GOP/s against 160 for float32 BLAS; GEMV (1x4096).(4096x11008) about 85
against 18 (docs/SPEC.md section 4.7).
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from .errors import IntsimError, IntsimOverflowError, check_choice, check_int_array

#: vector width of one K step: 16 codes per row (16 x 16-bit = one 256-bit register)
VEC = 16
#: tile of outputs per inner loop: R rows of x by C rows of w (GEMM)
_TR, _TC = 3, 3
#: tile for single rows (GEMV and the leftover rows of a GEMM)
_TC1 = 8
#: weight rows per parallel chunk (a multiple of _TC and _TC1)
_NC = 48
#: largest |sum| an int32 accumulator may hold
I32_MAX = 2 ** 31 - 1

KERNELS = ("tiled", "dot")

_I32 = ir.IntType(32)
_I64 = ir.IntType(64)


# ------------------------------------------------------------------ tile kernel

@intrinsic
def _dot_tile(typingctx, x, t0, w, n0, k0, nsteps, s, R, C):
    """s[r*C + c] = sum_{k0 <= k < k0 + 16*nsteps} x[t0 + r, k] * w[n0 + c, k]   (int32).

    x, w: 2-d C-contiguous int8/uint8 arrays; s: 1-d int32 array with >= R*C elements;
    R, C: compile-time constants.  No bounds checks: the callers guarantee the indices.
    """
    if not (isinstance(R, types.IntegerLiteral) and isinstance(C, types.IntegerLiteral)):
        return None
    for a in (x, w):
        if not (isinstance(a, types.Array) and a.ndim == 2 and a.layout == "C"
                and a.dtype in (types.int8, types.uint8)):
            return None
    nr, nc = R.literal_value, C.literal_value
    sig = types.void(x, t0, w, n0, k0, nsteps, s, R, C)

    def codegen(context, builder, sig, args):
        xa, t0v, wa, n0v, k0v, nsv, sa = args[:7]
        i64 = [context.cast(builder, v, ty, types.int64)
               for v, ty in zip((t0v, n0v, k0v, nsv), (sig.args[1], sig.args[3], sig.args[4],
                                                      sig.args[5]))]
        t0v, n0v, k0v, nsv = i64
        xarr = context.make_array(sig.args[0])(context, builder, xa)
        warr = context.make_array(sig.args[2])(context, builder, wa)
        sarr = context.make_array(sig.args[6])(context, builder, sa)
        byte_p = ir.IntType(8).as_pointer()
        xs = builder.extract_value(xarr.strides, 0)
        ws = builder.extract_value(warr.strides, 0)
        xbase = builder.bitcast(xarr.data, byte_p)
        wbase = builder.bitcast(warr.data, byte_p)
        xrow = [builder.gep(xbase, [builder.mul(builder.add(t0v, _I64(r)), xs)])
                for r in range(nr)]
        wrow = [builder.gep(wbase, [builder.mul(builder.add(n0v, _I64(c)), ws)])
                for c in range(nc)]
        v16_i8 = ir.VectorType(ir.IntType(8), VEC)
        v16 = ir.VectorType(_I32, VEC)
        v8 = ir.VectorType(_I32, VEC // 2)
        zero8 = ir.Constant(v8, [0] * (VEC // 2))
        even = ir.Constant(v8, list(range(0, VEC, 2)))
        odd = ir.Constant(v8, list(range(1, VEC, 2)))
        x_signed = sig.args[0].dtype.signed
        w_signed = sig.args[2].dtype.signed

        entry = builder.basic_block
        loop = builder.append_basic_block("tile_loop")
        done = builder.append_basic_block("tile_done")
        builder.cbranch(builder.icmp_signed(">", nsv, _I64(0)), loop, done)

        builder.position_at_end(loop)
        i = builder.phi(_I64)
        accs = [builder.phi(v8) for _ in range(nr * nc)]
        i.add_incoming(_I64(0), entry)
        for a in accs:
            a.add_incoming(zero8, entry)
        k = builder.mul(i, _I64(VEC))
        k = builder.add(k0v, k)

        def load(row, signed):
            p = builder.bitcast(builder.gep(row, [k]), v16_i8.as_pointer())
            v = builder.load(p, align=1)
            return builder.sext(v, v16) if signed else builder.zext(v, v16)

        xv = [load(xrow[r], x_signed) for r in range(nr)]
        wv = [load(wrow[c], w_signed) for c in range(nc)]
        new = []
        for r in range(nr):
            for c in range(nc):
                p = builder.mul(xv[r], wv[c])         # |p| <= 255^2: exact in 32 bits
                pair = builder.add(builder.shuffle_vector(p, p, even),
                                   builder.shuffle_vector(p, p, odd))
                new.append(builder.add(accs[r * nc + c], pair))
        i_next = builder.add(i, _I64(1))
        i.add_incoming(i_next, loop)
        for a, v in zip(accs, new):
            a.add_incoming(v, loop)
        builder.cbranch(builder.icmp_signed("<", i_next, nsv), loop, done)

        builder.position_at_end(done)
        finals = []
        for j in range(nr * nc):
            ph = builder.phi(v8)
            ph.add_incoming(zero8, entry)
            ph.add_incoming(new[j], loop)
            finals.append(ph)
        reduce_add = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(_I32, [v8]), "llvm.vector.reduce.add.v8i32")
        sdata = sarr.data
        for j, ph in enumerate(finals):
            builder.store(builder.call(reduce_add, [ph]), builder.gep(sdata, [_I64(j)]))
        return context.get_dummy_value()

    return sig, codegen


@njit(cache=True, inline="always")
def tile_sums_nb(x, t0, nr, w, n0, nc, k0, kn, s):
    """``s[r*nc + c] = sum_{k0 <= k < k0+kn} x[t0+r, k] * w[n0+c, k]`` in int32.

    The shared building block of the fast kernels: the vector tile for the full tile
    shapes (``_TR x _TC``, ``1 x _TC1``), 1 x 1 tiles otherwise, and a scalar loop over
    the last ``kn mod 16`` columns.  Requires ``nr <= _TR`` and ``nc <= max(_TC, _TC1)``
    with ``nr == 1`` whenever ``nc > _TC``.
    """
    steps = kn // VEC
    if nr == _TR and nc == _TC:
        _dot_tile(x, t0, w, n0, k0, steps, s, _TR, _TC)
    elif nr == 1 and nc == _TC1:
        _dot_tile(x, t0, w, n0, k0, steps, s, 1, _TC1)
    else:
        one = np.empty(1, dtype=np.int32)
        for r in range(nr):
            for c in range(nc):
                _dot_tile(x, t0 + r, w, n0 + c, k0, steps, one, 1, 1)
                s[r * nc + c] = one[0]
    tail = k0 + steps * VEC
    if tail < k0 + kn:
        for r in range(nr):
            for c in range(nc):
                acc = np.int32(0)
                for k in range(tail, k0 + kn):
                    acc = np.int32(acc + np.int32(x[t0 + r, k]) * np.int32(w[n0 + c, k]))
                s[r * nc + c] = np.int32(s[r * nc + c] + acc)


# ------------------------------------------------------------------ full matmul

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


@njit(cache=True, parallel=True)
def _int_matmul_nb(x, w, out):
    """Fast kernel: chunks of _NC weight rows in parallel, register tiles inside."""
    T, K = x.shape
    N = w.shape[0]
    nchunks = (N + _NC - 1) // _NC
    for ci in prange(nchunks):
        s = np.empty(_TR * _TC + _TC1, dtype=np.int32)
        n_lo = ci * _NC
        n_hi = min(N, n_lo + _NC)
        t0 = 0
        while t0 < T:
            nr = _TR if T - t0 >= _TR else 1
            tc = _TC if nr == _TR else _TC1
            for n0 in range(n_lo, n_hi, tc):
                nc = min(tc, n_hi - n0)
                tile_sums_nb(x, t0, nr, w, n0, nc, 0, K, s)
                for r in range(nr):
                    for c in range(nc):
                        out[t0 + r, n0 + c] = s[r * nc + c]
            t0 += nr


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
