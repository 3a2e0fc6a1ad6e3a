"""The Python-integer oracle: intsim's fixed-point arithmetic restated in exact integers.

One place for the recomputes that must not depend on int64: the overflow report
(intsim.overflow) recomputes op internals of any magnitude with these functions, and
the golden tie analysis (intsim.golden.ties) asks which element of an op output sat
exactly on a rounding tie.  Arguments are Python ints (unbounded); every rounding names
its tie rule with the constants of intsim.fixedpoint (``FLOOR``, ``HALF_UP``,
``HALF_EVEN``, ``HALF_AWAY``, and the directed ``CEIL`` of the requantizer's scale fit).

Inside the bounds of the int64 references (``intsim.fixedpoint``: ``div_round``,
``rshift_round``, ``dyadic_fit``, ``isqrt``; ``intsim.requant.requant_rows``) each function
equals its reference bit for bit (tests/test_oracle.py); the NumPy references and the
Numba kernels remain the executable spec (docs/SPEC.md sections 1 and 3).
"""
from __future__ import annotations

from dataclasses import dataclass

from .errors import IntsimError
from .fixedpoint import CEIL, FLOOR, HALF_AWAY, HALF_EVEN, HALF_UP
from .hadamard import ROT_OUT_BITS
from .requant import PRE_BITS

#: every rule :func:`rnd` knows: the run's tie rules and the directed ceil
RULES = (FLOOR, HALF_UP, HALF_EVEN, HALF_AWAY, CEIL)
_NEAREST = (HALF_UP, HALF_EVEN, HALF_AWAY)


# ------------------------------------------------------------------ rounding

def is_tie(a: int, b: int) -> bool:
    """Whether ``a / b`` (b >= 1) lies exactly halfway between two integers (``2r == b``
    for the floor remainder r): the only quotients the nearest tie rules disagree on."""
    return 2 * (a % b) == b


def rnd(a: int, b: int, rule: str) -> int:
    """``a / b`` (b >= 1) rounded by ``rule``: ``FLOOR`` (toward -inf), ``CEIL`` (toward
    +inf), or to nearest with ties ``HALF_UP`` (toward +inf), ``HALF_EVEN`` (to the even
    neighbour), ``HALF_AWAY`` (away from zero).  The floor quotient and remainder decide,
    as in ``intsim.fixedpoint.div_round``."""
    q, r = divmod(a, b)
    if rule == FLOOR:
        return q
    if rule == CEIL:
        return q + (r > 0)
    if rule not in _NEAREST:
        raise IntsimError(f"rounding: unknown rule {rule!r}; choose from {', '.join(RULES)}")
    if 2 * r != b:
        return q + (2 * r > b)
    if rule == HALF_UP:
        return q + 1
    if rule == HALF_EVEN:
        return q + (q & 1)
    return q + (a >= 0)                                  # HALF_AWAY


def rshift(x: int, s: int, rule: str) -> int:
    """``x / 2^s`` (s >= 0) rounded by ``rule`` (:func:`rnd`); s = 0 returns x."""
    return rnd(x, 1 << s, rule)


def shift_tie(x: int, s: int) -> bool:
    """Whether ``x / 2^s`` sat exactly on a tie; a shift by s <= 0 drops no bits (False)."""
    return s > 0 and is_tie(x, 1 << s)


def quot(num: int, den: int, k: int, rule: str) -> int:
    """``num * 2^k / den`` rounded by ``rule``: ``num << k`` for k >= 0, else ``den << -k``."""
    return rnd(num << k, den, rule) if k >= 0 else rnd(num, den << -k, rule)


# ------------------------------------------------------------------ integer sqrt

def isqrt(n: int) -> int:
    """``floor(sqrt(n))`` for an integer n >= 0 (exact; no tie to name): Newton's
    iteration from above, integer only (the float scan keeps ``math`` out of intsim)."""
    if n < 2:
        return n
    x = 1 << ((n.bit_length() + 1) >> 1)
    while True:
        y = (x + n // x) >> 1
        if y >= x:
            return x
        x = y


# ------------------------------------------------------------------ dyadic fit

def fit_unclamped(num: int, den: int, m_bits: int, rule: str) -> tuple[int, int]:
    """``(m, k)`` of ``intsim.fixedpoint.dyadic_fit`` for ``num / den`` (num, den >= 1)
    before its exponent range clamp (docs/SPEC.md 1.4 steps 1-4): k from the bit
    lengths, normalized on the FLOOR quotient, ``m = quot(k)`` with tie rule ``rule``,
    and a rounding carry to ``2^m_bits`` halves m."""
    k = m_bits - 1 - (num.bit_length() - den.bit_length())
    if quot(num, den, k, FLOOR) < 1 << (m_bits - 1):
        k += 1
    m = quot(num, den, k, rule)
    if m >= 1 << m_bits:
        m, k = m >> 1, k - 1
    return m, k


def fit_exponent(num: int, den: int, m_bits: int, rule: str) -> int:
    """The exponent ``k`` that dyadic_fit gives ``num / den`` before its range clamp.
    ``num >= 1``, ``den >= 1``."""
    return fit_unclamped(num, den, m_bits, rule)[1]


def _fit_clamp(num: int, den: int, m: int, k: int, m_bits: int, k_lo: int, k_hi: int,
               rule: str) -> tuple[int, int, bool]:
    """The range clamp of dyadic_fit: a k above ``k_hi`` refits m at k_hi (tie rule
    ``rule``), a k below ``k_lo`` saturates m at ``2^m_bits - 1``."""
    if k > k_hi:
        return quot(num, den, k_hi, rule), k_hi, False
    if k < k_lo:
        return (1 << m_bits) - 1, k_lo, True
    return m, k, False


def dyadic_fit(num: int, den: int, m_bits: int, k_lo: int, k_hi: int,
               rule: str) -> tuple[int, int, bool]:
    """``(m, k, saturated)`` of ``intsim.fixedpoint.dyadic_fit(num, den, m_bits, (k_lo,
    k_hi), rule)``: :func:`fit_unclamped`, then the range clamp.  ``num == 0`` gives
    m = 0 at k = 0 clamped into the range.  ``num >= 0``, ``den >= 1``."""
    if num == 0:
        return 0, min(max(0, k_lo), k_hi), False
    m, k = fit_unclamped(num, den, m_bits, rule)
    return _fit_clamp(num, den, m, k, m_bits, k_lo, k_hi, rule)


# ------------------------------------------------------------------ the requantizer

def code_range(bits: int, symmetric: bool) -> int:
    """``Q``: the largest code magnitude of ``bits``-wide codes."""
    return (1 << (bits - 1)) - 1 if symmetric else (1 << bits) - 1


@dataclass(frozen=True)
class RequantScale:
    """One row of ``requant_rows`` up to its scale (docs/SPEC.md section 3, steps 1, 2, 4)."""
    Q: int                 # code range
    symmetric: bool
    sh: int                # floor pre-shift of the row
    lo: int                # lower end of the pre-shifted range (0 when symmetric)
    R: int                 # pre-shifted range R' (0: a zero row)
    m: int                 # fitted mantissa (0: zero row, m_in = 0, or refitted to 0)
    e: int                 # the fit's exponent, relative: k = e + k_in - sh
    k: int                 # output exponent, inside spec.k_range
    sat: bool              # the exponent fell below k_min: m saturated
    k_need: int | None     # output exponent before the range clamp (None when m_in * R' = 0)
    by_scale: bool         # codes divide by the fitted scale (fitted mode), not by the range


def requant_scale(vmin: int, vmax: int, m_in: int, k_in: int, bits: int, symmetric: bool,
                  spec) -> RequantScale:
    """The scale ``requant_rows`` fits to a row with extremes ``vmin``, ``vmax`` and input
    scale ``m_in * 2^-k_in``.  The fit's tie rule is ``CEIL`` in "fitted" mode (codes
    never exceed Q), ``spec.rounding`` in "range" mode; the pre-shift floors (a floor
    shift is monotone, so the shifted extremes are the extremes' shifts)."""
    Q = code_range(bits, symmetric)
    R = max(abs(vmin), abs(vmax)) if symmetric else max(vmax, 0) - min(vmin, 0)
    sh = max(R.bit_length() - PRE_BITS, 0)
    lo_s, hi_s = vmin >> sh, vmax >> sh
    if symmetric:
        lo, Rs = 0, max(abs(lo_s), abs(hi_s))
    else:
        lo = min(lo_s, 0)
        Rs = max(hi_s, 0) - lo
    fitted = spec.requant_mode == "fitted"
    rule = CEIL if fitted else spec.rounding
    k_lo, k_hi = spec.k_range
    num = m_in * Rs
    if num == 0:
        m, e, sat, k_need = 0, min(max(0, k_lo - k_in + sh), k_hi - k_in + sh), False, None
    else:
        m0, k0 = fit_unclamped(num, Q, spec.m_bits, rule)
        k_need = k0 + k_in - sh
        m, e, sat = _fit_clamp(num, Q, m0, k0, spec.m_bits, k_lo - k_in + sh, k_hi - k_in + sh, rule)
    k = min(max(0, k_lo), k_hi) if m == 0 else e + k_in - sh
    by_scale = fitted and not sat and m > 0 and m.bit_length() - min(e, 0) <= 62
    return RequantScale(Q, symmetric, sh, lo, Rs, m, e, k, sat, k_need, by_scale)


def requant_codes(v, m_in: int, sc: RequantScale, rule: str) -> tuple[int, list, list]:
    """``(zp, codes, ties)`` of one row ``v`` (Python ints) against its scale ``sc``
    (:func:`requant_scale`), every division rounded with tie rule ``rule``:
    ``code = clamp(rnd(v' * a / d) + zp, -Q or 0, Q)`` with ``(a, d) = (m_in * 2^e, m)``
    (exponent sign moved to d) when ``sc.by_scale``, else ``(Q, R')``;
    ``zp = rnd(-lo' * a / d)``.  ``ties[j]``: element j's division sat exactly on a tie
    (its code depends on the tie rule).  A zero row gives codes 0, zp 0, no ties."""
    n = len(v)
    if sc.R == 0:
        return 0, [0] * n, [False] * n
    if sc.by_scale:
        a, d = m_in << max(sc.e, 0), sc.m << max(-sc.e, 0)
    else:
        a, d = sc.Q, sc.R
    zp = rnd(-sc.lo * a, d, rule)
    q_lo = -sc.Q if sc.symmetric else 0
    codes, ties = [], []
    for x in v:
        t = (x >> sc.sh) * a
        codes.append(min(max(rnd(t, d, rule) + zp, q_lo), sc.Q))
        ties.append(is_tie(t, d))
    return zp, codes, ties


def requant_row(v, m_in: int, k_in: int, bits: int, symmetric: bool,
                spec) -> tuple[RequantScale, int, list, list]:
    """One row of ``requant_rows(v, m_in * 2^-k_in, bits, symmetric, spec)`` in Python
    ints: ``(scale, zp, codes, ties)`` (:func:`requant_scale`, :func:`requant_codes`;
    tie rule ``spec.rounding`` for the codes)."""
    v = [int(x) for x in v]
    sc = requant_scale(min(v), max(v), int(m_in), int(k_in), bits, symmetric, spec)
    zp, codes, ties = requant_codes(v, int(m_in), sc, spec.rounding)
    return sc, zp, codes, ties


# ------------------------------------------------------------------ group-wise activations

def requant_groups_row(v, m_in: int, k_in: int, bits: int, a_group: int, emax: int,
                       spec) -> tuple[RequantScale, list, list, list]:
    """One row of ``intsim.matmul.requant_groups`` (docs/SPEC.md section 4.8 step 1) in
    Python ints: ``(scale, codes, zg, e)``.  The row's requant_rows scale; per group of
    ``a_group`` columns the largest ``e`` in [0, emax] with ``m_in (hi - lo) 2^(e_fit + e)
    <= Q m`` (exact rationals), its zero point and codes at ``2^(e_fit + e) / m``; a row
    whose codes do not follow the fitted scale keeps the row's codes, zero point, e = 0."""
    v = [int(x) for x in v]
    sc = requant_scale(min(v), max(v), int(m_in), int(k_in), bits, False, spec)
    zp, codes, _ = requant_codes(v, int(m_in), sc, spec.rounding)
    K, Ga = len(v), min(a_group, len(v))
    na = -(-K // Ga)
    if not sc.by_scale:
        return sc, codes, [zp] * na, [0] * na
    Q, m_in = (1 << bits) - 1, int(m_in)
    zg, eg = [], []
    for a in range(na):
        g = [x >> sc.sh for x in v[a * Ga:(a + 1) * Ga]]
        lo = min(min(g), 0)
        L = m_in * (max(max(g), 0) - lo)
        ea = max(c for c in range(emax + 1)
                 if (L << max(sc.e + c, 0)) <= (Q * sc.m) << max(-(sc.e + c), 0))
        d = sc.e + ea
        z = quot(-lo * m_in, sc.m, d, spec.rounding)
        for j, x in enumerate(g):
            codes[a * Ga + j] = min(max(quot(x * m_in, sc.m, d, spec.rounding) + z, 0), Q)
        zg.append(z)
        eg.append(ea)
    return sc, codes, zg, eg


# ------------------------------------------------------------------ Hadamard rotation

def hadamard_row(y, b: int, rule: str, out_bits: int = ROT_OUT_BITS) -> tuple[list, int]:
    """One row of ``intsim.hadamard.hadamard_rows`` (docs/SPEC.md section 7.6) in Python
    ints, as the matrix product the butterflies compute: ``L = bitlen(max |y|)``,
    ``sh = max(0, L + log2 b - out_bits)``, ``y' = rshift(y, sh, rule)`` (:func:`rshift`,
    tie rule ``rule``), then per block of ``b`` columns ``out[i] = sum_j (-1)^popcount(i & j)
    y'[j]`` (Sylvester's H_b in natural order, exact).  Returns ``(out, sh)``."""
    y = [int(x) for x in y]
    lb = b.bit_length() - 1
    if b < 1 or b != 1 << lb or len(y) % b:
        raise IntsimError(f"b: {b} is not a power of two dividing {len(y)}")
    L = max((abs(x) for x in y), default=0).bit_length()
    sh = max(0, L + lb - out_bits)
    ys = [rshift(x, sh, rule) for x in y]
    out = []
    for s in range(0, len(ys), b):
        blk = ys[s:s + b]
        out += [sum(-x if (i & j).bit_count() & 1 else x for j, x in enumerate(blk)) for i in range(b)]
    return out, sh


def _gcd(a: int, b: int) -> int:
    """Euclid's greatest common divisor of two non-negative Python ints (gcd(0, 0) = 0)."""
    while b:
        a, b = b, a % b
    return a


def two_step_fold(acc, xs, m, b) -> tuple[list, list]:
    """SPEC 4.9 in Python integers for one token: ``acc[n][g]``, ``xs[g]``, the weight's
    ``m[n][g]`` and ``b[n][g]``.  c[n] = gcd of row n's m and |b| (0: u = beta = 0);
    inner[n] = sum_g u acc + beta xs; P[n] = c inner.  Returns (inner, P)."""
    inner, P = [], []
    for n, (mr, br) in enumerate(zip(m, b)):
        c = 0
        for v in list(mr) + [abs(x) for x in br]:
            c = _gcd(c, int(v))
        d = c or 1
        s = sum(int(mv) // d * int(a) + int(bv) // d * int(x)
                for mv, bv, a, x in zip(mr, br, acc[n], xs))
        inner.append(s)
        P.append(c * s)
    return inner, P
