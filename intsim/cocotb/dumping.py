"""What a design produced under :func:`intsim.cocotb.check`, written as a bare DUT dump
(docs/GOLDEN_FORMAT.md section 8): one ``.hex`` file per checked record and output
component, named by the golden's own file stem (``intsim.golden.dut.Slot.file_stem``),
one word per element in C order, two's complement at the component's word width
(``intsim.golden.formats.hex_lines``, the golden's own writer).  ``intsim compare GOLDEN
DIR`` reads it back.  Written into a temporary folder beside the target and renamed into
place.  Pure Python and NumPy (no simulator needed); integer only."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..golden.dut import Slot
from ..golden.formats import hex_lines
from ..staging import staged_folder
from .plan import PortError


def component_values(want: list, got: list, idx: list, size: int) -> list:
    """One value per element of a field from the lane values a port carried: element
    ``i`` is the first value read at flat index ``i`` that differs from the golden one,
    else the first value read there.  A per-row or single field is read on every beat of
    its row (the design repeats it); taking a differing copy when there is one keeps every
    mismatch the scoreboard saw in the dump.  Padding lanes (index -1) are dropped."""
    out = [None] * size
    for w, v, i in zip(want, got, idx):
        if i < 0:
            continue
        if out[i] is None or (out[i] == w and v != w):
            out[i] = v
    missing = [i for i, v in enumerate(out) if v is None]
    if missing:                            # plan() reads every element: a scoreboard bug
        raise PortError(f"dump: element {missing[0]} was never read from the design")
    return out


def _fit(vals: list, want: list, slot: Slot, rec, port) -> tuple:
    """The values as the component's declared ``bits`` carry them: a value outside that
    range is wrapped to ``bits`` (what a ``bits``-wide output register holds) and counted;
    a wrap that lands on the golden value would hide a mismatch, so it is refused."""
    bits, signed = slot.bits, slot.signed
    mask = (1 << bits) - 1
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, mask)
    out, wrapped = [], None
    for i, v in enumerate(vals):
        if lo <= v <= hi:
            out.append(v)
            continue
        u = v & mask
        w = u - (1 << bits) if signed and u >> (bits - 1) else u
        if w == want[i]:
            raise PortError(f"dump: port '{port.name}' gave {v} for element {i} (flat) of {slot.label} "
                            f"(op '{rec.name}'), outside its {bits}-bit {'signed' if signed else 'unsigned'} "
                            f"range; wrapped to {bits} bits it equals the golden value {want[i]}, so a DUT "
                            f"dump cannot show the mismatch (the scoreboard's verdict stands)")
        if wrapped is None:
            wrapped = {"file": f"{slot.file_stem}.hex", "flat": i, "design": v, "written": w}
        out.append(w)
    return out, wrapped


def dump_files(plans: list, got: dict, ports) -> tuple:
    """``({file name: bytes}, [wrap notes])`` of the design's outputs: one file per
    (record, output port)."""
    files, notes = {}, []
    for n, pl in enumerate(plans):
        rec = pl.record
        for p in (p for p in ports if p.is_output):
            t, comp, c = rec.entries[p.field]
            slot = Slot(t, comp, c)
            want, idx = pl.expect[p.name]
            size = int(np.prod(slot.shape, dtype=np.int64))
            golden = rec[p.field].reshape(-1).tolist()
            vals, wrapped = _fit(component_values(want, got[(n, p.name)], idx, size), golden, slot, rec, p)
            name = f"{slot.file_stem}.hex"
            if name in files:
                raise PortError(f"dump: {name} would be written twice (record '{rec.name}' checked twice "
                                f"in one check() call, or two ports carry field '{p.field}')")
            files[name] = hex_lines(np.array(vals, dtype=np.dtype(c["dtype"])).reshape(slot.shape))
            if wrapped:
                notes.append({"op": rec.name, "port": p.name, **wrapped})
    return files, notes


def write_dump(dump_dir, plans: list, got: dict, ports) -> dict:
    """Write the DUT dump into ``dump_dir`` (temporary folder, then rename).  An existing
    ``dump_dir`` is replaced only when it holds nothing but ``.hex`` files (an earlier
    dump); returns ``{"dir", "files", "golden", "wrapped"}``."""
    dumps = sorted({str(pl.record.dump) for pl in plans})
    if len(dumps) != 1:
        raise PortError(f"dump_dir: the records come from {len(dumps)} dumps ({', '.join(dumps)}); a DUT dump "
                        f"answers one golden dump: call check() once per dump")
    out = Path(dump_dir)
    if out.exists():
        if not out.is_dir():
            raise PortError(f"dump_dir {out}: exists and is not a directory")
        other = sorted(p.name for p in out.iterdir() if not (p.is_file() and p.name.endswith(".hex")))
        if other:
            raise PortError(f"dump_dir {out}: holds files that are not a DUT dump ({', '.join(other[:3])}); "
                            f"refusing to replace it")
    files, notes = dump_files(plans, got, ports)
    with staged_folder(out, "dump_dir", PortError) as tmp:
        for name, data in files.items():
            tmp.joinpath(name).write_bytes(data)
    return {"dir": str(out), "files": len(files), "golden": dumps[0], "wrapped": notes}
