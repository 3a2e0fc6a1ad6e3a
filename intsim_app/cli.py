"""The ``intsim`` command line: one argparse front end over both packages.

It sits above the integer runtime (``intsim``) and the float side (``converters``), so
that the runtime never imports the float side: ``convert`` and ``ppl`` come from
``converters``, ``run``, ``golden``, ``replay``, ``compare`` and ``overflow`` from ``intsim``,
and ``demo`` and ``bench`` (:mod:`intsim_app.demo`, :mod:`intsim_app.bench`) join the two.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def _demo(args) -> int:
    from converters.synthetic import make_demo_model   # the float "prepare" side, once
    from .demo import main as demo_main
    return demo_main(make_demo_model(args.seed), seed=args.seed, json_out=args.json)


def _bench(args) -> int:
    from .bench import main as bench_main
    argv = ((["--json"] if args.json else []) + (["--quick"] if args.quick else [])
            + (["--model", args.model, "--model-rounds", str(args.model_rounds)] if args.model else [])
            + (["--cold-start"] if args.cold_start else [])
            + (["--sweep"] if args.sweep else [])
            + (["--overflow", *args.overflow] if args.overflow is not None else [])
            + ["--overflow-rounds", str(args.overflow_rounds)])
    return bench_main(argv)


def _convert(args) -> int:
    from converters import convert as cv
    return cv.run(args, prog="intsim")     # its errors read "intsim: error: ...", as every command's


def _add_convert(sub) -> None:
    # the float side: imported only when the subcommand is built (numpy float work lives there)
    from converters import convert as cv
    c = sub.add_parser("convert", help="float LLaMA checkpoint (HF directory or GGUF) -> integer model file",
                       description=cv.DESCRIPTION)
    cv.add_arguments(c)
    c.set_defaults(func=_convert)


def _version() -> str:
    """The installed distribution's version (package metadata); the source tree's own
    ``intsim.__version__`` when run from a checkout that was never installed."""
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("intsim")
    except PackageNotFoundError:
        from intsim import __version__
        return __version__


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="intsim",
        description="Bit-exact integer-only reference simulator of I-LLM quantized LLaMA models.")
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}",
                   help="print the installed version and exit")
    sub = p.add_subparsers(dest="command", metavar="COMMAND",
                           help="one of the commands below; 'intsim COMMAND --help' lists its arguments")
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
    from .sweep import add_sweep_parser     # golden / overflow / ppl over a corpus, on Dask
    add_sweep_parser(sub)
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
                   "its peers, those installed: PyTorch fp32 and int8 dynamic on its float "
                   "checkpoint, llama.cpp on its GGUF (decode, prefill, size, peak memory), "
                   "and the cold start")
    b.add_argument("--model-rounds", type=int, default=5, metavar="N",
                   help="interleaved rounds of the --model peers' timings; min and median are "
                        "reported (default 5)")
    b.add_argument("--cold-start", action="store_true", help="time 'intsim run' on the small "
                   "model from an empty Numba cache to its first token, and again warm (about a "
                   "minute on 2 cores; included with --model)")
    b.add_argument("--sweep", action="store_true", help="also 'intsim sweep' throughput (tasks/s, "
                   "MB/s) with 1 and 2 LocalCluster workers on the small model (a few minutes)")
    b.add_argument("--overflow", nargs="*", metavar="MODEL", default=None,
                   help="also time the overflow report on one 256-token window, the int64 "
                        "recompute against Python ints throughout, side by side, on these model "
                        "files (none named: the small model)")
    b.add_argument("--overflow-rounds", type=int, default=3, metavar="N",
                   help="rounds of the --overflow timing (default 3)")
    b.set_defaults(func=_bench)
    return p


def _read_spec_file(args) -> None:
    """``--spec FILE`` (convert, ppl): a JSON file of spec options, read here so that the
    commands see the same JSON text as ``--spec '{...}'``; 'paper' and inline JSON pass."""
    from intsim.errors import IntsimError
    text = getattr(args, "spec", None)
    if text is None or text.strip() == "paper" or text.lstrip().startswith("{"):
        return
    path = Path(text)
    if not path.exists():
        raise IntsimError(f"--spec {text}: no such file (expected 'paper', a JSON object or a "
                          f"JSON file of spec options)")
    try:
        args.spec = path.read_text(encoding="utf-8")
        json.loads(args.spec)
    except (OSError, ValueError) as e:     # unreadable, a folder, not UTF-8, not JSON
        raise IntsimError(f"--spec {text}: not a readable JSON file of spec options: "
                          f"{getattr(e, 'strerror', None) or e}") from None


def _quiet_broken_pipe() -> int:
    """The reader of stdout went away (``intsim ... | head``): stop quietly.  stdout is
    pointed at /dev/null so that the interpreter's final flush cannot fail again; 141 is
    what a shell reports for a process ended by SIGPIPE."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 141


def main(argv=None) -> int:
    try:
        try:
            return _main(argv)
        finally:
            sys.stdout.flush()    # a closed pipe shows here (also after --help), not at exit
    except BrokenPipeError:
        return _quiet_broken_pipe()


def _main(argv) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from intsim.errors import IntsimError
    try:
        _read_spec_file(args)
        return int(args.func(args) or 0)
    except IntsimError as e:
        print(f"intsim: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if isinstance(e, BrokenPipeError) or e.filename is None:
            raise
        # a file the command reads or writes that no check above named: one line, no traceback
        print(f"intsim: error: {e.filename}: {e.strerror or e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
