// DELIBERATELY WRONG variant of rtl/di_exp.v, for the testbench self-test: step 1 drops
// the rounding of T (it keeps the floor quotient whatever the tie rule), a plausible RTL
// slip.  The golden vectors must catch it.  Everything else is identical.
//
// It is rtl/di_exp.v compiled with DI_EXP_WRONG defined, so the two cannot drift apart.
`define DI_EXP_WRONG
`include "di_exp.v"
