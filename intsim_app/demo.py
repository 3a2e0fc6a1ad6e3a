"""``intsim demo``: the block's parameters from the float side (``converters.synthetic``),
then the integer chain (:func:`intsim.demo.run_chain`) printed op by op."""
from __future__ import annotations

import json

import numpy as np

from converters.synthetic import make_block   # the float "prepare" side, once
from intsim.demo import digest, run_chain


def main(seed: int = 0, json_out: bool = False, tokens: int = 12) -> int:
    blk = make_block(seed)
    ids = np.random.default_rng(seed).integers(0, blk.vocab, tokens)
    taps = run_chain(blk, ids)
    rows = [{"op": n, "shape": list(t.q.shape), "dtype": str(t.q.dtype), "bits": t.bits,
             "signed": t.signed, "m0": int(t.scale.m.flat[0]), "k0": int(t.scale.k.flat[0]),
             "sha256": digest(t)} for n, t in taps]
    if json_out:
        print(json.dumps({"seed": seed, "tokens": ids.tolist(), "ops": rows}))
        return 0
    print(f"intsim demo: one synthetic LLaMA block (dim {blk.dim}, {blk.n_heads} heads, ffn {blk.ffn}, "
          f"W4 g32 / A8), {tokens} tokens, seed {seed}")
    print(f"{'op':<12} {'shape':<14} {'dtype':<7} {'bits':>4}  {'row-0 scale m*2^-k':<20} sha256")
    for r in rows:
        print(f"{r['op']:<12} {str(tuple(r['shape'])):<14} {r['dtype']:<7} {r['bits']:>4}  "
              f"{r['m0']:>6} * 2^-{r['k0']:<9} {r['sha256']}")
    print("next tokens (integer argmax, lowest id on ties):", taps[-1][1].q[:, 0].tolist())
    return 0
