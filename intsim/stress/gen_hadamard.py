"""Stress records of the online Hadamard rotation of down_proj's input (docs/SPEC.md section
7.6, ``hadamard_rows``): the exact transform (no pre-shift) at blocks of 2, 8 and 64, over
row sizes that are not a power of two (blocks of the largest power of two dividing C), the
growth bound b max|y| attained with the pre-shift's edge beside it, the pre-shift on exact
ties under each tie rule, and the rows at |y| = 2^61 - 1 where the output reaches 2^60.
Appended after every other generator, so every earlier record file is unchanged."""
from __future__ import annotations

from .. import oracle
from ..hadamard import ROT_IN_LIMIT, ROT_K_LIMIT, ROT_OUT_BITS
from .core import Case, Rng, arr, check, dy, first_miss, others, rules, spec

TOP = ROT_IN_LIMIT                                       # 2^61 - 1


def _rot(args) -> list:
    """(out, sh) of every row of a record, by the oracle (the explicit product)."""
    return [oracle.hadamard_row(r, args["block"], args["spec"].rounding) for r in args["y"].tolist()]


def _shifts(want: list):
    """A witness: the oracle's pre-shift of each row is ``want``."""
    def wit(a):
        got = [sh for _, sh in _rot(a)]
        return check(got == want, f"pre-shifts {got}, want {want}")
    return wit


def _scale(n: int, rng: Rng):
    return dy([rng.int(0, 2 ** 31 - 1) for _ in range(n)], [rng.int(-ROT_K_LIMIT, ROT_K_LIMIT) for _ in range(n)])


def _exact_cases() -> list:
    out = []
    rng = Rng(76)
    for b, C in ((2, 6), (8, 24), (64, 128), (4, 12)):
        rows = [rng.ints(C, -(2 ** 40), 2 ** 40), rng.ints(C, -300, 300), [0] * C,
                [rng.int(-5, 5) for _ in range(C - 1)] + [-(2 ** (60 - b.bit_length()))]]
        pow2 = C & (C - 1) == 0
        name = f"hadamard_rows.exact.b{b}" if (b, C) != (4, 12) else "hadamard_rows.blocks.c12"
        out.append(Case(name, "hadamard_rows",
                        f"SPEC §7.6 step 2: blockdiag(H_{b}) over rows of C = {C} ({C // b} blocks"
                        f"{'' if pow2 else f', C not a power of two: b = {b}, the largest power of two dividing it'}), "
                        f"magnitudes to 2^40, a zero row and a row at bitlen + log2 b = 60: sh = 0, exact",
                        ("rot.exact",) + (() if pow2 else ("rot.blocks",)),
                        {"y": arr(rows), "scale": _scale(4, rng), "block": b, "spec": spec()},
                        _shifts([0, 0, 0, 0])))
    return out


def _growth_case() -> Case:
    """Rows of H_16 times v = 2^56 - 1 (bitlen 56 + log2 16 = 60: sh = 0) rotate to 16 v in
    the row's own position; one more row at 2^56 (sh = 1) is the pre-shift's edge."""
    b, v = 16, 2 ** 56 - 1
    H = [[-1 if (i & j).bit_count() & 1 else 1 for j in range(b)] for i in range(b)]
    rows = [[v * h for h in H[i]] for i in range(b)] + [[2 ** 56] + [0] * (b - 1), [v] + [0] * (b - 1)]

    def wit(a):
        got = _rot(a)
        return first_miss(check([sh for _, sh in got] == [0] * b + [1, 0], "pre-shifts 0 ... 0, 1, 0"),
                          check(all(got[i][0][i] == b * v and max(map(abs, got[i][0])) == b * v
                                    for i in range(b)), "row i of H_b rotates to b v at i"),
                          check(got[b][0] == [2 ** 55] * b, "the edge row: 2^56 / 2, spread"))
    return Case("hadamard_rows.growth", "hadamard_rows",
                f"SPEC §7.6 bound: the rows of H_16 times v = 2^56 - 1 (bitlen 56 + 4 = 60: no pre-shift) "
                f"rotate to |out| = 16 v = b max|y| in their own position; beside them 2^56 (61 bits: sh = 1) "
                f"and 2^56 - 1 (sh = 0), the pre-shift's edge", ("rot.growth", "rot.preshift"),
                {"y": arr(rows), "scale": dy([1] * (b + 2), [0] * (b + 2)), "block": b, "spec": spec()}, wit)


#: y / 2 = 2^57 +- 1/2, 2^57 + 3/2 (and negated): ties of both signs and parities at sh = 1;
#: y / 8 = 2^57 + 1/2, ... at sh = 3 (bitlen 61 + log2 4)
TIE_ROWS = [[2 ** 58 + 1, -(2 ** 58 + 1), 2 ** 58 + 3, -(2 ** 58 + 3)],
            [2 ** 60 + 4, -(2 ** 60 + 12), 2 ** 60 + 12, -(2 ** 60 + 4)]]


def _tie_cases() -> list:
    out = []
    for r in rules():
        def wit(a):
            return first_miss(check([sh for _, sh in _rot(a)] == [1, 3], "pre-shifts 1 and 3"),
                              check(all(oracle.shift_tie(x, s) for row, s in zip(TIE_ROWS, (1, 3)) for x in row),
                                    "every element a tie of its row's pre-shift"))
        out.append(Case(f"hadamard_rows.ties.{r}", "hadamard_rows",
                        f"SPEC §7.6 step 1, tie rule {r}: rows at bitlen 59 and 61 with b = 4 (sh = 1 and 3) "
                        f"whose every element sits on an exact tie of y / 2^sh, of both signs and parities",
                        ("rot.preshift.ties", "rot.preshift"),
                        {"y": arr(TIE_ROWS), "scale": dy([3, 2 ** 31 - 1], [ROT_K_LIMIT, -ROT_K_LIMIT + 3]),
                         "block": 4, "spec": spec(rounding=r)}, wit, others(r)))
    return out


def _extreme_cases() -> list:
    out = []
    for b, rows_n in ((4, 5), (1024, 3)):
        sh = 61 + b.bit_length() - 1 - ROT_OUT_BITS
        rows = [[TOP] * b, [-TOP] * b, [TOP, -TOP] * (b // 2), [0] * b, [7] + [-3] * (b - 1)][:rows_n]
        want = [sh, sh, sh, 0, 0][:rows_n]

        def wit(a, want=want):
            got = _rot(a)
            return first_miss(_shifts(want)(a),
                              check(max(abs(x) for o, _ in got for x in o) == 2 ** ROT_OUT_BITS, "|out| = 2^60"))
        out.append(Case(f"hadamard_rows.extremes.b{b}", "hadamard_rows",
                        f"SPEC §7.6 bound: |y| = 2^61 - 1 at b = {b}: sh = {sh}, the pre-shifted value rounds up to "
                        f"2^{61 - sh} and the output reaches 2^60 exactly (inside requant_rows' 2^61 - 1); "
                        f"scale exponents at +-(2^20 - 64)" + ("; a zero row and a small row keep sh = 0"
                                                               if rows_n > 3 else ""),
                        ("rot.bound", "rot.preshift"),
                        {"y": arr(rows), "scale": dy([2 ** 31 - 1] * rows_n, [ROT_K_LIMIT, -ROT_K_LIMIT, 0, 5, -5][:rows_n]),
                         "block": b, "spec": spec()}, wit, ("floor",)))
    return out


def cases() -> list:
    return _exact_cases() + [_growth_case()] + _tie_cases() + _extreme_cases()
