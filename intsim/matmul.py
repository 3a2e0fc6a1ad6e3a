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

from numba import njit, prange

from .errors import IntsimError, IntsimOverflowError, check_int, check_int_array, check_range
from .fixedpoint import _check_backend, bit_length_nb, div_round_nb, kernel, rounding_code
from .gemm import I32_MAX, gemm_acc_rows_par
from .options import DEFAULT_SPEC, Spec
from .qtensor import Dyadic, QTensor
from .requant import M_IN_LIMIT, V_LIMIT, _row_range, check_saturation, requant_row, requant_rows

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


# ------------------------------------------------------------------ two-step fold (SPEC 4.9)

def two_step_factors(w: QWeight) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MixLLM's two-step form of ``w`` (docs/SPEC.md section 4.9): ``(c, u, beta)`` with
    ``m = c[:, None] * u`` and ``b = c[:, None] * beta`` exactly.  ``c[n]`` is the greatest
    common divisor of row n's mantissas and offsets (0 for an all-zero row, whose u and
    beta are 0), so u is the narrowest factorization there is: any other ``c'`` that
    divides the row divides ``c``.  Integer only."""
    c = np.gcd.reduce(np.concatenate([w.m, np.abs(w.b)], axis=1), axis=1)      # [N] int64
    cd = np.where(c > 0, c, 1)[:, None]
    return c, w.m // cd, w.b // cd


def two_step_bits(w: QWeight) -> int:
    """U, the width of the two-step group multipliers ``u`` (bit length of their max)."""
    return int(two_step_factors(w)[1].max()).bit_length()


def _fold_two_step_ref(acc: np.ndarray, xs: np.ndarray, c: np.ndarray, u: np.ndarray,
                       beta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Step 3 in two steps (SPEC 4.9): ``inner[t, n] = sum_g u[n, g] acc[t, n, g] +
    beta[n, g] xs[t, g]`` (int64), then ``P[t, n] = c[n] inner[t, n]`` (int64).  Exact (no
    rounding); bounds: ``inner`` by ``p_bound(K, A, W, max u, max |beta|)``, P as step 3.
    acc int64 [T, N, ng], xs int64 [T, ng]; returns (inner, P)."""
    inner = (acc * u[None, :, :]).sum(axis=2) + (xs[:, None, :] * beta[None, :, :]).sum(axis=2)
    return inner, inner * c[None, :]


@njit(cache=True, nogil=True)
def _fold_two_step_nb(acc, xs, c, u, beta, inner, P):
    """Numba kernel of :func:`_fold_two_step_ref` (same integers, group order ascending)."""
    T, N, ng = acc.shape
    for t in range(T):
        for n in range(N):
            s = np.int64(0)
            for g in range(ng):
                s += u[n, g] * acc[t, n, g] + beta[n, g] * xs[t, g]
            inner[t, n] = s
            P[t, n] = c[n] * s


def fold_two_step(acc: np.ndarray, xs: np.ndarray, w: QWeight, a_bits: int,
                  backend: str = "numba") -> tuple[np.ndarray, np.ndarray]:
    """DI-MatMul step 3 in MixLLM's two steps for the group accumulators ``acc`` int64
    [T, N, ng] and group sums ``xs`` int64 [T, ng] of ``w`` at input width ``a_bits``:
    returns ``(inner, P)``, P equal to the one-step fold's.  Refuses, naming the argument,
    acc or xs outside their section 4.4 bounds (``acc_bound``, ``G (2^A - 1)``) and, naming
    ``w.m / w.b``, a weight whose inner sum's bound or P's exceeds 2^61 - 1: no int64 wraps.
    ``backend="cuda"`` runs the Numba kernel on the CPU (an op only stress records and DUTs
    call; the graph folds in one step)."""
    _check_backend(backend)
    a_bits = check_int("a_bits", a_bits, 2, 8)
    check_int_array("acc", acc, ndim=3)
    check_int_array("xs", xs, ndim=2)
    T, N, ng = acc.shape
    if (N, ng) != w.m.shape or xs.shape != (T, ng):
        raise IntsimError(f"acc / xs: shapes {acc.shape} / {xs.shape} do not match the "
                          f"weight's (N, K / G) = {w.m.shape}")
    for name, v, top in (("acc", acc, acc_bound(w.group_size, a_bits, w.bits)),
                         ("xs", xs, w.group_size * (2 ** a_bits - 1))):
        if v.dtype == np.uint64:
            check_range(name, v, 0, top)
        check_range(name, v.astype(np.int64), -top, top)
    c, u, beta = two_step_factors(w)
    K = w.q.shape[1]
    ib = p_bound(K, a_bits, w.bits, int(u.max()), int(np.abs(beta).max()))
    if ib > P_LIMIT:
        raise IntsimOverflowError(f"w.m / w.b: the two-step inner sum's bound {ib} exceeds "
                                  f"2^61 - 1")
    pb = p_bound(K, a_bits, w.bits, w.m_max, w.b_absmax)       # P = c inner: step 3's bound
    if pb > P_LIMIT:
        raise IntsimOverflowError(f"w.m / w.b: P = c * inner has the bound {pb}, past 2^61 - 1")
    acc, xs = acc.astype(np.int64), xs.astype(np.int64)
    if backend == "reference":
        return _fold_two_step_ref(acc, xs, c, u, beta)
    inner, P = np.empty((T, N), dtype=np.int64), np.empty((T, N), dtype=np.int64)
    _fold_two_step_nb(acc, xs, c, u, beta, inner, P)
    return inner, P


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
                  backend: str = "numba", a_group: int | None = None
                  ) -> tuple[np.ndarray, Dyadic, dict]:
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

    ``a_group``: None (per-token activations, the above), or Ga: group-wise activations
    (docs/SPEC.md section 4.8, :func:`requant_groups`): P then has the scale
    ``Dyadic(m_x, k_x + w.k + E)`` and the bound 2^E times the above; stats add
    ``a_group_e_max`` (the largest group exponent seen).
    """
    _check_backend(backend)
    a_bits, K = _check_args(x, w, a_bits)
    if a_group is not None:
        return _di_matmul_acc_groups(x, w, a_bits, K, a_group, spec, backend)
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
              spec: Spec = DEFAULT_SPEC, backend: str = "numba",
              a_group: int | None = None) -> tuple[QTensor, dict]:
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
    ``out_scale_saturated``.  ``a_group``: group-wise activations (:func:`di_matmul_acc`).
    """
    out_bits = check_int("out_bits", out_bits, 2, 16)
    if not isinstance(out_symmetric, (bool, np.bool_)):
        raise IntsimError(f"out_symmetric: expected a bool, got {type(out_symmetric).__name__}")
    P, scale, stats = di_matmul_acc(x, w, a_bits, spec, backend, a_group)
    y, nsat = requant_rows(P, scale, out_bits, bool(out_symmetric), spec, backend, name="P")
    stats["out_scale_saturated"] = int(nsat)
    return y, stats


# ------------------------------------------------------------------ group-wise activations (SPEC 4.8)
#
# Option ``a_group`` (Widths.a_group, ``intsim convert --a-group``): DI-MatMul's step 1 keeps
# the per-token dyadic scale (m_x, k_x) of requant_rows and gives each group a of Ga input
# channels a power-of-two refinement e[t, a] in [0, E] and its own zero point zg[t, a]:
# codes x_q = clamp(rnd(v' m_in 2^(e_fit + e) / m_x) + zg, 0, Q) stand for
# (x_q - zg) m_x 2^-(k_x + e).  The fold multiplies each group's exact term by 2^(E - e),
# so P has the one per-token scale m_x 2^-(k_x + k + E): exact, bound 2^E times step 3's.

#: E, the largest refinement exponent of a group (an 8-step shared-exponent shifter)
A_GROUP_EMAX = 8
#: the largest activation group size a call accepts (one group per row above K)
A_GROUP_LIMIT = 2 ** 16


def fold_layout(K: int, w_group: int, a_group: int) -> int:
    """The fold's group size Gf for weight groups Gw and activation groups Ga over K
    columns: every fold group lies inside one weight group and one activation group.
    The two partitions must nest (one's boundaries contain the other's): Ga divides Gw,
    Gw divides Ga, Gw = K (one weight group) or Ga >= K (one activation group).  Fold groups
    are [f Gf, min(K, (f + 1) Gf)); only the last may be short (Gf = Ga, Gw = K)."""
    Ga = min(a_group, K)
    if w_group == K:
        return Ga
    if w_group % Ga == 0:
        return Ga
    if Ga % w_group == 0 or Ga == K:
        return w_group
    raise IntsimError(f"a_group: activation groups of {a_group} and weight groups of {w_group} "
                      f"(K = {K}) do not nest; one size must divide the other")


def check_group_bounds(K: int, w: QWeight, a_bits: int, a_group: int) -> tuple[int, int, int]:
    """:func:`check_bounds` for group-wise activations: returns ``(Gf, acc bound, P bound)``.
    acc has at most Gf <= Gw terms (the int32 bound of step 2 holds a fortiori); every
    fold term is shifted left by E - e <= E, so every partial sum of P is at most
    2^E K (2^A - 1)((2^W - 1) max m + max |b|), checked <= 2^61 - 1 naming ``a_group``."""
    a_group = check_int("a_group", a_group, 1, A_GROUP_LIMIT)
    Gf = fold_layout(K, w.group_size, a_group)
    ab, pb = check_bounds(K, w, a_bits)
    pbg = pb << A_GROUP_EMAX
    if pbg > P_LIMIT:
        raise IntsimOverflowError(
            f"a_group: 2^E * K * (2^a_bits - 1) * ((2^w.bits - 1) * max m + max |b|) = {pbg} "
            f"(E = {A_GROUP_EMAX}) exceeds the int64 fold limit 2^61 - 1; use fewer weight-scale "
            f"mantissa bits or per-token activations")
    return Gf, acc_bound(min(Gf, K), a_bits, w.bits), pbg


def _fits_ref(L, d, X):
    """``L 2^d <= X`` exactly (L >= 0, X >= 1, any d): ``L <= X >> d`` for d >= 0 (L is an
    integer), ``ceil(L / 2^-d) <= X`` for d < 0; shifts capped at 62 (L, X < 2^61)."""
    dp = np.minimum(np.maximum(d, 0), 62)
    s = np.minimum(np.maximum(-d, 0), 62)
    up = (L >> s) + ((L & ((np.int64(1) << s) - 1)) != 0)
    return np.where(d >= 0, L <= (X >> dp), up <= X)


def _group_codes_ref(v, m_in, k_in, bits, Ga, spec):
    """SPEC 4.8 step 1 as written (NumPy): ``(q, zg, eg, m, k, nsat)``."""
    return group_codes_with(v, m_in, k_in, bits, Ga, spec, A_GROUP_EMAX, False)


def group_codes_with(v, m_in, k_in, bits, Ga, spec, E, shared_zero_point):
    """:func:`_group_codes_ref` with the group exponent's cap ``E`` and, where
    ``shared_zero_point``, every group keeping the row's zero point (its codes clamped
    into [0, Q]) instead of its own: the deviations ``intsim.mutants`` scores."""
    from .fixedpoint import RC_CEIL, _fit_ref, bit_length_ref
    from .requant import PRE_BITS, _code_div_ref, _requant_ref
    code = rounding_code(spec.rounding)
    k_lo, k_hi = spec.k_range
    T, K = v.shape
    Q = np.int64(2 ** bits - 1)
    q, zp, m, k, nsat = _requant_ref(v, m_in, k_in, bits, False, spec.m_bits, k_lo, k_hi, code, True)
    R = np.maximum(v.max(axis=-1), 0) - np.minimum(v.min(axis=-1), 0)
    sh = np.maximum(bit_length_ref(R) - PRE_BITS, 0)
    vs = v >> sh[:, None]
    Rs = np.maximum(vs.max(axis=-1), 0) - np.minimum(vs.min(axis=-1), 0)
    m2, e, sat = _fit_ref(m_in * Rs, Q, spec.m_bits, k_lo - k_in + sh, k_hi - k_in + sh, RC_CEIL)
    by_scale = ~sat & (m2 > 0) & (bit_length_ref(m2) - np.minimum(e, 0) <= 62)
    md = np.where(by_scale, m2, 1)
    ed = np.where(by_scale, e, 0)
    na = -(-K // Ga)
    zg = np.repeat(zp.astype(np.int64)[:, None], na, 1)
    eg = np.zeros((T, na), dtype=np.int64)
    q = q.astype(np.int64)
    for a in range(na):
        sl = slice(a * Ga, min(K, a * Ga + Ga))
        lo = np.minimum(vs[:, sl].min(axis=1), 0)
        L = m_in * (np.maximum(vs[:, sl].max(axis=1), 0) - lo)
        ea = np.zeros(T, dtype=np.int64)
        for c in range(1, E + 1):                      # the largest e in [0, E] that fits
            ea = np.where(_fits_ref(L, ed + c, Q * md), c, ea)
        d = ed + ea
        z = zp.astype(np.int64) if shared_zero_point else _code_div_ref(-lo * m_in, md, d, code)
        qa = np.clip(_code_div_ref(vs[:, sl] * m_in[:, None], md[:, None], d[:, None], code)
                     + z[:, None], 0, Q)
        q[:, sl] = np.where(by_scale[:, None], qa, q[:, sl])
        zg[:, a] = np.where(by_scale, z, zg[:, a])
        eg[:, a] = np.where(by_scale, ea, 0)
    return q, zg, eg, m, k, nsat


@njit(cache=True, inline="always")
def _fits_nb(L, d, X):
    if d >= 0:
        return L <= (X >> min(d, np.int64(62)))
    s = min(-d, np.int64(62))
    return (L >> s) + np.int64((L & ((np.int64(1) << s) - 1)) != 0) <= X


@njit(cache=True, inline="always")
def _gdiv_nb(a, m_o, d, code):
    """``rnd(a 2^d / m_o)``; a = 0 gives 0 without a shift (d may then be large)."""
    if a == 0:
        return np.int64(0)
    if d >= 0:
        return div_round_nb(a << d, m_o, code)
    return div_round_nb(a, m_o << (-d), code)


@njit(cache=True)
def group_requant_row(v, m_in, k_in, bits, Ga, E, m_bits, k_lo, k_hi, code, out, zg, eg):
    """The Numba kernel of one row of :func:`requant_groups` (SPEC 4.8 step 1): the row's
    requant_row (fitted mode), then per group of Ga its exponent and codes.  Returns
    ``(m, k, saturated)``; ``zg``, ``eg`` receive the group zero points and exponents."""
    z, mi, k, sat = requant_row(v, np.int64(0), m_in, k_in, bits, False, m_bits, k_lo, k_hi,
                                code, True, out)
    for a in range(zg.shape[0]):
        zg[a], eg[a] = z, 0
    if sat or mi == 0:
        return mi, k, sat
    sh, _, _ = _row_range(v, np.int64(0), False)
    e = k - k_in + sh
    if bit_length_nb(mi) - min(e, np.int64(0)) > 62:
        return mi, k, sat
    K = v.shape[0]
    X = ((np.int64(1) << bits) - 1) * mi
    Q = (np.int64(1) << bits) - 1
    for a in range(zg.shape[0]):
        j0, j1 = a * Ga, min(K, a * Ga + Ga)
        gmin = np.int64(v[j0]) >> sh
        gmax = gmin
        for j in range(j0 + 1, j1):
            x = np.int64(v[j]) >> sh
            gmin = min(gmin, x)
            gmax = max(gmax, x)
        lo = min(gmin, np.int64(0))
        L = m_in * (max(gmax, np.int64(0)) - lo)
        ea = np.int64(0)
        for c in range(E, 0, -1):                     # the largest e in [0, E] that fits
            if _fits_nb(L, e + c, X):
                ea = np.int64(c)
                break
        d = e + ea
        za = _gdiv_nb(-lo * m_in, mi, d, code)
        for j in range(j0, j1):
            t = _gdiv_nb((np.int64(v[j]) >> sh) * m_in, mi, d, code) + za
            out[j] = min(max(t, np.int64(0)), Q)
        zg[a], eg[a] = za, ea
    return mi, k, sat


@njit(cache=True, parallel=True)
def _group_requant_nb(v, m_in, k_in, bits, Ga, E, m_bits, k_lo, k_hi, code, q, zg, eg):
    rows = v.shape[0]
    m = np.zeros(rows, dtype=np.int64)
    k = np.zeros(rows, dtype=np.int64)
    sat = np.zeros(rows, dtype=np.int64)
    for i in prange(rows):
        m[i], k[i], s = group_requant_row(v[i], m_in[i], k_in[i], bits, Ga, E, m_bits, k_lo,
                                          k_hi, code, q[i], zg[i], eg[i])
        sat[i] = 1 if s else 0
    return m, k, sat.sum()


def requant_groups(v: np.ndarray, scale_in: Dyadic, bits: int, a_group: int,
                   spec: Spec = DEFAULT_SPEC, backend: str = "numba", name: str = "x"):
    """Group-wise activation codes (docs/SPEC.md section 4.8 step 1).

    ``v``: int64 [T, K] exact integers with per-row scale ``scale_in`` (as requant_rows);
    ``bits``: A; ``a_group``: Ga.  Per row, requant_rows' asymmetric fitted-mode scale
    ``(m_x, k_x)`` with fit exponent e and pre-shift sh; per group a (columns
    [a Ga, min(K, (a+1) Ga))): ``lo = min(0, min v')``, ``hi = max(0, max v')``, the
    exponent ``e_a`` = the largest e' in [0, E] with ``m_in (hi - lo) 2^(e + e') <= Q m_x``,
    ``zg = rnd(-lo m_in 2^(e + e_a) / m_x)``, codes ``clamp(rnd(v' m_in 2^(e + e_a) / m_x)
    + zg, 0, Q)``; tie rule ``spec.rounding``.  Rows whose codes do not follow the fitted
    scale (zero, saturated, refitted past int64) keep requant_rows' codes, zg = its zero
    point, e = 0.  Returns ``(q uint8 [T, K], Dyadic(m_x, k_x), zg int64 [T, na],
    eg int64 [T, na], nsat)``.
    """
    check_int_array(name, v, ndim=2)
    bits = check_int("a_bits", bits, 2, 8)
    Ga = check_int("a_group", a_group, 1, A_GROUP_LIMIT)
    if spec.requant_mode != "fitted":
        raise IntsimError("a_group: group-wise activations refine the fitted scale; they need "
                          f"requant_mode 'fitted', not {spec.requant_mode!r}")
    if v.shape[1] == 0:
        raise IntsimError(f"{name}: needs a non-empty last axis, got shape {v.shape}")
    v64 = v.astype(np.int64, copy=False)
    check_range(name, v64, -V_LIMIT, V_LIMIT)
    T, K = v.shape
    m_in = np.broadcast_to(scale_in.m, (T,)).astype(np.int64)
    k_in = np.broadcast_to(scale_in.k, (T,)).astype(np.int64)
    check_range(f"{name} scale m", m_in, 0, M_IN_LIMIT)
    check_range(f"{name} scale k", k_in, -(2 ** 20), 2 ** 20)
    Ga = min(Ga, K)
    if backend == "reference":
        q, zg, eg, m, k, nsat = _group_codes_ref(v64, m_in, k_in, bits, Ga, spec)
    else:
        na = -(-K // Ga)
        q = np.empty((T, K), dtype=np.int64)
        zg = np.empty((T, na), dtype=np.int64)
        eg = np.empty((T, na), dtype=np.int64)
        k_lo, k_hi = spec.k_range
        m, k, nsat = _group_requant_nb(np.ascontiguousarray(v64), np.ascontiguousarray(m_in),
                                       np.ascontiguousarray(k_in), bits, Ga, A_GROUP_EMAX,
                                       spec.m_bits, k_lo, k_hi, rounding_code(spec.rounding),
                                       q, zg, eg)
    check_saturation(name, int(nsat), spec)
    return q.astype(np.uint8), Dyadic(m, k), zg, eg, int(nsat)


def _fold_qsum(w: QWeight, Gf: int) -> np.ndarray:
    """``sum_{j in f} q[n, j]`` per fold group f (int64 [N, nf]); cached on the weight."""
    cache = w.__dict__.setdefault("_fold_qsum", {})
    if Gf not in cache:
        K = w.q.shape[1]
        cache[Gf] = np.add.reduceat(w.q.astype(np.int64), np.arange(0, K, Gf), axis=1)
    return cache[Gf]


def _di_acc_grp_ref(xq, zg, eg, w: QWeight, Ga: int, Gf: int) -> tuple[np.ndarray, int]:
    """SPEC 4.8 steps 2-3 as written: per fold group f (inside weight group wg and
    activation group a), ``acc = sum (x_q - zg[a]) q`` and ``xs = sum (x_q - zg[a])``,
    ``P += (m acc + b xs) << (E - e[a])`` (int64; bound :func:`check_group_bounds`)."""
    T, K = xq.shape
    N = w.q.shape[0]
    P = np.zeros((T, N), dtype=np.int64)
    amax = 0
    for f0 in range(0, K, Gf):
        sl = slice(f0, min(K, f0 + Gf))
        a, wg = f0 // Ga, f0 // w.group_size
        xc = xq[:, sl].astype(np.int64) - zg[:, a][:, None]
        acc = xc @ w.q[:, sl].astype(np.int64).T                       # |.| <= acc bound
        amax = max(amax, int(np.abs(acc).max()) if acc.size else 0)
        term = acc * w.m[None, :, wg] + xc.sum(axis=1)[:, None] * w.b[None, :, wg]
        P += term << (A_GROUP_EMAX - eg[:, a])[:, None]
    return P, amax


def _di_matmul_acc_groups(x: QTensor, w: QWeight, a_bits: int, K: int, a_group, spec: Spec,
                          backend: str) -> tuple[np.ndarray, Dyadic, dict]:
    """:func:`di_matmul_acc` with group-wise activations (SPEC 4.8)."""
    if backend == "cuda":
        raise IntsimError("a_group: group-wise activations have no GPU twin (intsim.cudaops); "
                          "run them with backend 'numba' or 'reference'")
    Gf, ab, pb = check_group_bounds(K, w, a_bits, a_group)
    lead = x.q.shape[:-1]
    v = x.centered().reshape(-1, K)
    m_x, k_x = (np.broadcast_to(a, lead).reshape(-1) for a in (x.scale.m, x.scale.k))
    xq, sc, zg, eg, nsat = requant_groups(v, Dyadic(m_x, k_x), a_bits, a_group, spec, backend)
    Ga = min(a_group, K)
    N = w.q.shape[0]
    if backend == "reference":
        P, amax = _di_acc_grp_ref(xq, zg, eg, w, Ga, Gf)
    else:
        from .gemm import gemm_acc_groups_par
        P = np.zeros((xq.shape[0], N), dtype=np.int64)
        amax = int(gemm_acc_groups_par(np.ascontiguousarray(xq), zg, eg, w.q, _fold_qsum(w, Gf),
                                       w.m, w.b, w.group_size, Ga, Gf, A_GROUP_EMAX, P)) if P.size else 0
    P = P.reshape(lead + (N,))
    scale = Dyadic(sc.m.reshape(lead), sc.k.reshape(lead) + w.k + A_GROUP_EMAX)
    stats = {"in_scale_saturated": nsat, "acc_absmax": amax, "acc_bound": ab,
             "p_absmax": int(np.abs(P).max()) if P.size else 0, "p_bound": pb,
             "a_group_e_max": int(eg.max()) if eg.size else 0}
    return P, scale, stats
