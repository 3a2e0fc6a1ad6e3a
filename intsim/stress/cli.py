"""``intsim stress``: write the directed stress suite (and its coverage table)."""
from __future__ import annotations

import time
from pathlib import Path

from ..errors import IntsimError
from ..golden.formats import MANIFEST
from ..hashing import file_sha256


def cmd_stress(args) -> int:
    from .coverage import coverage_markdown
    from .suite import all_cases, select, write_suite
    formats = tuple(f.strip() for f in args.format.split(",") if f.strip())
    if args.list:
        for c in select(all_cases(), args.only):
            print(f"{c.name:<48} {c.kind:<20} {c.targets}")
        return 0
    if args.out is None:
        raise IntsimError("--out DIR is required (or --list)")
    t0 = time.perf_counter_ns()
    man = write_suite(args.out, formats=formats, only=args.only, force=args.force, stages=args.stages)
    ms = (time.perf_counter_ns() - t0) // 10 ** 6
    n_cases = sum(1 for o in man["ops"] if o["stage_of"] is None)
    print(f"{args.out}: {n_cases} stress records ({len(man['ops'])} ops in all), {len(man['tensors'])} "
          f"tensors, {man['_bytes_written'] // 1000} kB in {ms} ms; sha256 of the manifest: "
          f"{file_sha256(Path(args.out).joinpath(MANIFEST))}")
    if args.coverage:
        text = coverage_markdown(man)
        try:
            Path(args.coverage).write_text(text)
        except OSError as e:
            raise IntsimError(f"--coverage {args.coverage}: cannot write: {e.strerror or e}") from e
        print(f"{args.coverage}: coverage table of {n_cases} records")
    return 0


def add_stress_parser(sub) -> None:
    s = sub.add_parser("stress", help="write directed stress vectors for every operator (golden format)",
                       description="Writes op-level golden records aimed at every branch of docs/SPEC.md "
                                   "(exact ties under each tie rule, both sides of every saturation and "
                                   "clamp, DI-Exp's T cap, masked and zero-range rows, the requantizer's "
                                   "pre-shift, isqrt at perfect squares, accumulators at their bounds), "
                                   "each naming the SPEC step it targets; no model needed.  Replay with "
                                   "'intsim replay DIR'.  Format: docs/GOLDEN_FORMAT.md section 7.")
    s.add_argument("--out", metavar="DIR", help="output directory (created; must be empty unless --force)")
    s.add_argument("--force", action="store_true", help="replace an earlier dump in DIR")
    s.add_argument("--format", default="npy,hex", help="npy (always) and any of hex, txt (default npy,hex)")
    s.add_argument("--only", nargs="+", metavar="OP", help="only these op kinds (e.g. di_exp requant_rows) "
                   "or case-name prefixes (e.g. requant_rows.preshift)")
    s.add_argument("--stages", action="store_true", help="add the stage records of DI-MatMul and "
                   "DI-ClippedSoftmax cases (their internal steps, as golden dumps of a model have them)")
    s.add_argument("--coverage", metavar="FILE", help="also write the coverage table (Markdown: every SPEC "
                   "site and the records that reach it) to FILE")
    s.add_argument("--list", action="store_true", help="list the cases (name, kind, target) and exit")
    s.set_defaults(func=cmd_stress)
