"""The AVX-512 VNNI code generator of the vector tile (:func:`intsim.gemm.dot_tile_flat`)
for 8-bit operands: the same sums, ``s[r*C + c] = sum x * w`` in int32, built on
``vpdpbusd`` (LLVM intrinsic ``llvm.x86.avx512.vpdpbusd.512``; LLVM does not form it
from plain IR here, so the call names it).

``vpdpbusd acc, u, v`` adds to each of the 16 int32 lanes of ``acc`` the four products
``u[4l+j] * v[4l+j]`` of an unsigned byte ``u`` and a signed byte ``v`` (j < 4), in 32
bits, without saturation and without an intermediate 16-bit sum (unlike ``vpmaddubsw``).
The tile's operands are either signedness, so

* uint8 x, int8 w (or int8 x, uint8 w): one ``vpdpbusd`` per (r, c), unsigned side first;
* both uint8: one side is flipped (``v xor 0x80`` read as int8 is ``v - 128``), so
  ``sum x w = sum o (v - 128) + 128 sum o`` where ``o`` is the side left as it is;
* both int8: one side is flipped (``v xor 0x80`` read as uint8 is ``v + 128``), so
  ``sum x w = sum o (v + 128) - 128 sum o``.

``sum o`` is one more ``vpdpbusd`` per row of ``o`` against a vector of ones; the side
left as it is (the one that gets the correction) is the one with fewer vectors, so the
correction costs ``min(R, C)`` instructions per step next to ``R * C``.  The correction is
added lane by lane before any reduction: each lane then holds the exact sum of the
products ``x * w`` of its own positions.

Two loops, chosen at run time:

* K-major (row layout, ``wstep == 16``): each iteration reads 64 consecutive codes of
  every x and w row (four of the tile's steps); the ``nsteps mod 4`` steps left run in
  the portable loop, which continues from these accumulators;
* column groups (any other ``wstep``, ``C % 4 == 0``, e.g. the packed GEMV): each
  iteration reads one step, 16 codes of each row, repeats x four times and puts four
  columns' 16 codes side by side, so one ``vpdpbusd`` serves four columns.

int32 bound: a lane of a product accumulator sums products ``|u v| <= 255 * 128``, at
most ``16 nsteps`` of them over all lanes of one (r, c), so every partial sum is at most
``16 nsteps * 255 * 128`` in magnitude; the tile takes this path only when that is
``<= 2^31 - 1`` (``nsteps <= NSTEPS_MAX`` = 4112, i.e. K <= 65792; checked at run time,
the portable loop otherwise).  A correction lane sums four codes ``|o| <= 255`` per
instruction, at most ``4 nsteps`` of them (column groups: four per step; K-major: four
per four steps), so ``128 |corr| <= 4 nsteps * 255 * 128``, below the same bound.  After the correction a
lane is a sum of a subset of the exact products ``x w``, bounded like the final sum (the
callers' checked ``K max|x| max|w| <= 2^31 - 1``).  Exact: no rounding, so no tie rule.
"""
from __future__ import annotations

from llvmlite import ir
from numba.core import cgutils

_I8, _I32, _I64 = ir.IntType(8), ir.IntType(32), ir.IntType(64)
_V64 = ir.VectorType(_I8, 64)
_V16 = ir.VectorType(_I32, 16)
_V8 = ir.VectorType(_I32, 8)
_V4 = ir.VectorType(_I32, 4)
#: largest nsteps with 16 nsteps * 255 * 128 <= 2^31 - 1 (module docstring)
NSTEPS_MAX = (2 ** 31 - 1) // (16 * 255 * 128)


def _dpbusd(builder, acc, u, v):
    """``acc + vpdpbusd(u unsigned bytes, v signed bytes)``, 16 int32 lanes."""
    fn = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(_V16, [_V16, _V16, _V16]), "llvm.x86.avx512.vpdpbusd.512")
    return builder.call(fn, [acc, builder.bitcast(u, _V16), builder.bitcast(v, _V16)])


def _loop(builder, n, inits, body, name):
    """``for i in range(n): accs = body(i, accs)``; returns the final accumulators (the
    initial ones when n <= 0).  ``body`` emits straight-line code (no new blocks)."""
    pre = builder.basic_block
    loop = builder.append_basic_block(name + "_loop")
    done = builder.append_basic_block(name + "_done")
    builder.cbranch(builder.icmp_signed(">", n, _I64(0)), loop, done)
    builder.position_at_end(loop)
    i = builder.phi(_I64)
    i.add_incoming(_I64(0), pre)
    accs = []
    for v in inits:
        ph = builder.phi(v.type)
        ph.add_incoming(v, pre)
        accs.append(ph)
    new = body(i, accs)
    i_next = builder.add(i, _I64(1))
    i.add_incoming(i_next, loop)
    for a, v in zip(accs, new):
        a.add_incoming(v, loop)
    builder.cbranch(builder.icmp_signed("<", i_next, n), loop, done)
    builder.position_at_end(done)
    finals = []
    for v, nv in zip(inits, new):
        ph = builder.phi(v.type)
        ph.add_incoming(v, pre)
        ph.add_incoming(nv, loop)
        finals.append(ph)
    return finals


class _Plan:
    """Which side is flipped and which gets the ``sum o`` correction (compile time)."""

    def __init__(self, x_signed, w_signed, nx, nw):
        self.corr = None                      # "x" or "w": the side left as it is
        if x_signed == w_signed:
            self.corr = "x" if nx <= nw else "w"
        flip_x = self.corr == "w"
        self.x_unsigned = (not x_signed) != flip_x
        # +128 sum o when o is unsigned (the flipped side became v - 128), else -128
        o_signed = x_signed if self.corr == "x" else w_signed
        self.shift_sign = -1 if o_signed else 1
        self.flip_x, self.flip_w = flip_x, self.corr == "x"

    def prep(self, builder, xv, wv):
        sign = ir.Constant(_V64, [0x80] * 64)
        if self.flip_x:
            xv = [builder.xor(v, sign) for v in xv]
        if self.flip_w:
            wv = [builder.xor(v, sign) for v in wv]
        return xv, wv

    def dot(self, builder, acc, xv, wv):
        if self.x_unsigned:
            return _dpbusd(builder, acc, xv, wv)
        return _dpbusd(builder, acc, wv, xv)

    def osum(self, builder, acc, ov):
        """``acc + sum`` of the bytes of the uncorrected side ``ov`` (4 per lane)."""
        ones = ir.Constant(_V64, [1] * 64)
        if self.shift_sign > 0:                           # o unsigned
            return _dpbusd(builder, acc, ov, ones)
        return _dpbusd(builder, acc, ones, ov)

    def fix(self, builder, acc, corr):
        """``acc +- 128 corr``, lane by lane (exact products of each lane's positions)."""
        c = builder.shl(corr, ir.Constant(_V16, [7] * 16))
        return builder.add(acc, c) if self.shift_sign > 0 else builder.sub(acc, c)


def _load64(builder, ptr, off):
    return builder.load(builder.bitcast(builder.gep(ptr, [off]), _V64.as_pointer()), align=1)


def _kmajor(builder, xrow, wcol, ns_v, plan, nr, nc):
    """The K-major loop over ``nsteps // 4`` iterations of 64 codes; returns R*C <8 x i32>
    accumulators (lane sums of exact products) for the portable loop to continue."""
    ncorr = 0 if plan.corr is None else (nr if plan.corr == "x" else nc)
    zero16 = ir.Constant(_V16, [0] * 16)

    def body(i, accs):
        k = builder.mul(i, _I64(64))
        xo = [_load64(builder, p, k) for p in xrow]
        wo = [_load64(builder, p, k) for p in wcol]
        xv, wv = plan.prep(builder, xo, wo)
        new = [plan.dot(builder, accs[r * nc + c], xv[r], wv[c])
               for r in range(nr) for c in range(nc)]
        if plan.corr == "x":
            new += [plan.osum(builder, accs[nr * nc + r], xo[r]) for r in range(nr)]
        elif plan.corr == "w":
            new += [plan.osum(builder, accs[nr * nc + c], wo[c]) for c in range(nc)]
        return new

    nblk = builder.ashr(ns_v, _I64(2))
    fin = _loop(builder, nblk, [zero16] * (nr * nc + ncorr), body, "vnni_k")
    lo = ir.Constant(_V8, list(range(8)))
    hi = ir.Constant(_V8, list(range(8, 16)))
    out = []
    for r in range(nr):
        for c in range(nc):
            a = fin[r * nc + c]
            if plan.corr is not None:
                a = plan.fix(builder, a, fin[nr * nc + (r if plan.corr == "x" else c)])
            out.append(builder.add(builder.shuffle_vector(a, a, lo),
                                   builder.shuffle_vector(a, a, hi)))
    return out, builder.shl(nblk, _I64(2))


def _colgroups(builder, xrow, wcol, wstep_v, ns_v, plan, nr, nc, sdata):
    """The column-group loop (one step per iteration, four columns per vector); stores
    ``s[r*C + c]``."""
    ng = nc // 4
    ncorr = 0 if plan.corr is None else (nr if plan.corr == "x" else ng)
    zero16 = ir.Constant(_V16, [0] * 16)
    v16i8 = ir.VectorType(_I8, 16)
    rep4 = ir.Constant(ir.VectorType(_I32, 64), [j % 16 for j in range(64)])
    cat2 = ir.Constant(ir.VectorType(_I32, 32), list(range(32)))
    cat4 = ir.Constant(ir.VectorType(_I32, 64), list(range(64)))

    def load16(p, off):
        return builder.load(builder.bitcast(builder.gep(p, [off]), v16i8.as_pointer()), align=1)

    def body(i, accs):
        kx = builder.mul(i, _I64(16))
        kw = builder.mul(i, wstep_v)
        xo = []
        for p in xrow:
            v = load16(p, kx)
            xo.append(builder.shuffle_vector(v, v, rep4))
        wo = []
        for g in range(ng):
            q = [load16(wcol[4 * g + j], kw) for j in range(4)]
            wo.append(builder.shuffle_vector(builder.shuffle_vector(q[0], q[1], cat2),
                                             builder.shuffle_vector(q[2], q[3], cat2), cat4))
        xv, wv = plan.prep(builder, xo, wo)
        new = [plan.dot(builder, accs[r * ng + g], xv[r], wv[g])
               for r in range(nr) for g in range(ng)]
        if plan.corr == "x":
            new += [plan.osum(builder, accs[nr * ng + r], xo[r]) for r in range(nr)]
        elif plan.corr == "w":
            new += [plan.osum(builder, accs[nr * ng + g], wo[g]) for g in range(ng)]
        return new

    fin = _loop(builder, ns_v, [zero16] * (nr * ng + ncorr), body, "vnni_c")
    ev8 = ir.Constant(_V8, list(range(0, 16, 2)))
    od8 = ir.Constant(_V8, list(range(1, 16, 2)))
    ev4 = ir.Constant(_V4, list(range(0, 8, 2)))
    od4 = ir.Constant(_V4, list(range(1, 8, 2)))
    for r in range(nr):
        for g in range(ng):
            a = fin[r * ng + g]                   # lanes 4c' + j: column 4g + c'
            if plan.corr is not None:
                a = plan.fix(builder, a, fin[nr * ng + (r if plan.corr == "x" else g)])
            h = builder.add(builder.shuffle_vector(a, a, ev8), builder.shuffle_vector(a, a, od8))
            t = builder.add(builder.shuffle_vector(h, h, ev4), builder.shuffle_vector(h, h, od4))
            dst = builder.bitcast(builder.gep(sdata, [_I64(r * nc + 4 * g)]), _V4.as_pointer())
            builder.store(t, dst, align=4)


def emit(builder, xrow, wcol, wstep_v, ns_v, x_signed, w_signed, nr, nc, sdata, portable):
    """Emit the tile for 8-bit operands: the VNNI loops where they apply at run time
    (``nsteps <= NSTEPS_MAX``; K-major if ``wstep == 16``, else column groups if
    ``C % 4 == 0``), the portable loop otherwise.  ``portable(i0, inits)`` emits the
    portable loop over steps ``[i0, nsteps)`` from the given <8 x i32> accumulators (None:
    zeros) and stores the sums."""
    ok = builder.icmp_signed("<=", ns_v, _I64(NSTEPS_MAX))
    kmaj = builder.and_(ok, builder.icmp_signed("==", wstep_v, _I64(16)))
    with builder.if_else(kmaj) as (then, otherwise):
        with then:
            accs, i0 = _kmajor(builder, xrow, wcol, ns_v, _Plan(x_signed, w_signed, nr, nc),
                               nr, nc)
            portable(i0, accs)
        with otherwise:
            if nc % 4:
                portable(_I64(0), None)
            else:
                with builder.if_else(ok) as (then2, otherwise2):
                    with then2:
                        _colgroups(builder, xrow, wcol, wstep_v, ns_v,
                                   _Plan(x_signed, w_signed, nr, nc // 4), nr, nc, sdata)
                    with otherwise2:
                        portable(_I64(0), None)
