"""Fixed-point primitives: the arithmetic every I-LLM operator is built from.

Each primitive comes as a pair: a vectorized NumPy reference with explicit int64
arithmetic (the executable spec) and a scalar ``@njit`` kernel with the same
arithmetic that the operator kernels call.  The public function dispatches on
``backend`` ("numba" or "reference").

Conventions (docs/SPEC.md section 1):

* Integers are two's complement; ``>>`` is an arithmetic shift, i.e. floor(x / 2^s).
* A scale is a dyadic number ``m * 2^-k`` (``m >= 0`` an integer mantissa, ``k`` a
  signed integer exponent applied as a right shift).
* Every rounding names its tie rule (``Rounding``):

  ``floor``      round toward -inf (a plain arithmetic shift / floor division)
  ``half_up``    to nearest, ties toward +inf           (add half, then floor)
  ``half_even``  to nearest, ties to the even neighbour (banker's rounding)
  ``half_away``  to nearest, ties away from zero

* Preconditions are stated as bounds on |x|; the public functions check them and
  raise ``IntsimOverflowError`` naming the argument, the kernels rely on callers'
  proofs.
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from .errors import IntsimError, IntsimOverflowError, check_choice, check_int, check_range

# --------------------------------------------------------------------------- names

FLOOR, HALF_UP, HALF_EVEN, HALF_AWAY = "floor", "half_up", "half_even", "half_away"
#: the tie rules a run may select (Spec.rounding)
ROUNDINGS = (FLOOR, HALF_UP, HALF_EVEN, HALF_AWAY)
#: directed rounding toward +inf: not a tie rule a run selects, but the requantizer's
#: scale fit uses it so that codes computed against the fitted scale never exceed Q
CEIL = "ceil"
#: integer codes passed into Numba kernels (strings do not cross the jit boundary cheaply);
#: kernels compare against these names (module globals are compile-time constants in Numba)
RC_FLOOR, RC_HALF_UP, RC_HALF_EVEN, RC_HALF_AWAY, RC_CEIL = 0, 1, 2, 3, 4
ROUND_CODE = {FLOOR: RC_FLOOR, HALF_UP: RC_HALF_UP, HALF_EVEN: RC_HALF_EVEN,
              HALF_AWAY: RC_HALF_AWAY, CEIL: RC_CEIL}
#: "cuda": the operators' row kernels on an NVIDIA GPU (intsim.cudaops); the elementwise
#: primitives' wrappers below run their Numba form on the CPU for it
BACKENDS = ("numba", "reference", "cuda")

#: |x| bound for shifts and divisions: keeps 2*r, x + 2^(s-1) and |x| inside int64.
ABS_LIMIT = 2 ** 62 - 1


def rounding_code(rounding: str) -> int:
    return ROUND_CODE[check_choice("rounding", rounding, ROUND_CODE)]


def _check_backend(backend: str) -> str:
    return check_choice("backend", backend, BACKENDS)


def kernel(backend: str, cpu_driver, gpu_twin: str):
    """The whole-tensor driver of an operator's row kernel for ``backend``: its Numba loop
    over rows, or for ``"cuda"`` its twin in intsim.cudaops (one GPU thread per row,
    calling the same row kernel; imported only when asked for)."""
    if backend != "cuda":
        return cpu_driver
    from . import cudaops
    cudaops.require()
    return getattr(cudaops, gpu_twin)


def _as_i64(name: str, x) -> np.ndarray:
    """Integer scalar or array -> int64 array; floats and bools are refused."""
    if isinstance(x, (bool, np.bool_)):
        raise IntsimError(f"{name}: expected integers, got bool")
    if isinstance(x, (int, np.integer)):
        if not -(2 ** 63) <= int(x) < 2 ** 63:
            raise IntsimOverflowError(f"{name}: {x} does not fit int64")
        return np.asarray(int(x), dtype=np.int64)
    if not isinstance(x, np.ndarray) or x.dtype.kind not in "iu":
        kind = f"array of dtype {x.dtype}" if isinstance(x, np.ndarray) else type(x).__name__
        raise IntsimError(f"{name}: expected an integer array or int, got {kind}")
    if x.dtype == np.uint64 and x.size and int(x.max()) >= 2 ** 63:
        raise IntsimOverflowError(f"{name}: uint64 value does not fit int64")
    return x.astype(np.int64, copy=False)


# ------------------------------------------------------------- rounding of q + r/d

def _round_qr_ref(q, r, d, neg, code):
    """Round the exact quotient ``q + r/d`` (0 <= r < d, q = floor) by tie rule ``code``.

    ``2*r`` is compared with ``d``: greater rounds up, equal is a tie.  ``neg`` tells
    whether the dividend was negative (needed by ``half_away`` only).  All int64;
    ``2*r < 2*d <= 2^63`` by the callers' bounds.
    """
    if code == RC_FLOOR:
        return q
    if code == RC_CEIL:
        return q + (r > 0)
    two_r = 2 * r
    up = (two_r > d).astype(np.int64)
    tie = two_r == d
    if code == RC_HALF_UP:                             # every tie up: q + up + tie
        return q + up + tie
    if code == RC_HALF_EVEN:
        bump = q & 1
    else:                                              # RC_HALF_AWAY
        bump = (~neg).astype(np.int64)
    return q + up + np.where(tie, bump, 0)


@njit(cache=True, inline="always")
def round_qr_nb(q, r, d, neg, code):
    """Numba primitive: round ``q + r/d`` (0 <= r < d) by tie rule ``code``; the same values
    as :func:`_round_qr_ref`.  Branch-free on the data: the comparisons become 0/1
    integers, so a random remainder costs no misprediction (only ``code``, constant per
    call site, selects a path).  ``2r < 2d <= 2^63`` (callers' bounds)."""
    if code == RC_FLOOR:
        return q
    if code == RC_CEIL:
        return q + np.int64(r > 0)
    two_r = 2 * r
    up = np.int64(two_r > d)
    tie = np.int64(two_r == d)
    if code == RC_HALF_UP:                                 # ties toward +inf
        return q + up + tie
    if code == RC_HALF_EVEN:                               # ties to the even neighbour
        return q + up + (tie & q)
    return q + up + (tie & np.int64(not neg))              # RC_HALF_AWAY: ties away from 0


# ------------------------------------------------------------ rounding right shift

def _rshift_round_ref(x, s, code):
    x = np.asarray(x, dtype=np.int64)
    s = np.asarray(s, dtype=np.int64)
    big = s >= 63
    sc = np.where(big, 0, s)
    q = x >> sc
    d = np.left_shift(np.int64(1), sc)
    r = x - (q << sc)
    out = _round_qr_ref(q, r, d, x < 0, code)
    # s >= 63 with |x| < 2^62: |x / 2^s| < 1/2, so every nearest mode gives 0,
    # floor gives -1 for negative x and ceil gives 1 for positive x.
    far = (np.where(x < 0, -1, 0) if code == RC_FLOOR else
           np.where(x > 0, 1, 0) if code == RC_CEIL else np.zeros_like(x))
    return np.where(big, far, out).astype(np.int64)


@njit(cache=True, inline="always")
def rshift_round_nb(x, s, code):
    """Numba primitive of :func:`rshift_round` (x int64, s >= 0, |x| <= 2^62 - 1).

    No branch on s for 0 <= s <= 62: floor is ``x >> s``; half_up is ``(x + h) >> s`` with
    ``h = (2^s) >> 1`` (= floor(x / 2^s + 1/2); h = 0 at s = 0; |x| + h < 2^63); the other
    rules read the remainder (s = 0: remainder 0, so q = x).  s >= 63 with |x| < 2^62:
    |x / 2^s| < 1/2, so every nearest rule gives 0, floor gives -1 for negative x and
    ceil 1 for positive x.
    """
    if s >= 63:
        if code == RC_FLOOR and x < 0:
            return np.int64(-1)
        if code == RC_CEIL and x > 0:
            return np.int64(1)
        return np.int64(0)
    if code == RC_HALF_UP:
        return (x + ((np.int64(1) << s) >> 1)) >> s
    if code == RC_FLOOR:
        return x >> s
    q = x >> s
    return round_qr_nb(q, x - (q << s), np.int64(1) << s, x < 0, code)


def rshift_round(x, s, rounding: str = HALF_UP, backend: str = "numba") -> np.ndarray:
    """``round(x / 2^s)`` with the named tie rule; int64 in, int64 out.

    ``x``: integers with |x| <= 2^62 - 1 (so ``x + 2^(s-1)`` and ``2*r`` stay inside
    int64).  ``s``: shift amounts >= 0, broadcast against ``x``; s >= 63 is allowed
    and gives 0 (or -1 for negative x under ``floor``).
    Tie rule: ``rounding`` (see module docstring).  Exact: no error beyond the named
    rounding, |result - x/2^s| <= 1/2 (nearest modes) or < 1 (floor).
    """
    code = rounding_code(rounding)
    _check_backend(backend)
    x64, s64 = _as_i64("x", x), _as_i64("s", s)
    check_range("x", x64, -ABS_LIMIT, ABS_LIMIT)
    check_range("s", s64, 0, 2 ** 62)
    return _elementwise(_rshift_round_ref, _OP_RSHIFT, x64, s64, code, backend)


def _elementwise(ref, op, a, b, code, backend):
    """A binary primitive on broadcast int64 operands: the reference on the arrays, or the
    Numba primitive ``op`` (:func:`_binary_vec`) over their flattened elements."""
    if backend == "reference":
        return ref(a, b, code)
    ab, bb = np.broadcast_arrays(a, b)
    return _binary_vec(op, np.ascontiguousarray(ab).ravel(), np.ascontiguousarray(bb).ravel(),
                       code).reshape(ab.shape)


#: the binary primitives :func:`_binary_vec` applies element by element
_OP_RSHIFT, _OP_DIV = 0, 1


@njit(cache=True)
def _binary_vec(op, a, b, code):
    """``rshift_round_nb`` (op 0) or ``div_round_nb`` (op 1) over flattened operands."""
    out = np.empty_like(a)
    for i in range(a.size):
        out[i] = rshift_round_nb(a[i], b[i], code) if op == _OP_RSHIFT else div_round_nb(a[i], b[i], code)
    return out


# ---------------------------------------------------------------- integer division

def _div_round_ref(a, b, code):
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    q = a // b  # numpy integer // is floor division
    r = a - q * b
    return np.asarray(_round_qr_ref(q, r, b, a < 0, code), dtype=np.int64)


@njit(cache=True, inline="always")
def div_round_nb(a, b, code):
    """Numba primitive of :func:`div_round` (b >= 1, |a|, b <= 2^62 - 1): the floor
    quotient (Numba follows Python: floor division for ints) and its remainder in
    [0, b), rounded by :func:`round_qr_nb`."""
    q = a // b
    return round_qr_nb(q, a - q * b, b, a < 0, code)


#: reciprocal precision of :func:`div_by_scale_nb`'s small divide: M = floor(2^46 / mi)
RECIP_SHIFT = 46


@njit(cache=True, inline="always")
def div_by_scale_nb(a, s, mi, Q1, U, M, code):
    """``rnd(a / (mi * 2^s))`` (tie rule ``code``), equal to ``div_round_nb(a, mi << s)``,
    for quotients the caller bounds by ``|q| <= Q1 - 1``; the requantizer's per-element
    division by a row's fitted scale.  ``Q1 <= 2^16``, ``U = 2 Q1 mi``,
    ``M = floor(2^RECIP_SHIFT / mi)`` (per row).

    Proof.  ``n = a >> s = floor(a / 2^s)``; for an integer ``mi >= 1``
    ``floor(n / mi) = floor(a / (mi 2^s))`` =: q.  With ``u = n + Q1 * mi`` the bound
    ``|a / (mi 2^s)| <= Q1 - 1`` gives ``0 <= u < U`` (else: the exact divide below).
    ``u M <= u 2^46 / mi < 2 Q1 2^46 <= 2^63`` and ``u / mi - u M / 2^46 < u / 2^46 < 1``
    (u < 2^33), so ``q0 = (u M) >> 46`` is ``floor(u / mi)`` or one less; one remainder
    test fixes it.  Then ``q = q0 - Q1``, and the remainder of a by ``D = mi 2^s`` is
    ``r = (r0 << s) + (a - (n << s))`` in ``[0, D)``; the rounding reads (q, r, D, sign)
    exactly as ``div_round_nb``.  ``D <= 2^62`` (the caller's condition).
    """
    n = a >> s
    u = n + Q1 * mi
    if u < 0 or u >= U:
        return div_round_nb(a, mi << s, code)
    q0 = (u * M) >> RECIP_SHIFT
    r0 = u - q0 * mi
    if r0 >= mi:
        q0 += 1
        r0 -= mi
    return round_qr_nb(q0 - Q1, (r0 << s) + (a - (n << s)), mi << s, a < 0, code)


def div_round(a, b, rounding: str = HALF_UP, backend: str = "numba") -> np.ndarray:
    """``round(a / b)`` for integers, ``b >= 1``, with the named tie rule.

    Computed as floor quotient ``q = a // b`` and remainder ``r = a - q*b`` in
    ``[0, b)``, then ``2r`` against ``b`` decides (no ``2a + b`` that could overflow).
    Bounds: |a| <= 2^62 - 1, 1 <= b <= 2^62 - 1.  ``floor`` is floor division
    (toward -inf, also for negative a).
    """
    code = rounding_code(rounding)
    _check_backend(backend)
    a64, b64 = _as_i64("a", a), _as_i64("b", b)
    check_range("a", a64, -ABS_LIMIT, ABS_LIMIT)
    check_range("b (divisor)", b64, 1, ABS_LIMIT)
    return _elementwise(_div_round_ref, _OP_DIV, a64, b64, code, backend)


def floor_div(a, b, backend: str = "numba") -> np.ndarray:
    """``floor(a / b)``, b >= 1 (toward -inf for negative a, as DI-Exp needs)."""
    return div_round(a, b, FLOOR, backend)


# ------------------------------------------------------------------ saturation

def saturate(x, lo: int, hi: int) -> tuple[np.ndarray, int]:
    """Clamp ``x`` into ``[lo, hi]``; return the clamped int64 array and how many
    elements were clamped (the saturation count the overflow report uses)."""
    x64 = _as_i64("x", x)
    n = int(np.count_nonzero((x64 < lo) | (x64 > hi)))
    return np.clip(x64, lo, hi).astype(np.int64), n


# ------------------------------------------------------------------- bit length

def bit_length_ref(x) -> np.ndarray:
    """Number of bits of non-negative int64 ``x`` (0 for 0), like ``int.bit_length``.

    Six binary-search steps on shifts; no float (np.log2 would be one).
    """
    x = np.array(x, dtype=np.int64, copy=True)
    n = np.zeros_like(x)
    for s in (32, 16, 8, 4, 2, 1):
        hit = (x >> s) != 0
        x = np.where(hit, x >> s, x)
        n += np.where(hit, s, 0)
    return n + (x != 0)


@intrinsic
def _count_leading_zeros64(typingctx, x):
    """LLVM's ctlz on int64 (zero input defined: 64); one lzcnt instruction on x86."""
    if not isinstance(x, types.Integer):
        return None
    sig = types.int64(x)

    def codegen(context, builder, sig, args):
        v = context.cast(builder, args[0], sig.args[0], types.int64)
        i64 = ir.IntType(64)
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(i64, [i64, ir.IntType(1)]),
                                            "llvm.ctlz.i64")
        return builder.call(fn, [v, ir.Constant(ir.IntType(1), 0)])
    return sig, codegen


@njit(cache=True)
def bit_length_nb(x):
    """Bits of ``x >= 0`` (0 for 0), as ``int.bit_length``: 64 minus the leading zeros."""
    return np.int64(64) - _count_leading_zeros64(x)


# ------------------------------------------------------------------ integer sqrt

def _isqrt_ref(n):
    """Digit-by-digit (restoring, two bits per step) floor square root of int64 >= 0.

    The hardware form: 31 steps, each a compare, a subtract and shifts; every value
    stays below the input, so int64 never overflows for n < 2^62.
    """
    n = np.array(n, dtype=np.int64, copy=True)
    res = np.zeros_like(n)
    bit = np.int64(1) << np.int64(60)
    for _ in range(31):
        trial = res + bit
        take = n >= trial
        n = np.where(take, n - trial, n)
        res = np.where(take, (res >> 1) + bit, res >> 1)
        bit >>= 2
    return res


@njit(cache=True)
def isqrt_nb(n):
    """Scalar kernel of :func:`isqrt` (same 31-step digit recurrence)."""
    res = np.int64(0)
    bit = np.int64(1) << 60
    for _ in range(31):
        trial = res + bit
        if n >= trial:
            n -= trial
            res = (res >> 1) + bit
        else:
            res >>= 1
        bit >>= 2
    return res


def isqrt(n, backend: str = "numba") -> np.ndarray:
    """``floor(sqrt(n))`` for integers 0 <= n <= 2^62 - 1 (exact; no tie to name)."""
    _check_backend(backend)
    n64 = _as_i64("n", n)
    check_range("n", n64, 0, ABS_LIMIT)
    if backend == "reference":
        return _isqrt_ref(n64)
    flat = np.ascontiguousarray(n64).ravel()
    return _isqrt_vec(flat).reshape(n64.shape)


@njit(cache=True)
def _isqrt_vec(n):
    out = np.empty_like(n)
    for i in range(n.size):
        out[i] = isqrt_nb(n[i])
    return out


# --------------------------------------------------------------- dyadic fitting

#: limits of dyadic_fit's inputs: num * 2^k / den is formed exactly in int64
FIT_NUM_LIMIT = 2 ** 61 - 1


def fit_den_limit(m_bits: int) -> int:
    return 2 ** (61 - m_bits) - 1


def _fit_ref(num, den, m_bits, k_lo, k_hi, code):
    """Vectorized dyadic fit; see :func:`dyadic_fit`.  Returns (m, k, saturated)."""
    num = np.asarray(num, dtype=np.int64)
    den = np.asarray(den, dtype=np.int64)
    num, den = np.broadcast_arrays(num, den)
    k_lo = np.broadcast_to(np.asarray(k_lo, dtype=np.int64), num.shape)
    k_hi = np.broadcast_to(np.asarray(k_hi, dtype=np.int64), num.shape)
    top = np.int64(1) << np.int64(m_bits)
    e = bit_length_ref(num) - bit_length_ref(den)
    k = np.int64(m_bits) - 1 - e

    def quot(kk, rcode=code):
        # den << -k would leave int64 once bitlen(den) - k >= 63; then den * 2^-k >= 2^62
        # > 2 * num, the quotient is below 1/2 and every rounding gives 0.
        pos = np.maximum(kk, 0)
        negk = np.maximum(-kk, 0)
        tiny = bit_length_ref(den) + negk >= 63
        q = _div_round_ref(num << pos, den << np.where(tiny, 0, negk), rcode)
        return np.where(tiny, np.where((num > 0) & (rcode == RC_CEIL), 1, 0), q)  # ceil of (0, 1/2) is 1

    # num/den in (2^(e-1), 2^(e+1)) puts num * 2^k / den in (2^(M-2), 2^M).  Normalize on
    # the FLOOR quotient: a value just below 2^(M-1) must move to k + 1 even when it
    # would round up onto 2^(M-1), else its error is relative to a smaller value.
    low = quot(k, RC_FLOOR) < (top >> 1)
    k = np.where(low, k + 1, k)
    m = quot(k)
    carry = m >= top          # rounding carried up to 2^M: halve (exact: m is even)
    m = np.where(carry, m >> 1, m)
    k = np.where(carry, k - 1, k)
    # k above its range (a tiny value): refit at k_hi, losing mantissa bits (num << k_hi
    # is smaller than num << k, so still exact in int64).  k below its range (a huge
    # value): every m at k_lo would be >= 2^M, so m saturates at 2^M - 1.
    hi = k > k_hi
    lo = k < k_lo
    m_c = np.where(hi, quot(np.minimum(k, k_hi)), m)
    k_c = np.clip(k, k_lo, k_hi)
    sat = lo
    m_c = np.where(lo, top - 1, m_c)
    zero = num == 0
    return (np.where(zero, 0, m_c).astype(np.int64),
            np.where(zero, np.clip(0, k_lo, k_hi), k_c).astype(np.int64),
            (sat & ~zero))


@njit(cache=True)
def _fit_quot_nb(num, den, k, code):
    if k >= 0:
        return div_round_nb(num << k, den, code)
    if bit_length_nb(den) - k >= 63:   # den * 2^-k >= 2^62 > 2 * num: quotient < 1/2
        return np.int64(1) if (code == RC_CEIL and num > 0) else np.int64(0)
    return div_round_nb(num, den << (-k), code)


@njit(cache=True)
def dyadic_fit_nb(num, den, m_bits, k_lo, k_hi, code):
    """Scalar kernel of :func:`dyadic_fit`; returns (m, k, saturated)."""
    if num == 0:
        k0 = min(max(0, k_lo), k_hi)
        return np.int64(0), np.int64(k0), False
    top = np.int64(1) << m_bits
    k = np.int64(m_bits - 1 - (bit_length_nb(num) - bit_length_nb(den)))
    if _fit_quot_nb(num, den, k, RC_FLOOR) < (top >> 1):   # normalize on the floor quotient
        k += 1
    m = _fit_quot_nb(num, den, k, code)
    if m >= top:
        m >>= 1
        k -= 1
    if k > k_hi:
        m = _fit_quot_nb(num, den, np.int64(k_hi), code)
        k = np.int64(k_hi)
    elif k < k_lo:
        return top - 1, np.int64(k_lo), True
    return np.int64(m), np.int64(k), False


def dyadic_fit(num, den, m_bits: int = 8, k_range: tuple[int, int] = (-128, 127),
               rounding: str = HALF_UP, backend: str = "numba"):
    """Fit the ratio ``num / den`` as ``m * 2^-k`` with an ``m_bits``-wide mantissa.

    Integer only.  With ``e = bitlen(num) - bitlen(den)`` the exponent starts at
    ``k = m_bits - 1 - e``; if ``floor(num * 2^k / den) < 2^(m_bits-1)``, k grows by one;
    then ``m = round(num * 2^k / den)`` (tie rule ``rounding``; ``num << k`` for k >= 0,
    ``den << -k`` otherwise, so no value exceeds ``max(num, den) * 2^(m_bits+1)``).  A
    rounding carry to ``2^m_bits`` halves m (exact, m is even).  Result: ``m`` in
    ``[2^(m_bits-1), 2^m_bits - 1]`` (normalized); relative error <= 2^-m_bits for the
    nearest modes, < 2^-(m_bits-1) for ``floor``.

    ``k`` outside ``k_range`` is clamped and m refitted at the clamped k: a k above
    the range loses mantissa bits (m may become 0), a k below the range saturates m
    at ``2^m_bits - 1`` and is reported in ``saturated``.  ``num == 0`` gives m = 0.

    Bounds: 0 <= num <= 2^61 - 1, 1 <= den <= 2^(61 - m_bits) - 1, 1 <= m_bits <= 30.
    Returns ``(m, k, saturated)`` int64/int64/bool arrays of the broadcast shape.
    """
    code = rounding_code(rounding)
    _check_backend(backend)
    m_bits = check_int("m_bits", m_bits, 1, 30)
    k_lo, k_hi = (check_int("k_range[0]", k_range[0]), check_int("k_range[1]", k_range[1]))
    if k_lo > k_hi or k_lo < -(2 ** 20) or k_hi > 2 ** 20:
        raise IntsimError(f"k_range: {k_range} is not an interval within +-2^20")
    n64, d64 = _as_i64("num", num), _as_i64("den", den)
    check_range("num", n64, 0, FIT_NUM_LIMIT)
    check_range("den", d64, 1, fit_den_limit(m_bits))
    if backend == "reference":
        return _fit_ref(n64, d64, m_bits, k_lo, k_hi, code)
    nb, db = np.broadcast_arrays(n64, d64)
    # copies: a broadcast view is read-only, which NumPy 1.26 warns about when Numba types it
    m, k, sat = _fit_vec(np.array(nb).ravel(), np.array(db).ravel(), m_bits, k_lo, k_hi, code)
    return m.reshape(nb.shape), k.reshape(nb.shape), sat.reshape(nb.shape)


@njit(cache=True)
def _fit_vec(num, den, m_bits, k_lo, k_hi, code):
    m = np.empty_like(num)
    k = np.empty_like(num)
    sat = np.zeros(num.size, dtype=np.bool_)
    for i in range(num.size):
        m[i], k[i], sat[i] = dyadic_fit_nb(num[i], den[i], m_bits, k_lo, k_hi, code)
    return m, k, sat


# ------------------------------------------------------------ dyadic multiply

def dyadic_mul(x, m, k, rounding: str = HALF_UP, backend: str = "numba") -> np.ndarray:
    """``round(x * m * 2^-k)``: apply a dyadic scale to integers.

    ``x * m`` is formed exactly in int64 (checked: |x * m| <= 2^62 - 1), then a
    rounding right shift by k (k >= 0) with tie rule ``rounding``.  A negative k is a
    left shift, checked against the same bound (it never wraps).
    """
    x64, m64, k64 = _as_i64("x", x), _as_i64("m", m), _as_i64("k", k)
    check_range("m", m64, 0, 2 ** 31 - 1)
    xlim = ABS_LIMIT // max(int(m64.max()) if m64.size else 1, 1)
    check_range("x (|x| * max(m) must stay <= 2^62 - 1)", x64, -xlim, xlim)
    p = x64 * m64
    if np.any(k64 < 0):
        sh = np.maximum(-k64, 0)
        lim = ABS_LIMIT >> np.minimum(sh, 62)
        if np.any((sh > 0) & (np.abs(p) > lim)):
            raise IntsimOverflowError("x * m * 2^-k: left shift (k < 0) exceeds 2^62 - 1")
        p = np.where(k64 < 0, p << sh, p)
    return rshift_round(p, np.maximum(k64, 0), rounding, backend)
