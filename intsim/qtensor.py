"""Carriers of integer tensors and their scales.

``Dyadic(m, k)``: a scale ``m * 2^-k``; ``m >= 0`` an integer mantissa, ``k`` a signed
exponent applied as a right shift.  Both are int64 arrays (or 0-d arrays), one per
row where the scale is per token.

``QTensor``: integer codes ``q`` of shape (..., C), a zero point ``zp`` and a scale
per row (shape (...)), the width ``bits`` and signedness.  Its real value is
``(q - zp[..., None]) * m * 2^-k`` — a formula for docs and tests; intsim never
evaluates it in floating point.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit

from .errors import IntsimError, check_int, check_int_array, check_range, int_range


@dataclass(frozen=True)
class Dyadic:
    m: np.ndarray
    k: np.ndarray

    def __post_init__(self):
        m = np.asarray(self.m)
        k = np.asarray(self.k)
        for name, v in (("m", m), ("k", k)):
            if v.dtype.kind not in "iu":
                raise IntsimError(f"Dyadic.{name}: expected integers, got dtype {v.dtype}")
        if m.shape != k.shape:
            raise IntsimError(f"Dyadic: m shape {m.shape} != k shape {k.shape}")
        check_range("Dyadic.m", m, 0, 2 ** 31 - 1)
        object.__setattr__(self, "m", m.astype(np.int64, copy=False))
        object.__setattr__(self, "k", k.astype(np.int64, copy=False))

    @property
    def shape(self):
        return self.m.shape

    def as_fraction(self, i=()):
        """Exact rational value (for docs, tests and reports; Python ints, no float)."""
        from fractions import Fraction
        m, k = int(self.m[i]), int(self.k[i])
        return Fraction(m, 2 ** k) if k >= 0 else Fraction(m * 2 ** -k)


def dtype_for(bits: int, signed: bool) -> np.dtype:
    """Smallest NumPy integer dtype that holds ``bits`` (int8..int64, uint8..uint64)."""
    for w in (8, 16, 32, 64):
        if bits <= w:
            return np.dtype(f"{'int' if signed else 'uint'}{w}")
    raise IntsimError(f"bits: {bits} > 64 has no storage dtype")


#: widest code a QTensor holds: 62-bit signed (int64 storage), within requant_rows' |v| bound
MAX_BITS = 62


@dataclass(frozen=True)
class QTensor:
    q: np.ndarray
    zp: np.ndarray
    scale: Dyadic
    bits: int
    signed: bool

    def __post_init__(self):
        check_int("QTensor.bits", self.bits, 2, MAX_BITS)
        check_int_array("QTensor.q", self.q)
        check_int_array("QTensor.zp", np.asarray(self.zp))
        if self.q.ndim < 1:
            raise IntsimError("QTensor.q: needs at least one axis")
        rows = self.q.shape[:-1]
        if np.shape(self.zp) != rows:
            raise IntsimError(f"QTensor.zp: shape {np.shape(self.zp)} != row shape {rows}")
        if self.scale.shape != rows:
            raise IntsimError(f"QTensor.scale: shape {self.scale.shape} != row shape {rows}")
        lo, hi = int_range(self.bits, self.signed)
        check_range("QTensor.q", self.q, lo, hi)

    @property
    def shape(self):
        return self.q.shape

    @classmethod
    def exact(cls, v: np.ndarray, scale: Dyadic) -> "QTensor":
        """Wrap exact signed integers (e.g. an unrequantized product) as a QTensor.

        ``bits`` is the smallest symmetric signed width holding ``max |v|`` (at least
        2, at most 62), storage int64; zero point 0.  Nothing is rounded.
        """
        check_int_array("v", v)
        v64 = v.astype(np.int64, copy=False)
        check_range("v", v64, -(2 ** (MAX_BITS - 1) - 1), 2 ** (MAX_BITS - 1) - 1)
        amax = int(np.abs(v64).max()) if v64.size else 0
        return cls(v64, np.zeros(v64.shape[:-1], dtype=np.int32), scale,
                   max(2, amax.bit_length() + 1), True)

    def centered(self) -> np.ndarray:
        """``q - zp`` per row, int64 (exact)."""
        return self.q.astype(np.int64) - np.asarray(self.zp, dtype=np.int64)[..., None]


# ------------------------------------------------------------------ masked rows (Numba)

@njit(cache=True)
def gather_visible(x, vis, buf):
    """The entries of row ``x`` where ``vis`` is True, in order, into ``buf``; returns
    their number.  The ops with a mask run their row kernels on this compact row."""
    n = 0
    for j in range(x.shape[0]):
        if vis[j]:
            buf[n] = x[j]
            n += 1
    return n


@njit(cache=True)
def scatter_visible(buf, vis, out):
    """The inverse of :func:`gather_visible`: ``out[j]`` takes the next entry of ``buf``
    where ``vis[j]``, and 0 elsewhere."""
    n = 0
    for j in range(out.shape[0]):
        if vis[j]:
            out[j] = buf[n]
            n += 1
        else:
            out[j] = 0
