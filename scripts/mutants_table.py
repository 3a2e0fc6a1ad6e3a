"""The registry table of docs/MUTANTS.md from ``intsim mutants ... --json`` on stdin.

    intsim mutants golden/darcy golden/the --model out/small-w8a8.intsim --json \\
        | python scripts/mutants_table.py --write docs/MUTANTS.md

prints the table (one row per mutant: name, SPEC step, what changes, killed or survived,
the first killing record) and the score line, or with ``--write FILE`` replaces the text
between the ``<!-- mutants-table -->`` and ``<!-- /mutants-table -->`` markers of FILE.
"""
import argparse
import json
import re
import sys
from pathlib import Path

BEGIN, END = "<!-- mutants-table -->", "<!-- /mutants-table -->"


def _kill(k: dict) -> str:
    where = f"{Path(k['suite']).name} op {k['op_index']} `{k['op']}`"
    if k.get("kind") == "graph":                       # the whole graph run, at its logits
        where = f"{Path(k['suite']).name} whole graph, op {k['op_index']} `{k['op']}`"
    if "error" in k:
        return f"{where}: {k['error']}"
    comp = "" if k["component"] == "values" else f" {k['component']}"
    return f"{where}{comp} {tuple(k['index'])}: {k['golden']} → {k['got']}"


def table(r: dict) -> str:
    suites = ", ".join(f"`{s['dir']}` ({s['records']} records)" for s in r["suites"])
    lines = [f"Score: **killed {r['killed']} of {r['total']}** ({100 * r['killed'] // r['total']} %, "
             f"rounded down) by {suites}.", "",
             "| mutant | SPEC step | what changes | result | first killing record |",
             "|---|---|---|---|---|"]
    for m in r["mutants"]:
        desc = m["description"].replace("|", "\\|")
        lines.append(f"| `{m['name']}` | SPEC {m['spec_step']} | {desc} | "
                     f"{'killed' if m['killed'] else '**survives**'} | "
                     f"{_kill(m['kill']) if m['killed'] else ''} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--write", metavar="FILE", help="replace the marked table in FILE")
    a = p.parse_args(argv)
    text = table(json.load(sys.stdin))
    if not a.write:
        sys.stdout.write(text)
        return 0
    path = Path(a.write)
    doc = path.read_text()
    if BEGIN not in doc or END not in doc:
        print(f"{path}: no {BEGIN} ... {END} markers", file=sys.stderr)
        return 2
    path.write_text(re.sub(re.escape(BEGIN) + ".*?" + re.escape(END),
                           lambda _: f"{BEGIN}\n{text}{END}", doc, flags=re.S))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
