"""The integer task kinds of a sweep: each calls the single-run function of its command
(``intsim overflow``: :func:`intsim.overflow.overflow_report`; ``intsim golden``:
:func:`intsim.golden.export_golden`; ``intsim mutants``: :func:`intsim.golden.mutating.score`)
on one window (or one golden dump) and returns its JSON-able result.
The float side's ``ppl`` kind lives with the command line (intsim_app.sweep)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from ..golden.formats import MANIFEST
from ..hashing import file_sha256
from .identity import KEY_DIGITS, canonical

#: every sweep runs the overflow report to the end, counting saturations
POLICY = "saturate"
GOLDEN_FORMATS = ["npy", "hex"]


def overflow_run(model, payload: dict, folder) -> dict:
    from ..overflow import overflow_report
    rep = overflow_report(model, np.asarray(payload["tokens"], dtype=np.int64), POLICY)
    return {"report": rep.to_dict()}


def record_hashes(dump) -> list:
    """Every record (op) of a golden dump with a sha256 over its manifest entry and the
    entries of the tensors it names (which hold each file's sha256)."""
    man = json.loads(dump.joinpath(MANIFEST).read_text())
    tensors = {t["name"]: t for t in man["tensors"]}
    out = []
    for op in man["ops"]:
        body = {"op": op, "tensors": [tensors[n] for n in op["inputs"] + op["outputs"]]}
        out.append({"index": op["index"], "name": op["name"], "kind": op["kind"],
                    "sha256": hashlib.sha256(canonical(body).encode()).hexdigest()})
    return out


def golden_run(model, payload: dict, folder) -> dict:
    from ..golden import export_golden, parse_layers
    o = payload["options"]
    dump = folder.joinpath("dump")
    export_golden(model, np.asarray(payload["tokens"], dtype=np.int64), dump,
                  model_sha256=payload["model_sha256"],
                  layers=parse_layers(o.get("layers"), model.config.n_layers),
                  formats=tuple(o.get("formats", GOLDEN_FORMATS)), hex_pack=o.get("hex_pack", False),
                  stages=o.get("stages", True))
    return {"dump": "dump", "manifest_sha256": file_sha256(dump.joinpath(MANIFEST)),
            "records": record_hashes(dump)}


def mutants_run(model, payload: dict, folder) -> dict:
    """``intsim mutants`` on one golden dump: the sweep's own (``golden``: that golden
    task's folder under the sweep's output) or a committed suite (``suite_dir``), with the
    task's model (under its spec variant); every selected mutant, killed or not, and its
    first killing record.  The suite is named by where it sits in the sweep's folder, or
    by the sha256 of its manifest: no path of this machine enters the result."""
    from ..errors import IntsimError
    from ..golden.mutating import Suite, score
    from ..mutants import REGISTRY
    o = payload["options"]
    if "golden" in o:
        label = f"tasks/golden/{o['golden'][:KEY_DIGITS]}/dump"
        d = Path(payload["out"]).joinpath(*label.split("/"))
        if not d.joinpath(MANIFEST).is_file():
            raise IntsimError(f"mutants: the golden dump {label} is missing (its golden task failed)")
    else:
        label, d = f"suite {o['suite'][:16]}", Path(payload["suite_dir"])
    suite = Suite(d, [] if model is None else [(model, payload["model_sha256"])])
    suite.label = label
    r = score([suite], [m for m in REGISTRY if m.name in set(o["only"])])
    return {"suite": label, "records": len(suite.records), "killed": r["killed"], "total": r["total"],
            "mutants": [{k: row[k] for k in ("name", "spec_step", "description", "killed", "kill")}
                        for row in r["mutants"]]}


#: kind -> runner, the integer kinds (the command line adds ppl)
RUNNERS = {"overflow": overflow_run, "golden": golden_run, "mutants": mutants_run}
