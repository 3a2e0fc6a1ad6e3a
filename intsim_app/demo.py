"""``intsim demo``: a one-layer synthetic LLaMA built on the float side
(``converters.synthetic.make_demo_model``), run through the integer graph
(:func:`intsim.demo.run_chain`) and printed op by op."""
from __future__ import annotations

import json

import numpy as np

from intsim.demo import digest, run_chain
from intsim.model import IntModel
from intsim.qtensor import QTensor


def _row(name: str, t) -> dict:
    if isinstance(t, QTensor):
        return {"op": name, "shape": list(t.q.shape), "dtype": str(t.q.dtype), "bits": t.bits,
                "signed": t.signed, "m0": int(t.scale.m.flat[0]), "k0": int(t.scale.k.flat[0]),
                "sha256": digest(t)}
    bits = max(2, int(np.abs(t.astype(np.int64)).max(initial=0)).bit_length() + 1)   # as QTensor.exact
    return {"op": name, "shape": list(t.shape), "dtype": str(t.dtype), "bits": bits, "signed": True,
            "m0": None, "k0": None, "sha256": digest(t)}


def main(model: IntModel, seed: int = 0, json_out: bool = False, tokens: int = 12) -> int:
    """Print the op table of ``tokens`` seeded token ids (``seed``) through ``model``."""
    c, w = model.config, model.widths
    ids = np.random.default_rng(seed).integers(0, c.vocab_size, tokens)
    taps = run_chain(model, ids)
    rows = [_row(n, t) for n, t in taps]
    if json_out:
        print(json.dumps({"seed": seed, "tokens": ids.tolist(), "ops": rows}))
        return 0
    print(f"intsim demo: a {c.n_layers}-layer synthetic LLaMA (dim {c.dim}, {c.n_heads} heads, "
          f"ffn {c.ffn_dim}, W{w.w_bits} g{w.group_size} / A{w.a_bits}), {tokens} tokens, seed {seed}")
    print(f"{'op':<24} {'shape':<14} {'dtype':<7} {'bits':>4}  {'row-0 scale m*2^-k':<20} sha256")
    for r in rows:
        scale = "(exact accumulators)" if r["m0"] is None else f"{r['m0']:>6} * 2^-{r['k0']:<9}"
        print(f"{r['op']:<24} {str(tuple(r['shape'])):<14} {r['dtype']:<7} {r['bits']:>4}  "
              f"{scale:<20} {r['sha256']}")
    print("next tokens (integer argmax, lowest id on ties):", taps[-1][1].q[:, 0].tolist())
    return 0
