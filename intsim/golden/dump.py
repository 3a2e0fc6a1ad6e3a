"""Reading a dump: the manifest (checked entry by entry), the files' sha256, and each
tensor back as the value it was.  Bad input raises ``IntsimError`` naming the dump
directory and the tensor or file."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .. import __version__
from ..errors import IntsimError
from ..hashing import file_sha256
from .formats import FORMAT, FORMAT_VERSION, MANIFEST, REGENERATE, parse_hex

#: what a manifest's optional ``kind`` may say ("model" when absent)
DUMP_KINDS = ("model", "stress")
from .values import assemble


def dump_error(d, msg: str) -> IntsimError:
    return IntsimError(f"{d}: {msg}")


def load_manifest(d, hint: str = "") -> dict:
    """Read and check ``d/manifest.json``: magic, version, and the shape of every entry.
    ``hint``: added to the error of a folder without a manifest."""
    d = Path(d)
    path = d.joinpath(MANIFEST)
    if not d.is_dir():
        raise dump_error(d, "not a directory (a golden dump is a folder)" if d.exists()
                         else "no such dump directory")
    if not path.is_file():
        raise dump_error(d, f"no {MANIFEST}: not a dump written by 'intsim golden' or 'intsim stress', or an "
                            f"interrupted one; {REGENERATE}" + (f" ({hint})" if hint else ""))
    try:
        man = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise dump_error(d, f"{MANIFEST} is not valid JSON ({e}); {REGENERATE}") from e
    if not isinstance(man, dict) or man.get("format") != FORMAT:
        raise dump_error(d, f"{MANIFEST}: format is not '{FORMAT}'; not a golden dump")
    if man.get("format_version") != FORMAT_VERSION:
        raise dump_error(d, f"{MANIFEST}: format_version {man.get('format_version')!r}, this intsim "
                      f"({__version__}) reads {FORMAT_VERSION}; {REGENERATE}")
    kind = man.get("kind", "model")
    if kind not in DUMP_KINDS:
        raise dump_error(d, f"{MANIFEST}: key 'kind' is {kind!r}, not one of {', '.join(DUMP_KINDS)}")
    stress = kind == "stress"
    for key, typ in (("model", dict), ("prompt", dict), ("ops", list), ("tensors", list)):
        if stress and key in ("model", "prompt"):
            if key not in man or man[key] is not None:
                raise dump_error(d, f"{MANIFEST}: key '{key}' of a stress suite must be null")
        elif not isinstance(man.get(key), typ):
            raise dump_error(d, f"{MANIFEST}: key '{key}' is missing or not a {typ.__name__}")
    names = set()
    for j, t in enumerate(man["tensors"]):
        _check_tensor_entry(d, j, t)
        if t["name"] in names:
            raise dump_error(d, f"{MANIFEST}: tensor '{t['name']}' is listed twice")
        names.add(t["name"])
    for j, op in enumerate(man["ops"]):
        for key, typ in (("index", int), ("name", str), ("kind", str), ("params", dict),
                         ("inputs", list), ("outputs", list)):
            if not isinstance(op.get(key) if isinstance(op, dict) else None, typ):
                raise dump_error(d, f"{MANIFEST}: ops[{j}] has no valid '{key}'")
        for tn in op["inputs"] + op["outputs"]:
            if tn not in names:
                raise dump_error(d, f"{MANIFEST}: op '{op['name']}' names tensor '{tn}', which is not listed")
        if stress:
            _check_stress_op(d, j, op)
        elif "expect_error" in op:
            raise dump_error(d, f"{MANIFEST}: ops[{j}] '{op['name']}' has 'expect_error', which only a stress suite's "
                                f"records may have")
    return man


def error_verdict(expect: dict, call) -> str | None:
    """Run ``call()`` for a refusal record (``expect_error``: type and exact message);
    None when it raised exactly that IntsimError, else what happened instead."""
    try:
        call()
    except IntsimError as e:
        if type(e).__name__ == expect["type"] and str(e) == expect["message"]:
            return None
        return f"raised {type(e).__name__}: {e}; the dump expects {expect['type']}: {expect['message']}"
    return f"returned; the dump expects {expect['type']}: {expect['message']}"


def is_stress(man: dict) -> bool:
    """Whether a (checked) manifest is a stress suite (``"kind": "stress"``: op-level
    records without a model, docs/GOLDEN_FORMAT.md section 7)."""
    return man.get("kind") == "stress"


def _check_stress_op(d, j: int, op: dict) -> None:
    what = f"{MANIFEST}: ops[{j}] '{op['name']}'"
    if not isinstance(op.get("targets"), str) or not op["targets"]:
        raise dump_error(d, f"{what} has no 'targets' string (the SPEC step it targets)")
    if not isinstance(op.get("sites"), list) or not all(isinstance(x, str) for x in op["sites"]):
        raise dump_error(d, f"{what} has no 'sites' list of strings")
    if "expect_error" in op:
        ee = op["expect_error"]
        if not isinstance(ee, dict) or set(ee) != {"type", "message"} or \
                not all(isinstance(ee[x], str) and ee[x] for x in ee):
            raise dump_error(d, f"{what} 'expect_error' needs exactly the strings 'type' and 'message'")
        if op["outputs"]:
            raise dump_error(d, f"{what} has 'expect_error' and outputs; a refusal record has none")
    for pname, p in op["params"].items():
        if isinstance(p, dict) and "model" in p:
            raise dump_error(d, f"{what} parameter '{pname}' names a model parameter; a stress suite has no model")
        if isinstance(p, dict) and p.get("spec") == "model":
            raise dump_error(d, f"{what} parameter '{pname}' names the model's spec; a stress suite has no model")
        if isinstance(p, dict) and "qweight" in p:
            qw = p["qweight"]
            if not isinstance(qw, dict) or not all(isinstance(qw.get(x), int) for x in ("bits", "group_size", "k")):
                raise dump_error(d, f"{what} parameter '{pname}': 'qweight' needs integer bits, group_size and k")


def _check_comp(d, what: str, c, codes: bool) -> None:
    if not isinstance(c, dict):
        raise dump_error(d, f"{MANIFEST}: {what} is not an object")
    for key, typ in (("shape", list), ("dtype", str), ("files", dict)):
        if not isinstance(c.get(key), typ):
            raise dump_error(d, f"{MANIFEST}: {what} has no valid '{key}'")
    try:
        dt = np.dtype(c["dtype"])
    except TypeError:
        raise dump_error(d, f"{MANIFEST}: {what} dtype {c['dtype']!r} is not a NumPy dtype") from None
    if dt.kind not in "iu" or dt.byteorder == ">":
        raise dump_error(d, f"{MANIFEST}: {what} dtype {c['dtype']!r} is not a little-endian integer dtype")
    if not all(isinstance(n, int) and n >= 0 for n in c["shape"]):
        raise dump_error(d, f"{MANIFEST}: {what} shape {c['shape']!r} is not a list of sizes")
    if not any(f in c["files"] for f in ("npy", "hex")):
        raise dump_error(d, f"{MANIFEST}: {what} lists neither an npy nor a hex file")
    for f, e in c["files"].items():
        if not isinstance(e, dict) or not isinstance(e.get("path"), str) or not isinstance(e.get("sha256"), str):
            raise dump_error(d, f"{MANIFEST}: {what} file '{f}' needs a path and a sha256")
        if "/" in e["path"] or "\\" in e["path"] or e["path"].startswith("."):
            raise dump_error(d, f"{MANIFEST}: {what} file path {e['path']!r} must be a plain file name")


def _check_tensor_entry(d, j: int, t) -> None:
    if not isinstance(t, dict) or not isinstance(t.get("name"), str):
        raise dump_error(d, f"{MANIFEST}: tensors[{j}] has no name")
    what = f"tensor '{t['name']}'"
    for key in ("op", "role", "arg", "type"):
        if not isinstance(t.get(key), str):
            raise dump_error(d, f"{MANIFEST}: {what} has no valid '{key}'")
    if t["type"] not in ("qtensor", "dyadic", "array"):
        raise dump_error(d, f"{MANIFEST}: {what} has unknown type {t['type']!r}")
    if "call_dtype" in t:
        cd = t["call_dtype"]
        try:
            ok = isinstance(cd, str) and t["type"] == "array" and np.dtype(cd).kind in "iu"
        except TypeError:
            ok = False
        if not ok:
            raise dump_error(d, f"{MANIFEST}: {what} has call_dtype {cd!r}: not an integer dtype of an array")
    if t["type"] != "dyadic":
        _check_comp(d, what, t, True)
        for key in ("bits", "signed"):
            if key not in t:
                raise dump_error(d, f"{MANIFEST}: {what} has no '{key}'")
    if t["type"] == "qtensor":
        _check_comp(d, f"{what} zp", t.get("zp"), False)
    if t["type"] in ("qtensor", "dyadic"):
        s = t.get("scale")
        if not isinstance(s, dict):
            raise dump_error(d, f"{MANIFEST}: {what} has no scale")
        for c in ("m", "k"):
            _check_comp(d, f"{what} scale {c}", s.get(c), False)


def tensor_components(t: dict) -> list:
    """``[(component, entry)]`` of a manifest tensor ("" = codes / values)."""
    out = [] if t["type"] == "dyadic" else [("", t)]
    if t["type"] == "qtensor":
        out.append(("zp", t["zp"]))
    if t["type"] in ("qtensor", "dyadic"):
        out += [("m", t["scale"]["m"]), ("k", t["scale"]["k"])]
    return out


def verify_files(d, man: dict) -> list:
    """Problems with the files of a dump: missing, or sha256 differing from the manifest."""
    d = Path(d)
    problems, seen = [], {}
    for t in man["tensors"]:
        for comp, c in tensor_components(t):
            for fmt, e in c["files"].items():
                path = d.joinpath(e["path"])
                what = f"tensor '{t['name']}'" + (f" {comp}" if comp else "") + f" ({fmt})"
                if e["path"] in seen:
                    if seen[e["path"]] != e["sha256"]:
                        problems.append(f"{what}: {e['path']} is listed with two different sha256")
                    continue
                if not path.is_file():
                    problems.append(f"{what}: file {e['path']} is missing")
                    continue
                seen[e["path"]] = e["sha256"]
                got = file_sha256(path)
                if got != e["sha256"]:
                    problems.append(f"{what}: {e['path']} has sha256 {got[:16]}..., the manifest "
                                    f"says {e['sha256'][:16]}... (file changed after the dump)")
    return problems


def read_component(d, c: dict, what: str) -> np.ndarray:
    """One component's array, from its .npy (or its .hex when no .npy is listed), checked
    against the manifest's dtype and shape."""
    d = Path(d)
    dt, shape = np.dtype(c["dtype"]), tuple(c["shape"])
    files = c["files"]
    if "npy" in files:
        path = d.joinpath(files["npy"]["path"])
        try:
            a = np.load(path, allow_pickle=False)
        except Exception as e:              # numpy raises ValueError / OSError / EOFError
            raise dump_error(d, f"{what}: {files['npy']['path']} is not a readable .npy file ({e})") from e
        if not isinstance(a, np.ndarray) or a.dtype.kind not in "iu":
            raise dump_error(d, f"{what}: {files['npy']['path']} holds dtype {getattr(a, 'dtype', '?')}, "
                          f"not integers")
        if a.dtype != dt:
            raise dump_error(d, f"{what}: {files['npy']['path']} has dtype {a.dtype}, the manifest says {dt}")
        if a.shape != shape:
            raise dump_error(d, f"{what}: {files['npy']['path']} has shape {a.shape}, the manifest says {shape}")
        return a
    path = d.joinpath(files["hex"]["path"])
    try:
        data = path.read_bytes()
    except OSError as e:
        raise dump_error(d, f"{what}: cannot read {files['hex']['path']}: {e.strerror or e}") from e
    return parse_hex(data, dt, shape, f"{d}: {what}: {files['hex']['path']}")


def read_value(d, t: dict):
    """A manifest tensor as the value it was (QTensor, Dyadic or integer array)."""
    comps = {c: read_component(d, e, f"tensor '{t['name']}'" + (f" {c}" if c else ""))
             for c, e in tensor_components(t)}
    try:
        return assemble(t["type"], t, comps)
    except IntsimError as e:
        raise dump_error(d, f"tensor '{t['name']}': {e}") from e
