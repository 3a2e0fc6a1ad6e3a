"""LM head helpers: the integer argmax over the logits and the 1/sqrt(head_dim) constant.

Spec: docs/SPEC.md, LM head and 1/sqrt(d).
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
from numba import njit

from .errors import IntsimError, check_int, check_int_array
from .fixedpoint import _check_backend, _isqrt_ref, bit_length_ref
from .qtensor import Dyadic

#: head_dim accepted by inv_sqrt_dyadic: 4^(k+1) <= 2^(2*(15 + 9) + 2) = 2^50 stays in int64
INV_SQRT_D_LIMIT = 2 ** 16


def _argmax_ref(x):
    return np.argmax(x, axis=-1).astype(np.int64)     # NumPy returns the first maximum


@njit(cache=True)
def _argmax_nb(x):
    rows, V = x.shape
    out = np.empty(rows, dtype=np.int64)
    for i in range(rows):
        best = x[i, 0]
        arg = 0
        for j in range(1, V):
            if x[i, j] > best:                        # strict: a tie keeps the lower index
                best = x[i, j]
                arg = j
        out[i] = arg
    return out


def argmax(logits: np.ndarray, backend: str = "numba") -> np.ndarray:
    """Index of the largest integer logit along the last axis; ties go to the LOWEST index.

    ``logits``: integer array (..., V), V >= 1, any integer dtype (int32 from the LM
    head's DI-MatMul accumulator).  Output int64 (...).  Comparisons only: no rounding,
    no overflow.  (Logits of one row share one scale, so comparing codes compares reals;
    a row whose logits carry per-channel scales must be aligned first.)
    """
    _check_backend(backend)
    check_int_array("logits", logits)
    if logits.ndim < 1 or logits.shape[-1] == 0:
        raise IntsimError(f"logits: needs a non-empty last (vocabulary) axis, got shape {logits.shape}")
    if backend == "reference":
        return _argmax_ref(logits)
    V = logits.shape[-1]
    out = _argmax_nb(np.ascontiguousarray(logits).reshape(-1, V))
    return out.reshape(logits.shape[:-1])


@lru_cache(maxsize=64)   # a per-model constant: computed once per distinct argument
def inv_sqrt_dyadic(head_dim: int, m_bits: int = 8) -> Dyadic:
    """``1/sqrt(head_dim)`` as a dyadic ``m * 2^-k``, correctly rounded to nearest, integer only.

    With ``e = bitlen(head_dim)`` start at ``k = m_bits - 1 + ((e + 1) >> 1)``, which puts
    ``u = 2^k / sqrt(head_dim)`` in ``(2^(m_bits-1), 2^m_bits]``.  Then

        t = isqrt(4^(k+1) // head_dim)      # = floor(2u): floor(sqrt(floor(y))) = floor(sqrt(y))
        m = (t + 1) >> 1                    # = floor(u + 1/2), u rounded to nearest

    and a carry ``m = 2^m_bits`` halves m and decrements k (exact, m even).  No tie can
    occur: ``u = j + 1/2`` would make ``sqrt(head_dim) = 2^(k+1) / (2j + 1)`` an integer,
    forcing ``2j + 1 = 1``, i.e. ``m <= 1 < 2^(m_bits-1)``.  So the result is the nearest
    ``m_bits``-bit dyadic: relative error ``<= 2^-m_bits``; exact when head_dim is a power
    of 4.  Bounds: ``1 <= head_dim <= 2^16``, ``2 <= m_bits <= 16``, so ``k <= 24`` and
    ``4^(k+1) <= 2^50``.  A per-model constant (computed once, no Numba kernel needed);
    returned as 0-d int64 arrays.
    """
    head_dim = check_int("head_dim", head_dim, 1, INV_SQRT_D_LIMIT)
    m_bits = check_int("m_bits", m_bits, 2, 16)
    d = np.int64(head_dim)
    k = np.int64(m_bits - 1) + ((bit_length_ref(d) + 1) >> 1)
    t = _isqrt_ref((np.int64(1) << (2 * k + 2)) // d)
    m = (t + 1) >> 1
    if m >= (np.int64(1) << np.int64(m_bits)):
        m >>= 1
        k -= 1
    return Dyadic(np.asarray(m, dtype=np.int64), np.asarray(k, dtype=np.int64))
