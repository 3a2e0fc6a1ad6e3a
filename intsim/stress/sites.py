"""The catalogue of SPEC sites a stress suite must reach: every rounding, saturation,
clamp, cap and proven bound docs/SPEC.md names, and the branches between them.  Each
stress case lists the sites it reaches (``Case.sites``); ``intsim.stress.coverage``
turns the suite's manifest into the table of docs/COVERAGE.md."""
from __future__ import annotations

#: id -> (SPEC section, what kind of site, what it is).  Kinds: rounding (a tie rule
#: decides), saturation (a value or scale clamps at its range, counted), clamp (a designed
#: clamp or floor), cap (a designed cap), bound (an accumulator or input at its proven
#: limit), branch (a case split of the arithmetic).
SITES = {
    # 1.3 / 1.4 primitives
    "rnd.shift": ("1.3", "rounding", "rounding right shift rnd(x / 2^s): exact ties of both signs and parities"),
    "rnd.shift.far": ("1.3", "branch", "shift s >= 63: 0, or -1 for negative x under floor"),
    "rnd.div": ("1.3", "rounding", "rounding division rnd(a / b): exact ties of both signs and parities"),
    "rnd.bound": ("1.3", "bound", "|x|, |a|, b up to 2^62 - 1 (remainder form, no 2a + b)"),
    "fit.round": ("1.4", "rounding", "dyadic fit step 3: mantissa m = rnd(num 2^k / den) on a tie"),
    "fit.normalize": ("1.4", "branch", "dyadic fit step 2: normalization decided on the floor quotient"),
    "fit.carry": ("1.4", "clamp", "dyadic fit step 4: a rounding carry to 2^m_bits halves m"),
    "fit.kmax": ("1.4", "clamp", "dyadic fit step 5: k > k_max refits at k_max (bits lost, down to m = 0)"),
    "fit.kmin": ("1.4", "saturation", "dyadic fit step 5: k < k_min saturates m = 2^m_bits - 1 at k_min"),
    "fit.zero": ("1.4", "branch", "dyadic fit step 6: num = 0 gives m = 0, k = 0 clamped into the range"),
    "fit.bound": ("1.4", "bound", "dyadic fit inputs num = 2^61 - 1, den = 2^(61 - m_bits) - 1"),
    "isqrt.square": ("1.4", "branch", "integer square root at perfect squares r^2 and r^2 +- 1"),
    "isqrt.max": ("1.4", "bound", "integer square root at its largest input 2^62 - 1"),
    # 3 requantizer
    "requant.codes.fitted": ("3", "rounding", "codes against the fitted scale: exact ties"),
    "requant.codes.range": ("3", "rounding", "codes from the exact range (range mode): exact ties"),
    "requant.zp": ("3", "rounding", "zero point rnd(-lo' ...) on a tie"),
    "requant.clamp": ("3", "clamp", "code clamp at Q when a code and the zero point both round up on a tie"),
    "requant.fit.round": ("3", "rounding", "the range mode's scale fit on a mantissa tie"),
    "requant.preshift": ("3", "branch", "pre-shift sh = max(0, bitlen(R) - 32) on both sides of R = 2^32"),
    "requant.preshift.floor": ("3", "clamp", "the pre-shift floors (negative values, range recomputed from v')"),
    "requant.zero": ("3", "branch", "zero row R' = 0: codes 0, zp 0, m = 0, k = 0"),
    "requant.kmin": ("3", "saturation", "scale saturation at k_min (overflow saturate): range codes"),
    "requant.kmax": ("3", "clamp", "scale refitted at k_max (tiny rows)"),
    "requant.int64": ("3", "branch", "fitted mode falls back to range codes where m << -e leaves int64"),
    "requant.width": ("3", "bound", "code widths 2..16 and m_bits 2..16 at their extremes"),
    "requant.bound": ("3", "bound", "|v| = 2^61 - 1, m_in = 2^28, |k_in| = 2^20"),
}
