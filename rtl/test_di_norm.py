"""cocotb test of rtl/di_norm.v (or its wrong variant) behind rtl/di_norm_rules.v (one
instance per tie rule): intsim.cocotb's scoreboard drives every ``di_norm`` record of the
vector sets rtl/run.py names (the attention / MLP / final norms of a golden dump, the
``di_norm.*`` records of the stress suite: fit ties under every rule with the row and the
fixed pre-shift, sums of squares where the root's floor decides the scale, zero rows, the
refit at k_max, C = 2^16 at the sum's bound) through the valid/ready stream, one code a
beat, and compares the passed-through codes and zero point and the new scale (m, k)
exactly."""
from __future__ import annotations

import cocotb
from harness import run_streaming

from intsim.cocotb import LAST, Port

#: the wrapper's ``rule`` input: which ROUNDING instance takes the record
RND = {"floor": 0, "half_up": 1, "half_even": 2, "half_away": 3}


def _fixed(r) -> int:
    """1 for the fixed pre-shift (the op's ``preshift`` argument, else the spec's option)."""
    return int((r.op["params"].get("preshift") or r.spec.norm_preshift) == "fixed")


PORTS = [
    Port("rule", lambda r: RND[r.spec.rounding], 2),
    Port("cfg_bits", lambda r: r.declared("in.x")[0], 5),   # the codes' width (fixed pre-shift)
    Port("cfg_fixed", _fixed, 1),
    Port("cfg_mbits", lambda r: r.spec.m_bits, 5),
    Port("cfg_klo", lambda r: r.spec.k_range[0], 32, signed=True),
    Port("cfg_khi", lambda r: r.spec.k_range[1], 32, signed=True),
    Port("in_q", "in.x", 32, signed=True),             # the codes, one a beat
    Port("in_zp", "in.x.zp", 32, signed=True),         # the row's zero point, repeated per beat
    Port("in_last", LAST, 1),                          # the row's last code
    Port("out_q", "out", 32, signed=True),             # the codes, passed through
    Port("out_zp", "out.zp", 32, signed=True),
    Port("out_m", "out.m", 32),                        # the new scale, per row, on every beat
    Port("out_k", "out.k", 32, signed=True),
]


@cocotb.test()
async def di_norm_matches_the_golden_records(dut):
    await run_streaming(dut, PORTS)
