"""The ``intsim`` command line: one argparse front end over both packages.

It sits above the integer runtime (``intsim``) and the float side (``converters``), so
that the runtime never imports the float side: ``convert`` and ``ppl`` come from
``converters``, ``run``, ``golden``, ``replay``, ``compare`` and ``overflow`` from ``intsim``,
and ``demo`` and ``bench`` (:mod:`intsim_app.demo`, :mod:`intsim_app.bench`) join the two.
"""
from __future__ import annotations

import argparse
import sys


def _demo(args) -> int:
    from converters.synthetic import make_demo_model   # the float "prepare" side, once
    from .demo import main as demo_main
    return demo_main(make_demo_model(args.seed), seed=args.seed, json_out=args.json)


def _bench(args) -> int:
    from .bench import main as bench_main
    argv = ((["--json"] if args.json else []) + (["--quick"] if args.quick else [])
            + (["--model", args.model] if args.model else []))
    return bench_main(argv)


def _add_convert(sub) -> None:
    # the float side: imported only when the subcommand is built (numpy float work lives there)
    from converters import convert as cv
    c = sub.add_parser("convert", help="float LLaMA checkpoint (HF directory or GGUF) -> integer model file",
                       description=cv.DESCRIPTION)
    cv.add_arguments(c)
    c.set_defaults(func=cv.run)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="intsim",
        description="Bit-exact integer-only reference simulator of I-LLM quantized LLaMA models.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    _add_convert(sub)
    from intsim.run import add_run_parsers
    add_run_parsers(sub)
    from intsim.golden import add_golden_parsers
    add_golden_parsers(sub)
    from intsim.stress.cli import add_stress_parser; add_stress_parser(sub)  # noqa: E702 (intsim stress)
    from intsim.overflow import add_overflow_parser
    add_overflow_parser(sub)
    from converters.ppl import add_ppl_parser   # the float side: perplexity needs a log-softmax
    add_ppl_parser(sub)
    d = sub.add_parser("demo", help="run every integer operator on a fixed seeded example",
                       description="Runs one transformer-block-shaped chain of the integer "
                                   "operators on seeded inputs and prints each op's output "
                                   "width, scale and a hash of its integers.")
    d.add_argument("--seed", type=int, default=0, help="seed of the example inputs (default 0)")
    d.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    d.set_defaults(func=_demo)
    b = sub.add_parser("bench", help="integer core throughput against float32 BLAS, same run",
                       description="Measures the exact DI-MatMul integer core against float32 "
                                   "np.matmul on the same shapes in the same run.")
    b.add_argument("--json", action="store_true", help="print one JSON object")
    b.add_argument("--quick", action="store_true", help="small shapes (a smoke run)")
    b.add_argument("--model", metavar="MODEL", help="also time this integer model file against "
                   "PyTorch fp32 on its float checkpoint (decode, prefill, size, peak memory)")
    b.set_defaults(func=_bench)
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from intsim.errors import IntsimError
    try:
        return int(args.func(args) or 0)
    except IntsimError as e:
        print(f"intsim: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
