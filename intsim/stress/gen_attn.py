"""Stress records of attention's own pieces (docs/SPEC.md section 14): the scale fold on
exact ties under each tie rule at each of the graph's guards, with masked columns that
would move the reference exponent and a fully masked row, the fold's bound, and QK^T / PV
at their int32 bounds with grouped-query heads whose kv head is h // (H / Hkv)."""
from __future__ import annotations

import numpy as np

from .. import oracle
from ..attention import GUARD_K, GUARD_O, GUARD_V
from .core import Case, Rng, arr, check, others, rules, spec


def _fold_rows(G: int) -> tuple:
    """Rows whose columns sit G + 1 exponents above the row's coarsest visible one, so
    (v m) 2^G / 2^(G + 1) = v m / 2: exact ties for odd v m (both signs, both parities);
    a masked column with a far smaller exponent (it must not become kref); a column
    70 exponents finer (shift >= 63); a fully masked row."""
    vals = [[9, 5, 3, -5, -3, 7, 1, -1, 123, 77], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]]
    m = [[1, 1, 1, 1, 1, 1, 1, 3, 5, 1], [1] * 10]
    k = [[0, G + 1, G + 1, G + 1, G + 1, G + 1, G + 1, G + 1, -50, 70], [0] * 10]
    vis = [[True] * 8 + [False, True], [False] * 10]
    return vals, m, k, vis


def cases() -> list:
    out = []
    for G in sorted({GUARD_K, GUARD_V, GUARD_O, 0}):
        vals, m, k, vis = _fold_rows(G)
        for r in rules():
            out.append(Case(f"fold_scales.ties.g{G}.{r}", "fold_scales",
                            f"SPEC §14 the scale fold, guard {G}, tie rule {r}: columns G + 1 exponents above the "
                            f"row's coarsest visible one, so rnd((v m) 2^G / 2^(G+1)) is an exact tie for odd v m "
                            f"of both signs and parities; a masked column with k = -50 (kref is over visible columns "
                            f"only); a column 70 exponents finer (shift >= 63: 0, -1 under floor); a fully masked row "
                            f"(zeros, kref 0)", ("fold.round", "fold.mask", "rnd.shift.far"),
                            {"vals": arr(vals), "m": arr(m), "k": arr(k), "guard": G,
                             "visible": arr(vis, np.bool_), "spec": spec(rounding=r), "name": "vals"},
                            lambda a, G=G: check(oracle.shift_tie(5 << G, G + 1) and oracle.shift_tie(-3 << G, G + 1),
                                                 "ties"), others(r)))
    # the proof allows |v m| 2^G up to 2^62 - 1; a dump's exact values stop at 2^61 - 1
    # (QTensor.exact's 62-bit container), so the record goes to 2^61 - 2^16
    lim = ((2 ** 61) >> GUARD_K) - 1
    out.append(Case("fold_scales.bound", "fold_scales",
                    "SPEC §14 the fold's bound (checked as max|v| max m): |v m| 2^16 = (2^45 - 1) 2^16, next to "
                    "the largest exact value a dump holds (2^61 - 1; the proof allows 2^62 - 1), m = 1, exponents "
                    "40 apart (the finer ones rounded)", ("fold.bound",),
                    {"vals": arr([[lim, -lim, 2 ** 23 + 1, 0]]), "m": arr([[1, 1, 1, 1]]),
                     "k": arr([[0, 40, 7, 3]]), "guard": GUARD_K, "visible": None, "spec": spec(), "name": "vals"},
                    lambda a: check((lim << GUARD_K) + (1 << GUARD_K) == 2 ** 61, "at the bound")))
    # QK^T and PV: int32 accumulators at their bounds, grouped-query heads (H = 4, Hkv = 2)
    e = 2 ** 15 - 1
    qc = arr([[[e, e], [e, -e], [1, 2], [-e, -e]]])                       # [T=1, H=4, hd=2]
    kc = arr([[[e, e], [-3, 5]], [[-e, e], [e, -e]]])                      # [S=2, Hkv=2, hd=2]
    out.append(Case("qk_scores.bound", "qk_scores",
                    "SPEC §14 QK^T at its int32 bound: hd = 2, |q|, |k| = 2^15 - 1: |acc| = 2 (2^15 - 1)^2 = "
                    "2147352578 <= 2^31 - 1; four query heads on two kv heads (head h reads kv head h // 2)",
                    ("qk.bound", "attn.gqa"), {"qc": qc, "kc": kc},
                    lambda a: check(2 * e * e <= 2 ** 31 - 1 < 3 * e * e, "the bound")))
    pc = arr([[[e, e]], [[e, 0]], [[1, e]], [[0, 0]]])                     # [H=4, T=1, S=2]
    vc = arr([[[e, -e, 3], [1, 2, 3]], [[e, e, -e], [-e, 7, 0]]])          # [S=2, Hkv=2, hd=3]
    out.append(Case("pv.bound", "pv",
                    "SPEC §14 PV at its int32 bound: S = 2, |p|, |v| = 2^15 - 1; grouped-query heads",
                    ("pv.bound", "attn.gqa"), {"pc": pc, "vc": vc}, None))
    rng = Rng(5)
    T, S, H, Hkv, hd = 3, 19, 4, 2, 16
    q2 = arr([[[rng.int(-255, 255) for _ in range(hd)] for _ in range(H)] for _ in range(T)])
    k2 = arr([[[rng.int(-255, 255) for _ in range(hd)] for _ in range(Hkv)] for _ in range(S)])
    p2 = arr([[[rng.int(0, 255) for _ in range(S)] for _ in range(T)] for _ in range(H)])
    out.append(Case("qk_scores.gqa", "qk_scores", "SPEC §14.1 step 6: QK^T with hd = 16, H = 4 on Hkv = 2 "
                    "(distinct kv heads: h // 2, not h mod 2)", ("attn.gqa",), {"qc": q2, "kc": k2}, None))
    out.append(Case("pv.gqa", "pv", "SPEC §14.1 step 11: PV over 19 positions, hd = 16, H = 4 on Hkv = 2",
                    ("attn.gqa",), {"pc": p2, "vc": k2}, None))
    return out
