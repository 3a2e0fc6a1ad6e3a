"""scripts/bench_models.py: model files side by side (docs/RESULTS.md, "Two-step group
scales").  One quick run on the small model twice: every row present, the baseline's
ratios 1, rates positive; a missing file refused by name before anything is timed."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

from model_helpers import ROOT

SMALL = ROOT / "out" / "small-w8a8.intsim"


def _run(*args):
    return subprocess.run([sys.executable, "scripts/bench_models.py", *args], cwd=ROOT,
                          capture_output=True, text=True)


def test_two_models_side_by_side(tmp_path):
    if not SMALL.is_file():
        subprocess.run(["make", "out/small-w8a8.intsim"], cwd=ROOT, check=True)
    twin = tmp_path / "twin.intsim"
    shutil.copy(SMALL, twin)
    r = _run(str(SMALL), str(twin), "--rounds", "2", "--prefill", "8", "--decode", "2")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert [m["model"] for m in d["models"]] == [str(SMALL), str(twin)]
    assert d["models"][0]["prefill_ratio_median"] == 1.0 and d["models"][0]["decode_ratio_median"] == 1.0
    for m in d["models"]:
        assert m["fused"] and m["file_mib"] > 1 and m["prefill_tok_s_best"] >= m["prefill_tok_s_median"] > 0


def test_missing_model_refused_by_name(tmp_path):
    r = _run(str(tmp_path / "none.intsim"))
    assert r.returncode == 2 and "none.intsim: no such model file" in r.stderr
