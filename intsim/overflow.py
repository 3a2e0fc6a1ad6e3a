"""Overflow and headroom report: every container of a forward pass against its peak.

``overflow_report(model, ids, policy)`` runs one fresh prefill of ``ids`` with an op-aware
tap (intsim.llama.forward hands it every op call: function, arguments, result), then
recomputes, from each call's own arguments, the quantities that live only inside the
operator, exactly: in vectorized int64 where a bound on the call's actual operands proves
that no value of the recompute (product, partial sum, shifted term) can leave int64, in
Python integers where it cannot be proven (the rounding, fit, isqrt and requantizer
steps with intsim.oracle, or intsim.fixedpoint's int64 references inside their bounds).
Each op's bound has the form of its proven bound (SPEC, the bound next to each
accumulator) evaluated on the operands' maxima, so for in-range operands int64 is always
chosen, and an out-of-range operand (a stress input) falls back to Python ints rather
than wrapping.  ``exact=True`` recomputes everything in Python integers, as the report
did before the int64 path existed: the oracle the tests hold the default to, entry for
entry (tests/test_overflow.py).  Dispatch is on the op function, so the report follows
the graph:

* DI-MatMul: the input requantization's scale, the int32 group accumulators ``acc``,
  the int64 fold ``P`` (peak over its partial sums in group order), the output scale;
* attention: the QK^T and PV int32 accumulators, the three scale folds (``|v * m| <<
  guard``), DI-ClippedSoftmax's input scale, exp sum ``S``, reciprocal product
  ``e * f`` and its output clamp, the RoPE products;
* DI-Norm's sum of squares and scale, the residual add's aligned int64 sum and stream
  scale, DI-SwiGLU's sigmoid input ``z`` and product ``y``, the online Hadamard rotation's
  butterfly stages (against 2^60) and the rows its pre-shift rounded (``Entry.shifted``).

Each recompute is checked against the run: the op's output recomputed from the
recomputed intermediate (with intsim's reference functions) must equal the call's result
bit for bit, and DI-MatMul's own counters (``acc_absmax``, ``p_absmax``) must equal the
recomputed peaks, so the reported peaks are the run's own.

Every entry reports, as integers: the peak magnitude, the container (``int32`` = 31
magnitude bits, ``int64`` = 63, an unsigned code of b bits = b), the proven bound from
the op's docstring, ``headroom = container bits - bitlen(peak)`` (negative: the value
does not fit), ``bound_headroom = container bits - bitlen(bound)`` (the proof's
margin), the number of elements beyond the container and the first one's index (C
order).  Scale entries (``*.scale``) report the row exponent a dynamic scale needs
against ``k_min`` of ``spec.k_range``: ``headroom = min over rows of (k_need - k_min)``
bits (each unit of k halves the scale), and the rows whose ``k_need < k_min``
saturate (``overflow="saturate"`` clamps and counts them; ``"raise"`` raises).
The softmax output clamp (``softmax.p``) is a designed saturation (a probability above
``1 - 2^-(F+1)``): counted, never raised.

Policy: ``"saturate"`` runs to the end and counts; ``"raise"`` runs with the model's
``overflow="raise"`` and, at the first saturation, raises ``IntsimOverflowError`` naming
the op and the first saturating index (found by a second, saturating run).
Spec: docs/SPEC.md section 15 (15.1: how to read the report).
"""
from __future__ import annotations

import inspect
from dataclasses import asdict, dataclass, replace

import numpy as np

from .attention import fold_scales, pv, qk_scores
from .embedding import embed
from .errors import IntsimError, IntsimOverflowError, check_choice
from .exp import T_BITS, _exp_apply_ref, _exp_unit_ref, row_scale
from .fixedpoint import div_round, rounding_code
from .hadamard import ROT_OUT_BITS, hadamard_rows
from .llama import forward
from .matmul import (A_GROUP_EMAX, QWeight, acc_bound, check_group_bounds, di_matmul, di_matmul_acc, p_bound,
                     requant_groups)
from .norm import di_norm, fixed_preshift, norm_weight, sqrt_c_const
from .options import OVERFLOW_POLICIES
from .oracle import fit_exponent, isqrt, rnd
from .overflow_arith import I64_MAX, REF, ROUND_MAX, align_add64, align_add_exact, exact_einsum, fwht_stages, \
    group_acc
from .overflow_arith import absmax as _absmax
from .overflow_arith import ints as _ints
from .overflow_arith import requant_k_need, round_shift
from .qtensor import Dyadic, QTensor
from .requant import requant_rows
from .residual import ALIGN_BITS, residual_add
from .rope import rope
from .softmax import RECIP_BITS, _center_clip_ref, di_clipped_softmax, visibility
from .swiglu import _sigmoid_ref, di_swiglu

#: magnitude bits of each container: the largest |value| it holds is 2^bits - 1
#: (signed containers are symmetric, docs/SPEC.md 1.2)
CONTAINER_BITS = {"int32": 31, "int64": 63}


# ------------------------------------------------------------------ helpers
# (the exact arithmetic itself is intsim.overflow_arith, over intsim.oracle and
# intsim.fixedpoint's references)


def _first(mask: np.ndarray):
    idx = np.argwhere(mask)
    return tuple(int(i) for i in idx[0]) if len(idx) else None


def _same(a: QTensor, b: QTensor) -> bool:
    return (a.q.shape == b.q.shape and np.array_equal(a.q.astype(np.int64), b.q.astype(np.int64))
            and np.array_equal(np.asarray(a.zp, np.int64), np.asarray(b.zp, np.int64))
            and np.array_equal(a.scale.m, b.scale.m) and np.array_equal(a.scale.k, b.scale.k))


# ------------------------------------------------------------------ report entries

@dataclass
class Entry:
    """One container of one op.  Integers only (``first`` a C-order index or None)."""
    name: str                  # full name, e.g. "layers.3.attn.qk.acc"
    op: str                    # name without the layer, e.g. "attn.qk.acc"
    layer: int | None          # None for the final norm and the head
    kind: str                  # "value" | "scale" | "clamp"
    container: str             # "int32", "int64", "u16", "k>=-128"
    bits: int                  # magnitude bits of the container (scale: k_min)
    peak: int                  # largest |value|; for "scale": the smallest needed k
    bound: int | None          # proven bound of |value| (docstring), None for scales
    headroom: int              # bits - bitlen(peak); for "scale": k_need_min - k_min
    bound_headroom: int | None
    saturated: int             # elements (rows for "scale") beyond the container
    first: tuple | None        # index of the first of them
    total: int                 # elements (rows) examined
    check: bool | None         # the recompute reproduced the run's output (None: n/a)
    peak_at: tuple | None = None   # index (C order) of the first element (row) reaching peak
    peak_token: int | None = None  # the token position of that element (_token_axis)
    shifted: int | None = None     # rows a pre-shift rounded before the op (hadamard_rows only)

    def to_dict(self) -> dict:
        d = asdict(self)
        if d["shifted"] is None:       # only the rotation's entries carry it
            del d["shifted"]
        d["first"] = list(self.first) if self.first is not None else None
        d["peak_at"] = list(self.peak_at) if self.peak_at is not None else None
        return d


#: ops whose tensors are head-first ([H, T, ...]: the attention scores, their softmax and
#: the probabilities' scale), so that the token (query) position is axis 1; every other
#: tensor of the graph is token-first ([T, ...])
HEAD_FIRST = ("attn.qk.acc", "attn.scores.fold", "attn.softmax.x.scale", "attn.softmax.sum",
              "attn.softmax.e*f", "attn.softmax.p", "attn.p_v.fold", "attn.p.scale")


def _token_axis(name: str) -> int:
    return 1 if _op(name) in HEAD_FIRST else 0


def _locate(e: "Entry", at) -> "Entry":
    """Set the entry's peak index ``at`` (a C-order tuple, or None) and its token."""
    e.peak_at = None if at is None else tuple(int(i) for i in at)
    ax = _token_axis(e.name)
    e.peak_token = e.peak_at[ax] if e.peak_at is not None and len(e.peak_at) > ax else None
    return e


def _argmax_at(a) -> tuple | None:
    """C-order index of the first largest element of ``a`` (None when empty)."""
    return tuple(np.unravel_index(int(np.argmax(a)), np.shape(a))) if np.size(a) else None


def _value_entry(name, layer, vals, container, bound, check=None) -> Entry:
    bits = CONTAINER_BITS[container] if container in CONTAINER_BITS else int(container[1:])
    a = np.abs(vals)
    peak = int(np.max(a)) if a.size else 0
    over = a > (1 << bits) - 1
    n = int(np.count_nonzero(over))
    e = Entry(name, _op(name), layer, "value", container, bits, peak, bound,
              bits - peak.bit_length(), None if bound is None else bits - int(bound).bit_length(),
              n, _first(over) if n else None, int(a.size), check)
    return _locate(e, _argmax_at(a))


def _op(name: str) -> str:
    parts = name.split(".")
    return ".".join(parts[2:]) if parts[0] == "layers" else name


def _layer(name: str):
    parts = name.split(".")
    return int(parts[1]) if parts[0] == "layers" else None


# ------------------------------------------------------------------ scale recomputes

def _scale_entry(name, layer, k_need: list, rows: tuple, spec, run_scale: Dyadic | None,
                 check=None) -> Entry:
    """Row exponents against ``k_min``; ``run_scale`` (the run's scale of the same rows)
    must carry ``k_need`` on every row that neither saturated nor was refitted."""
    k_lo, k_hi = spec.k_range
    ks = [k for k in k_need if k is not None]
    peak = min(ks) if ks else k_hi
    sat = [i for i, k in enumerate(k_need) if k is not None and k < k_lo]
    first = tuple(int(i) for i in np.unravel_index(sat[0], rows)) if sat else None
    ok = check
    if run_scale is not None:
        rk = np.asarray(run_scale.k).reshape(-1)
        rm = np.asarray(run_scale.m).reshape(-1)
        agree = all(int(rk[i]) == k for i, k in enumerate(k_need)
                    if k is not None and k_lo <= k <= k_hi and int(rm[i]) != 0)
        ok = agree if ok is None else (ok and agree)
    e = Entry(name, _op(name), layer, "scale", f"k>={k_lo}", k_lo, peak, None, peak - k_lo,
              None, len(sat), first, len(k_need), ok)
    at = next((i for i, k in enumerate(k_need) if k == peak), None) if ks else None
    return _locate(e, None if at is None else np.unravel_index(at, rows))


# ------------------------------------------------------------------ the recompute

class _Recompute:
    """Recomputes the containers of each op call from the call's own arguments and
    appends Entries in execution order.  Dispatch is on the op function, so every call
    of a known op is covered whatever the graph around it; other ops are listed in
    ``uncovered``."""

    def __init__(self, model, exact: bool = False, backend: str = REF):
        self.model = model
        self.exact = exact
        self.compiled = backend == "numba" and not exact      # DI-MatMul's sums: overflow_arith
        self.entries: list[Entry] = []
        self.uncovered: list[str] = []
        self.handlers = {di_norm: self.di_norm, di_matmul: self.di_matmul,
                         di_matmul_acc: self.di_matmul_acc, rope: self.rope,
                         requant_rows: self.requant, qk_scores: self.qk, pv: self.pv,
                         fold_scales: self.fold, di_clipped_softmax: self.softmax,
                         residual_add: self.residual, di_swiglu: self.swiglu,
                         norm_weight: self.norm_weight, hadamard_rows: self.rotation, embed: None}

    def call(self, name: str, call) -> None:
        if call.fn not in self.handlers:
            self.uncovered.append(name)
            return
        h = self.handlers[call.fn]
        if h is None:
            return
        b = inspect.signature(call.fn).bind(*call.args, **call.kwargs)
        b.apply_defaults()
        a = dict(b.arguments)
        if "spec" in a:                       # references must finish: count, do not raise
            a["spec"] = replace(a["spec"], overflow="saturate")
        h(name, a, call.result)

    def add(self, e: Entry) -> Entry:
        self.entries.append(e)
        return e

    def lift(self, bound: int, *arrays, limit: int = I64_MAX) -> tuple:
        """``arrays`` for a recompute in which no value exceeds ``bound`` in magnitude (the
        op's bound over the operands' actual maxima, computed in Python ints): int64 when
        ``bound <= limit`` (and not ``exact``), else object arrays of Python ints."""
        if not self.exact and int(bound) <= limit:
            return tuple(np.asarray(a).astype(np.int64) for a in arrays)
        return tuple(_ints(a) for a in arrays)

    def k_need(self, v, m_in, k_in, bits: int, symmetric: bool, spec) -> list:
        """requant_rows' exponent per row of ``v`` before its range clamp (None: a zero
        row); intsim.overflow_arith.requant_k_need."""
        return requant_k_need(v, m_in, k_in, bits, symmetric, spec, self.exact)

    @property
    def a_bits(self) -> int:
        return self.model.widths.a_bits

    # -- DI-Norm --------------------------------------------------------------
    def di_norm(self, name: str, a: dict, res) -> None:
        x, spec, layer = a["x"], a["spec"], _layer(name)
        preshift = spec.norm_preshift if a.get("preshift") is None else a["preshift"]
        C = x.q.shape[-1]
        c = x.centered()
        d, = self.lift(C * _absmax(c) ** 2, c)          # every partial sum <= C max|d|^2
        sumsq = (d * d).sum(axis=-1)
        ref, _ = di_norm(x, spec, REF, preshift)
        check = _same(ref, res[0])
        self.add(_value_entry(f"{name}.sumsq", layer, sumsq, "int64", C * (2 ** 16 - 1) ** 2, check))
        n_c, p2 = sqrt_c_const(C)
        p_fixed = fixed_preshift(C, x.bits) if preshift == "fixed" else None
        need = []
        for s in np.asarray(sumsq).reshape(-1):
            s = int(s)
            if s == 0:
                need.append(None)
                continue
            P = (62 - s.bit_length()) >> 1 if p_fixed is None else p_fixed
            r = isqrt(s << (2 * P))
            need.append(fit_exponent(n_c, r, spec.m_bits, spec.rounding) + p2 - P)
        self.add(_scale_entry(f"{name}.scale", layer, need, x.q.shape[:-1], spec, res[0].scale, check))

    def norm_weight(self, name: str, a: dict, res) -> None:
        x, g = list(a.values())[:2]           # (x, g): the gain's name reads as a dtype string
        c, g = x.centered(), np.asarray(g, dtype=np.int64)
        c, g = self.lift(_absmax(c) * _absmax(g), c, g)
        y = c * g
        check = bool(np.array_equal(y.astype(np.int64), res.q))
        self.add(_value_entry(f"{name}.y", _layer(name), y, "int64", (2 ** 16 - 1) * (2 ** 15 - 1), check))

    # -- DI-MatMul ------------------------------------------------------------
    def _matmul(self, name, x: QTensor, w: QWeight, a_bits: int, spec, stats: dict, a_group=None):
        """Input scale, acc and P entries; returns (P int64 or None, P's scale, entries)."""
        if a_group is not None:
            return self._matmul_groups(name, x, w, a_bits, a_group, spec, stats)
        layer = _layer(name)
        v = x.centered()
        xq_t, _ = requant_rows(v, x.scale, a_bits, False, spec, REF, name="x")
        self.add(_scale_entry(f"{name}.x.scale", layer,
                              self.k_need(v, x.scale.m, x.scale.k, a_bits, False, spec),
                              v.shape[:-1], spec, xq_t.scale))
        K = w.q.shape[1]
        G, ng = w.group_size, w.n_groups
        xc = xq_t.centered().reshape(-1, K)                                  # |.| <= 2^A - 1
        T, N = xc.shape[0], w.q.shape[0]
        acc = group_acc(xc, w.q, G, self.compiled)       # int64 where G max|xc| max q < 2^63
        xs = xc.reshape(T, ng, G).sum(axis=2)                                 # [T, ng]
        # the fold in group order; peak over every partial sum.  Every term and partial
        # sum is at most ng (max|acc| max m + max|xs| max|b|) (p_bound's form)
        pb = ng * (_absmax(acc) * _absmax(w.m) + _absmax(xs) * _absmax(w.b))
        acc_f, xs, m, b = self.lift(pb, acc, xs, w.m, w.b)
        P = np.zeros((T, N), dtype=acc_f.dtype)
        ppeak, p_at = 0, None
        for g in range(ng):
            P = P + acc_f[:, :, g] * m[None, :, g] + xs[:, g][:, None] * b[None, :, g]
            if _absmax(P) > ppeak:                         # where the peak partial sum sits
                ppeak, p_at = _absmax(P), _argmax_at(np.abs(P))
        A, W = a_bits, w.bits
        # the run's own counters (matmul stats) must equal the recompute
        ok = stats.get("acc_absmax") in (None, _absmax(acc)) and \
            stats.get("p_absmax") in (None, _absmax(P))
        e_acc = self.add(_value_entry(f"{name}.acc", layer, acc, "int32", acc_bound(G, A, W), ok))
        e_p = self.add(_value_entry(f"{name}.P", layer, P, "int64",
                                    p_bound(K, A, W, w.m_max, w.b_absmax), ok))
        e_p.peak, e_p.headroom = ppeak, 63 - ppeak.bit_length()
        _locate(e_p, p_at if p_at is not None else e_p.peak_at)
        P64 = P.astype(np.int64).reshape(x.q.shape[:-1] + (N,)) if ppeak < 2 ** 63 else None
        return P64, Dyadic(xq_t.scale.m, xq_t.scale.k + w.k), (e_acc, e_p)

    def _matmul_groups(self, name, x: QTensor, w: QWeight, a_bits: int, a_group: int, spec, stats: dict):
        """:meth:`_matmul` with group-wise activations (docs/SPEC.md section 4.8): the group
        codes, acc per fold group (int32 bound of step 2 at the fold group's size) and P, each
        fold term shifted by E - e; P's bound is 2^E times step 3's (``check_group_bounds``)."""
        layer = _layer(name)
        K = w.q.shape[1]
        lead = x.q.shape[:-1]
        v = x.centered().reshape(-1, K)
        m_in, k_in = (np.broadcast_to(s, lead).reshape(-1) for s in (x.scale.m, x.scale.k))
        xq, sc, zg, eg, _ = requant_groups(v, Dyadic(m_in, k_in), a_bits, a_group, spec, REF)
        self.add(_scale_entry(f"{name}.x.scale", layer, self.k_need(v, m_in, k_in, a_bits, False, spec),
                              v.shape[:-1], spec, sc))
        Gf, ab, pb = check_group_bounds(K, w, a_bits, a_group)
        Ga, (T, N) = min(a_group, K), (v.shape[0], w.q.shape[0])
        P, amax, ppeak, p_at = self.lift(pb, np.zeros((T, N), dtype=np.int64))[0], -1, 0, None
        for f0 in range(0, K, Gf):
            sl, ga, wg = slice(f0, min(K, f0 + Gf)), f0 // Ga, f0 // w.group_size
            xc = xq[:, sl].astype(np.int64) - zg[:, ga][:, None]          # |.| <= 2^A - 1
            acc = xc @ w.q[:, sl].astype(np.int64).T                       # |.| <= ab < 2^31
            if _absmax(acc) > amax:                 # the fold group holding the peak acc
                amax, acc_peak = _absmax(acc), acc
            acc_f, xs, m, b, sh = self.lift(pb, acc, xc.sum(axis=1), w.m[:, wg], w.b[:, wg],
                                            A_GROUP_EMAX - eg[:, ga])
            P = P + (acc_f * m[None, :] + xs[:, None] * b[None, :]) * (2 ** sh)[:, None]
            if _absmax(P) > ppeak:
                ppeak, p_at = _absmax(P), _argmax_at(np.abs(P))
        ok = stats.get("acc_absmax") in (None, amax) and stats.get("p_absmax") in (None, _absmax(P))
        e_acc = self.add(_value_entry(f"{name}.acc", layer, acc_peak, "int32", ab, ok))
        e_p = self.add(_value_entry(f"{name}.P", layer, P, "int64", pb, ok))
        e_p.peak, e_p.headroom = ppeak, 63 - ppeak.bit_length()
        _locate(e_p, p_at if p_at is not None else e_p.peak_at)
        P64 = P.astype(np.int64).reshape(lead + (N,)) if ppeak < 2 ** 63 else None
        scale = Dyadic(sc.m.reshape(lead), sc.k.reshape(lead) + w.k + A_GROUP_EMAX)
        return P64, scale, (e_acc, e_p)

    def di_matmul(self, name: str, a: dict, res) -> None:
        spec = a["spec"]
        P, scale, ents = self._matmul(name, a["x"], a["w"], a["a_bits"], spec, res[1], a.get("a_group"))
        if P is None:
            return
        bits, sym = a["out_bits"], bool(a["out_symmetric"])
        y, _ = requant_rows(P, scale, bits, sym, spec, REF, name="P")
        check = _same(y, res[0])
        for e in ents:
            e.check = bool(e.check and check)
        self.add(_scale_entry(f"{name}.scale", _layer(name),
                              self.k_need(P, scale.m, scale.k, bits, sym, spec), P.shape[:-1],
                              spec, res[0].scale, check))

    def di_matmul_acc(self, name: str, a: dict, res) -> None:
        P, scale, ents = self._matmul(name, a["x"], a["w"], a["a_bits"], a["spec"], res[2], a.get("a_group"))
        check = P is not None and bool(np.array_equal(P, res[0]) and np.array_equal(scale.m, res[1].m)
                                       and np.array_equal(scale.k, res[1].k))
        for e in ents:
            e.check = bool(e.check and check)

    # -- RoPE -----------------------------------------------------------------
    def rope(self, name: str, a: dict, res) -> None:
        x, spec = a["x"], a["spec"]
        H, hd = a["n_heads"], a["head_dim"]
        f = spec.rope_frac_bits
        drop = spec.rope_drop_bits if a.get("drop_bits") is None else a["drop_bits"]
        T, hh = x.q.shape[0], hd // 2
        pos = np.asarray(a["positions"], dtype=np.int64)
        c, s = np.asarray(a["cos_q"])[pos], np.asarray(a["sin_q"])[pos]
        xc = x.centered()
        # |u c -+ w s| <= 2 max|x| max(|cos|, |sin|); then the rounding shift by drop
        xc, c, s = self.lift(2 * _absmax(xc) * max(_absmax(c), _absmax(s)), xc, c, s,
                             limit=ROUND_MAX if drop else I64_MAX)
        xc, c, s = xc.reshape(T, H, hd), c[:, None, :], s[:, None, :]        # [T, 1, hd/2]
        u, w = xc[:, :, :hh], xc[:, :, hh:]
        y = np.concatenate([u * c - w * s, u * s + w * c], axis=2).reshape(T, H * hd)
        y_out = round_shift(y, drop, spec.rounding) if drop else y
        check = bool(np.array_equal(y_out.astype(np.int64), res[0]))
        self.add(_value_entry(f"{name}.y", _layer(name), y, "int64", 2 ** (17 + f), check))

    # -- requantization -------------------------------------------------------
    def requant(self, name: str, a: dict, res) -> None:
        v, s_in, spec = np.asarray(a["v"]), a["scale_in"], a["spec"]
        bits, sym = a["bits"], bool(a["symmetric"])
        rows = v.shape[:-1]
        m_in = np.broadcast_to(s_in.m, rows)
        k_in = np.broadcast_to(s_in.k, rows)
        ref, _ = requant_rows(v, s_in, bits, sym, spec, REF, name=a.get("name", "v"))
        self.add(_scale_entry(f"{name}.scale", _layer(name),
                              self.k_need(v, m_in, k_in, bits, sym, spec), rows, spec,
                              res[0].scale, _same(ref, res[0])))

    # -- attention matmuls ----------------------------------------------------
    def _attn_acc(self, name: str, contraction: str, x, kv, n: int, rep: int, x_bits: int,
                  res) -> None:
        """The int32 accumulator of an attention product over ``n`` terms of ``x_bits``-wide
        codes against A-bit ones (bound ``n (2^x_bits - 1)(2^A - 1)``); each of the ``kv``
        heads serves ``rep`` query heads (GQA)."""
        acc = exact_einsum(contraction, x, np.repeat(kv, rep, axis=1), n)
        self.add(_value_entry(f"{name}.acc", _layer(name), acc, "int32",
                              n * (2 ** x_bits - 1) * (2 ** self.a_bits - 1),
                              bool(np.array_equal(acc, res))))

    def qk(self, name: str, a: dict, res) -> None:
        qc, kc = np.asarray(a["qc"]), np.asarray(a["kc"])
        self._attn_acc(name, "ihd,jhd->hij", qc, kc, qc.shape[2], qc.shape[1] // kc.shape[1],
                       self.a_bits, res)

    def pv(self, name: str, a: dict, res) -> None:
        """PV's bound at the model's probability width (``Widths.pv_in_bits``, SPEC 14.2)."""
        pc, vc = np.asarray(a["pc"]), np.asarray(a["vc"])
        self._attn_acc(name, "hij,jhd->ihd", pc, vc, pc.shape[2], pc.shape[0] // vc.shape[1],
                       self.model.widths.pv_in_bits, res)

    def fold(self, name: str, a: dict, res) -> None:
        """``|vals * m| << guard`` over the visible columns (int64; checked <= 2^62 - 1)."""
        vals = np.asarray(a["vals"])
        guard, visible = a["guard"], a["visible"]
        shape = vals.shape
        vis = np.ones(shape, bool) if visible is None else np.broadcast_to(visible, shape)
        m = np.broadcast_to(a["m"], shape)
        vals_, m_ = self.lift(max(_absmax(vals) * _absmax(m), 1) << guard, vals, m)
        prod = np.where(vis, vals_ * m_, 0) * (1 << guard)
        out, sc = fold_scales(vals, a["m"], a["k"], guard, visible, a["spec"], REF, name=a["name"])
        check = bool(np.array_equal(out, res[0]) and np.array_equal(sc.k, res[1].k))
        self.add(_value_entry(f"{name}.fold", _layer(name), prod, "int64", 2 ** 62 - 1, check))

    # -- DI-ClippedSoftmax ----------------------------------------------------
    def softmax(self, name: str, a: dict, res) -> None:
        spec, layer = a["spec"], _layer(name)
        scores = np.asarray(a["scores"], dtype=np.int64)
        cols = scores.shape[-1]
        rows = scores.shape[:-1]
        vis = visibility(scores.shape, a["mask"], a["causal"], a["q_offset"])
        m, k = row_scale("scale", a["scale"], rows, m_lo=0, m_hi=2 ** 28)
        x2, v2 = scores.reshape(-1, cols), vis.reshape(-1, cols)
        m1, k1 = m.reshape(-1), k.reshape(-1)
        code = rounding_code(spec.rounding)
        xt = _center_clip_ref(x2, v2, m1, k1, spec.softmax_clip, code)
        bits = spec.softmax_in_bits
        qt, _ = requant_rows(xt, Dyadic(m1, k1), bits, False, spec, REF,
                             name="scores - rowmax (clipped)")
        e_x = self.add(_scale_entry(f"{name}.x.scale", layer,
                                    self.k_need(xt, m1, k1, bits, False, spec), rows, spec, qt.scale))
        # DI-Exp (the op's own reference steps) and the sum in Python ints
        mr, kr = qt.scale.m, qt.scale.k
        zero = mr == 0
        xq = np.where(v2 & ~zero[:, None], qt.centered(), 0)
        T, j = _exp_unit_ref(np.where(zero, 1, mr), np.where(zero, 0, kr), code)
        e64 = np.where(v2, _exp_apply_ref(xq, T[:, None], j[:, None], code), 0)    # 0 <= e <= 2^30
        e, = self.lift(cols * _absmax(e64), e64)          # every partial sum <= cols max e
        S = e.sum(axis=-1)
        ents = [e_x, self.add(_value_entry(f"{name}.sum", layer, S.reshape(rows), "int64",
                                           cols * 2 ** T_BITS))]
        p_out = spec.softmax_p_out
        F = a["p_frac_bits"] if a.get("p_frac_bits") is not None else spec.softmax_p_frac
        F = p_out if F is None else F
        Sd = [max(int(x), 1) for x in S]
        emax = [int(x) for x in e64.max(axis=-1)]
        if spec.softmax_div == "reciprocal":
            f = [(2 ** RECIP_BITS - 1) // x for x in Sd]
            # per row e * f <= max e * f (<= S f <= 2^62 - 1: the proven bound), then a shift
            e, f = self.lift(max(x * y for x, y in zip(emax, f)), e64, np.array(f, dtype=object),
                             limit=ROUND_MAX)
            prod = e * f[:, None]
            ents.append(self.add(_value_entry(f"{name}.e*f", layer, prod.reshape(scores.shape),
                                              "int64", 2 ** RECIP_BITS - 1)))
            p_un = round_shift(prod, RECIP_BITS - F, spec.rounding)
        else:                        # e 2^F / S: the numerator and the divisor in int64?
            e, = self.lift(max(max(emax) << F, max(Sd)), e64, limit=ROUND_MAX)
            num = e * (1 << F)
            if num.dtype != object:
                p_un = div_round(num, np.array(Sd, dtype=np.int64)[:, None], spec.rounding, REF)
            else:
                p_un = np.empty(num.shape, dtype=object)
                for i in range(num.shape[0]):
                    p_un[i] = [rnd(int(z), Sd[i], spec.rounding) for z in num[i]]
        p_max = 2 ** p_out - 1
        p_un = p_un.reshape(scores.shape)
        check = bool(np.array_equal(np.minimum(p_un, p_max).astype(np.int64), res.q.astype(np.int64)))
        over = p_un > p_max
        n = int(np.count_nonzero(over))
        peak = _absmax(p_un)
        ents.append(self.add(_locate(Entry(
            f"{name}.p", _op(f"{name}.p"), layer, "clamp", f"u{p_out}", p_out, peak, 1 << F,
            p_out - peak.bit_length(), p_out - (1 << F).bit_length(), n,
            _first(over) if n else None, int(over.size), check), _argmax_at(np.abs(p_un)))))
        for ent in ents:
            ent.check = bool(check and ent.check is not False)

    # -- residual add ---------------------------------------------------------
    def residual(self, name: str, a: dict, res) -> None:
        """The aligned sum in Python ints (docs/SPEC.md section 10), then its scale."""
        qa, qb, spec, layer = a["a"], a["b"], a["spec"], _layer(name)
        ca, cb, ma, mb = qa.centered(), qb.centered(), qa.scale.m, qb.scale.m
        # int64 when |v| < 2^ALIGN_BITS: then the coarse side shifted stays below
        # 2^ALIGN_BITS, the fine side's rounding shift within fixedpoint's bound, the sum
        # below 2^(ALIGN_BITS + 1) (the proven bound 2^61 - 1)
        ca, cb, ma, mb = self.lift(max(_absmax(ca) * _absmax(ma), _absmax(cb) * _absmax(mb)),
                                   ca, cb, ma, mb, limit=2 ** ALIGN_BITS - 1)
        va, vb = ca * ma[..., None], cb * mb[..., None]
        C = qa.q.shape[-1]
        va, vb = va.reshape(-1, C), vb.reshape(-1, C)
        ka, kb = qa.scale.k.reshape(-1), qb.scale.k.reshape(-1)
        if va.dtype != object:
            s, K = align_add64(va, vb, ka, kb, spec.rounding)
        else:
            s, K = align_add_exact(va, vb, ka, kb, spec.rounding)
        rows = qa.q.shape[:-1]
        s64 = s.astype(np.int64).reshape(qa.q.shape)
        Kr = K.reshape(rows)
        ref, nsat = requant_rows(s64, Dyadic(np.ones(rows, dtype=np.int64), Kr), spec.residual_bits,
                                 True, spec, REF, name="a + b")
        check = _same(ref, res[0])
        self.add(_value_entry(f"{name}.sum", layer, s.reshape(qa.q.shape), "int64", 2 ** 61 - 1, check))
        self.add(_scale_entry(f"{name}.scale", layer,
                              self.k_need(s64, np.ones(rows, dtype=np.int64), Kr,
                                              spec.residual_bits, True, spec),
                              rows, spec, res[0].scale, check))

    # -- DI-SwiGLU ------------------------------------------------------------
    def swiglu(self, name: str, a: dict, res) -> None:
        gate, up, spec, layer = a["gate"], a["up"], a["spec"], _layer(name)
        code = rounding_code(spec.rounding)
        C = gate.q.shape[-1]
        a1 = gate.centered().reshape(-1, C)
        a2 = up.centered().reshape(-1, C)
        ainv = a["alpha_inv"]
        mc = np.ones(C, dtype=np.int64) if ainv is None else np.asarray(ainv, dtype=np.int64)
        ka = 0 if ainv is None else int(a["alpha_k"])
        g = spec.sigmoid_guard_bits if a.get("guard_bits") is None else a["guard_bits"]
        B = spec.sigmoid_bits
        a1_, mc_ = self.lift(max(_absmax(a1) * _absmax(mc), 1) << g, a1, mc)
        z = (a1_ * mc_[None, :]) * (1 << g)
        m1, m2 = gate.scale.m.reshape(-1), up.scale.m.reshape(-1)
        dead = ((m1 == 0) | (m2 == 0))[:, None]
        kz = gate.scale.k.reshape(-1) + ka + g
        sig = _sigmoid_ref(z.astype(np.int64), m1, kz, B, spec.sigmoid_frame == "rowmax", code)
        a2 = np.where(dead, 0, a2)
        y1, y2, y3 = self.lift(_absmax(a1) * _absmax(sig) * _absmax(a2), a1, sig, a2)
        y = y1 * y2 * y3
        check = bool(np.array_equal(y.astype(np.int64).reshape(gate.q.shape), res[0]))
        self.add(_value_entry(f"{name}.z", layer, z.reshape(gate.q.shape), "int64", 2 ** 56, check))
        self.add(_value_entry(f"{name}.y", layer, y.reshape(gate.q.shape), "int64",
                              (2 ** 16 - 1) ** 2 * 2 ** B, check))

    # -- the online Hadamard rotation (docs/SPEC.md section 7.6) --------------
    def rotation(self, name: str, a: dict, res) -> None:
        """Every butterfly stage's values (the pre-shifted rows, each stage, the output)
        against int64 and the proven bound 2^60; ``shifted``: the rows the pre-shift rounded."""
        y, b = np.asarray(a["y"]), a["block"]
        C = y.shape[-1]
        # |y| for the pre-shift's rounding; each stage <= b max|y'| <= 2^60, or b max|y| unshifted
        v, = self.lift(max(_absmax(y), min(b * _absmax(y), 2 ** ROT_OUT_BITS)), y.reshape(-1, C),
                       limit=ROUND_MAX)
        out, sh, peak = fwht_stages(v, b, a["spec"].rounding)
        k = np.broadcast_to(a["scale"].k, y.shape[:-1]).reshape(-1) - sh
        check = bool(np.array_equal(out.astype(np.int64).reshape(y.shape), res[0])
                     and np.array_equal(k.reshape(y.shape[:-1]), res[1].k))
        e = self.add(_value_entry(f"{name}.stages", _layer(name), peak.reshape(y.shape), "int64",
                                  2 ** ROT_OUT_BITS, check))
        e.shifted = int(np.count_nonzero(sh))


# ------------------------------------------------------------------ the report

@dataclass
class Report:
    tokens: int
    policy: str
    spec: dict
    entries: list
    uncovered: list             # op calls of kinds the report does not know (none today)

    @property
    def saturations(self) -> list:
        """Entries with saturated elements or rows, in execution order (clamps included)."""
        return [e for e in self.entries if e.saturated]

    @property
    def all_checked(self) -> bool:
        return all(e.check is not False for e in self.entries)

    def to_dict(self) -> dict:
        return {"tokens": self.tokens, "policy": self.policy, "spec": self.spec,
                "all_recomputes_match": self.all_checked, "uncovered": self.uncovered,
                "entries": [e.to_dict() for e in self.entries]}

    def summary(self) -> list:
        """One row per op (across layers): the entry with the least headroom, the
        total of saturated elements and the first saturation (layer, index)."""
        ops: dict = {}
        for e in self.entries:
            ops.setdefault(e.op, []).append(e)
        out = []
        for op, es in ops.items():
            worst = min(es, key=lambda e: e.headroom)
            sat = [e for e in es if e.saturated]
            out.append({"op": op, "kind": worst.kind, "container": worst.container,
                        "min_headroom": worst.headroom, "at": worst.layer,
                        "peak": worst.peak, "bound_headroom": worst.bound_headroom,
                        "saturated": sum(e.saturated for e in es),
                        "first": (sat[0].layer, sat[0].first) if sat else None,
                        "check": all(e.check is not False for e in es)})
        return out

    def text(self) -> str:
        lines = [f"overflow report: {self.tokens} tokens, policy {self.policy}, "
                 f"m_bits {self.spec['m_bits']}, k_bits {self.spec['k_bits']}",
                 "headroom = container bits - bitlen(peak) (scale rows: min k_need - k_min); "
                 "bound = the proof's margin",
                 f"{'op':<24} {'container':<9} {'headroom':>8} {'layer':>5} {'bound':>5} "
                 f"{'saturated':>9}  {'first (layer: index)':<22} recompute"]
        for s in self.summary():
            first = "" if s["first"] is None else \
                f"{'-' if s['first'][0] is None else s['first'][0]}: {tuple(s['first'][1])}"
            bh = "" if s["bound_headroom"] is None else str(s["bound_headroom"])
            at = "-" if s["at"] is None else str(s["at"])
            lines.append(f"{s['op']:<24} {s['container']:<9} {s['min_headroom']:>8} {at:>5} "
                         f"{bh:>5} {s['saturated']:>9}  {first:<22} "
                         f"{'ok' if s['check'] else 'MISMATCH'}")
        sat = [e for e in self.saturations if e.kind != "clamp"]
        lines.append("saturations (policy applies): " + (
            "none" if not sat else "; ".join(f"{e.name}: {e.saturated} of {e.total}, first at "
                                             f"{e.first}" for e in sat)))
        clamps = [e for e in self.saturations if e.kind == "clamp"]
        if clamps:
            lines.append(f"designed clamps (softmax.p = 2^p_out - 1, a probability above "
                         f"1 - 2^-(F+1)): {sum(e.saturated for e in clamps)} elements in "
                         f"{len(clamps)} layer(s), first {clamps[0].name} at {clamps[0].first}")
        rot = [e for e in self.entries if e.shifted is not None]
        if rot:
            lines.append("rows pre-shifted (rounded) before the Hadamard rotation: " + (
                "none" if not any(e.shifted for e in rot) else "; ".join(
                    f"{e.name}: {e.shifted}" for e in rot if e.shifted)))
        if self.uncovered:
            lines.append("ops without a recompute: " + ", ".join(self.uncovered))
        lines.append("recomputes: " + ("all match the run bit for bit" if self.all_checked else
                                       "MISMATCH in " + ", ".join(e.name for e in self.entries
                                                                   if e.check is False)))
        return "\n".join(lines)

    def png(self, title: str = "") -> bytes:
        from .plot import heatmap_png
        layers = sorted({e.layer for e in self.entries if e.layer is not None})
        ops: list = []
        for e in self.entries:
            if e.op not in ops:
                ops.append(e.op)
        cols = [str(li) for li in layers] + ["F"]
        cells = [[None] * len(cols) for _ in ops]
        marks = set()
        for e in self.entries:
            r = ops.index(e.op)
            c = len(layers) if e.layer is None else layers.index(e.layer)
            cells[r][c] = e.headroom
            if e.kind == "clamp" and e.saturated:
                marks.add((r, c))
        notes = (f"{self.tokens} TOKENS, POLICY {self.policy}, M_BITS {self.spec['m_bits']}, "
                 f"K_BITS {self.spec['k_bits']}. COLUMNS: LAYERS, F = FINAL NORM AND HEAD.",
                 "LILAC: SOFTMAX.P CLAMPED AT 2^P_OUT - 1 BY DESIGN (A PROBABILITY ABOVE 1 - 2^-(F+1), "
                 "E.G. THE FIRST TOKEN'S ROW)." if marks else "")
        return heatmap_png(ops, cols, cells, title or "INTSIM OVERFLOW: HEADROOM PER LAYER AND OP",
                           notes, marks)


class _CallTap:
    """An op-aware tap (intsim.llama's hook): keeps (name, OpCall) in execution order."""
    takes_op_calls = True

    def __init__(self):
        self.calls = []

    def __call__(self, name, value, call=None):
        if call is None:
            raise IntsimError("overflow: forward() passed no op call (an old forward?)")
        self.calls.append((name, call))


def _collect(model, ids, backend) -> list:
    tap = _CallTap()
    forward(model, ids, None, backend, tap=tap)
    return tap.calls


def overflow_report(model, ids: np.ndarray, policy: str | None = None,
                    backend: str = "numba", exact: bool = False) -> Report:
    """Run a fresh prefill of ``ids`` under ``policy`` ("raise" | "saturate"; None = the
    model's ``spec.overflow``) and report every container (module docstring).
    ``exact``: recompute in Python integers throughout (the oracle; same report, slower).
    The recompute compiles nothing when ``backend`` is "reference" (DI-MatMul's group sums
    in NumPy int64 instead of a Numba loop; the same integers).

    Under "raise" the first saturating scale raises ``IntsimOverflowError`` naming the op,
    the number of saturated rows and the first row's index."""
    policy = model.spec.overflow if policy is None else check_choice("policy", policy, OVERFLOW_POLICIES)
    ids = np.asarray(ids)
    sat_model = replace(model, spec=replace(model.spec, overflow="saturate"))
    try:
        calls = _collect(replace(model, spec=replace(model.spec, overflow=policy)), ids, backend)
    except IntsimOverflowError as err:
        if policy != "raise":
            raise
        rep = _build(sat_model, ids, _collect(sat_model, ids, backend), policy, exact, backend)
        _raise_first(rep, err)
        raise
    rep = _build(sat_model, ids, calls, policy, exact, backend)
    if policy == "raise":
        _raise_first(rep, None)
    return rep


def _raise_first(rep: Report, err) -> None:
    sat = [e for e in rep.entries if e.saturated and e.kind != "clamp"]
    if sat:
        e = sat[0]
        what = "row(s) whose scale needs k < k_min" if e.kind == "scale" else \
            f"element(s) beyond {e.container}"
        raise IntsimOverflowError(f"{e.name}: {e.saturated} of {e.total} {what}; first saturating "
                                  f"index {e.first} (policy raise)") from err


def _build(model, ids, calls: list, policy: str, exact: bool = False, backend: str = REF) -> Report:
    r = _Recompute(model, exact, backend)
    for name, call in calls:
        r.call(name, call)
    return Report(int(np.size(ids)), policy, model.spec.to_dict(), r.entries, r.uncovered)


# ------------------------------------------------------------------ command line

def cmd_overflow(args) -> int:
    import json
    import sys
    from .modelfile import check_prompt_ids, load_model, load_tokenizer
    model = load_model(args.model)
    ids = check_prompt_ids(np.array(load_tokenizer(model).encode(args.prompt).ids, dtype=np.int64),
                           model, "--prompt")
    rep = overflow_report(model, ids, args.policy, args.backend, exact=args.exact)
    if args.png:
        with open(args.png, "wb") as fh:
            fh.write(rep.png())
    if args.json:
        print(json.dumps({"summary": rep.summary(), **rep.to_dict()}))
    else:
        print(rep.text())
        if args.png:
            print(f"heatmap written to {args.png}", file=sys.stderr)
    return 0 if rep.all_checked else 1


def add_overflow_parser(sub) -> None:
    o = sub.add_parser("overflow", help="per-op peaks, headroom and saturations of one prefill",
                       description="Runs one prefill of the prompt, recomputes every internal "
                                   "accumulator exactly from the tapped op inputs (int64 where "
                                   "their bounds prove it, else Python integers) and "
                                   "reports per op its peak against its container, the headroom in "
                                   "bits, the proven bound and the saturations (docs/SPEC.md 15).")
    o.add_argument("model", metavar="MODEL", help="integer model file from 'intsim convert'")
    o.add_argument("--prompt", required=True, help="prompt text")
    o.add_argument("--png", metavar="FILE", help="also write a headroom heatmap (layers x ops) as PNG")
    o.add_argument("--policy", choices=OVERFLOW_POLICIES, default=None,
                   help="raise at the first saturation, or saturate and count (default: the "
                        "model's spec.overflow)")
    o.add_argument("--json", action="store_true", help="print one JSON object")
    o.add_argument("--backend", choices=("numba", "reference"), default="numba",
                   help="backend of the run (default numba; the recompute always uses the "
                        "reference functions)")
    o.add_argument("--exact", action="store_true",
                   help="recompute in Python integers throughout, never int64 (slower; the same "
                        "report: a cross-check)")
    o.set_defaults(func=cmd_overflow)
