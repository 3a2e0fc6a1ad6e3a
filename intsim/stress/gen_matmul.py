"""Stress records of DI-MatMul (docs/SPEC.md section 4): output and input requantization
ties under each tie rule (weights chosen so that the exact accumulator P is a designed
row), the int32 group accumulator at its proven bound, group-wise weights with offsets
and mixed row widths, all-zero rows, the narrowest widths, and saturating scales."""
from __future__ import annotations

import numpy as np

from .. import oracle
from ..matmul import B_LIMIT, M_LIMIT, QWeight, acc_bound, p_bound
from .core import Case, Rng, check, exact, first_miss, others, qt, rules, spec
from .gen_requant import ASYM_TIES, SYM_TIES


def qweight(q, m, b, bits: int, group: int, k: int = 0, row_bits=None) -> QWeight:
    return QWeight(np.array(q, dtype=np.uint8), bits, group, np.array(m, dtype=np.int64),
                   np.array(b, dtype=np.int64), k,
                   None if row_bits is None else np.array(row_bits, dtype=np.uint8))


#: x = [1, -254] at scale 1: step 1 maps it exactly to codes [255, 0] with zero point 254
#: (R = 255 = Q), so with groups of one column P_n = m q_n0 + b_n0 - 254 (m q_n1 + b_n1)
X_UNIT = [1, -254]


def _p_weights(p_row):
    """8-bit weights [N, 2], groups of 1, whose P on X_UNIT is ``p_row``: code
    ``p mod 256`` with m = 1 and the offset ``b = p - (p mod 256)`` in the first column."""
    n = len(p_row)
    return qweight([[p % 256, 0] for p in p_row], [[1, 0]] * n, [[p - p % 256, 0] for p in p_row], 8, 1)


def _p_witness(p_row, out_bits, sym):
    """P is the designed row, and its output requantization meets exact ties."""
    def w(args):
        x, wq = args["x"], args["w"]
        sc, zx, codes, _ = oracle.requant_row(x.centered()[0].tolist(), int(x.scale.m[0]), int(x.scale.k[0]),
                                              args["a_bits"], False, args["spec"])
        G = wq.group_size
        P = [sum((c - zx) * (int(wq.m[n, j // G]) * int(wq.q[n, j]) + int(wq.b[n, j // G]))
                 for j, c in enumerate(codes)) for n in range(wq.q.shape[0])]
        sc2, _, _, ties = oracle.requant_row(P, sc.m, sc.k + wq.k, out_bits, sym, args["spec"])
        return first_miss(check(P == list(p_row), f"P = {P}"), check(sum(ties) >= 3, "output ties"))
    return w


def _tie_cases() -> list:
    out = []
    x = exact([X_UNIT], [1], [0])
    for r in rules():
        for mode in ("fitted", "range"):
            sp = spec(rounding=r, requant_mode=mode)
            for sym, row, bits in ((True, SYM_TIES, 8), (False, ASYM_TIES, 8)):
                tag = "sym" if sym else "asym"
                out.append(Case(f"di_matmul.out_ties.{mode}.{tag}.{r}", "di_matmul",
                                f"SPEC §4.2 step 4 (output requantization, {mode} mode, "
                                f"{'symmetric' if sym else 'asymmetric'}), tie rule {r}: the weights make the "
                                f"exact accumulator P = {row}, whose scale is exactly 2 output units: codes "
                                f"on exact ties" + ("" if sym else ", zero point rnd(0.5)"),
                                ("matmul.out", f"requant.codes.{mode}") + (() if sym else ("requant.zp",)),
                                {"x": x, "w": _p_weights(row), "a_bits": 8, "out_bits": bits, "out_symmetric": sym,
                                 "spec": sp}, _p_witness(row, bits, sym), others(r)))
        # step 1: the input's own ties reach P directly (identity weights)
        n = len(ASYM_TIES)
        eye = [[1 if i == j else 0 for j in range(n)] for i in range(n)]
        out.append(Case(f"di_matmul_acc.in_ties.{r}", "di_matmul_acc",
                        f"SPEC §4.2 step 1 (input requantization to A = 8 bits), tie rule {r}: the input row "
                        f"{ASYM_TIES} has scale exactly 2 codes, so its zero point and several codes are exact "
                        f"ties; identity weights put each code into P", ("matmul.in", "requant.codes.fitted",
                                                                         "requant.zp"),
                        {"x": exact([ASYM_TIES], [1], [0]), "w": qweight(eye, [[1]] * n, [[0]] * n, 8, n),
                         "a_bits": 8, "spec": spec(rounding=r)}, None, others(r)))
    return out


def _bound_cases() -> list:
    out = []
    G = 33025                                     # the largest group at A = W = 8
    xs = exact([[255] * G, [-255] * G], [1, 1], [0, 0])
    w = qweight([[255] * G], [[1]], [[0]], 8, G)
    out.append(Case("di_matmul_acc.acc_bound", "di_matmul_acc",
                    "SPEC §4.4 int32 group accumulator at its proven bound: G = 33025, A = W = 8, codes 255, "
                    "zx = 0 (and the negated row, zx = 255): |acc| = G (2^8 - 1)^2 = 2147450625 <= 2^31 - 1",
                    ("matmul.acc.bound",), {"x": xs, "w": w, "a_bits": 8, "spec": spec()},
                    lambda a: check(acc_bound(G, 8, 8) == G * 255 * 255 <= 2 ** 31 - 1 < (G + 1) * 255 * 255,
                                    "G is the largest group")))
    out.append(_p_bound_case())
    # the fold at its widest parameters: m = 2^24 - 1, |b| = 2^32 - 1, groups of 2 over 8 columns
    rng = Rng(41)
    q = [[rng.int(0, 255) for _ in range(8)] for _ in range(4)]
    m = [[2 ** 24 - 1, 1, 2 ** 23, 0], [1, 2 ** 24 - 1, 5, 7], [2 ** 24 - 1] * 4, [0, 0, 0, 0]]
    b = [[-(2 ** 32 - 1), 2 ** 32 - 1, 0, 0], [2 ** 32 - 1, -1, -255 * 5, 3], [-(2 ** 32 - 1)] * 4, [0, 0, 0, 0]]
    x = exact([[255, -255, 1, 0, 128, -128, 77, 255], [0] * 8], [3, 5], [1, -2])
    for r in rules():
        out.append(Case(f"di_matmul.fold_extremes.{r}", "di_matmul",
                        f"SPEC §4.2 step 3 / §4.4: the int64 fold with the widest weight parameters (m = 2^24 - 1, "
                        f"|b| = 2^32 - 1, groups of 2, an all-zero group), an all-zero input row (P = 0, scale "
                        f"m = 0); output 16-bit symmetric, tie rule {r}",
                        ("matmul.fold", "matmul.zero"),
                        {"x": x, "w": qweight(q, m, b, 8, 2, k=-3), "a_bits": 8, "out_bits": 16, "out_symmetric": True,
                         "spec": spec(rounding=r)}, None))
    return out


def _p_bound_case() -> Case:
    """The int64 fold P at its proven bound for the record's own K: every operand at its
    declared extreme (activation codes 255 against zx = 0, and 0 against zx = 255; weight
    codes 255; group mantissas 2^24 - 1; offsets +(2^32 - 1), the sign of m q), so each
    term adds its largest magnitude with one sign and |P| equals the formula exactly."""
    K, G, A, W = 8, 2, 8, 8
    xs = exact([[255] * K, [-255] * K], [1, 1], [0, 0])
    w = qweight([[255] * K, [255] * K], [[M_LIMIT] * (K // G)] * 2, [[B_LIMIT] * (K // G)] * 2, W, G)
    bound = K * (2 ** A - 1) * ((2 ** W - 1) * M_LIMIT + B_LIMIT)

    def wit(args):
        x, wq = args["x"], args["w"]
        P = []
        for row, mx, kx in zip(x.centered().tolist(), x.scale.m.tolist(), x.scale.k.tolist()):
            _, zx, codes, _ = oracle.requant_row(row, int(mx), int(kx), args["a_bits"], False, args["spec"])
            P.append([sum((c - zx) * (int(wq.m[n, j // G]) * int(wq.q[n, j]) + int(wq.b[n, j // G]))
                          for j, c in enumerate(codes)) for n in range(wq.q.shape[0])])
        return first_miss(check(P == [[bound] * 2, [-bound] * 2], f"P = {P}, the bound {bound}"),
                          check(p_bound(K, A, W, M_LIMIT, B_LIMIT) == bound <= 2 ** 61 - 1, "p_bound"),
                          check((wq.m_max, wq.b_absmax) == (M_LIMIT, B_LIMIT), "m and |b| at their limits"))
    return Case("di_matmul_acc.p_bound", "di_matmul_acc",
                f"SPEC §4.4 int64 fold P at its proven bound for the record's K: K = {K}, G = {G}, A = W = 8, "
                f"activation codes 255 (zx = 0) and 0 (zx = 255), weight codes 255, m = 2^24 - 1, "
                f"b = 2^32 - 1: |P| = K (2^A - 1)((2^W - 1) max m + max |b|) = {bound} exactly",
                ("matmul.p.bound",), {"x": xs, "w": w, "a_bits": A, "spec": spec()}, wit)


def _shape_cases() -> list:
    """Narrow widths, mixed row widths, grouped weights in the zero-point form, saturation."""
    out = []
    rng = Rng(7)
    K, N = 16, 6
    rb = [2, 3, 4, 5, 6, 8]
    q = [[rng.int(0, 2 ** rb[n] - 1) for _ in range(K)] for n in range(N)]
    zp = [[rng.int(0, 2 ** rb[n] - 1) for _ in range(K // 4)] for n in range(N)]
    m = [[rng.int(1, 2 ** 16 - 1) for _ in range(K // 4)] for n in range(N)]
    b = [[-mm * z for mm, z in zip(m[n], zp[n])] for n in range(N)]
    x = qt([[rng.int(0, 255) for _ in range(K)] for _ in range(3)], [128, 0, 255], [200, 129, 255], [9, -3, 20], 8,
           False)
    for name, sp in (("default", spec()), ("paper", spec(**_paper())), ("floor", spec(rounding="floor")),
                     ("half_even_m16", spec(rounding="half_even", m_bits=16))):
        out.append(Case(f"di_matmul.groups.{name}", "di_matmul",
                        "SPEC §4.1-4.2: group-wise weights (G = 4) in the zero-point form b = -m zp with 16-bit "
                        f"mantissas and mixed row widths 2..8 (row_bits), W = 8, A = 8, spec {name}",
                        ("matmul.fold", "matmul.row_bits"),
                        {"x": x, "w": qweight(q, m, b, 8, 4, k=11, row_bits=rb), "a_bits": 8, "out_bits": 8,
                         "out_symmetric": False, "spec": sp}, None))
    q2 = [[rng.int(0, 3) for _ in range(8)] for _ in range(3)]
    x2 = exact([[5, -3, 0, 1, -1, 7, -7, 2], [1, 0, 0, 0, 0, 0, 0, -1]], [1, 1], [0, 0])
    for bits, sym in ((2, True), (2, False), (16, True)):
        for r in ("half_up", "half_even"):
            out.append(Case(f"di_matmul.narrow.out{bits}{'s' if sym else 'a'}.{r}", "di_matmul",
                            f"SPEC §4.2 at the narrowest widths: A = 2, W = 2, output {bits} bits "
                            f"{'symmetric' if sym else 'asymmetric'}, tie rule {r}", ("matmul.out", "requant.width"),
                            {"x": x2, "w": qweight(q2, [[3]] * 3, [[-3]] * 3, 2, 8), "a_bits": 2, "out_bits": bits,
                             "out_symmetric": sym, "spec": spec(rounding=r)}, None))
    xs = exact([[2 ** 40, -(2 ** 40), 1, 0], [1, -1, 0, 1]], [2 ** 28, 1], [-(2 ** 19), 2 ** 19])
    out.append(Case("di_matmul.saturate", "di_matmul",
                    "SPEC §4.2 / §15 saturating scales (k_bits 4, overflow saturate): the input scale of row 0 "
                    "needs k far below k_min (in_scale_saturated), row 1 far above k_max (refit); the output "
                    "scale saturates too (out_scale_saturated)", ("requant.kmin", "requant.kmax", "matmul.in"),
                    {"x": xs, "w": qweight([[255, 0, 3, 1], [1, 2, 3, 4]], [[2 ** 24 - 1], [1]], [[0], [5]], 8, 4),
                     "a_bits": 8, "out_bits": 16, "out_symmetric": True,
                     "spec": spec(k_bits=4, overflow="saturate")}, None))
    return out


def _paper() -> dict:
    from ..options import Spec
    return Spec.paper().to_dict()


def cases() -> list:
    return _tie_cases() + _bound_cases() + _shape_cases()
