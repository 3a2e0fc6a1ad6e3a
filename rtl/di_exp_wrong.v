// DELIBERATELY WRONG variant of rtl/di_exp.v, for the testbench self-test: step 0c's
// normalization shift truncates (x' = floor(x / 2^j), an arithmetic shift) instead of
// rounding by the tie rule, a plausible RTL shortcut.  It only matters when j > 0, i.e.
// for a fine input scale (k > 29 + bitlen(m_f)), which the 3-token golden set never
// reaches and the stress suite does: golden/darcy passes, golden/stress must catch it.
// It is rtl/di_exp.v compiled with DI_EXP_WRONG defined, so the two cannot drift apart.
`define DI_EXP_WRONG
`include "di_exp.v"
