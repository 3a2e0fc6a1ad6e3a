"""FSBR calibration: learn I-LLM's smoothing vectors and LWC bounds block by block.

``python -m converters.fsbr MODEL_DIR --out CALIB --wbits W --abits A`` reads a Hugging
Face LLaMA folder, runs Fully-Smooth Block-Reconstruction (I-LLM section 3.2; the
project's notes: /work/shared/reference/illm-method.md section 3) on random windows of
the TRAINING text, and writes the learned parameters in the official
``fsbr_parameters.pth`` layout (``{layer_index: OrderedDict(name -> tensor)}``) and/or
the project's safetensors form; both are what ``intsim convert --calib`` reads
(``converters.calib``).  PyTorch is needed (the optional ``[torch]`` extra).

What is learned, per decoder layer (names as the official file):

==================================  =============================================
``qkv_smooth_scale``  [dim]         input norm -> q, k, v   (gamma /= s, W[:, c] *= s)
``fc1_smooth_scale``  [dim]         post-attn norm -> gate, up
``out_smooth_scale``  [kv]          v -> o    (W_v[c, :] /= s, W_o[:, c'] *= s)
``fc2_smooth_scale``  [ffn]         up -> down
``qkt_smooth_scale``  [kv]          q || k    (W_k[c, :] *= s, W_q[c', :] /= s); RoPE
                                    pairs c, c + head_dim/2 share ONE learned factor,
                                    so the file is tied exactly (``--qkt-tie strict``
                                    accepts it)
``x1x2_smooth_scale`` [ffn]         gate || up, SwiGLU computes x1 sigmoid(x1/s) x2
``<linear>.weight_quantizer.``      LWC per output channel (or per group, official
``{up,low}bound_factor`` [N, 1]     ``[N * K/G, 1]`` layout), 7 linears
==================================  =============================================

The method, as the official code runs it:

* init: the four serial pairs SmoothQuant-style, ``s = max|X_c|^a / max|W_c|^(1-a)``,
  a = 0.5, from per-channel maxima of the FLOAT model's activations over the calibration
  set (clamped at 1e-5; then raised to the converter's floor 1e-2); ``qkt`` and ``x1x2``
  start at 1; LWC factors at 4.0 (sigmoid 0.982).  Two documented deviations: the weight
  maximum is taken over ALL linears that read the smoothed activation (q, k and v; gate
  and up), where the official code reads only q_proj / up_proj; and the GQA ``out`` init
  takes the activation and weight maxima over the query heads sharing a kv channel,
  where the official code keeps the first head's factor.
* objective: per block, MSE between the float block's output on the float inputs and
  the fake-quantized block's output on the inputs produced by the already-calibrated
  (fake-quantized) earlier blocks (``std_norm``, the official ``--std_norm`` option,
  off by default: each output channel's error divided by that channel's float standard
  deviation over all windows, normalized to mean 1, so that a few massive-activation
  channels do not dominate the loss).  AdamW, lr 5e-3 (smoothing) and 1e-2 (LWC), weight
  decay 0, batch 1 window per step, windows in a seeded random order each epoch.  The
  parameters with the lowest loss are kept, among the initialization and the end of
  each epoch, each scored by one forward pass over all windows (the official code
  scores an epoch by the running mean of its training losses, which are taken at the
  parameters DURING the epoch; with the few epochs a CPU affords, that mean can prefer
  parameters worse than the initialization).
  After every step each smoothing scale is projected onto [1e-2, inf) (the converter
  floors scales at 1e-2 and refuses non-positive ones; the official code's
  ``truncate_number`` could leave a negative scale).

The fake-quantized block mirrors what ``intsim.llama`` executes (the quantizers are the
integer ones written in float, rounding with a straight-through estimator (STE)):

* activations into every DI-MatMul: per token, dynamic, asymmetric with the range
  holding 0 (``lo = min(0, min x)``, ``hi = max(0, max x)``), ``Q = 2^A - 1``, the scale
  ``R / Q`` fitted UP to an ``spec.m_bits`` mantissa (``requant_mode="fitted"``; the
  exact ``R / Q`` for ``"range"``), ``zp = rnd(-lo / s)``, ``q = clamp(rnd(x / s) + zp,
  0, Q)``, ``rnd`` = ``spec.rounding`` (``intsim.requant.requant_rows``);
* the norm input: ``x / rms(x) * (gamma / s_qkv)`` (resp. ``gamma_ffn / s_fc1``), the
  per-channel weight rounded to 16-bit mantissas over one exponent (DI-Norm's
  ``norm_weight``), quantized per token at A bits: the smoothing acts on what is
  quantized.  The runtime does this when the model is converted with
  ``intsim convert --norm-gain channel`` (the default ``fold`` folds gamma / s into
  the weights, where the qkv and fc1 factors cancel): convert FSBR files with it;
* weights: per output channel (or group of G), asymmetric min/max on the SMOOTHED
  weight with LWC bounds exactly as ``converters.calib.lwc_bounds`` interprets the
  factors (``hi = max(0, sigmoid(up) max W)``, ``lo = min(0, sigmoid(low) min W)``),
  ``zp``, codes with ``rint`` (``converters.weights.quantize_weight``);
* q, k projections out at ``qk_bits`` = 16, symmetric per token; v at A bits
  asymmetric per token; RoPE with the integer tables' Q1.14 cos/sin; Q and K per
  (token, head) at A bits; scores / sqrt(head_dim); DI-ClippedSoftmax: ``x - max``
  clipped at ``-c`` (``spec.softmax_clip`` = 15), re-quantized to ``softmax_in_bits``,
  DI-Exp (log2 e as 1.4375, piecewise-linear 2^-f, the integer unit T and the final
  shift emulated exactly; gradient through the piecewise-linear surrogate), the
  probabilities at ``softmax_p_out`` bits (16 by default); the value scales folded into
  the probabilities, re-quantized per row to A bits, times the centred V codes;
* o and down outputs, and both residual sums, at ``residual_bits`` = 16, symmetric per
  token; gate and up outputs at ``swiglu_in_bits`` = 8, asymmetric per token; DI-SwiGLU
  ``x1 * sigmoid(x1 / s) * x2`` with DI-Exp's sigmoid (``spec.sigmoid_frame``) at
  ``sigmoid_bits`` = 15; the product re-quantized per token at A bits into down.

Not modelled (each well below one LSB of its consumer): the 16-bit shared-exponent
weight-scale mantissas, the 24-bit 1/alpha mantissas, DI-Norm's integer sqrt, the
residual add's alignment shift, the PV fold's guard bits.  The embedding is quantized
per row at 8 bits as the converter does, so the first block sees the runtime's input.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import tempfile
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from intsim.errors import IntsimError
from intsim.options import Spec

from .calib import SCALE_FLOOR, CalibError, prepare_calib, read_calib, save_calib_safetensors

__all__ = ["PARADIGMS", "OFFICIAL_LINEARS", "FSBRSettings", "FSBRError", "calibration_windows",
           "run_fsbr", "save_params", "main", "fq_act", "fq_sym", "fq_weight", "fit_scale_up"]

#: the six smoothing paradigms, in the official fold order
PARADIGMS = ("qkv", "fc1", "out", "qkt", "x1x2", "fc2")
#: official module name -> Hugging Face weight name (LWC parameter names use the former)
OFFICIAL_LINEARS = {
    "self_attn.q_proj": "self_attn.q_proj.weight", "self_attn.k_proj": "self_attn.k_proj.weight",
    "self_attn.v_proj": "self_attn.v_proj.weight", "self_attn.o_proj": "self_attn.o_proj.weight",
    "mlp.gate_proj": "mlp.gate_proj.weight", "mlp.up_proj": "mlp.up_proj.weight",
    "mlp.down_proj": "mlp.down_proj.weight",
}
_SHORT = {"self_attn.q_proj": "wq", "self_attn.k_proj": "wk", "self_attn.v_proj": "wv",
          "self_attn.o_proj": "wo", "mlp.gate_proj": "wg", "mlp.up_proj": "wu",
          "mlp.down_proj": "wd"}
#: LWC init (OmniQuant / I-LLM): sigmoid(4) = 0.982
LWC_INIT = 4.0
#: SmoothQuant init clamp of the maxima and of the factor (the official code's 1e-5)
INIT_CLAMP = 1e-5
#: DI-Exp's log2(e) ~ 23/16 = 1.4375 (intsim.exp.LOG2E_Q4)
LOG2E_Q4 = 23 / 16
#: q/k projection output width (intsim.model.Widths.qk_bits)
QK_BITS = 16
#: RoPE table fraction bits come from spec.rope_frac_bits; tables round half away
DEFAULT_TEXT = Path.home() / ".cache" / "intsim" / "texts" / "train_mix.txt"


class FSBRError(IntsimError):
    """A calibration run that cannot start (bad arguments, model or text)."""


@dataclass(frozen=True)
class FSBRSettings:
    """Everything a calibration run depends on (stored in its report)."""
    w_bits: int = 8
    a_bits: int = 8
    group_size: int = 0
    epochs: int = 10
    samples: int = 128
    seqlen: int = 2048
    seed: int = 2
    alpha: float = 0.5
    lr_smooth: float = 5e-3
    lr_lwc: float = 1e-2
    paradigms: tuple = PARADIGMS       # enabled smoothing paradigms (empty: --no-smooth)
    lwc: bool = True
    init_only: bool = False
    batch_size: int = 1
    device: str = "cpu"
    spec: Spec = field(default_factory=Spec)
    lwc_init: float = LWC_INIT
    std_norm: bool = False

    def __post_init__(self):
        def chk(name, lo, hi=None):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo or (hi is not None and v > hi):
                raise FSBRError(f"{name}: {v!r} is not an integer in [{lo}, {hi or 'inf'}]")
        chk("w_bits", 2, 8)
        chk("a_bits", 2, 8)
        chk("group_size", 0)
        chk("epochs", 0)
        chk("samples", 1)
        chk("seqlen", 2)
        chk("seed", 0)
        chk("batch_size", 1)
        if self.batch_size > self.samples:
            raise FSBRError(f"batch_size: {self.batch_size} is larger than samples {self.samples}")
        bad = [p for p in self.paradigms if p not in PARADIGMS]
        if bad:
            raise FSBRError(f"paradigms: {bad[0]!r} is not one of {', '.join(PARADIGMS)}")
        if not (0.0 <= self.alpha <= 1.0):
            raise FSBRError(f"alpha: {self.alpha} is outside [0, 1]")
        if not math.isfinite(self.lwc_init):
            raise FSBRError(f"lwc_init: {self.lwc_init} is not finite")
        if not (self.lr_smooth > 0 and self.lr_lwc > 0):
            raise FSBRError("learning rates must be positive")
        if not isinstance(self.spec, Spec):
            raise FSBRError("spec: expected an intsim.options.Spec")

    def to_json(self) -> dict:
        d = asdict(self)
        d["paradigms"] = list(self.paradigms)
        d["spec"] = self.spec.to_dict()
        return d


# ====================================================================== data

def calibration_windows(tokenizer_json, text_path, samples: int, seqlen: int,
                        seed: int) -> np.ndarray:
    """``samples`` random windows of ``seqlen`` token ids (int64 [samples, seqlen]).

    The text is encoded whole (no special tokens); window starts are drawn uniformly
    with ``numpy.random.default_rng(seed)``.  Refuses the held-out evaluation text.
    """
    from .evaluate import load_tokenizer

    text_path = Path(text_path)
    from .texts import TextsError, read_calibration_text

    try:
        text = read_calibration_text(text_path)
    except TextsError as exc:
        raise FSBRError(str(exc)) from None
    tok = load_tokenizer(tokenizer_json)
    ids = np.asarray(tok.encode(text, add_special_tokens=False).ids, dtype=np.int64)
    if ids.size < seqlen + 1:
        raise FSBRError(f"{text_path}: {ids.size} tokens, fewer than one window of {seqlen}")
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, ids.size - seqlen, samples)
    return np.stack([ids[s:s + seqlen] for s in starts])


# ====================================================================== quantizers (torch)

def _torch():
    from .torch_llama import require_torch
    return require_torch()


def _rnd_(y, rounding: str):
    """Round ``y`` IN PLACE to integers with the spec's tie rule; returns ``y``."""
    torch = _torch()
    if rounding == "half_up":            # ties toward +inf
        return y.add_(0.5).floor_()
    if rounding == "half_even":
        return y.round_()
    if rounding == "half_away":
        sg = torch.sign(y)
        return y.abs_().add_(0.5).floor_().mul_(sg)
    if rounding == "floor":
        return y.floor_()
    raise FSBRError(f"rounding: {rounding!r} is not supported")


def _ste(x, val):
    """``val`` forward, identity gradient to ``x`` (straight-through); ``val`` (a
    no-grad tensor) is consumed."""
    if not x.requires_grad:
        return val
    return x + val.sub_(x.detach())


def fit_scale_up(s, m_bits: int):
    """``s`` rounded UP to an ``m_bits`` mantissa (``intsim.fixedpoint.dyadic_fit`` with
    the ceiling rule, as the fitted requantizer uses): ``ceil(f 2^M) 2^(e - M)`` for
    ``s = f 2^e``, f in [0.5, 1); 0 stays 0."""
    torch = _torch()
    f, e = torch.frexp(s)
    return torch.ldexp(torch.ceil(torch.ldexp(f, torch.tensor(m_bits, device=f.device))), e - m_bits)


def fq_act_codes(x, bits: int, spec: Spec, dim: int = -1, symmetric: bool = False):
    """The integer requantizer in float, values only: ``(q - zp, s)`` per row.

    Asymmetric (``intsim.requant.requant_rows(..., symmetric=False)``): ``lo = min(0,
    min x)``, ``hi = max(0, max x)``, ``R = hi - lo``, ``Q = 2^bits - 1``; symmetric:
    ``R = max |x|``, ``Q = 2^(bits-1) - 1``.  ``s = R / Q`` fitted UP to ``spec.m_bits``
    (``requant_mode="fitted"``; exact for ``"range"``); ``zp = rnd(-lo / s)``;
    ``q = clamp(rnd(x / s) + zp, 0, Q)`` (symmetric: ``clamp(rnd(x / s), -Q, Q)``);
    ``rnd`` = ``spec.rounding``.  A zero row gives codes 0 and s = 1.
    """
    torch = _torch()
    with torch.no_grad():
        x = x.detach()
        if symmetric:
            Q = 2 ** (bits - 1) - 1
            R = x.abs().amax(dim, keepdim=True)
            lo = None
        else:
            Q = 2 ** bits - 1
            lo = x.amin(dim, keepdim=True).clamp_(max=0)
            R = x.amax(dim, keepdim=True).clamp_(min=0).sub_(lo)
        zero = R == 0
        s = torch.where(zero, torch.ones_like(R), R).div_(Q)
        if spec.requant_mode == "fitted":
            s = fit_scale_up(s, spec.m_bits)
        q = _rnd_(x / s, spec.rounding)
        if symmetric:
            q.clamp_(-Q, Q)
        else:
            zp = _rnd_(-lo / s, spec.rounding)
            q = torch.clamp(q, min=-zp, max=Q - zp, out=q)
        if bool(zero.any()):
            q.masked_fill_(zero, 0)
        return q, s


def fq_act(x, bits: int, spec: Spec, dim: int = -1):
    """Per-row asymmetric fake quantization (``fq_act_codes``): ``(q - zp) * s``, the
    gradient passed straight through to ``x`` (the dynamic range is not differentiated)."""
    q, s = fq_act_codes(x, bits, spec, dim)
    return _ste(x, q.mul_(s))


def fq_act_centered(x, bits: int, spec: Spec, dim: int = -1):
    """``(q - zp, s)`` with the gradient of ``x / s`` on the codes (s held constant)."""
    q, s = fq_act_codes(x, bits, spec, dim)
    return (_ste(x / s, q) if x.requires_grad else q), s


def fq_sym(x, bits: int, spec: Spec, dim: int = -1):
    """Per-row symmetric fake quantization (``fq_act_codes(symmetric=True)``), STE."""
    q, s = fq_act_codes(x, bits, spec, dim, symmetric=True)
    return _ste(x, q.mul_(s))


_FN: dict = {}


def _fq_weight_fn():
    """Smoothing fold and weight quantizer as one autograd Function.

    Forward (no graph): ``w = W * r[:, None] * c[None, :]`` (the smoothed weight), then
    the LWC min/max quantizer of ``fq_weight``.  Backward, written out: the STE gradient
    of ``(q - zp) s`` to w (identity where the code is not clamped), to s and zp (per
    element ``(q - zp) - w / s`` in range, ``(q - zp) - lo / s`` and 1 to lo where
    clamped), from s and lo / hi through the LWC bounds to the factors and to the row
    max / min, and from w to the row and column factors r, c."""
    if "w" in _FN:
        return _FN["w"]
    torch = _torch()

    class FqWeight(torch.autograd.Function):
        @staticmethod
        def forward(ctx, W, r, c, up, low, bits, G):
            N, K = W.shape
            ng = K // G
            Q = 2 ** bits - 1
            w = W * r.detach()[:, None]
            w.mul_(c.detach()[None, :])
            wg = w.view(N, ng, G)
            hr, hi_i = wg.max(-1, keepdim=True)
            lr, lo_i = wg.min(-1, keepdim=True)
            if up is not None:
                su = torch.sigmoid(up.detach()).reshape(N, ng, 1)
                sl = torch.sigmoid(low.detach()).reshape(N, ng, 1)
            else:
                su = sl = torch.ones_like(hr)
            hu, lu = su * hr, sl * lr
            hpos, lneg = hu > 0, lu < 0
            hi, lo = hu.clamp(min=0), lu.clamp(max=0)
            s = (hi - lo) / Q
            s = torch.where(s > 0, s, torch.ones_like(s))      # s = 0: an all-zero group
            zp = torch.round(-lo / s).clamp_(0, Q)
            q = torch.round(wg / s).add_(zp)
            inr = (q >= 0) & (q <= Q)
            qc = q.clamp_(0, Q).sub_(zp)                        # q - zp
            out = qc * s
            # d out / d s per element: (q - zp) - w / s in range, (q - zp) - lo / s clamped
            dsc = wg.where(inr, lo).div_(s).neg_().add_(qc)
            ctx.save_for_backward(W, r, c, inr, dsc, hpos, lneg, su, sl, hr, lr, hi_i, lo_i)
            ctx.meta = (N, K, ng, G, Q, up is not None)
            return out.view(N, K)

        @staticmethod
        def backward(ctx, g):
            W, r, c, inr, dsc, hpos, lneg, su, sl, hr, lr, hi_i, lo_i = ctx.saved_tensors
            N, K, ng, G, Q, has_lwc = ctx.meta
            gg = g.reshape(N, ng, G)
            dw = gg * inr
            Gs = (gg * dsc).sum(-1, keepdim=True)
            Gc = gg.sum(-1, keepdim=True) - dw.sum(-1, keepdim=True)   # clamped elements
            dhi = (Gs / Q) * hpos
            dlo = (Gc - Gs / Q) * lneg
            dw.scatter_add_(-1, hi_i, dhi * su)
            dw.scatter_add_(-1, lo_i, dlo * sl)
            dup = dlow = None
            if has_lwc:
                dup = (dhi * hr * su * (1 - su)).reshape(N * ng, 1)
                dlow = (dlo * lr * sl * (1 - sl)).reshape(N * ng, 1)
            t = dw.view(N, K).mul_(W)                           # d loss / d (r_n c_k) * ...
            dr = (t @ c.detach()) if ctx.needs_input_grad[1] else None
            dc = (r.detach() @ t) if ctx.needs_input_grad[2] else None
            return None, dr, dc, dup, dlow, None, None

    _FN["w"] = FqWeight
    return FqWeight


def fq_weight(w, bits: int, group_size: int = 0, up=None, low=None, r=None, c=None):
    """Asymmetric per-row (or per-group) weight fake quantization with LWC bounds, as
    ``converters.calib.lwc_bounds`` + ``converters.weights.quantize_weight``, of the
    smoothed weight ``w * r[:, None] * c[None, :]`` (r, c default 1):
    ``hi = max(0, sigmoid(up) * max W_g)``, ``lo = min(0, sigmoid(low) * min W_g)``,
    ``s = (hi - lo) / (2^W - 1)``, ``zp = rint(-lo / s)``,
    ``q = clamp(rint(w / s) + zp, 0, Q)``; returns ``(q - zp) * s`` (an all-zero group
    gives 0).  ``up``/``low``: None (plain min/max) or [N * K/G, 1] factors.  Gradients
    flow to r, c, up and low (``w`` is a frozen weight)."""
    torch = _torch()
    N, K = w.shape
    r = torch.ones(N, dtype=w.dtype, device=w.device) if r is None else r
    c = torch.ones(K, dtype=w.dtype, device=w.device) if c is None else c
    return _fq_weight_fn().apply(w, r, c, up, low, bits, group_size or K)


def _norm_weight_q(g):
    """gamma / s as DI-Norm's per-channel weight, rounded exactly as the converter
    does (``converters.convert.quantize_norm_gain``: signed 16-bit mantissas over one
    exponent), with the gradient passed straight through."""
    torch = _torch()
    from .convert import quantize_norm_gain
    q, k = quantize_norm_gain(g.detach().cpu().double().numpy(), "norm weight (gamma / s)")
    val = torch.as_tensor(np.ldexp(q.astype(np.float64), -k), dtype=g.dtype, device=g.device)
    return _ste(g, val)


def _di_exp_pwl(z):
    """DI-Exp's approximation of exp(z), z <= 0, in real units: 2^-u with u = -1.4375 z,
    2^-(q + f) ~ 2^-q (1 - f/2)."""
    torch = _torch()
    u = z * -LOG2E_Q4
    q = torch.floor(u)
    return torch.exp2(-q).mul_(u.sub_(q).mul_(-0.5).add_(1))


def _di_exp_int(xq, s, m_bits: int):
    """DI-Exp on integer codes ``xq <= 0`` of row scale ``s`` (= m 2^-k with m an
    ``m_bits`` mantissa in [2^(M-1), 2^M)): ``out / T`` exactly as intsim.exp computes
    it for the scales the softmax produces (T < 2^24 keeps every step exact in
    float32; intsim's normalization for T > 2^30 is not modelled)."""
    torch = _torch()
    f, e = torch.frexp(s)
    m = torch.floor(torch.ldexp(f, torch.tensor(m_bits, device=f.device)))
    k = m_bits - e
    mf = m + torch.floor(m / 2) - torch.floor(m / 16)
    T = torch.clamp(torch.floor(torch.ldexp(torch.ones_like(mf), k) / mf + 0.5), min=1)
    qn = torch.floor(-xq / T)
    ev = torch.floor((xq + qn * T) / 2).add_(T)
    return torch.floor(torch.ldexp(ev, -qn.to(torch.int32))).div_(T)


# ====================================================================== the block

class _Layer:
    """One decoder layer: frozen float weights and the trainable FSBR parameters."""

    def __init__(self, i, w, cfg, settings: FSBRSettings, device, dtype):
        torch = _torch()
        self.i, self.cfg, self.st = i, cfg, settings
        p = f"model.layers.{i}."
        t = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=dtype, device=device)  # noqa
        self.W = {_SHORT[k]: t(w[p + v]) for k, v in OFFICIAL_LINEARS.items()}
        self.g1 = t(w[p + "input_layernorm.weight"])
        self.g2 = t(w[p + "post_attention_layernorm.weight"])
        self.smooth: dict = OrderedDict()          # name -> Parameter
        self.lwc: dict = OrderedDict()             # official name -> Parameter
        self.device, self.dtype = device, dtype

    # ---------------------------------------------------------------- parameters
    def init_params(self, act_max: dict):
        """SmoothQuant init of the serial pairs from float activation maxima; qkt, x1x2
        at 1; LWC factors at 4.0."""
        torch = _torch()
        cfg, st, W = self.cfg, self.st, self.W
        a = st.alpha
        H, Hkv, hd = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        rep = H // Hkv

        def sq(act, wmax):
            act = act.clamp(min=INIT_CLAMP)
            wmax = wmax.clamp(min=INIT_CLAMP)
            return (act.pow(a) / wmax.pow(1 - a)).clamp(min=INIT_CLAMP).clamp(min=SCALE_FLOOR)

        init = OrderedDict()
        if "qkv" in st.paradigms:
            wm = torch.cat([W["wq"], W["wk"], W["wv"]], 0).abs().amax(0)
            init["qkv_smooth_scale"] = sq(act_max["qkv"], wm)
        if "fc1" in st.paradigms:
            wm = torch.cat([W["wg"], W["wu"]], 0).abs().amax(0)
            init["fc1_smooth_scale"] = sq(act_max["fc1"], wm)
        if "out" in st.paradigms:
            am = act_max["out"].reshape(Hkv, rep, hd).amax(1).reshape(-1)
            wm = W["wo"].abs().amax(0).reshape(Hkv, rep, hd).amax(1).reshape(-1)
            init["out_smooth_scale"] = sq(am, wm)
        if "qkt" in st.paradigms:       # learned per RoPE pair: [Hkv, hd/2]
            init["qkt_half"] = torch.ones(Hkv, hd // 2)
        if "x1x2" in st.paradigms:
            init["x1x2_smooth_scale"] = torch.ones(cfg.ffn_dim)
        if "fc2" in st.paradigms:
            init["fc2_smooth_scale"] = sq(act_max["fc2"], W["wd"].abs().amax(0))
        self.smooth = OrderedDict(
            (k, torch.nn.Parameter(v.to(self.device, self.dtype).clone())) for k, v in init.items())
        self.lwc = OrderedDict()
        if st.lwc:
            for off, short in _SHORT.items():
                N, K = W[short].shape
                rows = N * (K // st.group_size if st.group_size else 1)
                for kind in ("upbound_factor", "lowbound_factor"):
                    self.lwc[f"{off}.weight_quantizer.{kind}"] = torch.nn.Parameter(
                        torch.full((rows, 1), st.lwc_init, device=self.device, dtype=self.dtype))

    def state(self) -> OrderedDict:
        return OrderedDict((k, v.detach().clone()) for k, v in
                           list(self.smooth.items()) + list(self.lwc.items()))

    def load(self, state: OrderedDict):
        for k, v in state.items():
            (self.smooth if k in self.smooth else self.lwc)[k].data.copy_(v)

    def project(self):
        """Keep every smoothing scale >= the converter's floor (and so > 0)."""
        for v in self.smooth.values():
            v.data.clamp_(min=SCALE_FLOOR)

    def export(self) -> OrderedDict:
        """The official per-layer OrderedDict (qkt expanded to [kv], tied in pairs)."""
        out = OrderedDict()
        for k, v in self.smooth.items():
            if k == "qkt_half":
                out["qkt_smooth_scale"] = self._qkt(v).detach().cpu().float().clone()
            else:
                out[k] = v.detach().cpu().float().clone()
        for k, v in self.lwc.items():
            out[k] = v.detach().cpu().float().clone()
        return out

    def _qkt(self, half):
        torch = _torch()
        return torch.cat([half, half], dim=1).reshape(-1)

    # ---------------------------------------------------------------- smoothed weights
    def factors(self):
        """Row and column factors of each smoothed weight (``W' = W * r[:, None] *
        c[None, :]``, the folds of ``converters.calib.apply_smoothing``), the two norm
        weights gamma / s and alpha (None without x1x2)."""
        torch = _torch()
        cfg, S = self.cfg, self.smooth
        H, Hkv, hd = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        rep = H // Hkv
        one = lambda n: torch.ones(n, dtype=self.dtype, device=self.device)  # noqa: E731
        D, F, q_out, kv = cfg.dim, cfg.ffn_dim, H * hd, Hkv * hd

        def expand(s):
            return s.reshape(Hkv, 1, hd).expand(Hkv, rep, hd).reshape(-1)
        s_qkv = S.get("qkv_smooth_scale", one(D))
        s_fc1 = S.get("fc1_smooth_scale", one(D))
        s_out = S.get("out_smooth_scale", one(kv))
        s_qkt = self._qkt(S["qkt_half"]) if "qkt_half" in S else one(kv)
        alpha = S.get("x1x2_smooth_scale")
        a = one(F) if alpha is None else alpha
        s_fc2 = S.get("fc2_smooth_scale", one(F))
        rc = {"wq": (1 / expand(s_qkt), s_qkv), "wk": (s_qkt, s_qkv), "wv": (1 / s_out, s_qkv),
              "wo": (one(D), expand(s_out)), "wg": (a, s_fc1), "wu": (1 / (a * s_fc2), s_fc1),
              "wd": (one(D), s_fc2)}
        return rc, self.g1 / s_qkv, self.g2 / s_fc1, alpha

    def smoothed(self):
        """The smoothed float weights (for checks; the training path never forms them
        with a graph)."""
        rc, g1, g2, alpha = self.factors()
        return {k: self.W[k] * r[:, None] * c[None, :] for k, (r, c) in rc.items()}, g1, g2, alpha

    def quant_weights(self):
        rc, g1, g2, alpha = self.factors()
        st = self.st
        qw = {}
        for off, short in _SHORT.items():
            up = self.lwc.get(f"{off}.weight_quantizer.upbound_factor")
            low = self.lwc.get(f"{off}.weight_quantizer.lowbound_factor")
            r, c = rc[short]
            qw[short] = fq_weight(self.W[short], st.w_bits, st.group_size, up, low, r, c)
        return qw, _norm_weight_q(g1), _norm_weight_q(g2), alpha


class _Rope:
    def __init__(self, cfg, T, device, dtype, frac_bits: int | None):
        torch = _torch()
        from .float_model import rope_cos_sin
        if frac_bits is None:        # the float reference: Hugging Face's float32 angles
            c, s = rope_cos_sin(cfg, T, "hf_float32")
        else:                        # the integer tables (converters.rope_tables)
            from .rope_tables import rope_tables
            cq, sq = rope_tables(cfg.head_dim, T, cfg.rope_theta, frac_bits,
                                 inv_freq=cfg.rope.inv_freq(cfg.head_dim, "float64"))
            c, s = cq / 2.0 ** frac_bits, sq / 2.0 ** frac_bits
        self.cos = torch.as_tensor(c, dtype=dtype, device=device)
        self.sin = torch.as_tensor(s, dtype=dtype, device=device)

    def __call__(self, x):           # x [B, h, T, hd]
        torch = _torch()
        half = x.shape[-1] // 2
        a, b = x[..., :half], x[..., half:]
        c, s = self.cos[: x.shape[-2]], self.sin[: x.shape[-2]]
        return torch.cat([a * c - b * s, b * c + a * s], dim=-1)


def float_block(L: _Layer, x, rope: _Rope, eps: float, act_max: dict | None = None,
                smoothed: bool = False):
    """The float (Hugging Face) decoder layer on x [B, T, D]; updates ``act_max`` (the
    per-channel maxima of the four smoothed activations) when given.  ``smoothed``: run
    it with the smoothed weights, gamma / s and SwiGLU's ``x1 sigmoid(x1 / alpha) x2``
    instead (an exact equivalence: the same outputs up to float rounding)."""
    torch = _torch()
    F = torch.nn.functional
    cfg, W = L.cfg, L.W
    g1, g2, alpha = L.g1, L.g2, None
    if smoothed:
        W, g1, g2, alpha = L.smoothed()
    B, T, D = x.shape
    H, Hkv, hd = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim

    def rms(v, g):
        return g * (v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + eps))

    def upd(name, v):
        if act_max is not None:
            m = v.detach().abs().reshape(-1, v.shape[-1]).amax(0)
            act_max[name] = m if name not in act_max else torch.maximum(act_max[name], m)
    h = rms(x, g1)
    upd("qkv", h)
    q = (h @ W["wq"].T).view(B, T, H, hd).transpose(1, 2)
    k = (h @ W["wk"].T).view(B, T, Hkv, hd).transpose(1, 2)
    v = (h @ W["wv"].T).view(B, T, Hkv, hd).transpose(1, 2)
    q, k = rope(q), rope(k)
    o = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=(H != Hkv))
    o = o.transpose(1, 2).reshape(B, T, H * hd)
    upd("out", o)
    x = x + o @ W["wo"].T
    h = rms(x, g2)
    upd("fc1", h)
    g = h @ W["wg"].T
    y = (F.silu(g) if alpha is None else g * torch.sigmoid(g / alpha)) * (h @ W["wu"].T)
    upd("fc2", y)
    return x + y @ W["wd"].T


#: the quantizers of ``quant_block``, by name (``exact`` switches any of them off)
QUANTIZERS = ("qkv_in", "q_out", "k_out", "v_out", "q_head", "k_head", "softmax", "p_v",
              "o_in", "o_out", "res", "ffn_in", "gate", "up", "sigmoid", "down_in",
              "down_out", "weights", "norm_w")


def quant_block(L: _Layer, x, rope: _Rope, qw=None, exact=frozenset()):
    """The fake-quantized decoder layer on x [B, T, D] (see the module docstring).

    ``exact``: names from ``QUANTIZERS`` to leave out (the value passes unquantized;
    ``softmax`` becomes the float softmax, ``sigmoid`` the float sigmoid, ``weights``
    and ``norm_w`` the smoothed float weights): an attribution tool, never used in
    calibration."""
    torch = _torch()
    st, spec, cfg = L.st, L.st.spec, L.cfg
    A = st.a_bits
    B, T, D = x.shape
    H, Hkv, hd = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    rep = H // Hkv
    if qw is None:
        qw = L.quant_weights()
        if "weights" in exact or "norm_w" in exact:
            W, g1f, g2f, _ = L.smoothed()
            qw = (W if "weights" in exact else qw[0], g1f if "norm_w" in exact else qw[1],
                  g2f if "norm_w" in exact else qw[2], qw[3])
    w, g1, g2, alpha = qw

    def act(name, v, bits):
        return v if name in exact else fq_act(v, bits, spec)

    def sym(name, v, bits):
        return v if name in exact else fq_sym(v, bits, spec)

    def norm(v, g):      # DI-Norm (scale-only, no eps) then the per-channel weight
        return v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True).clamp(min=1e-30)) * g

    a = act("qkv_in", norm(x, g1), A)
    q = sym("q_out", a @ w["wq"].T, QK_BITS)
    k = sym("k_out", a @ w["wk"].T, QK_BITS)
    v = a @ w["wv"].T
    if "v_out" in exact:
        vc, vs = v, torch.ones_like(v[..., :1])
    else:
        vc, vs = fq_act_centered(v, A, spec)                          # [B,T,kv], [B,T,1]
    q = rope(q.view(B, T, H, hd).transpose(1, 2))
    k = rope(k.view(B, T, Hkv, hd).transpose(1, 2))
    q = act("q_head", q, A)                                           # per (token, head)
    k = act("k_head", k, A)
    # query head h reads kv head h // rep: heads of one group side by side
    sc = (q.reshape(B, Hkv, rep * T, hd) @ k.transpose(-1, -2)).view(B, H, T, T)
    sc = sc * (1.0 / math.sqrt(hd))
    if "softmax" in exact:
        p = torch.softmax(sc.masked_fill(~_causal(T, sc.device), float("-inf")), -1)
    else:
        p = _clipped_softmax(sc, spec)                                # [B, H, T, T]
    pq = act("p_v", p * vs.reshape(B, 1, 1, T), A)                   # value scales folded
    vh = vc.view(B, T, Hkv, hd).transpose(1, 2)
    att = (pq.view(B, Hkv, rep * T, T) @ vh).view(B, H, T, hd)
    att = att.transpose(1, 2).reshape(B, T, H * hd)
    o = sym("o_out", act("o_in", att, A) @ w["wo"].T, spec.residual_bits)
    h = sym("res", x + o, spec.residual_bits)
    a2 = act("ffn_in", norm(h, g2), A)
    gt = act("gate", a2 @ w["wg"].T, spec.swiglu_in_bits)
    up = act("up", a2 @ w["wu"].T, spec.swiglu_in_bits)
    z = gt if alpha is None else gt / alpha
    y = gt * (torch.sigmoid(z) if "sigmoid" in exact else _sigmoid(z, spec)) * up
    d = sym("down_out", act("down_in", y, A) @ w["wd"].T, spec.residual_bits)
    return sym("res", h + d, spec.residual_bits)


_MASKS: dict = {}


def _causal(T, device):
    torch = _torch()
    key = (T, str(device))
    if key not in _MASKS:
        _MASKS[key] = torch.ones(T, T, dtype=torch.bool, device=device).tril()
    return _MASKS[key]


def _softmax_fn():
    """DI-ClippedSoftmax as an autograd Function: the integer emulation forward, the
    softmax Jacobian of the emulated probabilities backward (0 on clipped scores)."""
    if "softmax" in _FN:
        return _FN["softmax"]
    torch = _torch()

    class ClippedSoftmax(torch.autograd.Function):
        @staticmethod
        def forward(ctx, sc, spec):
            T = sc.shape[-1]
            vis = _causal(T, sc.device)
            z = sc.detach().masked_fill(~vis, float("-inf"))
            z = z - z.amax(-1, keepdim=True)
            keep = (z > -float(spec.softmax_clip)) & vis
            z.clamp_(min=-float(spec.softmax_clip)).masked_fill_(~vis, 0)
            xq, s = fq_act_codes(z, spec.softmax_in_bits, spec)      # [-R, 0] -> codes <= 0
            if spec.requant_mode != "fitted":
                s = fit_scale_up(s, spec.m_bits)
            e = _di_exp_int(xq, s, spec.m_bits).mul_(vis)
            p = e.div_(e.sum(-1, keepdim=True))
            F = spec.softmax_p_out if spec.softmax_p_frac is None else spec.softmax_p_frac
            top = 2 ** spec.softmax_p_out - 1
            pq = _rnd_(p * 2.0 ** F, spec.rounding).clamp_(max=top).div_(2.0 ** F)
            ctx.save_for_backward(p, keep)
            return pq

        @staticmethod
        def backward(ctx, g):
            p, keep = ctx.saved_tensors
            gp = g * p
            return (gp - p * gp.sum(-1, keepdim=True)) * keep, None

    _FN["softmax"] = ClippedSoftmax
    return ClippedSoftmax


def _clipped_softmax(sc, spec: Spec):
    """DI-ClippedSoftmax in float: x - max clipped at -c, re-quantized to
    softmax_in_bits, DI-Exp emulated on the integer codes, normalized, probabilities at
    p_out bits with F fraction bits (saturating at 2^p_out - 1)."""
    return _softmax_fn().apply(sc, spec)


def _sigmoid(z, spec: Spec):
    """DI-SwiGLU's sigmoid: DI-Exp's approximation in the spec's frame, at sigmoid_bits
    (value); the gradient of sigma(1 - sigma) of that value."""
    torch = _torch()
    with torch.no_grad():
        zd = z.detach()
        if spec.sigmoid_frame == "stable":
            e = _di_exp_pwl(-zd.abs())
            sig = torch.where(zd >= 0, 1 / (1 + e), e / (1 + e))
        else:
            M = zd.amax(-1, keepdim=True).clamp(min=0)
            e1, e2 = _di_exp_pwl(zd - M), _di_exp_pwl(-M)
            sig = e1 / (e1 + e2).clamp(min=1e-30)
        B = spec.sigmoid_bits
        val = _rnd_(sig * 2.0 ** B, spec.rounding).div_(2.0 ** B)
    if not z.requires_grad:
        return val
    return _ste(z * (sig * (1 - sig)), val)     # d val / d z = sig (1 - sig)


# ====================================================================== the run

def _log(msg: str):
    print(msg, file=sys.stderr, flush=True)


def run_fsbr(model_dir, settings: FSBRSettings, text=DEFAULT_TEXT, windows: np.ndarray | None = None,
             log=_log, threads: int | None = None, n_layers: int | None = None,
             checkpoint=None):
    """Run FSBR on the Hugging Face LLaMA folder ``model_dir``.

    Returns ``(params, report)``: ``params`` the official ``{layer: OrderedDict(name ->
    torch tensor)}``; ``report`` a JSON-able dict (settings, per-layer losses, timing).
    ``windows``: token ids [samples, seqlen] overriding the random text windows;
    ``n_layers``: calibrate only the first n layers (timing and tests; the result is
    then not a complete calibration file).  ``checkpoint``: a file the state is saved
    to after every layer (parameters so far, both streams of block inputs, the order
    generator); a run that finds one with the same settings and windows resumes after
    its last layer.  It is left in place (the caller removes it after writing).
    """
    torch = _torch()
    from .embedding import quantize_embedding
    from .float_model import load_hf_weights

    t_start, cpu_start = time.perf_counter(), time.process_time()
    st = settings
    if threads is not None:
        torch.set_num_threads(int(threads))
    if st.device == "cuda" and not torch.cuda.is_available():
        raise FSBRError("device: cuda requested but torch.cuda.is_available() is false")
    dev = torch.device(st.device)
    dtype = torch.float32
    try:
        cfg, w = load_hf_weights(model_dir)
    except (ValueError, OSError) as e:
        raise FSBRError(f"{model_dir}: {e}") from e
    if st.group_size:
        for name, K in (("dim", cfg.dim), ("q", cfg.n_heads * cfg.head_dim), ("ffn", cfg.ffn_dim)):
            if K % st.group_size:
                raise FSBRError(f"group_size: {st.group_size} does not divide {name} = {K}")
    if windows is None:
        windows = calibration_windows(Path(model_dir) / "tokenizer.json", text, st.samples,
                                      st.seqlen, st.seed)
    windows = np.asarray(windows, dtype=np.int64)
    if windows.ndim != 2 or windows.min() < 0 or windows.max() >= cfg.vocab_size:
        raise FSBRError(f"windows: expected token ids [samples, seqlen] below {cfg.vocab_size}")
    N, T = windows.shape
    # first block inputs: the float embedding, and the runtime's 8-bit per-row embedding
    emb = w["model.embed_tokens.weight"]
    uniq, inv = np.unique(windows, return_inverse=True)
    eq, em, ek = quantize_embedding(emb[uniq], bits=8, scale_mant_bits=st.spec.m_bits,
                                    k_range=st.spec.k_range)
    emb_q = eq.astype(np.float64) * np.ldexp(em.astype(np.float64), -ek.astype(np.int32))[:, None]
    fp_x = torch.as_tensor(emb[windows], dtype=dtype, device=dev)                 # [N, T, D]
    q_x = torch.as_tensor(emb_q[inv.reshape(N, T)], dtype=dtype, device=dev)
    rope_f = _Rope(cfg, T, dev, dtype, None)
    rope_q = _Rope(cfg, T, dev, dtype, st.spec.rope_frac_bits)
    gen = torch.Generator().manual_seed(st.seed)
    chunk = max(1, 2048 // T)
    layers_out = {}
    rep_layers = []
    first = 0
    ident = {"settings": st.to_json(), "model": str(Path(model_dir).absolute()),
             "windows_sum": int(windows.sum()), "windows_shape": [int(N), int(T)]}
    if checkpoint is not None and Path(checkpoint).is_file():
        ck = torch.load(checkpoint, weights_only=True)
        if json.loads(ck["ident"]) != json.loads(json.dumps(ident)):
            raise FSBRError(f"{checkpoint}: a checkpoint of a different run (settings, model "
                            f"or windows differ); delete it to start afresh")
        first = int(ck["next_layer"])
        layers_out = {int(k): OrderedDict(v) for k, v in ck["params"].items()}
        rep_layers = json.loads(ck["report_layers"])
        q_x, fp_x = ck["q_x"].to(dev), ck["fp_x"].to(dev)
        gen.set_state(ck["gen_state"])
        t_start -= float(ck.get("seconds", 0.0))          # totals include the earlier part
        cpu_start -= float(ck.get("cpu_seconds", 0.0))
        log(f"resuming from {checkpoint} at layer {first}")
    for i in range(first, cfg.n_layers if n_layers is None else min(n_layers, cfg.n_layers)):
        t0 = time.perf_counter()
        L = _Layer(i, w, cfg, st, dev, dtype)
        act_max: dict = {}
        fp_y = torch.empty_like(fp_x)
        with torch.no_grad():
            for a in range(0, N, chunk):
                fp_y[a:a + chunk] = float_block(L, fp_x[a:a + chunk], rope_f, cfg.rms_eps, act_max)
        L.init_params(act_max)
        # the loss: MSE, or with std_norm each output channel divided by its float std
        # over all windows (normalized to mean 1), so that a few massive-activation
        # channels do not dominate it (the official --std_norm, there per batch)
        if st.std_norm:
            sd = fp_y.reshape(-1, cfg.dim).std(0)
            inv_sd = (sd.mean() / sd.clamp(min=1e-12 * float(sd.mean()))).reshape(1, 1, -1)
        else:
            inv_sd = None

        def block_loss(y, t):
            return ((y - t) ** 2).mean() if inv_sd is None else (((y - t) * inv_sd) ** 2).mean()

        def evaluate():
            """Mean block loss over all windows at the current parameters, and the
            block outputs (the next block's inputs if these parameters are kept)."""
            tot, ys = 0.0, torch.empty_like(q_x)
            with torch.no_grad():
                qw = L.quant_weights()
                for a in range(0, N, chunk):
                    y = quant_block(L, q_x[a:a + chunk], rope_q, qw)
                    tot += float(block_loss(y, fp_y[a:a + chunk])) * y.shape[0]
                    ys[a:a + chunk] = y
            return tot / N, ys
        rec = {"layer": i}
        train = not st.init_only and st.epochs > 0 and (L.smooth or L.lwc)
        best_loss, best_y = evaluate()
        if train:
            rec["init_loss"] = best_loss
            groups = []
            if L.smooth:
                groups.append({"params": list(L.smooth.values()), "lr": st.lr_smooth})
            if L.lwc:
                groups.append({"params": list(L.lwc.values()), "lr": st.lr_lwc})
            opt = torch.optim.AdamW(groups, weight_decay=0.0)
            best_state, best_epoch = L.state(), -1
            rec["train_loss"], rec["epoch_loss"] = [], []
            nb = N // st.batch_size
            for ep in range(st.epochs):
                losses = []
                for j in torch.randperm(nb, generator=gen).tolist():
                    sl = slice(j * st.batch_size, (j + 1) * st.batch_size)
                    y = quant_block(L, q_x[sl], rope_q)
                    loss = block_loss(y, fp_y[sl])
                    lv = float(loss.detach())
                    if not math.isfinite(lv):
                        raise FSBRError(f"layer {i}: the reconstruction loss became {lv} in "
                                        f"epoch {ep}")
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    L.project()
                    losses.append(lv)
                rec["train_loss"].append(float(np.mean(losses)))
                ml, ys = evaluate()
                rec["epoch_loss"].append(ml)
                if ml < best_loss:
                    best_loss, best_epoch, best_state, best_y = ml, ep, L.state(), ys
            L.load(best_state)
            rec["best_epoch"] = best_epoch
        rec["final_loss"] = best_loss
        q_x = best_y
        rec["seconds"] = round(time.perf_counter() - t0, 1)
        layers_out[i] = L.export()
        fp_x = fp_y
        rep_layers.append(rec)
        msg = f"layer {i:3d}: "
        if train:
            msg += (f"init {rec['init_loss']:.4g} epochs "
                    + " ".join(f"{v:.4g}" for v in rec["epoch_loss"])
                    + f" -> best epoch {rec['best_epoch']}, ")
        log(msg + f"loss {rec['final_loss']:.4g} ({rec['seconds']} s)")
        if checkpoint is not None:
            state = {"ident": json.dumps(ident), "next_layer": i + 1,
                     "params": {int(k): dict(v) for k, v in layers_out.items()},
                     "report_layers": json.dumps(rep_layers), "q_x": q_x.cpu(),
                     "fp_x": fp_x.cpu(), "gen_state": gen.get_state(),
                     "seconds": time.perf_counter() - t_start,
                     "cpu_seconds": time.process_time() - cpu_start}
            _atomic(Path(checkpoint), lambda p: torch.save(state, p))
    from .convert import read_hf_dir, weight_hashes
    report = {"generator": "converters.fsbr", "model": str(Path(model_dir).absolute()),
              "source_sha256": weight_hashes(read_hf_dir(model_dir)),
              "text": str(text) if text is not None else None, "settings": st.to_json(),
              "windows": [int(N), int(T)], "torch": torch.__version__,
              "threads": torch.get_num_threads(), "layers": rep_layers,
              "seconds": round(time.perf_counter() - t_start, 1),
              "cpu_seconds": round(time.process_time() - cpu_start, 1)}
    return layers_out, report


# ====================================================================== output

class _Cfg:
    def __init__(self, c):
        self.n_layers, self.dim, self.n_heads = c.n_layers, c.dim, c.n_heads
        self.n_kv_heads, self.head_dim, self.ffn_dim = c.n_kv_heads, c.head_dim, c.ffn_dim


def _read_config(model_dir):
    from .hfconfig import ConfigError, read_llama_config
    path = Path(model_dir) / "config.json"
    try:
        return read_llama_config(json.loads(path.read_text()), str(path))
    except ConfigError as e:
        raise FSBRError(str(e)) from e
    except (OSError, ValueError) as e:
        raise FSBRError(f"{path}: {e}") from e


def _atomic(path: Path, write):
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o644)          # mkstemp's 0600 would make a shared calibration unreadable
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def output_paths(out, fmt: str) -> dict:
    """{format: path}: ``pth``/``safetensors`` write ``out`` itself; ``both`` writes
    ``out`` with the suffixes ``.pth`` and ``.safetensors``."""
    out = Path(out)
    if fmt == "both":
        return {"pth": out.with_suffix(".pth"), "safetensors": out.with_suffix(".safetensors")}
    if fmt not in ("pth", "safetensors"):
        raise FSBRError(f"format: {fmt!r} is not pth, safetensors or both")
    return {fmt: out}


def save_params(params: dict, out, fmt: str, config, group_size: int = 0,
                report: dict | None = None) -> dict:
    """Validate ``params`` against the model (``converters.calib.prepare_calib``), then
    write each requested form atomically, read it back and compare; returns the paths."""
    torch = _torch()
    np_params = {i: {k: v.detach().cpu().numpy() for k, v in sd.items()} for i, sd in params.items()}
    prepare_calib(np_params, _Cfg(config), group_size, source="fsbr output")
    paths = output_paths(out, fmt)
    for kind, path in paths.items():
        if kind == "pth":
            _atomic(path, lambda p: torch.save({int(i): OrderedDict(sd) for i, sd in params.items()}, p))
        else:
            _atomic(path, lambda p: save_calib_safetensors(np_params, p))
        back = read_calib(path)
        for i, sd in np_params.items():
            for k, v in sd.items():
                if not np.array_equal(back[i][k].reshape(v.shape), v.astype(np.float32)):
                    raise CalibError(f"{path}: layer {i}: '{k}' did not read back identically")
    if report is not None:
        rp = Path(out).with_suffix(".json")
        report = dict(report, outputs={k: str(v) for k, v in paths.items()})
        _atomic(rp, lambda p: p.write_text(json.dumps(report, indent=1)))
        paths["report"] = rp
    return paths


# ====================================================================== command line

def build_parser(prog="python -m converters.fsbr") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog, description="FSBR calibration (I-LLM): learn the six smoothing "
        "paradigms and LWC block by block on training text; write fsbr_parameters.pth "
        "and/or the safetensors form for 'intsim convert --calib'.")
    p.add_argument("model_dir", metavar="MODEL_DIR", help="Hugging Face LLaMA folder")
    p.add_argument("--out", required=True, metavar="CALIB",
                   help="output file (with --format both: its .pth and .safetensors "
                        "siblings); a JSON report is written next to it")
    p.add_argument("--wbits", type=int, default=8, metavar="W")
    p.add_argument("--abits", type=int, default=8, metavar="A")
    p.add_argument("--group-size", type=int, default=0, metavar="G",
                   help="weight group size the model will be converted with (0 = per channel)")
    p.add_argument("--epochs", type=int, default=10, metavar="N",
                   help="epochs per block (official code default 10; README 20)")
    p.add_argument("--samples", type=int, default=128, metavar="N", help="calibration windows")
    p.add_argument("--seqlen", type=int, default=2048, metavar="L", help="tokens per window")
    p.add_argument("--text", default=str(DEFAULT_TEXT), metavar="FILE",
                   help="calibration text (never a held-out text; default train_mix.txt, two "
                        "authors, converters.texts; the committed models/smollm2-fsbr "
                        "calibrations used austen_train.txt)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--threads", type=int, default=None, metavar="N", help="torch CPU threads")
    p.add_argument("--seed", type=int, default=2, help="window sampling and order seed (2)")
    p.add_argument("--alpha", type=float, default=0.5, help="SmoothQuant init exponent (0.5)")
    p.add_argument("--lr-smooth", type=float, default=5e-3)
    p.add_argument("--lr-lwc", type=float, default=1e-2)
    p.add_argument("--batch-size", type=int, default=1, metavar="B")
    p.add_argument("--init-only", action="store_true",
                   help="write the initialization (SmoothQuant factors, LWC at 4.0) untrained")
    p.add_argument("--no-smooth", action="store_true", help="no smoothing (LWC only)")
    p.add_argument("--disable", nargs="+", action="extend", default=[], choices=PARADIGMS,
                   metavar="PARADIGM", help=f"smoothing paradigms to leave out ({', '.join(PARADIGMS)})")
    p.add_argument("--no-lwc", action="store_true", help="no learnable weight clipping")
    p.add_argument("--lwc-init", type=float, default=LWC_INIT, metavar="X",
                   help=f"initial LWC factors (default {LWC_INIT}: bounds at sigmoid(4) = "
                        f"0.982 of the row max / min)")
    p.add_argument("--std-norm", action="store_true",
                   help="divide each output channel's error by its float std in the loss "
                        "(the official --std_norm): massive-activation channels stop "
                        "dominating the block loss")
    p.add_argument("--format", choices=("pth", "safetensors", "both"), default="both")
    p.add_argument("--no-checkpoint", action="store_true",
                   help="do not save CALIB.partial.pt after every layer (by default a run "
                        "that finds one with the same settings resumes from it)")
    p.add_argument("--spec", default=None, metavar="SPEC",
                   help="the integer options the model will be converted with ('paper' or "
                        "JSON, as intsim convert --spec); the fake quantizers follow them")
    return p


def main(argv=None, prog="python -m converters.fsbr") -> int:
    args = build_parser(prog).parse_args(argv)
    from .convert import parse_spec
    try:
        paradigms = () if args.no_smooth else tuple(p for p in PARADIGMS if p not in args.disable)
        st = FSBRSettings(w_bits=args.wbits, a_bits=args.abits, group_size=args.group_size,
                          epochs=args.epochs, samples=args.samples, seqlen=args.seqlen,
                          seed=args.seed, alpha=args.alpha, lr_smooth=args.lr_smooth,
                          lr_lwc=args.lr_lwc, paradigms=paradigms, lwc=not args.no_lwc,
                          init_only=args.init_only, batch_size=args.batch_size,
                          device=args.device, spec=parse_spec(args.spec),
                          lwc_init=args.lwc_init, std_norm=args.std_norm)
        if not st.paradigms and not st.lwc:
            raise FSBRError("--no-smooth with --no-lwc leaves nothing to calibrate")
        output_paths(args.out, args.format)
        ckpt = None if args.no_checkpoint else Path(args.out).with_suffix(".partial.pt")
        params, report = run_fsbr(args.model_dir, st, text=args.text, threads=args.threads,
                                  checkpoint=ckpt)
        cfg = _read_config(args.model_dir)
        paths = save_params(params, args.out, args.format, cfg, st.group_size, report)
        if ckpt is not None and ckpt.is_file():
            ckpt.unlink()
    except (IntsimError, ImportError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    _log(f"wrote {', '.join(str(p) for p in paths.values())} ({report['seconds']} s wall, "
         f"{report['cpu_seconds']} s CPU)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
