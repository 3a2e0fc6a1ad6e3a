"""Stress records of the fixed-point primitives (docs/SPEC.md sections 1.3 and 1.4):
``rshift_round`` and ``div_round`` on exact ties of every kind, ``dyadic_fit`` on its
rounding, normalization, carry, exponent-range refit and saturation, and ``isqrt`` at
perfect squares +-1 and at its largest input."""
from __future__ import annotations

from .. import oracle
from ..fixedpoint import CEIL
from .core import Case, arr, check, first_miss, others, rules

#: (x, s) pairs of rshift_round: ties with even and odd floors, both signs; no shift; the
#: last tie below 2^62; shifts at 62, 63 and far beyond (0, or -1 under floor)
SHIFTS = [(5, 1), (7, 1), (-5, 1), (-7, 1), (6, 1), (-1, 1), (1, 1), (3, 2), (-6, 2), (10, 2),
          (-10, 2), (12345, 0), (-12345, 0), (2 ** 61, 62), (-(2 ** 61), 62), (3 * 2 ** 59, 60),
          (2 ** 62 - 1, 62), (-(2 ** 62 - 1), 62), (2 ** 62 - 1, 63), (-(2 ** 62 - 1), 63),
          (-1, 63), (1, 63), (-5, 200), (0, 5)]
#: (a, b) pairs of div_round: ties both signs and parities, b = 1, the largest operands
DIVS = [(3, 2), (5, 2), (-3, 2), (-5, 2), (9, 6), (15, 6), (-9, 6), (-15, 6), (7, 3), (-7, 3),
        (2 ** 62 - 1, 2), (-(2 ** 62 - 1), 2), (2 ** 62 - 1, 2 ** 62 - 1), (-(2 ** 62 - 1), 1),
        (2 ** 61 + 1, 2 ** 62 - 2), (-(2 ** 61 + 1), 2 ** 62 - 2), (0, 7), (1, 2 ** 62 - 1)]


def _tie_witness(pairs, shift: bool):
    """Ties among ``pairs`` (x, s) / (a, b): of both signs and both floor parities."""
    def w(args):
        kinds = set()
        for a, b in pairs:
            d = (1 << b) if shift else b
            if shift and b > 62:
                continue
            if oracle.is_tie(a, d):
                kinds.add((a >= 0, (a // d) & 1))
        return check(len(kinds) >= 3, "ties of both signs and both floor parities")
    return w


def fit_events(num: int, den: int, m_bits: int, k_lo: int, k_hi: int) -> set:
    """What dyadic_fit meets on ``num / den`` (docs/SPEC.md 1.4), in Python ints: "zero",
    "normalize" (the floor quotient at the first k is below 2^(M-1) while a rounded one
    would reach it), "tie" (the mantissa quotient is exactly half-way), "carry" (it rounds
    up to 2^M), "kmax", "kmin" (the exponent leaves the range)."""
    if num == 0:
        return {"zero"}
    out = set()
    top = 1 << m_bits
    k = m_bits - 1 - (num.bit_length() - den.bit_length())
    if oracle.quot(num, den, k, "floor") < top >> 1:
        if oracle.quot(num, den, k, "half_up") >= top >> 1:
            out.add("normalize")
        k += 1
    if (oracle.is_tie(num << k, den) if k >= 0 else oracle.is_tie(num, den << -k)):
        out.add("tie")
    if oracle.quot(num, den, k, "half_up") >= top:
        out.add("carry")
        k -= 1
    if k > k_hi:
        out.add("kmax")
    if k < k_lo:
        out.add("kmin")
    return out


def _fit_pairs():
    """(num, den) of dyadic_fit at m_bits 8 and its default range: ties with even and odd
    floors (401/1 -> 200.5, 403/1 -> 201.5), a rounding carry (511/1 -> 255.5 -> 256), a
    floor quotient just below 2^7 that rounds up onto it (1277/10 -> 127.7: normalize on
    the floor), num = 0, the largest num and the largest den."""
    return [(401, 1), (403, 1), (511, 1), (1277, 10), (255 * 201, 255 * 2), (1, 1), (0, 5),
            (2 ** 61 - 1, 1), (1, 2 ** 53 - 1), (2 ** 61 - 1, 2 ** 53 - 1), (3, 2 ** 40)]


def _fit_witness(pairs, m_bits, k_lo, k_hi, want):
    def w(args):
        got = set().union(*(fit_events(n, d, m_bits, k_lo, k_hi) for n, d in pairs))
        return check(set(want) <= got, f"fit events {sorted(set(want) - got)}")
    return w


def cases() -> list:
    out = []
    for r in rules():
        xs, ss = zip(*SHIFTS)
        out.append(Case(f"rshift_round.{r}", "rshift_round",
                        f"SPEC §1.3 rounding right shift, tie rule {r}: exact ties of both signs and "
                        f"both floor parities; shifts 0, 62, 63 and 200 (s >= 63: 0, or -1 under floor); "
                        f"|x| = 2^62 - 1", ("rnd.shift", "rnd.shift.far", "rnd.bound"),
                        {"x": arr(xs), "s": arr(ss), "rounding": r}, _tie_witness(SHIFTS, True), others(r)))
        a, b = zip(*DIVS)
        out.append(Case(f"div_round.{r}", "div_round",
                        f"SPEC §1.3 rounding division, tie rule {r}: exact ties of both signs and both "
                        f"floor parities; b = 1; |a|, b up to 2^62 - 1 (the remainder form never "
                        f"forms 2a + b)", ("rnd.div", "rnd.bound"),
                        {"a": arr(a), "b": arr(b), "rounding": r}, _tie_witness(DIVS, False), others(r)))
    pairs = _fit_pairs()
    num, den = (arr(x) for x in zip(*pairs))
    for r in rules() + (CEIL,):
        out.append(Case(f"dyadic_fit.{r}", "dyadic_fit",
                        f"SPEC §1.4 dyadic fit steps 1-4 (m_bits 8), rounding {r}: mantissa ties with "
                        f"even and odd floors, a rounding carry to 2^8 (halved), normalization decided "
                        f"on the floor quotient (127.7 -> k + 1), num = 0, num = 2^61 - 1, "
                        f"den = 2^53 - 1", ("fit.round", "fit.carry", "fit.normalize", "fit.zero",
                                            "fit.bound"),
                        {"num": num, "den": den, "m_bits": 8, "k_range": (-128, 127), "rounding": r},
                        _fit_witness(pairs, 8, -128, 127, ("tie", "carry", "normalize", "zero")),
                        others(r, nonneg=True) if r != CEIL else ()))
    # exponent range: k below k_min saturates, k above k_max refits (ties there too, and a
    # refit that loses every bit); num = 0 takes k = 0 clamped into a range without 0
    rpairs = [(2 ** 60, 1), (255 * 2 ** 8, 1), (5 * 2 ** 32, 2 ** 40), (7 * 2 ** 32, 2 ** 40),
              (3, 2 ** 40), (2 ** 33 + 2 ** 32, 2 ** 40), (1, 1)]
    rn, rd = (arr(x) for x in zip(*rpairs))
    for r in rules():
        out.append(Case(f"dyadic_fit.range.{r}", "dyadic_fit",
                        f"SPEC §1.4 dyadic fit step 5, k_range [-8, 7], rounding {r}: k < k_min "
                        f"saturates (m = 2^8 - 1, reported), k > k_max refits at k_max (ties 2.5 and "
                        f"3.5 there, and a refit to m = 0)", ("fit.kmin", "fit.kmax", "fit.round"),
                        {"num": rn, "den": rd, "m_bits": 8, "k_range": (-8, 7), "rounding": r},
                        _fit_witness(rpairs, 8, -8, 7, ("kmin", "kmax")), others(r, nonneg=True)))
    out.append(Case("dyadic_fit.zero_outside", "dyadic_fit",
                    "SPEC §1.4 dyadic fit step 6: num = 0 gives m = 0 at k = 0 clamped into a range "
                    "without 0 ([3, 9] -> k = 3); a tiny quotient at k_max = -100 (den << -k beyond "
                    "int64: 0)", ("fit.zero", "fit.kmax"),
                    {"num": arr([0, 1, 0]), "den": arr([1, 2 ** 52, 9]), "m_bits": 8, "k_range": (3, 9),
                     "rounding": "half_up"}, None))
    for r in ("half_up", CEIL):
        out.append(Case(f"dyadic_fit.tiny.{r}", "dyadic_fit",
                        f"SPEC §1.4 dyadic fit step 5 at k_max = -100, rounding {r}: den << -k leaves "
                        f"int64, the quotient is below 1/2 (0; 1 under ceil)", ("fit.kmax",),
                        {"num": arr([1, 2 ** 40, 3]), "den": arr([2 ** 52, 2 ** 52 - 1, 1]), "m_bits": 8,
                         "k_range": (-128, -100), "rounding": r}, None))
    for mb, pr in ((2, [(5, 1), (7, 1), (3, 1), (13, 2)]), (16, [(2 * 65535 + 1, 1), (2 * 65534 + 1, 1),
                                                                  (2 ** 17 - 1, 1), (1, 3)]),
                   (28, [(2 ** 29 + 1, 1), (2 ** 29 + 3, 1), (2 ** 28 + 1, 1), (1, 3)])):
        n2, d2 = (arr(x) for x in zip(*pr))
        for r in rules():
            out.append(Case(f"dyadic_fit.m{mb}.{r}", "dyadic_fit",
                            f"SPEC §1.4 dyadic fit at m_bits {mb} (Spec's extremes; 28: the refit of "
                            f"SwiGLU's and attention's mantissa products), rounding {r}: ties and a carry",
                            ("fit.round", "fit.carry"),
                            {"num": n2, "den": d2, "m_bits": mb, "k_range": (-(2 ** 20), 2 ** 20),
                             "rounding": r}, _fit_witness(pr, mb, -(2 ** 20), 2 ** 20, ("tie",)),
                            others(r, nonneg=True)))
    sq = []
    for r0 in (1, 2, 3, 4, 255, 256, 65535, 65536, 2 ** 30, 2 ** 30 + 1, 2 ** 31 - 2, 2 ** 31 - 1):
        sq += [r0 * r0 - 1, r0 * r0, r0 * r0 + 1]
    sq = sorted({n for n in sq if 0 <= n <= 2 ** 62 - 1} | {0, 2 ** 62 - 2, 2 ** 62 - 1})
    out.append(Case("isqrt.squares", "isqrt",
                    "SPEC §1.4 integer square root: perfect squares r^2 and r^2 +- 1 (r up to 2^31 - 1), "
                    "0, and the largest inputs 2^62 - 2 and 2^62 - 1 = (2^31)^2 - 1",
                    ("isqrt.square", "isqrt.max"), {"n": arr(sq)},
                    lambda a: first_miss(check(2 ** 62 - 1 in a["n"].tolist(), "2^62 - 1"),
                                         check(oracle.isqrt(2 ** 62 - 1) == 2 ** 31 - 1, "isqrt(2^62-1)"))))
    return out
