"""The shared body of the project's RTL tests (rtl/test_*.py): run intsim.cocotb's
scoreboard over each vector set rtl/run.py names, record one verdict per set, fail the
cocotb test if any set failed.

Environment (set by rtl/run.py): ``RTL_SETS`` = JSON ``{set name: [dump dirs]}``,
``RTL_SELECT`` = JSON ``{"kind": ..., "ops": [...]}`` (the records of the operator),
``RTL_RESULT`` = the JSON file the verdicts go to:
``{set name: scoreboard result, or {"skipped": reason}}``."""
from __future__ import annotations

import json
import os
from pathlib import Path

from intsim.cocotb import check, load_records, report
from intsim.errors import IntsimError


async def run_sets(dut, ports, timing, select=None) -> dict:
    """Drive every vector set through ``dut``; raise AssertionError naming the failing sets."""
    sets = json.loads(os.environ["RTL_SETS"])
    sel = json.loads(os.environ.get("RTL_SELECT", "{}"))
    verdicts, failed = {}, []
    for name, dirs in sets.items():
        records, missing = [], []
        for d in dirs:
            try:
                records += load_records(d, kind=sel.get("kind"), ops=sel.get("ops"), select=select)
            except IntsimError as e:
                if "no op with" not in str(e):
                    raise
                missing.append(Path(d).name)
        if not records:
            verdicts[name] = {"skipped": f"no matching records in {', '.join(missing)}"}
            continue
        r = await check(dut, records, ports, timing, raise_on_mismatch=False, log=False)
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
