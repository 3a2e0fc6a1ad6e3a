"""Stress records of DI-ClippedSoftmax and its clip (docs/SPEC.md section 6): the clip
threshold C in each of its branches with exact ties under each tie rule, its clamp at 1
and its cap, the clip taken / not taken / at its boundary, masked columns that would
change everything if they entered the max, fully masked rows, zero-spread rows (uniform
probabilities, ties), the saturation of p at 2^p_out - 1, rows where the reciprocal and
the divide forms differ, the input and output widths, and the bounds."""
from __future__ import annotations

import numpy as np

from .. import oracle
from ..options import Spec
from ..softmax import di_clipped_softmax
from .core import Case, Rng, arr, check, dy, first_miss, others, rules, spec

#: far below every clip threshold used here, so its clipped value shows C itself
FAR = -(2 ** 59)


def clip_c(c: int, m: int, k: int, rule: str) -> int:
    """The clip threshold C = clamp(rnd(c 2^k / m), 1, 2^61) in Python ints (SPEC 6.2)."""
    if m == 0:
        return 2 ** 61
    v = oracle.rnd(c << k, m, rule) if k >= 0 else oracle.rnd(c, m << -k, rule)
    return min(max(v, 1), 2 ** 61)


def clip_tie(c: int, m: int, k: int) -> bool:
    return m > 0 and (oracle.is_tie(c << k, m) if k >= 0 else oracle.is_tie(c, m << -k))


def _big_k_scale(c: int) -> tuple:
    """(m, k) in the large-k branch (k > 62 - bitlen(c), not capped) whose C rounds
    differently under floor and the nearest rules.  (No tie exists in this branch: a tie
    needs the odd part of m to divide A = c << k0, which then makes m divide A, r1 = 0.)"""
    k0 = 62 - c.bit_length()
    A = c << k0
    for m in range(2 ** 27 + 1, 2 ** 28):
        q1, r1 = divmod(A, m)
        i = 3
        if i < m.bit_length() and q1 < 1 << (61 - i) and 2 * ((r1 << i) % m) > m:
            return m, k0 + i
    raise AssertionError("no large-k clip scale found")


def _clip_scales(c: int) -> list:
    """Row scales (m, k) covering C's branches: ties in the middle branch (c 2^k / m = 1.5,
    2.5), in k < 0 (c / (m << -k) = 1.5, 2.5), in the large-k branch; C rounding to 0 and
    clamped to 1; the cap 2^61 (i >= bitlen(m)); a fraction above 1/2."""
    mid = [(2 * c * 8 // 3, 3), (2 * c * 8 // 5, 3)]           # 15 * 8 / 80 = 1.5, / 48 = 2.5
    neg = [(5, -1), (3, -1)]                                   # 15 / 10 = 1.5, 15 / 6 = 2.5
    return mid + neg + [_big_k_scale(c), (2 ** 28, -40), (2 ** 20, 62 - c.bit_length() + 40), (7, 2)]


def _clip_cases() -> list:
    out = []
    c = 15
    scales = _clip_scales(c)
    rows = [[0, -1, FAR, -2, 5, FAR + 3] for _ in scales]
    ms, ks = zip(*scales)
    for r in rules():
        out.append(Case(f"softmax_clip.threshold.{r}", "softmax_clip",
                        f"SPEC §6.2 step 1, the clip threshold C = clamp(rnd(c 2^k / m), 1, 2^61), c = 15, tie rule "
                        f"{r}: exact ties in the middle branch (1.5, 2.5) and for k < 0 (1.5, 2.5), the large-k "
                        f"branch (q1 << i plus a rounded remainder; no tie is possible there), a C that rounds to 0 "
                        f"(clamped to 1), the cap "
                        f"2^61, and a fraction above 1/2; each row holds scores 2^59 below its max, which show C",
                        ("softmax.C.round", "softmax.C.branch", "softmax.C.min", "softmax.C.cap", "softmax.clip"),
                        {"scores": arr(rows), "scale": dy(ms, ks), "mask": None, "spec": spec(rounding=r)},
                        lambda a: first_miss(
                            check(sum(clip_tie(c, m, k) for m, k in scales) >= 4, "four C ties"),
                            check(clip_c(c, 2 ** 28, -40, "half_up") == 1, "C clamped to 1"),
                            check(clip_c(c, *scales[-2], "half_up") == 2 ** 61, "C capped")), others(r, True)))
    # m = 0 (the row is real 0: x~ = 0), and a mask: masked columns are 0 and take no part in the max
    vis = arr([[True, True, False, True], [False, False, False, False], [True, True, True, True]], np.bool_)
    out.append(Case("softmax_clip.mask", "softmax_clip",
                    "SPEC §6.2 step 1 with a mask: a masked score 2^60 - 1 above the visible ones does not enter "
                    "the max; a fully masked row is 0; a row scale m = 0 gives x~ = 0",
                    ("softmax.mask", "softmax.masked_row", "softmax.zero_spread"),
                    {"scores": arr([[5, -7, 2 ** 60 - 1, FAR], [1, 2, 3, 4], [9, 8, -9, 0]]),
                     "scale": dy([200, 200, 0], [10, 10, 10]), "mask": vis, "spec": spec()}, None))
    return out


def _softmax(name, scores, m, k, sp, targets, sites, mask=None, causal=False, q_offset=0, witness=None,
             distinct=(), p_frac=None):
    args = {"scores": arr(scores), "scale": dy(m, k), "mask": mask, "causal": causal, "q_offset": q_offset,
            "spec": sp}
    if p_frac is not None:
        args["p_frac_bits"] = p_frac
    return Case(name, "di_clipped_softmax", targets, sites, args, witness, distinct)


#: the score scale of rows whose DI-Exp unit is T = 2^30 exactly: m = 178 (m_f = 256), k = 38
#: (and a row range of 65535 units at 16 input bits maps to the codes unchanged)
T30_SCALE = (178, 38)


def _recip_tie_rows() -> list:
    """Rows at T = 2^30 whose reciprocal-form probability of the max is an exact tie
    (SPEC 6.2 step 4, F = 16): with e_max = 2^30, e_max f / 2^46 = f / 2^16, a tie when
    f = floor((2^62 - 1) / S) = 2^15 (mod 2^16).  The min column (-65535, e = 2^30 - 2^15)
    fixes the range; the others' exps 2^30 - delta set S = n 2^30 - d.  Rows of 5 and 7
    columns give floor quotients 13107 (odd) and 9362 (even)."""
    rows = []
    for n in (5, 7):
        for d in range(32768, 32768 + (n - 2) * 32767 + 1):
            if ((2 ** 62 - 1) // (n * 2 ** 30 - d)) % 65536 == 32768:
                break
        rest, cols = d - 32768, []
        for _ in range(n - 2):
            delta = min(rest, 32767)
            cols.append(-2 * delta)
            rest -= delta
        rows.append([0, -65535] + cols + [0] * (7 - n))
    return rows


def _recip_tie_witness(args) -> str | None:
    from .gen_exp import exp_py, unit
    for row, vis in zip(args["scores"].tolist(), args["mask"].tolist()):
        e = [exp_py(x, *T30_SCALE, "half_up") for x, v in zip(row, vis) if v]
        f = (2 ** 62 - 1) // sum(e)
        if not (unit(*T30_SCALE, "floor")[0] == 2 ** 30 and oracle.shift_tie(e[0] * f, 46)):
            return "an exact tie of e_max f / 2^46"
    return None


def _differ_rows(n_rows: int, cols: int, seed: int) -> tuple:
    """Rows (of designed random scores) on which the reciprocal and the divide form give
    different probabilities at p_out = 16, found with the reference."""
    rng = Rng(seed)
    cand = [[rng.int(-3000, 0) for _ in range(cols)] for _ in range(60)]
    sp_r, sp_d = spec(), spec(softmax_div="divide")
    pr = di_clipped_softmax(arr(cand), dy([181] * 60, [11] * 60), spec=sp_r, backend="reference").q
    pd = di_clipped_softmax(arr(cand), dy([181] * 60, [11] * 60), spec=sp_d, backend="reference").q
    diff = [i for i in range(60) if (pr[i] != pd[i]).any()]
    same = [i for i in range(60) if (pr[i] == pd[i]).all()]
    return [cand[i] for i in diff[:n_rows - 1] + same[:1]]


#: rows of the probability-tie records (p_out = F = 2, in_bits 4) and their masks
P_TIE_ROWS = [[7] * 8, [3, 0, 0, 0, 0, 0, 0, 0], [5, 5] + [0] * 6, [1, 1, 1, 1, 0, 0, 0, 0],
              [0, -15, -3, -3, -3, -3, -3, 0]]
P_TIE_MASK = [[True] * 8, [True] + [False] * 7, [True, True] + [False] * 6, [True] * 4 + [False] * 4,
              [True] * 7 + [False]]


def _p_tie_witness(args) -> str | None:
    """Row 4 (scale 220 * 2^-10, spread 15 = Q of 4 bits: x_q = x exactly, T = 3): its exps
    in Python ints sum to 8 and give the ties 12/8 and 4/8; 8 equal columns give 4/8."""
    from .gen_exp import exp_py, unit
    row = P_TIE_ROWS[4][:7]
    e = [exp_py(x, 220, 10, "half_up") for x in row]
    S = sum(e)
    return first_miss(check(unit(220, 10, "floor")[0] == 3 == unit(220, 10, "half_up")[0], "T = 3"),
                      check(S == 8 and oracle.is_tie(e[0] << 2, S) and oracle.is_tie(e[2] << 2, S), "ties 1.5, 0.5"),
                      check(oracle.is_tie(1 << 2, 8), "1/2"))


def _p_cases() -> list:
    """Probability rounding, the two IntDiv forms, saturation, zero spread."""
    out = []
    rows = _differ_rows(4, 12, 3)
    for div in ("reciprocal", "divide"):
        for r in rules():
            sp = spec(rounding=r, softmax_div=div, softmax_p_out=2, softmax_in_bits=4)
            out.append(_softmax(f"softmax.p_ties.{div}.{r}", P_TIE_ROWS, [150, 150, 150, 150, 220],
                                [9, 9, 9, 9, 10], sp,
                                f"SPEC §6.2 step 4 ({div}), tie rule {r}, p_out = F = 2, 4-bit input: eight equal "
                                f"visible scores give p = 4/8 = 1/2; a row with T = 3 whose exps are 3, 1, 1, 1, 1, "
                                f"1, 0 gives p = 12/8 = 1.5 and 4/8 = 1/2 (exact ties with odd and even floors in the "
                                f"divide form; the reciprocal form is just below them); one visible column "
                                f"saturates (p = 2^F -> 2^p_out - 1)",
                                ("softmax.p.round", "softmax.p.sat", "softmax.zero_spread", "softmax.recip"),
                                mask=arr(P_TIE_MASK, np.bool_), witness=_p_tie_witness,
                                distinct=others(r, True) if div == "divide" else ()))
            if div == "reciprocal":
                tr = _recip_tie_rows()
                out.append(_softmax(f"softmax.p_ties.recip16.{r}", tr, [T30_SCALE[0]] * 2, [T30_SCALE[1]] * 2,
                                    spec(rounding=r),
                                    f"SPEC §6.2 step 4 (reciprocal, F = p_out = 16), tie rule {r}: rows at T = 2^30 "
                                    f"whose reciprocal f = floor((2^62 - 1) / S) is 2^15 mod 2^16, so the max's "
                                    f"e f / 2^46 = f / 2^16 is an exact tie (floor quotients 13107 and 9362)",
                                    ("softmax.p.round.recip",),
                                    mask=arr([[True] * 5 + [False] * 2, [True] * 7], np.bool_),
                                    witness=_recip_tie_witness, distinct=others(r, True)))
            out.append(_softmax(f"softmax.forms.{div}.{r}", rows, [181] * len(rows), [11] * len(rows),
                                spec(rounding=r, softmax_div=div),
                                f"SPEC §6.2 step 4 ({div}), tie rule {r}, p_out 16: rows on which the "
                                f"reciprocal (one divide per row, then a rounding shift) and the divide form "
                                f"give different codes, and one on which they agree",
                                ("softmax.recip", "softmax.p.round")))
    return out


def _mask_cases() -> list:
    out = []
    big = 2 ** 60 - 1
    scores = [[3, -1, big, -big, 0, 2], [big, big, big, big, big, big], [0, 5, 5, -40, big, 1], [1, 2, 3, 4, 5, 6]]
    vis = arr([[True, True, False, False, True, True], [False] * 6, [True, True, True, True, False, True],
               [True] * 6], np.bool_)
    for r in ("half_up", "half_even"):
        out.append(_softmax(f"softmax.mask.{r}", scores, [181, 181, 181, 0], [8, 8, 8, 8], spec(rounding=r),
                            f"SPEC §6.2 / §14 masking, tie rule {r}: masked scores of +-(2^60 - 1) that would "
                            f"change the max, the clip, the range and the sum if they took part; a fully masked "
                            f"row (all p = 0); a row scale m = 0 (uniform)",
                            ("softmax.mask", "softmax.masked_row", "softmax.zero_spread"), mask=vis))
    causal = [[4, 9, -3, 7], [1, -2, 8, 0], [6, 6, 6, 6], [-5, 2, 11, 3]]
    out.append(_softmax("softmax.causal_offset", causal, [200] * 4, [6] * 4, spec(),
                        "SPEC §6.1 causal rows with q_offset = -1: row 0 sees nothing (fully masked), row i sees "
                        "columns < i", ("softmax.masked_row", "softmax.mask"), causal=True, q_offset=-1))
    return out


def _clip_softmax_cases() -> list:
    """The clip taken and not taken inside the softmax, at c = 1 (clipped scores keep a
    visible exp(-1)) and at c = 15."""
    out = []
    # scale 2^-8 per unit: c = 1 is C = 256 units, c = 15 is C = 3840
    row_c1 = [0, -255, -256, -257, -1000, -2 ** 40, -10, -128]
    row_c15 = [0, -3839, -3840, -3841, -5000, -100, -2 ** 50, -7]
    row_in = [0, -10, -20, -255, -1, -3, -100, -200]               # spread below both thresholds
    for c in (1, 15):
        for r in ("half_up", "floor"):
            out.append(_softmax(f"softmax.clip.c{c}.{r}", [row_c1, row_c15, row_in], [1, 1, 1], [8, 8, 8],
                                spec(rounding=r, softmax_clip=c),
                                f"SPEC §6.2 step 1 inside the softmax, c = {c}, tie rule {r}: scores at -C + 1, "
                                f"-C and -C - 1 units below the max (C = {256 * c}), far below it (clipped: the "
                                f"requantizer then spans [-C, 0]), and a row whose spread stays inside the clip",
                                ("softmax.clip",),
                                witness=lambda a, c=c: check(clip_c(c, 1, 8, "half_up") == 256 * c, "C = 256 c")))
    return out


def _width_cases() -> list:
    out = []
    rng = Rng(11)
    rows = [[rng.int(-5000, 0) for _ in range(10)] for _ in range(3)] + [[0] * 9 + [-1]]
    paper = Spec.paper()
    for name, sp, pf in (("paper", spec(paper), None), ("in4", spec(softmax_in_bits=4), None),
                         ("in8_p8_f7", spec(softmax_in_bits=8, softmax_p_out=8, softmax_p_frac=7), None),
                         ("p16_f1", spec(softmax_p_out=16), 1), ("range_m16", spec(requant_mode="range", m_bits=16),
                                                                    None),
                         ("k4_saturate", spec(k_bits=4, overflow="saturate"), None)):
        for r in (("half_up", "half_even") if name == "paper" else ("half_even",)):
            out.append(_softmax(f"softmax.widths.{name}.{r}", rows, [181, 255, 129, 200], [4, 12, 30, 9],
                                spec(sp, rounding=r),
                                f"SPEC §6.1 options at their extremes ({name}), tie rule {r}: input widths 4, 8, 16; "
                                f"p_out 8 and 16; F = p_out - 1 and F = 1; range mode at m_bits 16; k_bits 4 "
                                f"(the requantized scale of the row with unit 2^-30 saturates, counted)",
                                ("softmax.widths", "softmax.kmin") if name == "k4_saturate" else ("softmax.widths",),
                                p_frac=pf))
    # bounds: |scores| = 2^60 - 1, a row of 64 columns at T = 2^30 (S = 64 * 2^30, e f near 2^62)
    T30 = [[0] * 32 + [-1] * 32]
    out.append(_softmax("softmax.bounds", [[2 ** 60 - 1, -(2 ** 60 - 1)] + [0] * 62, T30[0]], [1, 178], [0, 38],
                        spec(),
                        "SPEC §6.4 bounds: scores +-(2^60 - 1) (x - max = -(2^61 - 2)); a row whose DI-Exp unit is "
                        "T = 2^30 (m_r = 178: m_f = 256) with 64 columns: S = 64 2^30, e f close to 2^62 - 1",
                        ("softmax.S.bound", "exp.tcap"),
                        witness=lambda a: check(oracle.rnd(1 << 38, 178 + 89 - 11, "half_up") == 2 ** 30, "T = 2^30")))
    return out


def cases() -> list:
    return _clip_cases() + _p_cases() + _mask_cases() + _clip_softmax_cases() + _width_cases()
