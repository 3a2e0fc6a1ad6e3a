"""Rounding-tie analysis of a golden value: did the golden output element sit exactly on
a tie of its op's last rounding (so that a device rounding that tie the other way
differs by one LSB)?  Recomputed from the dumped inputs in Python integers by
intsim.oracle; every rule is named (intsim.fixedpoint's constants)."""
from __future__ import annotations

import numpy as np

from .. import oracle
from ..errors import IntsimError
from ..options import Spec
from ..softmax import RECIP_BITS, visibility
from .dump import read_value
from .ops import KINDS, rounding_of, spec_of


def _requant_tie(v: list, m_in: int, k_in: int, bits: int, symmetric: bool, spec: Spec,
                 m_out: int, k_out: int, col: int) -> str:
    """Whether code ``col`` of one requant_rows row sat exactly on a tie of its division
    (where tie rule ``spec.rounding`` decided it), recomputed in Python ints from the
    row's input (intsim.oracle: docs/SPEC.md section 3, steps 1-4)."""
    sc = oracle.requant_scale(min(v), max(v), m_in, k_in, bits, symmetric, spec)
    if sc.R == 0:
        return "no (all-zero row: codes 0)"
    if (sc.m, sc.k) != (m_out, k_out):
        return "not evaluated (the recomputed scale differs from the dumped one)"
    _, _, ties = oracle.requant_codes([v[col]], m_in, sc, spec.rounding)
    return "yes" if ties[0] else "no"


def _shift_tie(x: int, sh: int) -> str:
    """Whether ``x >> sh`` rounded (any tie rule) sat exactly on a tie."""
    if sh <= 0:
        return "no (no bits shifted off)"
    return "yes" if oracle.shift_tie(x, sh) else "no"


def _rotation_tie(y: list, b: int, col: int) -> str:
    """Whether element ``col`` of a hadamard_rows row (docs/SPEC.md 7.6) depends on a tie: it
    sums its block's pre-shifted inputs, so it did when one of them sat on a tie of y / 2^sh."""
    sh = max(0, max(abs(x) for x in y).bit_length() + b.bit_length() - 1 - oracle.ROT_OUT_BITS)
    if sh == 0:
        return "no (no pre-shift: the rotation is exact)"
    blk = y[col - col % b:col - col % b + b]
    return "yes (an input of its block sat on a tie of the pre-shift)" if any(
        oracle.shift_tie(x, sh) for x in blk) else "no"


def _dumped(d, man, op, role: str, arg):
    """The dumped value of argument ``arg`` among the op's ``role`` ("inputs" / "outputs")."""
    tensors = {t["name"]: t for t in man["tensors"]}
    for tn in op[role]:
        if tensors[tn]["arg"] == arg:
            return read_value(d, tensors[tn])
    raise KeyError(arg)


def _input(d, man, op, arg):
    return _dumped(d, man, op, "inputs", arg)


def _output(d, man, op, arg="out"):
    return _dumped(d, man, op, "outputs", arg)


def tie_status(d, man: dict, op: dict, t: dict, flat: int) -> str:
    """Whether the golden value at flat index ``flat`` of output ``t`` of ``op`` sat exactly
    on a tie of the op's last rounding ("yes" / "no (...)" / "not evaluated (...)")."""
    kind = op.get("kind", "?")
    try:
        if kind in ("rshift_round", "div_round"):          # stress suites' primitives
            shape = tuple(t["shape"])
            a, b = (np.broadcast_to(np.asarray(_input(d, man, op, n), dtype=np.int64), shape)
                    for n in (("x", "s") if kind == "rshift_round" else ("a", "b")))
            idx = np.unravel_index(flat, shape)
            if op["params"].get("rounding") in ("floor", "ceil"):
                return "no (a directed rounding has no tie)"
            if kind == "rshift_round":
                return "no (shift >= 63)" if int(b[idx]) >= 63 else _shift_tie(int(a[idx]), int(b[idx]))
            return "yes" if oracle.is_tie(int(a[idx]), int(b[idx])) else "no"
        spec = spec_of(man, op)
        rounding = rounding_of(kind, spec) if kind in KINDS else "?"
        if rounding == "exact":
            return "no (exact op: nothing is rounded)"
        if kind == "di_norm":
            return "no (codes are the input's; only the row scale is fitted)"
        if kind == "di_exp":
            return "no (the last step floors: no tie rule)"
        shape = tuple(t["shape"])
        idx = np.unravel_index(flat, shape)
        row, col = tuple(int(i) for i in idx[:-1]), int(idx[-1])
        out = _output(d, man, op)
        p = op["params"]
        if kind == "requant_rows":
            v = np.asarray(_input(d, man, op, "v"), dtype=np.int64)
            s = _input(d, man, op, "scale_in")
            m_in, k_in = (int(np.broadcast_to(a, shape[:-1])[row]) for a in (s.m, s.k))
            return _requant_tie([int(x) for x in v[row]], m_in, k_in, int(p["bits"]), bool(p["symmetric"]),
                                spec, int(out.scale.m[row]), int(out.scale.k[row]), col)
        if kind == "di_matmul":
            acc_op = next((o for o in man["ops"] if o["name"] == op["name"] + ".acc"), None)
            if acc_op is None:
                return "not evaluated (the dump has no .acc stage of this op)"
            P = _output(d, man, acc_op)
            return _requant_tie([int(x) for x in P.q[row]], int(P.scale.m[row]), int(P.scale.k[row]),
                                int(p["out_bits"]), bool(p["out_symmetric"]), spec,
                                int(out.scale.m[row]), int(out.scale.k[row]), col)
        if kind == "fold_scales":
            vals = _input(d, man, op, "vals")
            m = np.broadcast_to(_input(d, man, op, "m"), shape)
            k = np.broadcast_to(_input(d, man, op, "k"), shape)
            try:
                vis = np.broadcast_to(_input(d, man, op, "visible"), shape)
            except KeyError:
                vis = np.ones(shape, dtype=np.bool_)
            if not vis[idx]:
                return "no (masked column: 0, nothing rounded)"
            guard = int(p["guard"])
            kref = int(out.scale.k[row]) - guard
            return _shift_tie((int(vals[idx]) * int(m[idx])) << guard, int(k[idx]) - kref)
        if kind == "hadamard_rows":
            return _rotation_tie(np.asarray(_input(d, man, op, "y"), dtype=np.int64)[row].tolist(),
                                 int(p["block"]), col)
        if kind == "di_clipped_softmax":
            exp_op = next((o for o in man["ops"] if o["name"] == op["name"] + ".exp"), None)
            if exp_op is None:
                return "not evaluated (the dump has no .exp stage of this op)"
            e = _output(d, man, exp_op)
            try:
                mask = _input(d, man, op, "mask")
            except KeyError:
                mask = None
            vis = visibility(shape, mask, bool(p.get("causal", False)), int(p.get("q_offset", 0)))
            erow = [int(x) if v else 0 for x, v in zip(e[row], vis[row])]
            S = max(sum(erow), 1)
            F = p.get("p_frac_bits") or spec.softmax_p_frac or spec.softmax_p_out
            if int(out.q[idx]) == 2 ** spec.softmax_p_out - 1:
                return "not evaluated (saturated at the largest code)"
            if spec.softmax_div == "reciprocal":
                return _shift_tie(erow[col] * ((2 ** RECIP_BITS - 1) // S), RECIP_BITS - F)
            return "yes" if oracle.is_tie(erow[col] << F, S) else "no"
    except (KeyError, IntsimError, IndexError, ValueError) as e:
        return f"not evaluated ({type(e).__name__}: {e})"
    return f"not evaluated for {kind}"
