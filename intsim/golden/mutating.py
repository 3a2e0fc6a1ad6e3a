"""``intsim mutants``: the mutant score of golden suites.  Every op record of each suite is
replayed from its dumped inputs on the reference backend under each mutant of
:mod:`intsim.mutants`; a mutant is **killed** by a suite when some record's output differs
from the dump (or the op refuses its dumped inputs under the mutant), and the first such
record is reported.  docs/MUTANTS.md: the registry and today's score.

Records are replayed each from its own dumped inputs, not chained: before the first
differing record every output equals the dump, so the first kill is the one a chained
replay (``intsim replay``) would show, and a suite stops at it.  The suites are loaded
once (files checked against the manifest, the model against its recorded hash) and must
replay bit-identically without any mutant first, else no kill would mean anything.

A mutant of the graph (``Mutant.graph``: a width the graph hands an op, not an op's
arithmetic) cannot show in a record replayed with its dumped arguments.  For those, a model
dump of a prefill from position 0 is also run as a whole: ``intsim.llama.forward`` from the
dumped token ids on the reference backend, each op record of the dump (a dump of some
layers holds only theirs; stage records are not ops of the graph) against that op's output
in the run, in record order (a kill of kind ``graph``).  For an op mutant this run could add
nothing: every op sees the same inputs as its record until a record differs.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import IntsimError
from ..mutants import REGISTRY, select
from ..qtensor import Dyadic, QTensor
from .comparing import Diff, diff_arrays, first_mismatch
from .formats import MANIFEST
from .dump import dump_error, error_verdict, load_manifest, read_component, tensor_components, verify_files
from .ops import KINDS
from .replaying import call_args, check_model
from .values import split_result, value_comps

BACKEND = "reference"


@dataclass
class _Output:
    arg: str
    tensor: str
    type: str
    bits: object
    signed: object
    comps: list                         # [(component, dumped array)]


@dataclass
class _Record:
    index: int
    name: str
    kind: str
    kwargs: dict
    outputs: list = field(default_factory=list)
    expect_error: dict | None = None            # a refusal record: the error it must raise


def _freeze(v) -> None:
    """Mark a loaded input read-only: it is reused under every mutant, so no op may write it."""
    for a in ((v,) if isinstance(v, np.ndarray) else
              (v.q, v.zp, v.scale.m, v.scale.k) if isinstance(v, QTensor) else
              (v.m, v.k) if isinstance(v, Dyadic) else ()):
        if isinstance(a, np.ndarray):
            a.flags.writeable = False


class Suite:
    """One golden dump, loaded for repeated replays: every op record's call (model
    parameters, spec, dumped inputs) and its dumped outputs."""

    def __init__(self, d, models=None):
        """``models``: ``[(model, file sha256), ...]``; a suite whose ops read model
        parameters takes the one whose hash its manifest records."""
        self.dir = Path(d)
        self.label = str(d)
        man = load_manifest(self.dir)
        problems = verify_files(self.dir, man)
        if problems:
            raise dump_error(self.dir, f"{len(problems)} file problem(s): " + "; ".join(problems[:5]))
        needs = sorted({p["model"] for op in man["ops"] for p in op["params"].values()
                        if isinstance(p, dict) and "model" in p})
        model = None
        if needs:
            want = (man.get("model") or {}).get("file_sha256")
            found = [(m, sha) for m, sha in (models or []) if sha == want]
            if not found:
                made = (man.get("run") or {}).get("model_path")
                have = "none was given" if not models else \
                    f"none of the {len(models)} given has that sha256"
                raise IntsimError(f"{self.dir}: its ops read model parameters ({needs[0]}, ...): give "
                                  f"the model file it was made from with --model (sha256 "
                                  f"{str(want or '?')[:16]}..." + (f", made from {made}" if made else "")
                                  + f"); {have}")
            model, sha = found[0]
            check_model(man, model, sha, self.dir)
        tensors = {t["name"]: t for t in man["tensors"]}
        self.records = [self._load(man, op, tensors, model) for op in man["ops"]]
        self.graph = None          # (model, token ids) for a graph run
        if (model is not None and self.records
                and str((man.get("run") or {}).get("positions", "")).startswith("prefill 0..")):
            ids = np.asarray((man.get("prompt") or {}).get("tokens", []), dtype=np.int64)
            if ids.size:
                self.graph = (model, ids)

    def _load(self, man, op, tensors, model) -> _Record:
        if op["kind"] not in KINDS:
            raise dump_error(self.dir, f"op '{op['name']}': unknown kind {op['kind']!r}")
        kwargs, _ = call_args(self.dir, man, op, tensors, model, BACKEND)
        for tn in op["inputs"]:                       # the dumped inputs, not model parameters
            _freeze(kwargs.get(tensors[tn]["arg"]))
        rec = _Record(op["index"], op["name"], op["kind"], kwargs, expect_error=op.get("expect_error"))
        for tn in op["outputs"]:
            t = tensors[tn]
            comps = [(c, read_component(self.dir, e, f"tensor '{tn}'" + (f" {c}" if c else "")))
                     for c, e in tensor_components(t)]
            rec.outputs.append(_Output(t["arg"], tn, t["type"], t.get("bits"), t.get("signed"), comps))
        return rec

    def first_kill(self, graph: bool = False):
        """Replay the records in order with the reference as it stands (a mutant applied or
        not); the first record whose output differs from the dump, as a dict, or None.
        ``graph``: then also run the whole graph (module doc) when the suite allows it."""
        for rec in self.records:
            if rec.expect_error is not None:
                why = error_verdict(rec.expect_error, lambda: KINDS[rec.kind](**rec.kwargs))
                if why is not None:
                    return {"suite": self.label, "op_index": rec.index, "op": rec.name, "kind": rec.kind,
                            "error": f"the op {why}"}
                continue
            try:
                outs, _ = split_result(rec.kind, KINDS[rec.kind](**rec.kwargs))
                kill = self._compare(rec, dict(outs))
            except IntsimError as e:
                kill = {"error": f"the op refused its dumped inputs: {e}"}
            if kill is not None:
                return {"suite": self.label, "op_index": rec.index, "op": rec.name, "kind": rec.kind, **kill}
        return self._graph_kill() if graph and self.graph is not None else None

    def _graph_kill(self):
        from ..llama import forward
        model, ids = self.graph
        results = _OpResults()
        try:
            forward(model, ids, backend=BACKEND, tap=results)
        except IntsimError as e:
            rec = self.records[0]
            return {"suite": self.label, "op_index": rec.index, "op": rec.name, "kind": "graph",
                    "error": f"the graph refused the dumped token ids: {e}"}
        for rec in self.records:
            if rec.expect_error is not None or rec.name not in results.out:
                continue                          # stage records: not ops of the graph
            try:
                outs, _ = split_result(rec.kind, results.out[rec.name])
                kill = self._compare(rec, dict(outs))
            except IntsimError as e:
                kill = {"error": f"the graph's op gave no comparable output: {e}"}
            if kill is not None:
                return {"suite": self.label, "op_index": rec.index, "op": rec.name, "kind": "graph", **kill}
        return None

    @staticmethod
    def _compare(rec: _Record, got: dict):
        for o in rec.outputs:
            if o.arg not in got:
                return {"tensor": o.tensor, "error": f"the op gave no output '{o.arg}'"}
            comps, typ, attrs = value_comps(got[o.arg])
            for c, want in o.comps:
                have = comps.get(c)
                if have is None or have.shape != want.shape:
                    return {"tensor": o.tensor, "error": f"component {c or 'values'} has shape "
                            f"{None if have is None else list(have.shape)}, the dump {list(want.shape)}"}
                diff = diff_arrays(want, have, c, Diff())
                if diff.count:
                    return {"tensor": o.tensor, "mismatches": diff.count, **first_mismatch(diff)}
            if typ != o.type or (typ != "dyadic" and (attrs["bits"], attrs["signed"]) != (o.bits, bool(o.signed))):
                return {"tensor": o.tensor, "error": f"width/signedness {attrs.get('bits')}/"
                        f"{attrs.get('signed')}, the dump {o.bits}/{o.signed}"}
        return None


class _OpResults:
    """An op-aware tap (``intsim.llama``) keeping each op's whole result by name."""
    takes_op_calls = True

    def __init__(self):
        self.out = {}

    def __call__(self, name, value, call):
        self.out[name] = call.result


def score(suites: list, mutants=None) -> dict:
    """Replay every suite under every mutant (default: the whole registry).  Returns
    ``{"suites", "mutants": [{name, spec_step, description, killed, kill, kills}], "killed",
    "total"}``: ``kill`` is the first killing record over the suites in the order given,
    ``kills`` each suite's first (or None)."""
    todo = REGISTRY if mutants is None else mutants
    graph = any(m.graph for m in todo)
    for s in suites:
        base = s.first_kill(graph)
        if base is not None:
            what = "the whole graph's" if base["kind"] == "graph" else "op"
            raise IntsimError(f"{s.label}: {what} {base['op_index']} '{base['op']}' does not replay "
                              f"bit-identically on the reference backend without any mutant; a "
                              f"mutant score needs a suite the reference reproduces")
    rows = []
    for m in todo:
        with m.apply():
            kills = {s.label: s.first_kill(m.graph) for s in suites}
        first = next((k for k in kills.values() if k is not None), None)
        rows.append({"name": m.name, "spec_step": m.spec_step, "description": m.description,
                     "killed": first is not None, "kill": first, "kills": kills})
    return {"suites": [{"dir": s.label, "records": len(s.records)} for s in suites],
            "mutants": rows, "killed": sum(r["killed"] for r in rows), "total": len(rows)}


def describe_kill(k: dict) -> str:
    """One line: where a mutant was killed."""
    where = f"{k['suite']}: op {k['op_index']} {k['op']} ({k['kind']})"
    if k["kind"] == "graph":
        where = f"{k['suite']}: the whole graph, at op {k['op_index']} {k['op']}"
    if "error" in k:
        return f"{where}{', ' + k['tensor'] if 'tensor' in k else ''}: {k['error']}"
    comp = "" if k["component"] == "values" else f".{k['component']}"
    return (f"{where}, {k['tensor']}{comp} at {tuple(k['index'])}: dumped {k['golden']}, mutant "
            f"{k['got']} ({k['mismatches']} element(s) differ)")


def percent(k: int, n: int) -> int:
    """``100 k / n`` rounded down (100 only when every mutant is killed)."""
    return 100 * k // max(n, 1)


def expand_suites(dirs) -> list:
    """Each SUITE_DIR as given, or, for a folder without a manifest (``golden/``), every
    sub-folder that holds one, in name order."""
    out = []
    for d in map(Path, dirs):
        if d.joinpath(MANIFEST).is_file() or not d.is_dir():
            out.append(d)              # (a missing dump is refused by Suite, naming it)
            continue
        subs = sorted(p for p in d.iterdir() if p.joinpath(MANIFEST).is_file())
        if not subs:
            raise IntsimError(f"{d}: neither a golden dump (no {MANIFEST}) nor a folder of dumps")
        out.extend(subs)
    return out


def cmd_mutants(args) -> int:
    mutants = select(args.only)
    if args.list:
        for m in mutants:
            print(f"{m.name:<28} {m.spec_step:<14} {m.description}")
        print(f"{len(mutants)} mutant(s)")
        return 0
    if not args.suites:
        raise IntsimError("give at least one SUITE_DIR (a golden dump), or --list")
    models = []
    if args.model:
        from ..modelfile import load_model, model_hash
        models = [(load_model(p), model_hash(p)) for p in args.model]
    t0 = time.perf_counter_ns()
    suites = [Suite(d, models) for d in expand_suites(args.suites)]
    r = score(suites, mutants)
    ms = (time.perf_counter_ns() - t0) // 10 ** 6
    if args.json:
        print(json.dumps(r, sort_keys=True))
    else:
        print(f"{'mutant':<28} {'SPEC step':<14} {'result':<9} first killing record")
        for row in r["mutants"]:
            print(f"{row['name']:<28} {row['spec_step']:<14} {'killed' if row['killed'] else 'SURVIVED':<9} "
                  + (describe_kill(row["kill"]) if row["killed"] else ""))
        print(f"killed {r['killed']} of {r['total']} ({percent(r['killed'], r['total'])} %) with "
              f"{', '.join(s.label for s in suites)} in {ms // 1000}.{ms % 1000 // 100} s")
    return 0 if r["killed"] == r["total"] else 1


def add_mutants_parser(sub) -> None:
    p = sub.add_parser("mutants", help="the mutant score of golden suites: which deviations of the "
                       "spec they catch",
                       description="Replays every op record of the golden suites on the reference "
                                   "backend under each mutant of the registry (intsim.mutants: one "
                                   "plausible hardware deviation of one SPEC step each, e.g. a tie "
                                   "rule replaced by floor) and reports, per mutant, killed (some "
                                   "record's output differs from the dump) or survived, and the "
                                   "first killing record.  Exit 0 when every selected mutant is "
                                   "killed, 1 when one survives, 2 on bad input.  docs/MUTANTS.md.")
    p.add_argument("suites", nargs="*", metavar="SUITE_DIR", help="golden dumps (intsim golden)")
    p.add_argument("--model", metavar="MODEL", action="append", help="a model file suites were "
                   "made from (needed when their ops read model parameters; each such suite takes "
                   "the one whose sha256 its manifest records); repeat for suites of several models")
    p.add_argument("--only", nargs="+", metavar="NAME", help="only these mutants (names or shell "
                   "patterns, e.g. 'softmax.*')")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--list", action="store_true", help="list the mutants (name, SPEC step, what "
                   "changes) and exit")
    p.set_defaults(func=cmd_mutants)
