"""Stress records of the probabilities' width into PV (``Widths.pv_bits``, docs/SPEC.md
section 14.2): the ``p`` step (probabilities folded with the value scales, requantized per
row) at P = 8 and 15 bits on exact ties under every tie rule, and PV at its int32 bound with
P-bit probability codes: attained exactly at the longest context S = (2^31 - 1) //
((2^P - 1)(2^A - 1)) for A = 8 and 6 at P = 15, and one position more refused."""
from __future__ import annotations

from .. import oracle
from ..attention import I32_MAX, pv_max_context
from .core import Case, arr, check, dy, first_miss, others, rules, spec

#: (A, P) pairs whose longest context a record attains; S stays small enough for a dump
EDGES = ((8, 15), (6, 15))


def _p_row(P: int) -> list:
    """A row of folded probabilities (non-negative) whose range is 2Q (Q = 2^P - 1), so the
    fitted scale is exactly 2 units per code: the odd values 1, 3, 5, 7 and 2Q - 1 are
    exact ties (codes 0.5, 1.5, 2.5, 3.5, Q - 0.5), the zero point 0."""
    Q = 2 ** P - 1
    return [2 * Q, 1, 3, 0, 5, 2 * Q - 1, 7, 2]


#: a row of realistic folded probabilities p m_v 2^16, past requant's 32-bit pre-shift
WIDE_ROW = [0, 3, 977, 40960, 65535 * 181 << 16, 12345678, 2 ** 40 + 1, 7]


def cases() -> list:
    out = []
    for P in (8, 15):
        row = _p_row(P)
        Q = 2 ** P - 1

        def wit(a, row=row, Q=Q, P=P):
            sc, zp, codes, ties = oracle.requant_row(row, 1, a["scale_in"].k.tolist()[0], P, False, a["spec"])
            return first_miss(check(max(row) - min(row) == 2 * Q, "R = 2Q: scale exactly 2"),
                              check(zp == 0, "zero point 0"), check(sum(ties) >= 5, f"ties {ties}"))
        for r in rules():
            out.append(Case(f"pv.wide.p{P}.{r}", "requant_rows",
                            f"SPEC §14.2 step 10 at pv_bits = {P}, tie rule {r}: a row of folded probabilities "
                            f"with range 2Q = {2 * Q} (scale exactly 2 units per code), so 1, 3, 5, 7 and "
                            f"2Q - 1 sit on exact ties, zero point 0; a second row of realistic p m_v 2^16 "
                            f"values past the 32-bit pre-shift", ("pv.width", "requant.codes.fitted"),
                            {"v": arr([row, WIDE_ROW]), "scale_in": dy([1, 1], [35, 35]), "bits": P,
                             "symmetric": False, "spec": spec(rounding=r), "name": "p"},
                            wit, others(r, nonneg=True)))
    for A, P in EDGES:
        S = pv_max_context(A, P)
        out.append(_pv_edge(f"pv.wide.bound.a{A}p{P}", A, P, S, None))
    A, P = EDGES[0]
    out.append(_pv_edge(f"pv.wide.refused.a{A}p{P}", A, P, pv_max_context(A, P) + 1, "IntsimOverflowError"))
    return out


def _pv_edge(name: str, A: int, P: int, S: int, error) -> Case:
    """PV over S positions, two query heads on one kv head (head 0 every probability code
    2^P - 1, head 1 alternating 2^P - 1 and 0), values +(2^A - 1) and -(2^A - 1): head 0's
    sums are S (2^P - 1)(2^A - 1) exactly."""
    tp, tv = 2 ** P - 1, 2 ** A - 1
    pc = arr([[[tp] * S], [[tp if j % 2 == 0 else 0 for j in range(S)]]])      # [H=2, T=1, S]
    vc = arr([[[tv, -tv]] for _ in range(S)])                                     # [S, Hkv=1, hd=2]
    refused = error is not None
    what = (f"one position past the longest context at A = {A}, P = {P} (S = {S}): S (2^P - 1)(2^A - 1) = "
            f"{S * tp * tv} > 2^31 - 1, refused naming the op") if refused else \
        (f"the longest context at A = {A}, P = {P}: S = {S}, |acc| = S (2^P - 1)(2^A - 1) = {S * tp * tv} "
         f"<= 2^31 - 1, attained exactly; two query heads on one kv head")

    def wit(a, S=S, refused=refused):
        return check((S * tp * tv > I32_MAX >= (S - 1) * tp * tv) if refused else
                     (S * tp * tv <= I32_MAX < (S + 1) * tp * tv), "at the edge")
    return Case(name, "pv", f"SPEC §14.2 PV's int32 bound with P-bit probabilities: {what}",
                ("pv.wide_refused",) if refused else ("pv.wide_bound", "attn.gqa"),
                {"pc": pc, "vc": vc}, wit, expect_error=error)
