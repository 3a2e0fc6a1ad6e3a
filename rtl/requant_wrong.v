// DELIBERATELY WRONG variant of rtl/requant.v (simulation-level, like it), for the testbench
// self-test: the final clamp of each code to [lo_q, Q] is left out, a plausible hardware
// shortcut -- SPEC section 3 says the ceil-fitted scale keeps every code inside the range, and
// a designer reading that drops the comparators.  But the zero point and the code are rounded
// separately, so their sum can still leave [lo_q, Q]: 254.5 + 0.5 rounds to 256 > Q = 255
// under half_up (an exact tie at the top of an asymmetric row), and under floor the element at
// lo' gets floor(lo' a/d) + floor(-lo' a/d) = -1 < 0.  The 3-token golden sets (golden/darcy,
// golden/the: half_up, no such tie) pass; the stress suite (golden/stress,
// requant_rows.ties.*.asym.*) fails.
//
// It is rtl/requant.v compiled with REQUANT_WRONG defined, so the two cannot drift apart.
`define REQUANT_WRONG
`include "requant.v"
