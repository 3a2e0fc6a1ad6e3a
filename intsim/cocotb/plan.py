"""The port mapping, the beats it makes of each record, and the exact check of what came
back: everything of the scoreboard that needs no simulator (intsim.cocotb.drive runs it).

Geometry of a record (one op): its *element shape* is the shape of the largest field a
port names; ``rows`` = the product of all but its last axis, ``C`` = its last axis.  A
port whose field has the element shape is an *element port*: its values go ``lanes`` per
beat, row by row, each row padded with zero lanes up to a multiple of ``lanes`` (so a
beat never straddles two rows).  A field with one value per row (DI-Exp's ``out.T``, a
per-row scale ``in.scale.m``) or a single value is repeated on every beat of its row or
record; so is a port whose field is a function of the record (a tie-rule code).
Beats per record = rows * ceil(C / lanes)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Union

import numpy as np

from ..errors import IntsimError
from ..golden.comparing import divergence_line
from ..golden.ties import tie_status
from .records import Record


class PortError(IntsimError):
    """A port mapping that does not fit the records or the design (names the port)."""


class ScoreboardMismatch(AssertionError):
    """The design's outputs differ from the golden values; ``.result`` holds the details
    (the structure of ``intsim.golden.compare``'s result) and the message is intsim's
    first-divergence report."""

    def __init__(self, message: str, result: dict):
        super().__init__(message)
        self.result = result


#: the field of a driven row-end flag: 1 on each row's last beat (Port docstring)
LAST = "last"


@dataclass(frozen=True)
class Port:
    """One signal of the design bound to one field of every record.

    ``name``: the signal (``dut.<name>``).  ``field``: ``"in.<arg>"`` (driven),
    ``"out"`` / ``"out.<arg>"`` (checked), each optionally ``.zp`` / ``.m`` / ``.k`` for a
    QTensor's zero point and scale or a Dyadic's components; :data:`LAST` (driven: 1 on
    the beat that ends a row, 0 on the others, for a design that reduces over the row);
    or a function of the :class:`Record` returning an int (driven, constant over the
    record: a mode code).
    ``width``: bits per lane; the signal must be ``width * lanes`` bits wide, lane 0 in the
    least significant bits.  ``signed``: two's complement."""
    name: str
    field: Union[str, Callable]
    width: int
    signed: bool = False
    lanes: int = 1

    @property
    def is_output(self) -> bool:
        return isinstance(self.field, str) and (self.field == "out" or self.field.startswith("out."))

    def range(self) -> tuple:
        w = self.width
        return (-(1 << (w - 1)), (1 << (w - 1)) - 1) if self.signed else (0, (1 << w) - 1)

    def describe(self) -> str:
        lanes = f" x {self.lanes} lanes" if self.lanes != 1 else ""
        return f"port '{self.name}' ({self.width}-bit {'signed' if self.signed else 'unsigned'}{lanes})"


def check_ports(ports) -> list:
    """The mapping itself: types, widths, lanes, field syntax, no name twice."""
    ports = list(ports)
    if not ports:
        raise PortError("the port mapping is empty")
    seen = set()
    for p in ports:
        if not isinstance(p, Port):
            raise PortError(f"port mapping entry {p!r} is not an intsim.cocotb.Port")
        if not isinstance(p.width, int) or isinstance(p.width, bool) or p.width < 1:
            raise PortError(f"port '{p.name}': width {p.width!r} is not a positive number of bits")
        if not isinstance(p.lanes, int) or p.lanes < 1:
            raise PortError(f"port '{p.name}': lanes {p.lanes!r} is not a positive integer")
        if p.field == LAST:
            if p.lanes != 1:
                raise PortError(f"port '{p.name}': the row-end flag '{LAST}' takes 1 lane, not {p.lanes}")
        elif isinstance(p.field, str):
            if not (p.is_output or p.field.startswith("in.")):
                raise PortError(f"port '{p.name}': field '{p.field}' is neither in.<arg>[.<component>], "
                                f"out[.<arg>][.<component>] nor '{LAST}'")
        elif not callable(p.field):
            raise PortError(f"port '{p.name}': field {p.field!r} is neither a field name nor a function")
        if p.name in seen:
            raise PortError(f"port '{p.name}' is mapped twice")
        seen.add(p.name)
    if not any(p.is_output for p in ports):
        raise PortError("the port mapping has no output port (field 'out...'): nothing would be checked")
    return ports


@dataclass
class Plan:
    """One record as beats: ``drive[port]`` = the packed word of each beat; ``expect[port]``
    = (golden values, field flat index or -1 for a padding lane), ``beats * lanes`` each;
    ``last[b]``: beat b ends a row."""
    record: Record
    beats: int
    elements: int
    drive: dict
    expect: dict
    last: list


def _fits(p: Port, rec: Record, fname: str, a: np.ndarray) -> None:
    lo, hi = p.range()
    if a.size == 0 or (lo <= int(a.min()) and int(a.max()) <= hi):
        return
    flat = a.reshape(-1).tolist()
    i = next(j for j, v in enumerate(flat) if not lo <= v <= hi)
    bits, signed = rec.declared(fname)
    raise PortError(f"{p.describe()} cannot carry field '{fname}' of op '{rec.name}' ({rec.dump}): value "
                    f"{flat[i]} at index {tuple(int(x) for x in np.unravel_index(i, a.shape))} is outside "
                    f"{lo}..{hi} (the manifest declares {bits}-bit {'signed' if signed else 'unsigned'})")


def _pack(lanes_vals: list, p: Port) -> list:
    """Words of ``beats`` beats from ``beats * lanes`` lane values (two's complement lanes)."""
    mask, L, w = (1 << p.width) - 1, p.lanes, p.width
    if L == 1:
        return [v & mask for v in lanes_vals]
    out = []
    for b in range(0, len(lanes_vals), L):
        word = 0
        for i, v in enumerate(lanes_vals[b:b + L]):
            word |= (v & mask) << (i * w)
        out.append(word)
    return out


def unpack(word: int, p: Port) -> list:
    """The lane values of one word read from ``p`` (sign-extended when signed)."""
    mask, w = (1 << p.width) - 1, p.width
    out = []
    for i in range(p.lanes):
        v = (word >> (i * w)) & mask
        if p.signed and v >> (w - 1):
            v -= 1 << w
        out.append(v)
    return out


def plan(rec: Record, ports) -> Plan:
    """Beats of one record under the mapping (module doc); raises PortError naming the
    port when a field is missing, has no place in the record's geometry, or does not fit."""
    named = [p for p in ports if isinstance(p.field, str) and p.field != LAST]
    for p in named:
        if p.field not in rec.values:
            raise PortError(f"{p.describe()}: op '{rec.name}' ({rec.kind}, {rec.dump}) has no field "
                            f"'{p.field}'; its fields: {', '.join(rec.values)}")
    main = max((rec.values[p.field] for p in named), key=lambda a: a.size)
    shape = main.shape
    C = shape[-1] if shape else 1
    rows = main.size // C if C else 0
    elem = [p for p in named if rec.values[p.field].size == main.size and main.size > 1]
    lanes = {p.lanes for p in elem} or {1}
    if len(lanes) > 1:
        raise PortError(f"op '{rec.name}': the element ports ({', '.join(p.name for p in elem)}) have "
                        f"different lanes {sorted(lanes)}; they move together, one beat at a time")
    L = lanes.pop()
    bpr = -(-C // L) if C else 0
    beats = rows * bpr
    pos = np.full((rows, bpr * L), -1, dtype=np.int64)
    pos[:, :C] = np.arange(rows * C, dtype=np.int64).reshape(rows, C)
    pos = pos.reshape(-1)
    drive, expect = {}, {}
    last = [(b + 1) % bpr == 0 for b in range(beats)]
    for p in ports:
        if p.field == LAST:
            drive[p.name] = [int(x) for x in last]
            continue
        if not isinstance(p.field, str):
            v = p.field(rec)
            if not isinstance(v, (int, np.integer)):
                raise PortError(f"{p.describe()}: its function returned {v!r} for op '{rec.name}', not an int")
            vals = np.full(beats * p.lanes, int(v), dtype=object)
            lo, hi = p.range()
            if not lo <= int(v) <= hi:
                raise PortError(f"{p.describe()}: its function returned {int(v)} for op '{rec.name}', "
                                f"outside {lo}..{hi}")
            drive[p.name] = _pack(vals.tolist(), p)
            continue
        a = rec.values[p.field]
        _fits(p, rec, p.field, a)
        flat = a.reshape(-1)
        if a.size == main.size and p.lanes == L:
            idx = pos
        elif a.size in (rows, 1) and p.lanes == 1:
            idx = np.repeat(np.arange(rows, dtype=np.int64) if a.size == rows else np.zeros(rows, dtype=np.int64), bpr)
        else:
            raise PortError(f"{p.describe()}: field '{p.field}' of op '{rec.name}' has shape {a.shape}, which is "
                            f"neither the op's element shape {shape} ({L} lane(s) a beat) nor one value per row "
                            f"({rows}) nor a single value (those take 1 lane)")
        vals = np.where(idx >= 0, flat[np.maximum(idx, 0)], 0).tolist() if flat.size else []
        if p.is_output:
            expect[p.name] = (vals, idx.tolist())
        else:
            drive[p.name] = _pack(vals, p)
    return Plan(rec, beats, int(main.size), drive, expect, last)


def _first(rec: Record, p: Port, fname: str, flat: int, want: int, got: int) -> dict:
    t, comp, c = rec.entries[fname]
    shape = tuple(c["shape"])
    tie = (tie_status(rec.dump, rec.manifest, rec.op, t, flat) if comp == "" and t["role"] == "out"
           else "not evaluated (only output values are)")
    return {"op": rec.name, "op_index": rec.index, "kind": rec.kind, "tensor": t["name"], "role": t["role"],
            "component": comp, "index": [int(x) for x in np.unravel_index(flat, shape)] if shape else [],
            "flat": flat, "golden": want, "got": got, "lsb_delta": got - want, "tie": tie,
            "port": p.name, "dump": str(rec.dump)}


def judge(plans: list, got: dict, ports, simulator: str = "") -> dict:
    """Compare the collected lane values ``got[(plan number, port)]`` with the plans'
    golden values, exactly; returns ``intsim.golden.compare``'s result structure plus
    element and beat counts and the simulator's name."""
    outs = [p for p in ports if p.is_output]
    per_op, first, compared, elements = [], None, 0, 0
    for n, pl in enumerate(plans):
        rec = pl.record
        entry = {"index": rec.index, "name": rec.name, "kind": rec.kind, "dump": str(rec.dump),
                 "mismatches": 0, "first": None}
        for p in outs:
            want, idx = pl.expect[p.name]
            g = got[(n, p.name)]
            bad = sorted({i for w, v, i in zip(want, g, idx) if i >= 0 and w != v})
            compared += 1
            if bad:
                j = next(k for k, (w, v, i) in enumerate(zip(want, g, idx)) if i == bad[0] and w != v)
                entry["mismatches"] += len(bad)
                if entry["first"] is None:
                    entry["first"] = _first(rec, p, p.field, bad[0], want[j], g[j])
                    if first is None:
                        first = entry["first"]
        elements += pl.elements
        per_op.append(entry)
    return {"identical": first is None, "compared": compared, "first": first, "simulator": simulator,
            "elements": elements, "beats": sum(pl.beats for pl in plans), "records": len(plans),
            "mismatching_ops": [e for e in per_op if e["mismatches"]], "ops": per_op}


def report(result: dict, max_report: int = 10) -> str:
    """The scoreboard's verdict as text: PASS with counts, or intsim's first-divergence
    line (``intsim compare``'s wording) and the mismatches per op."""
    sim = f"[{result['simulator']}] " if result.get("simulator") else ""
    n_ops = len(result["ops"])
    if result["identical"]:
        return (f"{sim}PASS: {result['elements']} elements of {n_ops} op(s) in {result['beats']} beats, "
                f"every output equal to the golden values")
    f = result["first"]
    lines = [f"{sim}FAIL: {len(result['mismatching_ops'])} of {n_ops} op(s) differ",
             f"{sim}{divergence_line(f)} (port '{f['port']}', dump {f['dump']})",
             f"{sim}mismatches per op:"]
    for o in result["mismatching_ops"][:max_report]:
        g = o["first"]
        lines.append(f"{sim}  op {o['index']:>5} {o['name']:<40} {o['kind']:<20} {o['mismatches']:>7}  first "
                     f"{tuple(g['index'])} golden {g['golden']} DUT {g['got']} ({g['lsb_delta']:+d}), tie: {g['tie']}")
    more = len(result["mismatching_ops"]) - max_report
    if more > 0:
        lines.append(f"{sim}  ... and {more} more op(s)")
    return "\n".join(lines)
