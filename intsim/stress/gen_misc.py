"""Stress records of RoPE, the residual add, DI-SwiGLU and the embedding (docs/SPEC.md
sections 9, 10, 7, 11): RoPE's optional rounding on exact ties and its bound; the residual
add's rounding path made visible at the output codes, its exact-alignment edge, the
all-zero coarse row, its requantization ties and saturation; the sigmoid divide on exact
ties in both frames, the 28-bit refit of the output mantissa on a tie, the rowmax frame's
collapse, dead rows and the bounds; and the embedding gather at the table's ends."""
from __future__ import annotations

import numpy as np

from .. import oracle
from .core import Case, arr, check, dy, exact, first_miss, others, qt, rules, spec
from .gen_exp import mf, unit
from .gen_requant import SYM_TIES


# ------------------------------------------------------------------ RoPE

def _rope_tables(f: int, rows: list) -> tuple:
    dt = np.int16 if f <= 14 else np.int32
    c = np.array([[a for a, _ in r] for r in rows], dtype=dt)
    s = np.array([[b for _, b in r] for r in rows], dtype=dt)
    return c, s


def _rope_cases() -> list:
    out = []
    h = 11585                                          # round(cos(pi/4) 2^14): odd
    inv = pow(h, -1, 1 << 14)
    t = (1 << 13) * inv % (1 << 14)                    # h * t = 2^13 (mod 2^14): a tie of >> 14
    cos_q, sin_q = _rope_tables(14, [[(h, h), (2 ** 14, 0)], [(h, -h), (-h, h)], [(0, 2 ** 14), (h, h)]])
    q = [[3, 0, 2, -5, 1, 4, -2, 7], [t, 0, -t, 1, 5, -3, 0, t - 1], [-7, 2, 9, 1, t, 0, -1, -t]]
    x = qt(q, [0, 0, 0], [200, 200, 200], [5, 5, 5], 16, True)
    for drop in (1, 14):
        for r in rules():
            out.append(Case(f"rope.drop{drop}.{r}", "rope",
                            f"SPEC §9.2 optional rounding (rope_drop_bits = {drop}), tie rule {r}: table entries "
                            f"+-11585 (odd), so a c - b s = 11585 (a - b) sits on exact ties of 2^{drop} of both "
                            f"signs and parities", ("rope.drop.round",),
                            {"x": x, "positions": arr([0, 1, 2]), "cos_q": cos_q, "sin_q": sin_q, "n_heads": 2,
                             "head_dim": 4, "spec": spec(rounding=r, rope_drop_bits=drop)},
                            lambda a, d=drop: check(oracle.shift_tie(h * t, 14) and oracle.shift_tie(h, 1), "ties"),
                            others(r)))
    big = 2 ** 24
    cb, sb = _rope_tables(24, [[(big, -big)], [(-big, big)], [(0, 0)]])
    xb = qt([[32767, 32767], [-32767, -32767]], [-32769, 32769], [2 ** 31 - 1, 1], [-(2 ** 20), 2 ** 20], 16, True)
    out.append(Case("rope.bound", "rope",
                    "SPEC §9.2 bound at rope_frac_bits 24: |a| = |b| = 2^16 (codes 32767 against zero point -32769, "
                    "and negated), c = -s = +-2^24: |a c - b s| = 2^41 = 2^(17 + f), exact; the last table row "
                    "(position max_pos - 1) and scale extremes", ("rope.bound", "rope.positions"),
                    {"x": xb, "positions": arr([2, 1]), "cos_q": cb, "sin_q": sb, "n_heads": 1, "head_dim": 2,
                     "spec": spec(rope_frac_bits=24)},
                    lambda a: check(2 ** 16 * big * 2 == 2 ** 41, "2^41")))
    return out


# ------------------------------------------------------------------ residual add

def _residual_round_row() -> tuple:
    """The rounding path (SPEC 10 step 3, L + D > 60) made visible: coarse values
    65534 2^30 (L = 46) and (2i + 1) 2^30 at exponent gap D = 20 (sc = 14, sf = 6), fine
    values -32 (= -1/2 of 2^sf: a tie) at two of them.  The sum's range is 32767 2^45, so
    the requantizer pre-shifts by 28 and its fitted scale is exactly 2^17: the fine
    term's rounding (0 or -1) decides whether v' = (2i + 1) 2^16 is a code tie or just below
    one (i = 1000 and 2001: both parities)."""
    ca = [65534, 2001, 4003, 0, 1, 65533, 0, 2]        # centered coarse codes (zero point -32767)
    fb = [0, -1, -1, 0, 0, 0, 1, 0]                    # centered fine codes, mantissa 32
    return ca, fb


def _residual_witness(args):
    a, b = args["a"], args["b"]
    va = [(int(q) - int(a.zp[0])) * int(a.scale.m[0]) for q in a.q[0]]
    vb = [(int(q) - int(b.zp[0])) * int(b.scale.m[0]) for q in b.q[0]]
    D = int(b.scale.k[0]) - int(a.scale.k[0])
    L = max(abs(v) for v in va).bit_length()
    sc = min(D, 60 - L)
    sf = D - sc
    return first_miss(check(sf == 6 and L == 46, f"sf = 6, L = 46 (got {sf}, {L})"),
                      check(oracle.shift_tie(vb[1], sf) and oracle.shift_tie(vb[2], sf), "fine ties"))


def _residual_cases() -> list:
    out = []
    ca, fb = _residual_round_row()
    a = qt([[c - 32767 for c in ca]], [-32767], [2 ** 30], [10], 16, True)
    b = qt([fb], [0], [32], [30], 8, True)
    for r in rules():
        excl = {"half_away": "floor", "floor": "half_away"}.get(r)
        out.append(Case(f"residual_add.round_path.{r}", "residual_add",
                        f"SPEC §10 step 3 (the fine term rounded: L + D = 66 > 60, sf = 6), tie rule {r}: fine "
                        f"values on exact ties of 2^6 whose rounding moves the pre-shifted sum onto or off a code "
                        f"tie of the output requantization (scale exactly 2^17), so the tie rule of the alignment "
                        f"reaches the codes", ("residual.round", "requant.preshift", "requant.codes.fitted"),
                        {"a": a, "b": b, "spec": spec(rounding=r)}, _residual_witness,
                        tuple(x for x in others(r) if x != excl)))
    # the exact alignment's edge: L + D = 60 (exact) and 61 (sf = 1, fine values odd)
    for D, tag in ((14, "exact"), (15, "sf1")):
        out.append(Case(f"residual_add.align_edge.{tag}", "residual_add",
                        f"SPEC §10 step 3 at the edge of exact alignment: L = 46, D = {D} (L + D = {46 + D}: "
                        f"{'exact, sf = 0' if D == 14 else 'sf = 1, odd fine values on ties'})",
                        ("residual.exact", "residual.round"),
                        {"a": a, "b": qt([[1, -1, 3, -3, 0, 5, 7, -7]], [0], [1], [10 + D], 8, True), "spec": spec()},
                        None))
    # an all-zero coarse row (L = 0) at a gap of 70: it takes the fine exponent, nothing rounded
    out.append(Case("residual_add.zero_coarse", "residual_add",
                    "SPEC §10 step 3 with L = 0: the coarse row is all zero and the exponent gap is 70, so the "
                    "common exponent is the fine one (sc = 0, sf = 0) and the odd fine values stay exact; a "
                    "second row with both operands zero", ("residual.zero_coarse", "requant.zero"),
                    {"a": qt([[0, 0, 0, 0], [0, 0, 0, 0]], [0, 0], [200, 0], [-30, 4], 16, True),
                     "b": qt([[3, 1, -1, 1025], [0, 0, 0, 0]], [0, 0], [255, 200], [40, 4], 16, True), "spec": spec()},
                    None))
    # requantization ties of the sum (scale exactly 2): a = the tie row, b = 0 at the same exponent
    row = [2 * x for x in [32767]] + SYM_TIES[1:]
    for r in rules():
        out.append(Case(f"residual_add.ties.{r}", "residual_add",
                        f"SPEC §10 step 5, tie rule {r}: the sum {row} at a common exponent (a is the coarse "
                        f"operand on an exponent tie) requantized to 16 bits with scale exactly 2: exact ties of "
                        f"both signs and parities", ("residual.requant", "requant.codes.fitted"),
                        {"a": exact([row], [1], [0]), "b": qt([[0] * len(row)], [0], [77], [0], 8, True),
                         "spec": spec(rounding=r)}, None, others(r)))
    out.append(Case("residual_add.saturate_k4", "residual_add",
                    "SPEC §10 / §15 the sum's scale saturates (k_bits 4, overflow saturate: counted in "
                    "scale_saturated); residual_bits 8", ("residual.kmin", "requant.kmin"),
                    {"a": qt([[32767, -32767, 5], [1, 0, -1]], [0, 0], [2 ** 31 - 1, 1], [-100, 30], 16, True),
                     "b": qt([[-32767, 32767, 9], [1, 1, 1]], [0, 0], [2 ** 31 - 1, 3], [-100, 31], 16, True),
                     "spec": spec(k_bits=4, overflow="saturate", residual_bits=8)}, None))
    out.append(Case("residual_add.bound", "residual_add",
                    "SPEC §10 step 1 bound: |q - zp| = 2^16 - 1 (zero points +-32768) and m = 2^31 - 1: "
                    "|v| < 2^47; exponents +-2^20 (D = 2^21, L = 47: sf = 2^21 - 13)", ("residual.bound", "residual.round"),
                    {"a": qt([[32767, -32767, 0]], [-32768], [2 ** 31 - 1], [-(2 ** 20)], 16, True),
                     "b": qt([[-32767, 32767, 1]], [32768], [2 ** 31 - 1], [2 ** 20], 16, True),
                     "spec": spec(k_bits=16, overflow="saturate")}, None))
    return out


# ------------------------------------------------------------------ DI-SwiGLU

def _odd_T_scales() -> list:
    """Gate scales (m, 24) whose DI-Exp unit T is odd, in [2^15 + 1, 40959], the same under
    every tie rule, one with T = 1 and one with T = 3 mod 4: then T + e = 2^16 for
    e = 2^16 - T, which z = +-(4T - 2^17) produces, and the sigmoid is an exact tie
    (B = 15, no guard bits)."""
    found = {}
    for m in range(300, 600):
        T = unit(m, 24, "floor")[0]
        if T == unit(m, 24, "half_up")[0] and T % 2 and 2 ** 15 < T <= 40959 and unit(m, 24, "floor")[1] == 0:
            found.setdefault(T % 4, (m, T))
        if len(found) == 2:
            return [found[1], found[3]]
    raise AssertionError("no odd T found")


def _swiglu_rows() -> tuple:
    (m_a, Ta), (m_b, Tb) = _odd_T_scales()
    za, zb = 4 * Ta - 2 ** 17, 4 * Tb - 2 ** 17
    gate = [[za, -za, 0, 1, -1, -5, 100, -100],            # sigmoid ties at +-za (T = 1 mod 4)
            [zb, -zb, 3, -3, 0, 9, -9, 2],                  # and at +-zb (T = 3 mod 4)
            [5, -5, 1, 0, 2, -2, 7, -7],                    # refit tie (m1 m2 odd, even floor)
            [5, -5, 1, 0, 2, -2, 7, -7],                    # refit tie (odd floor)
            [4, -4, 1, 0, 9, 8, 7, 6],                      # dead row (up scale m = 0)
            [-1, -5, -9, -200, -3, -32767, -2, -4],         # all negative (rowmax: M = 0)
            [32767, 1, -1, 0, 5, -5, 100, 7]]               # rowmax collapse (T = 1: e2 = 0)
    gm = [m_a, m_b, 16385, 16385, 200, 250, 200]
    gk = [24, 24, 10, 10, 12, 14, 8]
    up = [[3, 5, -7, 1, 2, -1, 9, 4]] * 7
    um = [200, 231, 16385, 16387, 0, 180, 190]
    uk = [5, -3, 2, 2, 4, 6, 3]
    return gate, gm, gk, up, um, uk, (Ta, Tb)


def _swiglu_witness(args):
    gate, gm, gk, up, um, uk, (Ta, Tb) = _swiglu_rows()
    ea = mf(gm[0])
    return first_miss(check((Ta + (2 ** 16 - Ta)) == 2 ** 16 and Ta % 4 == 1 and Tb % 4 == 3, "T + e = 2^16"),
                      check(unit(gm[0], 24, "half_up") == (Ta, 0) and ea > 0, "T of row 0"),
                      check(oracle.is_tie(Ta << 15, 2 ** 16), "the sigmoid tie"),
                      check((16385 * 16385) % 2 == 1 and 2 ** 28 < 16385 * 16387 < 2 ** 29, "odd products"))


def _swiglu_cases() -> list:
    out = []
    gate, gm, gk, up, um, uk, _ = _swiglu_rows()
    g = qt(gate, [0] * 7, gm, gk, 16, True)
    u = qt(up, [0] * 7, um, uk, 8, True)
    for frame in ("stable", "rowmax"):
        for r in rules():
            out.append(Case(f"di_swiglu.ties.{frame}.{r}", "di_swiglu",
                            f"SPEC §7.2 ({frame} frame, B = 15, no guard bits), tie rule {r}: gate scales with an "
                            f"odd DI-Exp unit T and z = +-(4T - 2^17), so T + e = 2^16 and the sigmoid divide is an "
                            f"exact tie (T = 1 and 3 mod 4); mantissa products 16385^2 and 16385 * 16387 (odd, in "
                            f"(2^28, 2^29)) refitted to 28 bits on a tie; a dead row (up scale 0); an all-negative "
                            f"row; a row whose T = 1 makes the rowmax frame collapse (0/0 -> 0)",
                            ("swiglu.sigmoid.round", "swiglu.refit", "swiglu.dead", "swiglu.rowmax.M",
                             "swiglu.rowmax.zero"),
                            {"gate": g, "up": u, "alpha_inv": None, "alpha_k": 0,
                             "spec": spec(rounding=r, sigmoid_frame=frame, sigmoid_guard_bits=0)},
                            _swiglu_witness, others(r, True)))
    # bounds: |a1| = |a2| = 2^16 - 1, alpha mantissas 2^24 with alpha_k 48, guard 16, B = 24
    gb = qt([[65535, 0, 1], [0, 65535, 0]], [0, 65535], [2 ** 28, 1], [-(2 ** 18), 2 ** 18], 16, False)
    ub = qt([[65535, 65535, 3], [0, 1, 65535]], [0, 0], [2 ** 28, 7], [2 ** 18, -(2 ** 18)], 16, False)
    for frame in ("stable", "rowmax"):
        out.append(Case(f"di_swiglu.bound.{frame}", "di_swiglu",
                        f"SPEC §7.4 bounds ({frame} frame): |a1| = |a2| = 2^16 - 1, 1/alpha mantissas 2^24 with "
                        f"alpha_k = 48, guard bits 16 (|z| ~ 2^56), B = 24 (T 2^B <= 2^54), scale mantissas 2^28 "
                        f"(m1 m2 = 2^56, refitted) and exponents +-2^18", ("swiglu.bound", "swiglu.refit"),
                        {"gate": gb, "up": ub, "alpha_inv": arr([2 ** 24, 1, 2 ** 24]), "alpha_k": 48,
                         "spec": spec(sigmoid_frame=frame, sigmoid_guard_bits=16, sigmoid_bits=24)}, None))
    # unsigned 8-bit gates (the kernels' per-code sigmoid table) under the default and the paper spec
    rng_g = [[(7 * i + 3 * j) % 256 for j in range(300)] for i in range(3)]
    rng_u = [[(11 * i + 5 * j) % 256 for j in range(300)] for i in range(3)]
    from ..options import Spec
    for name, sp in (("default", spec()), ("paper", spec(Spec.paper()))):
        out.append(Case(f"di_swiglu.codes8.{name}", "di_swiglu",
                        f"SPEC §7.2 on 8-bit asymmetric gate/up codes covering all 256 gate codes ({name} spec: "
                        f"{'stable frame, 8 guard bits' if name == 'default' else 'rowmax frame, no guard bits'})",
                        ("swiglu.guard",),
                        {"gate": qt(rng_g, [128, 0, 255], [181, 255, 128], [9, 4, 12], 8, False),
                         "up": qt(rng_u, [100, 3, 250], [200, 140, 255], [7, 6, 11], 8, False),
                         "alpha_inv": None, "alpha_k": 0, "spec": sp}, None))
    return out


def _embed_cases() -> list:
    out = []
    V = 5
    t8 = np.array([[127, -127, 0, 1], [5, 6, 7, 8], [-1, -2, -3, -4], [0, 0, 0, 0], [-127, 127, 64, -64]], np.int8)
    out.append(Case("embed.ends", "embed",
                    "SPEC §11 the gather at the table's ends: ids 0 and V - 1, repeated, an all-zero row (m = 0), "
                    "codes +-127, row scales m = 2^31 - 1 and exponents +-2^20", ("embed.gather",),
                    {"ids": arr([[0, 4, 4], [3, 0, 2]]), "table_q": t8,
                     "table_m": arr([2 ** 31 - 1, 1, 200, 0, 255]), "table_k": arr([2 ** 20, -(2 ** 20), 7, 0, 9]),
                     "bits": 8}, lambda a: check(int(a["ids"].max()) == V - 1, "id V - 1")))
    t16 = np.array([[32767, -32767], [1, -1]], np.int16)
    out.append(Case("embed.bits16", "embed", "SPEC §11 a 16-bit table (int16 codes +-32767)", ("embed.gather",),
                    {"ids": arr([1, 0, 1]), "table_q": t16, "table_m": arr([3, 5]), "table_k": arr([1, 2]),
                     "bits": 16}, None))
    return out


def cases() -> list:
    return _rope_cases() + _residual_cases() + _swiglu_cases() + _embed_cases()
