"""DI-MatMul: dynamic-integer matmul of per-token activations with integer weights.

``di_matmul(x, w, a_bits, out_bits, out_symmetric)`` (I-LLM Eqs. 2-8) in four integer
steps (docs/SPEC.md section 4, "DI-MatMul"):

1. input quantization: ``requant_rows(x - zp_x, s_x, a_bits, asymmetric)`` gives unsigned
   codes ``x_q`` in [0, 2^A - 1], a zero point ``zx`` per token and a scale (m_x, k_x).
2. integer core, per weight group g of G columns (int32 accumulator):
   ``acc[t, n, g] = sum_{j in g} (x_q[t, j] - zx[t]) * q[n, j]`` and
   ``xs[t, g] = sum_{j in g} (x_q[t, j] - zx[t])``.
3. fold (int64): ``P[t, n] = sum_g m[n, g] * acc[t, n, g] + b[n, g] * xs[t, g]``.
   P is exact: ``P * m_x * 2^-(k_x + k)`` is the real product of the quantized input and
   the integer weight, with no rounding anywhere before step 4.
4. output: ``requant_rows(P, (m_x, k_x + k), out_bits, out_symmetric)``, per token.

The weight container ``QWeight`` holds the codes and the group-wise integer scale
``w[n, j] = (m[n, g] * q[n, j] + b[n, g]) * 2^-k``, ``g = j // G``, so the group scales
enter exactly, as integer multipliers of the group accumulators, BEFORE the per-token
output requantization takes its row min/max (illm-method section 6 items 4-5).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import IntsimError, IntsimOverflowError, check_int, check_int_array, check_range
from .fixedpoint import _check_backend, kernel
from .gemm import I32_MAX, gemm_acc_rows_par
from .options import DEFAULT_SPEC, Spec
from .qtensor import Dyadic, QTensor
from .requant import V_LIMIT, requant_rows

#: weight mantissas m[n, g] lie in [0, M_LIMIT] (24 bits)
M_LIMIT = 2 ** 24 - 1
#: weight offsets b[n, g] lie in [-B_LIMIT, B_LIMIT]; covers b = -m * zp for 24-bit m, zp <= 255
B_LIMIT = 2 ** 32 - 1
#: |k| bound of the shared weight exponent (k_x + k stays far inside requant's +-2^20)
K_LIMIT = 2 ** 16
#: bound of the group accumulator (int32)
ACC_LIMIT = I32_MAX
#: bound of the folded accumulator P: requant_rows' input limit 2^61 - 1
P_LIMIT = V_LIMIT


# ------------------------------------------------------------------ weight container

@dataclass(frozen=True, eq=False)
class QWeight:
    """Integer weight matrix [N, K] (N output channels, K input features).

    ``q``: uint8 codes [N, K] in [0, 2^bits - 1]; ``bits``: W in 2..8;
    ``group_size``: G, a divisor of K (G == K: one scale per output channel);
    ``m``: int64 [N, K/G] mantissas in [0, 2^24 - 1]; ``b``: int64 [N, K/G] offsets in
    [-(2^32 - 1), 2^32 - 1]; ``k``: one shared exponent, |k| <= 2^16.
    Real weight: ``w[n, j] = (m[n, g] * q[n, j] + b[n, g]) * 2^-k`` with ``g = j // G``.
    The zero-point form is ``b = -m * zp``; GGUF Q4_1's ``d * q + min`` is ``m = d * 2^k``,
    ``b = min * 2^k`` (when both are integers at one k).

    ``row_bits``: optional uint8 [N], mixed precision between output channels (MixLLM):
    row n's codes lie in [0, 2^row_bits[n] - 1], ``2 <= row_bits[n] <= bits``; ``bits`` is
    then the widest row, and every bound below uses it (the narrow rows only tighten them).

    Derived at construction (not fields): ``qsum`` int64 [N, K/G], the per-group sum of
    the codes (used by the fast kernel), ``m_max`` and ``b_absmax`` (used by the bounds).
    """
    q: np.ndarray
    bits: int
    group_size: int
    m: np.ndarray
    b: np.ndarray
    k: int
    row_bits: np.ndarray | None = None
    qsum: np.ndarray = field(init=False, repr=False)
    m_max: int = field(init=False, repr=False)
    b_absmax: int = field(init=False, repr=False)

    def __post_init__(self):
        bits = check_int("QWeight.bits", self.bits, 2, 8)
        check_int_array("QWeight.q", self.q, ndim=2, dtypes=(np.uint8,))
        N, K = self.q.shape
        if N == 0 or K == 0:
            raise IntsimError(f"QWeight.q: needs N >= 1 and K >= 1, got shape {self.q.shape}")
        G = check_int("QWeight.group_size", self.group_size, 1, K)
        if K % G:
            raise IntsimError(f"QWeight.group_size: {G} does not divide K = {K}")
        check_range("QWeight.q", self.q, 0, 2 ** bits - 1)
        if self.row_bits is not None:
            check_int_array("QWeight.row_bits", self.row_bits, ndim=1)
            if self.row_bits.shape != (N,):
                raise IntsimError(f"QWeight.row_bits: shape {self.row_bits.shape} != (N,) = ({N},)")
            check_range("QWeight.row_bits", self.row_bits, 2, bits)
            rb = self.row_bits.astype(np.uint8)
            top = (np.int64(1) << rb.astype(np.int64)) - 1
            over = self.q.astype(np.int64) > top[:, None]
            if over.any():
                n = int(np.argwhere(over)[0][0])
                raise IntsimOverflowError(f"QWeight.q: row {n} holds code {int(self.q[n].max())} "
                                          f"above its row_bits {int(rb[n])}-bit range")
            object.__setattr__(self, "row_bits", rb)
        ng = K // G
        for name, lo, hi in (("m", 0, M_LIMIT), ("b", -B_LIMIT, B_LIMIT)):
            v = getattr(self, name)
            check_int_array(f"QWeight.{name}", v, ndim=2)
            if v.shape != (N, ng):
                raise IntsimError(f"QWeight.{name}: shape {v.shape} != (N, K / group_size) = "
                                  f"{(N, ng)}")
            if v.dtype == np.uint64:
                check_range(f"QWeight.{name}", v, 0, hi)
            v64 = v.astype(np.int64)
            check_range(f"QWeight.{name}", v64, lo, hi)
            object.__setattr__(self, name, v64)
        k = check_int("QWeight.k", self.k, -K_LIMIT, K_LIMIT)
        object.__setattr__(self, "bits", bits)
        object.__setattr__(self, "group_size", G)
        object.__setattr__(self, "k", k)
        q = np.ascontiguousarray(self.q)
        object.__setattr__(self, "q", q)
        qsum = q.reshape(N, ng, G).sum(axis=2, dtype=np.int64)
        object.__setattr__(self, "qsum", qsum)
        object.__setattr__(self, "m_max", int(self.m.max()))
        object.__setattr__(self, "b_absmax", int(np.abs(self.b).max()))

    @property
    def shape(self):
        return self.q.shape

    @property
    def n_groups(self) -> int:
        return self.q.shape[1] // self.group_size


# ------------------------------------------------------------------ bounds

def acc_bound(group_size: int, a_bits: int, w_bits: int) -> int:
    """|acc[t, n, g]| <= G * (2^A - 1) * (2^W - 1): G terms, |x_q - zx| <= 2^A - 1 (both
    codes in [0, 2^A - 1]) and 0 <= q <= 2^W - 1."""
    return group_size * (2 ** a_bits - 1) * (2 ** w_bits - 1)


def max_group_size(a_bits: int, w_bits: int) -> int:
    """Largest G with acc_bound(G, A, W) <= 2^31 - 1 (e.g. 33025 for A = W = 8)."""
    return ACC_LIMIT // ((2 ** a_bits - 1) * (2 ** w_bits - 1))


def p_bound(K: int, a_bits: int, w_bits: int, m_max: int, b_absmax: int) -> int:
    """|every partial sum of P| <= K * (2^A - 1) * ((2^W - 1) * max m + max |b|).

    Per group, |m * acc| <= m * G (2^A-1)(2^W-1) and |b * xs| <= |b| * G (2^A-1); the K/G
    groups add up to the bound, whatever the order of summation."""
    return K * (2 ** a_bits - 1) * ((2 ** w_bits - 1) * m_max + b_absmax)


def check_bounds(K: int, w: QWeight, a_bits: int) -> tuple[int, int]:
    """Raise unless the int32 group accumulator and the int64 fold provably fit."""
    ab = acc_bound(w.group_size, a_bits, w.bits)
    if ab > ACC_LIMIT:
        raise IntsimOverflowError(
            f"group_size: G * (2^a_bits - 1) * (2^w.bits - 1) = {w.group_size} * "
            f"{2 ** a_bits - 1} * {2 ** w.bits - 1} = {ab} exceeds the int32 accumulator "
            f"(2^31 - 1); use a smaller group_size or fewer bits")
    pb = p_bound(K, a_bits, w.bits, w.m_max, w.b_absmax)
    if pb > P_LIMIT:
        raise IntsimOverflowError(
            f"w.m / w.b: K * (2^a_bits - 1) * ((2^w.bits - 1) * max m + max |b|) = {pb} "
            f"exceeds the int64 fold limit 2^61 - 1 (max m = {w.m_max}, max |b| = "
            f"{w.b_absmax}); use fewer weight-scale mantissa bits")
    return ab, pb


# ------------------------------------------------------------------ core: reference

def _di_acc_ref(xq: np.ndarray, zx: np.ndarray, w: QWeight) -> tuple[np.ndarray, int]:
    """Steps 2-3 as written: centred codes, per-group int64 dot products, int64 fold.

    xq: [T, K] codes in [0, 2^A - 1]; zx: [T] int64.  Returns (P int64 [T, N], max |acc|).
    Every value is an exact integer (bounds: ``check_bounds``); the acc values are
    computed in int64 and each fits int32 by ``acc_bound``.
    """
    T, K = xq.shape
    N = w.q.shape[0]
    G, ng = w.group_size, w.n_groups
    xc = xq.astype(np.int64) - zx.astype(np.int64)[:, None]          # |xc| <= 2^A - 1
    xg = xc.reshape(T, ng, G)
    qg = w.q.astype(np.int64).reshape(N, ng, G)                        # 0 <= q <= 2^W - 1
    acc = np.zeros((T, N, ng), dtype=np.int64)
    for g in range(ng):
        acc[:, :, g] = xg[:, g, :] @ qg[:, g, :].T                     # int64, |.| <= acc_bound
    xs = xg.sum(axis=2)                                                # [T, ng], |.| <= G(2^A-1)
    P = (acc * w.m[None, :, :]).sum(axis=2) + (xs[:, None, :] * w.b[None, :, :]).sum(axis=2)
    amax = int(np.abs(acc).max()) if acc.size else 0
    return P, amax


# ------------------------------------------------------------------ public ops

def _check_args(x, w, a_bits):
    if not isinstance(x, QTensor):
        raise IntsimError(f"x: expected a QTensor, got {type(x).__name__}")
    if not isinstance(w, QWeight):
        raise IntsimError(f"w: expected a QWeight, got {type(w).__name__}")
    a_bits = check_int("a_bits", a_bits, 2, 8)
    K = w.q.shape[1]
    if x.q.shape[-1] != K:
        raise IntsimError(f"x: last axis {x.q.shape[-1]} != weight K = {K}")
    return a_bits, K


def di_matmul_acc(x: QTensor, w: QWeight, a_bits: int, spec: Spec = DEFAULT_SPEC,
                  backend: str = "numba") -> tuple[np.ndarray, Dyadic, dict]:
    """DI-MatMul steps 1-3: exact int64 accumulators and their per-token scale.

    ``x``: QTensor [..., K] (any width, per-row scale); ``w``: QWeight [N, K];
    ``a_bits``: A in 2..8, the width the input is requantized to (step 1, asymmetric,
    unsigned codes in [0, 2^A - 1], tie rule ``spec.rounding``).
    Returns ``(P, scale, stats)``: P int64 [..., N] with real value ``P * scale``,
    ``scale = Dyadic(m_x, k_x + w.k)`` per row, and ``stats`` (below).

    Integer arithmetic and bounds (A, W = w.bits, G = w.group_size):

    * ``acc[t,n,g] = sum_{j in g} (x_q - zx) * q``: int32; |acc| <= G (2^A-1)(2^W-1)
      (|x_q - zx| <= 2^A - 1, 0 <= q <= 2^W - 1), checked <= 2^31 - 1 at the call.
      The Numba kernel (``intsim.gemm.gemm_acc_rows_par``) forms ``sum x_q * q``
      (0..bound) and subtracts ``zx * sum q`` (0..bound): the same integer.
    * ``xs[t,g] = sum_{j in g} (x_q - zx)``: |xs| <= G (2^A - 1), int64.
    * ``P = sum_g m * acc + b * xs``: int64; every partial sum is bounded by
      K (2^A-1) ((2^W-1) max m + max|b|), checked <= 2^61 - 1 (requant_rows' limit).
    No rounding in steps 2-3.  An all-zero input row gives zx = 0, P = 0 and scale m = 0.

    stats: ``in_scale_saturated`` (rows), ``acc_absmax``, ``acc_bound``, ``p_absmax``,
    ``p_bound`` (Python ints, for the overflow report).
    """
    _check_backend(backend)
    a_bits, K = _check_args(x, w, a_bits)
    ab, pb = check_bounds(K, w, a_bits)
    xq_t, nsat_in = requant_rows(x.centered(), x.scale, a_bits, False, spec, backend, name="x")
    lead = x.q.shape[:-1]
    N = w.q.shape[0]
    xq = np.ascontiguousarray(xq_t.q.reshape(-1, K))                  # uint8 [T, K]
    zx = np.ascontiguousarray(xq_t.zp.reshape(-1).astype(np.int64))    # [T]
    if backend == "reference":
        P, amax = _di_acc_ref(xq, zx, w)
    else:
        P = np.empty((xq.shape[0], N), dtype=np.int64)
        amax = int(kernel(backend, gemm_acc_rows_par, "gemm_acc")(xq, zx, w.q, w.qsum, w.m, w.b, w.group_size, P)) if P.size else 0
    P = P.reshape(lead + (N,))
    scale = Dyadic(xq_t.scale.m, xq_t.scale.k + w.k)
    stats = {"in_scale_saturated": int(nsat_in), "acc_absmax": amax, "acc_bound": ab,
             "p_absmax": int(np.abs(P).max()) if P.size else 0, "p_bound": pb}
    return P, scale, stats


def di_matmul(x: QTensor, w: QWeight, a_bits: int, out_bits: int, out_symmetric: bool,
              spec: Spec = DEFAULT_SPEC, backend: str = "numba") -> tuple[QTensor, dict]:
    """DI-MatMul: ``y = x @ w^T`` re-quantized per token, integer only.

    Steps 1-3 are :func:`di_matmul_acc` (exact P and its scale); step 4 is
    ``requant_rows(P, (m_x, k_x + w.k), out_bits, out_symmetric, spec)``: per token,
    asymmetric ``lo = min(P, 0)``, ``R = max(P, 0) - lo``, ``Q = 2^n - 1`` (symmetric:
    ``R = max |P|``, ``Q = 2^(n-1) - 1``, zp = 0); the output scale is fitted first,
    ``(m_y, e) = fit_ceil(m_x * R / Q)``, and the codes are taken against it (the default
    ``requant_mode = "fitted"``): ``zp = rnd(-lo * m_x * 2^e / m_y)``, ``y = clamp(rnd(P *
    m_x * 2^e / m_y) + zp, 0, Q)``, scale ``m_y * 2^-(e + k_x + k)`` (``"range"`` mode
    divides by R instead: docs/SPEC.md section 3).  Tie rule ``spec.rounding`` throughout
    (the fit rounds up); R = 0 gives codes 0 and scale m = 0.  ``out_bits`` in 2..16.

    Returns ``(y, stats)``: y a QTensor [..., N] (unsigned codes for asymmetric, signed
    symmetric codes otherwise), stats as :func:`di_matmul_acc` plus
    ``out_scale_saturated``.
    """
    out_bits = check_int("out_bits", out_bits, 2, 16)
    if not isinstance(out_symmetric, (bool, np.bool_)):
        raise IntsimError(f"out_symmetric: expected a bool, got {type(out_symmetric).__name__}")
    P, scale, stats = di_matmul_acc(x, w, a_bits, spec, backend)
    y, nsat = requant_rows(P, scale, out_bits, bool(out_symmetric), spec, backend, name="P")
    stats["out_scale_saturated"] = int(nsat)
    return y, stats
