"""Merging task results into the sweep's reports, in plan order (never completion order),
so that the same plan gives the same bytes with any number of workers.

* overflow: per op, the worst headroom over the whole corpus with the model, spec, input,
  window, layer and token index (and element index) that reached it, beside the proven
  bound's margin; the same per layer and op for the PNG; and the worst windows chosen as
  stimuli (:func:`stimuli`), exported as golden dumps by the driver.
* golden: a suite index with every dump's manifest hash and every record's hash.
"""
from __future__ import annotations

import json
from pathlib import Path

from .execute import RESULT

#: the fields of a merged overflow row that come from the report entry
ENTRY_FIELDS = ("op", "kind", "container", "bits", "headroom", "peak", "bound", "bound_headroom",
                "layer", "peak_token", "peak_at")


def load_result(out, task) -> dict:
    return json.loads(Path(out).joinpath(task.folder, RESULT).read_text())["result"]


def _worse(e: dict, cur: dict | None) -> bool:
    """Strictly less headroom (the first in plan order wins a tie)."""
    return cur is None or e["headroom"] < cur["headroom"]


def merge_overflow(out, tasks: list) -> dict:
    """The corpus-wide overflow report of the (successful) overflow ``tasks``."""
    worst: dict = {}              # op -> row (over everything)
    by_model: dict = {}           # model -> op -> row
    cells: dict = {}              # model -> (layer, op) -> headroom
    sat: dict = {}                # op -> saturated elements over the corpus
    checks = True
    for t in tasks:
        rep = load_result(out, t)["report"]
        checks = checks and rep["all_recomputes_match"]
        mine = by_model.setdefault(t.model, {})
        grid = cells.setdefault(t.model, {})
        for e in rep["entries"]:
            row = {k: e[k] for k in ENTRY_FIELDS}
            row.update(model=t.model, spec=t.spec_name, input=t.input, window=t.window)
            if e["kind"] != "clamp":
                sat[e["op"]] = sat.get(e["op"], 0) + e["saturated"]
            if _worse(row, worst.get(e["op"])):
                worst[e["op"]] = row
            if _worse(row, mine.get(e["op"])):
                mine[e["op"]] = row
            cell = (e["layer"], e["op"])
            if cell not in grid or e["headroom"] < grid[cell]:
                grid[cell] = e["headroom"]
    for op, row in worst.items():
        row["saturated_total"] = sat.get(op, 0)
    wins = {(t.model, t.spec_name, t.input, t.window) for t in tasks}
    return {"tasks": len(tasks), "windows": len(wins),
            "windows_by_model": {m: sum(1 for w in wins if w[0] == m) for m in by_model},
            "all_recomputes_match": checks, "ops": list(worst.values()),
            "by_model": {m: list(rows.values()) for m, rows in by_model.items()},
            "cells": {m: [[lay, op, h] for (lay, op), h in grid.items()] for m, grid in cells.items()}}


def stimuli(merged: dict, tasks: list) -> list:
    """The windows that reached some op's worst headroom (per model): ``[(task, ops,
    layers)]`` in plan order, ``layers`` the sorted layer indices of those ops (None for
    the final norm and head)."""
    want: dict = {}
    for m, rows in merged["by_model"].items():
        for r in rows:
            want.setdefault((m, r["spec"], r["input"], r["window"]), []).append(r)
    out = []
    for t in tasks:
        rows = want.pop((t.model, t.spec_name, t.input, t.window), None)
        if rows:
            out.append((t, sorted({r["op"] for r in rows}),
                        sorted({r["layer"] for r in rows if r["layer"] is not None})))
    return out


def overflow_text(merged: dict) -> str:
    """The merged report as a table: one row per op."""
    lines = [f"overflow sweep: {merged['windows']} window(s), worst headroom per op over the corpus "
             f"(bits; scale rows: min k_need - k_min); bound = the proof's margin",
             f"{'op':<24} {'container':<9} {'worst':>5} {'bound':>5} {'sat.':>6}  "
             f"{'model':<14} {'spec':<10} {'input':<12} {'win':>4} {'layer':>5} {'token':>5}"]
    for r in merged["ops"]:
        bh = "" if r["bound_headroom"] is None else str(r["bound_headroom"])
        lay = "-" if r["layer"] is None else str(r["layer"])
        tok = "-" if r["peak_token"] is None else str(r["peak_token"])
        lines.append(f"{r['op']:<24} {r['container']:<9} {r['headroom']:>5} {bh:>5} "
                     f"{r['saturated_total']:>6}  {r['model']:<14} {r['spec']:<10} {r['input']:<12} "
                     f"{r['window']:>4} {lay:>5} {tok:>5}")
    lines.append("recomputes: " + ("all match the runs bit for bit" if merged["all_recomputes_match"]
                                   else "MISMATCH in some task (see its result.json)"))
    return "\n".join(lines) + "\n"


def overflow_png(merged: dict, model: str) -> bytes:
    """Worst headroom per layer and op of one model's windows (columns: layers, F = the
    final norm and head), drawn like ``intsim overflow --png``."""
    from ..plot import heatmap_png
    grid = merged["cells"][model]
    layers = sorted({lay for lay, _, _ in grid if lay is not None})
    ops: list = []
    for _, op, _ in grid:
        if op not in ops:
            ops.append(op)
    cols = [str(i) for i in layers] + ["F"]
    cells = [[None] * len(cols) for _ in ops]
    clamps = {r["op"] for r in merged["by_model"][model] if r["kind"] == "clamp"}
    marks = set()
    for lay, op, h in grid:
        rc = (ops.index(op), len(layers) if lay is None else layers.index(lay))
        cells[rc[0]][rc[1]] = h
        if op in clamps and h < 0:
            marks.add(rc)
    notes = (f"MODEL {model.upper()}: THE WORST OF {merged['windows_by_model'][model]} WINDOW(S) PER "
             f"CELL. COLUMNS: LAYERS, F = FINAL NORM AND HEAD.",
             "LILAC: SOFTMAX.P CLAMPED AT 2^P_OUT - 1 BY DESIGN (A PROBABILITY ABOVE 1 - 2^-(F+1))."
             if marks else "")
    return heatmap_png(ops, cols, cells, "INTSIM OVERFLOW SWEEP: WORST HEADROOM PER LAYER AND OP",
                       notes, marks)


def golden_index(out, tasks: list) -> dict:
    """The suite index: every dump (plan order) with its manifest's sha256 and every
    record's sha256 (kinds.record_hashes)."""
    dumps = []
    for t in tasks:
        r = load_result(out, t)
        dumps.append({**t.where(), "folder": f"{t.folder}/{r['dump']}",
                      "manifest_sha256": r["manifest_sha256"], "records": r["records"]})
    return {"dumps": dumps, "records": sum(len(d["records"]) for d in dumps)}


def mutants_table(out, tasks: list) -> dict:
    """The mutant score over the sweep's mutants tasks (plan order, each task once): per
    task (one golden dump) how many of its mutants it kills; per mutant how many dumps
    kill it and the first killing record (the first task in plan order that kills it)."""
    dumps, rows, seen = [], {}, set()
    for t in tasks:
        if t.key in seen:
            continue
        seen.add(t.key)
        r = load_result(out, t)
        dumps.append({**t.where(), "suite": r["suite"], "records": r["records"], "killed": r["killed"],
                      "total": r["total"]})
        for m in r["mutants"]:
            row = rows.setdefault(m["name"], {"name": m["name"], "spec_step": m["spec_step"],
                                              "description": m["description"], "killed_by": 0,
                                              "dumps": 0, "first": None})
            row["dumps"] += 1
            if m["killed"]:
                row["killed_by"] += 1
                if row["first"] is None:
                    row["first"] = {**t.where(), **m["kill"]}
    mutants = list(rows.values())
    return {"dumps": dumps, "mutants": mutants, "killed": sum(1 for m in mutants if m["killed_by"]),
            "total": len(mutants)}


def mutants_markdown(table: dict) -> str:
    """The mutant score as a Markdown table: a mutant counts as killed when some dump kills it."""
    def at(f: dict) -> str:
        w = f"{f['model']} {f['spec']} {f['input']} {f['window']}"
        return f"{w}: op {f['op_index']} `{f['op']}` ({f['kind']})"
    lines = [f"Killed {table['killed']} of {table['total']} mutant(s) with {len(table['dumps'])} "
             f"golden dump(s).", "",
             "| mutant | SPEC step | killed by (dumps) | first killing record (model spec input window: op) |",
             "|---|---|---|---|"]
    for m in table["mutants"]:
        first = "SURVIVED" if m["first"] is None else at(m["first"])
        lines.append(f"| `{m['name']}` | {m['spec_step']} | {m['killed_by']} of {m['dumps']} | {first} |")
    lines += ["", "| model | spec | input | window | dump | records | killed |", "|---|---|---|---|---|---|---|"]
    for d in table["dumps"]:
        lines.append(f"| {d['model']} | {d['spec']} | {d['input']} | {d['window']} | {d['suite']} | "
                     f"{d['records']} | {d['killed']} of {d['total']} |")
    return "\n".join(lines) + "\n"
