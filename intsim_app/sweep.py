"""``intsim sweep``: the command line over :mod:`intsim.sweep`, and the parts of a sweep
that belong to the float side: the ``ppl`` task kind and its table (a log-softmax in
float64, :mod:`converters.ppl`), spec variants (:func:`converters.ppl.override_spec`,
the same override ``intsim ppl --spec`` applies) and models given as a source plus
``intsim convert`` arguments (:mod:`converters.convert`, into ``OUT/models``)."""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
from pathlib import Path

import numpy as np

from intsim.errors import IntsimError
from intsim.hashing import file_sha256


def prepare(model, spec: dict):
    """The model under a plan's spec variant (no overrides: the model as stored)."""
    if not spec:
        return model
    from converters.ppl import override_spec
    return override_spec(model, spec)


def ppl_run(model, payload: dict, folder) -> dict:
    """Negative log-likelihood of one window (positions 1..n-1, as ``intsim ppl``)."""
    from converters.ppl import int_nll_fn
    window = np.asarray(payload["tokens"], dtype=np.int64)
    if window.size < 2:
        raise IntsimError(f"ppl: a window of {window.size} token(s) scores nothing (need >= 2)")
    nll = int_nll_fn(model)(window)
    return {"nll_sum": float(np.sum(nll, dtype=np.float64)), "scored": int(nll.size)}


def ppl_merge(out, tasks: list) -> dict:
    """The perplexity table: one row per (model, spec, input), windows summed in order."""
    from intsim.sweep.merge import load_result
    rows: dict = {}
    for t in tasks:
        r = load_result(out, t)
        row = rows.setdefault((t.model, t.spec_name, t.input), {"nll": 0.0, "scored": 0, "windows": 0})
        row["nll"] += r["nll_sum"]
        row["scored"] += r["scored"]
        row["windows"] += 1
    table = [{"model": m, "spec": s, "input": i, "windows": r["windows"], "scored_tokens": r["scored"],
              "nll": r["nll"] / r["scored"], "ppl": math.exp(r["nll"] / r["scored"])}
             for (m, s, i), r in rows.items()]
    md = ["| model | spec | input | windows | scored tokens | mean NLL (nats) | perplexity |",
          "|---|---|---|---|---|---|---|"]
    md += [f"| {r['model']} | {r['spec']} | {r['input']} | {r['windows']} | {r['scored_tokens']} | "
           f"{r['nll']:.6f} | {r['ppl']:.4f} |" for r in table]
    return {"ppl/table.json": (json.dumps({"rows": table}, sort_keys=True, indent=1) + "\n").encode(),
            "ppl/table.md": ("\n".join(md) + "\n").encode()}


def _source_sha(src: Path) -> str:
    if src.is_file():
        return file_sha256(src)
    h = hashlib.sha256()
    for p in sorted(q for q in src.rglob("*") if q.is_file()):
        h.update(f"{p.relative_to(src).as_posix()}\0{file_sha256(p)}\n".encode())
    return h.hexdigest()


def convert_model(m, folder: Path) -> str:
    """``intsim convert SOURCE ARGS`` into ``folder/NAME-HASH.intsim`` (HASH: of the
    source's contents, the arguments and the intsim version), reused when present;
    written to a temporary name, then renamed."""
    from converters import convert as cv
    from intsim import __version__
    from intsim.sweep import canonical
    key = hashlib.sha256(canonical({"source": _source_sha(Path(m.source)), "convert": list(m.convert),
                                    "intsim": __version__}).encode()).hexdigest()[:16]
    final = folder.joinpath(f"{m.name}-{key}.intsim")
    if final.is_file():
        return str(final)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder.joinpath(f".tmp-{m.name}-{key}-{os.getpid()}.intsim")
    p = argparse.ArgumentParser(prog=f"models.{m.name}.convert", exit_on_error=False)
    cv.add_arguments(p)
    try:
        args = p.parse_args([m.source, "--out", str(tmp), *m.convert])
    except (argparse.ArgumentError, SystemExit) as e:
        raise IntsimError(f"models.{m.name}: convert arguments {list(m.convert)}: {e}") from None
    try:
        if cv.run(args, prog=f"intsim sweep: models.{m.name}") != 0:
            raise IntsimError(f"models.{m.name}: 'intsim convert {m.source} {' '.join(m.convert)}' "
                              f"failed (its error is above)")
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()
    return str(final)


def hooks():
    from intsim.sweep import RUNNERS, Hooks
    return Hooks(runners={**RUNNERS, "ppl": ppl_run}, prepare=prepare, convert=convert_model,
                 mergers={"ppl": ppl_merge})


def cmd_sweep(args) -> int:
    from intsim.sweep import run_sweep
    if args.workers is not None and args.workers < 1:
        raise IntsimError(f"--workers {args.workers}: need at least 1")
    if args.workers is not None and args.scheduler:
        raise IntsimError("--workers starts a LocalCluster; an existing cluster (--scheduler) has its own")
    oc = run_sweep(args.plan, args.out, workers=args.workers or os.cpu_count() or 1,
                   scheduler=args.scheduler, hooks=hooks(), progress=not args.quiet,
                   echo=lambda s: print(s, flush=True))
    secs = oc.run_ns / 1e9
    rate = (f" in {secs:.1f} s ({oc.ran / secs:.2f} tasks/s, {oc.bytes / 1e6 / secs:.2f} MB/s)"
            if oc.ran and secs > 0 else "")
    print(f"sweep: ran {oc.ran} task(s){rate}; {oc.done_before} were done already; reports in {args.out}")
    if oc.failed:
        print(f"intsim: sweep: {len(oc.failed)} task(s) failed (the others finished):", file=sys.stderr)
        for where, err in oc.failed:
            print(f"  {where['kind']} model={where['model']} spec={where['spec']} "
                  f"input={where['input']} window={where['window']}: {err}", file=sys.stderr)
        return 1
    return 0


def add_sweep_parser(sub) -> None:
    s = sub.add_parser("sweep", help="golden / overflow / ppl suites over many prompts, models and "
                                     "specs, on Dask (docs/SWEEP.md)",
                       description="Runs a plan (TOML or JSON: models, spec variants, prompts or "
                                   "text windows, tasks) on Dask distributed: a LocalCluster of "
                                   "worker processes by default, or an existing cluster. One folder "
                                   "per task under OUT/tasks, merged reports beside; a rerun does "
                                   "only what is missing (docs/SWEEP.md).")
    s.add_argument("plan", metavar="PLAN", help="plan file (.toml, or JSON)")
    s.add_argument("--out", required=True, metavar="DIR", help="results folder (created; a rerun "
                   "resumes in it)")
    s.add_argument("--workers", type=int, default=None, metavar="N",
                   help="worker processes of the LocalCluster (default: one per CPU core)")
    s.add_argument("--scheduler", metavar="ADDRESS", default=None,
                   help="an existing Dask scheduler, e.g. tcp://head:8786 (a dask-jobqueue "
                        "cluster's), instead of a LocalCluster")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_sweep)
