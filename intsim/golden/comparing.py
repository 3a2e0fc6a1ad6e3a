"""Comparing dumps exactly (``intsim compare``): a device-under-test dump against the
golden one, element by element, with the first divergence, its LSB delta and whether the
golden value sat on a rounding tie (intsim.golden.ties); the element diff replay uses too."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import IntsimError
from .dump import is_stress, load_manifest, read_component, tensor_components, verify_files
from .ties import tie_status


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


def compare(golden_dir, dut_dir, *, outputs_only: bool = False, partial: bool = False) -> dict:
    """Compare a device-under-test dump with a golden dump, exactly (module doc).

    Raises ``IntsimError`` on bad input (a manifest or file problem, another model or
    prompt, a missing tensor, a shape / type mismatch); otherwise returns
    ``{"identical", "compared", "first", "ops": [{index, name, kind, mismatches}], ...}``.
    Tensors are matched by (op name, role, argument), so a dump numbered differently
    (e.g. without stages) still lines up.
    """
    g_dir, d_dir = Path(golden_dir), Path(dut_dir)
    gman, dman = load_manifest(g_dir), load_manifest(d_dir)
    problems = [f"golden {p}" for p in verify_files(g_dir, gman)]
    problems += [f"DUT {p}" for p in verify_files(d_dir, dman)]
    if problems:
        raise IntsimError(f"{len(problems)} file problem(s): " + "; ".join(problems[:8]) +
                          ("" if len(problems) <= 8 else f"; and {len(problems) - 8} more"))
    _same_source(gman, dman)
    dut = {(t["op"], t["role"], t["arg"]): t for t in dman["tensors"]}
    g_ops = {o["name"]: o for o in gman["ops"]}
    structural, per_op, first, compared = [], {}, None, 0
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
        compared += 1
        if t["type"] != "dyadic" and (u.get("bits"), u.get("signed")) != (t.get("bits"), t.get("signed")) \
                and diff.count == 0:
            structural.append(f"{label}: DUT bits/signed {u.get('bits')}/{u.get('signed')}, golden "
                              f"{t.get('bits')}/{t.get('signed')}")
        op = g_ops.get(t["op"], {"index": t["op_index"], "name": t["op"], "kind": "?"})
        rec = per_op.setdefault(op["name"], {"index": op["index"], "name": op["name"],
                                             "kind": op["kind"], "mismatches": 0, "first": None})
        rec["mismatches"] += diff.count
        if diff.count and rec["first"] is None:
            f = first_mismatch(diff)
            f["tensor"] = t["name"]
            f["role"] = t["role"]
            f["tie"] = (tie_status(g_dir, gman, op, t, diff.flat) if t["role"] == "out" and diff.component == ""
                        else "not evaluated (only output values are)")
            rec["first"] = f
            if first is None:
                first = {"op": op["name"], "op_index": op["index"], "kind": op["kind"], **f}
    n, first = _compare_refusals(gman, dman, partial, per_op, first)
    compared += n
    if structural:
        raise IntsimError(f"{len(structural)} problem(s) with the DUT dump: " + "; ".join(structural[:8]) +
                          ("" if len(structural) <= 8 else f"; and {len(structural) - 8} more"))
    if compared == 0:
        raise IntsimError("no tensor of the golden dump is in the DUT dump: nothing compared")
    ops = sorted(per_op.values(), key=lambda r: r["index"])
    return {"identical": first is None, "compared": compared, "first": first,
            "mismatching_ops": [r for r in ops if r["mismatches"]],
            "ops": ops}


def divergence_line(f: dict) -> str:
    """The first divergence of a comparison result (``result["first"]``) as one line: op,
    tensor, element index, golden and DUT values, LSB delta and the tie status; the
    wording of ``intsim compare`` and of the cocotb scoreboard (intsim.cocotb)."""
    if "expect_error" in f:                        # a refusal record: another error, or none
        return (f"first divergence: op {f['op_index']} '{f['op']}' ({f['kind']}): golden expects "
                f"{f['expect_error']}, DUT records {f['got']}")
    return (f"first divergence: op {f['op_index']} '{f['op']}' ({f['kind']}), tensor {f['tensor']} "
            f"{f['component']} at index {tuple(f['index'])} (flat {f['flat']}): golden {f['golden']}, "
            f"DUT {f['got']}, delta {f['lsb_delta']:+d} LSB; golden value on a rounding tie: {f['tie']}")
