"""Golden vectors for the DI-Exp RTL check (rtl/di_exp.v), in the documented hex format.

Writes, under OUT (default rtl/build/vectors):

* ``golden-default/``, ``golden-paper/``: ``intsim golden`` dumps (intsim.golden.export_golden,
  the exporter behind the command) of a seeded synthetic 2-layer model, one prefill of
  8 tokens, under the default spec (16-bit softmax input) and under ``Spec.paper()``
  (8-bit input).  The RTL test uses their DI-Exp stage records
  (``<layer>.attn.softmax.exp``: inputs ``x`` and ``scale``, outputs ``out`` and ``out.T``).
* ``edges/``: DI-Exp vectors beyond what a softmax produces, in the same layout and
  manifest structure (one op per tie rule): T = 1 (k <= 0), the normalization path
  (j > 0) with exact ties of the x' rounding, m = 1 and m = 2^31 - 1, x = 0, -1 and
  -(2^62 - 1), q >= 63.  Expected values from ``intsim.exp.di_exp`` (reference backend).

Every file follows docs/GOLDEN_FORMAT.md section 2.1: one element per line in C order,
W = the smallest of 8/16/32/64 holding the tensor's bits, exactly W/4 lowercase hex digits,
two's complement for signed values.  Run: ``python rtl/make_vectors.py [OUT]``.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from converters.synthetic import make_model   # noqa: E402
from intsim.exp import di_exp                  # noqa: E402
from intsim.options import Spec                # noqa: E402
from intsim.qtensor import Dyadic              # noqa: E402

IDS = np.array([1, 17, 42, 5, 99, 23, 64, 8])
ROUNDINGS = ("floor", "half_up", "half_even", "half_away")


# ------------------------------------------------------------------ the hex contract

def word_bits(bits: int) -> int:
    return next(w for w in (8, 16, 32, 64) if bits <= w)


def hex_text(a: np.ndarray, bits: int, signed: bool) -> str:
    """One element per line, C order, W/4 lowercase digits, two's complement."""
    W = word_bits(bits)
    lines = []
    for v in np.asarray(a).reshape(-1).tolist():
        lo, hi = (-(1 << (W - 1)), (1 << (W - 1)) - 1) if signed else (0, (1 << W) - 1)
        assert lo <= v <= hi, (v, W, signed)
        lines.append(format(v & ((1 << W) - 1), f"0{W // 4}x"))
    return "".join(line + "\n" for line in lines)


def _width(a: np.ndarray) -> int:
    """Smallest two's-complement width holding every value (at least 2)."""
    return max(2, max((abs(int(v)).bit_length() for v in np.asarray(a).reshape(-1)), default=0) + 1)


class _Dump:
    """A minimal dump with intsim.golden's manifest structure (ops, tensors, files)."""

    def __init__(self, out: Path, spec: Spec):
        self.out, self.spec = out, spec
        self.ops, self.tensors = [], []
        out.mkdir(parents=True, exist_ok=True)

    def _file(self, stem: str, a: np.ndarray, bits: int) -> dict:
        W = word_bits(bits)
        a = np.asarray(a).astype(f"int{W}")
        np.save(self.out / f"{stem}.npy", a)
        text = hex_text(a, bits, True)
        (self.out / f"{stem}.hex").write_text(text)
        return {"shape": list(a.shape), "dtype": f"int{W}", "bits": bits, "signed": True,
                "word_bits": W, "files": {"hex": {"path": f"{stem}.hex",
                                                  "sha256": hashlib.sha256(text.encode()).hexdigest()}}}

    def array(self, stem, op, role, arg, a) -> str:
        t = {"name": stem, "op": op, "role": role, "arg": arg, "type": "array"}
        t.update(self._file(stem, a, _width(a)))
        self.tensors.append(t)
        return stem

    def dyadic(self, stem, op, arg, s: Dyadic) -> str:
        t = {"name": stem, "op": op, "role": "in", "arg": arg, "type": "dyadic",
             "scale": {"m": self._file(f"{stem}.m", s.m, 32), "k": self._file(f"{stem}.k", s.k, 32)}}
        self.tensors.append(t)
        return stem

    def di_exp_op(self, name: str, x: np.ndarray, scale: Dyadic, spec: Spec) -> None:
        out, T = di_exp(x, scale, spec, backend="reference")
        i = len(self.ops)
        stem = f"{i:04d}_{name}"
        ins = [self.array(f"{stem}.in.x", name, "in", "x", x), self.dyadic(f"{stem}.in.scale", name, "scale", scale)]
        outs = [self.array(f"{stem}.out", name, "out", "out", out),
                self.array(f"{stem}.out.T", name, "out", "T", T)]
        self.ops.append({"index": i, "name": name, "kind": "di_exp", "stage_of": None,
                         "params": {"spec": {"spec": spec.to_dict()}}, "rounding": "floor",
                         "inputs": ins, "outputs": outs})

    def write(self) -> None:
        man = {"format": "intsim-golden", "format_version": 1,
               "generator": "rtl/make_vectors.py (edge cases of DI-Exp)",
               "model": {"spec": self.spec.to_dict()}, "ops": self.ops, "tensors": self.tensors}
        (self.out / "manifest.json").write_text(json.dumps(man, sort_keys=True, indent=1) + "\n")


# ------------------------------------------------------------------ the vector sets

def edge_rows():
    """(m, k, x row) triples; every row has 12 columns (the op's last axis)."""
    big = -(2 ** 62 - 1)
    rows = [
        (200, -3, [0, -1, -2, -1000, big, -5, -7, -9, -100, -64, -65, -3]),       # k <= 0: T = 1
        (1, 0, [0, -1, -2, -3, -62, -63, -64, -200, big, -4, -5, -6]),            # m = 1
        (2 ** 31 - 1, 20, [0, -1, -10, -100, -1000, -10 ** 6, big, -2, -3, -4, -5, -6]),
        (181, 10, [0, -1, -8, -15, -16, -17, -100, -500, -900, -1023, -2048, -4096]),
        (255, 17, [0, -1, -111, -1000, -12345, -54321, -65535, -99999, -2 ** 20, -3, -77, -4]),
        (128, 40, [0, -1, -(2 ** 20), -(2 ** 30), -(2 ** 33), -(2 ** 36) - 1, -(2 ** 40), big,
                   -12345678901, -2 ** 34 - 2 ** 33, -5, -2 ** 31]),               # j > 0
    ]
    # exact ties of x' = rnd(x / 2^j): k = 50, m = 200 -> m_f = 288, bitlen 9, j = 12
    j = 50 - 29 - 9
    rows.append((200, 50, [-(t << j) - (1 << (j - 1)) for t in range(0, 12)]))
    rows.append((200, 50, [-(t << j) - (1 << (j - 1)) + d for t, d in zip(range(3, 15), [1, -1] * 6)]))
    # ties at q = 1 (|x'| = T + t, T = 954437177 odd, t even): half_even and half_up differ
    T = 954437177
    rows.append((200, 50, [-((T + t) << j) - (1 << (j - 1)) for t in range(0, 24, 2)]))
    # q >= 63: T small and |x| large
    rows.append((200, 6, [-(i * 200) for i in range(58, 70)]))
    return rows


def write_edges(out: Path) -> None:
    rows = edge_rows()
    x = np.array([r[2] for r in rows], dtype=np.int64)
    scale = Dyadic(np.array([r[0] for r in rows], dtype=np.int64), np.array([r[1] for r in rows], dtype=np.int64))
    d = _Dump(out, Spec())
    for rule in ROUNDINGS:
        d.di_exp_op(f"edges.{rule}", x, scale, Spec(rounding=rule))
    d.write()


def write_golden(out: Path, spec: Spec, seed: int) -> None:
    from intsim.golden import export_golden
    model = make_model(seed=seed, n_layers=2, spec=spec)
    export_golden(model, IDS, out, backend="reference", force=True)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    out = Path(argv[0]) if argv else ROOT / "rtl" / "build" / "vectors"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    write_golden(out / "golden-default", Spec(), seed=0)
    write_golden(out / "golden-paper", Spec.paper(), seed=1)
    write_edges(out / "edges")
    print(f"vectors written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
