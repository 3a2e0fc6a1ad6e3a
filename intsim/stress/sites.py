"""The catalogue of SPEC sites a stress suite must reach: every rounding, saturation,
clamp, cap and proven bound docs/SPEC.md names, and the branches between them.  Each
stress case lists the sites it reaches (``Case.sites``); ``intsim.stress.coverage``
turns the suite's manifest into the table of docs/COVERAGE.md."""
from __future__ import annotations

#: id -> (SPEC section, what kind of site, what it is).  Kinds: rounding (a tie rule
#: decides), saturation (a value or scale clamps at its range, counted), clamp (a designed
#: clamp or floor), cap (a designed cap), bound (an accumulator or input at its proven
#: limit), branch (a case split of the arithmetic).
SITES = {
    # 1.3 / 1.4 primitives
    "rnd.shift": ("1.3", "rounding", "rounding right shift rnd(x / 2^s): exact ties of both signs and parities"),
    "rnd.shift.far": ("1.3", "branch", "shift s >= 63: 0, or -1 for negative x under floor"),
    "rnd.div": ("1.3", "rounding", "rounding division rnd(a / b): exact ties of both signs and parities"),
    "rnd.bound": ("1.3", "bound", "|x|, |a|, b up to 2^62 - 1 (remainder form, no 2a + b)"),
    "fit.round": ("1.4", "rounding", "dyadic fit step 3: mantissa m = rnd(num 2^k / den) on a tie"),
    "fit.normalize": ("1.4", "branch", "dyadic fit step 2: normalization decided on the floor quotient"),
    "fit.carry": ("1.4", "clamp", "dyadic fit step 4: a rounding carry to 2^m_bits halves m"),
    "fit.kmax": ("1.4", "clamp", "dyadic fit step 5: k > k_max refits at k_max (bits lost, down to m = 0)"),
    "fit.kmin": ("1.4", "saturation", "dyadic fit step 5: k < k_min saturates m = 2^m_bits - 1 at k_min"),
    "fit.zero": ("1.4", "branch", "dyadic fit step 6: num = 0 gives m = 0, k = 0 clamped into the range"),
    "fit.bound": ("1.4", "bound", "dyadic fit inputs num = 2^61 - 1, den = 2^(61 - m_bits) - 1"),
    "isqrt.square": ("1.4", "branch", "integer square root at perfect squares r^2 and r^2 +- 1"),
    "isqrt.max": ("1.4", "bound", "integer square root at its largest input 2^62 - 1"),
    # 3 requantizer
    "requant.codes.fitted": ("3", "rounding", "codes against the fitted scale: exact ties"),
    "requant.codes.range": ("3", "rounding", "codes from the exact range (range mode): exact ties"),
    "requant.zp": ("3", "rounding", "zero point rnd(-lo' ...) on a tie"),
    "requant.clamp": ("3", "clamp", "code clamp at Q when a code and the zero point both round up on a tie"),
    "requant.fit.round": ("3", "rounding", "the range mode's scale fit on a mantissa tie"),
    "requant.preshift": ("3", "branch", "pre-shift sh = max(0, bitlen(R) - 32) on both sides of R = 2^32"),
    "requant.preshift.floor": ("3", "clamp", "the pre-shift floors (negative values, range recomputed from v')"),
    "requant.zero": ("3", "branch", "zero row R' = 0: codes 0, zp 0, m = 0, k = 0"),
    "requant.kmin": ("3", "saturation", "scale saturation at k_min (overflow saturate): range codes"),
    "requant.kmax": ("3", "clamp", "scale refitted at k_max (tiny rows)"),
    "requant.int64": ("3", "branch", "fitted mode falls back to range codes where m << -e leaves int64"),
    "requant.width": ("3", "bound", "code widths 2..16 and m_bits 2..16 at their extremes"),
    "requant.bound": ("3", "bound", "|v| = 2^61 - 1, m_in = 2^28, |k_in| = 2^20"),
    # 4 DI-MatMul
    "matmul.in": ("4.2", "rounding", "step 1: the input requantized to A bits (ties reach the exact P)"),
    "matmul.out": ("4.2", "rounding", "step 4: the output requantization of P (ties, both modes)"),
    "matmul.fold": ("4.2", "branch", "step 3: group fold with offsets b, m up to 2^24 - 1, |b| up to 2^32 - 1"),
    "matmul.zero": ("4.4", "branch", "all-zero input row: zx = 0, P = 0, output scale m = 0"),
    "twostep.fold": ("4.9", "branch", "the two-step fold: canonical c (row gcd) up to 2^16, u up to 255, inner then "
                     "P = c inner, equal to the one-step fold"),
    "twostep.bound": ("4.9", "bound", "the inner sum at K (2^A - 1)((2^W - 1) max u + max |beta|), attained"),
    "twostep.int32": ("4.9", "bound", "a zero-point inner on both sides of 2^31 - 1 at A = W = U = 8 (K = 129, 130)"),
    "matmul.row_bits": ("4.1", "branch", "mixed row widths (row_bits) with group-wise zero-point weights"),
    "matmul.acc.bound": ("4.4", "bound", "int32 group accumulator at G (2^A - 1)(2^W - 1) = 2147450625"),
    "matmul.p.bound": ("4.4", "bound", "P at its proven bound K (2^A - 1)((2^W - 1) max m + max |b|) for the "
                                       "record's K (all-max operands): attained exactly"),
    # 5 DI-Exp
    "agroup.exp": ("4.8", "branch", "group exponent e at 0 (the massive-channel group), between, and at its cap E "
                                    "(a zero group: zero point 0)"),
    "agroup.ties": ("4.8", "rounding", "group codes and zero point on exact ties at the refined step, every tie rule"),
    "agroup.p.bound": ("4.8", "bound", "the fold at 2^E K (2^A - 1)((2^W - 1) max m + max |b|): attained exactly"),
    "agroup.nest": ("4.8", "branch", "activation groups inside weight groups, weight groups inside activation "
                                     "groups, a short last group over per-channel weights"),
    "agroup.fallback": ("4.8", "branch", "rows that keep per-token codes (e = 0): a zero row, a saturated scale"),
    "exp.mf": ("5.2", "clamp", "step 0a: m_f = m + (m >> 1) - (m >> 4), the shifts' floors"),
    "exp.tcap": ("5.3", "cap", "the T cap: normalization j = max(0, k - 29 - bitlen(m_f)) on both sides of 0"),
    "exp.xshift": ("5.2", "rounding", "step 0c: x' = rnd(x / 2^j) on a tie that reaches the output"),
    "exp.T.round": ("5.2", "rounding", "step 1: T = rnd(2^k' / m_f) (floor and nearest differ)"),
    "exp.T.min": ("5.3", "clamp", "step 1: T = max(1, ...) (2^k'/m_f < 1/2, k' <= 0)"),
    "exp.floor": ("5.2", "clamp", "steps 2-5 floor: q = floor(-x'/T), r >> 1 of odd r, e >> q"),
    "exp.q63": ("5.3", "clamp", "step 5: q >= 63 gives out = 0 (q = 62, 63, 64 and beyond)"),
    "exp.bound": ("5.1", "bound", "|x| = 2^62 - 1, m = 1 and 2^31 - 1, |k| = 2^20"),
    # 6 DI-ClippedSoftmax
    "softmax.C.round": ("6.2", "rounding", "step 1: the clip threshold C = rnd(c 2^k / m) on a tie (k >= 0 and k < 0)"),
    "softmax.C.branch": ("6.2", "branch", "step 1: C's three branches (k < 0, middle, large k: q1 << i + rounded rest)"),
    "softmax.C.min": ("6.3", "clamp", "step 1: C clamped to at least 1 (a unit coarser than 2c)"),
    "softmax.C.cap": ("6.3", "cap", "step 1: C capped at 2^61 (a no-op clip)"),
    "softmax.clip": ("6.2", "clamp", "step 1: the clip taken, not taken, and at -C + 1 / -C / -C - 1"),
    "softmax.mask": ("6.3", "branch", "masked columns excluded from max, clip, range and sum"),
    "softmax.masked_row": ("6.3", "branch", "a fully masked row: all probabilities 0"),
    "softmax.zero_spread": ("6.3", "branch", "all-equal visible scores or scale m = 0: uniform p = rnd(2^F / n)"),
    "softmax.p.round": ("6.2", "rounding", "step 4: p = rnd(e 2^F / S) (divide form) on exact ties"),
    "softmax.p.round.recip": ("6.2", "rounding", "step 4: p = rnd(e f / 2^(62 - F)) (reciprocal form) on an exact tie"),
    "softmax.p.sat": ("6.3", "saturation", "step 4: p = min(..., 2^p_out - 1) (a probability above 1 - 2^-(F+1))"),
    "softmax.recip": ("6.3", "branch", "rows where the reciprocal and the divide form give different codes"),
    "softmax.widths": ("6.1", "bound", "softmax_in_bits 4..16, p_out 2..16, F = 1 and p_out - 1, both modes"),
    "softmax.kmin": ("6.4", "saturation", "the requantized score scale saturates (overflow saturate)"),
    "softmax.S.bound": ("6.4", "bound", "scores +-(2^60 - 1); T = 2^30 with S = cols 2^30, e f near 2^62 - 1"),
    # 7 DI-SwiGLU
    "swiglu.sigmoid.round": ("7.2", "rounding", "step 3: the sigmoid divide on an exact tie (both frames)"),
    "swiglu.refit": ("7.2", "rounding", "step 5: m1 m2 > 2^28 refitted to 28 bits (on a tie)"),
    "swiglu.dead": ("7.2", "branch", "a gate or up scale m = 0: y = 0, scale m = 0, k = k1 + k2 + B"),
    "swiglu.rowmax.M": ("7.3", "clamp", "rowmax frame: M = max(0, row max) for an all-negative row"),
    "swiglu.rowmax.zero": ("7.3", "clamp", "rowmax frame collapse: e1 + e2 = 0 gives 0"),
    "swiglu.guard": ("7.3", "branch", "guard bits 0 and 8, both frames, all 256 gate codes"),
    "swiglu.bound": ("7.4", "bound", "|a1|, |a2| = 2^16 - 1, m_c = 2^24, alpha_k 48, g = 16, B = 24"),
    # 7.6 online Hadamard rotation
    "rot.exact": ("7.6", "branch", "sh = 0: the exact transform at b = 2, 4, 8, 64, several blocks a row, a zero "
                                   "row, a row at bitlen + log2 b = 60"),
    "rot.blocks": ("7.6", "branch", "C not a power of two: blocks of the largest power of two dividing it "
                                    "(C = 6, b = 2; C = 12, b = 4; C = 24, b = 8)"),
    "rot.growth": ("7.6", "bound", "|out| = b max|y| attained: the rows of H_b times 2^(60 - log2 b) - 1"),
    "rot.preshift": ("7.6", "branch", "step 1: the pre-shift on both sides of bitlen(max|y|) + log2 b = 60, "
                                      "rows shifted and not in one record"),
    "rot.preshift.ties": ("7.6", "rounding", "step 1: y / 2^sh on exact ties of both signs and parities (sh = 1, 3)"),
    "rot.bound": ("7.6", "bound", "|y| = 2^61 - 1 (b = 4, 1024): |out| = 2^60 reached, scale k at +-(2^20 - 64)"),
    # 8 DI-Norm
    "norm.fit.round": ("8.2", "rounding", "step 5: the scale fit n_C / r on an exact tie (both pre-shifts)"),
    "norm.isqrt": ("8.2", "branch", "step 3: r = isqrt(sumsq << 2P) where r and r + 1 fit differently"),
    "norm.preshift.row": ("8.2", "branch", "step 2: the per-row pre-shift P = (62 - bitlen(sumsq)) >> 1"),
    "norm.preshift.fixed": ("8.2", "branch", "step 2: the fixed pre-shift, where it gives another scale than per row"),
    "norm.zero": ("8.4", "branch", "an all-zero row: m = 0, k = 0"),
    "norm.kmax": ("8.5", "clamp", "a tiny scale refitted at k_max (k_bits 4)"),
    "norm.bound": ("8.2", "bound", "sumsq = C (2^16 - 1)^2 at C = 2^16"),
    "norm_weight.bound": ("8.7", "bound", "|q - zp| = 2^16 - 1 times |g| = 2^15 - 1, exponents 0 and 31"),
    # 9 RoPE
    "rope.drop.round": ("9.2", "rounding", "the optional rounding rshift_round(y, drop_bits) on exact ties"),
    "rope.bound": ("9.2", "bound", "|a c - b s| = 2^(17 + f) at f = 24"),
    "rope.positions": ("9.2", "bound", "the last table row, position max_pos - 1"),
    # 10 residual add
    "residual.exact": ("10", "branch", "exact alignment at its edge, L + D = 60"),
    "residual.round": ("10", "rounding", "L + D > 60: the fine term rounded by sf, and the rounding reaches the codes"),
    "residual.zero_coarse": ("10", "branch", "an all-zero coarse row (L = 0) takes the fine exponent"),
    "residual.requant": ("10", "rounding", "step 5: the sum requantized to residual_bits (exact ties)"),
    "residual.kmin": ("10", "saturation", "the sum's scale saturates (overflow saturate, counted)"),
    "residual.bound": ("10", "bound", "|q - zp| = 2^16 - 1, m = 2^31 - 1 (|v| < 2^47), |k| = 2^20"),
    # 11 embedding, 12 1/sqrt(d), 13 head
    "embed.gather": ("11", "bound", "ids 0 and V - 1, codes +-127 and +-32767, scale extremes"),
    "head.inv_sqrt": ("12", "rounding", "1/sqrt(d) correctly rounded to m_bits (2..16), head_dim 1..2^16"),
    "head.argmax": ("13", "branch", "argmax: a repeated maximum goes to the lowest index"),
    "head.in_width": ("13.1", "branch", "the LM head's input at head_a_bits 2..8, other than the layers' A: "
                                        "one final-norm row at each width (channels merged at 4 bits, apart at 6)"),
    "head.in_ties": ("13.1", "rounding", "the head's input quantized to head_a_bits 4 and 6 on exact ties "
                                         "(codes and zero point) that reach P"),
    "head.p.bound": ("13.1", "bound", "the head's fold at its proven bound, one group per channel (G = K), "
                                      "head_a_bits 6 and 8: attained exactly"),
    # 14 attention
    "fold.round": ("14", "rounding", "the scale fold rnd((v m) 2^G / 2^(k - kref)) on exact ties, G = 0, 12, 16"),
    "fold.mask": ("14", "branch", "kref over visible columns only; a fully masked row (zeros, kref 0)"),
    "fold.bound": ("14", "bound", "|v m| 2^G at the largest exact value a dump holds (2^61 - 1)"),
    "qk.bound": ("14", "bound", "QK^T int32 accumulator at hd max|q| max|k| <= 2^31 - 1"),
    "pv.bound": ("14", "bound", "PV int32 accumulator at S max|p| max|v| <= 2^31 - 1"),
    "attn.gqa": ("14.1", "branch", "grouped-query heads: query head h reads kv head h // (H / Hkv)"),
    "attn.mul_scales": ("14.1", "rounding", "mul_scales: a mantissa product above 2^28 refitted to 28 bits (ties)"),
    "pv.width": ("14.2", "rounding", "the probabilities requantized to pv_bits 8 and 15 (zero point 0): exact "
                                     "ties under every tie rule, and a row past the pre-shift"),
    "pv.wide_bound": ("14.2", "bound", "PV with P-bit probabilities at its int32 bound S (2^P - 1)(2^A - 1), the "
                                       "longest context attained exactly (A = 8, P = 15: S = 257; A = 6: S = 1040)"),
    "pv.wide_refused": ("14.2", "bound", "one position past the longest context (A = 8, P = 15, S = 258): "
                                         "refused naming the op"),
    # 15 overflow policy
    "overflow.raise": ("15", "saturation", "overflow raise: a saturating scale stops the op (a refusal record: "
                                     "expect_error, its type and exact message, no outputs)"),
}

