"""Every perplexity row of docs/RESULTS.md's consolidated table, from one file of rows:
convert each row's model, score it on each held-out text, print the table with each row's
convert options.  Issue 15, item 8.

    .venv/bin/python scripts/ppl_table.py docs/ppl-rows.toml --out out/rows [--jobs 2] [--only NAME ...] [--dry-run]

The rows file (TOML)::

    source = "smollm2"                  # the PyPI GGUF (converters.gguf_import.find_smollm2), or a path
    max_tokens = 4096                   # intsim ppl --max-tokens / --ctx of every row
    ctx = 512
    [texts]                             # name = [file, float perplexity, what measured the float figure]
    persuasion = ["~/.cache/intsim/texts/persuasion.txt", 38.683, "intsim ppl without --no-float"]
    [[rows]]
    name = "w8a8-rtn"                   # the model file's stem, unique
    label = "W8A8, round-to-nearest"    # the table's first column
    convert = "--wbits 8 --abits 8"     # intsim convert's options after SRC --out FILE
    [rows.known]                        # optional: figures measured earlier, in another section
    persuasion = [39.303, "table (a)"]

A row's figure for a text is, in order: ``OUT/NAME.TEXT.json`` written by an earlier run of
this script (``intsim ppl --json`` output, written to a temporary name then renamed), else
its ``known`` entry (the table marks it with its section), else it is measured now: the model
is converted once (``OUT/NAME.intsim``, kept) and ``intsim ppl --no-float`` runs with
``NUMBA_NUM_THREADS=1``.  ``--jobs`` runs that many rows at once.  The table goes to stdout;
each row's convert options are in it; the ppl command is the same for every row (above).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tomllib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

INTSIM = Path(sys.executable).parent / "intsim"      # the console script of this interpreter's environment


class RowsError(ValueError):
    pass


def load_rows(path: Path) -> dict:
    try:
        plan = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise RowsError(f"{path}: {exc}") from None
    for key in ("source", "texts", "rows"):
        if key not in plan:
            raise RowsError(f"{path}: no '{key}'")
    for tname, entry in plan["texts"].items():
        if not (isinstance(entry, list) and len(entry) == 3 and isinstance(entry[1], (int, float))):
            raise RowsError(f"{path}: texts.{tname} must be [file, float perplexity, how measured]")
    seen = set()
    for i, row in enumerate(plan["rows"]):
        where = f"{path}: rows[{i}]"
        for key in ("name", "label", "convert"):
            if not isinstance(row.get(key), str):
                raise RowsError(f"{where}: '{key}' must be a string")
        if row["name"] in seen:
            raise RowsError(f"{where}: name {row['name']!r} twice")
        seen.add(row["name"])
        for tname, k in row.get("known", {}).items():
            if tname not in plan["texts"]:
                raise RowsError(f"{where} ({row['name']}): known.{tname} is not a text")
            if not (isinstance(k, list) and len(k) == 2 and isinstance(k[0], (int, float))):
                raise RowsError(f"{where} ({row['name']}): known.{tname} must be [perplexity, section]")
    return plan


def source_path(plan: dict) -> str:
    if plan["source"] == "smollm2":
        from converters.gguf_import import find_smollm2
        return str(find_smollm2())
    return str(Path(plan["source"]).expanduser())


def commands(plan: dict, row: dict, out: Path, src: str) -> tuple[list[str], dict[str, list[str]]]:
    model = out / f"{row['name']}.intsim"
    conv = [str(INTSIM), "convert", src, "--out", str(model), *shlex.split(row["convert"])]
    ppl = {t: [str(INTSIM), "ppl", str(model), "--text", str(Path(e[0]).expanduser()),
               "--max-tokens", str(plan.get("max_tokens", 4096)), "--ctx", str(plan.get("ctx", 512)),
               "--json", "--no-float"]
           for t, e in plan["texts"].items()}
    return conv, ppl


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def measure(plan: dict, row: dict, out: Path, src: str, log) -> None:
    """Convert (once) and score every text this row has no figure for."""
    conv, ppl = commands(plan, row, out, src)
    todo = [t for t in plan["texts"] if not (out / f"{row['name']}.{t}.json").is_file()
            and t not in row.get("known", {})]
    if not todo:
        return
    env = dict(os.environ, NUMBA_NUM_THREADS="1")
    model = out / f"{row['name']}.intsim"
    if not model.is_file():
        r = subprocess.run(conv, capture_output=True, text=True, env=env)
        if r.returncode != 0:
            raise RowsError(f"{row['name']}: intsim convert failed: {r.stderr.strip()[-400:]}")
    for t in todo:
        r = subprocess.run(ppl[t], capture_output=True, text=True, env=env)
        if r.returncode != 0:
            raise RowsError(f"{row['name']} on {t}: intsim ppl failed: {r.stderr.strip()[-400:]}")
        res = json.loads(r.stdout)
        _write_atomic(out / f"{row['name']}.{t}.json", json.dumps(res) + "\n")
        log(f"{row['name']} {t}: {res['ppl_int']:.3f}")


def figure(plan: dict, row: dict, out: Path, text: str):
    """(perplexity, note) or None."""
    f = out / f"{row['name']}.{text}.json"
    if f.is_file():
        return json.loads(f.read_text())["ppl_int"], ""
    k = row.get("known", {}).get(text)
    return (k[0], k[1]) if k else None


def _fmt(v) -> str:
    if v is None:
        return "—"
    ppl = v[0]
    return f"{ppl:.0f}" if ppl >= 1000 else f"{ppl:.5g}"


def _ratio(v, fl: float) -> str:
    if v is None:
        return "—"
    r = v[0] / fl
    return f"{r:.4f}" if r < 2 else f"{r:.3g}"


def table(plan: dict, out: Path) -> str:
    texts = list(plan["texts"])
    head = "| model | `intsim convert SRC --out M.intsim` options | " + " | ".join(f"*{t.capitalize()}* int/float (ppl)" for t in texts) + " |"
    lines = [head, "|---|---|" + "---|" * len(texts)]
    notes = {}
    for row in plan["rows"]:
        cells = []
        for t in texts:
            v = figure(plan, row, out, t)
            cell = f"{_ratio(v, plan['texts'][t][1])} ({_fmt(v)})"
            if v is not None and v[1]:
                mark = notes.setdefault(v[1], len(notes) + 1)
                cell += f" [{mark}]"
            cells.append(cell if v is not None else "—")
        opts = row["convert"].replace("|", "\\|")
        lines.append(f"| {row['label']} | `{opts}` | " + " | ".join(cells) + " |")
    if notes:
        lines.append("")
        lines += [f"[{n}] measured earlier: docs/RESULTS.md, {s}" for s, n in notes.items()]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="scripts/ppl_table.py", description=__doc__.split("\n\n")[0])
    p.add_argument("rows", type=Path, help="the rows file (TOML; the module docstring)")
    p.add_argument("--out", type=Path, default=Path("out/rows"), help="model files and figures (default out/rows)")
    p.add_argument("--jobs", type=int, default=1, help="rows measured at once (default 1)")
    p.add_argument("--only", nargs="+", metavar="NAME", help="measure only these rows (the table shows all)")
    p.add_argument("--dry-run", action="store_true", help="measure nothing: print the table of the figures there are")
    a = p.parse_args(argv)
    try:
        plan = load_rows(a.rows)
        names = {r["name"] for r in plan["rows"]}
        for n in a.only or ():
            if n not in names:
                raise RowsError(f"--only {n}: no such row in {a.rows}")
        if a.jobs < 1:
            raise RowsError(f"--jobs {a.jobs}: must be at least 1")
        a.out.mkdir(parents=True, exist_ok=True)
        rows = [r for r in plan["rows"] if not a.only or r["name"] in a.only]
        if not a.dry_run:
            src = source_path(plan)
            def one(row):
                measure(plan, row, a.out, src, lambda m: print(m, file=sys.stderr, flush=True))
            with ThreadPoolExecutor(a.jobs) as ex:
                for f in [ex.submit(one, r) for r in rows]:
                    f.result()
    except RowsError as exc:
        print(f"ppl_table: {exc}", file=sys.stderr)
        return 2
    print(table(plan, a.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
