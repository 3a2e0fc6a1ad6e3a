"""Simulate the project's operator RTL under Icarus Verilog and Verilator (cocotb 2, through
intsim.cocotb's scoreboard) against the golden vectors, and measure the speed.

    python rtl/run.py                     every operator, right module, both simulators
    python rtl/run.py --variant wrong     the deliberately wrong modules: must FAIL
    python rtl/run.py --self-test         both: each right module passes every vector set,
                                          each wrong one passes the 3-token golden set and fails the stress suite (exit 0
                                          only then); ``make rtl-test`` runs this
    python rtl/run.py --op di_exp --sim icarus     one operator, one simulator
    python rtl/run.py --op requant --sim icarus --dump out/rtl-dump
                                          also write what the design produced on the stress suite as a
                                          bare DUT dump (out/rtl-dump/requant-right-icarus) and check it
                                          with ``intsim compare golden/stress DIR``: its verdict must be
                                          the scoreboard's (the same first wrong element)

Vector sets (VECTOR_SETS): ``golden`` = the committed 3-token dumps golden/darcy and
golden/the (a dump without records of an operator is named and skipped), ``stress`` =
the stress suite golden/stress.  Operators (OPERATORS): one row each, naming the right
and wrong Verilog, the toplevel, the cocotb test module in rtl/ and the records it
takes; adding an operator is adding a row.  Every output line names the simulator.
Speed: elements per second of the scoreboard's drive loop over the vectors (``--passes``
passes of the right module, best and median; build and simulator start-up excluded and
printed separately).  Exit 0 / 1 (a verdict not as required) / 2 (a tool missing).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

RTL = Path(__file__).resolve().parent
ROOT = RTL.parent
BUILD = RTL / "build"
# cocotb's runner hands the simulator this process's sys.path as PYTHONPATH: the test
# modules (RTL) and intsim (ROOT) must be on it
sys.path[:0] = [str(RTL), str(ROOT)]

from intsim.cocotb import SIMULATORS, available, get_runner  # noqa: E402
from intsim.errors import IntsimError                         # noqa: E402


@dataclass(frozen=True)
class Operator:
    name: str
    right: str                      # Verilog file in rtl/
    wrong: str                      # its deliberately wrong variant
    toplevel: str
    test_module: str                # cocotb test module in rtl/ (uses rtl/harness.py)
    kind: str | None = None         # the records it takes: an op kind ...
    ops: tuple | None = None        # ... and/or op names / fnmatch patterns
    rounding: str | None = None     # ... and only records under this tie rule (a build whose
                                    # rule is an HDL parameter: one row per rule)
    parameters: dict = field(default_factory=dict)     # HDL parameters of the build
    shortcut: str = ""              # what the wrong variant gets wrong
    support: tuple = ()             # Verilog in rtl/ compiled with either variant (a test wrapper)


OPERATORS = [
    Operator("di_exp", "di_exp.v", "di_exp_wrong.v", "di_exp", "test_di_exp", kind="di_exp",
             shortcut="x' = floor(x / 2^j): the normalization shift truncates instead of rounding"),
    # one instance per value of the ROUNDING parameter behind a wrapper: one build checks all four
    Operator("requant", "requant.v", "requant_wrong.v", "requant_rules", "test_requant", kind="requant_rows",
             support=("requant_rules.v",), shortcut="no final clamp of the codes to [lo_q, Q]"),
    Operator("di_norm", "di_norm.v", "di_norm_wrong.v", "di_norm_rules", "test_di_norm", kind="di_norm",
             support=("di_norm_rules.v",), shortcut="the square root rounded to nearest, not floored"),
]
VECTOR_SETS = {"golden": ("golden/darcy", "golden/the"), "stress": ("golden/stress",)}
VARIANTS = ("right", "wrong")


DUMP_SET = "stress"                 # the vector set --dump writes (one golden dump: golden/stress)


def simulate(op: Operator, variant: str, sim: str, build_root: Path = BUILD, sets=VECTOR_SETS,
             repeat: int = 1, dump: Path | None = None) -> dict:
    """Build and run one variant of one operator under one simulator; returns
    ``{"sets": {set: verdict}, "build_s", "test_s"}`` (verdicts: rtl/harness.py).
    ``dump``: the folder the design's outputs on the stress set go to, as a bare DUT dump."""
    runner = get_runner(sim)
    build = build_root.joinpath(f"{op.name}-{variant}-{sim}")
    build.mkdir(parents=True, exist_ok=True)
    result = build.joinpath("verdict.json")
    if result.exists():
        result.unlink()
    src = RTL.joinpath(op.right if variant == "right" else op.wrong)
    t0 = time.perf_counter()
    kw = {"always": True} if sim == "icarus" else {"build_args": ["-Wno-fatal"]}
    sources = [src] + [RTL.joinpath(f) for f in op.support]
    runner.build(sources=sources, includes=[RTL], hdl_toplevel=op.toplevel, build_dir=build,
                 parameters=op.parameters, timescale=("1ns", "1ps"), log_file=build.joinpath("build.log"), **kw)
    t1 = time.perf_counter()
    env = {"RTL_SETS": json.dumps({k: [str(ROOT.joinpath(d)) for d in v] for k, v in sets.items()}),
           "RTL_SELECT": json.dumps({"kind": op.kind, "ops": list(op.ops) if op.ops else None,
                                     "rounding": op.rounding}),
           "RTL_REPEAT": str(repeat), "RTL_RESULT": str(result),
           "RTL_DUMP": json.dumps({DUMP_SET: str(dump.resolve())} if dump is not None and DUMP_SET in sets else {})}
    try:       # under pytest (PYTEST_CURRENT_TEST set) the runner raises on a failed test
        runner.test(test_module=op.test_module, hdl_toplevel=op.toplevel, build_dir=build, test_dir=build,
                    extra_env=env, results_xml=str(build.joinpath("results.xml")),
                    log_file=build.joinpath("sim.log"))
    except (SystemExit, Exception):
        pass     # the verdict file says what happened
    t2 = time.perf_counter()
    if not result.exists():
        raise SystemExit(f"[{sim}] rtl: the simulation of {src.name} wrote no verdict; see {build.joinpath('sim.log')}")
    return {"sets": json.loads(result.read_text()), "build_s": t1 - t0, "test_s": t2 - t1, "file": src.name}


def report(op: Operator, variant: str, sim: str, run: dict) -> dict:
    """Print one line per vector set; returns {set: True (pass) / False (fail) / None (skipped)}."""
    out = {}
    for name, v in run["sets"].items():
        head = f"[{sim}] {op.name} {variant} ({run['file']}) on {name}"
        if "skipped" in v:
            print(f"{head}: no records ({v['skipped']})")
            out[name] = None
            continue
        dumps = ", ".join(Path(d).name for d in v["dumps"]) + (
            f"; no {op.name} records in {', '.join(v['no_records'])}" if v["no_records"] else "")
        if v["identical"]:
            print(f"{head} ({dumps}): PASS: {v['elements']} elements of {len(v['ops'])} op(s), every output equal")
        else:
            from intsim.golden.comparing import divergence_line
            f = v["first"]
            print(f"{head} ({dumps}): FAIL: {len(v['mismatching_ops'])} of {len(v['ops'])} op(s) differ; "
                  f"{divergence_line(f)} (port '{f['port']}')")
        out[name] = v["identical"]
    return out


def compare_dump(op: Operator, variant: str, sim: str, run: dict, dump: Path) -> bool:
    """Run ``intsim compare`` (the command line, as a team would) on the DUT dump the
    simulation wrote; print its verdict line and whether it agrees with the scoreboard:
    the same PASS / FAIL and, on a FAIL, the same first wrong element.  True if it agrees."""
    import subprocess
    golden = VECTOR_SETS[DUMP_SET][0]
    v = run["sets"].get(DUMP_SET, {})
    head = f"[{sim}] {op.name} {variant} dump {dump}"
    if "skipped" in v or "dump" not in v:
        print(f"{head}: nothing dumped ({v.get('skipped', 'no dump written')})")
        return "skipped" in v
    cmd = [sys.executable, "-m", "intsim_app", "compare", golden, str(dump), "--json"]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if p.returncode not in (0, 1):
        print(f"{head}: intsim compare exit {p.returncode}: {p.stderr.strip() or p.stdout.strip()}")
        return False
    res = json.loads(p.stdout)
    from intsim.golden.comparing import divergence_line
    f, s = res["first"], v["first"]
    verdict = "PASS" if p.returncode == 0 else f"FAIL: {divergence_line(f)}"
    same = (p.returncode == 0) == v["identical"] and (
        v["identical"] or (f["op_index"], f["tensor"], f["component"], f["flat"]) ==
        (s["op_index"], s["tensor"], s["component"] or "values", s["flat"]))
    print(f"{head}: intsim compare {golden} (exit {p.returncode}): {verdict}; "
          + ("the scoreboard's verdict" if same else "NOT the scoreboard's verdict"))
    for w in v["dump"]["wrapped"][:1]:
        print(f"{head}: {len(v['dump']['wrapped'])} component(s) written wrapped to their declared width; first: "
              f"{w['file']} element {w['flat']}: the design gave {w['design']}, the dump holds {w['written']}")
    return same


def speed(op: Operator, sim: str, run: dict) -> dict:
    """Elements per second of the drive loop over every set, per pass: best and median."""
    done = [v for v in run["sets"].values() if "skipped" not in v]
    n = sum(v["elements"] for v in done)
    passes = sorted(sum(ts) for ts in zip(*(v["drive_ns_passes"] for v in done)))
    best, median = passes[0], passes[len(passes) // 2]
    s = {"op": op.name, "sim": sim, "elements": n, "passes": len(passes), "min_ns": best, "median_ns": median,
         "best_rate": n * 10 ** 9 // max(best, 1), "median_rate": n * 10 ** 9 // max(median, 1),
         "build_s": run["build_s"], "test_s": run["test_s"]}
    print(f"[{sim}] speed {op.name}: {n} elements a pass, {len(passes)} passes, drive time min {best / 1e9:.3f} s "
          f"median {median / 1e9:.3f} s = {s['best_rate']} elements/s best, {s['median_rate']} median "
          f"(build {run['build_s']:.2f} s; simulator run with start-up {run['test_s']:.1f} s)")
    return s


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--op", action="append", choices=[o.name for o in OPERATORS],
                    help="operator to simulate (repeatable; default every one)")
    ap.add_argument("--sim", action="append", choices=SIMULATORS,
                    help="simulator (repeatable; default both)")
    ap.add_argument("--variant", choices=VARIANTS, default="right", help="right (default) or wrong module")
    ap.add_argument("--self-test", action="store_true",
                    help="run both variants: right must pass every set, wrong must pass the 3-token golden set and fail the stress suite")
    ap.add_argument("--build", type=Path, default=BUILD, help="directory for the simulator builds (default rtl/build)")
    ap.add_argument("--passes", type=int, default=5,
                    help="passes of the right module over the vectors, for the speed figures (default 5)")
    ap.add_argument("--dump", type=Path, metavar="DIR",
                    help="write what each design produced on the stress suite as a bare DUT dump into "
                         "DIR/<op>-<variant>-<sim> and check it with 'intsim compare golden/stress' (its verdict "
                         "must be the scoreboard's)")
    ap.add_argument("--summary", type=Path, help="write every verdict and speed figure to this JSON file")
    a = ap.parse_args(argv)
    ops = [o for o in OPERATORS if not a.op or o.name in a.op]
    sims = a.sim or list(SIMULATORS)
    for sim in sims:
        why = available(sim)
        if why:
            print(f"[{sim}] rtl: {why}", file=sys.stderr)
            return 2
    t0 = time.perf_counter()
    ok, summary = True, {}
    for op in ops:
        for sim in sims:
            variants = VARIANTS if a.self_test else (a.variant,)
            for variant in variants:
                dump = a.dump.joinpath(f"{op.name}-{variant}-{sim}") if a.dump else None
                try:
                    run = simulate(op, variant, sim, a.build, repeat=a.passes if variant == "right" else 1,
                                   dump=dump)
                except IntsimError as e:
                    print(f"[{sim}] rtl: error: {e}", file=sys.stderr)
                    return 2
                verdict = report(op, variant, sim, run)
                if dump is not None:
                    ok &= compare_dump(op, variant, sim, run, dump)
                summary[f"{op.name}/{variant}/{sim}"] = run
                if variant == "right":
                    ok &= all(v is not False for v in verdict.values())
                    if all(v is not False for v in verdict.values()):
                        run["speed"] = speed(op, sim, run)
                elif a.self_test:
                    caught = verdict.get("stress") is False
                    missed = verdict.get("golden") is True
                    print(f"[{sim}] self-test {op.name}: the wrong module ({op.shortcut}) "
                          + ("FAILS the stress suite, as it must" if caught else "PASSES the stress suite: "
                             "the vectors miss it") + ("; the 3-token golden set misses it" if missed else
                                                       "; the 3-token golden set catches it too"))
                    ok &= caught and missed     # the stress suite catches what the 3-token set cannot
                else:
                    ok &= all(v is not False for v in verdict.values())
    if a.summary:
        a.summary.write_text(json.dumps(summary, sort_keys=True, indent=1) + "\n")
    print(f"rtl: {'OK' if ok else 'FAILED'}: {', '.join(o.name for o in ops)} under {', '.join(sims)} "
          f"in {time.perf_counter() - t0:.1f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
