"""``intsim sweep``: golden, overflow and perplexity suites over many prompts, models and
spec variants, on Dask distributed (a LocalCluster here, or a farm's scheduler).

Modules: ``plan`` (reading and checking a plan file), ``identity`` (tasks and the hash of
their inputs), ``execute`` (one task on a worker: temporary folder, then rename),
``kinds`` (the integer task kinds, each calling its command's single-run function),
``merge`` (the merged reports, in plan order) and ``run`` (the driver).  The command line
and the float side's ``ppl`` kind are in ``intsim_app.sweep``.  Reference: docs/SWEEP.md.

Dask, distributed and tqdm are the optional ``sweep`` extra: nothing here imports them
until a sweep runs.
"""
from .execute import CRASH_ONCE_ENV, RESULT, run_task, write_atomic
from .identity import KEY_DIGITS, Task, canonical, expand, task_key
from .kinds import RUNNERS
from .plan import KIND_OPTIONS, Plan, load_plan
from .run import Hooks, Outcome, connect, run_sweep

__all__ = ["CRASH_ONCE_ENV", "KEY_DIGITS", "KIND_OPTIONS", "RESULT", "RUNNERS", "Hooks", "Outcome",
           "Plan", "Task", "canonical", "connect", "expand", "load_plan", "run_sweep", "run_task",
           "task_key", "write_atomic"]
