"""``intsim demo``: the one-layer synthetic model through ``intsim.llama.forward`` (the one
graph), Numba == reference bit for bit, every op tabulated, the printed hashes recomputable."""
import ast
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from converters.synthetic import make_demo_model
from intsim import demo
from intsim_app import demo as app_demo
from intsim.demo import run_chain
from intsim.llama import forward
from intsim.options import Spec
from intsim.qtensor import Dyadic, QTensor

#: every op of a one-layer model without norm weights, in execution order
#: (docs/GOLDEN_FORMAT.md section 4), then the demo's next-token argmax
OPS = ["embed", "layers.0.attn_norm"] + [f"layers.0.attn.{n}" for n in (
    "q_proj", "k_proj", "v_proj", "q_rope", "k_rope", "q", "k", "qk", "scores", "softmax", "p_v",
    "p", "pv", "heads", "o_proj")] + [f"layers.0.{n}" for n in (
        "attn_residual", "ffn_norm", "gate", "up", "swiglu", "down", "residual")] + [
    "final_norm", "logits", "argmax"]


def _arrays(t):
    return (t.q, t.zp, t.scale.m, t.scale.k) if isinstance(t, QTensor) else (t,)


@pytest.mark.parametrize("spec", [Spec(), Spec.paper(), Spec(rounding="half_even", m_bits=6)],
                         ids=["default", "paper", "half_even_m6"])
def test_chain_kernel_equals_reference(spec):
    model = make_demo_model(3, spec)
    ids = np.random.default_rng(3).integers(0, model.config.vocab_size, 9)
    a = run_chain(model, ids, "numba")
    b = run_chain(model, ids, "reference")
    assert [n for n, _ in a] == [n for n, _ in b] == OPS
    for (name, x), (_, y) in zip(a, b):
        for u, v in zip(_arrays(x), _arrays(y)):
            assert u.dtype.kind in "iu" and u.dtype == v.dtype, name
            assert np.array_equal(u, v), f"first divergent op: {name}"
    taps = dict(a)       # the model's spec reaches the ops: DI-ClippedSoftmax's output width
    assert taps["layers.0.attn.softmax"].bits == spec.softmax_p_out


def test_chain_is_deterministic_and_seed_sensitive():
    model = make_demo_model(0)
    ids = np.arange(6)
    d1 = [demo.digest(t) for _, t in run_chain(model, ids)]
    assert d1 == [demo.digest(t) for _, t in run_chain(model, ids)]
    d2 = [demo.digest(t) for _, t in run_chain(model, ids[::-1].copy())]
    assert d1[0] != d2[0] and d1[-2] != d2[-2]
    d3 = [demo.digest(t) for _, t in run_chain(make_demo_model(1), ids)]
    assert d1[2] != d3[2] and d1[-2] != d3[-2]


class _AllOps(list):
    """The test's own op-aware tap: (name, output) of every op."""
    takes_op_calls = True

    def __call__(self, name, value, call):
        self.append((name, value))


def _sha(*arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


def test_cli_demo_json_is_stable_and_recomputable(capsys):
    """The printed hashes are the reference backend's integers, hashed here (q, zp, m, k
    bytes in that order); the argmax row is NumPy's argmax (first maximum = lowest id)."""
    out = subprocess.run([sys.executable, "-m", "intsim_app", "demo", "--json", "--seed", "1"],
                         capture_output=True, text=True, check=True).stdout
    assert app_demo.main(make_demo_model(1), seed=1, json_out=True) == 0   # a second run, in process
    assert capsys.readouterr().out == out
    obj = json.loads(out)
    model = make_demo_model(1)
    ids = np.random.default_rng(1).integers(0, model.config.vocab_size, 12)
    assert obj["seed"] == 1 and obj["tokens"] == ids.tolist()
    taps = _AllOps()
    logits, _ = forward(model, ids, backend="reference", tap=taps)
    nxt = np.argmax(logits, axis=1).astype(np.int64)
    T = ids.size
    taps.append(("argmax", QTensor(nxt[:, None], np.zeros(T, np.int32), Dyadic(
        np.ones(T, np.int64), np.zeros(T, np.int64)), 9, True)))      # 9 bits: ids < 256
    assert [r["op"] for r in obj["ops"]] == [n for n, _ in taps] == OPS
    for r, (name, t) in zip(obj["ops"], taps):
        want = _sha(t.q, t.zp, t.scale.m, t.scale.k) if isinstance(t, QTensor) else _sha(t)
        q = t.q if isinstance(t, QTensor) else t
        assert (r["sha256"], r["shape"], r["dtype"]) == (want, list(q.shape), str(q.dtype)), name
        if isinstance(t, QTensor) and name != "argmax":
            assert (r["m0"], r["k0"], r["bits"], r["signed"]) == (
                int(t.scale.m.flat[0]), int(t.scale.k.flat[0]), t.bits, t.signed), name


def test_cli_demo_table_and_help():
    out = subprocess.run([sys.executable, "-m", "intsim_app", "demo", "--seed", "2"],
                         capture_output=True, text=True, check=True).stdout
    lines = out.splitlines()
    assert [ln.split()[0] for ln in lines[2:-1]] == OPS and lines[-1].startswith("next tokens")
    for cmd in (["--help"], ["demo", "--help"], ["bench", "--help"]):
        r = subprocess.run([sys.executable, "-m", "intsim_app", *cmd], capture_output=True, text=True)
        assert r.returncode == 0 and "usage" in r.stdout.lower()


def test_demo_module_does_not_import_converters():
    """The integer runtime takes the model built; the float side builds it."""
    tree = ast.parse(Path(demo.__file__).read_text())
    names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert not [m for m in names if m.split(".")[0] == "converters"]
