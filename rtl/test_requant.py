"""cocotb test of rtl/requant.v (or its wrong variant) behind rtl/requant_rules.v (one
instance per tie rule): intsim.cocotb's scoreboard drives every ``requant_rows`` record of
the vector sets rtl/run.py names (the per-token quantizers ``*.x_q`` and output
requantizations of a golden dump, the ``requant_rows.*`` records of the stress suite:
ties of every rule in both modes, the pre-shift, k_min / k_max, zero rows, widths 2 to 16,
the input bounds) through the valid/ready stream, one element a beat, and compares the
codes, the zero point and the fitted scale (m, k) exactly.  Refusal records (overflow
"raise") have no outputs and are left out by the scoreboard."""
from __future__ import annotations

import cocotb
from harness import run_streaming

from intsim.cocotb import LAST, Port

#: the wrapper's ``rule`` input: which ROUNDING instance takes the record
RND = {"floor": 0, "half_up": 1, "half_even": 2, "half_away": 3}

PORTS = [
    Port("rule", lambda r: RND[r.spec.rounding], 2),
    Port("cfg_bits", lambda r: r.op["params"]["bits"], 5),
    Port("cfg_sym", lambda r: int(r.op["params"]["symmetric"]), 1),
    Port("cfg_mbits", lambda r: r.spec.m_bits, 5),
    Port("cfg_klo", lambda r: r.spec.k_range[0], 32, signed=True),
    Port("cfg_khi", lambda r: r.spec.k_range[1], 32, signed=True),
    Port("cfg_range", lambda r: int(r.spec.requant_mode == "range"), 1),
    Port("in_v", "in.v", 64, signed=True),             # the exact integers, one a beat
    Port("in_m", "in.scale_in.m", 32),                 # the row's input scale, repeated per beat
    Port("in_k", "in.scale_in.k", 32, signed=True),
    Port("in_last", LAST, 1),                          # the row's last element
    Port("out_q", "out", 32, signed=True),             # the codes
    Port("out_zp", "out.zp", 32, signed=True),         # per row, checked on every beat
    Port("out_m", "out.m", 32),
    Port("out_k", "out.k", 32, signed=True),
]


@cocotb.test()
async def requant_matches_the_golden_records(dut):
    await run_streaming(dut, PORTS)
