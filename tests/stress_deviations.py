"""Plausible hardware shortcuts as deviations of the NumPy reference, for checking that the
committed stress suite (golden/stress) notices each of them (tests/test_stress.py).

Each deviation is a list of (module, attribute, replacement) patches applied while a
suite is replayed with backend="reference"; the ops call their module's names at run
time, so a patch takes effect there only.  These are the test's own stand-ins for the
mutant registry of ``intsim mutants``; a suite "kills" a deviation when some record's
replayed output (or counters) differs, or the op refuses its dumped inputs."""
from __future__ import annotations

import contextlib
import importlib

import numpy as np

from intsim import fixedpoint as fx

R = {"floor": fx.RC_FLOOR, "half_up": fx.RC_HALF_UP, "half_even": fx.RC_HALF_EVEN,
     "half_away": fx.RC_HALF_AWAY, "ceil": fx.RC_CEIL}


@contextlib.contextmanager
def patched(patches):
    saved = []
    try:
        for mod, attr, new in patches:
            m = importlib.import_module(mod)
            if "[" in attr:                                  # an item of a module-level dict
                name, key = attr.rstrip("]").split("[")
                d = getattr(m, name)
                saved.append((d, key, d[key]))
                d[key] = new
                continue
            saved.append((m, attr, getattr(m, attr)))
            setattr(m, attr, new(getattr(m, attr)) if callable(new) and getattr(new, "wraps", False) else new)
        yield
    finally:
        for m, attr, old in reversed(saved):
            if isinstance(m, dict):
                m[attr] = old
            else:
                setattr(m, attr, old)


def first_kill(suite_dir, name: str, model=None):
    """The first op of the suite whose replay under deviation ``name`` differs from the
    dump, as "op: differs", or "refused: why" when an op refuses its dumped inputs; None
    when the deviation survives."""
    from intsim.errors import IntsimError
    from intsim.golden import replay
    with patched(DEVIATIONS[name]):
        try:
            r = replay(suite_dir, model, backend="reference", stop_at_difference=True)
        except (IntsimError, ZeroDivisionError, OverflowError) as e:
            return f"refused: {str(e)[:80]}"
    bad = [e["name"] for e in r["ops"] if not e["identical"]]
    return f"{bad[0]}: differs" if bad else None


def wraps(f):
    f.wraps = True
    return f


def force_code(code_index: int, rule: str):
    """Wrap a primitive taking the rounding code as argument ``code_index`` so that it uses
    ``rule`` instead of the run's (the directed ceil of the requantizer's fit stays)."""
    @wraps
    def make(orig):
        def f(*a):
            a = list(a)
            if a[code_index] != fx.RC_CEIL:
                a[code_index] = R[rule]
            return orig(*a)
        return f
    return make


# ------------------------------------------------------------------ replacements

_ISQRT = fx._isqrt_ref


def _isqrt_ceil(n):
    r = _ISQRT(n)
    return np.where(r * r < n, r + 1, r)


def _isqrt_nearest(n):
    r = _ISQRT(n)
    return np.where(n - r * r > r, r + 1, r)          # (r + 1/2)^2 = r^2 + r + 1/4


def _exp_unit_mf_exact(m, k, code):
    import intsim.exp as ex
    m = np.asarray(m, dtype=np.int64)
    k = np.asarray(k, dtype=np.int64)
    mf = np.maximum((m * ex.LOG2E_Q4) >> 4, 1)
    j = np.maximum(np.int64(0), k - (ex.T_BITS - 1) - fx.bit_length_ref(mf))
    kk = k - j
    pos = kk > 0
    num = np.left_shift(np.int64(1), np.where(pos, kk, 0))
    T = np.where(pos, np.maximum(fx._div_round_ref(num, mf, code), 1), 1)
    return T.astype(np.int64), j.astype(np.int64)


@wraps
def _fit_sat_top(orig):
    def f(num, den, m_bits, k_lo, k_hi, code):
        m, k, sat = orig(num, den, m_bits, k_lo, k_hi, code)
        return np.where(sat, np.int64(1) << np.int64(m_bits), m), k, sat
    return f


@wraps
def _fit_no_kmax_refit(orig):
    def f(num, den, m_bits, k_lo, k_hi, code):
        return orig(num, den, m_bits, k_lo, 2 ** 20, code)
    return f


@wraps
def _requant_fit_rounds(orig):
    """The fitted mode's scale fit rounds with the run's rule instead of up."""
    def f(num, den, m_bits, k_lo, k_hi, code):
        return orig(num, den, m_bits, k_lo, k_hi, fx.RC_HALF_UP if code == fx.RC_CEIL else code)
    return f


class _NoClip:
    """np stand-in for one module whose clip does nothing (the code clamp removed)."""
    def __getattr__(self, a):
        return (lambda x, lo, hi: x) if a == "clip" else getattr(np, a)


class _ClipFloor0:
    """np stand-in whose clip has a lower bound of 0 (softmax's C >= 1 clamp removed)."""
    def __getattr__(self, a):
        return (lambda x, lo, hi: np.clip(x, 0, hi)) if a == "clip" else getattr(np, a)


@wraps
def _requant_range_codes(orig):
    def f(v, m_in, k_in, bits, symmetric, m_bits, k_lo, k_hi, code, fitted):
        q, zp, m, k, n = orig(v, m_in, k_in, bits, symmetric, m_bits, k_lo, k_hi, code, False)
        if fitted:
            m, k = orig(v, m_in, k_in, bits, symmetric, m_bits, k_lo, k_hi, code, True)[2:4]
        return q, zp, m, k, n
    return f


@wraps
def _softmax_force_div(orig):
    def f(xq, vis, mr, kr, F, p_max, recip, code):
        return orig(xq, vis, mr, kr, F, p_max, not recip, code)
    return f


@wraps
def _softmax_no_pmax(orig):
    def f(xq, vis, mr, kr, F, p_max, recip, code):
        return orig(xq, vis, mr, kr, F, 1 << 40, recip, code)
    return f


@wraps
def _clip_off(orig):
    def f(c, m, k, code):
        return np.full(np.shape(m), 2 ** 61, dtype=np.int64)
    return f


@wraps
def _norm_fixed(orig):
    def f(q, zp, n_c, p2, p_fixed, m_bits, k_lo, k_hi, code):
        from intsim.norm import fixed_preshift
        return orig(q, zp, n_c, p2, fixed_preshift(q.shape[-1], 16) if p_fixed < 0 else p_fixed,
                    m_bits, k_lo, k_hi, code)
    return f


@wraps
def _norm_row(orig):
    def f(q, zp, n_c, p2, p_fixed, m_bits, k_lo, k_hi, code):
        return orig(q, zp, n_c, p2, -1, m_bits, k_lo, k_hi, code)
    return f


@wraps
def _swiglu_frame(orig):
    def f(z, m1, k1, B, rowmax, code):
        return orig(z, m1, k1, B, not rowmax, code)
    return f


@wraps
def _fold_all_cols(orig):
    def f(v, m, k, vis, guard, code):
        out, kref = orig(v, m, k, np.ones_like(vis), guard, code)
        return np.where(vis, out, 0), kref
    return f


@wraps
def _mask_ignored(orig):
    def f(x, vis, m, k, c, code):
        return orig(x, np.ones_like(vis), m, k, c, code)
    return f


def _gqa_modulo(qc, kc, backend="numba"):
    H, Hkv = qc.shape[1], kc.shape[1]
    kx = kc.astype(np.int64)[:, np.arange(H) % Hkv, :]
    return np.einsum("ihd,jhd->hij", qc.astype(np.int64), kx)


def _argmax_last(logits, backend="numba"):
    V = logits.shape[-1]
    return (V - 1 - np.argmax(logits[..., ::-1], axis=-1)).astype(np.int64)


def _fit_floor_rule(num, den, m_bits=8, k_range=(-128, 127), rounding="half_up", backend="numba"):
    return fx.dyadic_fit(num, den, m_bits, k_range, "floor", backend)


DEVIATIONS = {
    # DI-Exp
    "exp.no_T_cap": [("intsim.exp", "T_BITS", 62)],
    "exp.mf_exact_multiply": [("intsim.exp", "_exp_unit_ref", _exp_unit_mf_exact),
                              ("intsim.softmax", "_exp_unit_ref", _exp_unit_mf_exact),
                              ("intsim.swiglu", "_exp_unit_ref", _exp_unit_mf_exact)],
    "exp.T_floor": [("intsim.exp", "_div_round_ref", lambda a, b, c: fx._div_round_ref(a, b, fx.RC_FLOOR))],
    "exp.xshift_half_up": [("intsim.exp", "_rshift_round_ref", force_code(2, "half_up"))],
    # requantizer
    "requant.preshift_31": [("intsim.requant", "PRE_BITS", 31)],
    "requant.preshift_none": [("intsim.requant", "PRE_BITS", 62)],
    "requant.fit_rounds_not_ceil": [("intsim.requant", "_fit_ref", _requant_fit_rounds)],
    "requant.range_codes_in_fitted": [("intsim.requant", "_requant_ref", _requant_range_codes)],
    "requant.no_code_clamp": [("intsim.requant", "np", _NoClip())],
    "requant.codes_half_up": [("intsim.requant", "_div_round_ref", force_code(2, "half_up"))],
    "requant.codes_half_even": [("intsim.requant", "_div_round_ref", force_code(2, "half_even"))],
    "requant.codes_floor": [("intsim.requant", "_div_round_ref", force_code(2, "floor"))],
    "fit.sat_m_top": [("intsim.requant", "_fit_ref", _fit_sat_top)],
    "fit.no_kmax_refit": [("intsim.requant", "_fit_ref", _fit_no_kmax_refit),
                          ("intsim.norm", "_fit_ref", _fit_no_kmax_refit)],
    # softmax
    "softmax.divide_for_reciprocal": [("intsim.softmax", "_exp_norm_ref", _softmax_force_div)],
    "softmax.no_p_clamp": [("intsim.softmax", "_exp_norm_ref", _softmax_no_pmax)],
    "softmax.no_clip": [("intsim.softmax", "_clip_threshold_ref", _clip_off)],
    "softmax.clip_min_0": [("intsim.softmax", "np", _ClipFloor0())],
    "softmax.mask_in_max": [("intsim.softmax", "_center_clip_ref", _mask_ignored)],
    "softmax.p_half_up": [("intsim.softmax", "_rshift_round_ref", force_code(2, "half_up")),
                          ("intsim.softmax", "_div_round_ref", force_code(2, "half_up"))],
    "softmax.p_floor": [("intsim.softmax", "_rshift_round_ref", force_code(2, "floor")),
                        ("intsim.softmax", "_div_round_ref", force_code(2, "floor"))],
    # norm, isqrt
    "isqrt.ceil": [("intsim.norm", "_isqrt_ref", _isqrt_ceil), ("intsim.fixedpoint", "_isqrt_ref", _isqrt_ceil)],
    "isqrt.nearest": [("intsim.norm", "_isqrt_ref", _isqrt_nearest),
                      ("intsim.fixedpoint", "_isqrt_ref", _isqrt_nearest)],
    "norm.fixed_preshift": [("intsim.norm", "_di_norm_ref", _norm_fixed)],
    "norm.row_preshift": [("intsim.norm", "_di_norm_ref", _norm_row)],
    "norm.fit_floor": [("intsim.norm", "_fit_ref", force_code(5, "floor"))],
    "norm.fit_half_up": [("intsim.norm", "_fit_ref", force_code(5, "half_up"))],
    # SwiGLU
    "swiglu.other_frame": [("intsim.swiglu", "_sigmoid_ref", _swiglu_frame)],
    "swiglu.sigmoid_floor": [("intsim.swiglu", "_div_round_ref", force_code(2, "floor"))],
    "swiglu.sigmoid_half_up": [("intsim.swiglu", "_div_round_ref", force_code(2, "half_up"))],
    "swiglu.refit_floor": [("intsim.swiglu", "_fit_ref", force_code(5, "floor"))],
    # residual, rope, folds, attention
    "residual.fine_floor": [("intsim.residual", "_rshift_round_ref", force_code(2, "floor"))],
    "residual.fine_half_up": [("intsim.residual", "_rshift_round_ref", force_code(2, "half_up"))],
    "rope.drop_floor": [("intsim.rope", "_rshift_round_ref", force_code(2, "floor"))],
    "rope.drop_half_up": [("intsim.rope", "_rshift_round_ref", force_code(2, "half_up"))],
    "fold.floor": [("intsim.attention", "_rshift_round_ref", force_code(2, "floor"))],
    "fold.half_up": [("intsim.attention", "_rshift_round_ref", force_code(2, "half_up"))],
    "fold.masked_in_kref": [("intsim.attention", "_fold_ref", _fold_all_cols)],
    "attention.gqa_modulo": [("intsim.golden.ops", "KINDS[qk_scores]", _gqa_modulo)],
    "softmax.recip_half_even": [("intsim.softmax", "_rshift_round_ref", force_code(2, "half_even"))],
    "head.argmax_last_index": [("intsim.golden.ops", "KINDS[argmax]", _argmax_last)],
    "attention.mul_scales_floor": [("intsim.llama", "dyadic_fit", _fit_floor_rule)],
    # primitives
    "prim.shift_half_up": [("intsim.fixedpoint", "_rshift_round_ref", force_code(2, "half_up"))],
    "prim.div_floor": [("intsim.fixedpoint", "_div_round_ref", force_code(2, "floor"))],
}
