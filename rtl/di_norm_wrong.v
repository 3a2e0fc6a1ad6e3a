// DELIBERATELY WRONG variant of rtl/di_norm.v (simulation-level, like it), for the
// testbench self-test: the square-root unit ends with the digit recurrence's optional
// rounding step (remainder > root: add one), so r is the root rounded to NEAREST instead of
// its floor -- a plausible slip (the rounded variant of the textbook recurrence, or a designer
// "improving" the accuracy).  r has 31 bits, so rounding it up moves the fit's quotient by
// about 2^-31: the 3-token golden sets (golden/darcy, golden/the) never see a different scale,
// while the stress suite's di_norm.isqrt_floor.* records (sums of squares in the upper half
// between r^2 and (r + 1)^2, where r and r + 1 fit to different mantissas) and
// di_norm.preshift.fixed (short roots) do.
//
// It is rtl/di_norm.v compiled with DI_NORM_WRONG defined, so the two cannot drift apart.
`define DI_NORM_WRONG
`include "di_norm.v"
