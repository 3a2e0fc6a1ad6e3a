"""Stress records of the LM head and its helpers and of the attention block's scale
product (docs/SPEC.md sections 12, 13, 13.1, 14.1): argmax's ties (the lowest index wins),
the correctly rounded 1/sqrt(d) constant at its limits, ``mul_scales``' refit of a
mantissa product above 2^28 on exact ties under each tie rule, and the head's DI-MatMul at
input widths other than the layers' A (``head_a_bits``): one final-norm row at every width,
input ties at 4 and 6 bits, the fold at its bound."""
from __future__ import annotations

from .. import oracle
from ..matmul import B_LIMIT, M_LIMIT, QWeight, p_bound
from .core import Case, arr, check, dy, exact, first_miss, others, rules, spec
from .gen_requant import ASYM_TIES


def cases() -> list:
    out = []
    big = 2 ** 62
    out.append(Case("argmax.ties", "argmax",
                    "SPEC §13 argmax: rows whose maximum occurs several times (the lowest index wins), all-equal "
                    "and all-negative rows, int64 extremes", ("head.argmax",),
                    {"logits": arr([[5, 9, 9, 1, 9, 0], [-3, -3, -7, -3, -9, -3], [7, 7, 7, 7, 7, 7],
                                    [-big, big - 1, -5, big - 1, 0, big - 2]])},
                    lambda a: check(a["logits"].tolist()[0].count(9) == 3, "a repeated maximum")))
    out.append(Case("argmax.one_column", "argmax", "SPEC §13 argmax over a vocabulary of one (V = 1)",
                    ("head.argmax",), {"logits": arr([[-4], [3]])}, None))
    for d, mb in ((1, 2), (64, 8), (80, 8), (112, 8), (128, 8), (128, 16), (3, 16), (65536, 16)):
        out.append(Case(f"inv_sqrt_dyadic.d{d}.m{mb}", "inv_sqrt_dyadic",
                        f"SPEC §12 1/sqrt(d) correctly rounded to m_bits {mb} (head_dim {d}: "
                        f"{'a power of 4, exact' if d in (1, 64, 65536) else 'rounded to nearest'}; no tie exists)",
                        ("head.inv_sqrt",), {"head_dim": d, "m_bits": mb},
                        lambda a, d=d: check(oracle.isqrt(d) ** 2 != d or (d & (d - 1)) == 0, "head_dim")))
    # products 16385^2 and 16385 * 16387: odd, in (2^28, 2^29): refitted to 28 bits at k = -1, ties
    am, ak = [16385, 16385, 3, 2 ** 14], [9, -4, 0, 30]
    bm, bk = [16385, 16387, 5, 2 ** 14], [2, 1, 7, -30]
    for r in rules():
        out.append(Case(f"mul_scales.refit.{r}", "mul_scales",
                        f"SPEC §14.1 mul_scales, tie rule {r}: a mantissa product above 2^28 refits every row to "
                        f"28 bits; the odd products 16385^2 and 16385 * 16387 sit on exact ties (floors even and "
                        f"odd), 2^28 exactly and 15 are refitted exactly", ("attn.mul_scales",),
                        {"a": dy(am, ak), "b": dy(bm, bk), "spec": spec(rounding=r)},
                        lambda a: check(oracle.is_tie(16385 * 16385, 2) and oracle.is_tie(16385 * 16387, 2),
                                        "ties"), others(r, True)))
    out.append(Case("mul_scales.exact", "mul_scales",
                    "SPEC §14.1 mul_scales with every product at most 2^28: exact (m = m_a m_b, k = k_a + k_b)",
                    ("attn.mul_scales",), {"a": dy([2 ** 14, 255, 0], [3, -9, 5]), "b": dy([2 ** 14, 255, 7], [1, 2, 3]),
                                           "spec": spec()}, None))
    return out + _head_width_cases()


# ------------------------------------------------------------------ the head's input width (SPEC 13.1)

def _head_weight(rows, bits: int = 8) -> QWeight:
    """A head-shaped weight: one scale per output channel (G = K), m = 1, b = 0."""
    K = len(rows[0])
    return QWeight(arr(rows, "uint8"), bits, K, arr([[1]] * len(rows)), arr([[0]] * len(rows)), 0)


def _head_P(args) -> list:
    """P of a head record in Python integers: step 1 (oracle) then the exact fold."""
    x, w = args["x"], args["w"]
    G = w.group_size
    out = []
    for row, mx, kx in zip(x.centered().tolist(), x.scale.m.tolist(), x.scale.k.tolist()):
        _, zx, codes, _ = oracle.requant_row(row, int(mx), int(kx), args["a_bits"], False, args["spec"])
        out.append([sum((c - zx) * (int(w.m[n, j // G]) * int(w.q[n, j]) + int(w.b[n, j // G]))
                        for j, c in enumerate(codes)) for n in range(w.q.shape[0])])
    return out


#: a final-norm row whose two largest channels (225, 232) fall into one input code at
#: A <= 4 and stay apart at A >= 6: with identity weights the logits are the centred codes
HEAD_ROW = [-240, 0, 225, 232]


def _head_width_cases() -> list:
    out = []
    eye4 = [[1 if i == j else 0 for j in range(4)] for i in range(4)]
    for A in (2, 4, 6, 8):
        merged = A <= 4

        def wit(a, merged=merged):
            P = _head_P(a)[0]
            top = max(P)
            return check((P[2] == P[3] == top) if merged else (P[3] == top > P[2]),
                         f"logits {P}: channels 2 and 3 {'merged' if merged else 'apart'}")
        out.append(Case(f"lm_head.width.a{A}", "di_matmul_acc",
                        f"SPEC §13.1 the LM head's input at head_a_bits = {A} (per-channel head weights, "
                        f"G = K): the final-norm row {HEAD_ROW} quantized to {A} bits; the two largest "
                        f"channels {'share one code (the argmax takes the lower index)' if merged else 'stay apart'}",
                        ("head.in_width", "matmul.in"),
                        {"x": exact([HEAD_ROW], [1], [0]), "w": _head_weight(eye4), "a_bits": A, "spec": spec()},
                        wit))
    for A in (4, 6):
        Q = 2 ** A - 1
        row = [v if v < 2 * Q else 2 * Q - 1 for v in ASYM_TIES]        # 509 -> 2Q - 1: R = 2Q
        n = len(row)
        eye = [[1 if i == j else 0 for j in range(n)] for i in range(n)]

        def tie_wit(a, row=row, Q=Q):
            sc, zx, codes, ties = oracle.requant_row(row, 1, 0, a["a_bits"], False, a["spec"])
            return first_miss(check(max(row) - min(row) == 2 * Q, "R = 2Q: scale exactly 2"),
                              check(sum(ties) >= 4, f"ties {ties}"),
                              check(_head_P(a)[0] == [c - zx for c in codes], "P = the centred codes"))
        for r in rules():
            out.append(Case(f"lm_head.in_ties.a{A}.{r}", "di_matmul_acc",
                            f"SPEC §13.1 / §4.2 step 1: the head's input quantized to head_a_bits = {A}, tie rule "
                            f"{r}: the row {row} has range 2Q = {2 * Q} (scale exactly 2 codes), so the zero "
                            f"point and several codes are exact ties; identity per-channel weights put each "
                            f"code into P", ("head.in_ties", "matmul.in", "requant.zp"),
                            {"x": exact([row], [1], [0]), "w": _head_weight(eye), "a_bits": A,
                             "spec": spec(rounding=r)}, tie_wit, others(r)))
    for A in (6, 8):
        out.append(_head_p_bound(A))
    return out


def _head_p_bound(A: int) -> Case:
    """The head's int64 fold at its proven bound for the record's D (SPEC 13.1): one group
    per output channel (G = K = D = 8), input codes 2^A - 1 against zero point 0 and 0
    against 2^A - 1, weight codes 255, m = 2^24 - 1, b = 2^32 - 1: |P| equals the formula."""
    D, W, top = 8, 8, 2 ** A - 1
    w = QWeight(arr([[255] * D] * 2, "uint8"), W, D, arr([[M_LIMIT]] * 2), arr([[B_LIMIT]] * 2), 0)
    bound = D * top * ((2 ** W - 1) * M_LIMIT + B_LIMIT)

    def wit(a):
        return first_miss(check(_head_P(a) == [[bound] * 2, [-bound] * 2], f"P, the bound {bound}"),
                          check(p_bound(D, A, W, M_LIMIT, B_LIMIT) == bound <= 2 ** 61 - 1, "p_bound"))
    return Case(f"lm_head.p_bound.a{A}", "di_matmul_acc",
                f"SPEC §13.1 the head's fold at its proven bound at head_a_bits = {A}: D = G = {D} (per "
                f"output channel), W = 8, input codes {top} (zx = 0) and 0 (zx = {top}), weight codes 255, "
                f"m = 2^24 - 1, b = 2^32 - 1: |P| = D (2^A - 1)((2^W - 1) max m + max |b|) = {bound} exactly",
                ("head.p.bound", "matmul.p.bound"),
                {"x": exact([[top] * D, [-top] * D], [1, 1], [0, 0]), "w": w, "a_bits": A, "spec": spec()}, wit)
