"""The GPU backend against the CPU: whole forwards, bit for bit.

    python scripts/cuda_check.py [--models synthetic,FILE.intsim,...] [--synthetic NAMES]
                                 [--tokens 64] [--decode 8] [--golden T] [--speed] [--profile]

For each model: a prefill of ``--tokens`` seeded token ids on ``backend="cuda"`` against the
op-by-op graph on the reference backend (synthetic models) or the CPU fused path (model
files; the CPU paths are held equal to the graph by the test suite), then ``--decode``
decode steps through one KV cache, and a packed batch of three prompts.  Logits and their
scales must be identical; prints one line per check and exits 1 on any difference.  Runs
on the GPU machine, and without a GPU under NUMBA_ENABLE_CUDASIM=1 (tests/test_cuda.py,
small synthetic models only: the simulator runs every thread in Python).
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from intsim import llama, runner
from intsim.llama import KVCache
from intsim.options import Spec

SYNTHETIC = {
    "default": dict(),
    "w4a4_g32_mha": dict(n_kv_heads=4, w_bits=4, a_bits=4, group_size=32),
    "w4a4_head8": dict(w_bits=4, a_bits=4, head_a_bits=8),
    "down_rot32": dict(down_rot=32),          # ffn 96: three Hadamard blocks of 32 (SPEC 7.6)
    "w4a4_pv12": dict(w_bits=4, a_bits=4, pv_bits=12),
    "alpha_rowmax_divide": dict(alpha=True, spec=Spec(sigmoid_frame="rowmax", softmax_div="divide")),
    "half_away_m16": dict(spec=Spec(m_bits=16, k_bits=12, rounding="half_away")),
    "paper_range": dict(spec=Spec.paper()),
    "norm_weights_fixed_floor": dict(norm_weights=True, spec=Spec(norm_preshift="fixed",
                                                                rounding="floor", rope_drop_bits=6)),
}


def same(a, b) -> bool:
    return (np.array_equal(a[0], b[0]) and np.array_equal(a[1].m, b[1].m)
            and np.array_equal(a[1].k, b[1].k))


def check(name: str, model, ids: np.ndarray, decode: int, reference: str) -> bool:
    ok = True
    t = time.time()
    ref = llama.forward(model, ids, backend="reference") if reference == "reference" else \
        runner.forward(model, ids, backend="numba")
    t_ref = time.time() - t
    t = time.time()
    got = runner.forward(model, ids, backend="cuda")
    t_gpu = time.time() - t
    if runner.last_decline() is not None:
        print(f"FAIL {name}: the GPU path declined: {runner.last_decline()}")
        return False
    ok &= same(got, ref)
    print(f"{'ok  ' if same(got, ref) else 'FAIL'} {name}: prefill of {ids.size} tokens "
          f"({reference} {t_ref:.2f} s, cuda {t_gpu:.2f} s)")
    n = min(decode, ids.size - 1)
    cache = KVCache.empty(model, ids.size)
    pre = runner.forward(model, ids[:ids.size - n], cache, backend="cuda")
    steps = [pre] + [runner.forward(model, ids[i:i + 1], cache, backend="cuda")
                     for i in range(ids.size - n, ids.size)]
    dec = (np.concatenate([s[0] for s in steps]),
           type(ref[1])(np.concatenate([s[1].m for s in steps]), np.concatenate([s[1].k for s in steps])))
    print(f"{'ok  ' if same(dec, ref) else 'FAIL'} {name}: prefill {ids.size - n} + {n} decode steps")
    ok &= same(dec, ref)
    cpu_cache = KVCache.empty(model, ids.size)       # the GPU's cache, continued on the CPU
    runner.forward(model, ids[:3], cpu_cache, backend="cuda")
    rest = runner.forward(model, ids[3:], cpu_cache, backend="numba")
    ok &= np.array_equal(rest[0], ref[0][3:])
    print(f"{'ok  ' if np.array_equal(rest[0], ref[0][3:]) else 'FAIL'} {name}: a GPU-written "
          f"cache continued on the CPU")
    prompts = [p for p in np.array_split(ids, 3) if p.size]
    batch = runner.forward_batch(model, prompts, backend="cuda")
    alone = [runner.forward(model, p, backend="numba")[0] for p in prompts]
    good = all(np.array_equal(a, b) for a, b in zip(batch, alone))
    print(f"{'ok  ' if good else 'FAIL'} {name}: packed batch of {len(prompts)} prompts")
    return bool(ok and good)


def golden_check(name: str, model, ids: np.ndarray, model_path: str | None = None) -> bool:
    """``intsim golden`` op by op on the GPU (``backend="cuda"``) against the CPU: every
    tensor file byte-identical; the manifests equal but for the backend they name."""
    import filecmp
    import json
    import tempfile
    from pathlib import Path
    from intsim.golden import export_golden
    with tempfile.TemporaryDirectory() as tmp:
        dirs = {}
        for backend in ("numba", "cuda"):
            d = Path(tmp) / backend
            export_golden(model, ids, d, backend=backend, model_path=model_path)
            dirs[backend] = d
        files = sorted(p.name for p in dirs["numba"].iterdir())
        same_names = files == sorted(p.name for p in dirs["cuda"].iterdir())
        diff = [f for f in files if f != "manifest.json"
                and not filecmp.cmp(dirs["numba"] / f, dirs["cuda"] / f, shallow=False)]
        mans = [json.loads((dirs[b] / "manifest.json").read_text()) for b in ("numba", "cuda")]
        for man in mans:                     # the one difference: the backend each op names
            man["run"].pop("backend", None)
            for op in man["ops"]:
                op.get("params", {}).pop("backend", None)
        good = same_names and not diff and mans[0] == mans[1]
    print(f"{'ok  ' if good else 'FAIL'} {name}: golden export of {ids.size} tokens, {len(files)} "
          f"files{'' if not diff else ', differing: ' + ', '.join(diff[:5])}")
    return good


def speed(model, tokens: int = 256, decode: int = 32) -> dict:
    """Prefill of ``tokens`` seeded ids (best of 3, after a warm-up call) and ``decode``
    steps after a 64-token prefill, on the GPU and on the CPU fused path."""
    rng = np.random.default_rng(1)
    ids = rng.integers(0, model.config.vocab_size, max(tokens, 64 + decode))
    res = {}
    for backend in ("cuda", "numba"):
        runner.forward(model, ids[:8], backend=backend)                 # compile, upload
        best = 1e9
        for _ in range(3):
            t = time.perf_counter()
            runner.forward(model, ids[:tokens], backend=backend)
            best = min(best, time.perf_counter() - t)
        res[f"prefill{tokens}_{backend}_tok_s"] = tokens / best
        cache = KVCache.empty(model, 64 + decode + 1)
        runner.forward(model, ids[:64], cache, backend=backend)
        t = time.perf_counter()
        for i in range(decode):
            runner.forward(model, ids[64 + i:65 + i], cache, backend=backend)
        res[f"decode_{backend}_tok_s"] = decode / (time.perf_counter() - t)
        res[f"declined_{backend}"] = runner.last_decline()
    import numba
    res["numba_threads"] = numba.get_num_threads()
    return res


def profile(model, tokens: int = 256, decode: int = 8) -> dict:
    """Where a GPU forward's time goes: each kernel launch of intsim.cudapath (and the
    DI-MatMul kernel it launches from intsim.cudaops) timed from the
    host with a device synchronize before and after (launch cost included), summed per
    kernel, for a ``tokens`` prefill and for ``decode`` steps after a 64-token prefill;
    ``host`` is the rest of the wall time (allocations, copies, the layer loop)."""
    from numba import cuda
    import intsim.cudaops as co
    import intsim.cudapath as cp
    ids = np.random.default_rng(2).integers(0, model.config.vocab_size, max(tokens, 64 + decode))
    spent: dict = {}

    class Timed:
        def __init__(self, name, kernel):
            self.name, self.kernel = name, kernel

        def __getitem__(self, conf):
            launch = self.kernel[conf]

            def run(*args):
                cuda.synchronize()
                t = time.perf_counter()
                launch(*args)
                cuda.synchronize()
                spent[self.name] = spent.get(self.name, 0.0) + time.perf_counter() - t
            return run

    names = [(mod, n) for mod in (cp, co) for n in vars(mod) if n.startswith("_k_")]
    saved = {(mod, n): getattr(mod, n) for mod, n in names}
    runner.forward(model, ids[:8], backend="cuda")                       # compile, upload
    report = {}
    try:
        for mod, n in names:
            setattr(mod, n, Timed(n, saved[(mod, n)]))
        pre = min(64, model.config.max_pos - decode - 1)
        cache = KVCache.empty(model, pre + decode + 1)
        for label, setup, run in (
                (f"prefill{tokens}", lambda: None,
                 lambda: runner.forward(model, ids[:tokens], backend="cuda")),
                (f"decode_x{decode}", lambda: runner.forward(model, ids[:pre], cache, backend="cuda"),
                 lambda: [runner.forward(model, ids[pre + i:pre + i + 1], cache, backend="cuda")
                          for i in range(decode)])):
            setup()
            spent.clear()
            t = time.perf_counter()
            run()
            wall = time.perf_counter() - t
            row = {k: round(v * 1e3, 2) for k, v in sorted(spent.items(), key=lambda kv: -kv[1])}
            row["host"] = round((wall - sum(spent.values())) * 1e3, 2)
            row["wall"] = round(wall * 1e3, 2)
            report[label + "_ms"] = row
    finally:
        for mod, n in names:
            setattr(mod, n, saved[(mod, n)])
    return report


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="cuda_check", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="synthetic",
                   help="comma-separated: 'synthetic' (the spec variants) and/or model files")
    p.add_argument("--synthetic", default=",".join(SYNTHETIC),
                   help="which synthetic spec variants (default: all)")
    p.add_argument("--tokens", type=int, default=24)
    p.add_argument("--decode", type=int, default=4)
    p.add_argument("--golden", type=int, default=0, metavar="T",
                   help="also export golden vectors of T tokens op by op on the GPU and the CPU "
                        "and require byte-identical files")
    p.add_argument("--profile", action="store_true",
                   help="also time each GPU kernel of a 256-token prefill and of decode steps "
                        "(model files; synchronizes around every launch)")
    p.add_argument("--speed", action="store_true",
                   help="also time prefill (256 tokens) and decode on the GPU and the CPU (model files)")
    a = p.parse_args(argv)
    rng = np.random.default_rng(0)
    ok = True
    for item in a.models.split(","):
        if item == "synthetic":
            from converters.synthetic import make_model
            for name in a.synthetic.split(","):
                m = make_model(5, **SYNTHETIC[name])
                ids = rng.integers(0, m.config.vocab_size, min(a.tokens, m.config.max_pos))
                ok &= check(name, m, ids, a.decode, "reference")
                if a.golden:
                    ok &= golden_check(name, m, ids[:a.golden])
        else:
            from intsim.modelfile import load_model
            m = load_model(item)
            ids = rng.integers(0, m.config.vocab_size, a.tokens)
            ok &= check(item, m, ids, a.decode, "numba")
            if a.golden:
                ok &= golden_check(item, m, ids[:a.golden], model_path=item)
            if a.profile:
                import json
                print(json.dumps(profile(m)))
            if a.speed:
                import json
                print(json.dumps(speed(m)))
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
