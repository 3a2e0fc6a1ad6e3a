"""Comparing dumps exactly (``intsim compare``): a device-under-test dump against the
golden one, element by element, with the first divergence, its LSB delta and whether the
golden value sat on a rounding tie (intsim.golden.ties); the element diff replay uses too.
The DUT is either a dump with its own manifest (every file's sha256 checked) or a bare
folder of .hex / .npy files named after golden records (intsim.golden.dut)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import IntsimError
from .dump import is_stress, load_manifest, read_component, tensor_components, verify_files
from .dut import DUT_EXTS, locate, read_dut_hex, read_dut_npy
from .formats import MANIFEST
from .ties import tie_status

#: what load_manifest adds when the golden folder (the first argument) has no manifest
GOLDEN_FIRST = ("the first folder of 'intsim compare' is the golden dump; a device's bare "
                "dump goes second")


@dataclass
class Diff:
    """Mismatches of one tensor: count over all components, and the first one."""
    count: int = 0
    component: str = ""
    flat: int = -1
    index: tuple = ()
    want: int = 0
    got: int = 0

    @property
    def delta(self) -> int:
        return self.got - self.want


def diff_arrays(want: np.ndarray, got: np.ndarray, component: str, acc: Diff) -> Diff:
    """Add the element mismatches of two same-shape integer arrays to ``acc``."""
    w = want.astype(np.int64, copy=False).ravel()
    g = got.astype(np.int64, copy=False).ravel()
    ne = w != g
    n = int(np.count_nonzero(ne))
    if n and acc.count == 0:
        i = int(np.argmax(ne))
        acc.component, acc.flat = component, i
        acc.index = tuple(int(x) for x in np.unravel_index(i, want.shape))
        acc.want, acc.got = int(w[i]), int(g[i])
    acc.count += n
    return acc


def first_mismatch(diff: Diff):
    if diff.count == 0:
        return None
    return {"component": diff.component or "values", "index": list(diff.index), "flat": diff.flat,
            "golden": diff.want, "got": diff.got, "lsb_delta": diff.delta}


def _same_source(gman: dict, dman: dict) -> None:
    """Both dumps of the same model and prompt, or both stress suites; else raise."""
    if is_stress(gman) != is_stress(dman):
        raise IntsimError("one dump is a stress suite and the other a model-level dump: nothing to compare")
    gm, dm = gman["model"] or {}, dman["model"] or {}
    if gm.get("tensors_sha256") != dm.get("tensors_sha256") or (
            gm.get("file_sha256") and dm.get("file_sha256") and gm["file_sha256"] != dm["file_sha256"]):
        raise IntsimError(f"the dumps are of different models: golden {str(gm.get('file_sha256') or gm.get('tensors_sha256'))[:16]}..., "
                          f"DUT {str(dm.get('file_sha256') or dm.get('tensors_sha256'))[:16]}...")
    if not is_stress(gman) and gman["prompt"].get("tokens") != dman["prompt"].get("tokens"):
        raise IntsimError(f"the dumps are of different prompts: golden tokens "
                          f"{gman['prompt'].get('tokens')!r:.80}, DUT {dman['prompt'].get('tokens')!r:.80}")


def _compare_refusals(gman: dict, dman: dict, partial: bool, per_op: dict, first):
    """Refusal records (stress suites, ``expect_error``): the DUT's record of the same name
    must expect the same error.  Returns (records compared, the first divergence)."""
    d_ops = {o["name"]: o for o in dman["ops"]}
    n = 0
    for o in gman["ops"]:
        if "expect_error" not in o or (partial and o["name"] not in d_ops):
            continue
        got = d_ops.get(o["name"], {}).get("expect_error")
        rec = per_op.setdefault(o["name"], {"index": o["index"], "name": o["name"], "kind": o["kind"],
                                            "mismatches": 0, "first": None})
        n += 1
        if got != o["expect_error"]:
            rec["mismatches"] += 1
            rec["first"] = {"expect_error": o["expect_error"], "got": got}
            if first is None:
                first = {"op": o["name"], "op_index": o["index"], "kind": o["kind"], **rec["first"]}
    return n, first


def _op_entry(per_op: dict, op: dict) -> dict:
    return per_op.setdefault(op["name"], {"index": op["index"], "name": op["name"], "kind": op["kind"],
                                          "mismatches": 0, "first": None})


def _note(per_op, first, op, t, diff: Diff, g_dir, gman, where=None):
    """Add one tensor's mismatches to its op's entry; returns the (new) first divergence."""
    rec = _op_entry(per_op, op)
    rec["mismatches"] += diff.count
    if diff.count and rec["first"] is None:
        f = first_mismatch(diff)
        f["tensor"] = t["name"]
        f["role"] = t["role"]
        f["tie"] = (tie_status(g_dir, gman, op, t, diff.flat) if t["role"] == "out" and diff.component == ""
                    else "not evaluated (only output values are)")
        f.update(where or {})
        rec["first"] = f
        if first is None:
            first = {"op": op["name"], "op_index": op["index"], "kind": op["kind"], **f}
    return first


def _kinds(ops) -> dict:
    out: dict = {}
    for o in ops:
        out[o["kind"]] = out.get(o["kind"], 0) + 1
    return out


def _result(gman, per_op, first, compared, summary) -> dict:
    """The report: today's keys plus ``summary`` (which golden ops were checked, which the
    DUT did not give, files, elements, mismatching elements)."""
    ops = sorted(per_op.values(), key=lambda r: r["index"])
    missing = [o for o in gman["ops"] if o["name"] not in per_op]
    summary.update({"checked_ops": [o["name"] for o in ops], "checked_kinds": _kinds(ops),
                    "not_provided_ops": [o["name"] for o in missing], "not_provided_kinds": _kinds(missing),
                    "golden_ops": len(gman["ops"]), "mismatching_elements": sum(o["mismatches"] for o in ops)})
    return {"identical": first is None, "compared": compared, "first": first,
            "mismatching_ops": [r for r in ops if r["mismatches"]], "ops": ops, "summary": summary}


def compare(golden_dir, dut_dir, *, outputs_only: bool = False, partial: bool = False) -> dict:
    """Compare a device-under-test dump with a golden dump, exactly (module doc).

    Raises ``IntsimError`` on bad input (a manifest or file problem, another model or
    prompt, a missing tensor, a shape / type mismatch; for a bare DUT folder a file that
    names no golden record, a wrong word count, a word too wide, ...); otherwise returns
    ``{"identical", "compared", "first", "ops": [{index, name, kind, mismatches}],
    "summary", ...}``.  Tensors are matched by (op name, role, argument), so a dump
    numbered differently (e.g. without stages) still lines up.  A DUT folder without
    manifest.json is a bare dump (intsim.golden.dut): always partial.
    """
    g_dir, d_dir = Path(golden_dir), Path(dut_dir)
    gman = load_manifest(g_dir, hint=GOLDEN_FIRST)
    if d_dir.is_dir() and not d_dir.joinpath(MANIFEST).exists():
        return _compare_bare(g_dir, gman, d_dir, outputs_only)
    dman = load_manifest(d_dir)
    problems = [f"golden {p}" for p in verify_files(g_dir, gman)]
    problems += [f"DUT {p}" for p in verify_files(d_dir, dman)]
    if problems:
        raise IntsimError(f"{len(problems)} file problem(s): " + "; ".join(problems[:8]) +
                          ("" if len(problems) <= 8 else f"; and {len(problems) - 8} more"))
    _same_source(gman, dman)
    dut = {(t["op"], t["role"], t["arg"]): t for t in dman["tensors"]}
    g_ops = {o["name"]: o for o in gman["ops"]}
    structural, per_op, first, compared, files, elements = [], {}, None, 0, 0, 0
    for t in gman["tensors"]:
        if outputs_only and t["role"] != "out":
            continue
        key = (t["op"], t["role"], t["arg"])
        u = dut.get(key)
        label = f"{t['op']} {t['role']} '{t['arg']}'"
        if u is None:
            if not partial:
                structural.append(f"{label}: missing from the DUT dump")
            continue
        if u["type"] != t["type"]:
            structural.append(f"{label}: DUT type {u['type']}, golden {t['type']}")
            continue
        diff = Diff()
        for (c, ge), (_, de) in zip(tensor_components(t), tensor_components(u)):
            what = f"{label}" + (f" {c}" if c else "")
            if list(de["shape"]) != list(ge["shape"]):
                structural.append(f"{what}: DUT shape {tuple(de['shape'])}, golden {tuple(ge['shape'])}")
                continue
            if de["dtype"] != ge["dtype"]:
                structural.append(f"{what}: DUT dtype {de['dtype']}, golden {ge['dtype']}")
                continue
            want = read_component(g_dir, ge, f"golden {what}")
            got = read_component(d_dir, de, f"DUT {what}")
            diff_arrays(want, got, c, diff)
            files, elements = files + 1, elements + want.size
        compared += 1
        if t["type"] != "dyadic" and (u.get("bits"), u.get("signed")) != (t.get("bits"), t.get("signed")) \
                and diff.count == 0:
            structural.append(f"{label}: DUT bits/signed {u.get('bits')}/{u.get('signed')}, golden "
                              f"{t.get('bits')}/{t.get('signed')}")
        op = g_ops.get(t["op"], {"index": t["op_index"], "name": t["op"], "kind": "?"})
        first = _note(per_op, first, op, t, diff, g_dir, gman)
    n, first = _compare_refusals(gman, dman, partial, per_op, first)
    compared += n
    if structural:
        raise IntsimError(f"{len(structural)} problem(s) with the DUT dump: " + "; ".join(structural[:8]) +
                          ("" if len(structural) <= 8 else f"; and {len(structural) - 8} more"))
    if compared == 0:
        raise IntsimError("no tensor of the golden dump is in the DUT dump: nothing compared")
    return _result(gman, per_op, first, compared, {"mode": "manifest", "files": files, "elements": elements,
                                                   "missing_components": [], "ignored": []})


def _compare_bare(g_dir: Path, gman: dict, d_dir: Path, outputs_only: bool) -> dict:
    """A bare DUT folder (intsim.golden.dut) against the golden dump, whose own files must
    still match their sha256.  Each given file (a component, as .hex or .npy; both when
    both are given) is compared in full; what the DUT does not give is listed, not an error."""
    problems = verify_files(g_dir, gman)
    if problems:
        raise IntsimError(f"{g_dir}: {len(problems)} file problem(s) in the golden dump: " +
                          "; ".join(problems[:8]))
    found, ignored = locate(d_dir, g_dir, gman, outputs_only)
    given: dict = {}
    for (_, ext), (s, p) in sorted(found.items()):
        given.setdefault(s.tensor["name"], []).append((s, ext, p))
    g_ops = {o["name"]: o for o in gman["ops"]}
    per_op, first, compared, elements = {}, None, 0, 0
    for t in gman["tensors"]:
        if t["name"] not in given:
            continue
        order = [c for c, _ in tensor_components(t)]
        diff, where = Diff(), None
        for s, ext, p in sorted(given[t["name"]], key=lambda x: (order.index(x[0].comp), x[1])):
            want = read_component(g_dir, s.entry, f"golden {s.label}")
            got, lines = read_dut_hex(p, s, str(p)) if ext == "hex" else (read_dut_npy(p, s, str(p)), None)
            before = diff.count
            diff_arrays(want, got, s.comp, diff)
            if before == 0 and diff.count:
                where = {"file": p.name, "line": None if lines is None else int(lines[diff.flat])}
            elements += want.size
        compared += 1
        first = _note(per_op, first, g_ops[t["op"]], t, diff, g_dir, gman, where)
    tensors = {t["name"]: t for t in gman["tensors"]}
    missing = [tn + (f".{c}" if c else "") for o in gman["ops"] if o["name"] in per_op for tn in o["outputs"]
               for c, _ in tensor_components(tensors[tn]) if not any(((tn, c), x) in found for x in DUT_EXTS)]
    return _result(gman, per_op, first, compared, {"mode": "bare", "files": len(found), "elements": elements,
                                                   "missing_components": missing, "ignored": ignored})


def divergence_line(f: dict) -> str:
    """The first divergence of a comparison result (``result["first"]``) as one line: op,
    tensor, element index (and, for a bare DUT dump, its file and line), golden and DUT
    values, LSB delta and the tie status; the wording of ``intsim compare`` and of the
    cocotb scoreboard (intsim.cocotb)."""
    if "expect_error" in f:                        # a refusal record: another error, or none
        return (f"first divergence: op {f['op_index']} '{f['op']}' ({f['kind']}): golden expects "
                f"{f['expect_error']}, DUT records {f['got']}")
    where = ""
    if f.get("file"):
        where = f"; DUT file {f['file']}" + (f" line {f['line']}" if f.get("line") else "")
    return (f"first divergence: op {f['op_index']} '{f['op']}' ({f['kind']}), tensor {f['tensor']} "
            f"{f['component']} at index {tuple(f['index'])} (flat {f['flat']}{where}): golden {f['golden']}, "
            f"DUT {f['got']}, delta {f['lsb_delta']:+d} LSB; golden value on a rounding tie: {f['tie']}")
