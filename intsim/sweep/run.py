"""The sweep driver on Dask distributed: a LocalCluster of worker processes by default, or
an existing cluster's scheduler (``--scheduler``), e.g. one started by dask-jobqueue on a
SLURM or LSF farm (docs/SWEEP.md).  Dask places the tasks, reruns the task of a worker
that died, and reports completions; the driver only submits, shows progress and merges.

Order of work: the plan is read and checked; source models are converted (into
``OUT/models``); leftovers of a killed run are removed; the plan is expanded into tasks;
the tasks not done yet (no folder under their key) go to the cluster, the mutants tasks in
a round after the others (they score the golden dumps of the first); what a worker killed
mid-task left is removed (one sweep at a time per results folder); then, from what is
on disk and in plan order, the reports are merged: ``overflow/`` (worst headroom per op,
a PNG per model, and the worst windows exported as golden dumps, a second round of
tasks), ``golden/index.json``, ``mutants/table.json`` and ``.md``, the float side's
``ppl/`` table, and ``sweep.json`` (every task, its key, folder and status).  Each report
is written to a temporary name and renamed.  Nothing in a result carries a time, a worker, a host or a path of this machine.
"""
from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..errors import IntsimError
from .execute import is_done, remove_leftovers, run_task, write_atomic
from .identity import canonical, expand, task_key
from .kinds import GOLDEN_FORMATS
from .merge import (golden_index, merge_overflow, mutants_markdown, mutants_table, overflow_png,
                    overflow_text, stimuli)
from .plan import load_plan

#: seconds to wait for an existing scheduler before giving up
CONNECT_TIMEOUT = "5s"


@dataclass
class Hooks:
    """What the layer above supplies: runners per kind (``kinds.RUNNERS`` plus the float
    side's), ``prepare(model, spec)`` for spec variants, ``convert(model, out)`` for
    source models (returns the model file), ``mergers``: kind -> ``fn(out, tasks)``
    returning ``{relative path: bytes}`` of extra reports."""
    runners: dict
    prepare: object
    convert: object = None
    mergers: dict = field(default_factory=dict)


@dataclass
class Outcome:
    tasks: int = 0                 # tasks in the plan (unique keys), stimuli included
    done_before: int = 0           # found done (resume)
    ran: int = 0                   # run now
    failed: list = field(default_factory=list)      # (task where, error)
    bytes: int = 0                 # bytes the tasks run now wrote
    run_ns: int = 0                # wall time of the task rounds
    dashboard: str | None = None
    leftovers: int = 0


def connect(workers: int | None, scheduler: str | None):
    """A Dask client: on ``scheduler`` when given (one clear error when none answers), else
    on a new LocalCluster of ``workers`` single-threaded worker processes."""
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError:
        raise IntsimError("sweep: Dask is not installed; pip install -e '.[sweep]' (make venv "
                          "does)") from None
    if scheduler:
        try:
            return Client(scheduler, timeout=CONNECT_TIMEOUT)
        except Exception as e:      # OSError, TimeoutError, ValueError of a malformed address
            raise IntsimError(f"--scheduler {scheduler}: no Dask scheduler answers there "
                              f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    cluster = LocalCluster(n_workers=workers or 1, threads_per_worker=1, processes=True,
                           dashboard_address=":0", memory_limit=0, silence_logs=logging.ERROR)
    return Client(cluster)


def dashboard_of(client, local: bool) -> str | None:
    """The dashboard's address when the scheduler serves one; a LocalCluster's pages need
    Bokeh here (not in the sweep extra), a remote scheduler's are its own business."""
    import importlib.util
    if local and importlib.util.find_spec("bokeh") is None:
        return None
    try:
        up = "dashboard" in client.scheduler_info().get("services", {})
    except Exception:
        return None
    return client.dashboard_link if up else None


def _round(client, tasks: list, out: str, hooks: Hooks, progress: bool, label: str, oc: Outcome) -> dict:
    """Submit ``tasks`` (unique keys, not done), wait with a progress bar; key -> status."""
    from dask.distributed import as_completed
    if not tasks:
        return {}
    futs = {client.submit(run_task, t.payload(), out, hooks.runners, hooks.prepare,
                          key=f"intsim-{t.kind}-{t.key[:24]}", pure=False): t for t in tasks}
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(futs), desc=label, unit="task", file=sys.stderr, dynamic_ncols=True)
    status = {}
    t0 = time.perf_counter_ns()
    for fut in as_completed(list(futs)):
        t = futs[fut]
        try:
            r = fut.result()
        except Exception as e:      # the task's workers kept dying (distributed's KilledWorker)
            r = {"key": t.key, "ok": False, "error": f"{type(e).__name__}: {e}"}
        status[t.key] = r
        oc.bytes += r.get("bytes", 0)
        if bar is not None:
            bar.update(1)
    oc.run_ns += time.perf_counter_ns() - t0
    if bar is not None:
        bar.close()
    return status


def _unique(tasks: list) -> list:
    seen, out = set(), []
    for t in tasks:
        if t.key not in seen:
            seen.add(t.key)
            out.append(t)
    return out


def _stimulus_tasks(merged: dict, tasks: list, entries: dict) -> list:
    """A golden task per worst window (merge.stimuli), over the layers of its worst ops."""
    out = []
    for t, ops, layers in stimuli(merged, tasks):
        opts = dict(entries.get(t.entry, {}))
        o = {"formats": list(opts.get("stimuli_formats", GOLDEN_FORMATS)), "stages": False,
             "layers": ",".join(str(i) for i in layers)} if layers else None
        if o is None:           # only final-norm / head ops: the window's ids say it (stimuli.json)
            continue
        frozen = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in o.items()))
        key = task_key("golden", t.model_sha256, dict(t.spec), t.tokens, o)
        out.append(replace(t, kind="golden", options=frozen, key=key))
    return out


def _stimuli_doc(merged: dict, tasks: list, gtasks: list) -> dict:
    folders = {(g.model, g.spec_name, g.input, g.window): g.folder for g in gtasks}
    rows = []
    for t, ops, layers in stimuli(merged, tasks):
        k = (t.model, t.spec_name, t.input, t.window)
        rows.append({**t.where(), "kind": "overflow", "ops": ops, "layers": layers,
                     "tokens": list(t.tokens), "model_sha256": t.model_sha256, "spec_overrides": dict(t.spec),
                     "golden": None if k not in folders else f"{folders[k]}/dump"})
    return {"stimuli": rows}


def _models(plan, out: Path, hooks: Hooks) -> dict:
    files = {}
    for name, m in plan.models.items():
        if m.file is not None:
            files[name] = m.file
        elif hooks.convert is None:
            raise IntsimError(f"{plan.path}: models.{name}: this driver cannot convert sources")
        else:
            files[name] = hooks.convert(m, out.joinpath("models"))
    return files


def run_sweep(plan_path, out, *, workers: int | None = None, scheduler: str | None = None,
              hooks: Hooks, progress: bool = True, echo=print) -> Outcome:
    # why one function: the sweep's steps in order (module docstring), each a call
    plan = load_plan(plan_path)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise IntsimError(f"--out {out}: exists and is not a folder")
    files = _models(plan, out, hooks)
    tasks = expand(plan, files)            # the last check of the plan: nothing written before
    out.mkdir(parents=True, exist_ok=True)
    oc = Outcome(leftovers=remove_leftovers(out))
    uniq = _unique(tasks)
    # breadth first: window 0 of every (entry, model, spec), then window 1, ...: a sweep
    # stopped early has covered every model and spec alike (results do not depend on it)
    todo = sorted((t for t in uniq if not is_done(out, t.folder)), key=lambda t: t.window)
    oc.tasks, oc.done_before = len(uniq), len(uniq) - len(todo)
    echo(f"sweep: {len(tasks)} task(s) in the plan ({len(uniq)} distinct), {oc.done_before} done "
         f"already, {len(todo)} to run" + (f"; removed {oc.leftovers} unfinished temporary "
                                          f"folder(s)" if oc.leftovers else ""))
    client = connect(workers, scheduler)
    try:
        oc.dashboard = dashboard_of(client, local=not scheduler)
        if oc.dashboard:
            echo(f"sweep: Dask dashboard at {oc.dashboard}")
        # mutants score the golden dumps of the first round: a round of their own after it
        status = _round(client, [t for t in todo if t.kind != "mutants"], str(out), hooks, progress,
                        "tasks", oc)
        status.update(_round(client, [t for t in todo if t.kind == "mutants"], str(out), hooks,
                             progress, "mutants", oc))
        ok = {t.key for t in uniq if is_done(out, t.folder)}
        reports = {}
        ov = [t for t in tasks if t.kind == "overflow" and t.key in ok]
        gtasks = []
        if ov:
            merged = merge_overflow(out, ov)
            entries = {e.index: e.options for e in plan.tasks}
            gtasks = _unique([g for g in _stimulus_tasks(merged, ov, entries)
                              if any(e.kind == "overflow" and e.options.get("stimuli", True)
                                     for e in plan.tasks if e.index == g.entry)])
            gtodo = [g for g in gtasks if not is_done(out, g.folder)]
            oc.tasks += len(gtasks)
            oc.done_before += len(gtasks) - len(gtodo)
            status.update(_round(client, gtodo, str(out), hooks, progress, "stimuli", oc))
            reports["overflow/worst.json"] = canonical(merged).encode() + b"\n"
            reports["overflow/worst.txt"] = overflow_text(merged).encode()
            for m in merged["cells"]:
                reports[f"overflow/worst-{m}.png"] = overflow_png(merged, m)
            gdone = [g for g in gtasks if is_done(out, g.folder)]
            reports["overflow/stimuli.json"] = canonical(_stimuli_doc(merged, ov, gdone)).encode() + b"\n"
    finally:
        client.close()
        cluster = getattr(client, "cluster", None)
        if cluster is not None and not scheduler:
            cluster.close()
    oc.ran = sum(1 for s in status.values() if not s.get("cached"))
    oc.leftovers += remove_leftovers(out)     # what a worker killed mid-task left (its task was redone)
    gold = [t for t in tasks if t.kind == "golden" and is_done(out, t.folder)]
    if gold:
        reports["golden/index.json"] = canonical(golden_index(out, gold)).encode() + b"\n"
    mut = [t for t in tasks if t.kind == "mutants" and is_done(out, t.folder)]
    if mut:
        table = mutants_table(out, mut)
        reports["mutants/table.json"] = canonical(table).encode() + b"\n"
        reports["mutants/table.md"] = mutants_markdown(table).encode()
    for kind, merge in sorted(hooks.mergers.items()):
        mine = [t for t in tasks if t.kind == kind and is_done(out, t.folder)]
        if mine:
            reports.update(merge(out, mine))
    rows = []
    for t in tasks + gtasks:
        s = status.get(t.key, {"ok": is_done(out, t.folder)})
        rows.append({**t.where(), "key": t.key, "folder": t.folder, "ok": bool(s["ok"]),
                     **({"error": s.get("error", "not run")} if not s["ok"] else {})})
        if not s["ok"]:
            oc.failed.append((t.where(), s.get("error", "not run")))
    reports["sweep.json"] = json.dumps({"plan": Path(plan_path).name, "tasks": rows},
                                       sort_keys=True, indent=1).encode() + b"\n"
    for rel, data in sorted(reports.items()):
        write_atomic(out.joinpath(*rel.split("/")), data)
    return oc
