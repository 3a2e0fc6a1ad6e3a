"""Stress records of the dynamic requantizer ``requant_rows`` (docs/SPEC.md section 3):
exact code ties of every kind under each tie rule in both modes, the zero point's tie and
the clamp at Q it can cause, the range mode's fit tie, the pre-shift on both sides of
2^32 (made visible: the extra or missing bit changes the scale or a code), zero rows,
scale saturation at k_min (and the carry that leads into it), the refit at k_max (down to
m = 0, and the int64 fallback to range codes), and the input bounds."""
from __future__ import annotations

from .. import oracle
from .core import Case, arr, check, dy, first_miss, others, rules, spec
from .gen_prim import fit_events

#: symmetric 8-bit row whose fitted scale is exactly 2 (R = 254 = 2 * 127): codes 127,
#: 0.5, 1.5, -0.5, -1.5, 2.5, -2.5, 0 -- ties of both signs and both floor parities
SYM_TIES = [254, 1, 3, -1, -3, 5, -5, 0]
#: asymmetric 8-bit row with scale exactly 2 (R = 510 = 2 * 255, lo = -1): zero point
#: rnd(0.5), codes of -0.5, 0.5, 1.5, 3.5 and 254.5 (which with a rounded-up zero point
#: reaches 256 and is clamped to Q = 255)
ASYM_TIES = [-1, 509, 0, 1, 3, 7, 2, -1]


def rows_of(args) -> list:
    """Each row of a requant_rows case through the oracle: ``[(scale, zp, codes, ties)]``."""
    v = args["v"].reshape(-1, args["v"].shape[-1]).tolist()
    s = args["scale_in"]
    n = len(v)
    m = s.m.reshape(-1).tolist() if s.m.ndim else [int(s.m)] * n
    k = s.k.reshape(-1).tolist() if s.k.ndim else [int(s.k)] * n
    return [oracle.requant_row(row, mi, ki, args["bits"], args["symmetric"], args["spec"])
            for row, mi, ki in zip(v, m, k)]


def _ties_witness(want_zp: bool = False, want_clamp: bool = False):
    """Code ties of both signs and both floor parities (and the zero point's tie, and a
    code rounded past Q before its clamp, where asked)."""
    def w(args):
        sp = args["spec"]
        kinds, zp_tie, clamp = set(), False, False
        for (sc, zp, codes, ties), row in zip(rows_of(args), args["v"].reshape(-1, args["v"].shape[-1]).tolist()):
            a, d = (args["scale_in"].m.reshape(-1)[0] << max(sc.e, 0), sc.m << max(-sc.e, 0)) \
                if sc.by_scale else (sc.Q, sc.R)
            a = int(a)
            for x, t in zip(row, ties):
                if t:
                    kinds.add(((x >> sc.sh) >= 0, ((x >> sc.sh) * a // d) & 1))
                raw = oracle.rnd((x >> sc.sh) * a, d, sp.rounding) + zp
                clamp |= raw > sc.Q
            zp_tie |= sc.lo != 0 and oracle.is_tie(-sc.lo * a, d)
        return first_miss(check(len(kinds) >= (3 if not want_zp else 2), f"code ties of several kinds, got {kinds}"),
                          check(zp_tie or not want_zp, "a zero-point tie"),
                          check(clamp or not want_clamp, "a code clamped at Q"))
    return w


def _rq(name, rows, m_in, k_in, bits, sym, sp, targets, sites, witness=None, distinct=()):
    n = len(rows)
    m_in = m_in if isinstance(m_in, list) else [m_in] * n
    k_in = k_in if isinstance(k_in, list) else [k_in] * n
    return Case(name, "requant_rows", targets, sites,
                {"v": arr(rows), "scale_in": dy(m_in, k_in), "bits": bits, "symmetric": sym, "spec": sp,
                 "name": "v"}, witness, distinct)


def _tie_cases() -> list:
    out = []
    for r in rules():
        for mode in ("fitted", "range"):
            sp = spec(rounding=r, requant_mode=mode)
            site = f"requant.codes.{mode}"
            out.append(_rq(f"requant_rows.ties.{mode}.sym.{r}", [SYM_TIES], 1, 0, 8, True, sp,
                           f"SPEC §3 codes ({mode} mode, symmetric), tie rule {r}: the scale is exactly 2, so "
                           f"codes 0.5, 1.5, 2.5, -0.5, -1.5, -2.5 are exact ties of both signs and both "
                           f"floor parities", (site,), _ties_witness(), others(r)))
            clamp = r in ("half_up", "half_away")
            out.append(_rq(f"requant_rows.ties.{mode}.asym.{r}", [ASYM_TIES], 1, 0, 8, False, sp,
                           f"SPEC §3 codes and zero point ({mode} mode, asymmetric), tie rule {r}: zero point "
                           f"rnd(0.5), codes -0.5, 0.5, 1.5, 3.5 and 254.5" +
                           (" (254.5 rounds up and the rounded-up zero point takes it to 256: clamped to "
                            "Q = 255)" if clamp else ""),
                           (site, "requant.zp") + (("requant.clamp",) if clamp else ()),
                           _ties_witness(True, clamp), others(r)))
        # range mode's fit: m_in R'/Q = 401 and 403 at k = -1: mantissas 200.5 and 201.5
        sp = spec(rounding=r, requant_mode="range")
        out.append(_rq(f"requant_rows.fit_tie.range.{r}", [[0, 401 * 255, 1], [403 * 255, 0, 7]], 1, 0, 8,
                       False, sp,
                       f"SPEC §3 scale (range mode), tie rule {r}: m_in R'/Q = 401 and 403, fitted at "
                       f"m_bits 8 to the mantissas 200.5 and 201.5 (exact ties)", ("requant.fit.round",),
                       lambda a: check(all("tie" in fit_events(sc.R, sc.Q, 8, -128, 127)
                                           for sc, *_ in rows_of(a)), "fit ties"), others(r, nonneg=True)))
    return out


def _preshift_rows() -> list:
    """Rows on both sides of the pre-shift and rows where its floor is visible (module doc)."""
    j, Q8 = 200, 127
    rp = j * Q8 * 2 ** 17 + 1                      # R' odd, R'/Q just above 200 * 2^17
    rows8 = [[2 * rp + 1, -5, 3, -(2 * rp - 3), 0, 2 ** 32 - 1, -7, 11],
             [2 ** 32 - 1, -(2 ** 32 - 1), 1, -1, 2 ** 31, -(2 ** 31) - 1, 5, 0],       # sh = 0
             [2 ** 32, -3, 1, -1, 2 ** 31 + 1, 7, -2 ** 31 - 1, 0],                      # sh = 1
             [2 ** 61 - 1, -(2 ** 61 - 1) + 2 ** 40, -1, 2 ** 30 + 1, -(2 ** 29) - 3, 0, 1, -2]]
    return rows8


def _odd_scale_rows() -> tuple:
    """Asymmetric 16-bit rows at m_bits 16 whose fitted scale is an odd integer m (e = 0),
    so that the pre-shift's floor moves a code across a rounding boundary: R' = 65535 m,
    R = 2 R' + 1 (sh = 1); element v' = i m + (m - 1)/2 sits half a unit of v' below a tie
    point, which the unshifted v = 2 v' + 1 reaches."""
    m = 40001
    rp = 65535 * m
    row = [2 * rp + 1, 0, 2 * (3 * m + (m - 1) // 2) + 1, 2 * (10 * m + (m - 1) // 2) + 1,
           2 * (7 * m + (m - 1) // 2), 2 * (100 * m + (m - 1) // 2) + 1, 1, 3]
    lo = -3
    row2 = [lo, 2 ** 33, 2 ** 32 + 5, -1, -2, 1, 2, 0]            # asymmetric: range recomputed from v'
    return [row, row2]


def _preshift_cases() -> list:
    out = []
    for r in rules():
        sp = spec(rounding=r)
        out.append(_rq(f"requant_rows.preshift.sym.{r}", _preshift_rows(), 1, 0, 8, True, sp,
                       f"SPEC §3 pre-shift (floor), tie rule {r}: R = 2^32 - 1 (sh = 0), R = 2^32 (sh = 1), "
                       f"R = 2 R' + 1 with R' = 200 * 127 * 2^17 + 1 (sh = 1; one more shifted bit makes the "
                       f"ceil-fitted mantissa 200 instead of 201), R = 2^61 - 1 (sh = 29); negative odd "
                       f"values floor", ("requant.preshift", "requant.preshift.floor", "requant.bound"),
                       lambda a: check(sorted({sc.sh for sc, *_ in rows_of(a)}) == [0, 1, 29], "sh 0, 1, 29")))
        out.append(_rq(f"requant_rows.preshift.odd_scale.{r}", _odd_scale_rows(), 1, 0, 16, False,
                       spec(rounding=r, m_bits=16),
                       f"SPEC §3 pre-shift, tie rule {r}, asymmetric 16 bits at m_bits 16: the fitted scale is "
                       f"the odd integer 40001 (e = 0), and elements sit half a unit of v' below a code tie, "
                       f"which the unshifted (or truncated) value would reach; an asymmetric row whose range is "
                       f"recomputed from the shifted values (lo' = -3 >> 2 = -1)",
                       ("requant.preshift", "requant.preshift.floor"),
                       lambda a: first_miss(check(rows_of(a)[0][0].sh == 1 and rows_of(a)[0][0].e == 0
                                                  and rows_of(a)[0][0].m == 40001, "sh = 1, e = 0, m = 40001"),
                                            check(rows_of(a)[1][0].lo == -1, "lo' = -1"))))
    return out


def _range_cases() -> list:
    """Zero rows, saturation at k_min, refit at k_max, extremes of widths and inputs."""
    out = []
    k4 = dict(k_bits=4, overflow="saturate")
    for r in ("half_up", "floor"):
        for mode in ("fitted", "range"):
            sp = spec(rounding=r, requant_mode=mode, **k4)
            rows = [[127 * 2 ** 15, -5, 1, 3 * 2 ** 15 + 2 ** 14],               # k = -8 = k_min: fits
                    [127 * 2 ** 16 - 1, -1, 2 ** 15 + 2 ** 14, -(3 * 2 ** 14)],  # carry -> k = -9: saturates
                    [127 * 2 ** 16, 2 ** 15 + 2 ** 14, 3, -(2 ** 16) - 2 ** 15],  # k = -9: saturates
                    [0, 0, 0, 0]]                                                 # zero row
            out.append(_rq(f"requant_rows.kmin.{mode}.{r}", rows, 1, 0, 8, True, sp,
                           f"SPEC §3 scale at the exponent range (k_bits 4: k in [-8, 7], overflow saturate), "
                           f"{mode} mode, tie rule {r}: a row needing k = k_min exactly, one whose ceil fit "
                           f"carries into k = -9, one needing k = -9 (both saturate: m = 2^8 - 1, k = -8, codes "
                           f"from the range, ties among them), an all-zero row (m = 0, k = 0)",
                           ("requant.kmin", "fit.kmin", "requant.zero", "fit.carry"),
                           lambda a: check([sc.sat for sc, *_ in rows_of(a)] in
                                           ([False, True, True, False], [False, False, True, False]),
                                           "k = k_min fits, k = -9 saturates, zero row")))
            if r == "half_up":
                # the same rows under overflow raise: the op refuses (a refusal record, no outputs)
                out.append(Case(f"requant_rows.kmin_raise.{mode}", "requant_rows",
                                f"SPEC §15 overflow raise (k_bits 4: k in [-8, 7]), {mode} mode: two rows need "
                                f"k = -9 < k_min, so the op raises IntsimOverflowError naming the argument and "
                                f"the count of saturating row scales; the record holds that exact error",
                                ("overflow.raise",),
                                {"v": arr(rows), "scale_in": dy([1] * 4, [0] * 4), "bits": 8, "symmetric": True,
                                 "spec": spec(rounding=r, requant_mode=mode, k_bits=4, overflow="raise"),
                                 "name": "v"},
                                lambda a: check(sum(sc.sat for sc, *_ in rows_of(a)) >= 1,
                                                "some row scale needs k < k_min"),
                                expect_error="IntsimOverflowError"))
            rows = [[1, -1, 0, 1], [3, 0, 1, 2], [5, -5, 1, 0], [7, 1, -7, 2]]
            out.append(_rq(f"requant_rows.kmax.{mode}.{r}", rows, [1, 3, 1, 1], [0, 10, 2 ** 20, 200], 8, True,
                           sp,
                           f"SPEC §3 / §1.4 step 5 at k_max (k_bits 4), {mode} mode, tie rule {r}: tiny rows "
                           f"refitted at k = 7 (mantissa bits lost; ceil keeps m >= 1, rnd may give m = 0), "
                           f"k_in = 2^20 where m << -e would leave int64 (range codes)",
                           ("requant.kmax", "fit.kmax") + (("requant.int64",) if mode == "fitted" else ()),
                           lambda a, mode=mode: first_miss(
                               check(all(sc.k_need is None or sc.k_need > 7 for sc, *_ in rows_of(a)),
                                     "every row beyond k_max"),
                               check(any((sc.m > 0 and not sc.by_scale) if mode == "fitted" else (sc.m == 0 < sc.R)
                                         for sc, *_ in rows_of(a)),
                                     "a fitted row on range codes (int64) / a row refitted to m = 0"))))
    sp = spec()
    out.append(_rq("requant_rows.zero_rows", [[0, 0, 0], [1, -1, 0], [0, 0, 0]], [5, 7, 0], [3, -4, 9], 8, False,
                   sp, "SPEC §3 zero row (R' = 0): codes 0, zp 0, m = 0, k = 0; a zero input scale (m_in = 0) "
                       "on a non-zero row", ("requant.zero",),
                   lambda a: check([sc.R == 0 for sc, *_ in rows_of(a)] == [True, False, True], "zero rows")))
    for bits, sym, mb in ((2, False, 2), (2, True, 2), (16, True, 16), (16, False, 16), (3, False, 8)):
        Q = oracle.code_range(bits, sym)
        rows = [[2 * Q, 1, -1] + [x for x in (3, -3, 5, -5) if abs(x) <= 2 * Q] + [2 * Q - 1, 1 - 2 * Q, 0]
                if sym else [2 * Q - 1, -1, 1, 3, Q, 2, 0, 5]]
        for r in ("half_up", "half_even"):          # every rule's ties: requant_rows.ties.*
            out.append(_rq(f"requant_rows.width.{'sym' if sym else 'asym'}{bits}.m{mb}.{r}", rows, 1, 0, bits, sym,
                           spec(rounding=r, m_bits=mb),
                           f"SPEC §3 codes at {bits} bits ({'symmetric' if sym else 'asymmetric'}), m_bits {mb}, "
                           f"tie rule {r}: scale exactly 2, ties at the extremes of the code range",
                           ("requant.codes.fitted", "requant.width"), None, others(r)))
    out.append(_rq("requant_rows.bounds", [[2 ** 61 - 1, -(2 ** 61 - 1), 1, -1],
                                           [2 ** 61 - 1, 0, 2 ** 60, 3],
                                           [-(2 ** 61 - 1), 5, 0, -1]],
                   [2 ** 28, 2 ** 28, 1], [2 ** 20, -(2 ** 20), 0], 16, False, spec(k_bits=16, overflow="saturate"),
                   "SPEC §3 overflow bounds: |v| = 2^61 - 1 (R = 2^62 - 2, sh = 30), m_in = 2^28 "
                   "(m_in R' <= 2^60), k_in = +-2^20", ("requant.bound", "requant.preshift", "requant.kmin",
                                                         "requant.kmax"), None))
    return out


def cases() -> list:
    return _tie_cases() + _preshift_cases() + _range_cases()
