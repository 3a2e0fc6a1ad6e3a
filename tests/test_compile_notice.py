"""The compile notice (intsim.compile_notice) and what a cold ``intsim run`` compiles.

Each subprocess gets its own empty Numba cache (NUMBA_CACHE_DIR under tmp_path), so the
first run really compiles and the second, on the same cache, really does not.
"""
import io
import json
import os
import subprocess
import sys
from pathlib import Path

from numba import njit

from converters.convert import convert
from intsim import compile_notice
from intsim.compile_notice import NOTICE, announce_compiles, is_intsim
from intsim.fixedpoint import isqrt_nb
from tiny_llama import make_tiny_hf

ROOT = Path(__file__).resolve().parents[1]


def py(code: str, cache: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          cwd=ROOT, check=True)


KERNEL = """
from intsim.compile_notice import announce_compiles
announce_compiles()
import numpy as np
from intsim.fixedpoint import isqrt
print(isqrt(np.array([10, 17, 2 ** 40], dtype=np.int64)).tolist())
"""


def test_notice_on_a_cold_cache_only(tmp_path):
    """A small kernel: the notice when it compiles, nothing when the cache has it."""
    cold = py(KERNEL, tmp_path)
    warm = py(KERNEL, tmp_path)
    assert cold.stderr.count(NOTICE) == 1
    assert NOTICE not in warm.stderr
    assert cold.stdout == warm.stdout == "[3, 4, 1048576]\n"      # stdout untouched
    assert any(tmp_path.rglob("*.nbi"))                             # the cache was written


def test_foreign_compiles_say_nothing():
    """Only intsim's own functions count: a compile of another module's function (here
    this test's, never cached) writes nothing."""
    out = io.StringIO()
    announce_compiles(out)
    try:
        @njit
        def twice(x):
            return 2 * x

        assert twice(21) == 42 and out.getvalue() == ""
    finally:
        compile_notice._listener.armed = False
    assert not is_intsim(twice) and is_intsim(isqrt_nb) and not is_intsim(None)


RUN = """
import json, sys
from numba.core import event
names = []
class Rec(event.Listener):
    def on_start(self, e):
        d = e.data["dispatcher"]
        names.append(d.py_func.__module__ + "." + d.py_func.__qualname__)
    def on_end(self, e):
        pass
event.register("numba:compile", Rec())
from intsim_app.cli import main
rc = main(["run", sys.argv[1], "--prompt", "a single man", "--max-new-tokens", "3", "--json"])
open(sys.argv[2], "w").write(json.dumps(names))
sys.exit(rc)
"""


def test_cold_run_announces_and_compiles_the_row_path_only(tmp_path):
    """``intsim run`` on an empty cache: one notice on stderr, stdout one JSON object,
    and the short prompt compiles the fused forward's row path only (no tiled GEMM, no
    parallel region: intsim.fastpath.choose_path); the second run, on the same cache,
    compiles none of intsim's functions and says nothing."""
    src = make_tiny_hf(tmp_path / "hf", n_layers=1, dim=64, n_heads=4, n_kv_heads=2,
                       vocab_size=300, max_pos=64)
    model = convert(src, tmp_path / "tiny.intsim")
    cache = tmp_path / "numba"
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache))
    runs = []
    for i in range(2):
        rec = tmp_path / f"compiled{i}.json"
        r = subprocess.run([sys.executable, "-c", RUN, str(model), str(rec)], capture_output=True,
                           text=True, env=env, cwd=ROOT)
        assert r.returncode == 0, r.stderr
        runs.append((r, [n for n in json.loads(rec.read_text()) if n.startswith("intsim.")]))
    (cold, cold_names), (warm, warm_names) = runs
    assert cold.stderr.count(NOTICE) == 1 and NOTICE not in warm.stderr
    assert json.loads(cold.stdout)["new_tokens"] == json.loads(warm.stdout)["new_tokens"]
    assert "intsim.fastpath._forward_nb" in cold_names
    tiled = [n for n in cold_names if "gemm_acc" in n or n.endswith("_par")]
    assert tiled == [], tiled
    assert warm_names == []
