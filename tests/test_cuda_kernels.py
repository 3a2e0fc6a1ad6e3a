"""Every operator's GPU twin (intsim.cudaops) equals its NumPy reference, under Numba's CUDA
simulator: for each op that dispatches to a twin (``kernel(backend, ..., "twin")``), its
public function on ``backend="cuda"`` and on ``backend="reference"`` with the same
hypothesis-drawn inputs give identical results -- codes, zero points, mantissas, exponents,
saturation and rounding counts, dtypes and shapes -- or the same IntsimError, word for word.

Inputs reach the edges: extreme, constant and two-valued rows, every width the op takes,
zero-point and scale extremes (scales that saturate included), masks with empty, single and
full rows, no rows at all, every Spec option the op reads; and "ties" cases (small values
and scales, where divisions land on exact halves) run under every tie rule of the Spec,
with a few ties found by random search as explicit examples.  DI-MatMul's twin
(``gemm_acc``) is checked in tests/test_cuda.py; the fused path's stage kernels
(intsim.cudapath) by its whole forwards.

All checks run in ONE subprocess (this file as a script, NUMBA_ENABLE_CUDASIM=1 set before
numba.cuda is imported), which prints ``<twin> OK`` per twin; each pytest test reads its
twin's line.  A check also fails when fewer than MIN_COMPUTED of its comparisons computed
a result (rather than both backends refusing the input), so a strategy cannot drift into
checking errors only.
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
import subprocess
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import pytest
from hypothesis import example, given, settings, strategies as st

from intsim.errors import IntsimError, int_range
from intsim.options import REQUANT_MODES, SIGMOID_FRAMES, SOFTMAX_DIVS, Spec
from intsim.qtensor import Dyadic, QTensor, dtype_for

ROOT = Path(__file__).resolve().parents[1]
ROUNDINGS = ("floor", "half_up", "half_even", "half_away")
EXAMPLES = 150
MIN_COMPUTED = 0.5
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None)
LEADS = [(1,), (2,), (3,), (2, 2), (0,)]           # row shapes; (0,): no rows at all


# ------------------------------------------------------------------ strategies

def ints(lo, hi, small=300):
    """Integers in [lo, hi]: the ends and 0 (when inside) often, small values, anything."""
    parts = [st.sampled_from(sorted({lo, hi, min(max(0, lo), hi)})), st.integers(lo, hi)]
    if hi - lo > 2 * small:
        parts.append(st.integers(max(lo, -small), min(hi, small)))
    return st.one_of(*parts)


@st.composite
def rows(draw, shape, lo, hi, plain=False):
    """int64 array of ``shape`` in [lo, hi], each row mixed, constant, or of the two ends
    (``plain``: any integers, for ties cases)."""
    R, C = math.prod(shape[:-1]), shape[-1]
    out = np.zeros((R, C), np.int64)
    if plain:
        return draw(st.lists(st.integers(lo, hi), min_size=R * C, max_size=R * C).map(
            lambda v: np.array(v, np.int64).reshape(shape)))
    for r in range(R):
        kind = draw(st.sampled_from(["mixed", "const", "ends"]))
        if kind == "const":
            out[r] = draw(ints(lo, hi))
        else:
            el = st.sampled_from([lo, hi]) if kind == "ends" else ints(lo, hi)
            out[r] = draw(st.lists(el, min_size=C, max_size=C))
    return out.reshape(shape)


def per_row(draw, lead, strategy):
    return np.array([draw(strategy) for _ in range(math.prod(lead))], np.int64).reshape(lead)


@st.composite
def masks(draw, shape):
    """bool array of ``shape``, each row empty, one column, full, or any."""
    R, C = math.prod(shape[:-1]), shape[-1]
    out = np.zeros((R, C), np.bool_)
    for r in range(R):
        kind = draw(st.sampled_from(["empty", "single", "full", "any"]))
        if kind == "single":
            out[r, draw(st.integers(0, C - 1))] = True
        elif kind == "full":
            out[r] = True
        elif kind == "any":
            out[r] = draw(st.lists(st.booleans(), min_size=C, max_size=C))
    return out.reshape(shape)


@st.composite
def qtensors(draw, lead, C, d_limit, bits=st.integers(2, 16), signed=st.booleans(),
             m=ints(0, 2 ** 31 - 1), k=st.one_of(ints(-(2 ** 20), 2 ** 20), st.integers(-70, 70)),
             plain=False):
    """A QTensor (lead..., C): codes of a drawn width (``plain``: see :func:`rows`), per-row
    zero points at the extremes ``|q - zp| <= d_limit`` allows, per-row scales."""
    b, sg = draw(bits), draw(signed)
    lo, hi = int_range(b, sg)
    q = draw(rows(lead + (C,), lo, hi, plain))
    flat = q.reshape(-1, C)
    zp = np.zeros(flat.shape[0], np.int64)
    if draw(st.booleans()):
        for r in range(flat.shape[0]):
            zlo, zhi = max(-d_limit, int(flat[r].max()) - d_limit), min(d_limit, int(flat[r].min()) + d_limit)
            zp[r] = draw(ints(zlo, zhi))
    return QTensor(q.astype(dtype_for(b, sg)), zp.reshape(lead).astype(np.int32),
                   Dyadic(per_row(draw, lead, m), per_row(draw, lead, k)), b, sg)


@st.composite
def specs(draw, **fields):
    """A Spec: every tie rule, scale widths, both overflow policies and requant modes, plus
    ``fields`` (name=strategy)."""
    f = dict(rounding=draw(st.sampled_from(ROUNDINGS)), m_bits=draw(ints(2, 16)),
             k_bits=draw(ints(4, 16)), overflow=draw(st.sampled_from(["saturate", "saturate", "raise"])),
             requant_mode=draw(st.sampled_from(REQUANT_MODES)))
    f.update({name: draw(s) for name, s in fields.items()})
    return Spec(**f)


def lead_and_cols(cols=st.integers(1, 6)):
    return st.tuples(st.sampled_from(LEADS), cols)


#: small scales, where divisions land on exact halves (ties) often
SMALL_M, SMALL_K = st.sampled_from([1, 2, 3, 4, 5, 6, 8]), st.integers(0, 4)


@st.composite
def scales(draw, lead, mk):
    """A Dyadic per row (shape ``lead``) or one scalar Dyadic, from (m, k) pairs ``mk``."""
    if draw(st.booleans()):
        pairs = [draw(mk) for _ in range(math.prod(lead))]
        return Dyadic(np.array([m for m, _ in pairs], np.int64).reshape(lead),
                      np.array([k for _, k in pairs], np.int64).reshape(lead))
    m, k = draw(mk)
    return Dyadic(np.int64(m), np.int64(k))


def tie_specs(**fields):
    """A Spec for a ties case (small mantissas; compare runs it under every tie rule)."""
    return specs(m_bits=st.integers(2, 4), **fields)


# ------------------------------------------------------------------ comparison

@dataclasses.dataclass(frozen=True)
class Raised:
    kind: str
    message: str


def outcome(call, backend):
    try:
        return call(backend)
    except IntsimError as e:
        return Raised(type(e).__name__, str(e))


def same(got, want, where):
    """Exact equality through tuples, dicts and dataclasses (QTensor, Dyadic, Raised):
    each array's dtype, shape and integers, each scalar's value."""
    if dataclasses.is_dataclass(want):
        assert type(got) is type(want), f"{where}: {got!r} != {want!r}"
        for f in dataclasses.fields(want):
            same(getattr(got, f.name), getattr(want, f.name), f"{where}.{f.name}")
    elif isinstance(want, (tuple, list)):
        assert isinstance(got, (tuple, list)) and len(got) == len(want), f"{where}: {got!r} != {want!r}"
        for i, (g, w) in enumerate(zip(got, want)):
            same(g, w, f"{where}[{i}]")
    elif isinstance(want, dict):
        assert isinstance(got, dict) and got.keys() == want.keys(), f"{where}: {got!r} != {want!r}"
        for key in want:
            same(got[key], want[key], f"{where}[{key!r}]")
    elif isinstance(want, np.ndarray):
        assert isinstance(got, np.ndarray), f"{where}: {type(got).__name__} is not an array"
        assert (got.dtype, got.shape) == (want.dtype, want.shape), \
            f"{where}: {got.dtype}{got.shape} != {want.dtype}{want.shape}"
        assert np.array_equal(got, want), f"{where}:\n cuda      {got!r}\n reference {want!r}"
    else:
        assert got == want, f"{where}: cuda {got!r} != reference {want!r}"


STATS: dict[str, list[int]] = {}


def compare(twin, call, spec=None, every_rule=False):
    """``call(backend, spec)`` on "reference" and on "cuda": the same result, or the same
    error; with ``every_rule`` (ties cases) once per tie rule of the Spec."""
    for rule in ROUNDINGS if every_rule else [None]:
        sp = spec if rule is None else dataclasses.replace(spec, rounding=rule)
        want = outcome(lambda be: call(be, sp), "reference")
        got = outcome(lambda be: call(be, sp), "cuda")
        stat = STATS.setdefault(twin, [0, 0])
        stat[0] += 1
        stat[1] += not isinstance(want, Raised)
        same(got, want, f"{twin} ({sp.rounding})" if rule else twin)


# ------------------------------------------------------------------ one check per twin

@st.composite
def requant_case(draw):
    """Extremes, or (ties) small values, scales and widths."""
    from intsim.requant import M_IN_LIMIT, V_LIMIT
    lead, C = draw(lead_and_cols())
    if draw(st.booleans()):
        v = draw(rows(lead + (C,), -24, 24, plain=True))
        m, k = per_row(draw, lead, SMALL_M), per_row(draw, lead, SMALL_K)
        return v, Dyadic(m, k), draw(st.integers(2, 5)), draw(st.booleans()), draw(tie_specs()), True
    v = draw(rows(lead + (C,), -V_LIMIT, V_LIMIT))
    m = per_row(draw, lead, ints(0, M_IN_LIMIT))
    k = per_row(draw, lead, st.one_of(ints(-(2 ** 20), 2 ** 20), st.integers(-70, 70)))
    return v, Dyadic(m, k), draw(st.integers(2, 16)), draw(st.booleans()), draw(specs()), False


@SETTINGS
@given(requant_case())
def check_requant(case):
    from intsim.requant import requant_rows
    v, scale, bits, sym, spec, ties = case
    compare("requant", lambda be, sp: requant_rows(v, scale, bits, sym, sp, be), spec, ties)


@SETTINGS
@given(lead_and_cols(st.one_of(st.integers(1, 8), st.sampled_from([16, 64, 100]))), st.data())
def check_di_norm(shape, data):
    """Zero points anywhere |q - zp| <= 2^16 - 1 allows under the per-row pre-shift; within
    the width (|q - zp| <= 2^bits - 1) under "fixed": beyond it the op is not defined yet
    (test_di_norm_fixed_preshift_beyond_the_width)."""
    from intsim.norm import NORM_D_LIMIT, di_norm
    lead, C = shape
    spec = data.draw(specs(norm_preshift=st.sampled_from(["row", "fixed"])))
    preshift = data.draw(st.sampled_from([None, "row", "fixed"]))
    bits = data.draw(st.integers(2, 16))
    fixed = (preshift or spec.norm_preshift) == "fixed"
    x = data.draw(qtensors(lead, C, 2 ** bits - 1 if fixed else NORM_D_LIMIT, bits=st.just(bits)))
    compare("di_norm", lambda be, sp: di_norm(x, sp, be, preshift), spec)


@SETTINGS
@given(lead_and_cols(), st.data())
def check_norm_weight(shape, data):
    from intsim.norm import NORM_D_LIMIT, NORM_W_K_MAX, NORM_W_LIMIT, norm_weight
    lead, C = shape
    x = data.draw(qtensors(lead, C, NORM_D_LIMIT))
    g = data.draw(rows((C,), -NORM_W_LIMIT, NORM_W_LIMIT))
    gk = data.draw(ints(0, NORM_W_K_MAX))
    compare("norm_weight", lambda be, _: norm_weight(x, g, gk, be))


@SETTINGS
@given(st.integers(0, 4), st.integers(1, 3), st.sampled_from([2, 4, 6, 8]), st.integers(1, 5), st.data())
def check_rope(T, n_heads, head_dim, max_pos, data):
    from intsim.rope import ROPE_D_LIMIT, rope
    f = data.draw(ints(8, 24))
    spec = data.draw(specs(rope_frac_bits=st.just(f), rope_drop_bits=ints(0, f)))
    drop = data.draw(st.one_of(st.none(), ints(0, f)))
    bits = data.draw(st.integers(2, 17))              # 17: signed only, |q| <= 2^16 - 1
    x = data.draw(qtensors((T,), n_heads * head_dim, ROPE_D_LIMIT, bits=st.just(bits),
                           signed=st.just(True) if bits == 17 else st.booleans()))
    dt = data.draw(st.sampled_from([np.int16, np.int32] if f <= 14 else [np.int32]))
    cos_q, sin_q = (data.draw(rows((max_pos, head_dim // 2), -(2 ** f), 2 ** f)).astype(dt) for _ in range(2))
    pos = np.array([data.draw(ints(0, max_pos - 1)) for _ in range(T)], np.int64)
    every_rule = data.draw(st.booleans())              # dropped bits: ties in half the cases
    compare("rope", lambda be, sp: rope(x, pos, cos_q, sin_q, n_heads, head_dim, sp, be, drop), spec, every_rule)


@SETTINGS
@given(lead_and_cols(), st.data())
def check_align(shape, data):
    """residual_add: the alignment twin and then the requantizer's, stats included.  Extremes;
    or (ties) small scales, whose exact sum the requantizer rounds; or the fine term
    shifted right by 1..3 bits (L + D = 61..63)."""
    from intsim.residual import ALIGN_BITS, RES_D_LIMIT, residual_add
    lead, C = shape
    regime = data.draw(st.sampled_from(["edges", "ties", "shift"]))
    if regime == "ties":
        a, b = (data.draw(qtensors(lead, C, RES_D_LIMIT, m=SMALL_M, k=SMALL_K, plain=True)) for _ in range(2))
        spec = data.draw(tie_specs(residual_bits=ints(8, 16)))
    else:
        a, b = (data.draw(qtensors(lead, C, RES_D_LIMIT)) for _ in range(2))
        spec = data.draw(specs(residual_bits=ints(8, 16)))
    if regime == "shift":                              # a coarse, b fine: sf = 1..3
        L = [int(abs(r).max()).bit_length() for r in (a.centered() * a.scale.m[..., None]).reshape(-1, C)]
        kb = a.scale.k.ravel() + np.array([ALIGN_BITS - n + data.draw(st.integers(1, 3)) for n in L], np.int64)
        b = QTensor(b.q, b.zp, Dyadic(b.scale.m, kb.reshape(lead)), b.bits, b.signed)
    compare("align", lambda be, sp: residual_add(a, b, sp, be), spec, regime == "ties")


@SETTINGS
@given(lead_and_cols(st.one_of(st.integers(1, 8), st.sampled_from([16, 32]))), st.data())
def check_swiglu(shape, data):
    """Per element and tabulated (unsigned gate codes, 2^bits <= C, every 1/alpha = 1)."""
    from intsim.swiglu import (ALPHA_K_LIMIT, ALPHA_M_LIMIT, GUARD_LIMIT, SCALE_K_LIMIT, SCALE_M_LIMIT,
                               di_swiglu)
    lead, C = shape
    ties = data.draw(st.booleans())                    # small scales: small T, halves in the divide
    m, k = (SMALL_M, st.integers(0, 6)) if ties else \
        (ints(0, SCALE_M_LIMIT), st.one_of(ints(-SCALE_K_LIMIT, SCALE_K_LIMIT), st.integers(-40, 40)))
    gate = data.draw(qtensors(lead, C, 2 ** 16 - 1, bits=st.one_of(st.integers(2, 3), st.integers(2, 16)),
                              m=m, k=k, plain=ties))
    up = data.draw(qtensors(lead, C, 2 ** 16 - 1, m=m, k=k, plain=ties))
    alpha = data.draw(st.sampled_from(["none", "ones", "drawn"]))
    alpha_inv = None if alpha == "none" else np.ones(C, np.int64) if alpha == "ones" else \
        data.draw(rows((C,), 1, ALPHA_M_LIMIT))
    alpha_k = data.draw(st.integers(0, 2) if ties else ints(0, ALPHA_K_LIMIT))
    spec = data.draw((tie_specs if ties else specs)(
        sigmoid_frame=st.sampled_from(SIGMOID_FRAMES), sigmoid_bits=st.integers(4, 6) if ties else ints(4, 24),
        sigmoid_guard_bits=st.integers(0, 2) if ties else ints(0, GUARD_LIMIT)))
    guard = data.draw(st.one_of(st.none(), st.integers(0, 2) if ties else ints(0, GUARD_LIMIT)))
    compare("swiglu", lambda be, sp: di_swiglu(gate, up, alpha_inv, alpha_k, sp, be, guard), spec, ties)


def moderate_scales(m_hi):
    """(m, k) with m * 2^-k within 2^-12..2^12: clip thresholds of a few to a few
    million score units."""
    return st.integers(1, m_hi).flatmap(lambda m: st.tuples(st.just(m), st.integers(-12, 12).map(
        lambda e: m.bit_length() + e)))


@st.composite
def scores_case(draw, m_hi, **fields):
    """Scores (lead..., C) with a per-row or scalar scale, a mask (or none) and a Spec
    (``fields``: name=(strategy, strategy for ties)).  Extremes; or (clip) moderate scales
    with the other columns at the clip, ``x_0 - C + {-1, 0, 1}`` (C: the row's clip
    threshold in score units, ``_clip_threshold_ref``); or (ties) small scores, scales,
    clips and widths."""
    from intsim.fixedpoint import ROUND_CODE
    from intsim.softmax import SCORE_LIMIT, _clip_threshold_ref
    regime = draw(st.sampled_from(["edges", "clip", "ties"]))
    at_clip = regime == "clip"
    if regime == "ties":
        clip = st.one_of(st.integers(1, 9), st.sampled_from([5, 9]))  # with halves: 2.5, 4.5, parted by ties
        spec = draw(tie_specs(softmax_clip=clip, **{f: small for f, (_, small) in fields.items()}))
    else:
        spec = draw(specs(softmax_clip=ints(1, 1000), **{f: s for f, (s, _) in fields.items()}))
    lead, C = draw(lead_and_cols(st.integers(2 if at_clip else 1, 6)))
    lim = 40 if regime == "ties" else SCORE_LIMIT
    x = draw(rows(lead + (C,), -lim, lim, plain=regime == "ties")).reshape(-1, C)
    halves = st.integers(0, 3).map(lambda k: (2 ** (k + 1), k))      # C = rnd(c / 2): a tie for odd c
    sc = moderate_scales(m_hi) if at_clip else \
        st.one_of(st.tuples(SMALL_M, SMALL_K), halves) if regime == "ties" else \
        st.tuples(ints(0, m_hi), st.one_of(ints(-(2 ** 20), 2 ** 20), st.integers(-40, 40)))
    scale = draw(scales(lead, sc))
    thr = _clip_threshold_ref(spec.softmax_clip, np.broadcast_to(scale.m, lead).ravel(),
                              np.broadcast_to(scale.k, lead).ravel(), ROUND_CODE[spec.rounding])
    for r in range(x.shape[0]):
        if at_clip and thr[r] < 2 ** 58:
            x[r, 0] = draw(ints(-(2 ** 58), 2 ** 58))
            x[r, 1:] = x[r, 0] - thr[r] + np.array(draw(st.lists(st.sampled_from([-1, 0, 1]), min_size=C - 1,
                                                                  max_size=C - 1)), np.int64)
    mask = draw(st.one_of(st.none(), masks(lead + (C,))))
    return x.reshape(lead + (C,)), scale, mask, spec, regime == "ties"


#: a tie of the clip threshold (C = rnd(5 * 2^0 / 2) = 2.5) and of the probabilities
#: (divide, p_out 3): half_even parts from half_up on both (found by a random search)
CLIP_TIE = (np.array([[0, -2, -3, -5, -7]]), Dyadic(np.int64(2), np.int64(0)), None, Spec(softmax_clip=5), True)
P_TIE = (np.array([[-10, 20, -4], [-11, 32, 38]]), Dyadic(np.array([3, 2]), np.array([1, 1])), None,
         Spec(softmax_clip=1, softmax_in_bits=5, softmax_p_out=3, m_bits=3, softmax_div="divide"), True)


@SETTINGS
@given(scores_case(2 ** 28, softmax_in_bits=(ints(4, 16), st.integers(4, 6)),
                   softmax_p_out=(ints(2, 16), st.integers(2, 6)),
                   softmax_div=(st.sampled_from(SOFTMAX_DIVS),) * 2),
       st.one_of(st.none(), ints(1, 16)), st.booleans(), st.integers(-3, 3))
@example(P_TIE, None, False, 0)
@example(CLIP_TIE, None, True, 0)
def check_softmax(case, p_frac, causal, q_off):
    """``p_frac_bits`` (at most p_out), causal rows with offsets."""
    x, scale, mask, spec, ties = case
    from intsim.softmax import di_clipped_softmax
    p_frac = None if p_frac is None else min(p_frac, spec.softmax_p_out)
    compare("softmax", lambda be, sp: di_clipped_softmax(x, scale, mask, causal, q_off, sp, be, p_frac), spec,
            ties)


@SETTINGS
@given(scores_case(2 ** 31 - 1))
@example(CLIP_TIE)
def check_center_clip(case):
    x, scale, mask, spec, ties = case
    from intsim.softmax import softmax_clip
    compare("center_clip", lambda be, sp: softmax_clip(x, scale, mask, sp, be), spec, ties)


@SETTINGS
@given(lead_and_cols(), st.data())
def check_fold(shape, data):
    """Scales per column or per element; |vals| * m at the bound 2^(62 - guard) - 1, or
    (ties) small values, guards and exponents."""
    from intsim.attention import fold_scales
    lead, n = shape
    ties = data.draw(st.booleans())                    # small values, guard and exponent spread
    guard = data.draw(st.integers(0, 1) if ties else ints(0, 62))
    full = lead + (n,)
    mshape = data.draw(st.sampled_from([(n,), full]))
    m = data.draw(rows(mshape, 0, 7 if ties else 2 ** data.draw(ints(0, 62 - guard)) - 1, ties))
    vb = 40 if ties else ((2 ** 62) >> guard) // max(1, int(m.max())) - 1 if m.size else 0
    vals = data.draw(rows(full, -vb, vb, ties))
    kl = 3 if ties else 2 ** 20
    k = data.draw(rows(data.draw(st.sampled_from([(n,), full])), -kl, kl, ties))
    vis = data.draw(st.one_of(st.none(), masks(full)))
    spec = data.draw(tie_specs() if ties else specs())
    compare("fold", lambda be, sp: fold_scales(vals, m, k, guard, vis, sp, be), spec, ties)


@st.composite
def attention_operands(draw):
    """Two int16-range operands whose product bound n * max|a| * max|b| is at 2^31 - 1."""
    from intsim.attention import I16_MAX, I32_MAX
    Hkv, rep = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    T, S = draw(st.integers(1, 3)), draw(st.integers(1, 5))
    hd = draw(st.sampled_from([1, 2, 3, 16]))
    return Hkv, rep, T, S, hd, draw(ints(0, I16_MAX)), I16_MAX, I32_MAX


def amplitudes(n, amax, i16, i32):
    return amax, min(i16, i32 // (n * max(amax, 1)))


@SETTINGS
@given(attention_operands(), st.data())
def check_qk(ops, data):
    from intsim.attention import qk_scores
    Hkv, rep, T, S, hd, amax, i16, i32 = ops
    a, b = amplitudes(hd, amax, i16, i32)
    qc = data.draw(rows((T, Hkv * rep, hd), -a, a))
    kc = data.draw(rows((S, Hkv, hd), -b, b))
    compare("qk", lambda be, _: qk_scores(qc, kc, be))


@SETTINGS
@given(attention_operands(), st.data())
def check_pv(ops, data):
    from intsim.attention import pv
    Hkv, rep, T, S, hd, amax, i16, i32 = ops
    a, b = amplitudes(S, amax, i16, i32)
    pc = data.draw(rows((Hkv * rep, T, S), -a, a))
    vc = data.draw(rows((S, Hkv, hd), -b, b))
    compare("pv", lambda be, _: pv(pc, vc, be))


@st.composite
def exp_case(draw):
    """Extremes; or (ties) k just past 29 + bitlen(m_f), so that the normalization rounds
    x right by 1..3 bits, and |x| up to a few T, where one unit of x' shows."""
    from intsim.exp import K_LIMIT, M_LIMIT, X_LIMIT
    lead, C = draw(lead_and_cols())
    ties = draw(st.booleans())
    x = draw(rows(lead + (C,), -(2 ** 34) if ties else -X_LIMIT, 0, ties))
    if ties:                                           # m_f = m + m/2 for m < 16
        mk = st.tuples(SMALL_M, st.integers(1, 3)).map(
            lambda t: (t[0], 29 + (t[0] + (t[0] >> 1)).bit_length() + t[1]))
    else:
        mk = st.tuples(ints(1, M_LIMIT), st.one_of(ints(-K_LIMIT, K_LIMIT), st.integers(-40, 70)))
    return x, draw(scales(lead, mk)), draw(tie_specs() if ties else specs()), ties


@SETTINGS
@given(exp_case())
@example((np.array([[-4128665723, -7953493116, -769760317, -4394644236]]), Dyadic(np.int64(61), np.int64(39)),
          Spec(), True))                               # half_even parts from half_up (a random search)
def check_di_exp(case):
    from intsim.exp import di_exp
    x, scale, spec, ties = case
    compare("di_exp", lambda be, sp: di_exp(x, scale, sp, be), spec, ties)


@SETTINGS
@given(st.integers(1, 6), st.integers(1, 5), st.integers(2, 16), st.data())
def check_embed(V, D, bits, data):
    from intsim.embedding import embed
    lo, hi = int_range(bits, True)
    table_q = data.draw(rows((V, D), lo, hi)).astype(dtype_for(bits, True))
    mdt, kdt = (data.draw(st.sampled_from([np.int32, np.int64])) for _ in range(2))
    table_m = data.draw(rows((V,), 0, 2 ** 31 - 1)).astype(mdt)
    table_k = data.draw(rows((V,), -(2 ** 31), 2 ** 31 - 1)).astype(kdt)
    ids = data.draw(rows(data.draw(st.sampled_from([(0,), (1,), (4,), (2, 3), ()])) + (1,), 0, V - 1))[..., 0]
    compare("embed", lambda be, _: embed(ids, table_q, table_m, table_k, bits, be))


CHECKS = {"requant": check_requant, "di_norm": check_di_norm, "norm_weight": check_norm_weight,
          "rope": check_rope, "align": check_align, "swiglu": check_swiglu, "softmax": check_softmax,
          "center_clip": check_center_clip, "fold": check_fold, "qk": check_qk, "pv": check_pv,
          "di_exp": check_di_exp, "embed": check_embed}


def main(names) -> int:
    failed = 0
    for name in names:
        t0 = time.perf_counter()
        try:
            CHECKS[name]()
            n, computed = STATS[name]
            assert computed >= MIN_COMPUTED * n, f"only {computed} of {n} comparisons computed a result"
            print(f"{name} OK: {n} comparisons, {computed} computed, {n - computed} refused alike "
                  f"({time.perf_counter() - t0:.1f} s)", flush=True)
        except Exception:                              # report every twin, then fail
            failed += 1
            print(f"{name} FAIL", flush=True)
            traceback.print_exc(file=sys.stdout)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or list(CHECKS)))


# ------------------------------------------------------------------ pytest side

@pytest.fixture(scope="module")
def simulated():
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1", NUMBA_NUM_THREADS="1")
    r = subprocess.run([sys.executable, __file__], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=1200)
    return r.stdout + r.stderr[-3000:]


@pytest.mark.parametrize("twin", list(CHECKS))
def test_gpu_twin_equals_reference_under_simulator(simulated, twin):
    assert re.search(rf"^{twin} OK", simulated, re.M), simulated[-6000:]


def test_every_twin_but_matmul_has_a_check():
    """The twins the ops dispatch to (``kernel(backend, driver, "twin")``) are CHECKS's
    keys plus DI-MatMul's ``gemm_acc`` (tests/test_cuda.py)."""
    src = "\n".join(p.read_text() for p in sorted((ROOT / "intsim").glob("*.py")))
    twins = set(re.findall(r'kernel\(backend,\s*\w+,\s*"(\w+)"\)', src))
    assert twins == set(CHECKS) | {"gemm_acc"}


@pytest.mark.parametrize("zp", [5, 6])
def test_di_norm_fixed_preshift_beyond_the_width(zp):
    """Found by check_di_norm (the smallest case): one 2-bit code 0 with zero point 5 or 6,
    so |q - zp| > 2^2 - 1.  The fixed pre-shift (P = 29 for C = 1 at 2 bits) would shift
    sumsq = 25 or 36 past int64 (the reference wrapped, the Numba row kernel, which the GPU
    twin runs too, divided by zero); di_norm now refuses the input on every backend, by
    name, and the per-row pre-shift still takes it."""
    from intsim.errors import IntsimError
    from intsim.norm import di_norm
    x = QTensor(np.array([[0]], np.uint8), np.array([zp], np.int32),
                Dyadic(np.ones(1, np.int64), np.zeros(1, np.int64)), 2, False)
    for be in ("reference", "numba"):
        with pytest.raises(IntsimError, match=r"x \(q - zp\) under the fixed pre-shift .*2-bit codes"
                                              r".*outside \[-3, 3\]"):
            di_norm(x, Spec(norm_preshift="fixed"), be)
        assert di_norm(x, Spec(norm_preshift="row"), be)[0].scale.m[0] > 0
