"""Embedding lookup: a gather of integer rows and their per-row dyadic scales.

The converter quantizes each embedding row symmetrically with its own scale
(``converters.embedding.quantize_embedding``), so the looked-up rows are already a
per-token quantized tensor: the first residual stream value.  Spec: docs/SPEC.md,
Embedding.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from .errors import IntsimError, IntsimOverflowError, check_int, check_int_array
from .fixedpoint import _check_backend, kernel
from .qtensor import Dyadic, QTensor, dtype_for


def check_token_ids(ids, V: int) -> np.ndarray:
    """``ids``: integer array, every value in [0, V); names the first bad id."""
    check_int_array("token ids", ids)
    i64 = ids.astype(np.int64)
    bad = np.flatnonzero((i64 < 0) | (i64 >= V))
    if bad.size:
        idx = np.unravel_index(int(bad[0]), ids.shape)
        raise IntsimOverflowError(
            f"token ids: id {int(i64.flat[bad[0]])} at index {tuple(int(i) for i in idx)} "
            f"is outside [0, V) with V = {V} (the embedding table's rows)")
    return i64


def _embed_ref(ids, table_q, table_m, table_k):
    return table_q[ids], table_m[ids].astype(np.int64), table_k[ids].astype(np.int64)


@njit(cache=True)
def _embed_nb(ids, table_q, table_m, table_k):
    n = ids.size
    D = table_q.shape[1]
    q = np.empty((n, D), dtype=table_q.dtype)
    m = np.empty(n, dtype=np.int64)
    k = np.empty(n, dtype=np.int64)
    for t in range(n):
        r = ids[t]
        for j in range(D):
            q[t, j] = table_q[r, j]
        m[t] = table_m[r]
        k[t] = table_k[r]
    return q, m, k


def embed(ids: np.ndarray, table_q: np.ndarray, table_m: np.ndarray, table_k: np.ndarray,
          bits: int = 8, backend: str = "numba") -> QTensor:
    """Look up rows ``ids`` of the integer embedding table; exact (a gather).

    ``ids``: integer array of any shape (...), values in ``[0, V)``.
    ``table_q``: (V, D) signed symmetric codes of width ``bits`` (int8 for bits <= 8,
    int16 for bits <= 16), ``|q| <= 2^(bits-1) - 1``; ``table_m``, ``table_k``: (V,)
    integers, row r's real value is ``table_q[r] * table_m[r] * 2^-table_k[r]``.
    Output: ``QTensor(table_q[ids], zp = 0, Dyadic(table_m[ids], table_k[ids]), bits,
    signed=True)`` of shape (..., D).  No arithmetic, so no rounding and no overflow.
    Only the gathered rows' codes and mantissas are range-checked (by QTensor and
    Dyadic), so a lookup costs O(len(ids) * D), not O(V * D).
    """
    _check_backend(backend)
    bits = check_int("bits", bits, 2, 16)
    check_int_array("table_q", table_q, ndim=2, dtypes=(dtype_for(bits, True),))
    V, D = table_q.shape
    if V < 1 or D < 1:
        raise IntsimError(f"table_q: shape {table_q.shape} has an empty axis")
    for name, t in (("table_m", table_m), ("table_k", table_k)):
        check_int_array(name, t, ndim=1)
        if t.shape != (V,):
            raise IntsimError(f"{name}: shape {t.shape} != (V,) = ({V},)")
    i64 = check_token_ids(ids, V)
    if backend == "reference":
        q, m, k = _embed_ref(i64, table_q, table_m, table_k)
    else:
        q, m, k = kernel(backend, _embed_nb, "embed")(np.ascontiguousarray(i64).ravel(), np.ascontiguousarray(table_q),
                            table_m.astype(np.int64), table_k.astype(np.int64))
        q, m, k = q.reshape(ids.shape + (D,)), m.reshape(ids.shape), k.reshape(ids.shape)
    return QTensor(q, np.zeros(ids.shape, dtype=np.int32), Dyadic(m, k), bits, True)
