"""Stress records of the LM head's helpers and the attention block's scale product
(docs/SPEC.md sections 12, 13, 14.1): argmax's ties (the lowest index wins), the
correctly rounded 1/sqrt(d) constant at its limits, and ``mul_scales``' refit of a
mantissa product above 2^28 on exact ties under each tie rule."""
from __future__ import annotations

from .. import oracle
from .core import Case, arr, check, dy, others, rules, spec


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
    return out
