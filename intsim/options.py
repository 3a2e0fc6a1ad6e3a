"""The spec options: every bit-level choice a hardware team could make differently.

One frozen ``Spec`` object travels with every operator call (and, from the
end-to-end issue on, inside the model file).  They are run-time parameters, never
build flags.  docs/SPEC.md section 2 lists each with its reason.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from .errors import IntsimError, check_choice, check_int
from .fixedpoint import HALF_UP, ROUNDINGS

OVERFLOW_POLICIES = ("raise", "saturate")
REQUANT_MODES = ("fitted", "range")
SIGMOID_FRAMES = ("stable", "rowmax")
SOFTMAX_DIVS = ("reciprocal", "divide")
NORM_PRESHIFTS = ("row", "fixed")


@dataclass(frozen=True)
class Spec:
    #: width of the mantissa m of every dynamic dyadic scale m * 2^-k (paper: 8)
    m_bits: int = 8
    #: width of the signed exponent k: k in [-2^(k_bits-1), 2^(k_bits-1) - 1] (paper: 8)
    k_bits: int = 8
    #: tie rule of every requantization: dyadic fits, requant divisions, rounding shifts
    rounding: str = HALF_UP
    #: requantizer codes: "fitted" = against the fitted scale (error <= 1/2 LSB whatever
    #: m_bits), "range" = from the exact row range, as the paper draws it (the scale's
    #: m_bits rounding then adds up to Q * 2^-m_bits LSB)
    requant_mode: str = "fitted"
    #: what a value outside its container does: raise IntsimOverflowError, or
    #: saturate (clamp and count).  Never wraps.
    overflow: str = "raise"
    #: DI-ClippedSoftmax: bits of the re-quantized scores entering DI-Exp (paper: 8)
    softmax_in_bits: int = 16
    #: DI-ClippedSoftmax: clip c in real units, x - max >= -c (paper: 15)
    softmax_clip: int = 15
    #: DI-ClippedSoftmax: output probability bits (paper: 8).  16 by default: 8-bit
    #: probabilities flush every weight below 2^-9 to 0, which over 512 keys cost SmolLM2
    #: 1.3 % perplexity at W8A8 (docs/RESULTS.md); P is requantized to A bits before PV
    #: anyway, so the width costs no accumulator bits.
    softmax_p_out: int = 16
    #: DI-ClippedSoftmax: fraction bits F of the probabilities, scale 2^-F; None means
    #: F = p_out (full resolution, 1.0 saturates to 1 - 2^-F); paper: p_out - 1
    softmax_p_frac: int | None = None
    #: DI-ClippedSoftmax: IntDiv form, one reciprocal per row or a divide per element
    softmax_div: str = "reciprocal"
    #: DI-SwiGLU: bits the gate and up inputs are quantized to (paper: 8)
    swiglu_in_bits: int = 8
    #: DI-SwiGLU: sigmoid frame, paper's row-max frame or the stable two-branch form
    sigmoid_frame: str = "stable"
    #: DI-SwiGLU: bits of the sigmoid value, scale 2^-(sigmoid_bits)
    sigmoid_bits: int = 15
    #: DI-SwiGLU: guard bits the sigmoid input is shifted left by before DI-Exp (paper: 0)
    sigmoid_guard_bits: int = 8
    #: residual stream width (signed, symmetric, per token) (paper: 16)
    residual_bits: int = 16
    #: RoPE cos/sin table fraction bits (signed Q1.f, f = rope_frac_bits)
    rope_frac_bits: int = 14
    #: RoPE: bits rounded off the exact rotation (0 = keep it exact, f = back to input scale)
    rope_drop_bits: int = 0
    #: DI-Norm pre-shift before the integer sqrt: per row from bitlen(sumsq), or one
    #: fixed shift per declared input width (friendlier to a fixed-width datapath)
    norm_preshift: str = "row"

    def __post_init__(self):
        check_int("m_bits", self.m_bits, 2, 16)
        check_int("k_bits", self.k_bits, 4, 16)
        check_choice("rounding", self.rounding, ROUNDINGS)
        check_choice("overflow", self.overflow, OVERFLOW_POLICIES)
        check_choice("requant_mode", self.requant_mode, REQUANT_MODES)
        check_int("softmax_in_bits", self.softmax_in_bits, 4, 16)
        check_int("softmax_clip", self.softmax_clip, 1, 1000)
        check_int("softmax_p_out", self.softmax_p_out, 2, 16)
        if self.softmax_p_frac is not None:
            check_int("softmax_p_frac", self.softmax_p_frac, 1, self.softmax_p_out)
        check_choice("softmax_div", self.softmax_div, SOFTMAX_DIVS)
        check_int("swiglu_in_bits", self.swiglu_in_bits, 4, 16)
        check_choice("sigmoid_frame", self.sigmoid_frame, SIGMOID_FRAMES)
        check_int("sigmoid_bits", self.sigmoid_bits, 4, 24)
        check_int("sigmoid_guard_bits", self.sigmoid_guard_bits, 0, 16)
        check_int("residual_bits", self.residual_bits, 8, 16)
        check_int("rope_frac_bits", self.rope_frac_bits, 8, 24)
        check_int("rope_drop_bits", self.rope_drop_bits, 0, self.rope_frac_bits)
        check_choice("norm_preshift", self.norm_preshift, NORM_PRESHIFTS)

    @property
    def k_range(self) -> tuple[int, int]:
        return -(2 ** (self.k_bits - 1)), 2 ** (self.k_bits - 1) - 1

    @classmethod
    def paper(cls) -> "Spec":
        """The choices as the I-LLM paper draws them, where it draws them."""
        return cls(requant_mode="range", softmax_in_bits=8, softmax_p_out=8, softmax_p_frac=7,
                   sigmoid_frame="rowmax", sigmoid_guard_bits=0)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Spec":
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise IntsimError(f"spec options: unknown option(s) {sorted(unknown)}")
        return cls(**d)


DEFAULT_SPEC = Spec()
