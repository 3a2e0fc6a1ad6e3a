"""Simulate rtl/di_exp.v under Icarus Verilog + cocotb against the golden vectors.

    python rtl/run.py                  the right module: PASS (exit 0) or FAIL (exit 1)
    python rtl/run.py --variant wrong  the deliberately wrong module (rtl/di_exp_wrong.v):
                                       must FAIL, naming the first wrong element
    python rtl/run.py --self-test      both: the right one must pass and the wrong one must
                                       fail (exit 0 only then); ``make rtl-test`` runs this

Vectors: rtl/make_vectors.py writes them (``--vectors DIR`` to use other dumps; ``--regen``
to rewrite them).  Needs ``iverilog`` on PATH and the ``cocotb`` package.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

RTL = Path(__file__).resolve().parent
ROOT = RTL.parent
BUILD = RTL / "build"
VARIANTS = {"right": RTL / "di_exp.v", "wrong": RTL / "di_exp_wrong.v"}


def vector_dirs(root: Path) -> list:
    return sorted(str(p.parent) for p in root.glob("*/manifest.json"))


def simulate(variant: str, vectors: Path, build_root: Path = BUILD) -> dict:
    """Build and run one variant; returns the test's verdict (rtl/test_di_exp.py)."""
    from cocotb_tools.runner import get_runner
    build = build_root / f"sim_{variant}"
    result = build / "verdict.json"
    if result.exists():
        result.unlink()
    runner = get_runner("icarus")
    runner.build(sources=[VARIANTS[variant]], includes=[RTL], hdl_toplevel="di_exp",
                 build_dir=build, always=True,
                 timescale=("1ns", "1ps"), log_file=build / "build.log")
    env = {"RTL_VECTORS": ":".join(vector_dirs(vectors)), "RTL_RESULT": str(result),
           "PYTHONPATH": os.pathsep.join([str(RTL), os.environ.get("PYTHONPATH", "")])}
    try:       # under pytest (PYTEST_CURRENT_TEST set) the runner raises on a failed test
        runner.test(test_module="test_di_exp", hdl_toplevel="di_exp", build_dir=build, test_dir=build,
                    extra_env=env, results_xml=str(build / "results.xml"), log_file=build / "sim.log")
    except (SystemExit, Exception):
        pass     # the verdict file below says what happened
    if not result.exists():
        raise SystemExit(f"rtl: the simulation of {VARIANTS[variant].name} wrote no verdict; see "
                         f"{build / 'sim.log'}")
    return json.loads(result.read_text())


def report(variant: str, v: dict) -> bool:
    name = VARIANTS[variant].name
    if not v["wrong"]:
        print(f"PASS: {name}: all {v['checked']} elements of {len(v['ops'])} di_exp ops match "
              f"the golden vectors ({', '.join(v['ops'])})")
        return True
    f = v["first"]
    print(f"FAIL: {name}: {v['wrong']} of {v['checked']} elements wrong; first wrong element: "
          f"{f['dump']}/{f['op']} index {tuple(f['index'])} (flat {f['flat']}), x={f['x']} "
          f"m={f['m']} k={f['k']} ({f['rounding']}): expected out={f['expected']['out']} "
          f"T={f['expected']['T']}, got out={f['got']['out']} T={f['got']['T']}")
    return False


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", choices=sorted(VARIANTS), default="right")
    ap.add_argument("--self-test", action="store_true",
                    help="run both variants: right must pass, wrong must fail")
    ap.add_argument("--vectors", type=Path, default=BUILD / "vectors",
                    help="directory of dumps (default rtl/build/vectors, generated when missing)")
    ap.add_argument("--regen", action="store_true", help="rewrite the default vectors first")
    ap.add_argument("--build", type=Path, default=BUILD,
                    help="directory for the simulator builds (default rtl/build)")
    a = ap.parse_args(argv)
    if shutil.which("iverilog") is None:
        print("rtl: iverilog not found on PATH (Debian/Ubuntu: apt-get install -y iverilog)",
              file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    if a.vectors == BUILD / "vectors" and (a.regen or not vector_dirs(a.vectors)):
        subprocess.run([sys.executable, str(RTL / "make_vectors.py"), str(a.vectors)], check=True)
    if not vector_dirs(a.vectors):
        print(f"rtl: no dump (*/manifest.json) under {a.vectors}", file=sys.stderr)
        return 2
    if a.self_test:
        ok = report("right", simulate("right", a.vectors, a.build))
        bad_fails = not report("wrong", simulate("wrong", a.vectors, a.build))
        if bad_fails:
            print("self-test: the wrong module fails, as it must (the testbench can fail)")
        else:
            print("self-test FAILED: the deliberately wrong module passed")
        print(f"rtl: {time.perf_counter() - t0:.1f} s")
        return 0 if ok and bad_fails else 1
    ok = report(a.variant, simulate(a.variant, a.vectors, a.build))
    print(f"rtl: {time.perf_counter() - t0:.1f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
