# float-allowed: baseline measurement only (float32 BLAS timing and the float64 exactness check)
"""``intsim bench``: the integer matmul core against float32 BLAS on this machine.

Two shapes of LLaMA-7B linear layers, weights stored (N, K):

* GEMM (128 x 4096) . (4096 x 4096): a 128-token prefill through q/k/v/o;
* GEMV (1 x 4096) . (4096 x 11008): one decoded token through gate/up.

Integer side: ``intsim.gemm.int_matmul`` on int8 x int8 random data (int32 results,
the exact core of DI-MatMul), plus the whole ``di_matmul`` op (input requant, core,
int64 fold, output requant; A = W = 8, per-channel scales) for the same shapes.  Float
side: ``np.matmul`` on float32 copies (whatever BLAS NumPy links).  ops = 2 M N K;
each timing is the best of many runs after a warm-up run (JIT compile, caches), the
integer and float timings interleaved so that both see the same machine load.
The integer result is checked against float64 BLAS on a slice of output columns (exact:
every sum is below 2^53) and against an int64 NumPy recompute of a few outputs.
Each GOP/s figure also has a median (``*_median``: the load the runs saw).  Memory side:
``isa`` (the vector tile's instruction set, :func:`intsim.isa.isa`), a measured read
bandwidth (``read_gbs_1t``, ``read_gbs_nt``: every 8-byte word of a 512 MiB array, one
thread and all Numba threads), and the GB/s the GEMV streams its int8 weights at: the
plain core (``gemv_int_gbs``) and the decode kernel (DI-MatMul steps 2-3 on a packed
weight, ``gemv_acc_packed``) on one thread and split over threads (``gemv_packed_1t_gbs``,
``gemv_packed_par_gbs``; their outputs compared, ``gemv_packed_equal``).
With ``--model`` it also times a golden export (``intsim golden``) of a 256-token prompt:
seconds, MB/s written, and its overhead against a plain forward (:func:`golden_bench`).
The command itself, and the PyTorch fp32 baseline of ``--model``, live in the application
layer (``intsim_app/bench.py``): the integer runtime does not import the float side.
"""
from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import numba
import numpy as np
from numba import njit, prange

from .gemm import PACK_N, PackedWeight, gemv_acc_packed, gemv_acc_packed_par, int_matmul
from .isa import isa

GEMM_SHAPE = (128, 4096, 4096)     # M, K, N
GEMV_SHAPE = (1, 4096, 11008)
QUICK_GEMM = (16, 256, 256)
QUICK_GEMV = (1, 256, 512)


def machine_info() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    blas = "unknown"
    try:
        cfg = np.show_config(mode="dicts")
        b = cfg.get("Build Dependencies", {}).get("blas", {})
        blas = f"{b.get('name', '?')} {b.get('version', '')}".strip()
    except Exception:                                  # noqa: BLE001 - informational only
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "numba_threads": numba.get_num_threads(),
            "isa": isa(),
            "blas": blas, "numpy": np.__version__, "numba": numba.__version__,
            "python": platform.python_version(),
            "env_threads": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                                       "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")
                            if k in os.environ}}


def _times(fn, repeats: int, min_time: float = 0.0, max_runs: int = 500) -> list:
    """Wall times of at least ``repeats`` runs, continuing until ``min_time`` seconds
    have been spent (at most ``max_runs`` runs), after one warm-up run.

    On a 2-core machine shared with other work, a run in which one of the two worker
    threads waits for a core takes several times longer; the best of many runs is the
    machine's undisturbed speed (the median shows the load)."""
    fn()                                               # warm-up: JIT compile, page in
    out = []
    start = time.perf_counter()
    while len(out) < repeats or (time.perf_counter() - start < min_time and len(out) < max_runs):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def _best_time(fn, repeats: int, min_time: float = 0.0, max_runs: int = 500) -> float:
    """Best of :func:`_times`."""
    return min(_times(fn, repeats, min_time, max_runs))


@njit(cache=True)
def _read_1t(a):
    """XOR of every 8-byte word of ``a`` (a read of every byte; the result only keeps
    the loop alive)."""
    acc = np.uint64(0)
    for i in range(a.shape[0]):
        acc ^= a[i]
    return acc


@njit(cache=True, parallel=True)
def _read_nt(a):
    """:func:`_read_1t` over 64 chunks split over Numba's threads.  Each chunk is a slice
    passed to the one-thread loop: the same loop written inline in the prange body read at
    about a third of the one-thread rate here (10 against 34 GB/s, both threads busy), so
    it measured the loop, not the memory."""
    nch = 64
    step = (a.shape[0] + nch - 1) // nch
    part = np.zeros(nch, dtype=np.uint64)
    for c in prange(nch):
        part[c] = _read_1t(a[c * step:min(a.shape[0], c * step + step)])
    out = np.uint64(0)
    for c in range(nch):
        out ^= part[c]
    return out


def read_bandwidth(nbytes: int, repeats: int, min_time: float) -> dict:
    """Measured read bandwidth (GB/s, best and median) of one thread and of all Numba
    threads over a ``nbytes`` array (filled, so every page is real memory)."""
    a = np.full(nbytes // 8, 0x0101010101010101, dtype=np.uint64)
    r = {"read_bytes": int(a.nbytes), "read_threads": numba.get_num_threads()}
    for key, fn in (("1t", _read_1t), ("nt", _read_nt)):
        ts = _times(lambda: fn(a), repeats, min_time)
        r[f"read_gbs_{key}"] = a.nbytes / min(ts) / 1e9
        r[f"read_gbs_{key}_median"] = a.nbytes / float(np.median(ts)) / 1e9
    return r


def _packed_gemv(w8: np.ndarray, repeats: int, min_time: float) -> dict:
    """The decode kernel (DI-MatMul steps 2-3 on a packed weight, one token row): single
    thread and split over threads; GB/s = weight bytes / time (best and median)."""
    from .matmul import QWeight
    N, K = w8.shape
    q = (w8.astype(np.int16) + 128).astype(np.uint8)
    pw = PackedWeight([QWeight(q, 8, K, np.full((N, 1), 3, np.int64),
                               np.full((N, 1), -5, np.int64), 0)])
    rng = np.random.default_rng(1)
    xq = rng.integers(0, 256, (1, K)).astype(np.uint8)
    zx = np.array([128], dtype=np.int64)
    P1 = np.empty((1, pw.qsum.shape[0]), dtype=np.int64)
    P2 = np.empty_like(P1)
    r = {}
    t1, t2 = [], []
    for _ in range(2):                                 # interleaved
        t1 += _times(lambda: gemv_acc_packed(xq, zx, pw.wp, pw.qsum, pw.m, pw.b, K, P1),
                     repeats, min_time / 2)
        t2 += _times(lambda: gemv_acc_packed_par(xq, zx, pw.wp, pw.qsum, pw.m, pw.b, K, P2),
                     repeats, min_time / 2)
    nb = pw.qsum.shape[0] // PACK_N * PACK_N * K
    for key, ts in (("1t", t1), ("par", t2)):
        r[f"gemv_packed_{key}_gbs"] = nb / min(ts) / 1e9
        r[f"gemv_packed_{key}_gbs_median"] = nb / float(np.median(ts)) / 1e9
    r["gemv_packed_equal"] = bool(np.array_equal(P1, P2))
    return r


def _exact(x: np.ndarray, w: np.ndarray, out: np.ndarray, rng, ncols: int = 256) -> bool:
    """int result == float64 BLAS recompute on ``ncols`` random columns (exact: |sum| <
    K * 128^2 < 2^53), and == int64 NumPy on a 4 x 4 corner."""
    cols = rng.choice(w.shape[0], size=min(ncols, w.shape[0]), replace=False)
    ref = x.astype(np.float64) @ w[cols].astype(np.float64).T
    ok = bool(np.array_equal(out[:, cols].astype(np.float64), ref))
    small = x[:4].astype(np.int64) @ w[:4].astype(np.int64).T
    return ok and bool(np.array_equal(out[:4, :4].astype(np.int64), small))


def _di_matmul_time(x8: np.ndarray, w8: np.ndarray, repeats: int, min_time: float) -> float:
    """Time the whole di_matmul op on the same data (int8 codes shifted to uint8)."""
    from .matmul import QWeight, di_matmul
    from .qtensor import Dyadic, QTensor
    T, K = x8.shape
    N = w8.shape[0]
    xq = QTensor(x8.astype(np.int16), np.zeros(T, np.int32),
                 Dyadic(np.full(T, 181), np.full(T, 14)), 8, True)
    w = QWeight((w8.astype(np.int16) + 128).astype(np.uint8), 8, K,
                np.full((N, 1), 40000, np.int64), np.full((N, 1), -40000 * 128, np.int64), 24)
    return _best_time(lambda: di_matmul(xq, w, 8, 8, False), repeats, min_time)


def collect(quick: bool = False, repeats: int = 5, seed: int = 0,
            min_time: float | None = None) -> dict:
    """Run the benchmark; return one flat-ish dict (see module docstring).

    Each timing is the best of at least ``repeats`` runs and of ``min_time`` seconds of
    runs (default 1 s, 0 in quick mode)."""
    if min_time is None:
        min_time = 0.0 if quick else 1.0
    rng = np.random.default_rng(seed)
    res: dict = {"quick": bool(quick), "repeats": int(repeats), "min_time_s": min_time,
                 "dtype": "int8 x int8 -> int32",
                 "kernel": "intsim.gemm.int_matmul (tiled)", "isa": isa()}
    exact = True
    for name, (M, K, N) in (("gemm", QUICK_GEMM if quick else GEMM_SHAPE),
                            ("gemv", QUICK_GEMV if quick else GEMV_SHAPE)):
        x = rng.integers(-127, 128, size=(M, K), dtype=np.int8)
        w = rng.integers(-127, 128, size=(N, K), dtype=np.int8)
        xf, wf = x.astype(np.float32), w.astype(np.float32)
        ops = 2 * M * N * K
        ti, tf = [], []
        for _ in range(2):                             # interleaved: both see the same load
            ti += _times(lambda: int_matmul(x, w), repeats, min_time / 2)
            tf += _times(lambda: np.matmul(xf, wf.T), repeats, min_time / 2)
        t_int, t_f32 = min(ti), min(tf)
        t_dot = _best_time(lambda: int_matmul(x, w, kernel="dot"), max(1, repeats // 2),
                           min_time / 2)
        t_di = _di_matmul_time(x, w, max(1, repeats // 2), min_time / 2)
        ok = _exact(x, w, int_matmul(x, w), rng)
        exact &= ok
        res[f"{name}_shape"] = {"M": M, "K": K, "N": N}
        res[f"{name}_int_gops"] = ops / t_int / 1e9
        res[f"{name}_f32_gops"] = ops / t_f32 / 1e9
        res[f"{name}_ratio"] = t_f32 / t_int
        res[f"{name}_int_gops_median"] = ops / float(np.median(ti)) / 1e9
        res[f"{name}_f32_gops_median"] = ops / float(np.median(tf)) / 1e9
        res[f"{name}_int_gbs"] = N * K / t_int / 1e9            # int8 weight bytes / time
        res[f"{name}_int_dot_gops"] = ops / t_dot / 1e9
        res[f"{name}_di_matmul_gops"] = ops / t_di / 1e9
        res[f"{name}_exact"] = ok
        if name == "gemv":
            res.update(_packed_gemv(w, repeats, min_time))
            exact &= res["gemv_packed_equal"]
    res.update(read_bandwidth((32 if quick else 512) << 20, repeats, min_time / 2))
    res["isa"] = isa()
    res["exact"] = bool(exact)
    res["machine"] = machine_info()
    return res


def fused_status_row(model_path) -> dict:
    """``fused_declined``: why the model's forward runs op by op (None: it runs fused)."""
    from .modelfile import load_model
    from .runner import fused_status
    return {"fused_declined": fused_status(load_model(model_path))}


def decode_roofline(r: dict, model_path) -> dict:
    """How close a decode step is to the machine's memory limit: every step reads every
    linear weight once (the LM head included), one byte per code, so the measured read
    bandwidth of all threads (``read_gbs_nt``) bounds decode at ``read_gbs_nt /
    decode_weight_bytes`` tok/s whatever the kernels do (``decode_bound_tok_s``; a bound on
    the weight stream alone: attention, norms and requantizations come on top).  Keys:
    ``decode_weight_bytes``, ``decode_int_gbs`` (the bytes times intsim's fastest decode),
    ``decode_bound_tok_s`` and, where the peer ran, ``decode_bound_ratio_llamacpp_q8``
    (the bound over llama.cpp Q8_0's fastest decode: the most any 8-bit-weight decode of
    intsim could reach against it here).  ``{}`` without the read bandwidth."""
    from .fastmodel import _stack_sources
    from .modelfile import load_model
    if "read_gbs_nt" not in r:
        return {}
    nbytes = sum(w.q.size for ws in _stack_sources(load_model(model_path)) for w in ws)
    out = {"decode_weight_bytes": int(nbytes),
           "decode_bound_tok_s": r["read_gbs_nt"] * 1e9 / nbytes}
    if r.get("decode_int_tok_s"):
        out["decode_int_gbs"] = nbytes * r["decode_int_tok_s"] / 1e9
    if r.get("decode_llamacpp_q8_tok_s"):
        out["decode_bound_ratio_llamacpp_q8"] = out["decode_bound_tok_s"] / r["decode_llamacpp_q8_tok_s"]
    return out


def gpu_bench(model_path: str, tokens: int = 256, decode: int = 32, golden_tokens: int = 32,
              seed: int = 0) -> dict:
    """The GPU rows (only where Numba sees a CUDA device; else ``{}``): prefill of
    ``tokens`` (best of 3), ``decode`` steps after a 64-token prefill, each against the CPU
    fused path in the same run, and a ``golden_tokens``-token golden export op by op on the
    GPU (MB/s).  Each after a warm-up call (compile, upload)."""
    from numba import cuda
    if not cuda.is_available():
        return {}
    import shutil
    import tempfile

    from .golden import export_golden
    from .llama import KVCache
    from .modelfile import load_model
    from .runner import forward, last_decline

    model = load_model(model_path)
    ids = np.random.default_rng(seed).integers(0, model.config.vocab_size,
                                               size=min(max(tokens, 64 + decode), model.config.max_pos))
    out = {"gpu": cuda.get_current_device().name.decode() if isinstance(
        cuda.get_current_device().name, bytes) else str(cuda.get_current_device().name)}
    for backend, key in (("cuda", "gpu"), ("numba", "cpu")):
        forward(model, ids[:8], backend=backend)
        best = min(_timed(lambda: forward(model, ids[:tokens], backend=backend)) for _ in range(3))
        out[f"prefill_{key}_tok_s"] = tokens / best
        cache = KVCache.empty(model, 64 + decode + 1)
        forward(model, ids[:64], cache, backend=backend)
        dt = _timed(lambda: [forward(model, ids[64 + i:65 + i], cache, backend=backend)
                             for i in range(decode)])
        out[f"decode_{key}_tok_s"] = decode / dt
        out[f"{key}_declined"] = last_decline()
    tmp = Path(tempfile.mkdtemp(prefix="intsim-golden-gpu-"))
    try:
        for backend, key in (("cuda", "gpu"), ("numba", "cpu")):
            export_golden(model, ids[:4], tmp.joinpath("warm"), backend=backend)
            t0 = time.perf_counter()
            man = export_golden(model, ids[:golden_tokens], tmp.joinpath(key), backend=backend)
            out[f"golden_{key}_mb_per_s"] = man["_bytes_written"] / 1e6 / (time.perf_counter() - t0)
            shutil.rmtree(tmp.joinpath("warm"), ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out["golden_gpu_tokens"] = golden_tokens
    return out


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _cpu_seconds() -> float:
    """CPU seconds of this process, all threads (user + system): a machine shared with
    other jobs stretches the wall time of a run far more than the CPU time it uses."""
    t = os.times()
    return t.user + t.system


def golden_bench(model_path: str, tokens: int = 256, seed: int = 0) -> dict:
    """Time ``intsim golden`` on a ``tokens``-token prompt of seeded random ids: seconds,
    bytes written (npy + hex, stages on), MB/s of wall time and of the process's CPU time,
    and the capture overhead against a plain
    forward of the same prompt (the fused fast path) and against the op-by-op path alone
    (a tap that keeps nothing).  Each after a warm-up run (JIT compile); the dump goes to
    a temporary directory that is removed afterwards."""
    import shutil
    import tempfile

    from .golden import export_golden
    from .runner import forward
    from .modelfile import load_model, model_hash

    model = load_model(model_path)
    T = min(tokens, model.config.max_pos)
    ids = np.random.default_rng(seed).integers(0, model.config.vocab_size, size=T)

    class _Null:                       # op-aware tap that keeps nothing: the op-by-op cost
        takes_op_calls = True

        def __call__(self, name, value, call=None):
            pass

    tmp = Path(tempfile.mkdtemp(prefix="intsim-golden-bench-"))
    try:
        export_golden(model, ids[:4], tmp.joinpath("warm"), model_sha256=model_hash(model_path))
        forward(model, ids[:4])
        t0 = time.perf_counter()
        forward(model, ids)
        t_plain = time.perf_counter() - t0
        t0 = time.perf_counter()
        forward(model, ids, tap=_Null())
        t_ops = time.perf_counter() - t0
        c0, t0 = _cpu_seconds(), time.perf_counter()
        man = export_golden(model, ids, tmp.joinpath("dump"), model_sha256=model_hash(model_path))
        t_exp, c_exp = time.perf_counter() - t0, _cpu_seconds() - c0
        nbytes = man["_bytes_written"]
        files = sum(1 for _ in tmp.joinpath("dump").iterdir())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"golden_tokens": int(T), "golden_seconds": t_exp, "golden_mb": nbytes / 1e6,
            "golden_files": files, "golden_ops": len(man["ops"]),
            "golden_mb_per_s": nbytes / 1e6 / t_exp, "golden_cpu_s": c_exp,
            "golden_mb_per_cpu_s": nbytes / 1e6 / c_exp if c_exp > 0 else None,
            "golden_plain_forward_s": t_plain,
            "golden_op_by_op_forward_s": t_ops, "golden_overhead_ratio": t_exp / t_plain,
            "golden_overhead_vs_op_by_op": t_exp / t_ops}


#: the operations of the model table's columns (converters.modelbench.OPS) and their heads
MODEL_OPS = (("decode", "decode"), ("prefill", "prefill, all logits"),
             ("prefill_last", "prefill, last logits"))


def model_table(r: dict) -> list:
    """The whole-model rows of ``intsim bench --model`` (converters.modelbench): per peer,
    tok/s of its fastest round / its median one and intsim's ratio to it (fastest), its
    peak memory; a peer that is not installed or failed says so."""
    p = r.get("model_protocol", {})
    lines = [f"  tok/s, fastest / median of {r.get('model_rounds', '?')} interleaved rounds, "
             f"{p.get('threads', '?')} threads, each peer in its own process; (ratio) = intsim / peer",
             f"    decode: {p.get('decode_tokens', '?')} greedy steps after a {p.get('prompt_len', '?')}"
             f"-token prompt; prefill: {p.get('prefill_len', '?')} tokens in one call",
             f"  {'':<26} " + " ".join(f"{h:>25}" for _, h in MODEL_OPS) + f" {'peak RSS':>9}"]
    for name, label, ops in r.get("model_peers", []):
        cells = []
        for op, _ in MODEL_OPS:
            t, tm = r.get(f"{op}_{name}_tok_s"), r.get(f"{op}_{name}_tok_s_median")
            q = r.get(f"{op}_ratio" if name == "torch" else f"{op}_ratio_{name}")
            cells.append("-" if op not in ops else "n/a" if not t else
                         f"{t:.1f} / {tm:.1f}" + (f" ({q:.2f}x)" if q else ""))
        rss = r.get(f"{name}_peak_rss_mib")
        lines.append(f"  {label:<26} " + " ".join(f"{c:>25}" for c in cells) +
                     f" {f'{rss:.0f} MiB' if rss else 'n/a':>9}")
        if r.get(f"{name}_error"):
            lines.append(f"    {label} failed: {r[f'{name}_error']}")
    for key, who in (("torch_note", "PyTorch"), ("llamacpp_note", "llama.cpp")):
        if r.get(key):
            lines.append(f"  {who}: {r[key]}")
    return lines


def format_table(r: dict) -> str:
    lines = [f"intsim bench ({'quick' if r['quick'] else 'full'}; best of >= {r['repeats']} runs "
             f"and >= {r['min_time_s']:g} s per timing; {r['dtype']})",
             f"  {'shape':<34} {'int GOP/s':>10} {'f32 GOP/s':>10} {'ratio':>7} "
             f"{'dot GOP/s':>10} {'di_matmul':>10} {'exact':>6}"]
    for name in ("gemm", "gemv"):
        s = r[f"{name}_shape"]
        shape = f"{name.upper()} ({s['M']}x{s['K']}).({s['K']}x{s['N']})"
        lines.append(f"  {shape:<34} {r[f'{name}_int_gops']:>10.1f} {r[f'{name}_f32_gops']:>10.1f} "
                     f"{r[f'{name}_ratio']:>6.2f}x {r[f'{name}_int_dot_gops']:>10.1f} "
                     f"{r[f'{name}_di_matmul_gops']:>10.1f} {str(r[f'{name}_exact']):>6}")
    if "gemm_int_gops_median" in r:          # (a result of an older bench has none of these)
        lines.append(f"  median GOP/s: GEMM int {r['gemm_int_gops_median']:.1f}, f32 "
                     f"{r['gemm_f32_gops_median']:.1f}; GEMV int {r['gemv_int_gops_median']:.1f}, "
                     f"f32 {r['gemv_f32_gops_median']:.1f}")
    if "read_gbs_1t" in r:
        lines.append(f"  tile ISA {r['isa']}; memory read {r['read_gbs_1t']:.1f} GB/s (1 thread), "
                     f"{r['read_gbs_nt']:.1f} GB/s ({r['read_threads']} threads), "
                     f"{r['read_bytes'] >> 20} MiB")
    if "gemv_packed_1t_gbs" in r:
        lines.append(f"  GEMV weight stream: int_matmul {r['gemv_int_gbs']:.1f} GB/s; packed decode "
                     f"kernel {r['gemv_packed_1t_gbs']:.1f} GB/s (1 thread, median "
                     f"{r['gemv_packed_1t_gbs_median']:.1f}), {r['gemv_packed_par_gbs']:.1f} GB/s "
                     f"(threads, median {r['gemv_packed_par_gbs_median']:.1f})")
    m = r["machine"]
    lines.append(f"  cpu: {m['cpu']}, {m['cores']} cores, numba threads {m['numba_threads']}, "
                 f"BLAS {m['blas']}, numpy {m['numpy']}, numba {m['numba']}")
    lines.append("  int = tiled int8 kernel; dot = simple kernel; di_matmul = whole op "
                 "(A = W = 8, per-channel); ops = 2MNK")
    if "model" in r:
        lines.append(f"  model {r['model']} ({r['int_file_mib']:.0f} MiB; float checkpoint "
                     f"{r.get('float_file_mib', 0):.0f} MiB)")
        lines += model_table(r)
        if "decode_bound_tok_s" in r:
            ll = r.get("decode_bound_ratio_llamacpp_q8")
            gbs = r.get("decode_int_gbs")
            lines.append(f"  decode roofline: a step reads {r['decode_weight_bytes'] / 1e6:.1f} MB of "
                         "weights; " + (f"intsim's fastest decode streams them at {gbs:.1f} GB/s; "
                                        if gbs else "") + "at the measured read rate of "
                         f"{r['read_gbs_nt']:.1f} GB/s no decode exceeds "
                         f"{r['decode_bound_tok_s']:.0f} tok/s"
                         + (f" ({ll:.2f}x llama.cpp Q8_0's fastest)" if ll else ""))
        lines.append("  integer forward: " + ("fused path" if r.get("fused_declined") is None else
                                              f"op by op (fused path declined: {r['fused_declined']})"))
    if "gpu" in r:
        lines.append(f"  GPU {r['gpu']}: prefill {r['prefill_gpu_tok_s']:.0f} tok/s (CPU "
                     f"{r['prefill_cpu_tok_s']:.0f}), decode {r['decode_gpu_tok_s']:.1f} tok/s (CPU "
                     f"{r['decode_cpu_tok_s']:.1f}), golden export of {r['golden_gpu_tokens']} tokens "
                     f"{r['golden_gpu_mb_per_s']:.0f} MB/s (CPU {r['golden_cpu_mb_per_s']:.0f})")
        for dt in ("float32", "bfloat16"):
            if f"prefill_gpu_torch_{dt}_tok_s" in r:
                lines.append(f"  PyTorch {dt} on the same GPU: prefill "
                             f"{r[f'prefill_gpu_torch_{dt}_tok_s']:.0f} tok/s, decode "
                             f"{r[f'decode_gpu_torch_{dt}_tok_s']:.1f} tok/s")
    if "golden_seconds" in r:
        lines.append(f"  golden export, {r['golden_tokens']}-token prompt: {r['golden_seconds']:.1f} s, "
                     f"{r['golden_mb']:.0f} MB in {r['golden_files']} files ({r['golden_ops']} ops), "
                     f"{r['golden_mb_per_s']:.0f} MB/s ({r['golden_cpu_s']:.1f} CPU s, "
                     f"{r['golden_mb_per_cpu_s']:.0f} MB per CPU s); {r['golden_overhead_ratio']:.1f}x a plain forward "
                     f"({r['golden_plain_forward_s']:.2f} s), {r['golden_overhead_vs_op_by_op']:.1f}x the "
                     f"op-by-op path ({r['golden_op_by_op_forward_s']:.2f} s)")
    if "cold_start_s" in r:
        lines.append(f"  cold start ('intsim run' {r['cold_start_model']}, empty Numba cache): "
                     f"first token {r['cold_start_s']:.1f} s, exit {r['cold_start_total_s']:.1f} s")
        lines.append(f"    ({r['cold_start_cpu_s']:.1f} s CPU; compile notice "
                     f"{'shown' if r['cold_start_notice'] else 'MISSING'}); warm cache: first "
                     f"token {r['warm_start_s']:.1f} s, exit {r['warm_start_total_s']:.1f} s")
    elif "cold_start_note" in r:
        lines.append(f"  cold start: not measured, {r['cold_start_note']}")
    return "\n".join(lines)
