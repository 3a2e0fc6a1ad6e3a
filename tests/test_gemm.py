"""Tests of the exact 8-bit integer matmul cores (intsim/gemm.py) and the benchmark.

(a) both Numba kernels (register-tiled vector kernel, simple dot kernel) == the NumPy
    int64 reference, exactly, over independent extremes and every tile shape / tail;
(b) the reference == float64 BLAS: an exact op, so the tolerance is 0 LSB;
(c) at the declared bound K * max|x| * max|w| = 2^31 - 1 (nearly) the kernels still give
    the Python-int result; one step beyond it they raise.
"""
import json
import os
import sys

import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import numpy as np
import pytest
from hypothesis import assume, example, given

from intsim import bench
from intsim_app.bench import main as bench_main
from intsim.errors import IntsimError, IntsimOverflowError
from intsim.gemm import I32_MAX, _TC, _TC1, _TR, int_matmul

RANGES = {np.uint8: (0, 255), np.int8: (-128, 127)}
#: exact op: the float64 recompute (sums < 2^53) must agree to 0 LSB
FLOAT_TOL_LSB = 0


@st.composite
def operands(draw, dx=None, dw=None):
    dx = dx or draw(st.sampled_from([np.uint8, np.int8]))
    dw = dw or draw(st.sampled_from([np.uint8, np.int8]))
    # shapes straddle the tile sizes (3x3, 1x8), the 16-wide K step and its tail
    T = draw(st.integers(1, 2 * _TR + 1))
    N = draw(st.integers(1, 2 * _TC1 + 3))
    K = draw(st.integers(1, 50))
    x = draw(hnp.arrays(dx, (T, K), elements=st.integers(*RANGES[dx]), fill=st.nothing()))
    w = draw(hnp.arrays(dw, (N, K), elements=st.integers(*RANGES[dw]), fill=st.nothing()))
    return x, w


# ---------------------------------------------------------------- (a) kernel == reference

@given(operands(np.uint8, np.uint8))
@example((np.full((3, 16), 255, np.uint8), np.full((3, 16), 255, np.uint8)))
@example((np.zeros((1, 1), np.uint8), np.full((1, 1), 255, np.uint8)))
@example((np.full((7, 33), 255, np.uint8), np.full((19, 33), 255, np.uint8)))
def test_int_matmul_kernel_equals_reference_uint8(xw):
    x, w = xw
    ref = int_matmul(x, w, backend="reference")
    assert ref.dtype == np.int32
    np.testing.assert_array_equal(int_matmul(x, w), ref)
    np.testing.assert_array_equal(int_matmul(x, w, kernel="dot"), ref)


@given(operands())
@example((np.full((3, 17), -128, np.int8), np.full((3, 17), -128, np.int8)))
@example((np.full((1, 32), -128, np.int8), np.full((8, 32), 127, np.int8)))
@example((np.full((4, 16), 255, np.uint8), np.full((9, 16), -128, np.int8)))
@example((np.full((2, 5), -128, np.int8), np.full((8, 5), 255, np.uint8)))
def test_int_matmul_kernel_equals_reference_signed_mixed(xw):
    x, w = xw
    ref = int_matmul(x, w, backend="reference")
    np.testing.assert_array_equal(int_matmul(x, w), ref)
    np.testing.assert_array_equal(int_matmul(x, w, kernel="dot"), ref)


def test_int_matmul_kernel_equals_reference_large_tiles():
    """Sizes with full 3x3 and 1x8 tiles, several parallel chunks and ragged edges."""
    rng = np.random.default_rng(5)
    for (T, N, K) in [(128, 197, 300), (1, 1000, 129), (4, 97, 4096)]:
        x = rng.integers(0, 256, (T, K), dtype=np.uint8)
        w = rng.integers(0, 256, (N, K), dtype=np.uint8)
        exact = x.astype(np.int64) @ w.astype(np.int64).T
        np.testing.assert_array_equal(int_matmul(x, w), exact)


def test_int_matmul_non_contiguous_inputs():
    rng = np.random.default_rng(6)
    x = rng.integers(-128, 128, (10, 40), dtype=np.int8)
    w = rng.integers(-128, 128, (40, 30), dtype=np.int8)
    xs, wt = x[::2, ::2], w.T[:, ::2]              # strided views
    np.testing.assert_array_equal(int_matmul(xs, wt), int_matmul(np.ascontiguousarray(xs),
                                                                 np.ascontiguousarray(wt),
                                                                 backend="reference"))


def test_int_matmul_empty_shapes():
    assert int_matmul(np.zeros((0, 5), np.uint8), np.zeros((3, 5), np.uint8)).shape == (0, 3)
    out = int_matmul(np.zeros((2, 0), np.uint8), np.zeros((3, 0), np.uint8))
    np.testing.assert_array_equal(out, np.zeros((2, 3), np.int32))


# ---------------------------------------------------------------- (b) close to float

@given(operands())
def test_int_matmul_close_to_float(xw):
    x, w = xw
    exact = x.astype(np.float64) @ w.astype(np.float64).T    # |sum| < 2^53: exact in float64
    err = np.abs(int_matmul(x, w, backend="reference").astype(np.float64) - exact)
    assert err.max(initial=0) <= FLOAT_TOL_LSB


# ---------------------------------------------------------------- (c) overflow

@pytest.mark.parametrize("dt,val,kmax", [(np.uint8, 255, 33025), (np.int8, -128, 131071)])
def test_int_matmul_overflow_at_bound(dt, val, kmax):
    """K = the largest K the dtype bound allows, every operand at its extreme: the result
    is K * val^2 (recomputed in Python ints) and still fits int32."""
    assert kmax * val * val <= I32_MAX < (kmax + 1) * val * val
    T, N = _TR, _TC1 + 1                                    # a full 3x3 tile and edge tiles
    x = np.full((T, kmax), val, dt)
    w = np.full((N, kmax), val, dt)
    want = kmax * int(val) * int(val)                       # Python int
    assert want <= I32_MAX
    for kernel in ("tiled", "dot"):
        assert int_matmul(x, w, kernel=kernel).tolist() == [[want] * N] * T
    if dt == np.int8:
        # mixed signs: w alternates -128, 127; every partial sum stays within the bound
        w[:, 1::2] = 127
        want = (kmax + 1) // 2 * 128 * 128 - kmax // 2 * 128 * 127
        assert int_matmul(x, w).tolist() == [[want] * N] * T


def test_int_matmul_overflow_raises_beyond_bound():
    x = np.full((1, 33026), 255, np.uint8)
    with pytest.raises(IntsimOverflowError, match="x @ w"):
        int_matmul(x, x)
    # the dtype bound fails but the actual values pass: allowed
    y = np.full((1, 33026), 254, np.uint8)
    assert int(int_matmul(y, y)[0, 0]) == 33026 * 254 * 254
    with pytest.raises(IntsimOverflowError, match="x @ w"):
        int_matmul(np.full((1, 131072), -128, np.int8), np.full((1, 131072), -128, np.int8))


# ---------------------------------------------------------------- bad input

def test_int_matmul_bad_input():
    u = np.zeros((2, 3), np.uint8)
    with pytest.raises(IntsimError, match="x"):
        int_matmul(u.astype(np.float32), u)
    with pytest.raises(IntsimError, match="w"):
        int_matmul(u, u.astype(np.int16))
    with pytest.raises(IntsimError, match="x"):
        int_matmul(u[0], u)
    with pytest.raises(IntsimError, match="w: K"):
        int_matmul(u, np.zeros((2, 4), np.uint8))
    with pytest.raises(IntsimError, match="backend"):
        int_matmul(u, u, backend="fast")
    with pytest.raises(IntsimError, match="kernel"):
        int_matmul(u, u, kernel="blas")


# ---------------------------------------------------------------- benchmark smoke test

def test_bench_quick_collect_and_json(capsys):
    r = bench.collect(quick=True, repeats=1)
    for key in ("gemm_int_gops", "gemm_f32_gops", "gemv_int_gops", "gemv_f32_gops",
                "gemm_ratio", "gemv_ratio", "gemm_shape", "gemv_shape", "machine"):
        assert key in r, key
    assert r["exact"] is True
    assert r["gemm_int_gops"] > 0 and r["gemv_f32_gops"] > 0
    assert {"cpu", "cores", "numpy", "numba", "numba_threads", "isa"} <= set(r["machine"])
    from intsim.isa import isa
    assert r["isa"] == isa() and r["isa"] in ("avx512_vnni", "avx2", "generic")
    for key in ("read_gbs_1t", "read_gbs_nt", "gemv_int_gbs", "gemv_packed_1t_gbs",
                "gemv_packed_par_gbs", "gemm_int_gops_median"):
        assert r[key] > 0, key
    assert r["gemv_packed_equal"] is True
    assert bench_main(["--json", "--quick", "--repeats", "1"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["gemm_shape"] == {"M": 16, "K": 256, "N": 256} and d["exact"] is True
    assert bench_main(["--quick", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "GEMV" in out and f"tile ISA {r['isa']}; memory read" in out


def test_bench_cold_start_reads_the_first_token_off_the_stream(tmp_path, monkeypatch):
    """The cold-start timer's stream reading on a stand-in command that echoes a prompt,
    pauses, then streams: the first token is the first byte after the echo (the figure
    itself is measured by 'intsim bench --model' / '--cold-start', not asserted here)."""
    from intsim_app.bench import cold_start_row, first_token_run
    code = ("import sys, time; print('a prompt', end='', flush=True); time.sleep(0.2); "
            "print(' tok', end='', flush=True); time.sleep(0.2); print(file=sys.stderr)")
    r = first_token_run([sys.executable, "-c", code], "a prompt", dict(os.environ))
    assert r["first_token_s"] is not None and r["first_token_s"] <= r["total_s"]
    silent = first_token_run([sys.executable, "-c", "print('a prompt', end='')"], "a prompt",
                             dict(os.environ))
    assert silent["first_token_s"] is None                  # nothing after the echo
    with pytest.raises(RuntimeError, match="exited 3"):
        first_token_run([sys.executable, "-c", "raise SystemExit(3)"], "x", dict(os.environ))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("intsim_app.bench.SMALL", tmp_path / "none" / "small.intsim")
    assert "none" in cold_start_row()["cold_start_note"]
