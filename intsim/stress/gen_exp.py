"""Stress records of DI-Exp (docs/SPEC.md section 5): the T cap (normalization j on both
sides of 0, and far beyond: j >= 63) with exact ties of the normalization shift that
reach the output under each tie rule, the log2(e) shift-add's floors, T's rounding and
its clamp at 1, the floor steps 2-5, q >= 63, and the input bounds."""
from __future__ import annotations

import numpy as np

from .. import oracle
from ..exp import di_exp
from .core import Case, arr, check, dy, first_miss, others, rules, spec

_RULE_PAIRS = [(a, b) for i, a in enumerate(("floor", "half_up", "half_even", "half_away"))
               for b in ("floor", "half_up", "half_even", "half_away")[i + 1:]]


def mf(m: int) -> int:
    """DI-Exp step 0a in Python ints: m + (m >> 1) - (m >> 4)."""
    return m + (m >> 1) - (m >> 4)


def unit(m: int, k: int, rule: str) -> tuple:
    """(T, j) of DI-Exp steps 0b-1 in Python ints (docs/SPEC.md 5.2)."""
    f = mf(m)
    j = max(0, k - 29 - f.bit_length())
    kk = k - j
    return (max(1, oracle.rnd(1 << kk, f, rule)) if kk > 0 else 1), j


def exp_py(x: int, m: int, k: int, rule: str) -> int:
    """DI-Exp's output for one x <= 0 in Python ints (docs/SPEC.md 5.2 steps 0-5)."""
    T, j = unit(m, k, rule)
    xs = oracle.rshift(x, j, rule) if j else x
    q = (-xs) // T
    e = ((xs + q * T) >> 1) + T
    return 0 if q >= 63 else e >> q


def pick_distinguishing(cands: list, m: int, k: int, want: int = 6) -> list:
    """From candidate inputs ``cands`` (x <= 0) of one row scale, a few whose DI-Exp output
    differs between tie rules, covering every pair of rules that any candidate separates
    (a search over designed candidates with the reference; the tie itself is the
    witness's business)."""
    outs = {r: di_exp(arr([cands]), dy([m], [k]), spec(rounding=r), "reference")[0][0].tolist()
            for r in rules()}
    chosen, covered = [], set()
    for i, x in enumerate(cands):
        pairs = {p for p in _RULE_PAIRS if outs[p[0]][i] != outs[p[1]][i]} - covered
        if pairs:
            chosen.append(x)
            covered |= pairs
        if len(chosen) >= want:
            break
    return chosen


def odd_unit(m0: int, j: int) -> tuple:
    """The first scale ``(m, k)`` with m >= m0 whose normalization is ``j`` and whose T is
    odd (an odd T lets a tie of x / 2^j reach the output through r >> 1 at q = 1 under
    every pair of rules)."""
    m = m0
    while True:
        k = 29 + mf(m).bit_length() + j
        T, jj = unit(m, k, "half_up")
        if jj == j and T % 2 and unit(m, k, "floor")[0] == T:
            return m, k
        m += 1


def _tcap_rows():
    """Row scales around the T cap and tie candidates of their normalization shift."""
    rows, scales = [], []
    for m, k in ((200, 29 + 8), (200, 29 + 9), odd_unit(201, 1), odd_unit(255, 3), odd_unit(129, 23), (3, 35)):
        T, j = unit(m, k, "half_up")
        if j == 0:
            cands = [0, -1, -2, -3, -T, -T - 1, -2 * T + 1, -5 * T - 3]
        else:
            h = 1 << (j - 1)
            base = [-(2 * t + 1) * h for t in range(1, 40)]                      # exact ties of x / 2^j
            base += [-(2 * t + 1) * h - u * (T << j) for t in range(0, 80, 7) for u in (1, 2)]
            base = [x for x in base if x >= -(2 ** 62 - 1)]
            cands = pick_distinguishing(base, m, k) + [-(T << j), -(3 << j) - 1, 0]
        rows.append(cands)
        scales.append((m, k))
    n = max(len(r) for r in rows)
    rows = [r + [0] * (n - len(r)) for r in rows]
    return rows, scales


def _tcap_witness(args):
    m, k = args["scale"].m.tolist(), args["scale"].k.tolist()
    js = [unit(mi, ki, "half_up")[1] for mi, ki in zip(m, k)]
    ties = [any(oracle.shift_tie(-x, j) for x in row) for row, j in zip(args["x"].tolist(), js) if j > 0]
    Ts = [unit(mi, ki, "half_up")[0] for mi, ki in zip(m, k)]
    return first_miss(check(0 in js and 1 in js and max(js) > 1, f"j = 0, 1 and more: {js}"),
                      check(all(ties), "exact ties of x / 2^j in every normalized row"),
                      check(max(Ts) <= 2 ** 30 and min(T for T, j in zip(Ts, js) if j) >= 2 ** 29, "T in [2^29, 2^30]"))


def cases() -> list:
    out = []
    rows, scales = _tcap_rows()
    sm, sk = zip(*scales)
    for r in rules():
        out.append(Case(f"di_exp.tcap.{r}", "di_exp",
                        f"SPEC §5.2 steps 0b-0c (the T cap), tie rule {r}: row scales with k - 29 - bitlen(m_f) = "
                        f"-1, 0 (T just below the cap), 1, 3 and 23 (surplus bits of x dropped by a rounding "
                        f"shift, T in [2^29, 2^30]); inputs on exact ties of x / 2^j chosen so that the rounded "
                        f"x' reaches the output", ("exp.tcap", "exp.xshift"),
                        {"x": arr(rows), "scale": dy(sm, sk), "spec": spec(rounding=r)}, _tcap_witness,
                        others(r)))
    # the shift-add m_f: odd mantissas and ones whose >> 1 and >> 4 both floor, m = 1 and 2^31 - 1
    ms = [1, 15, 17, 31, 129, 200, 255, 2 ** 15 - 1, 2 ** 31 - 1]
    ks = [3, 8, 9, 10, 14, 14, 15, 22, 38]
    xs = [[0, -1, -2, -5, -17, -100, -1000, -12345]] * len(ms)
    out.append(Case("di_exp.mf", "di_exp",
                    "SPEC §5.2 step 0a: m_f = m + (m >> 1) - (m >> 4) for m whose shifts floor (15, 17, 31, 255, "
                    "2^15 - 1, 2^31 - 1: m_f differs from floor(23 m / 16) or from an exact log2(e)), and m = 1",
                    ("exp.mf", "exp.bound"), {"x": arr(xs), "scale": dy(ms, ks), "spec": spec()},
                    lambda a: check(any(mf(m) != (23 * m) >> 4 for m in ms), "a shift-add floor")))
    # T's rounding (fractions above and below 1/2), its clamp at 1, and k <= 0
    tm = [3, 5, 22, 41, 200, 255, 130, 7]
    tk = [1, 1, 6, 9, 12, 15, -3, 4]
    tx = [[0, -1, -2, -3, -4, -7, -100, -101]] * len(tm)
    for r in rules():
        out.append(Case(f"di_exp.unit.{r}", "di_exp",
                        f"SPEC §5.2 step 1, tie rule {r}: T = max(1, rnd(2^k' / m_f)) with fractions above and "
                        f"below 1/2 (floor and nearest differ), 2^k'/m_f < 1 (T clamped to 1; 0.4 rounds to 0 "
                        f"under every rule), k' <= 0, and m_f = 32 (T exactly 2^(k-5))",
                        ("exp.T.round", "exp.T.min"), {"x": arr(tx), "scale": dy(tm, tk), "spec": spec(rounding=r)},
                        lambda a: check({unit(m, k, "floor")[0] != unit(m, k, "half_up")[0] for m, k in
                                         zip(tm, tk)} == {True, False}, "T rounded both ways"),
                        ("floor",) if r != "floor" else ("half_up",)))
    # steps 2-5: floor division, r >> 1 of odd r, e >> q, q = 62, 63, 64 and beyond
    T0 = unit(201, 20, "half_up")[0]
    fx = [0, -1, -2, -T0 + 1, -T0, -T0 - 1, -2 * T0 + 1, -2 * T0, -3 * T0 - 7, -10 * T0 - 1, -30 * T0, -31 * T0 + 1,
          -62 * T0, -63 * T0 + 1, -63 * T0, -64 * T0, -(2 ** 62 - 1)]
    one = [0, -1, -2, -30, -31, -62, -63, -64, -65, -127, -128, -200, -(2 ** 40), -(2 ** 62 - 1), 0, 0, 0]
    out.append(Case("di_exp.steps", "di_exp",
                    f"SPEC §5.2 steps 2-5 (floor): x at multiples of T = {T0} and one off (q and r = x' + qT), odd r "
                    f"(r >> 1 floors), q = 62, 63, 64 and beyond (out = 0 for q >= 63); a row with T = 1 "
                    f"(q = -x); x = -(2^62 - 1)", ("exp.floor", "exp.q63", "exp.bound"),
                    {"x": arr([fx, one]), "scale": dy([201, 300], [20, -5]), "spec": spec()},
                    lambda a: check(unit(300, -5, "half_up")[0] == 1, "T = 1 row")))
    bx = [[0, -1, -(2 ** 62 - 1), -(2 ** 61), -12345678901, -3]] * 4
    for r in rules():
        out.append(Case(f"di_exp.bounds.{r}", "di_exp",
                        f"SPEC §5.1 bounds, tie rule {r}: m = 2^31 - 1 and m = 1, k = 2^20 (j >= 63: x' = "
                        f"rnd(x / 2^j) is 0 under the nearest rules, -1 under floor) and k = -2^20 (T = 1), "
                        f"|x| = 2^62 - 1", ("exp.bound", "exp.tcap", "rnd.shift.far"),
                        {"x": arr(bx), "scale": dy([2 ** 31 - 1, 1, 2 ** 31 - 1, 7], [2 ** 20, 2 ** 20, -(2 ** 20), 62]),
                         "spec": spec(rounding=r)},
                        lambda a: check(unit(1, 2 ** 20, "floor")[1] >= 63, "j >= 63"),
                        ("floor",) if r != "floor" else ("half_up",)))
    return out
