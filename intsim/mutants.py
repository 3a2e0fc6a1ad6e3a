"""Mutants: named, plausible hardware deviations of ONE step of docs/SPEC.md each, and the
means to run the NumPy reference under one of them (issue 12, "a mutant score").

``intsim mutants SUITE_DIR...`` (:mod:`intsim.golden.mutating`) replays golden suites under
every mutant and reports which ones the suites kill; docs/MUTANTS.md has the registry and
today's score.

A :class:`Mutant` names the SPEC step it deviates from and, inside ``with m.apply():``,
swaps ONE thing in the reference path (``backend="reference"``; the Numba kernels are never
touched), in one of two ways:

* **a rounding site's rule**: a module-level helper *as one op module sees it* (DI-Exp's
  ``T`` is the only caller of ``intsim.exp._div_round_ref``) is wrapped so that it rounds by
  another rule than the run's: floor, truncation toward zero, or another tie rule
  (:func:`floor_rule`, :func:`tie_rule`, :data:`TRUNC`);
* **one step**: a reference function is replaced by its variant in
  :mod:`intsim.mutant_variants`, the reference with one step changed by a knob; with every
  knob at its default a variant equals the reference (tests/test_mutants.py), so the mutant
  deviates in that one step only.

A mutant of the **graph** (``graph=True``: the width ``intsim.llama`` hands an op, not the
op's arithmetic) replays every record unchanged, since a record's call carries its
arguments; the golden replay then also runs the whole graph of a model dump once more
(:mod:`intsim.golden.mutating`), where it shows.

A helper shared by several ops (DI-Exp, the dyadic fit) is swapped in every ``intsim``
module that imported it (``everywhere``): the deviation is the operator's, wherever it runs.
Every mutant carries a **witness**, an op call on a small input on which the mutated op's
output differs from the reference's (tested), so no mutant is an equivalent no-op.
``apply`` restores every name it swapped and clears the per-model constant caches
(``norm.sqrt_c_const``, ``head.inv_sqrt_dyadic``) on entry and on exit.

Kept out: steps no op record replays (the graph's scale products and 1/sqrt(d), argmax)
and the embedding gather (no arithmetic); of the graph's own choices, only the two widths
that are not A everywhere: the LM head's input (``head.input_at_a``) and the probabilities
into PV (``attention.p_at_a``).
"""
from __future__ import annotations

import importlib
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from fnmatch import fnmatchcase
from functools import partial

import numpy as np

from . import mutant_variants as mv
from .attention import fold_scales, pv, qk_scores
from .errors import IntsimError, IntsimOverflowError
from .exp import di_exp
from .fixedpoint import RC_CEIL, RC_FLOOR, RC_HALF_EVEN, RC_HALF_UP, dyadic_fit
from .head import inv_sqrt_dyadic
from .matmul import QWeight, di_matmul
from .model import Widths
from .norm import di_norm, sqrt_c_const
from .options import Spec
from .qtensor import Dyadic, QTensor
from .requant import requant_rows
from .residual import residual_add
from .rope import rope
from .softmax import CLIP_CAP, di_clipped_softmax
from .swiglu import di_swiglu

REF = "reference"


# ------------------------------------------------------------------ rules of a rounding site

def floor_rule(code: int) -> int:
    """The site floors instead of the run's rule (a floor run: rounds half up instead)."""
    return RC_HALF_UP if code == RC_FLOOR else RC_FLOOR


def tie_rule(code: int) -> int:
    """The site breaks ties to even instead of the run's rule (a half_even run: half up)."""
    return RC_HALF_UP if code == RC_HALF_EVEN else RC_HALF_EVEN


#: the site truncates toward zero (floor for values >= 0, ceil below 0)
TRUNC = "trunc"


def rounded_by(rule):
    """``make(original)`` for a helper whose FIRST argument is the value rounded and whose
    LAST is the rounding code (``_div_round_ref``, ``_rshift_round_ref``, ``_fit_ref``,
    ``_clip_threshold_ref``): the same helper rounding by ``rule`` (a function of the
    run's code, or :data:`TRUNC`)."""
    def make(orig):
        if rule == TRUNC:
            def truncated(*a):
                return np.where(np.asarray(a[0]) < 0, orig(*a[:-1], RC_CEIL), orig(*a[:-1], RC_FLOOR))
            return truncated

        def recoded(*a):
            return orig(*a[:-1], rule(a[-1]))
        return recoded
    return make


# ------------------------------------------------------------------ the swap

@dataclass(frozen=True)
class Patch:
    """Replace ``module.attr`` by ``make(original)``; ``everywhere``: also in every other
    ``intsim`` module that imported the same object."""
    module: str
    attr: str
    make: object
    everywhere: bool = False


def _intsim_modules() -> list:
    return [m for n, m in list(sys.modules.items())
            if m is not None and (n == "intsim" or n.startswith("intsim."))]


def _clear_constant_caches() -> None:
    sqrt_c_const.cache_clear()
    inv_sqrt_dyadic.cache_clear()


@dataclass(frozen=True)
class Mutant:
    """One named deviation: ``spec_step`` (``§5.2 step 1``) is the docs/SPEC.md step it
    changes; ``patches`` what :meth:`apply` swaps; ``witness()`` runs the targeted op on
    an input where the mutant's output differs from the reference's; ``graph``: it changes
    what the graph passes an op (a width), so only a run of the whole graph can show it."""
    name: str
    spec_step: str
    description: str
    patches: tuple
    witness: object
    graph: bool = False

    @contextmanager
    def apply(self):
        """Run the reference under this mutant inside the ``with`` block; restores on exit."""
        saved = []
        _clear_constant_caches()
        try:
            for p in self.patches:
                mod = importlib.import_module(p.module)
                orig = getattr(mod, p.attr)
                new = p.make(orig)
                holders = ([m for m in _intsim_modules() if getattr(m, p.attr, None) is orig]
                           if p.everywhere else [mod])
                for h in holders:
                    saved.append((h, p.attr, orig))
                    setattr(h, p.attr, new)
            yield self
        finally:
            for h, attr, orig in reversed(saved):
                setattr(h, attr, orig)
            _clear_constant_caches()


def _wrap(module: str, attr: str, rule, everywhere: bool = False) -> tuple:
    return (Patch(module, attr, rounded_by(rule), everywhere),)


def _variant(module: str, attr: str, fn, everywhere: bool = False, **knobs) -> tuple:
    return (Patch(module, attr, lambda orig: partial(fn, **knobs), everywhere),)


def _replace(module: str, attr: str, new, everywhere: bool = False) -> tuple:
    return (Patch(module, attr, lambda orig: new(orig), everywhere),)


# ------------------------------------------------------------------ witnesses' inputs

def _a(v, dt=np.int64) -> np.ndarray:
    return np.array(v, dtype=dt)


def _dy(m, k) -> Dyadic:
    return Dyadic(_a(m), _a(k))


def _qt(q, zp, m, k, bits, signed) -> QTensor:
    q = _a(q)
    rows = q.shape[:-1]
    return QTensor(q.astype(f"{'int' if signed else 'uint'}{8 if bits <= 8 else 16}"),
                   np.broadcast_to(_a(zp, np.int32), rows).copy(),
                   Dyadic(np.broadcast_to(_a(m), rows).copy(), np.broadcast_to(_a(k), rows).copy()),
                   bits, signed)


def _w_requant(rows, bits=8, symmetric=False, m=200, k=10, spec=Spec()):
    return lambda: requant_rows(_a(rows), _dy(m, k), bits, symmetric, spec, REF)


def _w_fit(num, den, rounding="half_up"):
    return lambda: dyadic_fit(_a(num), _a(den), 8, (-128, 127), rounding, REF)


def _w_exp(x, m, k, spec=Spec()):
    return lambda: di_exp(_a(x), _dy(m, k), spec, REF)


def _w_softmax(scores, m, k, mask=None, spec=Spec()):
    return lambda: di_clipped_softmax(_a(scores), _dy(m, k), mask=None if mask is None else _a(mask, bool),
                                      spec=spec, backend=REF)


def _w_norm(q, spec=Spec()):
    return lambda: di_norm(_qt(q, 0, 1, 0, 16, True), spec, REF)


def _w_swiglu(gate, up, m=150, k=12, spec=Spec(), up_m=140):
    return lambda: di_swiglu(_qt(gate, 100, m, k, 8, False), _qt(up, 120, up_m, 11, 8, False),
                             spec=spec, backend=REF)


def _rope_tables():
    cos_q = _a([[16384, 16384], [8852, 16069], [-6813, 15137]], np.int16)
    sin_q = _a([[0, 0], [13787, 3196], [14900, 6270]], np.int16)
    return cos_q, sin_q


def _w_rope(q, zp=0, pos=(1,), drop_bits=None):
    cos_q, sin_q = _rope_tables()
    return lambda: rope(_qt(q, zp, 181, 9, 16 if max(map(abs, np.ravel(q))) > 127 else 8, True),
                        _a(pos), cos_q, sin_q, 1, 4, Spec(), REF, drop_bits)


def _w_residual(qa, ka, qb, kb):
    return lambda: residual_add(_qt(qa, 0, 201, ka, 16, True), _qt(qb, 0, 163, kb, 16, True), Spec(), REF)


def _w_fold(vals, m, k, visible=None, guard=4):
    return lambda: fold_scales(_a(vals), _a(m), _a(k), guard, None if visible is None else _a(visible, bool),
                               Spec(), REF)


def _w_matmul(x_rows, wq, wm, wb):
    def run():
        x = _qt(x_rows, 0, 200, 10, 16, True)
        w = QWeight(_a(wq, np.uint8), 8, len(wq[0]), _a(wm), _a(wb), 12)
        return di_matmul(x, w, 8, 16, True, Spec(), REF)
    return run


def _w_acc_bound():
    """A group at DI-MatMul's int31 edge: G = 16640 codes 255 times weights 255."""
    def run():
        G = 16640
        x = _qt(np.full((1, G), 100), 0, 200, 10, 8, True)
        w = QWeight(np.full((1, G), 255, np.uint8), 8, G, _a([[1]]), _a([[0]]), 0)
        return di_matmul(x, w, 8, 16, True, Spec(), REF)
    return run


def _w_head():
    """The graph's LM head (``llama.lm_head``) of a model at A = 4 whose head input is 8 bits,
    on a stream row whose channels 225 and 232 share one 4-bit code but not one 8-bit code."""
    def run():
        from types import SimpleNamespace

        from . import llama
        eye = np.eye(4, dtype=np.uint8)
        m = SimpleNamespace(widths=Widths(a_bits=4, head_a_bits=8), spec=Spec(),
                            w_head=QWeight(eye, 8, 4, _a([[1]] * 4), _a([[0]] * 4), 0))
        return llama.lm_head(m, _qt([[-240, 0, 225, 232]], 0, 1, 0, 16, True), REF)
    return run


def _w_attention_pv8():
    """The graph's attention block (``llama.attention``) of a one-head model at A = 4 whose
    probabilities enter PV at 8 bits: three tokens, so the last query's row spreads its
    weight over three keys that 4-bit codes cannot keep apart as 8-bit codes do."""
    def run():
        from types import SimpleNamespace

        from . import llama
        from .model import ModelConfig
        eye = np.eye(4, dtype=np.uint8) * 200 + 20
        lin = QWeight(eye, 8, 4, _a([[1]] * 4), _a([[-20]] * 4), 8)
        cfg = ModelConfig(1, 4, 1, 1, 4, 8, 8, 4, "10000.0", 1, 2)
        cos_q = np.full((4, 2), 2 ** 14, np.int16)
        m = SimpleNamespace(config=cfg, widths=Widths(a_bits=4, pv_bits=8), spec=Spec(),
                            layers=[SimpleNamespace(wq=lin, wk=lin, wv=lin, wo=lin)],
                            cos_q=cos_q, sin_q=np.zeros((4, 2), np.int16))
        x = _qt([[90, -20, 35, 7], [-60, 80, 10, 100], [30, 40, -90, 20]], 0, 1, 0, 16, True)
        pos = np.arange(3, dtype=np.int64)
        return llama.attention(m, 0, x, pos, pos[None, :] <= pos[:, None],
                               llama.KVCache.empty(m, 3), REF, None)
    return run


def _w_pv_past_bound():
    """PV one position past its int32 bound at A = 8, P = 15 (S = 258, every probability code
    2^15 - 1, every value +-255): the reference refuses, an empty output; an op that does
    not refuse returns its sums."""
    def run():
        S = 258
        pc = np.full((1, 1, S), 2 ** 15 - 1, np.int64)
        vc = np.full((S, 1, 2), 255, np.int64)
        vc[:, 0, 1] = -255
        try:
            return pv(pc, vc, REF)
        except IntsimOverflowError:
            return np.zeros(0, np.int64)
    return run


def _w_agroup(row, a_group=4, m=1, k=0):
    """DI-MatMul with group-wise activations (SPEC 4.8) at A = 4, identity weights: P holds
    each centred group code shifted by E - e."""
    def run():
        from .matmul import di_matmul_acc
        n = len(row)
        w = QWeight(np.eye(n, dtype=np.uint8), 8, n, _a([[1]] * n), _a([[0]] * n), 0)
        return di_matmul_acc(_qt([row], 0, m, k, 16, True), w, 4, Spec(), REF, a_group=a_group)
    return run


def _w_rot(rows, b, spec=Spec()):
    """The online Hadamard rotation (SPEC 7.6) of ``rows`` in blocks of ``b``, unit scales."""
    def run():
        from .hadamard import hadamard_rows
        n = len(rows)
        return hadamard_rows(_a(rows), _dy([1] * n, [0] * n), b, spec, REF)
    return run


def _w_twostep(u, zp, K=None):
    """The two-step fold (SPEC 4.9) of one token whose x_q - zx are all 255 against a row of
    one column per group: codes 255, group multipliers ``u`` times c = 7, zero points ``zp``."""
    def run():
        from .matmul import fold_two_step
        n = len(u)
        w = QWeight(np.full((1, n), 255, np.uint8), 8, 1, _a([[7 * x for x in u]]),
                    _a([[-7 * x * z for x, z in zip(u, zp)]]), 0)
        acc = _a([[[255 * 255] * n]])
        return fold_two_step(acc, _a([[255] * n]), w, 8, REF)
    return run


def outputs_of(result) -> list:
    """An op result as a flat list of integer arrays (codes, zero points, scales, values);
    counters (ints, dicts) are left out: a kill must show in a tensor."""
    if isinstance(result, tuple):
        return [a for r in result for a in outputs_of(r)]
    if isinstance(result, QTensor):
        return [np.asarray(result.q), np.asarray(result.zp), result.scale.m, result.scale.k]
    if isinstance(result, Dyadic):
        return [result.m, result.k]
    if isinstance(result, np.ndarray):
        return [result]
    return []


def same_outputs(a, b) -> bool:
    oa, ob = outputs_of(a), outputs_of(b)
    return len(oa) == len(ob) and all(x.shape == y.shape and np.array_equal(x, y) for x, y in zip(oa, ob))


# ------------------------------------------------------------------ swaps that are not variants

def _zp_hardwired(orig):
    """softmax's requantizer as DI-Exp's input sees it: zero point 2^b - 1 on every row."""
    def requant_zp_top(*a, **kw):
        qt, nsat = orig(*a, **kw)
        top = np.full(np.shape(qt.zp), 2 ** qt.bits - 1, dtype=np.int32)
        return QTensor(qt.q, top, qt.scale, qt.bits, qt.signed), nsat
    return requant_zp_top


def _isqrt_up(orig):
    def isqrt_ceil(n):
        r = orig(n)
        return r + (r * r < np.asarray(n, dtype=np.int64))
    return isqrt_ceil


def _other_frame(orig):
    def sigmoid_other_frame(z, m1, k1, B, rowmax, code):
        return orig(z, m1, k1, B, not rowmax, code)
    return sigmoid_other_frame


def _no_clip(orig):
    def clip_threshold_cap(c, m, k, code):
        return np.full(np.shape(m), CLIP_CAP, dtype=np.int64)
    return clip_threshold_cap


def _kv_modulo(orig):
    def kv_per_query_head_modulo(x, rep):
        return np.tile(x.astype(np.int64), (1, rep, 1))      # query head h reads kv head h % Hkv
    return kv_per_query_head_modulo


def _pv_bound_at_a(orig):
    def pv_bound_of_a_bit_probabilities(S, pc, vc):
        return orig(S, vc, vc)                  # S max|v|^2: P taken as wide as the values
    return pv_bound_of_a_bit_probabilities


def _fit_nearest(code: int) -> int:
    return RC_HALF_UP if code == RC_CEIL else RC_CEIL


def _fit_down(code: int) -> int:
    return RC_FLOOR


def _fit_up(code: int) -> int:
    return RC_CEIL


# ------------------------------------------------------------------ the registry

def _registry() -> tuple:
    # why one function: the registry is one table, a mutant and its witness per entry, in
    # SPEC order; split by operator it would only scatter what the docs list in order.
    M, fx, rq, ex, sm = Mutant, "intsim.fixedpoint", "intsim.requant", "intsim.exp", "intsim.softmax"
    no, sw, rp, rs, at = "intsim.norm", "intsim.swiglu", "intsim.rope", "intsim.residual", "intsim.attention"
    fit_w = _w_fit([32768, 511], [257, 2])           # 127.502 at the floor-normalized k; 255.5
    rq_w = _w_requant([[-1000, 2500, 77, 1333, -5, 999, 12, -77]])
    sm_w = _w_softmax([[-279, -128342, -58073]], 223, 22, [[True, True, False]])
    four = [[0, 0, 0, 0]]                            # S = 4 T: p = 2^F / 4, a tie at F = 1
    nm16 = Spec(m_bits=16)
    sg_w = _w_swiglu([[0, 37, 100, 140, 200, 255]], [[3, 80, 120, 190, 250, 44]])
    fold_w = _w_fold([[742684, 611606, 757203, 758369]], [[231, 171, 162, 189]], [[15, 8, 20, 17]])
    rope_w = _w_rope([[5, -9, 30, 7]])
    exp_w = _w_exp([[0, -1, -7, -100, -1001, -4097]], 211, 14)   # 2^14 / m_f = 54.07
    hd, rot_w = "intsim.hadamard", _w_rot([[2 ** 58 + 1, -(2 ** 58 + 1), 2 ** 58 + 3, 5]], 4)   # sh = 1, ties

    def rqv(**knob):
        return _variant(rq, "_requant_ref", mv.requant_variant, **knob)

    def smv(**knob):
        return _variant(sm, "_exp_norm_ref", mv.exp_norm_variant, **knob)
    return (
        M("fit.normalize_on_rounded", "§1.4 step 2", "the dyadic fit decides its normalization on "
          "the mantissa rounded by its own rule, not on the floor quotient", _variant(
              fx, "_fit_ref", mv.fit_variant, True, norm_rounded=True), fit_w),
        M("fit.carry_saturates", "§1.4 step 4", "a rounding carry to 2^m_bits saturates the "
          "mantissa at 2^m_bits - 1 instead of halving it and decrementing k", _variant(
              fx, "_fit_ref", mv.fit_variant, True, carry_saturates=True), fit_w),
        M("requant.preshift_removed", "§3 pre-shift", "no pre-shift: a range beyond 32 bits "
          "enters the fit and the code divide whole", rqv(pre_bits=64),
          _w_requant([[1099511640121, -600811650276]], 16, True)),
        M("requant.preshift_31", "§3 pre-shift", "the pre-shift brings the range to 31 bits "
          "instead of 32", rqv(pre_bits=31), _w_requant([[1099511640121, -44125503822]], 16, True)),
        M("requant.preshift_33", "§3 pre-shift", "the pre-shift brings the range to 33 bits "
          "instead of 32", rqv(pre_bits=33), _w_requant([[137438954471, 74671498230]], 16, True)),
        M("requant.preshift_rounded", "§3 pre-shift", "the pre-shift rounds half up instead of "
          "flooring", rqv(pre_round=True), _w_requant([[1099511640121, -296536202401]], 16, True)),
        M("requant.range_without_zero", "§3 range", "the asymmetric range is [min v, max v] "
          "(the paper's pmin), not widened to contain 0", rqv(with_zero=False),
          _w_requant([[3501, 3791, 3123, 1760]], 8, False, 179, 2)),
        M("requant.fit_den_pow2", "§3 scale", "the scale fit divides the range by 2^b "
          "(2^(b-1) symmetric) instead of Q = 2^b - 1", rqv(fit_den_pow2=True), rq_w),
        M("requant.fit_nearest", "§3 scale", "the scale fit rounds to nearest (half_up) where it "
          "rounds up (ceil, requant_mode fitted); up where it rounds to nearest (range)",
          _wrap(rq, "_fit_ref", _fit_nearest), _w_requant([[1030, -550, -1129, -436]], 4, False, 129, 19)),
        M("requant.fit_floor", "§3 scale", "the scale fit rounds down (floor)",
          _wrap(rq, "_fit_ref", _fit_down), rq_w),
        M("requant.zp_floor", "§3 codes", "the zero point floors instead of the run's rule",
          rqv(zp_rule=floor_rule), rq_w),
        M("requant.zp_tie", "§3 codes", "the zero point breaks ties to even (half_up if the run "
          "is half_even)", rqv(zp_rule=tie_rule), _w_requant([[2, -7, 3]], 4, False, 162, 28)),
        M("requant.codes_floor", "§3 codes", "the codes floor instead of the run's rule",
          rqv(codes_rule=floor_rule), rq_w),
        M("requant.codes_tie", "§3 codes", "the codes break ties to even (half_up if the run is "
          "half_even)", rqv(codes_rule=tie_rule), _w_requant([[26171, 34243, 60390]], 16, False, 208, -4)),
        M("requant.codes_trunc", "§3 codes", "the codes truncate toward zero", rqv(codes_rule=TRUNC), rq_w),
        M("requant.clamp_wraps", "§3 codes", "a code beyond [lo_q, Q] wraps in its b-bit "
          "register instead of being clamped (a saturation replaced by a wrap)", rqv(wrap=True),
          _w_requant([[-19, -13, -17, -14, 6, 11]], 4, False, 240, -3)),
        M("matmul.offset_dropped", "§4.2 step 3", "the fold drops the weight offset term "
          "b * xs", _variant("intsim.matmul", "_di_acc_ref", mv.acc_variant, offset=False),
          _w_matmul([[100, -50, 7, 33]], [[1, 2, 250, 9], [0, 255, 17, 80]], [[300], [999]],
                    [[-3000], [-700]])),
        M("matmul.acc_31bit", "§4.4 acc", "the group accumulator is 31 bits wide, one bit "
          "narrower than int32 (wraps at 2^30)", _variant(
              "intsim.matmul", "_di_acc_ref", mv.acc_variant, acc_bits=31), _w_acc_bound()),
        M("twostep.inner_int32", "§4.9 bound", "the two-step inner sum is held in an int32 register "
          "(wraps past 2^31 - 1) at a K beyond the SPEC's int32 table", _variant(
              "intsim.matmul", "_fold_two_step_ref", mv.two_step_variant, inner_bits=32),
          _w_twostep([255 if g % 2 == 0 else 254 for g in range(130)], [0] * 130)),
        M("twostep.offset_unfactored", "§4.9 step 1", "the inner sum's offset term multiplies the "
          "weight's b = c beta instead of beta (mantissas factored, offsets not)", _variant(
              "intsim.matmul", "_fold_two_step_ref", mv.two_step_variant, offset_unfactored=True),
          _w_twostep([255, 3], [4, 1])),
        M("agroup.shared_zero_point", "§4.8 step 1", "group-wise activations keep the row's one "
          "zero point in every group (codes clamped) instead of a zero point per (token, group)",
          _variant("intsim.matmul", "_group_codes_ref", mv.group_codes_variant, shared_zero_point=True),
          _w_agroup([-30720, 30720, 0, 0, 100, 150, 200, 240])),
        M("agroup.emax_7", "§4.8 step 1", "the group exponent capped at 7 (a 3-bit exponent "
          "field) instead of E = 8", _variant("intsim.matmul", "_group_codes_ref",
                                             mv.group_codes_variant, emax=7),
          _w_agroup([-30720, 30720, 0, 0, 8, 24, -40, 56])),
        M("agroup.shift_by_e", "§4.8 step 3", "the fold shifts each group's term by its "
          "exponent e instead of E - e (the alignment inverted)", _variant(
              "intsim.matmul", "_di_acc_grp_ref", mv.group_fold_variant, shift_by_e=True),
          _w_agroup([-240, 0, 225, 232, 3, -2, 1, 0])),
        M("exp.t_floor", "§5.2 step 1", "T = 2^k' / m_f floors instead of the run's rule",
          _wrap(ex, "_div_round_ref", floor_rule), _w_exp([[0, -222, -108, -69, -211]], 160, 28)),
        M("exp.t_ceil", "§5.2 step 1", "T = 2^k' / m_f rounds up (T's tie rule itself cannot "
          "matter: a tie is only possible at 1/2, which T >= 1 absorbs)",
          _wrap(ex, "_div_round_ref", _fit_up), exp_w),
        M("exp.t_cap_removed", "§5.2 step 0b", "no T cap: j only keeps 2^k' inside int64, T "
          "grows beyond 2^30 with fine scales", _variant(
              ex, "_exp_unit_ref", mv.exp_unit_variant, True, cap=False),
          _w_exp([[0, -17570, -9045, -19303, -2147]], 254, 69)),
        M("exp.log2e_one_half", "§5.2 step 0a", "m_f = m + (m >> 1): log2 e taken as 1.5",
          _variant(ex, "_exp_unit_ref", mv.exp_unit_variant, True, log2e="one_half"),
          exp_w),
        M("exp.log2e_product", "§5.2 step 0a", "m_f = (23 m + 8) >> 4: the product 23 m / 16 "
          "rounded once instead of the shift-add", _variant(
              ex, "_exp_unit_ref", mv.exp_unit_variant, True, log2e="product"),
          _w_exp([[0, -123, -6, -20]], 252, 34)),
        M("exp.xnorm_floor", "§5.2 step 0c", "the normalization shift x' = x / 2^j floors "
          "instead of the run's rule", _wrap(ex, "_rshift_round_ref", floor_rule),
          _w_exp([[0, -135, -92]], 161, 52)),
        M("exp.chord_trunc", "§5.2 step 4", "e = T + r / 2 with r / 2 truncated toward zero, "
          "not floored", _variant(ex, "_exp_apply_ref", mv.exp_apply_variant, True,
                                  chord_trunc=True), exp_w),
        M("exp.out_rounded", "§5.2 step 5", "out = e / 2^q rounded half up instead of floored",
          _variant(ex, "_exp_apply_ref", mv.exp_apply_variant, True, out_rounded=True),
          exp_w),
        M("softmax.clip_skipped", "§6.2 step 1", "no clip: x - max enters the requantizer "
          "unclipped", _replace(sm, "_clip_threshold_ref", _no_clip),
          _w_softmax([[1401, 6173, 5198]], 241, 15)),
        M("softmax.clip_floor", "§6.2 step 1", "the clip threshold C floors instead of the "
          "run's rule", _wrap(sm, "_clip_threshold_ref", floor_rule), _w_softmax([[53, -9, 60]], 207, 8)),
        M("softmax.max_with_masked", "§6.2 step 1", "the row max is taken over the masked "
          "columns too", _variant(sm, "_center_clip_ref", mv.center_clip_variant, max_all=True),
          _w_softmax([[-2993, -184]], 217, 8, [[True, False]])),
        M("softmax.zp_hardwired", "§6.2 step 2", "DI-Exp's input is q - (2^b - 1): the zero "
          "point hard-wired to 2^b - 1 instead of the row's fitted zp", _replace(
              sm, "requant_rows", _zp_hardwired), _w_softmax(
              [[-48602, -76242, -127485, -82475, -56514]], 233, 23, [[True, False, True, False, True]])),
        M("softmax.masked_in_sum", "§6.2 step 3", "the masked columns' DI-Exp (of 0: T) enters "
          "the sum S", smv(masked_in_sum=True), sm_w),
        M("softmax.recip_rounded", "§6.2 step 4", "the row reciprocal f = (2^62 - 1) / S "
          "rounds half up instead of flooring", smv(recip_rounded=True),
          _w_softmax(four, 128, 0, spec=Spec(softmax_p_frac=1))),
        M("softmax.p_floor", "§6.2 step 4", "p floors instead of the run's rule", smv(p_rule=floor_rule), sm_w),
        M("softmax.p_tie", "§6.2 step 4", "p breaks ties to even (half_up if the run is "
          "half_even)", smv(p_rule=tie_rule),
          _w_softmax(four, 128, 0, spec=Spec(softmax_div="divide", softmax_p_frac=1))),
        M("softmax.p_wraps", "§6.2 step 4", "p wraps modulo 2^p_out instead of saturating at "
          "2^p_out - 1", smv(wrap=True), _w_softmax([[0, -90000]], 200, 10)),
        M("softmax.div_swapped", "§6.2 step 4", "the IntDiv form the spec did not choose "
          "(divide for reciprocal, reciprocal for divide)", smv(other_div=True),
          _w_softmax(four, 128, 0, spec=Spec(softmax_p_frac=1))),
        M("softmax.ef_62bit", "§6.2 step 4", "e * f in a 62-bit register, one bit narrower than "
          "the 63 its bound needs", smv(ef_bits=62), _w_softmax([[0, -90000]], 200, 10)),
        M("swiglu.sigmoid_floor", "§7.2 step 3", "the sigmoid divide floors instead of the run's "
          "rule", _wrap(sw, "_div_round_ref", floor_rule), sg_w),
        M("swiglu.sigmoid_tie", "§7.2 step 3", "the sigmoid divide breaks ties to even (half_up "
          "if the run is half_even)", _wrap(sw, "_div_round_ref", tie_rule), _w_swiglu(
              [[212, 252, 194]], [[35, 93, 191]], 195, 13, Spec(sigmoid_bits=4, sigmoid_guard_bits=0))),
        M("swiglu.frame_swapped", "§7.2 step 3", "the sigmoid frame the spec did not choose "
          "(rowmax for stable, stable for rowmax)", _replace(sw, "_sigmoid_ref", _other_frame), sg_w),
        M("swiglu.scale_fit_floor", "§7.2 step 5", "the output mantissa's refit to 28 bits (when "
          "m1 * m2 > 2^28) floors instead of the run's rule", _wrap(sw, "_fit_ref", floor_rule),
          _w_swiglu([[0, 37, 100]], [[3, 80, 120]], 40001, 30, up_m=40005)),   # m1 m2 = 8 (200 030 000) + 5
        M("rot.preshift_floor", "§7.6 step 1", "the Hadamard rotation's pre-shift y / 2^sh floors "
          "instead of the run's rule", _wrap(hd, "_rshift_round_ref", floor_rule), rot_w),
        M("rot.preshift_no_growth", "§7.6 step 1", "the pre-shift leaves out the log2 b growth bits "
          "(sh = max(0, bitlen(max|y|) - 60)): outputs up to 2^(60 + log2 b)", _variant(
              hd, "_fwht_ref", mv.fwht_variant, growth_bits=False), rot_w),
        M("rot.butterfly_reversed", "§7.6 step 2", "each butterfly's difference is taken c - a "
          "instead of a - c", _variant(hd, "_fwht_ref", mv.fwht_variant, diff_reversed=True), rot_w),
        M("rot.block_half", "§7.6 step 2", "the transform runs in blocks of b / 2 (its last "
          "butterfly stage missing)", _variant(hd, "_fwht_ref", mv.fwht_variant, block_div=2), rot_w),
        M("norm.isqrt_ceil", "§8.2 step 3", "the integer square roots round up (r and n_C)",
          _replace(no, "_isqrt_ref", _isqrt_up), _w_norm([[-19, 158]], nm16)),
        M("norm.preshift_minus1", "§8.2 step 2", "the per-row pre-shift P one less (29 or 30 "
          "bits in r instead of 31)", _variant(no, "_di_norm_ref", mv.norm_variant, p_delta=-1),
          _w_norm([[230, -220]], nm16)),
        M("norm.preshift_fixed", "§8.2 step 2", "the fixed pre-shift of a 16-bit input instead "
          "of the per-row one", _variant(no, "_di_norm_ref", mv.norm_variant, fixed16=True),
          _w_norm([[-1, 6]], nm16)),
        M("norm.mean_first", "§8.2 step 4", "sumsq // C before the square root (n_C = 1) "
          "instead of sqrt(C) folded into the constant", _variant(
              no, "_di_norm_ref", mv.norm_variant, mean_first=True), _w_norm([[-7, 2]], nm16)),
        M("norm.fit_floor", "§8.2 step 5", "the scale fit floors instead of the run's rule",
          _wrap(no, "_fit_ref", floor_rule), _w_norm([[29816, 27703]])),
        M("norm.fit_tie", "§8.2 step 5", "the scale fit breaks ties to even (half_up if the run "
          "is half_even)", _wrap(no, "_fit_ref", tie_rule), _w_norm(
              [[32767] * 6 + [20733, 180, 15, 4]], Spec(m_bits=2))),
        M("rope.interleaved", "§9.1 layout", "channel 2i pairs with 2i + 1 (interleaved, "
          "Meta's layout) instead of i with i + d/2", _variant(
              rp, "_rope_ref", mv.rope_variant, interleaved=True), rope_w),
        M("rope.reversed", "§9.2", "the rotation by minus the angle (sin's sign flipped)",
          _variant(rp, "_rope_ref", mv.rope_variant, reversed_=True), rope_w),
        M("rope.products_31bit", "§9.2", "the rotation in a 31-bit register, one bit narrower "
          "than the int32 its Cauchy-Schwarz bound allows at f = 14", _variant(
              rp, "_rope_ref", mv.rope_variant, wrap_bits=31),
          _w_rope([[31255, 30387, 25880, -22903]], -30001)),
        M("rope.drop_floor", "§9.2", "the optional rounding of the rotation (rope_drop_bits > 0) "
          "floors instead of the run's rule", _wrap(rp, "_rshift_round_ref", floor_rule),
          _w_rope([[5, -9, 30, 7]], drop_bits=3)),
        M("residual.align_to_coarse", "§10 step 3", "the fine term is always rounded to the "
          "coarse exponent instead of the coarse term shifted to the fine one", _variant(
              rs, "_align_ref", mv.align_variant, to_coarse=True), _w_residual([[-3048]], 2, [[31254]], 24)),
        M("residual.fine_floor", "§10 step 4", "the fine term's rounding (when it does not fit) "
          "floors instead of the run's rule", _wrap(rs, "_rshift_round_ref", floor_rule),
          _w_residual([[25298]], -6, [[-16482]], 59)),
        M("head.input_at_a", "§13.1", "the LM head's input is quantized to the layers' A, "
          "ignoring head_a_bits (the head wired to the activation width of the layers)",
          _variant("intsim.llama", "head_in_bits", mv.head_in_bits_variant, use_a=True), _w_head(),
          graph=True),
        M("attention.gqa_modulo", "§14 QKᵀ", "query head h reads kv head h % Hkv instead of "
          "h // (H / Hkv), in QKᵀ and PV", _replace(at, "_kv_per_query_head_ref", _kv_modulo),
          lambda: qk_scores(_a([[[1, 2], [3, 4], [5, 6], [7, 8]]]), _a([[[1, -1], [2, 5]]]), REF)),
        M("attention.fold_floor", "§14 the fold", "the scale fold floors instead of the run's "
          "rule", _wrap(at, "_rshift_round_ref", floor_rule), fold_w),
        M("attention.fold_tie", "§14 the fold", "the scale fold breaks ties to even (half_up if "
          "the run is half_even)", _wrap(at, "_rshift_round_ref", tie_rule), fold_w),
        M("attention.fold_trunc", "§14 the fold", "the scale fold truncates toward zero",
          _wrap(at, "_rshift_round_ref", TRUNC), _w_fold([[-742684, 611606, -757203, 758369]],
                                                        [[231, 171, 162, 189]], [[15, 8, 20, 17]])),
        M("attention.fold_kref_masked", "§14 the fold", "the row's reference exponent is the "
          "minimum over all columns, masked ones included", _variant(
              at, "_fold_ref", mv.fold_variant, kref_all=True),
          _w_fold([[12345, -777, 3, -5]], [[201, 133, 255, 170]], [[3, 9, 11, 1]],
                  [[True, True, True, False]])),
        M("attention.p_at_a", "§14.2", "the probabilities into PV are requantized to A, "
          "ignoring pv_bits (a PV datapath whose probability port was sized for A-bit codes)",
          _variant("intsim.llama", "pv_in_bits", mv.pv_in_bits_variant, use_a=True),
          _w_attention_pv8(), graph=True),
        M("attention.pv_bound_at_a", "§14.2", "PV's int32 bound checked as S max|v|^2, the "
          "context limit of A-bit probabilities (2^31 - 1) // (2^A - 1)^2: with wider P a longer "
          "context than the accumulator holds is let through", _replace(at, "_pv_bound", _pv_bound_at_a),
          _w_pv_past_bound()),
    )


#: every mutant, in SPEC order
REGISTRY: tuple = _registry()


def select(patterns=None) -> list:
    """The mutants whose names match any of the shell-style ``patterns`` (all for None);
    an unknown pattern raises naming it."""
    if not patterns:
        return list(REGISTRY)
    out = []
    for p in patterns:
        got = [m for m in REGISTRY if fnmatchcase(m.name, p)]
        if not got:
            raise IntsimError(f"--only: no mutant matches {p!r} (intsim mutants --list names them)")
        out += [m for m in got if m not in out]
    return [m for m in REGISTRY if m in out]
