"""Online integer Hadamard rotation (``hadamard_rows``): an exact fast Walsh–Hadamard
transform of each row, in blocks of ``b`` channels, with no float anywhere.

QuaRot-style rotation (beyond I-LLM, docs/SPEC.md section 7.6): the converter folds
``H_b / b`` into the next linear's input columns (``W' = W · blockdiag(H_b) / b``, float
side, before quantization), and the runtime applies the un-normalized ``H_b`` to the
activation rows, so ``W' (H x) = W x`` exactly in real numbers.  The activation keeps its
scale: the 1/b (the square of the orthonormal 1/sqrt(b)) lives in the weights, whose per
channel scale absorbs it, so no dyadic scale changes at run time beyond the pre-shift below.

``H_b`` is Sylvester's Hadamard matrix of order ``b`` (a power of two), in natural order:
``H[i, j] = (-1)^popcount(i & j)``, symmetric, ``H_b H_b = b I``.  A row of C channels is
rotated block by block (``blockdiag(H_b, ..., H_b)``, C / b blocks): a size that is not a
power of two (SmolLM2's ffn_dim 1536 = 3 · 512) is handled by blocks of the largest power
of two that divides it (:func:`default_block`), or refused by name when ``b`` does not
divide C.

Growth and the pre-shift (the overflow proof): every butterfly stage at most doubles
``max |x|``, so ``|H_b y| <= b max|y|``: log2(b) bits of growth.  Per row,
``L = bitlen(max_j |y_j|)`` and ``sh = max(0, L + log2 b - ROT_OUT_BITS)``; the row is
first rounded right by ``sh`` (tie rule ``spec.rounding``; ``|y >> sh| <= 2^(L - sh)``),
then transformed, so every intermediate and output is ``<= 2^ROT_OUT_BITS = 2^60``, inside
``requant_rows``' input bound 2^61 - 1.  The row's scale exponent drops by ``sh``.  With
DI-SwiGLU's outputs at the default widths (``|y| < 2^40``) and b <= 2^15, ``sh = 0``: the
rotation is exact.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from .errors import IntsimError, check_int, check_int_array, check_range
from .fixedpoint import _check_backend, _rshift_round_ref, bit_length_nb, bit_length_ref, \
    rounding_code, rshift_round_nb
from .options import DEFAULT_SPEC, Spec
from .qtensor import Dyadic

#: every intermediate and output of the transform is at most 2^ROT_OUT_BITS in magnitude
ROT_OUT_BITS = 60
#: largest block (a power of two); log2 = 15 bits of growth
ROT_BLOCK_LIMIT = 2 ** 15
#: input bound (requant_rows' own: |v| <= 2^61 - 1)
ROT_IN_LIMIT = 2 ** 61 - 1
#: input scale exponents accepted: |k| + the largest pre-shift stays inside requant_rows' 2^20
ROT_K_LIMIT = 2 ** 20 - 64


def check_block_size(name: str, block, C: int | None = None) -> int:
    """``block`` as an int when it is a power of two in [2, ROT_BLOCK_LIMIT], else an
    IntsimError naming ``name`` (with the block that would do for ``C`` channels, if given)."""
    b = check_int(name, block, 2, ROT_BLOCK_LIMIT)
    if b & (b - 1):
        hint = "" if C is None else f"; {default_block(C)} divides {C}"
        raise IntsimError(f"{name}: {b} is not a power of two (the integer Walsh–Hadamard "
                          f"transform needs one{hint})")
    return b


def check_block(name: str, C: int, block) -> int:
    """``block`` as an int when it is a power of two in [2, ROT_BLOCK_LIMIT] dividing ``C``;
    else an IntsimError naming ``name`` and what would do."""
    b = check_block_size(name, block, C)
    if C % b:
        raise IntsimError(f"{name}: block {b} does not divide the {C} channels it rotates "
                          f"(the largest power of two that does: {default_block(C)})")
    return b


def default_block(C: int) -> int:
    """The largest power of two that divides ``C``, at most ROT_BLOCK_LIMIT (1 for odd C)."""
    C = check_int("channels", C, 1)
    return min(C & -C, ROT_BLOCK_LIMIT)


def sylvester(b: int) -> np.ndarray:
    """Sylvester's Hadamard matrix of order ``b`` (a power of two), natural order, int8:
    ``H[i, j] = (-1)^popcount(i & j)``; the matrix the transform multiplies each block by
    and the converter folds into the weights (``H`` is symmetric, ``H H = b I``)."""
    b = check_int("b", b, 1, ROT_BLOCK_LIMIT)
    if b & (b - 1):
        raise IntsimError(f"b: {b} is not a power of two")
    H = np.ones((1, 1), dtype=np.int8)
    while H.shape[0] < b:
        H = np.block([[H, H], [H, -H]])
    return H


def _shift_of(L, lb):
    """The pre-shift of a row whose largest |value| has bit length ``L``."""
    return np.maximum(L + lb - ROT_OUT_BITS, 0)


def _fwht_ref(y, b, code):
    """NumPy reference: rows of int64 ``y`` [T, C] -> (``H`` applied per block, pre-shifts)."""
    T, C = y.shape
    lb = b.bit_length() - 1
    L = bit_length_ref(np.abs(y).max(axis=1)) if C else np.zeros(T, dtype=np.int64)
    sh = _shift_of(L, lb).astype(np.int64)
    z = _rshift_round_ref(y, sh[:, None], code)
    h = 1
    while h < b:                        # stage h: pairs (j, j + h) inside blocks of 2h
        z = z.reshape(T, C // (2 * h), 2, h)
        z = np.stack([z[:, :, 0, :] + z[:, :, 1, :], z[:, :, 0, :] - z[:, :, 1, :]], axis=2)
        h *= 2
    return z.reshape(T, C), sh


@njit(cache=True)
def fwht_row(y, b, code):
    """The Numba kernel of one row of :func:`hadamard_rows`: rotates int64 ``y`` in place,
    block by block (``b`` a power of two dividing len(y)), after the pre-shift; returns the
    shift.  Every value stays <= 2^ROT_OUT_BITS (module doc)."""
    C = y.shape[0]
    amax = np.int64(0)
    for j in range(C):
        amax = max(amax, abs(y[j]))
    lb = bit_length_nb(np.int64(b)) - 1
    sh = max(np.int64(0), bit_length_nb(amax) + lb - ROT_OUT_BITS)
    if sh > 0:
        for j in range(C):
            y[j] = rshift_round_nb(y[j], sh, code)
    h = 1
    while h < b:
        for i in range(0, C, 2 * h):
            for j in range(i, i + h):
                a = y[j]
                c = y[j + h]
                y[j] = a + c
                y[j + h] = a - c
        h *= 2
    return sh


@njit(cache=True)
def _fwht_nb(y, b, code):
    """:func:`fwht_row` over the rows of a copy of ``y``."""
    out = y.copy()
    sh = np.empty(y.shape[0], dtype=np.int64)
    for t in range(y.shape[0]):
        sh[t] = fwht_row(out[t], b, code)
    return out, sh


def hadamard_rows(y: np.ndarray, scale: Dyadic, block: int, spec: Spec = DEFAULT_SPEC,
                  backend: str = "numba") -> tuple[np.ndarray, Dyadic, dict]:
    """Rotate every row of ``y`` (int64, ..., C) by ``blockdiag(H_b)`` (module doc).

    ``scale``: the rows' dyadic scales ``m 2^-k`` (shape ``y.shape[:-1]``, ``|k| <= 2^20 -
    64``); ``block``: b, a power of two in [2, 2^15] dividing C.  Per row (``rnd`` =
    ``spec.rounding``):

    1. ``L = bitlen(max_j |y_j|)``, ``sh = max(0, L + log2 b - 60)``,
       ``y' = rnd(y / 2^sh)`` (exact when sh = 0);
    2. ``out = blockdiag(H_b) y'`` by log2(b) butterfly stages ``(a, c) -> (a + c, a - c)``,
       exact, ``|out| <= b 2^(L - sh) <= 2^60``.

    Returns ``(out int64 [..., C], Dyadic(m, k - sh), {"rows_shifted": rows with sh > 0})``.
    ``backend="cuda"`` runs the Numba kernel on the CPU (a graph run's one host-side op).
    """
    _check_backend(backend)
    y = check_int_array("y", y)
    if y.ndim < 1 or y.shape[-1] == 0:
        raise IntsimError(f"y: needs a non-empty last axis, got shape {y.shape}")
    C = y.shape[-1]
    b = check_block("block", C, block)
    check_range("y", y, -ROT_IN_LIMIT, ROT_IN_LIMIT)
    lead = y.shape[:-1]
    if not isinstance(scale, Dyadic):
        raise IntsimError(f"scale: expected a Dyadic, got {type(scale).__name__}")
    try:
        m, k = (np.broadcast_to(np.asarray(a, dtype=np.int64), lead) for a in (scale.m, scale.k))
    except ValueError:
        raise IntsimError(f"scale: shape {scale.shape} does not fit the rows {lead}") from None
    check_range("scale k", k, -ROT_K_LIMIT, ROT_K_LIMIT)
    code = rounding_code(spec.rounding)
    v = np.ascontiguousarray(y, dtype=np.int64).reshape(-1, C)
    if backend == "reference":
        out, sh = _fwht_ref(v, b, code)
    else:
        out, sh = _fwht_nb(v, b, code)
    sh = sh.reshape(lead)
    return (out.reshape(y.shape), Dyadic(m.copy(), k - sh),
            {"rows_shifted": int(np.count_nonzero(sh))})
