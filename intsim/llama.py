"""The integer LLaMA graph: one straight ``forward()`` over the I-LLM operators.

Shapes: T new tokens, S = past + T cached positions, D model dim, H query heads,
Hkv key/value heads, hd head dim, F ffn dim, V vocab.  Every array is an integer array;
every scale a ``Dyadic`` per row.  docs/SPEC.md section 14 fixes the attention folds.

``tap``, if given, sees every op call in execution order (the golden exporter's hook):
each op runs through ``_op(tap, name, fn, *args)``, which calls ``fn`` and then reports
it.  A plain callable gets ``tap(name, QTensor)`` for each op whose output has a scale;
an op-aware tap (attribute ``takes_op_calls``, e.g. ``intsim.golden.Recorder``) gets
``tap(name, value, OpCall)`` for every op, with the function, its arguments and its whole
result.  It only observes, so capturing never changes a result.  Names: docs/GOLDEN_FORMAT.md.

``ops``, where a graph function takes it (``attention``), maps op functions to stand-ins
that ``_op`` calls in their place with the same arguments and that return the same kind of
result: the graph (its reshapes, scale folds, cache and head mapping) stays written once
while an op is swapped out.  ``converters.ablate`` runs float-backed RoPE and softmax this
way; ``forward()`` never passes it, so a model run always uses intsim's own ops.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import numpy as np

from .attention import GUARD_K, GUARD_O, GUARD_V, fold_scales, pv, qk_scores
from .embedding import check_token_ids, embed
from .errors import IntsimError, trusted
from .fixedpoint import dyadic_fit
from .hadamard import hadamard_rows
from .head import inv_sqrt_dyadic
from .matmul import di_matmul, di_matmul_acc
from .model import IntModel
from .norm import di_norm, norm_weight
from .qtensor import Dyadic, QTensor
from .requant import M_IN_LIMIT, requant_rows
from .residual import residual_add
from .rope import rope
from .softmax import di_clipped_softmax
from .swiglu import di_swiglu


def mul_scales(a: Dyadic, b: Dyadic, spec) -> Dyadic:
    """``a * b`` as one Dyadic: exact while the mantissa product is <= 2^28 (the
    requantizer's input bound), else refitted to 28 bits (tie rule ``spec.rounding``)."""
    m = a.m * b.m
    if m.size == 0 or int(m.max()) <= M_IN_LIMIT:
        return Dyadic(m, a.k + b.k)
    mf, kf, _ = dyadic_fit(m, np.int64(1), 28, (-(2 ** 20), 2 ** 20), spec.rounding)
    return Dyadic(mf, a.k + b.k + kf)


@dataclass(frozen=True)
class OpCall:
    """One op call as an op-aware tap sees it: the public op function, the arguments it
    was given and its whole result."""
    fn: object
    args: tuple
    kwargs: dict
    result: object


def _op(tap, op_name: str, fn, /, *args, ops=None, **kwargs):
    """``fn(*args, **kwargs)`` (or its stand-in in ``ops``, module doc), reported to ``tap``
    (module doc) when there is one; the tap sees the function that ran."""
    fn = fn if ops is None else ops.get(fn, fn)
    out = fn(*args, **kwargs)
    if tap is not None:
        first = out[0] if isinstance(out, tuple) else out
        if isinstance(out, tuple) and isinstance(first, np.ndarray) and isinstance(out[1], Dyadic):
            first = QTensor.exact(first, out[1])          # exact integers and their scale
        if getattr(tap, "takes_op_calls", False):
            tap(op_name, first, OpCall(fn, args, kwargs, out))
        elif isinstance(first, QTensor):
            tap(op_name, first)
    return out


@dataclass
class KVCache:
    """Per layer: K codes per (position, kv head), V codes per position, with their
    zero points and scales.  Preallocated to ``capacity`` positions.

    ``version`` counts the writes made through :meth:`put` (the graph's writes); a backend
    that keeps its own copies of the cache in other layouts (intsim.fastpath) rebuilds
    them when it changed.  Code that writes the arrays any other way bumps it too."""
    k_q: list
    k_zp: list
    k_m: list
    k_k: list
    v_q: list
    v_zp: list
    v_m: list
    v_k: list
    capacity: int
    length: int = 0
    version: int = 0

    @classmethod
    def empty(cls, model: IntModel, capacity: int | None = None) -> "KVCache":
        c = model.config
        cap = c.max_pos if capacity is None else capacity
        L, Hkv, hd = c.n_layers, c.n_kv_heads, c.head_dim

        def arr(shape, dt):
            return [np.zeros(shape, dtype=dt) for _ in range(L)]
        return cls(arr((cap, Hkv, hd), np.uint8), arr((cap, Hkv), np.int32), arr((cap, Hkv), np.int64),
                   arr((cap, Hkv), np.int64), arr((cap, Hkv * hd), np.uint8), arr((cap,), np.int32),
                   arr((cap,), np.int64), arr((cap,), np.int64), cap, 0)

    def put(self, li: int, at: int, k: QTensor, v: QTensor) -> None:
        T = k.q.shape[0]
        self.k_q[li][at:at + T], self.k_zp[li][at:at + T] = k.q, k.zp
        self.k_m[li][at:at + T], self.k_k[li][at:at + T] = k.scale.m, k.scale.k
        self.v_q[li][at:at + T], self.v_zp[li][at:at + T] = v.q, v.zp
        self.v_m[li][at:at + T], self.v_k[li][at:at + T] = v.scale.m, v.scale.k
        self.version += 1


def attention(model: IntModel, li: int, normed: QTensor, pos: np.ndarray, visible: np.ndarray,
              cache: KVCache, backend: str, tap, ops: dict | None = None) -> QTensor:
    """One attention block: q/k/v DI-MatMul, RoPE, QK^T with the key-scale fold,
    DI-ClippedSoftmax, PV with the value-scale fold, heads aligned, o_proj.
    ``pos``: RoPE positions [T]; ``visible``: [T, S] which cached positions each query sees;
    ``ops``: stand-ins for op functions (module doc), None for the model's own ops."""
    c, w, spec, L = model.config, model.widths, model.spec, model.layers[li]
    T, H, Hkv, hd, A = normed.q.shape[0], c.n_heads, c.n_kv_heads, c.head_dim, w.a_bits
    past, S = cache.length, cache.length + T
    prefix = f"layers.{li}.attn"                                             # op names
    run_op = partial(_op, tap, ops=ops)
    ag = w.group_kw()                        # group-wise activations (SPEC 4.8), when set
    q, _ = run_op(f"{prefix}.q_proj", di_matmul, normed, L.wq, A, w.qk_bits, out_symmetric=True, spec=spec,
                  backend=backend, **ag)                                       # [T, H*hd]
    k, _ = run_op(f"{prefix}.k_proj", di_matmul, normed, L.wk, A, w.qk_bits, out_symmetric=True, spec=spec,
                  backend=backend, **ag)                                       # [T, Hkv*hd]
    v, _ = run_op(f"{prefix}.v_proj", di_matmul, normed, L.wv, A, A, out_symmetric=False, spec=spec,
                  backend=backend, **ag)                                       # per token
    qr, qs = run_op(f"{prefix}.q_rope", rope, q, pos, model.cos_q, model.sin_q, H, hd, spec, backend)
    kr, ks = run_op(f"{prefix}.k_rope", rope, k, pos, model.cos_q, model.sin_q, Hkv, hd, spec, backend)
    # Q and K per (token, head) at A bits
    qh, _ = run_op(f"{prefix}.q", requant_rows, qr.reshape(T, H, hd), Dyadic(np.repeat(qs.m[:, None], H, 1),
                   np.repeat(qs.k[:, None], H, 1)), A, symmetric=False, spec=spec, backend=backend, name="q")
    kh, _ = run_op(f"{prefix}.k", requant_rows, kr.reshape(T, Hkv, hd), Dyadic(np.repeat(ks.m[:, None], Hkv, 1),
                   np.repeat(ks.k[:, None], Hkv, 1)), A, symmetric=False, spec=spec, backend=backend, name="k")
    cache.put(li, past, kh, v)
    kq, kz, km, kk = (arr[li][:S] for arr in (cache.k_q, cache.k_zp, cache.k_m, cache.k_k))
    vq, vz, vm, vk = (arr[li][:S] for arr in (cache.v_q, cache.v_zp, cache.v_m, cache.v_k))
    group = H // Hkv                         # query head h reads kv head h // group
    # scores: exact int32 accumulators, then the key scales folded along each row
    acc = run_op(f"{prefix}.qk", qk_scores, qh.centered(), kq.astype(np.int64) - kz[..., None],
                 backend)                                                      # [H, T, S]
    key_m, key_k = np.repeat(km.T, group, 0)[:, None, :], np.repeat(kk.T, group, 0)[:, None, :]
    scores, key_ref = run_op(f"{prefix}.scores", fold_scales, acc, key_m, key_k, GUARD_K, visible[None],
                             spec, backend, name="scores")
    s_row = mul_scales(Dyadic(qh.scale.m.T, qh.scale.k.T), inv_sqrt_dyadic(hd, spec.m_bits), spec)
    p = run_op(f"{prefix}.softmax", di_clipped_softmax, scores, mul_scales(s_row, key_ref, spec),
               mask=visible[None], spec=spec, backend=backend)                 # [H, T, S]
    # value scales folded into the probabilities, requantized per row to pv_bits (A by
    # default; SPEC 14.2): PV's int32 sums stay bounded up to pv_max_context positions
    p_scaled, p_ref = run_op(f"{prefix}.p_v", fold_scales, p.q.astype(np.int64), vm, vk, GUARD_V,
                             visible[None], spec, backend, name="p*v_scale")
    p_codes, _ = run_op(f"{prefix}.p", requant_rows, p_scaled, mul_scales(p.scale, p_ref, spec),
                        pv_in_bits(w), symmetric=False, spec=spec, backend=backend, name="p")
    att = run_op(f"{prefix}.pv", pv, p_codes.centered(), (vq.astype(np.int64) - vz[:, None]).reshape(S, Hkv, hd),
                 backend)                                                      # [T, H, hd]
    # heads to one per-token scale, then o_proj
    head_m, head_k = np.repeat(p_codes.scale.m.T, hd, 1), np.repeat(p_codes.scale.k.T, hd, 1)  # [T, H*hd]
    heads, heads_scale = run_op(f"{prefix}.heads", fold_scales, att.reshape(T, H * hd), head_m, head_k,
                                GUARD_O, None, spec, backend, name="heads")
    o, _ = run_op(f"{prefix}.o_proj", di_matmul, QTensor.exact(heads, heads_scale), L.wo, A, spec.residual_bits,
                  out_symmetric=True, spec=spec, backend=backend, **ag)
    return o


def check_call(model: IntModel, ids, cache: KVCache | None, segments) -> tuple:
    """Validate one forward call; returns ``(ids, cache, pos, visible)``: int64 token ids,
    the cache (a new one holding exactly these tokens when None), the RoPE positions [T]
    and the visibility [T, past + T] of the cached positions."""
    c = model.config
    ids = check_token_ids(ids, c.vocab_size)
    if ids.ndim != 1 or ids.size == 0:
        raise IntsimError(f"token ids: expected a non-empty 1-d sequence, got shape {ids.shape}")
    cache = KVCache.empty(model, ids.size) if cache is None else cache
    past, T = cache.length, ids.size
    if past + T > min(cache.capacity, c.max_pos):
        raise IntsimError(f"token ids: {past} cached + {T} new positions exceed the context of "
                          f"{min(cache.capacity, c.max_pos)}")
    pos, visible = _positions(past, T, segments)
    return ids, cache, pos, visible


def forward(model: IntModel, ids: np.ndarray, cache: KVCache | None = None,
            backend: str = "numba", tap=None, segments: np.ndarray | None = None
            ) -> tuple[np.ndarray, Dyadic]:
    """The graph: run ``ids`` (the next T tokens) through the model op by op; return int64
    logits [T, V] and their per-token scale.  With a ``cache`` holding ``past`` positions
    the tokens sit at positions past..past+T-1 and are appended to it.  ``segments``
    (non-decreasing ints, no cache) packs several prompts into one call: each token sees
    only earlier tokens of its own segment, and positions restart at 0 per segment.
    (``intsim.runner.forward`` runs the same graph fused when it can.)"""
    ids, cache, pos, visible = check_call(model, ids, cache, segments)
    if backend == "numba":
        with trusted():       # inputs checked above; intermediates' ranges are proved (SPEC)
            return _layers(model, ids, pos, visible, cache, backend, tap)
    return _layers(model, ids, pos, visible, cache, backend, tap)


def _layers(model, ids, pos, visible, cache, backend, tap):
    c, w, spec = model.config, model.widths, model.spec
    past, T = cache.length, ids.size
    h = _op(tap, "embed", embed, ids, model.emb_q, model.emb_m, model.emb_k, w.emb_bits, backend)  # [T, D]
    ag = w.group_kw()                        # group-wise activations (SPEC 4.8), when set
    for li, L in enumerate(model.layers):
        normed = _norm(tap, f"layers.{li}.attn_norm", h, L.attn_norm_w, L.attn_norm_k, spec, backend)
        o = attention(model, li, normed, pos, visible, cache, backend, tap)      # [T, D] int16
        h, _ = _op(tap, f"layers.{li}.attn_residual", residual_add, h, o, spec, backend)  # stream, 16-bit
        normed = _norm(tap, f"layers.{li}.ffn_norm", h, L.ffn_norm_w, L.ffn_norm_k, spec, backend)
        g, _ = _op(tap, f"layers.{li}.gate", di_matmul, normed, L.w_gate, w.a_bits, spec.swiglu_in_bits,
                   out_symmetric=False, spec=spec, backend=backend, **ag)
        u, _ = _op(tap, f"layers.{li}.up", di_matmul, normed, L.w_up, w.a_bits, spec.swiglu_in_bits,
                   out_symmetric=False, spec=spec, backend=backend, **ag)
        y, ys = _op(tap, f"layers.{li}.swiglu", di_swiglu, g, u, L.alpha_inv, L.alpha_k, spec,
                    backend)                                                     # exact int64
        if w.down_rot is not None:           # online Hadamard rotation (SPEC 7.6), H_b/b in w_down
            y, ys, _ = _op(tap, f"layers.{li}.down_rot", hadamard_rows, y, ys, w.down_rot, spec, backend)
        d, _ = _op(tap, f"layers.{li}.down", di_matmul, QTensor.exact(y, ys), L.w_down, w.a_bits,
                   spec.residual_bits, out_symmetric=True, spec=spec, backend=backend, **ag)
        h, _ = _op(tap, f"layers.{li}.residual", residual_add, h, d, spec, backend)
    cache.length = past + T
    return lm_head(model, h, backend, tap)


def lm_head(model: IntModel, h: QTensor, backend: str, tap=None) -> tuple[np.ndarray, Dyadic]:
    """The final DI-Norm of the stream ``h`` [T, D] and the LM head's DI-MatMul steps 1-3,
    its input quantized to :func:`head_in_bits`: int64 logits [T, V] and their per-token
    scale (docs/SPEC.md sections 13, 13.1).  Reads ``model.spec``, ``.widths``, ``.w_head``."""
    final, _ = _op(tap, "final_norm", di_norm, h, model.spec, backend)
    logits, logits_scale, _ = _op(tap, "logits", di_matmul_acc, final, model.w_head,
                                  head_in_bits(model.widths), model.spec, backend,
                                  **model.widths.group_kw())                    # [T, V] int64
    return logits, logits_scale


def head_in_bits(widths) -> int:
    """The width the LM head's DI-MatMul quantizes its input (the final DI-Norm's output)
    to: ``widths.head_a_bits``, or A when the model sets none (docs/SPEC.md section 13.1).
    One of the graph's two choices of a width that is not A everywhere (the other:
    :func:`pv_in_bits`); a name of its own so that a mutant can swap it (intsim.mutants:
    ``head.input_at_a``)."""
    return widths.head_in_bits


def pv_in_bits(widths) -> int:
    """The width the graph requantizes the probabilities (folded with the value scales) to
    before PV: ``widths.pv_bits``, or A when the model sets none (docs/SPEC.md section
    14.2); a name of its own so that a mutant can swap it (intsim.mutants:
    ``attention.p_at_a``)."""
    return widths.pv_in_bits


def _norm(tap, name: str, h: QTensor, g, gk: int, spec, backend: str) -> QTensor:
    """DI-Norm, then its per-channel weight when the model keeps one (else γ is in the
    weights); the weight step is the op ``<name>_w``."""
    hn, _ = _op(tap, name, di_norm, h, spec, backend)
    return hn if g is None else _op(tap, f"{name}_w", norm_weight, hn, g, gk, backend)


def _positions(past: int, T: int, segments) -> tuple[np.ndarray, np.ndarray]:
    """RoPE positions [T] and the visibility [T, past + T] of the cached positions."""
    if segments is None:
        pos = np.arange(past, past + T, dtype=np.int64)
        return pos, np.arange(past + T)[None, :] <= pos[:, None]
    seg = np.asarray(segments)
    if past or seg.shape != (T,) or seg.dtype.kind not in "iu" or np.any(np.diff(seg) < 0):
        raise IntsimError("segments: expected non-decreasing integers, one per token, and no cache")
    first = np.searchsorted(seg, seg, side="left")              # index where each segment starts
    pos = np.arange(T, dtype=np.int64) - first
    idx = np.arange(T)
    return pos, (seg[None, :] == seg[:, None]) & (idx[None, :] <= idx[:, None])
