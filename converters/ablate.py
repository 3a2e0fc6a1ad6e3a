"""Ablations of the integer operators on held-out perplexity (the float side).

Three studies, each row reproducible by one command (docs/RESULTS.md, "Ablations"):

(b) ``ops``: the integer operators switched in one at a time (the paper's Table 5 shape).
    :class:`Hybrid` runs the LLaMA forward with every operator either float or the real
    intsim integer operator.  Where an integer operator takes a float input, the input is
    quantized the way the integer graph would hand it over (below) and the intsim op is
    called on it; where a float operator takes an integer output, the output is
    dequantized.  With every operator integer no conversion happens at all and the logits
    are the integer model's, bit for bit (tests/test_ablate.py); with every operator float
    and ``base="float"`` the forward is ``converters.float_model.FloatLlama``'s, bit for bit.
(c) ``clip``: DI-ClippedSoftmax's clip ``c`` swept through ``intsim ppl --spec``.
(d) ``widths``: the dyadic scales' mantissa / exponent widths (``Spec.m_bits``,
    ``Spec.k_bits``): perplexity, fast-path decode / prefill speed, memory.

The operators of (b), the names ``--int`` takes:

=========  ==================================================================================
matmul     DI-MatMul for q/k/v/o, gate/up/down and the LM head (per-token A-bit input
           requantization, exact integer core, dynamic per-token output requantization), and
           attention's integer matmuls: Q, K per (token, head) and P per row at A bits, QK^T,
           PV and their scale folds.  Float instead: ``base="fake"`` (the PTQ baseline:
           the integer model's weights dequantized, and every matmul input fake-quantized
           per row at A bits, asymmetric min/max, the same points the integer graph
           quantizes) or ``base="float"`` (the float checkpoint's weights, no quantization).
softmax    DI-ClippedSoftmax (with DI-Exp).  Float: softmax in float32 (int scores: float64).
swiglu     DI-SwiGLU.  Float: ``g * sigmoid(g / alpha) * u``.
norm       DI-Norm (and its per-channel weight when the model keeps one).  Float: RMSNorm with
           eps and the gain.
rope       integer RoPE (the stored Q1.f tables).  Float: Hugging Face's float32 rotation.
residual   the 16-bit residual stream: the integer embedding lookup and the residual adds
           (``residual_add``).  Float: float32 adds.
=========  ==================================================================================

Hand-over from float to an integer operator ("quantize the way the integer graph does"):
the float value is first written exactly enough as integers (:func:`wide`: per row, a
power-of-two scale and 40-bit codes, relative error <= 2^-39 of the row maximum: "exact" for
every purpose here), then requantized with ``intsim.requant.requant_rows`` to the width and
signedness the integer graph carries at that point: the residual stream and o/down outputs
at ``residual_bits`` symmetric, q/k projections at ``qk_bits`` symmetric, gate/up at
``swiglu_in_bits`` asymmetric, probabilities at ``softmax_p_out`` bits with scale
``2^-F``.  Inputs that the integer graph keeps exact (DI-MatMul inputs, scores, the
SwiGLU product) are handed over as the 40-bit codes themselves; DI-MatMul then requantizes
them to A bits as always.

With "matmul" integer the attention is ``intsim.llama.attention`` itself, the one integer
graph; a float RoPE or softmax enters it as a stand-in op (``ops=``, intsim.llama's module
doc) that computes in float and hands integers back as above, so the graph's reshapes,
scale folds and head mapping are never restated here.

Evaluation only: floats here are the float reference's own arithmetic; ``intsim/`` only
lends the graph.  Never calibrate on the held-out text.
"""
from __future__ import annotations

import argparse
import json
import resource
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from intsim.embedding import embed
from intsim.llama import KVCache, attention
from intsim.matmul import QWeight, di_matmul, di_matmul_acc
from intsim.norm import di_norm, norm_weight
from intsim.qtensor import Dyadic, QTensor
from intsim.requant import requant_rows
from intsim.residual import residual_add
from intsim.rope import rope
from intsim.softmax import di_clipped_softmax
from intsim.swiglu import di_swiglu

from .evaluate import dequantize_logits, nll_from_logits
from .float_model import _rotate, _silu, rms_norm

__all__ = ["OPS", "CUMULATIVE", "Hybrid", "wide", "bridge", "fake_quant", "dequantize"]

#: the operators, in the order the cumulative table switches them in (Table 5 shape)
OPS = ("matmul", "softmax", "swiglu", "norm", "rope", "residual")
CUMULATIVE = OPS
BASES = ("fake", "float")
#: code width of the float -> integer hand-over (|codes| < 2^(WIDE_BITS - 1), exact in float64)
WIDE_BITS = 40
#: attention query block of the float path (the same as converters.float_model)
BLOCK = 128

_HF = {"wq": "self_attn.q_proj.weight", "wk": "self_attn.k_proj.weight",
       "wv": "self_attn.v_proj.weight", "wo": "self_attn.o_proj.weight",
       "w_gate": "mlp.gate_proj.weight", "w_up": "mlp.up_proj.weight",
       "w_down": "mlp.down_proj.weight"}


# ------------------------------------------------------------------ hand-over helpers

def dequantize(t: QTensor) -> np.ndarray:
    """``(q - zp) * m * 2^-k`` per row, float64 (exact for codes and mantissas below 2^26)."""
    q = t.q.astype(np.float64) - np.asarray(t.zp, dtype=np.float64)[..., None]
    return q * np.ldexp(t.scale.m.astype(np.float64), -t.scale.k.astype(np.int32))[..., None]


def wide(x: np.ndarray) -> QTensor:
    """Float rows as exact-enough integers: per row ``k`` with ``max|x| * 2^k < 2^39``,
    codes ``rint(x * 2^k)`` (int64), scale ``Dyadic(1, k)``; an all-zero row gets scale 0."""
    x = np.asarray(x, dtype=np.float64)
    if not np.all(np.isfinite(x)):
        raise ValueError("wide: non-finite value handed to an integer operator")
    amax = np.abs(x).max(axis=-1)
    _, e = np.frexp(amax)                       # amax < 2^e
    k = np.where(amax > 0, (WIDE_BITS - 1) - e, 0).astype(np.int64)
    codes = np.rint(np.ldexp(x, k[..., None].astype(np.int32))).astype(np.int64)
    m = (amax > 0).astype(np.int64)
    return QTensor.exact(codes, Dyadic(m, k))


def bridge(x: np.ndarray, bits: int, symmetric: bool, spec, backend: str = "numba") -> QTensor:
    """Float rows to ``bits``-wide per-row codes, by the integer graph's own requantizer."""
    w = wide(x)
    return requant_rows(w.q, w.scale, bits, symmetric, spec, backend, name="hand-over")[0]


def fake_quant(x: np.ndarray, bits: int) -> np.ndarray:
    """Per-row asymmetric min/max fake quantization (range always holds 0), float32 out:
    ``s = (hi - lo) / (2^bits - 1)``, ``zp = rint(-lo / s)``, ``(clip(rint(x/s) + zp) - zp) s``."""
    x64 = np.asarray(x, dtype=np.float64)
    lo = np.minimum(x64.min(axis=-1, keepdims=True), 0.0)
    hi = np.maximum(x64.max(axis=-1, keepdims=True), 0.0)
    Q = 2.0 ** bits - 1
    s = (hi - lo) / Q
    sd = np.where(s > 0, s, 1.0)
    zp = np.rint(-lo / sd)
    q = np.clip(np.rint(x64 / sd) + zp, 0, Q)
    return np.where(s > 0, (q - zp) * sd, 0.0).astype(np.float32)


def _dequantize_weight(w: QWeight) -> np.ndarray:
    """``(m q + b) 2^-k`` per group, float32 [N, K]."""
    N, K = w.q.shape
    G = w.group_size
    q = w.q.astype(np.float64).reshape(N, K // G, G)
    v = q * w.m.astype(np.float64)[:, :, None] + w.b.astype(np.float64)[:, :, None]
    return np.ldexp(v, -w.k).reshape(N, K).astype(np.float32)


def _is_int(v) -> bool:
    return isinstance(v, QTensor)


# ------------------------------------------------------------------ the hybrid forward

class Hybrid:
    """LLaMA forward with each operator float or intsim's integer operator (module doc).

    ``model``: the integer model (its spec and widths rule every integer op); ``fm``: the
    float checkpoint it was converted from (``FloatLlama``); ``int_ops``: the operators
    run in integer (a subset of :data:`OPS`); ``base``: the float matmul when "matmul" is
    not integer ("fake" = W/A fake quantization with the integer model's weights, "float"
    = the float checkpoint's weights).  The weights are the integer model's (dequantized
    where a float operator needs them) unless ``base == "float"`` and "matmul" is float.
    """

    def __init__(self, model, fm, int_ops=(), base: str = "fake", backend: str = "numba"):
        bad = set(int_ops) - set(OPS)
        if bad:
            raise ValueError(f"int_ops: unknown operator(s) {sorted(bad)}; choose from {', '.join(OPS)}")
        if base not in BASES:
            raise ValueError(f"base: {base!r} is not one of {', '.join(BASES)}")
        c, fc = model.config, fm.cfg
        for name in ("n_layers", "dim", "n_heads", "n_kv_heads", "head_dim", "ffn_dim", "vocab_size"):
            if getattr(c, name) != getattr(fc, name):
                raise ValueError(f"fm: {name} {getattr(fc, name)} != the integer model's {getattr(c, name)}")
        self.model, self.fm, self.backend = model, fm, backend
        self.ops = frozenset(int_ops)
        self.lin = "int" if "matmul" in self.ops else base
        self.int_src = self.lin != "float"
        # stand-ins for the float operators inside intsim.llama.attention (when matmul is
        # integer): op function -> float-backed replacement with its signature
        stand_ins = {"rope": (rope, self._rope_float),
                     "softmax": (di_clipped_softmax, self._softmax_float)}
        self._float_ops = dict(pair for op, pair in stand_ins.items() if op not in self.ops)
        self._w: dict = {}

    # ---- parameters
    def _W(self, li, name) -> np.ndarray:
        if not self.int_src:
            return self.fm.w["lm_head.weight" if name == "head" else f"model.layers.{li}.{_HF[name]}"]
        key = (li, name)
        if key not in self._w:
            qw = self.model.w_head if name == "head" else getattr(self.model.layers[li], name)
            self._w[key] = _dequantize_weight(qw)
        return self._w[key]

    def _gamma(self, li, which):
        """The float RMSNorm gain: the checkpoint's, or the integer model's kept norm
        weight (None when folded into the next linears)."""
        if not self.int_src:
            return self.fm.w["model.norm.weight" if which == "final"
                             else f"model.layers.{li}.{which}.weight"]
        if which == "final":
            return None
        L = self.model.layers[li]
        n = "attn" if which == "input_layernorm" else "ffn"
        g = getattr(L, f"{n}_norm_w", None)
        if g is None:
            return None
        return np.ldexp(g.astype(np.float64), -getattr(L, f"{n}_norm_k")).astype(np.float32)

    # ---- value conversions
    @staticmethod
    def _f(v) -> np.ndarray:
        return dequantize(v).astype(np.float32) if _is_int(v) else v

    def _bridge(self, v, bits, symmetric) -> QTensor:
        return v if _is_int(v) else bridge(v, bits, symmetric, self.model.spec, self.backend)

    def _exact(self, v) -> QTensor:
        return v if _is_int(v) else wide(v)

    def _stream(self, v) -> QTensor:
        return self._bridge(v, self.model.spec.residual_bits, True)

    def _fq(self, x, bits=None):
        """Fake-quantized to ``bits`` (default A) per token in the fake-quant mirror."""
        return fake_quant(x, bits or self.model.widths.a_bits) if self.lin == "fake" else x

    # ---- operators
    def _norm(self, h, li, which):
        spec, be = self.model.spec, self.backend
        if "norm" in self.ops:
            hn, _ = di_norm(self._stream(h), spec, be)
            if not self.int_src:
                return self._f(hn) * self._gamma(li, which)
            if which == "final":
                return hn
            L = self.model.layers[li]
            n = "attn" if which == "input_layernorm" else "ffn"
            g = getattr(L, f"{n}_norm_w", None)
            return hn if g is None else norm_weight(hn, g, getattr(L, f"{n}_norm_k"), be)
        g = self._gamma(li, which)
        return rms_norm(self._f(h), np.float32(1.0) if g is None else g, self.fm.cfg.rms_eps)

    def _residual(self, h, o):
        if "residual" in self.ops:
            return residual_add(self._stream(h), self._stream(o), self.model.spec, self.backend)[0]
        return self._f(h) + self._f(o)

    def _embed(self, ids):
        m = self.model
        if self.int_src:
            if "residual" in self.ops:
                return embed(ids, m.emb_q, m.emb_m, m.emb_k, m.widths.emb_bits, self.backend)
            return dequantize(QTensor(m.emb_q[ids], np.zeros(ids.size, np.int32),
                                      Dyadic(m.emb_m[ids], m.emb_k[ids]), m.widths.emb_bits,
                                      True)).astype(np.float32)
        x = self.fm.w["model.embed_tokens.weight"][ids]
        return self._stream(x) if "residual" in self.ops else x

    def _rope_pair(self, x, heads, pos, cos, sin):
        """RoPE of projections x [T, heads*hd]: int -> (int64 codes, Dyadic per token) as an
        exact QTensor; float -> float32 [heads, T, hd]."""
        m, hd = self.model, self.model.config.head_dim
        T = pos.size
        if "rope" in self.ops:
            xi = self._bridge(x, m.widths.qk_bits, True)
            y, s = rope(xi, pos, m.cos_q, m.sin_q, heads, hd, m.spec, self.backend)
            return QTensor.exact(y, s)
        return _rotate(self._f(x).reshape(T, heads, hd).transpose(1, 0, 2), cos, sin)

    def _attention(self, li, hn, pos, visible, cos, sin, cache):
        if self.lin == "int":
            # the integer graph itself, with float-backed stand-ins for RoPE / softmax
            # where those operators are float (no cache across calls: S = T)
            return attention(self.model, li, self._exact(hn), pos, visible, cache, self.backend,
                             None, ops=self._float_ops)
        c = self.model.config
        T, H, Hkv, hd = pos.size, c.n_heads, c.n_kv_heads, c.head_dim
        x = self._fq(self._f(hn))
        q, k, v = x @ self._W(li, "wq").T, x @ self._W(li, "wk").T, x @ self._W(li, "wv").T
        qr = self._rope_pair(q, H, pos, cos, sin)
        kr = self._rope_pair(k, Hkv, pos, cos, sin)
        qf = self._f(qr) if _is_int(qr) else qr
        kf = self._f(kr) if _is_int(kr) else kr
        if _is_int(qr):
            qf = qf.reshape(T, H, hd).transpose(1, 0, 2)
            kf = kf.reshape(T, Hkv, hd).transpose(1, 0, 2)
        vf = self._fq(v)
        o = self._attn_float(self._fq(qf), self._fq(kf), vf.reshape(T, Hkv, hd).transpose(1, 0, 2))
        o = o.transpose(1, 0, 2).reshape(T, H * hd)
        return self._fq(o) @ self._W(li, "wo").T

    def _rope_float(self, x: QTensor, positions, cos_q, sin_q, n_heads, head_dim, spec, backend):
        """Stand-in for ``intsim.rope.rope`` in the integer graph: Hugging Face's float32
        rotation (the checkpoint's float tables; ``cos_q``/``sin_q`` unused) of the
        dequantized projections, handed back as exact-enough integers (:func:`wide`)."""
        T = positions.size
        cos, sin = self.fm._rope(int(positions.max()) + 1)
        r = _rotate(self._f(x).reshape(T, n_heads, head_dim).transpose(1, 0, 2), cos[positions],
                    sin[positions])                                          # [heads, T, hd]
        w = wide(r.transpose(1, 0, 2).reshape(T, n_heads * head_dim))
        return w.q, w.scale

    def _softmax_float(self, scores, scale: Dyadic, mask, spec, backend) -> QTensor:
        """Stand-in for DI-ClippedSoftmax in the integer graph: a float64 softmax of the
        dequantized scores, handed over as DI-ClippedSoftmax's output codes (:meth:`_p_codes`)."""
        sf = np.where(mask, scores * np.ldexp(scale.m.astype(np.float64),
                                              -scale.k.astype(np.int32))[..., None], -np.inf)
        sf -= sf.max(axis=-1, keepdims=True)
        e = np.exp(sf)
        return self._p_codes(e / e.sum(axis=-1, keepdims=True))

    def _p_codes(self, P: np.ndarray) -> QTensor:
        """Float probabilities as DI-ClippedSoftmax's output: p_out-bit codes, scale 2^-F."""
        spec = self.model.spec
        F = spec.softmax_p_out if spec.softmax_p_frac is None else spec.softmax_p_frac
        codes = np.minimum(np.rint(np.ldexp(P, F)), 2 ** spec.softmax_p_out - 1).astype(np.int64)
        rows = P.shape[:-1]
        return QTensor(codes, np.zeros(rows, np.int32),
                       Dyadic(np.ones(rows, np.int64), np.full(rows, F, np.int64)),
                       spec.softmax_p_out, False)

    def _softmax_int_block(self, s, a, b):
        """DI-ClippedSoftmax on a float score block [KV, R, b-a, b] (query rows a..b-1)."""
        vis = np.arange(b)[None, :] <= np.arange(a, b)[:, None]            # [b-a, b]
        vis = np.ascontiguousarray(np.broadcast_to(vis, s.shape))
        x = wide(np.where(vis, s.astype(np.float64), 0.0))
        p = di_clipped_softmax(x.q, x.scale, mask=vis, spec=self.model.spec, backend=self.backend)
        return dequantize(p).astype(np.float32)

    def _attn_float(self, q, k, v):
        """converters.float_model._causal_attention, step for step, with the hooks: an
        integer softmax in place of the float one, fake quantization of P at pv_bits (A by
        default, docs/SPEC.md section 14.2)."""
        H, T, hd = q.shape
        KV = k.shape[0]
        qg = q.reshape(KV, H // KV, T, hd)
        out = np.empty_like(qg)
        scale = np.float32(1.0 / np.sqrt(hd))
        tri = np.triu(np.full((BLOCK, BLOCK), -np.inf, dtype=np.float32), 1)
        for a in range(0, T, BLOCK):
            b = min(a + BLOCK, T)
            s = qg[:, :, a:b] @ k[:, None, :b].transpose(0, 1, 3, 2)
            s *= scale
            if "softmax" in self.ops:
                s = self._softmax_int_block(s, a, b)
            else:
                s[..., a:b] += tri[:b - a, :b - a]
                s -= s.max(axis=-1, keepdims=True)
                np.exp(s, out=s)
                s /= s.sum(axis=-1, keepdims=True)
            out[:, :, a:b] = self._fq(s, self.model.widths.pv_in_bits) @ v[:, None, :b]
        return out.reshape(H, T, hd)

    def _mlp(self, li, hn):
        m, be = self.model, self.backend
        w, spec, L = m.widths, m.spec, m.layers[li]
        A = w.a_bits
        if self.lin == "int":
            x = self._exact(hn)
            g, _ = di_matmul(x, L.w_gate, A, spec.swiglu_in_bits, False, spec, be)
            u, _ = di_matmul(x, L.w_up, A, spec.swiglu_in_bits, False, spec, be)
        else:
            x = self._fq(self._f(hn))
            g, u = x @ self._W(li, "w_gate").T, x @ self._W(li, "w_up").T
        ainv = L.alpha_inv if self.int_src else None
        if "swiglu" in self.ops:
            gi = self._bridge(g, spec.swiglu_in_bits, False)
            ui = self._bridge(u, spec.swiglu_in_bits, False)
            y, ys = di_swiglu(gi, ui, ainv, L.alpha_k if ainv is not None else 0, spec, be)
            y = QTensor.exact(y, ys)
        else:
            gf, uf = self._f(g), self._f(u)
            if ainv is None:
                y = _silu(gf) * uf
            else:
                a = np.ldexp(ainv.astype(np.float64), -L.alpha_k).astype(np.float32)
                with np.errstate(over="ignore"):
                    y = gf / (np.float32(1.0) + np.exp(-gf * a)) * uf
        if self.lin == "int":
            return di_matmul(self._exact(y), L.w_down, A, spec.residual_bits, True, spec, be)[0]
        return self._fq(self._f(y)) @ self._W(li, "w_down").T

    def logits(self, ids) -> np.ndarray:
        """Logits [T, V] of a causal prefill of ``ids`` (float32, or float64 from the
        integer head's dequantization: ``converters.evaluate.dequantize_logits``)."""
        ids = np.asarray(ids, dtype=np.int64)
        m = self.model
        T = ids.size
        pos = np.arange(T, dtype=np.int64)
        visible = np.arange(T)[None, :] <= pos[:, None]
        cos, sin = self.fm._rope(T)
        cache = KVCache.empty(m, T) if self.lin == "int" else None
        h = self._embed(ids)
        for li in range(m.config.n_layers):
            hn = self._norm(h, li, "input_layernorm")
            h = self._residual(h, self._attention(li, hn, pos, visible, cos, sin, cache))
            hn2 = self._norm(h, li, "post_attention_layernorm")
            h = self._residual(h, self._mlp(li, hn2))
        hf = self._norm(h, None, "final")
        if self.lin == "int":
            P, s, _ = di_matmul_acc(self._exact(hf), m.w_head, m.widths.head_in_bits, m.spec, self.backend)
            return dequantize_logits(P, s.m, s.k)
        return self._fq(self._f(hf), m.widths.head_in_bits) @ self._W(None, "head").T

    def nll(self, ids) -> np.ndarray:
        return nll_from_logits(self.logits(ids), np.asarray(ids))


# ------------------------------------------------------------------ command line

def _load(args):
    from intsim.modelfile import load_model, load_tokenizer

    from .evaluate import read_text_tokens
    from .ppl import override_spec
    model = load_model(args.model)
    if getattr(args, "spec", None):
        model = override_spec(model, args.spec, args.float_src)
    tokens = read_text_tokens(args.text, load_tokenizer(model), args.max_tokens)
    return model, tokens


def _float_model(model, args):
    from .float_model import FloatLlama
    from .ppl import float_reference_dir
    return FloatLlama.from_hf(Path(args.float_src) if args.float_src else float_reference_dir(model))


def _ops_arg(text: str) -> tuple:
    if text in ("", "none"):
        return ()
    if text == "all":
        return OPS
    ops = tuple(t.strip() for t in text.split(","))
    bad = [o for o in ops if o not in OPS]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown operator(s) {bad}; choose from {', '.join(OPS)}")
    return ops


def _common(p, spec: bool = False):
    p.add_argument("model", metavar="MODEL", help="integer model file")
    p.add_argument("--text", required=True, metavar="FILE", help="held-out UTF-8 text")
    p.add_argument("--max-tokens", type=int, default=1024, metavar="N",
                   help="score the first N tokens (default 1024)")
    p.add_argument("--ctx", type=int, default=512, metavar="N", help="window length (default 512)")
    p.add_argument("--float-src", metavar="DIR", help="float HF folder (default: the model's source)")
    if spec:
        p.add_argument("--spec", metavar="JSON", default=None,
                       help="spec options over the stored ones (as intsim ppl --spec)")


def _cmd_prefix(args, sub: str) -> str:
    parts = [".venv/bin/python", "-m", "converters.ablate", sub, str(args.model), "--text",
             str(args.text), "--max-tokens", str(args.max_tokens), "--ctx", str(args.ctx)]
    if args.float_src:
        parts += ["--float-src", str(args.float_src)]
    return " ".join(shlex.quote(p) for p in parts)


def hybrid_ppl(model, fm, tokens, ctx, int_ops, base="fake") -> dict:
    from .evaluate import perplexity
    return perplexity(Hybrid(model, fm, int_ops, base).nll, tokens, ctx)


def cmd_ops(args) -> int:
    model, tokens = _load(args)
    fm = _float_model(model, args)
    t0 = time.perf_counter()
    r = hybrid_ppl(model, fm, tokens, min(args.ctx, model.config.max_pos), args.int, args.base)
    out = {"int_ops": list(args.int), "base": args.base, "ppl": r["ppl"], "tokens": r["tokens"],
           "windows": r["windows"], "seconds": round(time.perf_counter() - t0, 1)}
    print(json.dumps(out))
    return 0


def cmd_ops_table(args) -> int:
    """Every row of study (b) in one process (the Numba kernels compile once)."""
    from .evaluate import perplexity
    from .ppl import int_nll_fn
    model, tokens = _load(args)
    fm = _float_model(model, args)
    ctx = min(args.ctx, model.config.max_pos)
    pre = _cmd_prefix(args, "ops")
    # (label, integer ops, base, the row it is compared with)
    rows = [("float32 reference (no quantization)", (), "float", None)]
    for i in range(len(CUMULATIVE) + 1):
        ops = CUMULATIVE[:i]
        label = (f"W{model.widths.w_bits}A{model.widths.a_bits} fake-quant, float operators"
                 if i == 0 else f"+ {CUMULATIVE[i - 1]}")
        rows.append((label, ops, "fake", i))
    if args.single:
        for op in OPS[1:]:
            rows.append((f"fake-quant + {op} only", (op,), "fake", 1))
        for op in OPS[1:]:      # an integer matmul brings the integer weights: row "+ matmul"
            rows.append((f"float32 weights + {op} only", (op,), "float", 0))
    res, nlls = [], []
    for label, ops, base, prev in rows:
        t0 = time.perf_counter()
        rec = _Recorder(Hybrid(model, fm, ops, base).nll)
        r = perplexity(rec, tokens, ctx)
        cmd = f"{pre} --int {','.join(ops) or 'none'} --base {base}"
        row = {"label": label, "int_ops": list(ops), "base": base, "ppl": r["ppl"],
               "seconds": round(time.perf_counter() - t0, 1), "command": cmd}
        nlls.append(np.concatenate(rec.out))
        # paired per-token NLL differences: against the float row and against the row
        # this one changes (the chain's previous row; the base of an operator alone)
        for key, j in (("vs_float", 0), ("vs_prev", prev)):
            if j is not None and len(res) > 0:
                row[f"dnll_{key}"], row[f"dnll_{key}_se"] = _paired(nlls[-1], nlls[j])
        res.append(row)
        print(json.dumps(row), flush=True)
    if args.save:
        np.savez_compressed(args.save, labels=np.array([r["label"] for r in res]),
                            nll=np.stack(nlls), ppl=np.array([r["ppl"] for r in res]))
    r = perplexity(int_nll_fn(model), tokens, ctx)
    print(json.dumps({"label": "intsim ppl (integer model, fast path)", "ppl": r["ppl"],
                      "equal_to_all_integer_row": r["ppl"] == res[len(CUMULATIVE) + 1]["ppl"]}),
          flush=True)
    return 0


class _Recorder:
    """Wraps an nll function and keeps the per-token NLLs of every window it scores."""

    def __init__(self, fn):
        self.fn, self.out = fn, []

    def __call__(self, window):
        nll = self.fn(window)
        self.out.append(np.asarray(nll, dtype=np.float64))
        return nll


def _paired(a, b) -> tuple[float, float]:
    """Mean per-token NLL difference a - b (nats) and its standard error."""
    d = a - b
    return float(d.mean()), float(d.std(ddof=1) / np.sqrt(d.size))


def _spec_nll(model, tokens, ctx) -> tuple[float, np.ndarray]:
    """Integer-model perplexity (``intsim ppl``'s path) and the per-token NLLs."""
    from .evaluate import perplexity
    from .ppl import int_nll_fn
    rec = _Recorder(int_nll_fn(model))
    return perplexity(rec, tokens, ctx)["ppl"], np.concatenate(rec.out)


def _spec_ppl(model, tokens, ctx) -> float:
    return _spec_nll(model, tokens, ctx)[0]


def cmd_clip(args) -> int:
    """Study (c): ``intsim ppl --spec`` over clip values, in one process.  Each row also
    gives its paired per-token NLL difference against the model's stored clip (same
    other options): ``dnll`` +- ``dnll_se`` nats."""
    from intsim.modelfile import load_model, load_tokenizer

    from .evaluate import read_text_tokens
    from .ppl import override_spec
    for path in args.models:
        model0 = load_model(path)
        tokens = read_text_tokens(args.text, load_tokenizer(model0), args.max_tokens)
        ctx = min(args.ctx, model0.config.max_pos)
        for base in (json.loads(b) for b in (args.spec or ["{}"])):
            c0 = model0.spec.softmax_clip
            clips = [c0] + [c for c in args.clips if c != c0]
            ref = None
            for c in clips:
                opts = {**base, "softmax_clip": c}
                model = override_spec(model0, opts, args.float_src)
                t0 = time.perf_counter()
                ppl, nll = _spec_nll(model, tokens, ctx)
                ref = nll if ref is None else ref
                cmd = (f".venv/bin/intsim ppl {shlex.quote(str(path))} --text "
                       f"{shlex.quote(str(args.text))} --max-tokens {args.max_tokens} --ctx "
                       f"{args.ctx} --no-float --spec {shlex.quote(json.dumps(opts))}")
                d, se = _paired(nll, ref)
                print(json.dumps({"model": str(path), "spec": opts, "ppl": ppl, "dnll": d,
                                  "dnll_se": se, "seconds": round(time.perf_counter() - t0, 1),
                                  "command": cmd}), flush=True)
    return 0


def kv_scale_bits(model, m_bits: int, k_bits: int) -> dict:
    """Bits the KV cache stores per token (all layers): codes, and the dynamic scales
    (K per (token, kv head), V per token: mantissa + exponent + an A-bit zero point)."""
    c, A = model.config, model.widths.a_bits
    codes = 2 * c.n_kv_heads * c.head_dim * A
    scales = (c.n_kv_heads + 1) * (m_bits + k_bits + A)
    return {"kv_code_bits": codes * c.n_layers, "kv_scale_bits": scales * c.n_layers,
            "kv_scale_share": scales / (codes + scales)}


def speed(model, prompt_len=64, decode_tokens=64, prefill_len=256, repeats=5, seed=0) -> dict:
    """Fast-path speed, ``converters.modelbench.bench_int``'s protocol on a loaded model
    (best of 5 rather than 3: the machine is shared)."""
    from .modelbench import bench_int
    return bench_int(model, prompt_len, decode_tokens, prefill_len, repeats, seed)


def speed_interleaved(models: list, rounds: int = 5, prompt_len=64, decode_tokens=64,
                      prefill_len=256, seed=0) -> list[dict]:
    """``speed`` for several models, round-robin: each round times one prefill and one
    decode of every model in turn, and each model keeps its best round.  On a shared
    machine the load then drifts over all rows alike instead of favouring some."""
    from .modelbench import time_decode, time_prefill
    rng = np.random.default_rng(seed)
    V = models[0].config.vocab_size
    pre_ids, prompt = rng.integers(0, V, prefill_len), rng.integers(0, V, prompt_len)

    def once(m):
        return time_prefill(m, pre_ids), time_decode(m, prompt, decode_tokens)

    for m in models:
        once(m)                                        # warm-up (compile, page in)
    best = [[np.inf, np.inf] for _ in models]
    for _ in range(rounds):
        for i, m in enumerate(models):
            tp, td = once(m)
            best[i] = [min(best[i][0], tp), min(best[i][1], td)]
    return [{"prefill_int_tok_s": prefill_len / p, "decode_int_tok_s": decode_tokens / d}
            for p, d in best]


def cmd_spec(args) -> int:
    """One row of study (d): perplexity and, with --speed, speed and memory, one process."""
    model, tokens = _load(args)
    out = {"model": str(args.model), "spec": json.loads(args.spec) if args.spec else {},
           "ppl": _spec_ppl(model, tokens, min(args.ctx, model.config.max_pos)),
           "file_mib": Path(args.model).stat().st_size / 2 ** 20,
           **kv_scale_bits(model, model.spec.m_bits, model.spec.k_bits)}
    if args.speed:
        out.update(speed(model))
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(out))
    return 0


def cmd_widths(args) -> int:
    """Study (d): every width row in one process (the kernels compile once): perplexity
    first, then with --speed the fast path's speed of all rows, interleaved."""
    from intsim.errors import IntsimError
    from intsim.modelfile import load_model, load_tokenizer

    from .evaluate import read_text_tokens
    from .ppl import override_spec
    model0 = load_model(args.model)
    tokens = read_text_tokens(args.text, load_tokenizer(model0), args.max_tokens)
    ctx = min(args.ctx, model0.config.max_pos)
    _, ref = _spec_nll(model0, tokens, ctx)         # the stored spec: the paired reference
    ok = []
    for opts in args.rows:
        row = {"spec": opts}
        cmd = (f".venv/bin/intsim ppl {shlex.quote(str(args.model))} --text "
               f"{shlex.quote(str(args.text))} --max-tokens {args.max_tokens} --ctx {args.ctx} "
               f"--no-float --spec {shlex.quote(json.dumps(opts))}")
        try:
            model = override_spec(model0, opts, args.float_src)
            row["ppl"], nll = _spec_nll(model, tokens, ctx)
            row["dnll"], row["dnll_se"] = _paired(nll, ref)
            ok.append((opts, model))
        except IntsimError as e:
            row["error"] = str(e)
            model = None
        if model is not None:
            row.update(kv_scale_bits(model, model.spec.m_bits, model.spec.k_bits))
        row["command"] = cmd
        print(json.dumps(row), flush=True)
    if args.speed and ok:
        for (opts, _), sp in zip(ok, speed_interleaved([m for _, m in ok], args.rounds)):
            cmd = (f"NUMBA_NUM_THREADS=1 .venv/bin/python -m converters.ablate spec "
                   f"{shlex.quote(str(args.model))} --text {shlex.quote(str(args.text))} "
                   f"--max-tokens {args.max_tokens} --ctx {args.ctx} --speed --spec "
                   f"{shlex.quote(json.dumps(opts))}")
            print(json.dumps({"spec": opts, **sp, "command": cmd}), flush=True)
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m converters.ablate",
                                 description="Ablations of the integer operators on held-out "
                                             "perplexity (docs/RESULTS.md, Ablations).")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("ops", help="perplexity with the chosen operators integer, the rest float")
    _common(p, spec=True)
    p.add_argument("--int", type=_ops_arg, default=(), metavar="OPS",
                   help=f"comma list of integer operators ({', '.join(OPS)}), 'all' or 'none'")
    p.add_argument("--base", choices=BASES, default="fake",
                   help="float matmul: 'fake' W/A fake quantization with the integer weights "
                        "(default), 'float' the float checkpoint's weights")
    p.set_defaults(func=cmd_ops)
    p = sub.add_parser("ops-table", help="every row of the operator ablation in one process")
    _common(p, spec=True)
    p.add_argument("--single", action="store_true", help="also each operator alone on the fake-quant base")
    p.add_argument("--save", metavar="NPZ", help="also save every row's per-token NLL")
    p.set_defaults(func=cmd_ops_table)
    p = sub.add_parser("clip", help="perplexity over DI-ClippedSoftmax clip values, one process")
    p.add_argument("models", nargs="+", metavar="MODEL")
    p.add_argument("--text", required=True, metavar="FILE")
    p.add_argument("--max-tokens", type=int, default=1024, metavar="N")
    p.add_argument("--ctx", type=int, default=512, metavar="N")
    p.add_argument("--float-src", metavar="DIR")
    p.add_argument("--clips", type=lambda s: [int(c) for c in s.split(",")],
                   default=[5, 8, 10, 12, 15, 20, 30, 1000], metavar="C,C,...")
    p.add_argument("--spec", metavar="JSON", action="append",
                   help="other spec options of a sweep (repeat for several sweeps)")
    p.set_defaults(func=cmd_clip)
    p = sub.add_parser("spec", help="one spec override: perplexity, and speed/memory with --speed")
    _common(p, spec=True)
    p.add_argument("--speed", action="store_true", help="also fast-path decode/prefill tok/s")
    p.set_defaults(func=cmd_spec)
    p = sub.add_parser("widths", help="perplexity and speed over scale widths, one process")
    _common(p)
    p.add_argument("--rows", type=lambda s: json.loads(s), metavar="JSON_LIST",
                   default=[{"m_bits": b} for b in (4, 6, 8, 16)]
                   + [{"k_bits": b} for b in (4, 6, 16)]
                   + [{"m_bits": b, "k_bits": b} for b in (6, 16)],
                   help="list of spec override objects")
    p.add_argument("--speed", action="store_true", help="also fast-path decode/prefill tok/s")
    p.add_argument("--rounds", type=int, default=5, help="interleaved speed rounds (default 5)")
    p.set_defaults(func=cmd_widths)
    args = ap.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
