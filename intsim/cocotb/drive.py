"""Driving the beats through a design under cocotb and collecting its outputs: the three
timings (combinational, one beat per clock with a fixed latency, valid/ready) and
:func:`check`, the scoreboard's entry point.  cocotb is imported inside the functions, so
this module imports without it."""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass

from .dumping import write_dump
from .plan import PortError, ScoreboardMismatch, check_ports, judge, plan, report, unpack


@dataclass(frozen=True)
class Combinational:
    """No clock: drive a beat, wait ``settle_ns``, read the outputs."""
    settle_ns: int = 1


@dataclass(frozen=True)
class Pipeline:
    """One beat per rising edge of ``clock``; the outputs of a beat are read ``latency``
    rising edges after it was driven (0: combinational outputs, read mid-cycle).
    ``valid``: an optional input strobe driven 1 with every beat and 0 while draining.
    ``start_clock``: start a clock of ``period_ns`` on ``clock`` (False if the testbench
    already drives it)."""
    clock: str = "clk"
    latency: int = 0
    valid: str | None = None
    period_ns: int = 10
    start_clock: bool = True


@dataclass(frozen=True)
class Handshake:
    """Valid/ready streams on ``clock``: a beat moves in when ``in_valid`` and
    ``in_ready`` are both 1 at a rising edge, and out when ``out_valid`` (and
    ``out_ready``, which the scoreboard holds at 1, if the design has it) are.  Fails
    after ``timeout_cycles`` cycles without a beat moving in or out."""
    clock: str = "clk"
    in_valid: str = "in_valid"
    in_ready: str = "in_ready"
    out_valid: str = "out_valid"
    out_ready: str | None = "out_ready"
    period_ns: int = 10
    start_clock: bool = True
    timeout_cycles: int = 1000


def _signals(dut) -> list:
    try:
        return sorted(h._name for h in dut)
    except Exception:                      # a simulator that cannot list children
        return []


def handle(dut, name: str, width: int | None = None, what: str = "port"):
    """``dut.<name>``, or a PortError naming the port (and the design's signals); with
    ``width``, the signal must be exactly that many bits wide."""
    try:
        h = getattr(dut, name)
    except AttributeError:
        names = _signals(dut)
        raise PortError(f"{what} '{name}': the design '{dut._name}' has no signal of that name" +
                        (f"; its signals: {', '.join(names)}" if names else "")) from None
    if width is not None:
        n = len(h)
        if n != width:
            raise PortError(f"{what} '{name}': the mapping makes it {width} bits wide, the design's "
                            f"'{name}' is {n} bits")
    return h


def _read(h, name: str, where: str) -> int:
    v = h.value                            # LogicArray, Logic (1 bit) or int (integer types)
    if isinstance(v, int):
        return v
    if not getattr(v, "is_resolvable", True):
        raise PortError(f"port '{name}' reads {v} (X or Z) at {where}")
    return v.to_unsigned() if hasattr(v, "to_unsigned") else int(v)


def _beats(plans):
    """(plan number, beat) of every beat, records back to back."""
    return [(n, b) for n, pl in enumerate(plans) for b in range(pl.beats)]


def _drive(hs: dict, pl, b: int) -> None:
    for name, words in pl.drive.items():
        hs[name].value = words[b]


def _collect(plans, outs, got, hs, n, b, where):
    for p in outs:
        got[(n, p.name)].extend(unpack(_read(hs[p.name], p.name, where), p))


async def _run_comb(dut, plans, outs, hs, got, t):
    from cocotb.triggers import Timer
    for n, b in _beats(plans):
        _drive(hs, plans[n], b)
        await Timer(t.settle_ns, unit="ns")
        _collect(plans, outs, got, hs, n, b, f"beat {b} of op '{plans[n].record.name}'")
    return len(_beats(plans))


async def _run_pipeline(dut, plans, outs, hs, got, t):
    from cocotb.triggers import FallingEdge, RisingEdge
    clk = handle(dut, t.clock, 1, "clock")
    valid = handle(dut, t.valid, 1, "valid") if t.valid else None
    seq = _beats(plans)
    for cycle in range(len(seq) + t.latency):
        if cycle < len(seq):
            _drive(hs, plans[seq[cycle][0]], seq[cycle][1])
        if valid is not None:
            valid.value = int(cycle < len(seq))
        await FallingEdge(clk)
        if cycle >= t.latency:
            n, b = seq[cycle - t.latency]
            _collect(plans, outs, got, hs, n, b, f"cycle {cycle}, beat {b} of op '{plans[n].record.name}'")
        await RisingEdge(clk)
    return len(seq) + t.latency


async def _run_handshake(dut, plans, outs, hs, got, t):
    from cocotb.triggers import FallingEdge, RisingEdge
    clk = handle(dut, t.clock, 1, "clock")
    iv, ir = handle(dut, t.in_valid, 1, "in_valid"), handle(dut, t.in_ready, 1, "in_ready")
    ov = handle(dut, t.out_valid, 1, "out_valid")
    if t.out_ready is not None:
        handle(dut, t.out_ready, 1, "out_ready").value = 1
    seq = _beats(plans)
    sent = recv = idle = cycles = 0
    while recv < len(seq):
        if sent < len(seq):
            _drive(hs, plans[seq[sent][0]], seq[sent][1])
        iv.value = int(sent < len(seq))
        await FallingEdge(clk)
        moved = False
        if sent < len(seq) and _read(ir, t.in_ready, f"cycle {cycles}"):
            sent += 1
            moved = True
        if _read(ov, t.out_valid, f"cycle {cycles}"):
            if recv >= sent:
                raise PortError(f"out_valid '{t.out_valid}' is 1 at cycle {cycles} with no beat in flight ({sent} "
                                f"in, {recv} out): a stale output; reset or drain the design before check()")
            n, b = seq[recv]
            _collect(plans, outs, got, hs, n, b, f"cycle {cycles}, output beat {recv} (beat {b} of op "
                                                 f"'{plans[n].record.name}')")
            recv += 1
            moved = True
        idle = 0 if moved else idle + 1
        if idle > t.timeout_cycles:
            raise PortError(f"handshake: nothing moved for {t.timeout_cycles} cycles at cycle {cycles}: "
                            f"{sent} of {len(seq)} beats in, {recv} out")
        await RisingEdge(clk)
        cycles += 1
    iv.value = 0
    return cycles


async def check(dut, records, ports, timing=Combinational(), *, raise_on_mismatch: bool = True,
                result_json=None, log: bool = True, dump_dir=None) -> dict:
    """Drive ``records`` through ``dut`` under ``ports`` and ``timing``, compare every
    output exactly, and return the result (``intsim.golden.compare``'s structure plus
    ``elements``, ``beats``, ``cycles``, ``drive_ns`` and ``simulator``).

    The mapping is checked against every record before the first beat and against the
    design's signals (names, widths): a PortError names the port.  On a mismatch, raises
    :class:`ScoreboardMismatch` (an AssertionError: the cocotb test fails) whose message
    is intsim's first-divergence report, unless ``raise_on_mismatch`` is False.
    ``result_json``: a path the result is also written to (before raising).
    ``dump_dir``: also write what the design produced as a bare DUT dump there (one
    ``.hex`` per record and output port, named by the golden's file stem; the records must
    come from one dump), which ``intsim compare GOLDEN dump_dir`` checks
    (intsim.cocotb.dumping; ``result["dump"]`` says what was written)."""
    try:
        import cocotb
    except ImportError:
        raise PortError("check() runs inside a cocotb simulation: cocotb is not installed "
                        "(.venv/bin/pip install -e '.[rtl]')") from None
    ports = check_ports(ports)
    records = list(records)
    if not records:
        raise PortError("no records to drive (intsim.cocotb.load_records selects them)")
    plans = [pl for pl in (plan(r, ports) for r in records) if pl.beats]
    if not plans:
        raise PortError(f"none of the {len(records)} record(s) has an element to drive (all empty)")
    hs = {p.name: handle(dut, p.name, p.width * p.lanes) for p in ports}
    outs = [p for p in ports if p.is_output]
    got = {(n, p.name): [] for n in range(len(plans)) for p in outs}
    if isinstance(timing, (Pipeline, Handshake)) and timing.start_clock:
        from cocotb.clock import Clock
        Clock(handle(dut, timing.clock, 1, "clock"), timing.period_ns, unit="ns").start()
    run = {Combinational: _run_comb, Pipeline: _run_pipeline, Handshake: _run_handshake}.get(type(timing))
    if run is None:
        raise PortError(f"timing {timing!r} is not Combinational, Pipeline or Handshake")
    t0 = time.perf_counter_ns()
    cycles = await run(dut, plans, outs, hs, got, timing)
    ns = time.perf_counter_ns() - t0
    result = judge(plans, got, ports, simulator=getattr(cocotb, "SIM_NAME", "") or "")
    result.update(cycles=cycles, drive_ns=ns)
    if dump_dir is not None:
        result["dump"] = write_dump(dump_dir, plans, got, ports)
        for w in result["dump"]["wrapped"][:1]:
            dut._log.warning(f"dump {dump_dir}: {len(result['dump']['wrapped'])} component(s) hold values outside "
                             f"their declared width, written wrapped to it; first: {w['file']} element {w['flat']}: "
                             f"the design gave {w['design']}, the dump holds {w['written']}")
    if result_json:
        tmp = f"{result_json}.tmp"
        with open(tmp, "w") as f:
            json.dump(result, f, sort_keys=True, indent=1)
        os.replace(tmp, result_json)
    text = report(result)
    if log:
        for line in text.splitlines():
            (dut._log.info if result["identical"] else dut._log.error)(line)
    if not result["identical"] and raise_on_mismatch:
        raise ScoreboardMismatch(text, result)
    return result
