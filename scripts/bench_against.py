"""Side-by-side speed of this checkout against another commit, in one run.

    python scripts/bench_against.py REV [--model MODEL] [--rounds 3] [--json OUT]
    python scripts/bench_against.py REV --cold-start MODEL [--rounds 3] [--json OUT]

Checks REV out into a temporary git worktree, then runs ``intsim bench --json`` (with
``--model``: the model's decode, prefill and golden-export rows too) alternately from the
two trees, ``--rounds`` times each (A B A B ...), so both see the same machine load, and
prints per figure the min and median of each side and the ratio of the medians (this
checkout / REV; above 1 is faster for rates, slower for times).  Both trees run with this
checkout's Python environment (``PYTHONPATH`` puts each tree first); each tree's first
round also warms its own Numba cache, and that round is not counted.

Used to hold a refactoring to "within 5 % of the previous commit"
(docs/RESULTS.md, "Architecture refactor: speed against the previous commit").

``--cold-start MODEL`` times instead, alternately from the two trees, ``intsim run MODEL``
from an empty Numba cache to its first token and to its exit, then warm
(``intsim_app.bench.cold_start``; every round counts: each cold run has a new cache);
docs/RESULTS.md, "Cold start".
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: the figures compared: (key, higher is better)
KEYS = (("gemm_int_gops", True), ("gemv_int_gops", True), ("gemm_di_matmul_gops", True),
        ("gemv_di_matmul_gops", True), ("decode_int_tok_s", True), ("prefill_int_tok_s", True),
        ("golden_mb_per_s", True), ("golden_seconds", False), ("golden_mb_per_cpu_s", True))
COLD_KEYS = (("cold_start_s", False), ("cold_start_total_s", False), ("cold_start_cpu_s", False),
             ("warm_start_s", False), ("warm_start_total_s", False))


def bench_once(tree: Path, model: str | None) -> dict:
    """One ``intsim bench --json`` from ``tree`` (its command-line module, old or new)."""
    entry = "intsim_app" if tree.joinpath("intsim_app").is_dir() else "intsim"
    cmd = [sys.executable, "-m", entry, "bench", "--json"] + (["--model", model] if model else [])
    env = dict(os.environ, PYTHONPATH=str(tree))
    out = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
    if out.returncode not in (0, 1):
        raise SystemExit(f"bench_against: {' '.join(cmd)} in {tree} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def summarize(runs: dict, keys=KEYS) -> list:
    rows = []
    for key, higher in keys:
        a = [r[key] for r in runs["this"] if key in r]
        b = [r[key] for r in runs["base"] if key in r]
        if not a or not b:
            continue
        ma, mb = statistics.median(a), statistics.median(b)
        rows.append({"figure": key, "this_min": min(a), "this_median": ma, "base_min": min(b),
                     "base_median": mb, "ratio_median": ma / mb if mb else None,
                     "higher_is_better": higher})
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="bench_against", description=__doc__.split("\n\n")[0])
    p.add_argument("rev", help="the commit to compare against (e.g. HEAD~1)")
    p.add_argument("--model", help="an integer model file: adds decode, prefill, golden rows")
    p.add_argument("--rounds", type=int, default=3, help="counted runs per side (default 3)")
    p.add_argument("--json", dest="json_out", help="also write the rows and raw runs here")
    p.add_argument("--cold-start", metavar="MODEL",
                   help="time 'intsim run MODEL' from an empty Numba cache instead (cold start)")
    a = p.parse_args(argv)
    model = str(Path(a.model).resolve()) if a.model else None
    keys = COLD_KEYS if a.cold_start else KEYS
    with tempfile.TemporaryDirectory(prefix="intsim-bench-against-") as tmp:
        base = Path(tmp) / "base"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(base), a.rev],
                       check=True)
        try:
            runs = {"this": [], "base": []}
            first = 1 if a.cold_start else 0               # round 0 warms both Numba caches
            for r in range(first, a.rounds + 1):
                for side, tree in (("this", ROOT), ("base", base)):
                    if a.cold_start:
                        from intsim_app.bench import cold_start
                        res = cold_start(a.cold_start, tree=tree)
                    else:
                        res = bench_once(tree, model)
                    if r:
                        runs[side].append(res)
                    print(f"round {r} {side}: " + ", ".join(
                        f"{k}={res[k]:.4g}" for k, _ in keys if k in res), file=sys.stderr)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base)])
    rows = summarize(runs, keys)
    print(f"{'figure':<22} {'this min':>10} {'this med':>10} {'base min':>10} {'base med':>10} "
          f"{'ratio':>7}")
    for row in rows:
        print(f"{row['figure']:<22} {row['this_min']:>10.4g} {row['this_median']:>10.4g} "
              f"{row['base_min']:>10.4g} {row['base_median']:>10.4g} {row['ratio_median']:>7.3f}")
    if a.json_out:
        Path(a.json_out).write_text(json.dumps({"rev": a.rev, "rows": rows, "runs": runs}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
