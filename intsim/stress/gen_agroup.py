"""Stress records of group-wise activations (docs/SPEC.md section 4.8, ``a_group``):
the per-group refinement exponent at 0, in between and at its cap E, the group codes and
zero points on exact ties under each tie rule, the fold at its proven bound 2^E times
step 3's, the three nestings of weight and activation groups (one with a short last
group), and the rows that keep per-token codes (a zero row, a saturated scale).
Appended after every other generator, so every earlier record file is unchanged."""
from __future__ import annotations

from .. import oracle
from ..matmul import A_GROUP_EMAX, B_LIMIT, M_LIMIT, QWeight, p_bound
from .core import Case, arr, check, dy, exact, first_miss, others, rules, spec

E = A_GROUP_EMAX


def _P(args) -> list:
    """P of a record in Python integers: the oracle's group codes, then
    sum_j (x_q - zg) 2^(E - e) (m q + b) over the weight's groups."""
    x, w, A, Ga = args["x"], args["w"], args["a_bits"], args["a_group"]
    K, Gw = w.q.shape[1], w.group_size
    out = []
    for row, mx, kx in zip(x.centered().tolist(), x.scale.m.tolist(), x.scale.k.tolist()):
        _, codes, zg, eg = oracle.requant_groups_row(row, mx, kx, A, Ga, E, args["spec"])
        ga = min(Ga, K)
        out.append([sum(((c - zg[j // ga]) * (int(w.m[n, j // Gw]) * int(w.q[n, j]) + int(w.b[n, j // Gw])))
                        << (E - eg[j // ga]) for j, c in enumerate(codes)) for n in range(w.q.shape[0])])
    return out


def _exps(args) -> list:
    x = args["x"]
    return [oracle.requant_groups_row(r, mx, kx, args["a_bits"], args["a_group"], E, args["spec"])[3]
            for r, mx, kx in zip(x.centered().tolist(), x.scale.m.tolist(), x.scale.k.tolist())]


def _eye(n: int) -> QWeight:
    return QWeight(arr([[1 if i == j else 0 for j in range(n)] for i in range(n)], "uint8"), 8, n,
                   arr([[1]] * n), arr([[0]] * n), 0)


#: one massive channel in the first group, a quiet second group, an all-zero third group
REFINE_ROW = [-240, 0, 225, 232, 3, -2, 1, 0, 0, 0, 0, 0]
#: scale exactly 2^12 per code at A = 4 (R = 15 * 2^12); the second group refines by 2^E
#: to 16 per code: 8, 24, -40, 56 and the zero point 40 / 16 sit on exact ties
TIE_ROW = [-30720, 30720, 0, 0, 8, 24, -40, 56]


def cases() -> list:
    out = []

    def refine_wit(a):
        _, codes, zg, e = oracle.requant_groups_row(REFINE_ROW, 1, 0, 4, 4, E, a["spec"])
        want = [(c - zg[j // 4]) << (E - e[j // 4]) for j, c in enumerate(codes)]
        return first_miss(check(e[0] == 0 < e[1] < E and e[2] == E and zg[2] == 0, f"exponents {e}: 0, between, E"),
                          check(_P(a) == [want], "P = the centred codes shifted by E - e"))
    out.append(Case("a_group.refine", "di_matmul_acc",
                    f"SPEC §4.8 step 1: activation groups of 4 over the row {REFINE_ROW} at A = 4: the "
                    f"massive-channel group keeps e = 0, the quiet group refines (0 < e < {E}), the zero "
                    f"group takes e = E = {E} with zero point 0; identity weights put each centred code, "
                    f"shifted by E - e, into P", ("agroup.exp", "matmul.in"),
                    {"x": exact([REFINE_ROW], [1], [0]), "w": _eye(12), "a_bits": 4, "spec": spec(),
                     "a_group": 4}, refine_wit))
    for r in rules():
        def tie_wit(a):
            sc, codes, zg, eg = oracle.requant_groups_row(TIE_ROW, 1, 0, 4, 4, E, a["spec"])
            g = [x * 2 ** (sc.e + eg[1]) for x in TIE_ROW[4:]]
            return first_miss(check(eg == [0, E] and sc.m == 128, f"exponents {eg}, m {sc.m}"),
                              check(all(2 * (x % sc.m) == sc.m for x in g), "every code of group 1 a tie"),
                              check(_P(a)[0][4:] == [(c - zg[1]) for c in codes[4:]], "P = the centred codes"))
        out.append(Case(f"a_group.ties.{r}", "di_matmul_acc",
                        f"SPEC §4.8 step 1, tie rule {r}: the row {TIE_ROW} at A = 4, groups of 4: the "
                        f"row scale is exactly 2^12 per code and the second group's 2^-{E} refinement "
                        f"puts each of its codes and its zero point on an exact tie", ("agroup.ties", "matmul.in"),
                        {"x": exact([TIE_ROW], [1], [0]), "w": _eye(8), "a_bits": 4, "spec": spec(rounding=r),
                         "a_group": 4}, tie_wit, others(r)))
    out.append(_p_bound())
    out += _nest_cases()
    rows = [REFINE_ROW, TIE_ROW + [0] * 4, [0] * 12]

    def codes_wit(a):
        got = [oracle.requant_groups_row(r, 1, 0, 4, 4, E, a["spec"]) for r in rows]
        return check([g[3] for g in got][:2] == [[0, 6, E], [0, E, E]] and got[2][3] == [0, 0, 0],
                     f"exponents {[g[3] for g in got]}")
    out.append(Case("requant_groups.rows", "requant_groups",
                    f"SPEC §4.8 step 1 on its own: group codes, zero points and exponents of three rows at "
                    f"A = 4, groups of 4 (the refine row, the tie row padded with a zero group, a zero row: "
                    f"per-token codes, e = 0)", ("agroup.exp", "agroup.ties", "agroup.fallback"),
                    {"v": arr(rows), "scale_in": dy([1, 1, 1], [0, 0, 0]), "bits": 4, "a_group": 4,
                     "spec": spec(), "name": "x"}, codes_wit, others("half_up")))
    return out


def _p_bound() -> Case:
    """The fold at its proven bound 2^E K (2^A - 1)((2^W - 1) max m + max |b|): constant
    rows (every group at e = 0), A = W = 8, m = 2^24 - 1, b = 2^32 - 1, K = 8, groups of 4."""
    K, top = 8, 255
    w = QWeight(arr([[255] * K] * 2, "uint8"), 8, K, arr([[M_LIMIT]] * 2), arr([[B_LIMIT]] * 2), 0)
    bound = p_bound(K, 8, 8, M_LIMIT, B_LIMIT) << E

    def wit(a):
        return first_miss(check(_exps(a) == [[0, 0], [0, 0]], "every group at e = 0"),
                          check(_P(a) == [[bound] * 2, [-bound] * 2], f"P, the bound {bound}"),
                          check(bound <= 2 ** 61 - 1, "inside 2^61 - 1"))
    return Case("a_group.p_bound", "di_matmul_acc",
                f"SPEC §4.8 the fold at its proven bound: K = 8, activation groups of 4 (both at e = 0), "
                f"per-channel weights codes 255, m = 2^24 - 1, b = 2^32 - 1, input codes 255 (zg = 0) and "
                f"0 (zg = 255): |P| = 2^E K (2^A - 1)((2^W - 1) max m + max |b|) = {bound} exactly",
                ("agroup.p.bound", "matmul.p.bound"),
                {"x": exact([[top] * K, [-top] * K], [1, 1], [0, 0]), "w": w, "a_bits": 8, "spec": spec(),
                 "a_group": 4}, wit)


def _nest_cases() -> list:
    out = []
    rows = [[-90, 7, 3, -1, 40, 2, -5, 11], [0] * 8]            # a zero row: per-token fallback
    codes = [[(3 * i + 5 * j) % 16 for j in range(8)] for i in range(3)]
    for name, Gw, Ga, what in (("finer", 4, 2, "activation groups of 2 inside weight groups of 4"),
                               ("coarser", 2, 4, "weight groups of 2 inside activation groups of 4")):
        ng = 8 // Gw
        w = QWeight(arr(codes, "uint8"), 4, Gw, arr([[3 + g + n for g in range(ng)] for n in range(3)]),
                    arr([[-(7 + g) * (n + 1) for g in range(ng)] for n in range(3)]), 0)

        def wit(a):
            return first_miss(check(_exps(a)[1] == [0] * (8 // min(a["a_group"], 8)), "zero row: e = 0"),
                              check(len(set(_exps(a)[0])) > 1, "groups at different exponents"))
        out.append(Case(f"a_group.nest.{name}", "di_matmul_acc",
                        f"SPEC §4.8 steps 2-3: {what} (fold groups of {min(Gw, Ga)}), offsets b and distinct "
                        f"mantissas per weight group, groups at different exponents; a zero row keeps codes 0, "
                        f"zero point 0, e = 0", ("agroup.nest", "agroup.fallback", "matmul.fold"),
                        {"x": exact(rows, [1, 1], [0, 0]), "w": w, "a_bits": 4, "spec": spec(), "a_group": Ga},
                        wit))
    K = 10
    row = [-300, 2, 1, -1, 30, 0, 6, -7, 1, 2]
    wr = QWeight(arr([[(i + 2 * j) % 16 for j in range(K)] for i in range(2)], "uint8"), 4, K,
                 arr([[5], [9]]), arr([[-40], [-72]]), 0)

    def wit_r(a):
        return check(_exps(a)[0][2] > 0 and len(_exps(a)[0]) == 3, f"exponents {_exps(a)[0]}: short group refined")
    out.append(Case("a_group.nest.ragged", "di_matmul_acc",
                    f"SPEC §4.8: per-channel weights (G = K = {K}) with activation groups of 4: the last "
                    f"group has 2 columns and its own exponent", ("agroup.nest",),
                    {"x": exact([row], [1], [0]), "w": wr, "a_bits": 4, "spec": spec(), "a_group": 4}, wit_r))
    big = 2 ** 61 - 1
    srow = [big, -big, 5, 1]

    def wit_s(a):
        sc, _, zg, eg = oracle.requant_groups_row(srow, 2 ** 28, -2 ** 20, 4, 2, E, a["spec"])
        return check(sc.sat and eg == [0, 0], f"saturated {sc.sat}, exponents {eg}")
    out.append(Case("a_group.saturated", "di_matmul_acc",
                    "SPEC §4.8: a row whose per-token scale saturates (overflow = saturate; |v| = 2^61 - 1, "
                    "m_in = 2^28, k_in = -2^20) keeps requant_rows' codes and zero point in every group, e = 0",
                    ("agroup.fallback",),
                    {"x": exact([srow], [2 ** 28], [-2 ** 20]), "w": _eye(4), "a_bits": 4,
                     "spec": spec(overflow="saturate"), "a_group": 2}, wit_s))
    return out
