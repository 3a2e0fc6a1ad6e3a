"""intsim sweep on a 2-worker Dask LocalCluster with the small model: byte-identical results
with 1 and 2 workers and on a rerun, a killed sweep resuming with only what is missing, a
worker killed mid-task (its task redone, nothing half-written left), a task failing on bad
input while the others finish, every plan refusal, and an unreachable scheduler.

Kept short: a few short prompts and 16-token windows of golden/long-prompt.txt.
"""
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("distributed")

from intsim.sweep import CRASH_ONCE_ENV, RESULT, expand, load_plan, run_sweep, task_key  # noqa: E402
from intsim.sweep.execute import TMP_PREFIX  # noqa: E402
from intsim_app.cli import main  # noqa: E402
from intsim_app.sweep import hooks  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SMALL = ROOT / "out" / "small-w8a8.intsim"
TEXT = ROOT / "golden" / "long-prompt.txt"

PLAN_T = """
[models.small]
file = "@SMALL@"
[specs]
default = {}
clip8 = { softmax_clip = 8 }
[inputs.prompts]
prompts = ["Mr. Darcy", "It is a truth universally acknowledged"]
[inputs.austen]
text = "@TEXT@"
window = 16
count = 3
[[tasks]]
kind = "overflow"
inputs = ["prompts"]
options = { stimuli_formats = ["npy"] }
[[tasks]]
kind = "golden"
specs = ["default"]
inputs = ["prompts"]
options = { layers = "0", stages = false, formats = ["npy", "hex"] }
[[tasks]]
kind = "ppl"
inputs = ["austen"]
"""

KILL_PLAN_T = """
[models.small]
file = "@SMALL@"
[inputs.austen]
text = "@TEXT@"
window = 12
count = 16
[[tasks]]
kind = "overflow"
options = { stimuli = false }
"""


def fill(t: str) -> str:
    return t.replace("@SMALL@", str(SMALL)).replace("@TEXT@", str(TEXT))


PLAN, KILL_PLAN = fill(PLAN_T), fill(KILL_PLAN_T)


@pytest.fixture(scope="module", autouse=True)
def small_model():
    if not SMALL.exists():
        subprocess.run(["make", "out/small-w8a8.intsim"], cwd=ROOT, check=True)


def _plan(tmp_path, text=PLAN, name="plan.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def tree(out: Path) -> dict:
    """relative path -> sha256 of every file under ``out``."""
    return {p.relative_to(out).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(out.rglob("*")) if p.is_file()}


def sweep(plan, out, workers=2):
    return run_sweep(plan, out, workers=workers, hooks=hooks(), progress=False, echo=lambda s: None)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The plan swept once with 2 workers."""
    d = tmp_path_factory.mktemp("sweep-ref")
    plan = _plan(d)
    oc = sweep(plan, d / "out", workers=2)
    assert not oc.failed, oc.failed
    return plan, d / "out", oc


def test_one_and_two_workers_and_a_rerun_give_the_same_bytes(reference, tmp_path):
    plan, out2, oc2 = reference
    ref = tree(out2)
    # every report is there, and the overflow merge names where each worst headroom sits
    for rel in ("sweep.json", "overflow/worst.json", "overflow/worst.txt", "overflow/worst-small.png",
                "overflow/stimuli.json", "golden/index.json", "ppl/table.json", "ppl/table.md"):
        assert rel in ref, rel
    worst = json.loads((out2 / "overflow" / "worst.json").read_text())
    assert worst["windows"] == 4 and worst["all_recomputes_match"]
    row = next(r for r in worst["ops"] if r["op"] == "attn.qk.acc")
    assert row["model"] == "small" and row["spec"] in ("default", "clip8") and row["window"] in (0, 1)
    assert 0 <= row["peak_token"] < 8 and row["headroom"] >= row["bound_headroom"]
    assert (out2 / "overflow" / "worst-small.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    stim = json.loads((out2 / "overflow" / "stimuli.json").read_text())["stimuli"]
    assert stim and all(s["golden"] is None or (out2 / s["golden"] / "manifest.json").is_file()
                        for s in stim)
    index = json.loads((out2 / "golden" / "index.json").read_text())
    assert len(index["dumps"]) == 2 and all(len(r["sha256"]) == 64 for d in index["dumps"]
                                            for r in d["records"])
    # a record hash covers the files: a changed file gives another hash (kinds.record_hashes)
    rows = json.loads((out2 / "ppl" / "table.json").read_text())["rows"]
    assert [(r["spec"], r["windows"], r["scored_tokens"]) for r in rows] == [("default", 3, 45), ("clip8", 3, 45)]
    # one worker: the same bytes
    out1 = tmp_path / "out1"
    oc1 = sweep(plan, out1, workers=1)
    assert not oc1.failed and oc1.ran == oc2.ran
    assert tree(out1) == ref
    # a rerun does nothing and rewrites the same reports
    oc = sweep(plan, out1, workers=2)
    assert oc.ran == 0 and oc.done_before == oc.tasks
    assert tree(out1) == ref


def finished(out):
    """The task folders that hold a result under their final name.  A task writes its
    result.json last inside ``.tmp-KEY-...`` and then renames the folder; a glob's ``*``
    matches those hidden folders too, so a kill between the two would count a task that the
    resume rightly redoes (it is a leftover, not done)."""
    return [d for d in out.glob("tasks/overflow/*")
            if not d.name.startswith(TMP_PREFIX) and d.joinpath(RESULT).is_file()]


def test_a_killed_sweep_resumes_with_only_what_is_missing(tmp_path):
    plan = _plan(tmp_path, KILL_PLAN)
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    p = subprocess.Popen([sys.executable, "-m", "intsim_app", "sweep", str(plan), "--out", str(out),
                          "--workers", "1", "--quiet"], cwd=ROOT, env=env, start_new_session=True,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    try:
        while not finished(out):
            assert p.poll() is None, "the sweep ended before its first task finished"
            assert time.monotonic() < deadline, "no task finished in 240 s"
            time.sleep(0.02)
    finally:
        os.killpg(p.pid, signal.SIGKILL)          # the driver, its cluster and its workers
        p.wait()
    done = {d.name: d.joinpath(RESULT).stat().st_mtime_ns for d in finished(out)}
    assert 0 < len(done) < 16, f"killed after {len(done)} of 16 tasks"
    assert not (out / "sweep.json").exists()      # killed before its reports
    oc = sweep(plan, out, workers=2)
    assert not oc.failed
    assert oc.done_before == len(done) and oc.ran == 16 - len(done)
    # the tasks done before the kill were not run again
    assert {n: out.joinpath("tasks", "overflow", n, RESULT).stat().st_mtime_ns for n in done} == done
    assert not list(out.rglob(".tmp-*"))
    clean = tmp_path / "clean"
    sweep(plan, clean, workers=2)
    assert tree(out) == tree(clean)


def test_a_worker_killed_mid_task_has_it_redone_and_nothing_half_written(reference, tmp_path, monkeypatch):
    plan, ref_out, _ = reference
    marker = tmp_path / "crashed"
    monkeypatch.setenv(CRASH_ONCE_ENV, str(marker))     # the workers inherit it
    out = tmp_path / "out"
    oc = sweep(plan, out, workers=2)
    assert marker.exists(), "no worker was killed (the test hook did not fire)"
    assert not oc.failed
    assert not list(out.rglob(".tmp-*")) and not list(out.rglob("half-written.npy"))
    assert tree(out) == tree(ref_out)


def test_a_task_failing_on_bad_input_is_reported_while_the_others_finish(tmp_path, capsys):
    # rope_frac_bits is a valid spec value, but the stored RoPE tables refuse it at run time
    text = PLAN.replace("clip8 = { softmax_clip = 8 }", "badrope = { rope_frac_bits = 12 }")
    plan = _plan(tmp_path, text)
    out = tmp_path / "out"
    rc = main(["sweep", str(plan), "--out", str(out), "--workers", "2", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 1
    rows = json.loads((out / "sweep.json").read_text())["tasks"]
    bad = [r for r in rows if not r["ok"]]
    good = [r for r in rows if r["ok"]]
    assert {r["spec"] for r in bad} == {"badrope"} and len(bad) == 5    # 2 overflow + 3 ppl
    assert all("rope_frac_bits" in r["error"] for r in bad)
    assert {r["spec"] for r in good} == {"default"} and len(good) >= 7
    assert "5 task(s) failed" in err and "spec=badrope" in err
    # the rerun tries the failed ones again (nothing was recorded for them)
    assert all(not (out / r["folder"]).exists() for r in bad)


REFUSALS = [
    ('file = "@SMALL@"', 'file = "/nonexistent/m.intsim"', "models.small: model file /nonexistent/m.intsim does not exist"),
    ('text = "@TEXT@"', 'text = "/nonexistent/t.txt"', "inputs.austen: text file /nonexistent/t.txt does not exist"),
    ("clip8 = { softmax_clip = 8 }", "clip8 = { softmax_clipp = 8 }", "specs.clip8: unknown spec field(s) ['softmax_clipp']"),
    ("clip8 = { softmax_clip = 8 }", "clip8 = { m_bits = 99 }", "specs.clip8: m_bits"),
    ('kind = "ppl"', 'kind = "pll"', "tasks[2].kind: unknown task 'pll'"),
    ('kind = "ppl"', 'kind = "mutants"', "tasks[2].options: give exactly one of 'golden'"),
    ('kind = "ppl"', 'kind = "mutants"\noptions = { golden = 1, only = ["nope.*"] }',
     "tasks[2].options.only: no mutant matches 'nope.*'"),
    ('kind = "ppl"', 'kind = "mutants"\noptions = { golden = 0 }',
     "tasks[2].options.golden: 0 is not the index of a golden task entry"),
    ('kind = "ppl"', 'kind = "mutants"\noptions = { golden = 1 }',
     "tasks[2]: no task of tasks[1] is among its models, specs and inputs"),
    ('kind = "ppl"', 'kind = "mutants"\noptions = { suites = ["/nonexistent"] }',
     "tasks[2].inputs: a committed suite records its own spec and inputs"),
    ('prompts = ["Mr. Darcy", "It is a truth universally acknowledged"]', "prompts = []", "inputs.prompts: empty prompt set"),
    ('prompts = ["Mr. Darcy", "It is a truth universally acknowledged"]', 'prompts = ["Mr. Darcy", " "]', "inputs.prompts: prompt 1 is empty"),
    ("window = 16", "window = 4096", "inputs.austen: gives no window"),
    ('specs = ["default"]', 'specs = ["nope"]', "tasks[1].specs: no spec named 'nope'"),
    ('layers = "0"', 'layer = "0"', "tasks[1].options: unknown key(s) ['layer']"),
    ("[[tasks]]\nkind = \"overflow\"", "[[taskz]]\nkind = \"overflow\"", "top level: unknown key(s) ['taskz']"),
]


@pytest.mark.parametrize("old,new,msg", REFUSALS, ids=[r[2].split(":")[0] + "-" + str(i) for i, r in enumerate(REFUSALS)])
def test_a_bad_plan_is_refused_before_anything_runs_naming_the_entry(tmp_path, capsys, old, new, msg):
    assert old in PLAN_T, f"the edit {old!r} does not apply"
    text = fill(PLAN_T.replace(old, new))
    plan = _plan(tmp_path, text)
    out = tmp_path / "out"
    rc = main(["sweep", str(plan), "--out", str(out), "--workers", "2", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and err[0].startswith(f"intsim: error: {plan}: ") and msg in err[0], err
    assert not out.exists()                      # nothing ran, nothing was written


def test_a_missing_plan_and_an_unreadable_one_are_refused(tmp_path, capsys):
    assert main(["sweep", str(tmp_path / "none.toml"), "--out", str(tmp_path / "o")]) == 2
    assert "none.toml: no such plan file" in capsys.readouterr().err
    bad = _plan(tmp_path, "models = [", "bad.toml")
    assert main(["sweep", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "bad.toml: not a valid TOML plan" in capsys.readouterr().err


def test_an_unreachable_scheduler_is_one_clear_line(tmp_path, capsys):
    plan = _plan(tmp_path)
    rc = main(["sweep", str(plan), "--out", str(tmp_path / "out"), "--scheduler", "tcp://127.0.0.1:9",
               "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert err[-1].startswith("intsim: error: --scheduler tcp://127.0.0.1:9: no Dask scheduler answers there")
    assert not [ln for ln in err if "Traceback" in ln]


def test_json_plan_gives_the_same_tasks_and_keys_hash_inputs_not_names(tmp_path):
    import tomllib
    toml_plan = _plan(tmp_path)
    json_plan = _plan(tmp_path, json.dumps(tomllib.loads(PLAN)), "plan.json")
    a = expand(load_plan(toml_plan), {"small": str(SMALL)})
    b = expand(load_plan(json_plan), {"small": str(SMALL)})
    assert [t.key for t in a] == [t.key for t in b] and len(a) == 2 * 2 + 2 + 2 * 3
    # renamed model and input: the same keys (the hash is of the inputs, not of the names)
    renamed = PLAN.replace("models.small", "models.tiny").replace("inputs.prompts", "inputs.p") \
        .replace('inputs = ["prompts"]', 'inputs = ["p"]')
    c = expand(load_plan(_plan(tmp_path, renamed, "renamed.toml")), {"tiny": str(SMALL)})
    assert [t.key for t in c] == [t.key for t in a]
    # every input of the identity changes the key
    t = next(x for x in a if x.kind == "ppl")         # a kind without merge-only options
    base = task_key(t.kind, t.model_sha256, dict(t.spec), t.tokens, dict(t.options))
    assert base == t.key
    for k in (task_key("overflow", t.model_sha256, dict(t.spec), t.tokens, dict(t.options)),
              task_key(t.kind, "0" * 64, dict(t.spec), t.tokens, dict(t.options)),
              task_key(t.kind, t.model_sha256, {"softmax_clip": 8}, t.tokens, dict(t.options)),
              task_key(t.kind, t.model_sha256, dict(t.spec), t.tokens[:-1], dict(t.options)),
              task_key(t.kind, t.model_sha256, dict(t.spec), t.tokens, {"layers": "0"}),
              task_key(t.kind, t.model_sha256, dict(t.spec), t.tokens, dict(t.options), version="9.9")):
        assert k != base
    # the stimuli options steer the merge only: the overflow tasks keep their keys
    d = expand(load_plan(_plan(tmp_path, PLAN.replace('stimuli_formats = ["npy"]', "stimuli = false"),
                               "nostim.toml")), {"small": str(SMALL)})
    assert [x.key for x in d] == [x.key for x in a]


MUTANTS_PLAN_T = """
[models.small]
file = "@SMALL@"
[inputs.prompts]
prompts = ["Mr. Darcy"]
[[tasks]]
kind = "golden"
options = { layers = "0", stages = false, formats = ["npy"] }
[[tasks]]
kind = "mutants"
options = { golden = 0, only = ["requant.codes_floor", "softmax.p_tie", "matmul.acc_31bit"] }
[[tasks]]
kind = "mutants"
options = { suites = ["@ROOT@/golden/the", "@ROOT@/golden/stress"], only = ["requant.codes_floor", "softmax.p_tie", "matmul.acc_31bit"] }
"""


def test_mutants_tasks_score_the_sweeps_dumps_and_committed_suites(tmp_path, capsys):
    plan = _plan(tmp_path, fill(MUTANTS_PLAN_T).replace("@ROOT@", str(ROOT)))
    tasks = expand(load_plan(plan), {"small": str(SMALL)})
    assert [(t.kind, t.model, t.input) for t in tasks] == [
        ("golden", "small", "prompts"), ("mutants", "small", "prompts"),
        ("mutants", "small", "suite:the"), ("mutants", "-", "suite:stress")]   # stress: no model
    out2 = tmp_path / "out2"
    oc = sweep(plan, out2, workers=2)
    assert not oc.failed and oc.ran == 4
    table = json.loads((out2 / "mutants" / "table.json").read_text())
    got = {m["name"]: (m["killed_by"], m["dumps"], m["first"]["input"] if m["first"] else None)
           for m in table["mutants"]}
    # the codes' rounding is in every dump; only the stress suite reaches an int32 acc's top
    # bit and a tie of p (docs/MUTANTS.md)
    assert got == {"requant.codes_floor": (3, 3, "prompts"), "matmul.acc_31bit": (1, 3, "suite:stress"),
                   "softmax.p_tie": (1, 3, "suite:stress")}
    assert (table["killed"], table["total"]) == (3, 3)
    # the suites' record counts as their manifests state them (stress grows by appending)
    ops = [len(json.loads((ROOT / "golden" / s / "manifest.json").read_text())["ops"]) for s in ("the", "stress")]
    assert [d["records"] for d in table["dumps"]][1:] == ops and ops[1] >= 275
    assert "| `matmul.acc_31bit` | §4.4 acc | 1 of 3 | - - suite:stress 1: op 103" in \
        (out2 / "mutants" / "table.md").read_text()
    # no path of this machine in any result or report; 1 worker and a rerun: the same bytes
    for f in out2.rglob("*.json"):
        assert str(ROOT) not in f.read_text() and str(tmp_path) not in f.read_text(), f
    out1 = tmp_path / "out1"
    assert not sweep(plan, out1, workers=1).failed
    assert tree(out1) == tree(out2)
    assert sweep(plan, out1, workers=2).ran == 0 and tree(out1) == tree(out2)


def test_worker_keeps_the_two_models_it_used_last(monkeypatch):
    """A breadth-first plan alternates its models task by task: a worker must not reload a
    model it used one task ago (each reload of SmolLM2 cost about half an overflow task),
    and keeps no more than MODEL_CACHE of them, dropping the least recently used."""
    from intsim import modelfile
    from intsim.sweep import execute
    loads = []
    monkeypatch.setattr(modelfile, "model_hash", lambda f: "h" + f)
    monkeypatch.setattr(modelfile, "load_model", lambda f: loads.append(f) or f)
    monkeypatch.setattr(execute, "_MODELS", {})
    assert execute.MODEL_CACHE == 2

    def get(f):
        return execute.load_prepared({"model_file": f, "model_sha256": "h" + f, "spec": {}},
                                     lambda m, spec: ("prepared", m))
    for f in ["a", "b", "a", "b", "a"]:
        assert get(f) == ("prepared", f)
    assert loads == ["a", "b"]
    get("c")                    # drops b, used less recently than a
    get("a")
    get("b")
    assert loads == ["a", "b", "c", "b"]
    assert len(execute._MODELS) == 2
