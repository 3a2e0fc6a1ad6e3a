"""The sweep plan: reading (TOML or JSON), checking every entry, and expanding it into tasks.

A plan names models, spec variants, inputs (prompts, or a text file cut into windows of N
tokens) and task entries (overflow, golden, ppl, and mutants: the mutant score of a golden
entry's dumps or of committed dumps); docs/SWEEP.md is its reference.  Everything is
checked here, before anything runs: a missing model file, source folder or text, an
unknown spec field or value, an unknown task kind or option, an empty prompt set, a text
too short for one window, an unknown mutant name, a mutants entry naming no golden entry
or no dump is refused with an ``IntsimError`` naming the plan file and the entry.

Expansion: every task entry x model x spec x window (prompt) gives one :class:`Task`,
whose identity (:func:`intsim.sweep.identity.task_key`) is the hash of its inputs: the
model file's sha256, the spec overrides, the window's token ids, the kind and options,
and the intsim version.  Paths and plan names are not part of it.
"""
from __future__ import annotations

import json
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import IntsimError
from ..options import Spec

#: the task kinds a plan may name, with the options each takes (and their types)
KIND_OPTIONS = {
    "overflow": {"stimuli": bool, "stimuli_formats": list},
    "golden": {"layers": str, "stages": bool, "formats": list, "hex_pack": bool},
    "ppl": {},
    "mutants": {"golden": int, "suites": list, "only": list},
}
#: options that steer only the merge (which windows become stimuli), not a task's result:
#: left out of the task's identity, so changing them reuses every result
MERGE_OPTIONS = ("stimuli", "stimuli_formats")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class Model:
    name: str
    file: str | None = None            # an integer model file
    source: str | None = None          # or a float checkpoint folder (or GGUF) ...
    convert: tuple = ()                # ... and the 'intsim convert' arguments for it


@dataclass(frozen=True)
class Input:
    name: str
    prompts: tuple = ()                # prompt texts, each one window
    text: str | None = None            # or a UTF-8 text file ...
    window: int = 0                    # ... cut into consecutive windows of this many tokens
    count: int | None = None           # the first COUNT windows (None: every full one)
    offset: int = 0                    # starting at this token


@dataclass(frozen=True)
class TaskEntry:
    index: int
    kind: str
    models: tuple
    specs: tuple
    inputs: tuple
    options: dict = field(default_factory=dict, hash=False)


@dataclass
class Plan:
    path: str
    models: dict
    specs: dict                        # name -> dict of Spec overrides
    inputs: dict
    tasks: list


def _err(path, where: str, msg: str) -> IntsimError:
    return IntsimError(f"{path}: {where}: {msg}")


def _resolve(base: Path, p: str) -> str:
    q = Path(os.path.expanduser(p))
    return str(q if q.is_absolute() else base.joinpath(q))


def _table(path, where: str, v) -> dict:
    if not isinstance(v, dict):
        raise _err(path, where, f"expected a table, got {type(v).__name__}")
    return v


def _check_keys(path, where: str, d: dict, allowed) -> None:
    bad = sorted(set(d) - set(allowed))
    if bad:
        raise _err(path, where, f"unknown key(s) {bad}; allowed: {', '.join(sorted(allowed))}")


def read_plan_file(path) -> dict:
    """The plan file's contents: TOML (``.toml``) or JSON (anything else)."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise IntsimError(f"{path}: no such plan file") from None
    except OSError as e:
        raise IntsimError(f"{path}: cannot read the plan: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8")
        data = tomllib.loads(text) if p.suffix == ".toml" else json.loads(text)
    except (UnicodeDecodeError, tomllib.TOMLDecodeError, ValueError) as e:
        raise IntsimError(f"{path}: not a valid {'TOML' if p.suffix == '.toml' else 'JSON'} "
                          f"plan: {e}") from None
    if not isinstance(data, dict):
        raise IntsimError(f"{path}: a plan is a table (a JSON object)")
    return data


def _models(path, base: Path, d: dict) -> dict:
    out = {}
    for name, m in _table(path, "models", d).items():
        where = f"models.{name}"
        m = _table(path, where, m)
        _check_keys(path, where, m, ("file", "source", "convert"))
        if not _NAME.match(name):
            raise _err(path, where, "a name is letters, digits, '_', '.', '-'")
        if ("file" in m) == ("source" in m):
            raise _err(path, where, "give exactly one of 'file' (an integer model file) and "
                                    "'source' (a checkpoint to convert)")
        if "file" in m:
            f = _resolve(base, str(m["file"]))
            if not Path(f).is_file():
                raise _err(path, where, f"model file {f} does not exist (create it with: "
                                        f"intsim convert SRC --out {m['file']})")
            if "convert" in m:
                raise _err(path, where, "'convert' goes with 'source', not with 'file'")
            out[name] = Model(name, file=f)
        else:
            src = _resolve(base, str(m["source"]))
            conv = m.get("convert", [])
            if not Path(src).exists():
                raise _err(path, where, f"source {src} does not exist")
            if not isinstance(conv, list) or not all(isinstance(a, str) for a in conv):
                raise _err(path, where, "'convert' is a list of 'intsim convert' arguments, "
                                        "e.g. [\"--wbits\", \"4\", \"--abits\", \"4\"]")
            if "--out" in conv:
                raise _err(path, where, "'convert' must not give --out (the sweep places the file)")
            out[name] = Model(name, source=src, convert=tuple(conv))
    if not out:
        raise _err(path, "models", "the plan names no model")
    return out


def _specs(path, d: dict) -> dict:
    out = {}
    fields = set(Spec.__dataclass_fields__)
    for name, s in _table(path, "specs", d).items():
        where = f"specs.{name}"
        s = _table(path, where, s)
        bad = sorted(set(s) - fields)
        if bad:
            raise _err(path, where, f"unknown spec field(s) {bad} (fields of intsim.options.Spec: "
                                    f"docs/SPEC.md section 2)")
        try:
            Spec.from_dict({**Spec().to_dict(), **s})
        except (IntsimError, TypeError) as e:
            raise _err(path, where, str(e)) from None
        out[name] = dict(sorted(s.items()))
    return out or {"default": {}}


def _int(path, where, v, lo: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise _err(path, where, f"{v!r} is not an integer >= {lo}")
    return v


def _inputs(path, base: Path, d: dict) -> dict:
    out = {}
    for name, i in _table(path, "inputs", d).items():
        where = f"inputs.{name}"
        i = _table(path, where, i)
        _check_keys(path, where, i, ("prompts", "text", "window", "count", "offset"))
        if ("prompts" in i) == ("text" in i):
            raise _err(path, where, "give exactly one of 'prompts' (a list of texts) and 'text' "
                                    "(a file cut into windows)")
        if "prompts" in i:
            ps = i["prompts"]
            if not isinstance(ps, list) or not all(isinstance(p, str) for p in ps):
                raise _err(path, where, "'prompts' is a list of strings")
            if not ps or any(not p.strip() for p in ps):
                raise _err(path, where, "empty prompt set" if not ps else
                           f"prompt {[p.strip() for p in ps].index('')} is empty")
            out[name] = Input(name, prompts=tuple(ps))
            continue
        t = _resolve(base, str(i["text"]))
        if not Path(t).is_file():
            raise _err(path, where, f"text file {t} does not exist")
        win = _int(path, f"{where}.window", i.get("window"), 2)
        count = None if i.get("count") is None else _int(path, f"{where}.count", i["count"], 1)
        out[name] = Input(name, text=t, window=win, count=count,
                          offset=_int(path, f"{where}.offset", i.get("offset", 0), 0))
    if not out:
        raise _err(path, "inputs", "the plan names no input (empty prompt set)")
    return out


def _names(path, where: str, v, known: dict, what: str) -> tuple:
    if v is None:
        return tuple(known)
    if not isinstance(v, list) or not v or not all(isinstance(x, str) for x in v):
        raise _err(path, where, f"a non-empty list of {what} names")
    for x in v:
        if x not in known:
            raise _err(path, where, f"no {what} named {x!r} (the plan has: {', '.join(known)})")
    return tuple(v)


def _options(path, where: str, kind: str, o) -> dict:
    o = _table(path, where, o)
    allowed = KIND_OPTIONS[kind]
    _check_keys(path, where, o, allowed)
    for k, v in o.items():
        if not isinstance(v, allowed[k]):
            raise _err(path, f"{where}.{k}", f"expected a {allowed[k].__name__}, got {v!r}")
    for k in ("formats", "stimuli_formats"):
        if k in o:
            from ..golden import FORMATS
            bad = [f for f in o[k] if f not in FORMATS]
            if bad:
                raise _err(path, f"{where}.{k}", f"unknown format(s) {bad}; choose from {', '.join(FORMATS)}")
    return dict(sorted(o.items()))


def _tasks(path, d, models, specs, inputs, base: Path) -> list:
    if not isinstance(d, list) or not d:
        raise _err(path, "tasks", "expected a non-empty list of task entries ([[tasks]])")
    out = []
    for j, t in enumerate(d):
        where = f"tasks[{j}]"
        t = _table(path, where, t)
        _check_keys(path, where, t, ("kind", "models", "specs", "inputs", "options"))
        kind = t.get("kind")
        if kind not in KIND_OPTIONS:
            raise _err(path, f"{where}.kind", f"unknown task {kind!r}; one of {', '.join(KIND_OPTIONS)}")
        opts = _options(path, f"{where}.options", kind, t.get("options", {}))
        if kind == "mutants":
            opts = _mutants_options(path, where, opts, t, d, base)
        out.append(TaskEntry(j, kind, _names(path, f"{where}.models", t.get("models"), models, "model"),
                             _names(path, f"{where}.specs", t.get("specs"), specs, "spec"),
                             _names(path, f"{where}.inputs", t.get("inputs"), inputs, "input"), opts))
    return out


def _mutants_options(path, where: str, o: dict, t: dict, entries: list, base: Path) -> dict:
    """A mutants entry: exactly one of ``golden`` (the index of a golden entry of this plan,
    whose dumps it scores) and ``suites`` (committed golden dumps, paths relative to the
    plan; a folder of dumps stands for each), and ``only`` (mutant names or patterns, each
    matching some mutant), resolved here: ``only`` to the matching names in registry order,
    ``suites`` to the dump folders."""
    if ("golden" in o) == ("suites" in o):
        raise _err(path, f"{where}.options", "give exactly one of 'golden' (the index of a golden "
                                             "task entry of this plan) and 'suites' (committed dumps)")
    from ..mutants import select
    try:
        only = [m.name for m in select(o.get("only"))]
    except IntsimError as e:
        raise _err(path, f"{where}.options.only", str(e).replace("--only: ", "")) from None
    if "golden" in o:
        g = o["golden"]
        if isinstance(g, bool) or not 0 <= g < len(entries) or entries[g] is t or \
                not isinstance(entries[g], dict) or entries[g].get("kind") != "golden":
            raise _err(path, f"{where}.options.golden", f"{g!r} is not the index of a golden task "
                                                        f"entry of this plan (tasks[N] with kind = \"golden\")")
        return {"golden": g, "only": only}
    for k in ("specs", "inputs"):
        if k in t:
            raise _err(path, f"{where}.{k}", "a committed suite records its own spec and inputs; "
                                             "'suites' takes only 'models'")
    from ..golden.formats import MANIFEST
    dirs = []
    for x in o["suites"]:
        if not isinstance(x, str):
            raise _err(path, f"{where}.options.suites", f"a list of folder paths, got {x!r}")
        p = Path(_resolve(base, x))
        if p.joinpath(MANIFEST).is_file():
            dirs.append(str(p))
            continue
        subs = sorted(q for q in p.iterdir() if q.joinpath(MANIFEST).is_file()) if p.is_dir() else []
        if not subs:
            raise _err(path, f"{where}.options.suites", f"{p} is neither a golden dump (no {MANIFEST}) "
                                                        f"nor a folder of dumps")
        dirs += [str(q) for q in subs]
    if not dirs:
        raise _err(path, f"{where}.options.suites", "an empty list")
    return {"suites": dirs, "only": only}


def load_plan(path) -> Plan:
    """Read and check a plan file (module docstring); nothing is run."""
    data = read_plan_file(path)
    _check_keys(path, "top level", data, ("models", "specs", "inputs", "tasks"))
    base = Path(path).resolve().parent
    models = _models(path, base, data.get("models", {}))
    specs = _specs(path, data.get("specs", {}))
    inputs = _inputs(path, base, data.get("inputs", {}))
    return Plan(str(path), models, specs, inputs,
                _tasks(path, data.get("tasks"), models, specs, inputs, base))
