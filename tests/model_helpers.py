"""What the model-option tests share (head_a_bits, a_group, down_rot, pv_bits, --rotate):
converting the embedded small model on the command line, rewriting a model file's widths
header, comparing two forwards' logits bit for bit, and an op-aware tap that keeps every
op call."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

ROOT = Path(__file__).resolve().parents[1]


def convert_small(out: Path, *args) -> subprocess.CompletedProcess:
    """``intsim convert models/small --out OUT ARGS...`` in a subprocess, output captured."""
    return subprocess.run([sys.executable, "-m", "intsim_app", "convert", "models/small", "--out", str(out),
                           *args], cwd=ROOT, capture_output=True, text=True)


def convert_variants(folder: Path, variants: dict) -> dict:
    """Each ``name: [args]`` of ``variants`` converted from the small model into
    ``folder/name.intsim`` (the conversion must succeed); returns ``{name: path}``."""
    out = {}
    for name, args in variants.items():
        path = folder.joinpath(f"{name}.intsim")
        r = convert_small(path, *args)
        assert r.returncode == 0, r.stderr
        out[name] = path
    return out


def rewrite_widths(src: Path, dst: Path, **widths) -> Path:
    """A copy of model file ``src`` at ``dst`` whose header's ``widths`` has ``widths``
    written over it (tensors unchanged): for the loader's refusals."""
    with safe_open(str(src), framework="np") as f:
        t = {k: f.get_tensor(k) for k in f.keys()}
        h = json.loads(f.metadata()["intsim"])
    h["widths"].update(widths)
    save_file(t, str(dst), metadata={"intsim": json.dumps(h)})
    return dst


def same(a, b) -> bool:
    """Two forwards' ``(logits, Dyadic)`` equal: every integer and both scale arrays."""
    return (np.array_equal(a[0], b[0]) and np.array_equal(a[1].m, b[1].m)
            and np.array_equal(a[1].k, b[1].k))


class Calls:
    """A tap that keeps every op call: ``calls`` in order as (name, OpCall), ``by_name`` the
    last call of each name."""
    takes_op_calls = True

    def __init__(self):
        self.calls = []
        self.by_name = {}

    def __call__(self, name, value, call):
        self.calls.append((name, call))
        self.by_name[name] = call
