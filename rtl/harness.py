"""The shared body of the project's RTL tests (rtl/test_*.py): run intsim.cocotb's
scoreboard over each vector set rtl/run.py names, record one verdict per set, fail the
cocotb test if any set failed.

Environment (set by rtl/run.py): ``RTL_SETS`` = JSON ``{set name: [dump dirs]}``,
``RTL_SELECT`` = JSON ``{"kind": ..., "ops": [...], "rounding": ...}`` (the records of
the operator; ``rounding``: only those under that tie rule),
``RTL_REPEAT`` = passes over each set that passes (their drive times measure the speed),
``RTL_DUMP`` = JSON ``{set name: folder}``: the first pass over that set also writes what
the design produced there as a bare DUT dump (check()'s ``dump_dir``; a set of one dump),
``RTL_RESULT`` = the JSON file the verdicts go to:
``{set name: scoreboard result, or {"skipped": reason}}``."""
from __future__ import annotations

import json
import os
from pathlib import Path

from intsim.cocotb import NoRecords, check, load_records, report


def rounding_of(rec) -> str | None:
    """The tie rule a record runs under: a primitive's own ``rounding`` parameter, else
    its spec's."""
    r = rec.params.get("rounding")
    return r if isinstance(r, str) else (rec.spec.rounding if rec.spec is not None else None)


async def run_sets(dut, ports, timing, select=None) -> dict:
    """Drive every vector set through ``dut``; raise AssertionError naming the failing sets.
    ``select``: a predicate on intsim.cocotb.Record (the shapes a design takes)."""
    sets = json.loads(os.environ["RTL_SETS"])
    sel = json.loads(os.environ.get("RTL_SELECT", "{}"))
    if sel.get("rounding"):
        rule, user = sel["rounding"], select
        select = lambda rec: rounding_of(rec) == rule and (user is None or user(rec))   # noqa: E731
    repeat = int(os.environ.get("RTL_REPEAT", "1"))
    dump = json.loads(os.environ.get("RTL_DUMP", "{}"))
    verdicts, failed = {}, []
    for name, dirs in sets.items():
        records, missing = [], []
        for d in dirs:
            try:
                records += load_records(d, kind=sel.get("kind"), ops=sel.get("ops"), select=select)
            except NoRecords:
                missing.append(Path(d).name)
        if not records:
            verdicts[name] = {"skipped": f"no matching records in {', '.join(missing)}"}
            continue
        r = await check(dut, records, ports, timing, raise_on_mismatch=False, log=False, dump_dir=dump.get(name))
        times = [r["drive_ns"]]
        for _ in range(repeat - 1 if r["identical"] else 0):       # speed: the same records again
            again = await check(dut, records, ports, timing, raise_on_mismatch=False, log=False)
            assert again["identical"], f"{name}: a repeated pass differs from the first"
            times.append(again["drive_ns"])
        r["drive_ns_passes"] = times
        r["dumps"] = [d for d in dirs if Path(d).name not in missing]
        r["no_records"] = missing
        verdicts[name] = r
        for line in report(r).splitlines():
            (dut._log.info if r["identical"] else dut._log.error)(f"{name}: {line}")
        if not r["identical"]:
            failed.append(name)
    out = os.environ.get("RTL_RESULT")
    if out:
        Path(out).write_text(json.dumps(verdicts, sort_keys=True, indent=1) + "\n")
    if failed:
        raise AssertionError(f"the design differs from the golden values on: {', '.join(failed)}")
    return verdicts


async def run_streaming(dut, ports) -> dict:
    """The clocked valid/ready designs (rtl/requant.v, rtl/di_norm.v behind their
    ``*_rules.v`` wrappers): start ``clk``, hold ``rst`` two cycles with ``in_valid`` low,
    then :func:`run_sets` under a handshake."""
    from cocotb.clock import Clock
    from cocotb.triggers import RisingEdge

    from intsim.cocotb import Handshake
    Clock(dut.clk, 10, unit="ns").start()
    dut.in_valid.value = 0
    dut.rst.value = 1
    for _ in range(2):
        await RisingEdge(dut.clk)
    dut.rst.value = 0
    return await run_sets(dut, ports, Handshake(start_clock=False))
