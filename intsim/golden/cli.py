"""The command line of the golden vectors: ``intsim golden``, ``intsim replay``,
``intsim compare`` (argument parsing, printing and exit codes), and the parser of
``intsim mutants`` (intsim.golden.mutating) beside them."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import IntsimError
from ..hashing import file_sha256
from ..modelfile import check_prompt_ids, load_model, load_tokenizer, model_hash
from .comparing import compare, divergence_line
from .dump import is_stress, load_manifest
from .formats import MANIFEST
from .mutating import add_mutants_parser
from .record import export_golden, parse_layers
from .replaying import replay, select_ops


def _load(model_path):
    return load_model(model_path), model_hash(model_path)


def cmd_golden(args) -> int:
    import time
    model, sha = _load(args.model)
    if (args.prompt is None) == (args.ids is None):
        raise IntsimError("give exactly one of --prompt TEXT and --ids N,N,...")
    if args.ids is not None:
        try:
            ids = np.array([int(t) for t in args.ids.split(",") if t.strip()], dtype=np.int64)
        except ValueError:
            raise IntsimError(f"--ids: {args.ids!r} is not a comma-separated list of integers") from None
    else:
        ids = np.array(load_tokenizer(model).encode(args.prompt).ids, dtype=np.int64)
    check_prompt_ids(ids, model, "prompt")
    formats = tuple(f.strip() for f in args.format.split(",") if f.strip())
    t0 = time.perf_counter_ns()
    man = export_golden(model, ids, args.out, model_sha256=sha, prompt_text=args.prompt,
                        layers=parse_layers(args.layers, model.config.n_layers), formats=formats,
                        hex_pack=args.hex_pack, stages=not args.no_stages, backend=args.backend,
                        force=args.force, model_path=args.model)
    ms = (time.perf_counter_ns() - t0) // 10 ** 6
    nbytes = man["_bytes_written"]
    tenths = nbytes * 10000 // max(ms, 1) // 10 ** 6            # MB/s in tenths
    print(f"{args.out}: {len(man['ops'])} ops, {len(man['tensors'])} tensors, {ids.size} token{'' if ids.size == 1 else 's'}, "
          f"{nbytes // 1000} kB in {ms} ms ({tenths // 10}.{tenths % 10} MB/s); "
          f"sha256 of the manifest: {file_sha256(Path(args.out).joinpath(MANIFEST))}")
    return 0


def cmd_replay(args) -> int:
    man = load_manifest(args.golden_dir)
    if is_stress(man):
        if args.model is not None:
            raise IntsimError(f"{args.golden_dir}: a stress suite is replayed without a MODEL (it has none)")
        model, sha = None, None
    elif args.model is None:
        raise IntsimError(f"{args.golden_dir}: a model-level dump needs the MODEL it was made from")
    else:
        model, sha = _load(args.model)
    ops = select_ops(man, op=args.op, layer=args.layer, start=args.start, stop=args.stop)
    r = replay(args.golden_dir, model, model_sha256=sha, ops=ops, backend=args.backend)
    if args.json:
        print(json.dumps(r, sort_keys=True))
        return 0 if r["identical"] else 1
    bad = [e for e in r["ops"] if not e["identical"]]
    for e in (r["ops"] if args.verbose else bad[:args.max_report]):
        line = f"op {e['index']:>5} {e['name']:<40} {e['kind']:<20} {'identical' if e['identical'] else 'DIFFERS'}"
        if e["chained"]:
            line += f"  (chained: {', '.join(e['chained'])})"
        print(line)
        for t in e["tensors"]:
            if not t["identical"]:
                f = t["first"]
                print(f"      {t['name']}: {t['mismatches']} mismatching element(s)" +
                      ("" if t["format_ok"] else ", width/signedness or shape differs") +
                      (f"; first at {tuple(f['index'])} ({f['component']}): dumped {f['golden']}, "
                       f"replayed {f['got']}, delta {f['lsb_delta']} LSB" if f else ""))
        if "stats" in e:
            print(f"      stats differ: {e['stats']}")
        if "error" in e:
            print(f"      expected refusal: the op {e['error']}")
    print(f"replayed {len(r['ops'])} op(s) on backend {args.backend}: " +
          ("all outputs bit-identical to the dump" if r["identical"] else f"{len(bad)} op(s) differ"))
    return 0 if r["identical"] else 1


def cmd_compare(args) -> int:
    r = compare(args.golden_dir, args.dut_dir, outputs_only=args.outputs_only, partial=args.partial)
    if args.json:
        print(json.dumps(r, sort_keys=True))
        return 0 if r["identical"] else 1
    if r["identical"]:
        print(f"identical: {r['compared']} tensor(s) compared, every element equal")
        return 0
    f = r["first"]
    print(divergence_line(f))
    if "expect_error" in f:                        # a refusal record: another error, or none
        return 1
    print("mismatches per op:")
    for o in r["mismatching_ops"][:args.max_report]:
        g = o["first"]
        print(f"  op {o['index']:>5} {o['name']:<40} {o['kind']:<20} {o['mismatches']:>9}  first "
              f"{tuple(g['index'])} golden {g['golden']} DUT {g['got']} ({g['lsb_delta']:+d}), tie: {g['tie']}")
    more = len(r["mismatching_ops"]) - args.max_report
    if more > 0:
        print(f"  ... and {more} more op(s)")
    print(f"{len(r['mismatching_ops'])} of {len(r['ops'])} compared op(s) differ")
    return 1


def add_golden_parsers(sub) -> None:
    g = sub.add_parser("golden", help="dump every op's inputs, outputs and scales as golden vectors",
                       description="One prefill of the prompt through the op-by-op integer graph; "
                                   "writes every op's inputs, outputs and requantization parameters "
                                   "in execution order (.npy, $readmemh hex, decimal text) with a "
                                   "manifest.json (docs/GOLDEN_FORMAT.md).")
    g.add_argument("model", metavar="MODEL", help="integer model file")
    g.add_argument("--prompt", help="prompt text (tokenized with the model's tokenizer)")
    g.add_argument("--ids", help="token ids instead of a prompt, e.g. 1,17,42")
    g.add_argument("--out", required=True, metavar="DIR", help="output directory (created; must be empty)")
    g.add_argument("--layers", help="dump only these layers, e.g. 0,2-3 (numbering stays the full graph's)")
    g.add_argument("--format", default="npy,hex", help="npy (always) and any of hex, txt (default npy,hex)")
    g.add_argument("--hex-pack", action="store_true", help="also write the packed 32-bit layout of sub-byte tensors")
    g.add_argument("--no-stages", action="store_true", help="leave out the stage records (matmul input codes "
                   "and accumulators, softmax clip / requant / DI-Exp)")
    g.add_argument("--backend", default="numba", choices=("numba", "reference", "cuda"),
                   help="numba (default), reference (NumPy) or cuda (the ops on an NVIDIA GPU): the same integers")
    g.add_argument("--force", action="store_true", help="replace an earlier dump in DIR")
    g.set_defaults(func=cmd_golden)
    r = sub.add_parser("replay", help="re-run ops from a golden dump and check their outputs bit for bit",
                       description="Re-runs one op, one layer, a range of ops or all of them from the "
                                   "dumped inputs; an input produced by an op replayed earlier in the "
                                   "same run comes from that replay.  A stress suite (intsim stress) "
                                   "is replayed without a model.  Exit 0 only when every output is "
                                   "bit-identical to the dump.")
    r.add_argument("golden_dir", metavar="GOLDEN_DIR",
                   help="folder written by 'intsim golden' or 'intsim stress' (holds manifest.json)")
    r.add_argument("model", metavar="MODEL", nargs="?", default=None,
                   help="the model file the dump was made from (none for a stress suite)")
    sel = r.add_mutually_exclusive_group()
    sel.add_argument("--op", help="one op, by name or index")
    sel.add_argument("--layer", type=int, help="every op of one layer")
    sel.add_argument("--from", dest="start", type=int, metavar="A", help="first op index of a range")
    r.add_argument("--to", dest="stop", type=int, metavar="B", help="last op index of a range")
    r.add_argument("--backend", default="numba", choices=("numba", "reference", "cuda"),
                   help="numba (default), reference (NumPy) or cuda (the ops on an NVIDIA GPU)")
    r.add_argument("--json", action="store_true", help="print one JSON object")
    r.add_argument("--verbose", action="store_true", help="list every op, not only the differing ones")
    r.add_argument("--max-report", type=int, default=20, metavar="N", help="differing ops listed (default 20)")
    r.set_defaults(func=cmd_replay)
    c = sub.add_parser("compare", help="compare a device-under-test dump with a golden dump, exactly",
                       description="Checks both manifests and every file's sha256, then compares every "
                                   "tensor exactly: first divergent op and element, both values, LSB "
                                   "delta, mismatches per op, and whether the golden value sat on a "
                                   "rounding tie.  Exit 0 only when identical, 1 on a mismatch, 2 on "
                                   "bad input.")
    c.add_argument("golden_dir", metavar="GOLDEN_DIR",
                   help="the reference: a folder written by 'intsim golden'")
    c.add_argument("dut_dir", metavar="DUT_DIR",
                   help="the device under test's dump in the same format (docs/GOLDEN_FORMAT.md; "
                        "hex-only is fine)")
    c.add_argument("--outputs-only", action="store_true", help="compare op outputs only")
    c.add_argument("--partial", action="store_true", help="the DUT dumped a subset: compare what it has")
    c.add_argument("--json", action="store_true", help="print one JSON object")
    c.add_argument("--max-report", type=int, default=20, metavar="N", help="differing ops listed (default 20)")
    c.set_defaults(func=cmd_compare)
    add_mutants_parser(sub)
