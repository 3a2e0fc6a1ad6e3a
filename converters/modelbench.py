"""Whole-model speed and memory: the integer model against PyTorch fp32 eager and PyTorch's
int8 dynamic quantization (``quantize_dynamic`` on the linears), same machine.

Each side runs in its own Python subprocess (so its peak resident memory is its own and
neither warms the other's caches), with the same protocol as ``torch_llama.bench_torch``:

* prefill: ``prefill_len`` seeded random tokens in one call, best of ``repeats``;
* decode: an untimed prefill of ``prompt_len`` tokens, then ``decode_tokens`` greedy steps
  through the KV cache (argmax feeds the next step), timed together, best of ``repeats``.

Peak memory is the subprocess's ``ru_maxrss`` (the interpreter and libraries included:
PyTorch's import alone is a few hundred MB).  File sizes: the integer model file against
the float checkpoint's weight files.
"""
from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def time_prefill(m, ids) -> float:
    """Seconds for one fast-path prefill of ``ids`` (no cache)."""
    from intsim.runner import forward
    t0 = time.perf_counter()
    forward(m, ids)
    return time.perf_counter() - t0


def time_decode(m, prompt, decode_tokens: int) -> float:
    """Seconds for ``decode_tokens`` greedy one-token steps after prefilling ``prompt``
    into a fresh KV cache (the prefill itself is not timed)."""
    from intsim.head import argmax
    from intsim.llama import KVCache
    from intsim.runner import forward
    cache = KVCache.empty(m, len(prompt) + decode_tokens + 1)
    logits, _ = forward(m, prompt, cache)
    nxt = int(argmax(logits[-1:])[0])
    t0 = time.perf_counter()
    for _ in range(decode_tokens):
        logits, _ = forward(m, np.array([nxt]), cache)
        nxt = int(argmax(logits)[0])
    return time.perf_counter() - t0


def bench_int(model_path, prompt_len: int = 64, decode_tokens: int = 64, prefill_len: int = 256,
              repeats: int = 3, seed: int = 0) -> dict:
    from intsim.model import IntModel
    from intsim.modelfile import load_model
    m = model_path if isinstance(model_path, IntModel) else load_model(model_path)   # or a loaded model
    V = m.config.vocab_size
    rng = np.random.default_rng(seed)
    pre_ids = rng.integers(0, V, prefill_len)
    prompt = rng.integers(0, V, prompt_len)
    time_prefill(m, pre_ids)
    time_decode(m, prompt, decode_tokens)   # warm-up: JIT (cached on disk after the first time)
    best_p = min(time_prefill(m, pre_ids) for _ in range(repeats))
    best_d = min(time_decode(m, prompt, decode_tokens) for _ in range(repeats))
    return {"prefill_int_tok_s": prefill_len / best_p, "decode_int_tok_s": decode_tokens / best_d}


def _worker(kind: str, path: str) -> None:
    if kind == "int":
        res = bench_int(path)
    elif kind == "torch_int8":               # PyTorch's int8 dynamic quantization (CPU)
        from .torch_llama import bench_torch
        res = bench_torch(path, int8=True)
    elif kind.startswith("torch_cuda_"):      # the GPU peer: same protocol as gpu_bench's rows
        from .torch_llama import bench_torch
        res = bench_torch(path, prompt_len=64, decode_tokens=32, prefill_len=256, threads=1,
                          device="cuda", dtype=kind[len("torch_cuda_"):])
    else:
        from .torch_llama import bench_torch
        res = bench_torch(path)
    res["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(res))


def _spawn(kind: str, path) -> dict:
    code = f"from converters.modelbench import _worker; _worker({kind!r}, {str(path)!r})"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    for line in p.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    tail = (p.stderr or p.stdout).strip().splitlines()[-1:] or ["no output"]
    return {"error": tail[0]}


def torch_gpu_bench(model_path, float_dir=None, dtypes=("float32", "bfloat16")) -> dict:
    """PyTorch on the GPU, the peer of ``--backend cuda`` (rows only where torch sees a CUDA
    device; else ``{}``): prefill of 256 tokens and 32 decode steps after a 64-token prefill,
    per dtype, each in its own process: ``prefill_gpu_torch_<dtype>_tok_s``, ..."""
    try:
        import torch
    except ImportError:
        return {}
    if not torch.cuda.is_available():
        return {}
    if float_dir is None:
        from intsim.modelfile import load_model
        from .ppl import float_reference_dir
        float_dir = float_reference_dir(load_model(model_path))
    out: dict = {}
    for dt in dtypes:
        r = _spawn(f"torch_cuda_{dt}", float_dir)
        if "error" in r:
            out[f"gpu_torch_{dt}_error"] = r["error"]
            continue
        out[f"prefill_gpu_torch_{dt}_tok_s"] = r["prefill_torch_tok_s"]
        out[f"decode_gpu_torch_{dt}_tok_s"] = r["decode_torch_tok_s"]
    return out


def model_bench(model_path, float_dir=None) -> dict:
    """Integer model vs PyTorch fp32 on the checkpoint it came from (if torch is installed)."""
    from intsim.modelfile import load_model
    model_path = Path(model_path)
    out = {"model": str(model_path), "int_file_mib": model_path.stat().st_size / 2 ** 20}
    ri = _spawn("int", model_path)
    out.update({k if k != "peak_rss_mib" else "int_peak_rss_mib": v for k, v in ri.items()})
    if float_dir is None:
        from .ppl import float_reference_dir
        float_dir = float_reference_dir(load_model(model_path))
    float_dir = Path(float_dir)
    out["float_file_mib"] = sum(f.stat().st_size for f in float_dir.glob("*.safetensors")) / 2 ** 20
    try:
        import torch  # noqa: F401
    except ImportError:
        out.update(decode_torch_tok_s=None, prefill_torch_tok_s=None,
                   torch_note="PyTorch not installed: pip install 'intsim[torch]'")
        return out
    rt = _spawn("torch", float_dir)
    out.update({k if k != "peak_rss_mib" else "torch_peak_rss_mib": v for k, v in rt.items()})
    r8 = _spawn("torch_int8", float_dir)
    names = {"prefill_torch_tok_s": "prefill_torch_int8_tok_s", "decode_torch_tok_s":
             "decode_torch_int8_tok_s", "peak_rss_mib": "torch_int8_peak_rss_mib",
             "error": "torch_int8_error"}
    out.update({names[k]: v for k, v in r8.items() if k in names})
    for name in ("decode", "prefill"):
        i, t = out.get(f"{name}_int_tok_s"), out.get(f"{name}_torch_tok_s")
        out[f"{name}_ratio"] = i / t if i and t else None
        t8 = out.get(f"{name}_torch_int8_tok_s")
        out[f"{name}_ratio_torch_int8"] = i / t8 if i and t8 else None
    return out
