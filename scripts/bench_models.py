"""Integer model files side by side: prefill and decode speed of each, in one process,
interleaved round by round (the order rotated each round), min and median; the file size;
and each model's ratio against the first.  For options that change the weights or widths
(docs/RESULTS.md, "Two-step group scales"; issue 15's speed and size of each option).

    .venv/bin/python scripts/bench_models.py MODEL [MODEL ...] [--rounds 5] [--prefill 256] [--decode 32]

Timed: ``runner.forward`` (the fused path where it runs the model, else the graph) of
``--prefill`` seeded token ids from an empty cache, all positions' logits; then
``--decode`` single-token steps on that cache, each fed the previous step's argmax.  Each
model is loaded and warmed (one short forward) before the first round.  Threads: what
``NUMBA_NUM_THREADS`` gives (the machine's cores by default).  Prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from intsim import runner
from intsim.head import argmax
from intsim.llama import KVCache
from intsim.modelfile import load_model


def _one_round(model, ids: np.ndarray, decode: int) -> tuple[float, float]:
    """(prefill seconds, decode seconds) of one round."""
    cache = KVCache.empty(model, ids.size + decode)
    t0 = time.perf_counter()
    logits, _ = runner.forward(model, ids, cache)
    t1 = time.perf_counter()
    nxt = int(argmax(logits[-1:])[0])
    for _ in range(decode):
        logits, _ = runner.forward(model, np.array([nxt]), cache)
        nxt = int(argmax(logits)[0])
    return t1 - t0, time.perf_counter() - t1


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="scripts/bench_models.py", description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="+", metavar="MODEL", help="integer model files (the first is the baseline)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    p.add_argument("--prefill", type=int, default=256, help="prompt tokens (default 256)")
    p.add_argument("--decode", type=int, default=32, help="decode steps after the prompt (default 32)")
    a = p.parse_args(argv)
    if a.rounds < 1 or a.prefill < 1 or a.decode < 0:
        p.error("--rounds and --prefill must be at least 1, --decode at least 0")
    models = []
    for f in a.models:
        if not Path(f).is_file():
            p.error(f"{f}: no such model file")
        m = load_model(f)
        ids = np.random.default_rng(0).integers(0, m.config.vocab_size, a.prefill)
        if ids.size + a.decode > m.config.max_pos:
            p.error(f"{f}: --prefill + --decode = {ids.size + a.decode} exceeds its {m.config.max_pos} positions")
        _one_round(m, ids[:8], 2)                          # compile and warm
        models.append((f, m, ids))
    times = {f: ([], []) for f, _, _ in models}
    for r in range(a.rounds):
        for f, m, ids in models[r % len(models):] + models[:r % len(models)]:
            pre, dec = _one_round(m, ids, a.decode)
            times[f][0].append(pre)
            times[f][1].append(dec)
    out = {"rounds": a.rounds, "prefill_tokens": a.prefill, "decode_steps": a.decode, "models": []}
    for f, m, _ in models:
        pre, dec = times[f]
        row = {"model": f, "file_mib": round(Path(f).stat().st_size / 2 ** 20, 1),
               "fused": runner.fused_status(m) is None,
               "prefill_tok_s_best": round(a.prefill / min(pre), 1),
               "prefill_tok_s_median": round(a.prefill / statistics.median(pre), 1)}
        if a.decode:
            row["decode_tok_s_best"] = round(a.decode / min(dec), 1)
            row["decode_tok_s_median"] = round(a.decode / statistics.median(dec), 1)
        out["models"].append(row)
    base = out["models"][0]
    for row in out["models"]:
        for k in [k for k in row if k.endswith("_median")]:
            row[k.replace("_tok_s_median", "_ratio_median")] = round(row[k] / base[k], 3)
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
