"""cocotb test of rtl/di_exp.v (or its wrong variant): intsim.cocotb's scoreboard drives
every DI-Exp record of the vector sets rtl/run.py names (the stage records
``layers.N.attn.softmax.exp`` of a golden dump, the ``di_exp.*`` records of the stress
suite) through the combinational module, one element per beat, and compares ``out`` and
the row unit ``T`` exactly."""
from __future__ import annotations

import cocotb
from harness import run_sets

from intsim.cocotb import Combinational, Port

#: the module's ``rnd`` input: the tie rule T is rounded with (docs/SPEC.md section 5)
RND = {"floor": 0, "half_up": 1, "half_even": 2, "half_away": 3}

PORTS = [
    Port("x", "in.x", 64, signed=True),              # max-subtracted input, one element a beat
    Port("m", "in.scale.m", 32),                     # the row's scale m * 2^-k, repeated per element
    Port("k", "in.scale.k", 32, signed=True),
    Port("rnd", lambda rec: RND[rec.spec.rounding], 2),
    Port("out", "out", 32),
    Port("t_unit", "out.T", 32),                     # one value per row, checked on every beat
]


@cocotb.test()
async def di_exp_matches_the_golden_records(dut):
    await run_sets(dut, PORTS, Combinational())
