"""Mixed precision between output channels (MixLLM, arXiv 2412.14590): which output
channels of which linear layers keep 8-bit weights while the rest go to 4 bits.

Salience of output channel ``n`` of a linear ``y = x W^T`` is the loss increase its
low-bit quantization is expected to cause, to second order with the Fisher (squared
gradient) approximation of the Hessian on the channel's output:

    S_n = sum_t ( dL/dy[t, n] * dy[t, n] )^2,     dy[t, n] = x[t] . (Q_low(W)[n] - W[n])

over the calibration tokens ``t`` (``L`` = the summed next-token negative log-likelihood;
gradients from one float backward pass per sequence).  ``W`` and ``x`` are taken in the
form the converter quantizes (``--norm-gain fold``: γ folded into q/k/v/gate/up, x
without γ; ``channel``: as the checkpoint stores them).  Selection at one budget, the
fraction ``frac`` of all linear-layer weights kept at the high width:

* ``local``: in every linear, its ``ceil(frac * N)`` most salient channels;
* ``global``: all channels of all layers ranked together by salience per weight
  (``S_n / K``: a channel costs K weights), greedily until ``frac`` of the weights are
  high — the same number of high-width weights as ``local`` to within one channel, so
  the two are compared at equal average bits ``low + frac * (high - low)``.

Output: a safetensors file of ``layers.{i}.{linear}.row_bits`` uint8 vectors (linear
names as intsim's: wq wk wv wo w_gate w_up w_down) with the settings in its metadata,
read by ``intsim convert --row-bits FILE``.  PyTorch is needed (optional extra).

    python -m converters.mixllm /tmp/smollm2_hf --out out/mix-global.safetensors \\
        --frac 0.1 --scope global --low 4 --high 8 --group-size 128
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
from pathlib import Path

import numpy as np

from converters.weights import dequantize_weight, quantize_weight

#: TorchLlama's linear names -> intsim's (intsim.modelfile.LINEARS)
NAMES = {"wq": "wq", "wk": "wk", "wv": "wv", "wo": "wo", "wg": "w_gate", "wu": "w_up",
         "wd": "w_down"}
#: the linears whose input columns carry the preceding RMSNorm's γ under --norm-gain fold
GAMMA = {"wq": "ln1", "wk": "ln1", "wv": "ln1", "wg": "ln2", "wu": "ln2"}
SCOPES = ("global", "local")


class MixError(ValueError):
    """A bad argument or input of the MixLLM selection, naming it."""


def calib_windows(tokenizer_json: Path, text_path: Path, n: int, seqlen: int, seed: int):
    """``n`` random windows of ``seqlen`` token ids from ``text_path`` (fixed seed)."""
    from tokenizers import Tokenizer

    from converters.texts import TextsError, read_calibration_text
    try:
        text = read_calibration_text(text_path)
    except TextsError as exc:
        raise MixError(str(exc)) from None
    ids = np.array(Tokenizer.from_file(str(tokenizer_json)).encode(text).ids, dtype=np.int64)
    if ids.size < seqlen + 1:
        raise MixError(f"{text_path}: {ids.size} tokens, fewer than one window of {seqlen}")
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, ids.size - seqlen, size=n)
    return [ids[s:s + seqlen] for s in starts]


def channel_salience(model_dir, windows, *, low: int = 4, group_size: int = 128,
                     norm_gain: str = "fold", threads: int | None = None) -> dict:
    """``{(layer, intsim_name): S [N]}`` float64 salience per output channel (module doc)."""
    from converters.torch_llama import TorchLlama, require_torch
    torch = require_torch()
    if norm_gain not in ("fold", "channel"):
        raise MixError(f"norm_gain: {norm_gain!r} is not fold or channel")

    class _Recorder(TorchLlama):
        def _lin(self, i, name, h):
            y = h @ self.layers[i][name].T
            if torch.is_grad_enabled():
                y.retain_grad()
                self.rec.append((i, name, h.detach(), y))
            return y

    m = _Recorder.from_hf(model_dir, threads=threads)
    m.emb.requires_grad_(True)      # a graph from the input on: every linear output gets dL/dy
    # per linear: the weight as the converter quantizes it, and its low-bit error
    dW, gam = {}, {}
    for i, L in enumerate(m.layers):
        for name in NAMES:
            W = L[name].numpy().astype(np.float64)
            if norm_gain == "fold" and name in GAMMA:
                g = L[GAMMA[name]].numpy().astype(np.float64)
                if np.any(g == 0):
                    raise MixError(f"layer {i}: a zero RMSNorm gain; use --norm-gain channel")
                W = W * g[None, :]
                gam[(i, name)] = torch.from_numpy(g.astype(np.float32))
            G = group_size if group_size and W.shape[1] % group_size == 0 else W.shape[1]
            dW[(i, name)] = torch.from_numpy(
                (dequantize_weight(quantize_weight(W, low, G)) - W).astype(np.float32))
    S = {key: np.zeros(v.shape[0]) for key, v in dW.items()}
    F = torch.nn.functional
    for ids in windows:
        m.reset()
        m.rec = []
        t = torch.from_numpy(np.asarray(ids, dtype=np.int64))
        with torch.enable_grad():
            logits = m._forward(t)
            loss = F.cross_entropy(logits[:-1], t[1:], reduction="sum")
            loss.backward()
        with torch.no_grad():
            for i, name, h, y in m.rec:
                x = h / gam[(i, name)] if (i, name) in gam else h
                dy = x @ dW[(i, name)].T                              # [T, N]
                S[(i, name)] += ((y.grad * dy) ** 2).sum(0).double().numpy()
        m.rec = []
    return {(i, NAMES[n]): v for (i, n), v in S.items()}


def select(salience: dict, shapes: dict, frac: float, scope: str, low: int = 4,
           high: int = 8) -> dict:
    """``{(layer, name): row_bits uint8 [N]}``: ``high`` for the selected channels.

    ``shapes[(layer, name)] = (N, K)``.  ``frac`` in [0, 1]: the fraction of all the
    weights kept at ``high``; ``scope`` local or global (module doc).
    """
    if scope not in SCOPES:
        raise MixError(f"scope: {scope!r} is not one of {', '.join(SCOPES)}")
    if not 0.0 <= frac <= 1.0:
        raise MixError(f"frac: {frac} is outside [0, 1]")
    if not 2 <= low < high <= 8:
        raise MixError(f"low/high: need 2 <= low < high <= 8, got {low}/{high}")
    out = {key: np.full(shapes[key][0], low, dtype=np.uint8) for key in salience}
    if scope == "local":
        for key, s in salience.items():
            n_hi = math.ceil(frac * s.size)
            if n_hi:
                out[key][np.argsort(-s, kind="stable")[:n_hi]] = high
        return out
    keys = sorted(salience)
    per = np.concatenate([salience[k] / shapes[k][1] for k in keys])
    cost = np.concatenate([np.full(shapes[k][0], shapes[k][1]) for k in keys])
    owner = np.concatenate([np.full(shapes[k][0], j) for j, k in enumerate(keys)])
    row = np.concatenate([np.arange(shapes[k][0]) for k in keys])
    budget = frac * cost.sum()
    order = np.argsort(-per, kind="stable")
    taken = np.cumsum(cost[order]) <= budget + 0.5 * cost[order]   # to within one channel
    for j in order[taken]:
        out[keys[owner[j]]][row[j]] = high
    return out


def average_bits(row_bits: dict, shapes: dict) -> float:
    """Weight-count-weighted mean width of the linears."""
    num = sum(float(row_bits[k].astype(np.int64) @ np.full(shapes[k][0], shapes[k][1]))
              for k in row_bits)
    den = sum(shapes[k][0] * shapes[k][1] for k in row_bits)
    return num / den


def save_row_bits(path, row_bits: dict, meta: dict) -> Path:
    from safetensors.numpy import save_file
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({f"layers.{i}.{n}.row_bits": v for (i, n), v in sorted(row_bits.items())},
              str(path), metadata={"mixllm": json.dumps(meta, sort_keys=True)})
    return path


def read_row_bits(path, n_layers: int, shapes: dict, high: int) -> dict:
    """The per-linear row widths of a ``--row-bits`` file, checked against the model:
    every layer and linear present, shape [N], values in [2, high]."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file
    path = Path(path)
    if not path.is_file():
        raise MixError(f"{path}: " + ("not a file (a --row-bits selection is one safetensors "
                                      "file)" if path.exists() else "no such row-bits file"))
    try:
        t = load_file(str(path))
    except (OSError, SafetensorError) as e:
        raise MixError(f"{path}: not a readable safetensors file ({e})") from e
    out = {}
    for i in range(n_layers):
        for n in NAMES.values():
            key = f"layers.{i}.{n}.row_bits"
            if key not in t:
                raise MixError(f"{path}: tensor '{key}' is missing (a file for another model?)")
            v = t.pop(key)
            N = shapes[n][0]
            if v.dtype != np.uint8 or v.shape != (N,):
                raise MixError(f"{path}: tensor '{key}': {v.dtype} {v.shape}, expected uint8 ({N},)")
            if v.min() < 2 or v.max() > high:
                raise MixError(f"{path}: tensor '{key}': widths [{v.min()}, {v.max()}] outside "
                               f"[2, {high}] (--wbits is the highest width)")
            out[(i, n)] = v
    if t:
        raise MixError(f"{path}: unexpected tensor '{sorted(t)[0]}' (a file for another model?)")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m converters.mixllm", description=__doc__.split("\n\n")[0])
    p.add_argument("model_dir", help="Hugging Face LLaMA folder (float)")
    p.add_argument("--out", required=True, help="row-bits safetensors file to write")
    p.add_argument("--frac", type=float, default=0.1,
                   help="fraction of the linear weights kept at --high bits (default 0.1)")
    p.add_argument("--scope", choices=SCOPES, default="global")
    p.add_argument("--low", type=int, default=4)
    p.add_argument("--high", type=int, default=8)
    p.add_argument("--group-size", type=int, default=128,
                   help="weight group size of the low-bit error estimate (default 128)")
    p.add_argument("--norm-gain", choices=("fold", "channel"), default="fold")
    p.add_argument("--text", default=str(Path.home() / ".cache/intsim/texts/train_mix.txt"),
                   help="calibration text (never a held-out text; default train_mix.txt, "
                        "converters.texts)")
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--seqlen", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args(argv)
    try:
        md = Path(a.model_dir)
        wins = calib_windows(md / "tokenizer.json", Path(a.text), a.samples, a.seqlen, a.seed)
        sal = channel_salience(md, wins, low=a.low, group_size=a.group_size,
                               norm_gain=a.norm_gain, threads=a.threads)
        from converters.float_model import load_hf_weights
        cfg, w = load_hf_weights(md)
        hf = {"wq": "self_attn.q_proj", "wk": "self_attn.k_proj", "wv": "self_attn.v_proj",
              "wo": "self_attn.o_proj", "w_gate": "mlp.gate_proj", "w_up": "mlp.up_proj",
              "w_down": "mlp.down_proj"}
        shapes = {(i, n): w[f"model.layers.{i}.{hf[n]}.weight"].shape for (i, n) in sal}
        rb = select(sal, shapes, a.frac, a.scope, a.low, a.high)
        meta = {"frac": a.frac, "scope": a.scope, "low": a.low, "high": a.high,
                "group_size": a.group_size, "norm_gain": a.norm_gain, "samples": a.samples,
                "seqlen": a.seqlen, "seed": a.seed, "text": Path(a.text).name,
                "text_sha256": hashlib.sha256(Path(a.text).read_bytes()).hexdigest(),
                "average_bits": average_bits(rb, shapes)}
        save_row_bits(a.out, rb, meta)
    except (MixError, ImportError, OSError) as e:
        print(f"python -m converters.mixllm: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {a.out}: {a.scope} salience, {meta['average_bits']:.3f} average bits",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
