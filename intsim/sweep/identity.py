"""Task identity: the hash of a task's inputs, and the plan expanded into tasks.

A task is one (kind, model, spec variant, window) of a plan.  Its key is the sha256 of
the canonical JSON of exactly what determines its result: the kind and its options, the
model file's sha256, the spec overrides, the window's token ids and the intsim version
(options that steer only the merge, ``plan.MERGE_OPTIONS``, are left out).
Its folder is ``tasks/KIND/KEY[:24]``: a rerun, a resumed sweep or another plan that
holds the same task finds it done there, whatever the plan calls the model or the input.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass

import numpy as np

from .. import __version__
from ..errors import IntsimError
from ..hashing import file_sha256
from .plan import MERGE_OPTIONS

#: hex digits of the key in a task's folder name (96 bits)
KEY_DIGITS = 24


def canonical(obj) -> str:
    """The one JSON text of ``obj``: sorted keys, no spaces, ASCII."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def task_key(kind: str, model_sha256: str, spec: dict, tokens, options: dict,
             version: str = __version__) -> str:
    ident = {"kind": kind, "model_sha256": model_sha256, "spec": spec,
             "tokens": [int(t) for t in tokens], "options": options, "intsim": version}
    return hashlib.sha256(canonical(ident).encode()).hexdigest()


@dataclass(frozen=True)
class Task:
    """One unit of work.  ``model``, ``spec_name``, ``input``, ``window`` and ``entry``
    are the plan's names (for reports); the rest is what the worker needs."""
    kind: str
    model: str
    spec_name: str
    input: str
    window: int                 # index of the window (prompt) within its input
    entry: int                  # index of the plan's task entry
    model_file: str
    model_sha256: str
    spec: tuple                 # (field, value) overrides, sorted
    tokens: tuple
    options: tuple              # (option, value), sorted
    key: str
    data: tuple = ()            # (name, value): what a worker needs beyond the identity (a
                                # committed suite's folder): neither in the key nor in results

    @property
    def folder(self) -> str:
        """The task's folder, relative to the sweep's output folder."""
        return f"tasks/{self.kind}/{self.key[:KEY_DIGITS]}"

    def payload(self) -> dict:
        """What a worker gets (plain data, no plan names needed to compute)."""
        return {"kind": self.kind, "key": self.key, "folder": self.folder,
                "model_file": self.model_file, "model_sha256": self.model_sha256,
                "spec": dict(self.spec), "tokens": list(self.tokens),
                "options": _thaw(self.options), **dict(self.data)}

    def where(self) -> dict:
        """The task's place in the plan (names only, no paths)."""
        return {"kind": self.kind, "model": self.model, "spec": self.spec_name,
                "input": self.input, "window": self.window}


def _freeze(d: dict) -> tuple:
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in d.items()))


def _thaw(t: tuple) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in t}


def windows(model_file: str, inp) -> list:
    """The token windows (lists of ids) of one plan input under the model's tokenizer:
    each prompt encoded as ``intsim golden`` does, or the text encoded whole (no special
    tokens, as ``intsim ppl``) and cut into consecutive windows of ``inp.window`` tokens
    from ``inp.offset``, full windows only, the first ``inp.count``."""
    from ..modelfile import load_tokenizer
    tok = load_tokenizer(model_file)
    if inp.prompts:
        return [list(tok.encode(p).ids) for p in inp.prompts]
    try:
        with open(inp.text, encoding="utf-8") as fh:
            text = fh.read()
    except (OSError, UnicodeDecodeError) as e:
        raise IntsimError(f"inputs.{inp.name}: text {inp.text}: not a readable UTF-8 file: "
                          f"{getattr(e, 'strerror', None) or e}") from None
    ids = np.asarray(tok.encode(text, add_special_tokens=False).ids, dtype=np.int64)[inp.offset:]
    n = ids.size // inp.window
    if inp.count is not None:
        n = min(n, inp.count)
    return [ids[i * inp.window:(i + 1) * inp.window].tolist() for i in range(n)]


def expand(plan, model_files: dict) -> list:
    """Every task of ``plan`` (entry x model x spec x window), in plan order.
    ``model_files``: plan model name -> the integer model file to use (converted ones
    included).  Refuses an input that gives no window, or a window longer than a model's
    context, naming the input and the model."""
    from ..modelfile import read_header
    shas = {name: file_sha256(f) for name, f in model_files.items()}
    ctx = {name: int(read_header(f)["config"]["max_pos"]) for name, f in model_files.items()}
    wins: dict = {}
    out = []
    for e in plan.tasks:
        if e.kind == "mutants":
            continue                    # scored from the others' dumps: below
        for mname in e.models:
            for sname in e.specs:
                for iname in e.inputs:
                    if (mname, iname) not in wins:
                        ws = windows(model_files[mname], plan.inputs[iname])
                        where = f"{plan.path}: inputs.{iname}"
                        if not ws:
                            raise IntsimError(f"{where}: gives no window (empty prompt set, or a "
                                              f"text shorter than one window) under model {mname}")
                        for j, w in enumerate(ws):
                            if not w:
                                raise IntsimError(f"{where}: prompt {j} encodes to no tokens")
                            if len(w) > ctx[mname]:
                                raise IntsimError(f"{where}: window {j} has {len(w)} tokens, more "
                                                  f"than model {mname}'s context of {ctx[mname]}")
                        wins[mname, iname] = ws
                    for j, w in enumerate(wins[mname, iname]):
                        spec = plan.specs[sname]
                        key = task_key(e.kind, shas[mname], spec, w,
                                       {k: v for k, v in e.options.items() if k not in MERGE_OPTIONS})
                        out.append(Task(e.kind, mname, sname, iname, j, e.index,
                                        str(model_files[mname]), shas[mname], _freeze(spec),
                                        tuple(w), _freeze(e.options), key))
    for e in plan.tasks:
        if e.kind == "mutants":
            out += _mutants_tasks(plan, e, out, model_files, shas)
    return out


def _mutants_tasks(plan, e, tasks: list, model_files: dict, shas: dict) -> list:
    """The tasks of a mutants entry: one per golden task of the entry it names (``golden``,
    the model, spec and window of that dump; key: the dump's task key and the mutants), or
    one per committed suite (``suites``; key: the sha256 of its manifest, which holds every
    file's, the model file's sha256 when its ops read model parameters, and the mutants),
    scored with a plan model it was made from."""
    from ..golden import load_manifest
    from ..golden.formats import MANIFEST
    only = list(e.options["only"])
    where = f"{plan.path}: tasks[{e.index}]"
    out = []
    if "golden" in e.options:
        src = [t for t in tasks if t.entry == e.options["golden"] and t.model in e.models
               and t.spec_name in e.specs and t.input in e.inputs]
        if not src:
            raise IntsimError(f"{where}: no task of tasks[{e.options['golden']}] is among its "
                              f"models, specs and inputs")
        for g in src:
            opts = {"golden": g.key, "only": only}
            out.append(Task("mutants", g.model, g.spec_name, g.input, g.window, e.index, g.model_file,
                            g.model_sha256, g.spec, g.tokens, _freeze(opts),
                            task_key("mutants", g.model_sha256, dict(g.spec), g.tokens, opts)))
        return out
    for j, d in enumerate(e.options["suites"]):
        man = load_manifest(d)
        reads = any(isinstance(p, dict) and "model" in p for op in man["ops"] for p in op["params"].values())
        want = (man.get("model") or {}).get("file_sha256") if reads else None
        cands = [m for m in e.models if shas[m] == want]
        if want is not None and not cands:
            raise IntsimError(f"{where}.options.suites: {d} was made from a model file with sha256 "
                              f"{str(want)[:16]}..., which none of the entry's models "
                              f"({', '.join(e.models)}) is")
        opts = {"suite": file_sha256(os.path.join(d, MANIFEST)), "only": only}
        key = task_key("mutants", want or "", {}, [], opts)
        m = cands[0] if cands and want is not None else None      # a model-free suite: no model
        out.append(Task("mutants", m or "-", "-", f"suite:{os.path.basename(d)}", j, e.index,
                        "" if m is None else str(model_files[m]), want or "", (), (),
                        _freeze(opts), key, (("suite_dir", d),)))
    return out
