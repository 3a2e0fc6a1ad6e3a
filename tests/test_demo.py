"""The whole operator chain of ``intsim demo``: Numba == reference bit for bit, integer only."""
import json
import subprocess
import sys

import numpy as np
import pytest

from converters.synthetic import make_block
from intsim.demo import digest, run_chain
from intsim.options import Spec


@pytest.mark.parametrize("spec", [Spec(), Spec.paper(), Spec(rounding="half_even", m_bits=6)],
                         ids=["default", "paper", "half_even_m6"])
def test_chain_kernel_equals_reference(spec):
    blk = make_block(3)
    ids = np.random.default_rng(3).integers(0, blk.vocab, 9)
    a = run_chain(blk, ids, spec, "numba")
    b = run_chain(blk, ids, spec, "reference")
    assert [n for n, _ in a] == [n for n, _ in b]
    for (name, x), (_, y) in zip(a, b):
        assert x.q.dtype.kind in "iu" and x.scale.m.dtype.kind == "i", name
        assert digest(x) == digest(y), f"first divergent op: {name}"


def test_chain_is_deterministic_and_seed_sensitive():
    blk = make_block(0)
    ids = np.arange(6)
    d1 = [digest(t) for _, t in run_chain(blk, ids)]
    assert d1 == [digest(t) for _, t in run_chain(blk, ids)]
    d2 = [digest(t) for _, t in run_chain(blk, ids[::-1].copy())]
    assert d1[0] != d2[0] and d1[-2] != d2[-2]


def test_cli_demo_json_and_help():
    out = subprocess.run([sys.executable, "-m", "intsim_app", "demo", "--json", "--seed", "1"],
                         capture_output=True, text=True, check=True).stdout
    obj = json.loads(out)
    assert [r["op"] for r in obj["ops"]][0] == "embed" and obj["ops"][-1]["op"] == "argmax"
    for cmd in (["--help"], ["demo", "--help"], ["bench", "--help"]):
        r = subprocess.run([sys.executable, "-m", "intsim_app", *cmd], capture_output=True, text=True)
        assert r.returncode == 0 and "usage" in r.stdout.lower()
