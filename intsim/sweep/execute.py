"""Running one task on a worker: into a temporary folder, then renamed into place.

:func:`run_task` is what a Dask worker executes.  The task writes everything into
``tasks/KIND/.tmp-KEY-PID-RANDOM`` and, only when complete (``result.json`` written last),
renames that folder to ``tasks/KIND/KEY``: a task folder under its final name is always
whole, and a worker killed mid-task leaves only a ``.tmp-`` folder, which the next sweep
removes before it starts (and Dask runs the task again on a live worker).  A task whose
folder already exists is not run again (resume).

A task that fails (bad input: a spec override the model refuses, a model file changed
since the plan was read, ...) returns its error instead of raising, so the sweep goes on
with the others and reports it at the end; its temporary folder is removed.
"""
from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path

from ..errors import IntsimError
from .identity import canonical

RESULT = "result.json"
TMP_PREFIX = ".tmp-"
#: test hook: when set to a path that does not exist yet, the first task to start creates
#: it, leaves a half-written file in its temporary folder and kills its worker process
#: (os._exit), as a machine failing mid-task would (tests/test_sweep.py)
CRASH_ONCE_ENV = "INTSIM_SWEEP_CRASH_ONCE"

_MODELS: dict = {}      # per worker process: (file, sha256, spec) -> the prepared model
#: how many prepared models a worker keeps (least recently used dropped first).  A plan's
#: tasks run breadth first, window by window across its models, so a worker keeping one
#: model reloaded it (sha256 check, load, preparation of 171 MB) for almost every task.
#: Two SmolLM2-135M models add about 0.5 GB per worker.
MODEL_CACHE = 2


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary name in the same folder, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent.joinpath(f"{TMP_PREFIX}{path.name}-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def remove_leftovers(out: Path) -> int:
    """Remove the temporary folders and files a killed task or sweep left under ``out``;
    returns how many.  Run by the driver before any task starts."""
    n = 0
    for p in sorted(Path(out).rglob(f"{TMP_PREFIX}*")):
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        elif p.exists():
            p.unlink()
        n += 1
    return n


def is_done(out, folder: str) -> bool:
    return Path(out).joinpath(folder, RESULT).is_file()


def _crash_hook(tmp: Path) -> None:
    marker = os.environ.get(CRASH_ONCE_ENV)
    if not marker:
        return
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.close(fd)
    tmp.joinpath("half-written.npy").write_bytes(b"\x93NUMPY")
    os._exit(17)


def load_prepared(payload: dict, prepare):
    """The task's model, loaded once per worker process: the file checked against the
    sha256 the plan was expanded with, then ``prepare(model, spec_overrides)``."""
    from ..modelfile import load_model, model_hash
    if not payload["model_file"]:               # a task without a model (a model-free suite)
        return None
    key = (payload["model_file"], payload["model_sha256"], canonical(payload["spec"]))
    if key not in _MODELS:
        sha = model_hash(payload["model_file"])
        if sha != payload["model_sha256"]:
            raise IntsimError(f"{payload['model_file']}: the model file changed since the plan was "
                              f"read (sha256 {sha[:12]}..., expected {payload['model_sha256'][:12]}...)")
        while len(_MODELS) >= MODEL_CACHE:   # SmolLM2 is 160 MiB: a few at a time
            del _MODELS[next(iter(_MODELS))]
        _MODELS[key] = prepare(load_model(payload["model_file"]), payload["spec"])
    _MODELS[key] = _MODELS.pop(key)          # most recently used last
    return _MODELS[key]


def _folder_bytes(p: Path) -> int:
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def one_numba_thread() -> None:
    """Run this task's Numba kernels on one thread.  A sweep's parallelism is its tasks: each
    worker thread runs one task and a machine gets as many as it has cores, so a task's
    parallel kernels (2 threads each by default on 2 cores) oversubscribed the cores (with
    MODEL_CACHE, this took the Persuasion sweep from a task every 27 s to one every 21 s on
    2 cores, docs/SWEEP.md).
    Numba's setting is per calling thread, so it is made in the task's own thread."""
    import numba
    numba.set_num_threads(1)


def run_task(payload: dict, out: str, runners: dict, prepare) -> dict:
    """Run one task (module docstring).  ``runners``: kind -> ``fn(model, payload, folder)``
    returning the task's JSON-able result; ``prepare(model, spec_overrides)``: the model
    under the task's spec variant.  Returns ``{"key", "ok", "cached", "bytes"}`` or, on a
    failure, ``{"key", "ok": False, "error"}``."""
    final = Path(out).joinpath(payload["folder"])
    if final.joinpath(RESULT).is_file():
        return {"key": payload["key"], "ok": True, "cached": True, "bytes": 0}
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent.joinpath(f"{TMP_PREFIX}{final.name}-{os.getpid()}-{secrets.token_hex(4)}")
    tmp.mkdir()
    try:
        _crash_hook(tmp)
        one_numba_thread()
        model = load_prepared(payload, prepare)
        result = runners[payload["kind"]](model, {**payload, "out": str(out)}, tmp)
        inputs = {k: payload[k] for k in ("kind", "model_sha256", "spec", "options")}
        inputs["tokens"] = len(payload["tokens"])
        doc = {"key": payload["key"], "inputs": inputs, "result": result}
        tmp.joinpath(RESULT).write_text(canonical(doc) + "\n")
        nbytes = _folder_bytes(tmp)
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.joinpath(RESULT).is_file():     # not a twin that finished first
                raise
        return {"key": payload["key"], "ok": True, "cached": False, "bytes": nbytes}
    except Exception as e:          # reported, never raised: the sweep goes on with the rest
        msg = str(e) if isinstance(e, (IntsimError, OSError)) else f"{type(e).__name__}: {e}"
        return {"key": payload["key"], "ok": False, "error": msg}
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
