"""The pieces every stress generator uses: the :class:`Case` record, a seeded integer
PRNG whose stream never changes, builders of QTensors / Dyadics / Specs, and the witness
helpers that state in Python integers (intsim.oracle) that a stimulus reaches its target.

Integer only (the float scan applies)."""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ..errors import IntsimError
from ..fixedpoint import ROUNDINGS
from ..options import Spec
from ..qtensor import Dyadic, QTensor, dtype_for


class StressError(IntsimError):
    """A stress generator produced a stimulus that misses its target (a bug of the
    generator, or an arithmetic change that moved the target: regenerate and re-check)."""


@dataclass(frozen=True, eq=False)
class Case:
    """One op-level stress record.

    ``name``: the op's name in the suite (unique, dotted: ``requant_rows.tie.fitted.half_up``);
    ``kind``: a key of ``intsim.golden.KINDS``; ``targets``: the SPEC step it is aimed at,
    as the manifest's ``targets`` string ("SPEC §3 codes: ..."); ``sites``: the coverage
    sites it reaches (``intsim.stress.sites.SITES``); ``args``: the call's arguments by
    parameter name (the backend is added by the writer); ``witness``: None or a callable
    ``witness(args)`` returning None when the stimulus reaches its target and otherwise
    what is missing (computed in Python integers, never from the op's own output);
    ``distinct_from``: tie rules under which the output must differ from the recorded one
    when they replace the run's (``spec.rounding``, or a primitive's ``rounding``): the
    tie the record targets reaches its output (checked by :func:`~intsim.stress.suite.rule_check`);
    ``expect_error``: None, or the name of the IntsimError subclass the op must raise on
    this stimulus (a refusal record: no outputs, the error's type and exact message).
    """
    name: str
    kind: str
    targets: str
    sites: tuple
    args: dict
    witness: object = None
    distinct_from: tuple = ()
    expect_error: str | None = None


# ------------------------------------------------------------------ a fixed PRNG

class Rng:
    """splitmix64 in Python integers: a stream fixed by its definition (NumPy's generators
    do not promise the same numbers across versions; a stress suite must regenerate
    byte-identical)."""
    MASK = (1 << 64) - 1

    def __init__(self, seed: int):
        self.state = seed & self.MASK

    def next(self) -> int:
        self.state = (self.state + 0x9E3779B97F4A7C15) & self.MASK
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & self.MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & self.MASK
        return z ^ (z >> 31)

    def int(self, lo: int, hi: int) -> int:
        """A value in [lo, hi] (modulo bias below 2^-40 for spans under 2^24)."""
        span = hi - lo + 1
        v = 0
        for _ in range(1 + span.bit_length() // 48):
            v = (v << 64) | self.next()
        return lo + v % span

    def ints(self, n: int, lo: int, hi: int) -> list:
        return [self.int(lo, hi) for _ in range(n)]


# ------------------------------------------------------------------ builders

def arr(values, dtype=np.int64) -> np.ndarray:
    return np.array(values, dtype=dtype)


def dy(m, k) -> Dyadic:
    return Dyadic(np.array(m, dtype=np.int64), np.array(k, dtype=np.int64))


def qt(q, zp, m, k, bits: int, signed: bool) -> QTensor:
    """A QTensor from nested lists: codes ``q`` (rows x C), per-row ``zp``, ``m``, ``k``."""
    return QTensor(np.array(q, dtype=dtype_for(bits, signed)), np.array(zp, dtype=np.int32),
                   dy(m, k), bits, signed)


def exact(v, m, k) -> QTensor:
    """Exact signed integers with a per-row scale (``QTensor.exact``)."""
    return QTensor.exact(np.array(v, dtype=np.int64), dy(m, k))


def spec(base: Spec | None = None, **kw) -> Spec:
    return replace(base or Spec(), **kw)


def rules():
    """The run's tie rules, in the order of ``Spec.rounding``'s choices."""
    return ROUNDINGS


def others(rule: str, nonneg: bool = False) -> tuple:
    """The tie rules other than ``rule``; ``nonneg``: the rounded values are never
    negative there, so half_up and half_away cannot differ and the partner is left out."""
    pair = {"half_up": "half_away", "half_away": "half_up"}
    return tuple(r for r in ROUNDINGS if r != rule and not (nonneg and pair.get(rule) == r))


def row_list(a) -> list:
    """A 1-d or 2-d array-like as nested Python int lists."""
    return np.asarray(a, dtype=object).tolist()


def check(cond: bool, what: str) -> str | None:
    """A witness step: None when ``cond`` holds, else ``what`` is missing."""
    return None if cond else what


def first_miss(*steps) -> str | None:
    return next((s for s in steps if s is not None), None)
