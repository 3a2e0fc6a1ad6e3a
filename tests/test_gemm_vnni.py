"""The vector tile (intsim.gemm.dot_tile_flat) on both code generators: the AVX-512 VNNI
one (intsim.tile_vnni, ``vpdpbusd``) where the CPU has it, and the portable one
(``vpmaddwd`` on AVX2), forced by ``INTSIM_ISA=avx2`` in a subprocess.

(a) the tile == a NumPy int64 recompute of its definition, exactly, for every R x C the
    callers use (and a few more), uint8/int8 operands in all four pairings (int16 too:
    always the portable loop), in the row layout (K-major VNNI loop, ``nsteps mod 4``
    steps left to the portable loop), the packed layout and a strided one (column
    groups), ragged step counts 0..40, and the extremes 0/255 and -128/127;
(b) the active path is the one claimed: ``vpdpbusd`` in the compiled tile where
    ``isa()`` says avx512_vnni, none (and ``vpmaddwd``) under the forced fallback;
(c) the tile refuses the VNNI loops beyond the int32 bound of their partial sums
    (``nsteps > NSTEPS_MAX``) and still gives the exact sums there.
"""
import os
import subprocess
import sys

import hypothesis.strategies as st
import numpy as np
import pytest
from hypothesis import example, given
from numba import njit

from intsim import isa, tile_vnni
from intsim.gemm import VEC, dot_tile_flat, int_matmul

HOST_VNNI = isa.has_vnni(isa._host_features())
FORCED = os.environ.get("INTSIM_ISA") == "avx2"
RANGES = {np.uint8: (0, 255), np.int8: (-128, 127), np.int16: (-300, 300)}
#: (R, C) tiles: the callers' 3x3, 1x8, 1x1, and shapes with C % 4 == 0 or not
SHAPES = [(3, 3), (1, 8), (1, 1), (2, 4), (3, 8), (2, 5), (4, 1)]


def _make(R, C):
    @njit
    def tile(x, xoff, xrs, w, woff, wstep, wcs, ns, s):
        dot_tile_flat(x, xoff, xrs, w, woff, wstep, wcs, ns, s, R, C)
    return tile


TILES = {rc: _make(*rc) for rc in SHAPES}


def _ref(x, xoff, xrs, w, woff, wstep, wcs, ns, R, C):
    out = np.zeros(R * C, dtype=np.int64)
    for r in range(R):
        for c in range(C):
            for i in range(ns):
                a = x[xoff + r * xrs + VEC * i: xoff + r * xrs + VEC * i + VEC].astype(np.int64)
                b = w[woff + i * wstep + c * wcs: woff + i * wstep + c * wcs + VEC].astype(np.int64)
                out[r * C + c] += int(a @ b)
    return out


def _layout(kind, R, C, ns):
    """(xrs, wstep, wcs, x length, w length) of a layout; offsets 0 (the test adds 3)."""
    K = VEC * ns
    if kind == "rows":                      # QWeight.q rows: wstep 16, wcs K (+ a pad of 5)
        return K + 5, VEC, K + 5, R * (K + 5), C * (K + 5)
    if kind == "packed":                    # PackedWeight: 16 C per step, 16 per column
        return K, VEC * C, VEC, R * K, ns * VEC * C
    return K + 7, VEC * C + 9, VEC + 1, R * (K + 7), ns * (VEC * C + 9) + C * (VEC + 1)


def _check(dx, dw, R, C, ns, kind, fill, seed):
    xrs, wstep, wcs, nx, nw = _layout(kind, R, C, ns)
    rng = np.random.default_rng(seed)
    lo_x, hi_x = RANGES[dx]
    lo_w, hi_w = RANGES[dw]
    if fill == "random":
        x = rng.integers(lo_x, hi_x + 1, nx + 3).astype(dx)
        w = rng.integers(lo_w, hi_w + 1, nw + 3).astype(dw)
    else:                                   # the extremes: all max / all min, and mixed
        x = np.full(nx + 3, hi_x if fill != "min" else lo_x, dx)
        w = np.full(nw + 3, lo_w if fill == "mixed" else (hi_w if fill == "max" else lo_w), dw)
    s = np.full(R * C, -7, np.int32)
    TILES[(R, C)](x, 3, xrs, w, 3, wstep, wcs, ns, s)
    want = _ref(x, 3, xrs, w, 3, wstep, wcs, ns, R, C)
    assert np.abs(want).max(initial=0) <= 2 ** 31 - 1          # within the tile's contract
    assert s.astype(np.int64).tolist() == want.tolist(), (dx, dw, R, C, ns, kind, fill)


DT8 = st.sampled_from([np.uint8, np.int8])


@given(DT8, DT8, st.sampled_from(SHAPES), st.integers(0, 40),
       st.sampled_from(["rows", "packed", "strided"]),
       st.sampled_from(["random", "random", "max", "min", "mixed"]), st.integers(0, 2 ** 32 - 1))
@example(np.uint8, np.uint8, (3, 3), 39, "rows", "max", 0)       # 255 * 255, 9 x 64 + 3 steps
@example(np.uint8, np.uint8, (1, 8), 17, "packed", "max", 0)
@example(np.uint8, np.uint8, (1, 8), 17, "packed", "min", 0)     # x = w = 0
@example(np.int8, np.int8, (3, 3), 37, "rows", "min", 0)         # -128 * -128
@example(np.int8, np.int8, (3, 8), 21, "strided", "mixed", 0)    # 127 * -128
@example(np.uint8, np.int8, (2, 4), 9, "packed", "mixed", 0)     # 255 * -128
@example(np.int8, np.uint8, (3, 3), 13, "rows", "mixed", 0)      # 127 * 0
def test_tile_equals_reference(dx, dw, rc, ns, kind, fill, seed):
    _check(dx, dw, rc[0], rc[1], ns, kind, fill, seed)


@pytest.mark.parametrize("dx,dw", [(np.int16, np.int16), (np.uint8, np.int16)])
@pytest.mark.parametrize("kind", ["rows", "packed"])
def test_tile_equals_reference_int16_portable(dx, dw, kind):
    for ns in (0, 1, 5, 12):
        _check(dx, dw, 1, 8, ns, kind, "random", ns)
        _check(dx, dw, 3, 3, ns, kind, "max", ns)


def test_int_matmul_vnni_shapes_equals_reference():
    """The plain matmul over K with 64-code blocks and tails (the GEMM rows path)."""
    rng = np.random.default_rng(3)
    for dx, dw in [(np.uint8, np.uint8), (np.int8, np.int8), (np.uint8, np.int8)]:
        for T, N, K in [(7, 50, 4096 + 48), (4, 9, 112), (1, 17, 63), (3, 3, 64)]:
            x = rng.integers(*RANGES[dx], (T, K), endpoint=True).astype(dx)
            w = rng.integers(*RANGES[dw], (N, K), endpoint=True).astype(dw)
            assert np.array_equal(int_matmul(x, w), int_matmul(x, w, backend="reference"))


def test_tile_beyond_vnni_bound_is_exact():
    """nsteps = NSTEPS_MAX + 1: the VNNI loops would pass 2^31 in a partial sum (16 ns *
    255 * 128 > 2^31 - 1); the tile takes the portable loop and stays exact."""
    ns = tile_vnni.NSTEPS_MAX + 1
    assert 16 * (ns - 1) * 255 * 128 <= 2 ** 31 - 1 < 16 * ns * 255 * 128
    K = VEC * ns
    x = np.full(K, 255, np.uint8)
    w = np.full(K, 0, np.uint8)
    w[::2] = 1                                               # sum = 255 * K / 2 < 2^31
    s = np.zeros(1, np.int32)
    TILES[(1, 1)](x, 0, K, w, 0, VEC, K, ns, s)
    assert int(s[0]) == 255 * (K // 2)


def _asm(fn):
    return "\n".join(fn.inspect_asm().values())


@pytest.mark.skipif(not HOST_VNNI or FORCED,
                    reason="the CPU lacks AVX-512 VNNI (avx512f, avx512bw, avx512vnni) or "
                           "INTSIM_ISA=avx2 forces the fallback: the vpdpbusd tile is not compiled")
def test_vnni_path_is_active():
    assert isa.isa() == "avx512_vnni"
    TILES[(3, 3)](np.zeros(64 * 3, np.uint8), 0, 64, np.zeros(64 * 3, np.uint8), 0, VEC, 64, 4,
                  np.zeros(9, np.int32))
    assert "vpdpbusd" in _asm(TILES[(3, 3)])


@pytest.mark.skipif(not FORCED, reason="runs only under INTSIM_ISA=avx2 (the subprocess below)")
def test_forced_fallback_is_active():
    assert isa.isa() == "avx2" and not isa.has_vnni()
    TILES[(1, 8)](np.zeros(64, np.uint8), 0, 64, np.zeros(64 * 8, np.uint8), 0, VEC * 8, VEC, 4,
                  np.zeros(8, np.int32))
    code = _asm(TILES[(1, 8)])
    assert "vpdpbusd" not in code and "zmm" not in code and "vpmaddwd" in code


@pytest.mark.skipif(not HOST_VNNI or FORCED,
                    reason="the CPU lacks AVX-512 VNNI, or INTSIM_ISA=avx2 is set: the default "
                           "path already is the fallback")
def test_forced_fallback_subprocess():
    """This file's tile tests again with INTSIM_ISA=avx2 (the portable vpmaddwd tile)."""
    env = dict(os.environ, INTSIM_ISA="avx2")
    env.pop("NUMBA_CPU_FEATURES", None)
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__,
                        "-k", "equals_reference or fallback_is_active or beyond"],
                       env=env, capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    # 1 + 4 + 1 + 1 tile and matmul tests and the fallback check, none skipped
    assert "8 passed" in r.stdout and "skipped" not in r.stdout, r.stdout[-3000:]


def _isa_subprocess(value, code):
    env = dict(os.environ, INTSIM_ISA=value)
    env.pop("NUMBA_CPU_FEATURES", None)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=600)


def test_forced_fallback_reaches_the_cli():
    """The CLI imports many modules before a kernel runs; INTSIM_ISA=avx2 still holds."""
    r = _isa_subprocess("avx2", "from intsim_app.cli import build_parser; build_parser(); "
                                "from intsim.isa import isa; print(isa())")
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["avx2"]


def test_bad_isa_value_is_one_clear_error():
    r = _isa_subprocess("avx9", "import intsim")
    assert r.returncode == 2
    assert r.stderr.strip() == "intsim: error: INTSIM_ISA: 'avx9' is not one of auto, avx2"
