"""Stress records of DI-Norm and its norm weight (docs/SPEC.md section 8): exact ties of
the scale fit under each tie rule (rows whose square root is a designed integer), rows
where the integer square root's floor decides the scale (r and r + 1 fit differently, the
input is not a square), the per-row against the fixed pre-shift where they differ, zero
rows, the refit at k_max, and sumsq at its proven bound."""
from __future__ import annotations

import numpy as np

from .. import oracle
from ..norm import fixed_preshift, sqrt_c_const
from .core import Case, check, first_miss, others, qt, rules, spec

#: a row length whose sqrt constant n_C has the odd divisors 325 and 355 (both in
#: [2^8, 2^9): fit quotients 162.5 and 177.5, floors even and odd)
C_TIE = 13
D_TIES = (325, 355)


def squares_summing_to(s: int, n: int, top: int = 2 ** 16 - 1) -> list:
    """``n`` integers in [0, top] whose squares sum to ``s`` (greedy; raises if ``n`` is too
    short)."""
    out = []
    while s:
        a = min(oracle.isqrt(s), top)
        out.append(a)
        s -= a * a
        if len(out) > n:
            raise AssertionError("too few elements for the sum of squares")
    return out + [0] * (n - len(out))


def sumsq_for(r: int, C: int, fixed_p: int | None = None, upper: bool = False) -> int:
    """A sum of squares whose pre-shifted value ``sumsq << 2P`` lies in [r^2, (r + 1)^2) (so
    its isqrt is r), with P the per-row pre-shift (or ``fixed_p``); ``upper``: strictly in
    the upper half ((r + 1/2)^2, (r + 1)^2), not a square (ceil and nearest give r + 1)."""
    lo, hi = r * r, (r + 1) ** 2
    if upper:
        lo = r * r + r + 1
    for P in ([fixed_p] if fixed_p is not None else range(15, 6, -1)):
        step = 1 << (2 * P)
        s = -(-lo // step)
        if s * step < hi and s <= C * (2 ** 16 - 1) ** 2 and (
                fixed_p is not None or (62 - s.bit_length()) >> 1 == P):
            return s
    raise AssertionError(f"no sum of squares for r = {r}")


def norm_scale(C: int, sumsq: int, P: int, m_bits: int, rule: str) -> tuple:
    """DI-Norm's (m, k) of one row in Python ints (SPEC 8.2 steps 3-5), unclamped range."""
    n_c, p2 = sqrt_c_const(C)
    r = oracle.isqrt(sumsq << (2 * P))
    m, k, _ = oracle.dyadic_fit(n_c, r, m_bits, -(2 ** 20), 2 ** 20, rule)
    return m, k + p2 - P


def _row_p(sumsq: int) -> int:
    return (62 - sumsq.bit_length()) >> 1


def _tie_rows(C: int, fixed_p: int | None) -> list:
    """Sums of squares whose isqrt is r = 2 n_C 2^k / d for d in D_TIES: the fit quotient
    n_C 2^k / r is d/2, an exact tie."""
    n_c, _ = sqrt_c_const(C)
    rows = []
    for d in D_TIES:
        base = 2 * n_c // d
        k = 0
        while (base << k) < 2 ** 30:
            k += 1
        if fixed_p is not None:
            while (base << k) ** 2 >= 1 << (2 * fixed_p + 2 * 16 + C.bit_length() + 1):
                k -= 1
        rows.append(sumsq_for(base << k, C, fixed_p))
    return rows


def _norm_case(name, sums, C, sp, targets, sites, witness=None, distinct=(), bits=16):
    q = [squares_summing_to(s, C) for s in sums]
    return Case(name, "di_norm", targets, sites,
                {"x": qt(q, [0] * len(q), [1] * len(q), [0] * len(q), bits, False), "spec": sp}, witness, distinct)


def _tie_witness(C, fixed_p):
    def w(args):
        n_c, _ = sqrt_c_const(C)
        ok = []
        for row in args["x"].q.tolist():
            s = sum(v * v for v in row)
            P = fixed_p if fixed_p is not None else _row_p(s)
            r = oracle.isqrt(s << (2 * P))
            k = 8 - 1 - (n_c.bit_length() - r.bit_length())
            k += oracle.quot(n_c, r, k, "floor") < 128
            ok.append(oracle.is_tie(n_c << k, r) if k >= 0 else oracle.is_tie(n_c, r << -k))
        return check(all(ok), "fit ties in every row")
    return w


def _flip_rows(C: int, rule: str) -> list:
    """Sums of squares in the upper half of (r^2, (r + 1)^2), not squares, where the fit of
    n_C / r and of n_C / (r + 1) differ under ``rule``."""
    n_c, _ = sqrt_c_const(C)
    out = []
    # fit boundaries n_C 2^k / r = d / 2 (the nearest rules) or d (floor), in [2^7, 2^8)
    for d in ((301, 333, 471) if rule != "floor" else (151, 167, 235)):
        num = (2 * n_c) if rule != "floor" else n_c
        k = 0
        while (num << k) // d < 2 ** 30:
            k += 1
        r = (num << k) // d
        if (num << k) % d == 0:
            r -= 1
        out.append(sumsq_for(r, C, upper=True))
    return out


def _flip_witness(C, rule):
    def w(args):
        n_c, _ = sqrt_c_const(C)
        for row in args["x"].q.tolist():
            s = sum(v * v for v in row)
            n = s << (2 * _row_p(s))
            r = oracle.isqrt(n)
            if r * r == n or n - r * r <= r:
                return "an input in the upper half between squares"
            if oracle.dyadic_fit(n_c, r, 8, -128, 127, rule)[0] == oracle.dyadic_fit(n_c, r + 1, 8, -128, 127, rule)[0]:
                return "r and r + 1 fit to different mantissas"
        return None
    return w


def cases() -> list:
    out = []
    pf = fixed_preshift(C_TIE, 16)
    for r in rules():
        out.append(_norm_case(f"di_norm.fit_ties.row.{r}", _tie_rows(C_TIE, None), C_TIE, spec(rounding=r),
                              f"SPEC §8.2 step 5 (row pre-shift), tie rule {r}: C = {C_TIE}, n_C has the odd divisors "
                              f"325 and 355, and each row's sum of squares makes r = isqrt(sumsq << 2P) = "
                              f"2 n_C 2^k / d: the fit quotient is 162.5 or 177.5, an exact tie",
                              ("norm.fit.round", "norm.preshift.row"), _tie_witness(C_TIE, None), others(r, True)))
        out.append(_norm_case(f"di_norm.fit_ties.fixed.{r}", _tie_rows(C_TIE, pf), C_TIE,
                              spec(rounding=r, norm_preshift="fixed"),
                              f"SPEC §8.2 step 5 (fixed pre-shift P = {pf}), tie rule {r}: the same exact fit ties "
                              f"with r built at the fixed pre-shift", ("norm.fit.round", "norm.preshift.fixed"),
                              _tie_witness(C_TIE, pf), others(r, True)))
        out.append(_norm_case(f"di_norm.isqrt_floor.{r}", _flip_rows(C_TIE, r), C_TIE, spec(rounding=r),
                              f"SPEC §8.2 step 3, tie rule {r}: sums of squares whose pre-shifted value lies in the "
                              f"upper half between r^2 and (r + 1)^2 (not a square), where n_C / r and n_C / (r + 1) "
                              f"fit to different mantissas: the square root's floor reaches the scale",
                              ("norm.isqrt", "isqrt.square"), _flip_witness(C_TIE, r)))
    small = [1, 2, 3, 5, 7, 1000, 2 ** 20 + 1, 3 * 2 ** 31 + 7]
    for pre in ("row", "fixed"):
        out.append(_norm_case(f"di_norm.preshift.{pre}", small, 8, spec(norm_preshift=pre, m_bits=16),
                              f"SPEC §8.2 step 2 ({pre} pre-shift), m_bits 16: sums of squares from 1 to 2^32.6, "
                              f"where the per-row pre-shift keeps 31 bits of r and the fixed one (P = "
                              f"{fixed_preshift(8, 16)}) far fewer, so the fitted scales differ",
                              ("norm.preshift.row" if pre == "row" else "norm.preshift.fixed", "norm.isqrt"),
                              lambda a: check(any(norm_scale(8, s, _row_p(s), 16, "half_up") !=
                                                  norm_scale(8, s, fixed_preshift(8, 16), 16, "half_up")
                                                  for s in small), "row and fixed scales differ")))
    # zero rows, sumsq = 1, and a tiny scale refitted at k_max (k_bits 4: k <= 7)
    z = [0, 1, 4, 2 ** 33, 7 * (2 ** 16 - 1) ** 2]
    for pre in ("row", "fixed"):
        out.append(_norm_case(f"di_norm.range.{pre}", z, 8, spec(k_bits=4, overflow="saturate", norm_preshift=pre),
                              f"SPEC §8.4-8.5 ({pre} pre-shift), k_bits 4: an all-zero row (m = 0, k = 0), sumsq = 1, "
                              f"and rows whose scale sqrt(C / sumsq) needs k > k_max = 7 (refitted, mantissa bits "
                              f"lost, down to m = 0)", ("norm.zero", "norm.kmax", "fit.kmax")))
    C = 2 ** 16
    full = [[2 ** 16 - 1] * C, [0] * (C - 1) + [1]]
    out.append(Case("di_norm.bound", "di_norm",
                    "SPEC §8.2 step 1 bound: C = 2^16 channels of |q - zp| = 2^16 - 1: sumsq = 2^16 (2^16 - 1)^2 "
                    "< 2^48 (the proven bound), and a row with sumsq = 1",
                    ("norm.bound",), {"x": qt(full, [0, 0], [1, 1], [0, 0], 16, False), "spec": spec()},
                    lambda a: check(C * (2 ** 16 - 1) ** 2 < 2 ** 48, "bound")))
    # the norm weight: exact products at both signs of their bounds
    q = [[32767, -32767, 0, 1, -1, 32767], [-32767, 32767, 5, -5, 0, 0]]
    g = [32767, -32767, 32767, -1, 1, -32767]
    for gk in (0, 31):
        out.append(Case(f"norm_weight.bound.k{gk}", "norm_weight",
                        f"SPEC §8.7 norm weight, exponent {gk}: |q - zp| = 2^16 - 1 (zero point -32768 / 32768) "
                        f"times |g| = 2^15 - 1 at both signs: |y| < 2^31, exact",
                        ("norm_weight.bound",),
                        dict(x=qt(q, [-32768, 32768], [200, 255], [3, -9], 16, True), g=np.array(g, dtype=np.int16),
                             gk=gk), None))
    return out
