"""Errors and argument checks shared by every operator.

Every check names the argument it rejects, so that bad input never surfaces as a
traceback from deep inside NumPy or as a silent wrap.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager

import numpy as np

_state = threading.local()


@contextmanager
def trusted():
    """Skip value-range checks of intermediates inside this scope (this thread only).

    ``forward()`` enters it on the Numba backend after validating its own inputs: every
    tensor inside is produced by intsim's ops, whose output ranges are proved in
    docs/SPEC.md.  dtype, shape and argument checks still run; the reference backend
    never enters it, and the tests hold the two backends equal.
    """
    prev = getattr(_state, "trusted", False)
    _state.trusted = True
    try:
        yield
    finally:
        _state.trusted = prev


class IntsimError(ValueError):
    """Base class of every error intsim raises on bad input."""


class IntsimOverflowError(IntsimError, OverflowError):
    """A value left the range its container or its spec allows (never wrapped)."""


def _kind(x) -> str:
    return f"{type(x).__name__} of dtype {x.dtype}" if isinstance(x, np.ndarray) else type(x).__name__


def check_int_array(name: str, x, *, ndim: int | tuple[int, ...] | None = None,
                    dtypes: tuple | None = None) -> np.ndarray:
    """Return ``x`` if it is an integer NumPy array of the wanted rank, else raise.

    ``dtypes`` restricts the accepted integer dtypes (e.g. ``(np.int8,)``); booleans and
    floats are always refused.
    """
    if not isinstance(x, np.ndarray):
        raise IntsimError(f"{name}: expected an integer numpy array, got {_kind(x)}")
    if x.dtype.kind not in "iu":
        raise IntsimError(f"{name}: expected an integer dtype, got {x.dtype}")
    if dtypes is not None and x.dtype not in tuple(np.dtype(d) for d in dtypes):
        want = ", ".join(str(np.dtype(d)) for d in dtypes)
        raise IntsimError(f"{name}: expected dtype {want}, got {x.dtype}")
    if ndim is not None:
        ok = (x.ndim,) if isinstance(ndim, int) else ndim
        if x.ndim not in ((ndim,) if isinstance(ndim, int) else ok):
            raise IntsimError(f"{name}: expected {ndim}-d array, got shape {x.shape}")
    return x


def check_range(name: str, x: np.ndarray, lo: int, hi: int) -> None:
    """Raise unless every element of ``x`` lies in ``[lo, hi]`` (inclusive).

    Skipped inside ``trusted()`` (intermediates whose ranges are proved)."""
    if x.size == 0 or getattr(_state, "trusted", False):
        return
    xmin, xmax = int(x.min()), int(x.max())
    if xmin < lo or xmax > hi:
        bad = xmin if xmin < lo else xmax
        idx = np.unravel_index(int(np.argmin(x) if xmin < lo else np.argmax(x)), x.shape)
        raise IntsimOverflowError(
            f"{name}: value {bad} at index {tuple(int(i) for i in idx)} is outside [{lo}, {hi}]")


def check_int(name: str, v, lo: int | None = None, hi: int | None = None) -> int:
    """Return ``v`` as a Python int if it is an integer within ``[lo, hi]``, else raise."""
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
        raise IntsimError(f"{name}: expected an integer, got {type(v).__name__} {v!r}")
    v = int(v)
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise IntsimError(f"{name}: {v} is outside [{lo}, {hi}]")
    return v


def check_choice(name: str, v, choices) -> str:
    if v not in choices:
        raise IntsimError(f"{name}: {v!r} is not one of {sorted(choices)}")
    return v


def int_range(bits: int, signed: bool) -> tuple[int, int]:
    """Inclusive range of a ``bits``-wide integer.

    Signed ranges are symmetric, ``[-(2^(b-1) - 1), 2^(b-1) - 1]``: the most negative
    two's-complement code is never produced, so negation can never overflow.
    """
    if signed:
        return -(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1
    return 0, 2 ** bits - 1
