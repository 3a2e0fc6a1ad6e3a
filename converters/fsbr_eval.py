"""Perplexity of the fake-quantized model FSBR trains against, with quantizers switched off.

``python -m converters.fsbr_eval MODEL_DIR --wbits W --abits A [--calib CALIB]
[--exact NAME ... | --only NAME ...] --text FILE [--max-tokens N] [--ctx N]`` runs the whole model through
``converters.fsbr.quant_block`` (the float mirror of what ``intsim`` executes: the same
per-token quantizers, DI-Norm weight, DI-ClippedSoftmax and DI-SwiGLU emulation), the
8-bit per-row embedding and the A-bit head input with the 8-bit per-channel LM head, and
scores the text exactly as ``intsim ppl`` does (non-overlapping windows, positions
1..n-1, log-softmax in float64).

Two uses: (1) it checks the mirror: its perplexity should sit next to the integer
model's; (2) attribution: ``--exact`` leaves chosen quantizers out (names in
``converters.fsbr.QUANTIZERS`` plus ``embed``, ``head_in``, ``head_w``), so the share of
the integer/float gap that each one causes can be measured in minutes of CPU, without
converting a model per variant.  PyTorch is needed.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections import OrderedDict

import numpy as np

from . import fsbr
from .calib import read_calib

EXTRA = ("embed", "head_in", "head_w")


def _load_layer(L, sd: dict):
    """Set a _Layer's parameters from one layer of a calibration file."""
    torch = fsbr._torch()
    cfg = L.cfg
    L.smooth, L.lwc = OrderedDict(), OrderedDict()
    for k, v in sd.items():
        t = torch.as_tensor(np.asarray(v, dtype=np.float32))
        if k == "qkt_smooth_scale":
            half = t.reshape(cfg.n_kv_heads, 2, cfg.head_dim // 2)
            if not torch.equal(half[:, 0], half[:, 1]):
                raise fsbr.FSBRError("qkt_smooth_scale is not tied in RoPE pairs")
            L.smooth["qkt_half"] = half[:, 0].clone()
        elif k.endswith("_smooth_scale"):
            L.smooth[k] = t.clamp(min=fsbr.SCALE_FLOOR)
        elif k.endswith("bound_factor"):
            L.lwc[k] = t
        elif k.endswith("_smooth_shift"):
            continue
        else:
            raise fsbr.FSBRError(f"unknown calibration parameter {k!r}")


def fake_quant_ppl(model_dir, settings: "fsbr.FSBRSettings", text, calib=None, exact=(),
                   max_tokens: int | None = 4096, ctx: int = 512, threads: int | None = None,
                   log=None) -> dict:
    """Perplexity of the fake-quantized model (see the module docstring)."""
    torch = fsbr._torch()
    from .embedding import quantize_embedding
    from .evaluate import nll_from_logits, perplexity, read_text_tokens
    from .float_model import load_hf_weights
    from .weights import dequantize_weight, quantize_weight

    bad = sorted(set(exact) - set(fsbr.QUANTIZERS) - set(EXTRA))
    if bad:
        raise fsbr.FSBRError(f"exact: unknown quantizer {bad[0]!r} (one of "
                             f"{', '.join(fsbr.QUANTIZERS + EXTRA)})")
    if threads is not None:
        torch.set_num_threads(int(threads))
    t0 = time.perf_counter()
    cfg, w = load_hf_weights(model_dir)
    st, spec = settings, settings.spec
    params = read_calib(calib) if calib is not None else None
    dev, dt = torch.device("cpu"), torch.float32
    layers = []
    with torch.no_grad():
        for i in range(cfg.n_layers):
            L = fsbr._Layer(i, w, cfg, st, dev, dt)
            if params is not None:
                _load_layer(L, params[i])
            qw = L.quant_weights()
            if "weights" in exact or "norm_w" in exact:
                W, g1, g2, _ = L.smoothed()
                qw = (W if "weights" in exact else qw[0], g1 if "norm_w" in exact else qw[1],
                      g2 if "norm_w" in exact else qw[2], qw[3])
            layers.append((L, qw))
    emb = w["model.embed_tokens.weight"]
    head = w["lm_head.weight"].astype(np.float64) * w["model.norm.weight"][None, :]
    if "head_w" not in exact:
        head = dequantize_weight(quantize_weight(head, 8, cfg.dim, 16))
    head_t = torch.as_tensor(head, dtype=dt)
    rope = fsbr._Rope(cfg, ctx, dev, dt, spec.rope_frac_bits)
    tokens = read_text_tokens(text, f"{model_dir}/tokenizer.json", max_tokens)

    def nll(window):
        ids = np.asarray(window)
        if "embed" in exact:
            e = emb[ids]
        else:
            q, m, k = quantize_embedding(emb[ids], 8, spec.m_bits, spec.k_range)
            e = q.astype(np.float64) * np.ldexp(m.astype(np.float64), -k.astype(np.int32))[:, None]
        with torch.no_grad():
            x = torch.as_tensor(e, dtype=dt)[None]
            for L, qw in layers:
                x = fsbr.quant_block(L, x, rope, qw, frozenset(exact))
            h = x[0] * torch.rsqrt(x[0].pow(2).mean(-1, keepdim=True))
            if "head_in" not in exact:
                h = fsbr.fq_act(h, st.a_bits, spec)
            logits = (h @ head_t.T).numpy()
        return nll_from_logits(logits, ids)

    res = perplexity(nll, tokens, ctx, log)
    return {"ppl_fq": res["ppl"], "tokens": res["tokens"], "windows": res["windows"],
            "ctx": ctx, "calib": None if calib is None else str(calib),
            "w_bits": st.w_bits, "a_bits": st.a_bits, "exact": sorted(exact),
            "seconds": round(time.perf_counter() - t0, 1)}


def main(argv=None, prog="python -m converters.fsbr_eval") -> int:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    p.add_argument("model_dir", metavar="MODEL_DIR")
    p.add_argument("--calib", default=None, metavar="CALIB")
    p.add_argument("--wbits", type=int, default=8)
    p.add_argument("--abits", type=int, default=8)
    p.add_argument("--group-size", type=int, default=0)
    p.add_argument("--exact", nargs="+", action="extend", default=[], metavar="NAME",
                   choices=fsbr.QUANTIZERS + EXTRA, help="quantizers to leave out")
    p.add_argument("--only", nargs="+", action="extend", default=[], metavar="NAME",
                   choices=fsbr.QUANTIZERS + EXTRA,
                   help="the quantizers to keep; every other one is left out (the cost "
                        "of these alone)")
    p.add_argument("--text", required=True, metavar="FILE")
    p.add_argument("--max-tokens", type=int, default=4096)
    p.add_argument("--ctx", type=int, default=512)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--spec", default=None)
    a = p.parse_args(argv)
    if a.only and a.exact:
        p.error("--only and --exact exclude each other")
    exact = [n for n in fsbr.QUANTIZERS + EXTRA if n not in a.only] if a.only else a.exact
    from .convert import parse_spec
    try:
        st = fsbr.FSBRSettings(w_bits=a.wbits, a_bits=a.abits, group_size=a.group_size,
                               samples=1, seqlen=2, spec=parse_spec(a.spec))
        r = fake_quant_ppl(a.model_dir, st, a.text, a.calib, exact, a.max_tokens, a.ctx,
                           a.threads)
    except (fsbr.IntsimError, ImportError, ValueError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
