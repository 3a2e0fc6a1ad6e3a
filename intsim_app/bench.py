"""``intsim bench``: the command over the integer side's measurements (:mod:`intsim.bench`)
and, with ``--model``, the float side's PyTorch baseline (:mod:`converters.modelbench`)
and the cold start of ``intsim run`` (:func:`cold_start`)."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from intsim.bench import (collect, decode_roofline, format_table, fused_status_row, golden_bench,
                          gpu_bench)

#: the cold start's run: ``make run``'s model, prompt and length
COLD_PROMPT = "It is a truth universally"
COLD_TOKENS = 32
SMALL = Path("out") / "small-w8a8.intsim"


def first_token_run(cmd: list, prompt: str, env: dict, cwd=None) -> dict:
    """Start ``cmd`` (an ``intsim run`` that echoes ``prompt``, then streams tokens) and
    read its stdout as it comes: seconds from the start to the first byte after the
    echoed prompt (the first generated token) and to the exit, the CPU seconds it used
    (user + system: the work itself, whatever else shares the cores), and its stderr."""
    echo = len(prompt.encode())
    with tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, env=env, cwd=cwd)
        got, first = 0, None
        while True:
            chunk = os.read(p.stdout.fileno(), 65536)
            if not chunk:
                break
            got += len(chunk)
            if first is None and got > echo:
                first = time.perf_counter() - t0
        _, status, usage = os.wait4(p.pid, 0)
        total = time.perf_counter() - t0
        p.returncode = rc = os.waitstatus_to_exitcode(status)
        p.stdout.close()
        err.seek(0)
        stderr = err.read().decode(errors="replace")
    if rc:
        raise RuntimeError(f"{' '.join(map(str, cmd))} exited {rc}:\n{stderr[-2000:]}")
    return {"first_token_s": first, "total_s": total, "cpu_s": usage.ru_utime + usage.ru_stime,
            "stderr": stderr}


def cold_start(model, tree=None, prompt: str = COLD_PROMPT, tokens: int = COLD_TOKENS) -> dict:
    """``cold_start_s``: seconds from starting ``intsim run MODEL`` (a new process, the
    prompt and length of ``make run``) with an EMPTY Numba cache (NUMBA_CACHE_DIR a new
    temporary folder: everything compiles, as on a fresh clone) to its first generated
    token; ``cold_start_total_s`` to its exit; ``cold_start_cpu_s`` the CPU seconds of
    the process (on a shared machine the wall figures grow with the other load, this one
    much less); ``cold_start_notice``: whether it said it was compiling
    (intsim.compile_notice).  Then the same run again on the now warm cache:
    ``warm_start_s``, ``warm_start_total_s``, ``warm_start_cpu_s``.  ``tree``: run that checkout's code
    (PYTHONPATH and working folder; default: the installed one)."""
    from intsim.compile_notice import NOTICE
    cmd = [sys.executable, "-m", "intsim_app", "run", str(Path(model).resolve()), "--prompt",
           prompt, "--max-new-tokens", str(tokens)]
    out = {}
    with tempfile.TemporaryDirectory(prefix="intsim-cold-numba-") as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache, PYTHONUNBUFFERED="1")
        if tree is not None:
            env["PYTHONPATH"] = str(tree)
        for key in ("cold_start", "warm_start"):
            r = first_token_run(cmd, prompt, env, cwd=tree)
            out[f"{key}_s"], out[f"{key}_total_s"] = r["first_token_s"], r["total_s"]
            out[f"{key}_cpu_s"] = r["cpu_s"]
            if key == "cold_start":
                out["cold_start_notice"] = NOTICE in r["stderr"]
    return out


def cold_start_row(model=None) -> dict:
    """The cold start of ``model`` (default: ``out/small-w8a8.intsim`` here or beside the
    package), or a note saying why there is none."""
    if model is None:
        model = next((p for p in (SMALL, Path(__file__).resolve().parents[1] / SMALL)
                      if p.is_file()), None)
    if model is None:
        return {"cold_start_note": f"no {SMALL} (make {SMALL.as_posix()})"}
    return {"cold_start_model": str(model), **cold_start(model)}


#: the sweep bench's plan: overflow (no stimuli) on 16 windows of 64 tokens, the small model
SWEEP_WINDOWS, SWEEP_WINDOW = 16, 64
SWEEP_TEXT = Path(__file__).resolve().parents[1].joinpath("golden", "long-prompt.txt")


def sweep_bench(model=None, rounds: int = 3, workers=(1, 2)) -> dict:
    """``intsim sweep`` throughput: the same overflow plan (``SWEEP_WINDOWS`` windows of
    ``SWEEP_WINDOW`` tokens of golden/long-prompt.txt, repeated, on the small model) swept
    ``rounds`` times into a new folder with each number of LocalCluster workers, side by
    side in this run.  Time: from the first submit to the last result (the cluster's start
    and the merge are not in it; each round starts new worker processes, which load the
    Numba cache).  tasks/s and MB/s (bytes of the task folders written) as min and median
    over the rounds."""
    import statistics
    from intsim.sweep import run_sweep
    from .sweep import hooks
    model = model or next((p for p in (SMALL, Path(__file__).resolve().parents[1] / SMALL)
                           if p.is_file()), None)
    if model is None:
        return {"sweep_note": f"no {SMALL} (make {SMALL.as_posix()})"}
    out = {"sweep_model": str(model), "sweep_tasks": SWEEP_WINDOWS, "sweep_rounds": rounds,
           "sweep_window_tokens": SWEEP_WINDOW}
    with tempfile.TemporaryDirectory(prefix="intsim-sweep-bench-") as d:
        text = Path(d, "text.txt")
        text.write_text(SWEEP_TEXT.read_text() * 8)
        plan = Path(d, "plan.toml")
        plan.write_text(f'[models.m]\nfile = "{Path(model).resolve()}"\n[inputs.t]\ntext = "{text}"\n'
                        f"window = {SWEEP_WINDOW}\ncount = {SWEEP_WINDOWS}\n[[tasks]]\n"
                        f'kind = "overflow"\noptions = {{ stimuli = false }}\n')
        for w in workers:
            rates, mbs = [], []
            for r in range(rounds):
                oc = run_sweep(plan, Path(d, f"out-{w}-{r}"), workers=w, hooks=hooks(),
                               progress=False, echo=lambda s: None)
                if oc.failed or oc.ran != SWEEP_WINDOWS:
                    raise RuntimeError(f"sweep bench: {oc.failed or oc.ran}")
                secs = oc.run_ns / 1e9
                rates.append(oc.ran / secs)
                mbs.append(oc.bytes / 1e6 / secs)
            out[f"sweep_{w}w_tasks_per_s_min"] = min(rates)
            out[f"sweep_{w}w_tasks_per_s_median"] = statistics.median(rates)
            out[f"sweep_{w}w_mb_per_s_min"] = min(mbs)
            out[f"sweep_{w}w_mb_per_s_median"] = statistics.median(mbs)
            out[f"sweep_{w}w_s_per_task_median"] = 1 / statistics.median(rates)
    return out


def sweep_table(r: dict) -> str:
    if "sweep_note" in r:
        return f"  sweep: {r['sweep_note']}"
    lines = [f"  sweep (intsim sweep, overflow of {r['sweep_tasks']} windows of "
             f"{r['sweep_window_tokens']} tokens, {r['sweep_model']}; {r['sweep_rounds']} rounds):"]
    for w in (1, 2):
        if f"sweep_{w}w_tasks_per_s_min" in r:
            lines.append(f"    {w} worker{'s' if w > 1 else ' '}: tasks/s min "
                         f"{r[f'sweep_{w}w_tasks_per_s_min']:.2f} median "
                         f"{r[f'sweep_{w}w_tasks_per_s_median']:.2f}; MB/s min "
                         f"{r[f'sweep_{w}w_mb_per_s_min']:.2f} median {r[f'sweep_{w}w_mb_per_s_median']:.2f}")
    return "\n".join(lines)


#: the overflow bench's window: the first OVERFLOW_TOKENS tokens of golden/long-prompt.txt
OVERFLOW_TOKENS = 256


def overflow_bench(models, tokens: int = OVERFLOW_TOKENS, rounds: int = 3) -> dict:
    """The overflow report (``intsim overflow``, a sweep's overflow task) on one window of
    ``tokens`` tokens (golden/long-prompt.txt, repeated, under each model's tokenizer),
    side by side in this process: the default recompute (int64 where the bounds prove it)
    and ``exact=True`` (Python ints throughout: the report's recompute before the int64
    path), interleaved round by round after one warm-up of each (Numba compiled).
    Seconds per window, min and median over ``rounds``, and whether the two reports are
    the same JSON."""
    import statistics
    import numpy as np
    from intsim.modelfile import load_model, load_tokenizer
    from intsim.overflow import overflow_report
    from intsim.sweep import canonical
    out = {"overflow_tokens": tokens, "overflow_rounds": rounds, "overflow_models": []}
    for path in models:
        model = load_model(path)
        ids = load_tokenizer(model).encode(SWEEP_TEXT.read_text() * 8, add_special_tokens=False).ids
        ids = np.asarray(ids[:tokens], dtype=np.int64)
        overflow_report(model, ids[:8], "saturate")
        overflow_report(model, ids[:8], "saturate", exact=True)
        times: dict = {"int64": [], "exact": []}
        same = True
        for _ in range(rounds):
            reps = {}
            for mode in ("exact", "int64"):
                t0 = time.perf_counter()
                reps[mode] = overflow_report(model, ids, "saturate", exact=mode == "exact")
                times[mode].append(time.perf_counter() - t0)
            same = same and canonical(reps["exact"].to_dict()) == canonical(reps["int64"].to_dict())
        name = Path(path).name
        out["overflow_models"].append(name)
        for mode, ts in times.items():
            out[f"overflow_{name}_{mode}_s_min"] = min(ts)
            out[f"overflow_{name}_{mode}_s_median"] = statistics.median(ts)
        out[f"overflow_{name}_same_report"] = same
    return out


def overflow_table(r: dict) -> str:
    lines = [f"  overflow report, one window of {r['overflow_tokens']} tokens, {r['overflow_rounds']} "
             f"rounds interleaved (s per window, min / median):"]
    for name in r["overflow_models"]:
        g = lambda m, s: r[f"overflow_{name}_{m}_s_{s}"]        # noqa: E731
        lines.append(f"    {name}: Python ints (exact=True) {g('exact', 'min'):.2f} / "
                     f"{g('exact', 'median'):.2f}; int64 where proven (default) {g('int64', 'min'):.2f} / "
                     f"{g('int64', 'median'):.2f}; {g('exact', 'median') / g('int64', 'median'):.1f}x; "
                     f"same report: {'yes' if r[f'overflow_{name}_same_report'] else 'NO'}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="intsim bench",
                                description="integer matmul core vs float32 BLAS")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--quick", action="store_true", help="small shapes (smoke test)")
    p.add_argument("--repeats", type=int, default=5, help="least timed runs per measurement")
    p.add_argument("--min-time", type=float, default=None,
                   help="seconds of runs per measurement (default 1, quick 0)")
    p.add_argument("--model", default=None, metavar="MODEL",
                   help="also time this integer model file against its peers, those installed: "
                        "PyTorch fp32 and int8 dynamic on its float checkpoint, llama.cpp on its "
                        "GGUF (decode, prefill, file size, peak memory), and the cold start of "
                        "'intsim run' (--cold-start)")
    p.add_argument("--model-rounds", type=int, default=5, metavar="N",
                   help="interleaved rounds of the --model peers' timings; min and median are "
                        "reported (default 5)")
    p.add_argument("--cold-start", action="store_true",
                   help=f"time 'intsim run' on {SMALL.as_posix()} from an empty Numba cache to "
                        "its first token, and again warm (about a minute on 2 cores)")
    p.add_argument("--sweep", action="store_true",
                   help="also 'intsim sweep' throughput (tasks/s, MB/s) with 1 and 2 LocalCluster "
                        f"workers on {SMALL.as_posix()} (a few minutes on 2 cores)")
    p.add_argument("--overflow", nargs="*", metavar="MODEL", default=None,
                   help="also time the overflow report on one 256-token window, the int64 "
                        "recompute against Python ints throughout, side by side, on these model "
                        f"files (none named: {SMALL.as_posix()})")
    p.add_argument("--overflow-rounds", type=int, default=3, metavar="N",
                   help="rounds of the --overflow timing (default 3)")
    a = p.parse_args(argv)
    for m in ([a.model] if a.model else []) + (a.overflow or []):
        from intsim.modelfile import read_header
        read_header(m)           # a missing or unreadable file is named now, not after the timing
    r = collect(quick=a.quick, repeats=max(1, a.repeats), min_time=a.min_time)
    if a.model:
        from converters.modelbench import model_bench   # the float side: the peers
        r.update(model_bench(a.model, rounds=max(1, a.model_rounds)))
        r.update(fused_status_row(a.model))
        r.update(decode_roofline(r, a.model))
        r.update(golden_bench(a.model))
        r.update(gpu_bench(a.model))      # only where a GPU is present
        if "gpu" in r:
            from converters.modelbench import torch_gpu_bench   # PyTorch on the same GPU
            r.update(torch_gpu_bench(a.model))
    if a.model or a.cold_start:
        r.update(cold_start_row())
    if a.sweep:
        r.update(sweep_bench())
    if a.overflow is not None:
        r.update(overflow_bench(a.overflow or [SMALL], rounds=max(1, a.overflow_rounds)))
    text = format_table(r) + ("\n" + sweep_table(r) if a.sweep else "") + \
        ("\n" + overflow_table(r) if a.overflow is not None else "")
    print(json.dumps(r) if a.json else text)
    return 0 if r["exact"] and all(v for k, v in r.items() if k.endswith("_same_report")) else 1


if __name__ == "__main__":
    sys.exit(main())
