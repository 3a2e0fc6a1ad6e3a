"""Stress records of MixLLM's two-step group scales (docs/SPEC.md section 4.9,
``fold_two_step``): converter-shaped W4 weights whose canonical u span 8 bits, the inner
sum's generic bound attained exactly, and zero-point rows at A = W = U = 8 on both sides of
2^31 - 1 (the SPEC's int32 table: K = 129 inside, 130 past it).  Appended after every other
generator, so every earlier record file is unchanged."""
from __future__ import annotations

import numpy as np

from .. import oracle
from ..matmul import QWeight, p_bound
from .core import Case, Rng, arr, check, first_miss

I32 = 2 ** 31 - 1


def _acc_xs(xq, zx, q, G):
    """Section 4.2 step 2 in Python ints for one token: acc[n][g], xs[g]."""
    K = len(xq)
    xc = [int(x) - int(zx) for x in xq]
    acc = [[sum(xc[j] * int(row[j]) for j in range(g, g + G)) for g in range(0, K, G)] for row in q]
    return acc, [sum(xc[g:g + G]) for g in range(0, K, G)]


def _args(xq_rows, zx, q, m, b, G, W, A):
    w = QWeight(np.array(q, dtype=np.uint8), W, G, arr(m), arr(b), 0)
    accs, xss = zip(*(_acc_xs(x, z, q, G) for x, z in zip(xq_rows, zx)))
    return {"acc": arr(list(accs)), "xs": arr(list(xss)), "w": w, "a_bits": A}


def _oracle(a) -> list:
    """(inner, P) of every token by the oracle."""
    w = a["w"]
    return [oracle.two_step_fold(acc, xs, w.m.tolist(), w.b.tolist())
            for acc, xs in zip(a["acc"].tolist(), a["xs"].tolist())]


def _random_case() -> Case:
    rng = Rng(94)
    N, G, ng, T, W, A = 6, 8, 4, 3, 4, 8
    K = G * ng
    c = [rng.int(1, 2 ** 16) for _ in range(N)]
    u = [[255] + [rng.int(0, 255) for _ in range(ng - 1)] for _ in range(N)]
    zp = [[rng.int(0, 15) for _ in range(ng)] for _ in range(N)]
    q = [[rng.int(0, 15) for _ in range(K)] for _ in range(N)]
    m = [[c[n] * u[n][g] for g in range(ng)] for n in range(N)]
    b = [[-m[n][g] * zp[n][g] for g in range(ng)] for n in range(N)]
    xq = [[rng.int(0, 255) for _ in range(K)] for _ in range(T)]
    zx = [rng.int(0, 255) for _ in range(T)]

    def wit(a):
        got = _oracle(a)
        one = [[sum(int(mm) * ac + int(bb) * x for mm, bb, ac, x in zip(mr, br, accr, a["xs"].tolist()[t]))
                for mr, br, accr in zip(m, b, a["acc"].tolist()[t])] for t in range(T)]
        return first_miss(check(all(P == o for (_, P), o in zip(got, one)), "P = the one-step fold"),
                          check(max(max(r) for r in np.array(a["w"].m).tolist()) > 2 ** 16, "m past 16 bits"),
                          check(any(i != p for inner, P in got for i, p in zip(inner, P)), "c > 1 somewhere"))
    return Case("fold_two_step.w4", "fold_two_step",
                "SPEC §4.9: converter-shaped W4 zero-point weights, m = c u with c up to 2^16 and u up to 255 "
                "(8 bits, the largest group of every row), A = 8, three tokens: inner and P = c inner, P the "
                "one-step fold's", ("twostep.fold",), _args(xq, zx, q, m, b, G, W, A), wit)


def _bound_case() -> Case:
    K, G, beta = 8, 4, 255 ** 2 + 1
    q = [[255] * K]
    a = _args([[255] * K, [255] * K], [0, 255], q, [[3 * 255] * 2], [[3 * beta] * 2], G, 8, 8)

    def wit(a):
        (inner, _), (zero, _) = _oracle(a)
        return first_miss(check(inner == [p_bound(K, 8, 8, 255, beta)], f"inner {inner} = the bound"),
                          check(zero == [0], "a token at its zero point gives 0"))
    return Case("fold_two_step.bound", "fold_two_step",
                "SPEC §4.9 bound: an offset-form row with canonical u = 255, beta = 255^2 + 1 (c = 3), every "
                "x_q - zx = 255 and q = 255 at K = 8: inner = K (2^A - 1)((2^W - 1) max u + max |beta|) exactly",
                ("twostep.bound",), a, wit)


def _int32_cases() -> list:
    out = []
    for K in (129, 130):
        u = [255 if g % 2 == 0 else 254 for g in range(K)]
        a = _args([[255] * K], [0], [[255] * K], [[7 * x for x in u]], [[0] * K], 1, 8, 8)
        want = 255 * 255 * sum(u)

        def wit(a, want=want, K=K):
            ((inner, P),) = _oracle(a)
            return first_miss(check(inner == [want] and P == [7 * want], "inner = 255^2 sum u"),
                              check((want > I32) == (K == 130), "past 2^31 - 1 exactly at K = 130"))
        out.append(Case(f"fold_two_step.int32.k{K}", "fold_two_step",
                        f"SPEC §4.9 int32 table at A = W = U = 8 (K <= 129): a zero-point row, one column a "
                        f"group, u alternating 255 and 254 (gcd 1: canonical), q = 255, zp = 0, x_q - zx = 255, "
                        f"K = {K}: inner = {want} {'>' if want > I32 else '<='} 2^31 - 1",
                        ("twostep.int32",), a, wit))
    return out


def cases() -> list:
    return [_random_case(), _bound_case()] + _int32_cases()
