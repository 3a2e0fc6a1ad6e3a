"""cocotb test of rtl/di_exp.v against golden vectors read from their hex files.

Environment (set by rtl/run.py): ``RTL_VECTORS`` = dump directories separated by ``:``
(each with a manifest.json in intsim.golden's structure), ``RTL_RESULT`` = a JSON file
this test writes its verdict to.  For every op of kind ``di_exp`` in every manifest, the
stimulus (``in.x`` per element, ``in.scale`` m and k per row) and the expected values
(``out`` per element, ``out.T`` per row) are read from the ``.hex`` files per
docs/GOLDEN_FORMAT.md 2.1 (each line exactly W/4 lowercase hex digits, two's complement
when signed; the sha256 in the manifest is checked), driven into the combinational DUT one
element at a time, and compared exactly.  The first wrong element is reported with its
op, index, inputs, expected and obtained values.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import cocotb
from cocotb.triggers import Timer

ROUND_CODE = {"floor": 0, "half_up": 1, "half_even": 2, "half_away": 3}


class VectorError(Exception):
    """A golden file that breaks the hex contract or its manifest."""


def read_hex(path: Path, comp: dict) -> list:
    """The values of one tensor component from its .hex file (GOLDEN_FORMAT.md 2.1)."""
    W, signed = comp["word_bits"], comp["signed"]
    f = comp["files"]["hex"]
    data = (path / f["path"]).read_bytes()
    if hashlib.sha256(data).hexdigest() != f["sha256"]:
        raise VectorError(f"{f['path']}: sha256 differs from the manifest")
    n = 1
    for s in comp["shape"]:
        n *= s
    lines = data.split(b"\n")
    if lines[-1] != b"" or len(lines) - 1 != n:
        raise VectorError(f"{f['path']}: expected {n} newline-terminated lines, got {len(lines) - 1}")
    out = []
    for i, line in enumerate(lines[:-1]):
        if len(line) != W // 4 or any(c not in b"0123456789abcdef" for c in line):
            raise VectorError(f"{f['path']} line {i + 1}: {line!r} is not {W // 4} lowercase hex digits")
        v = int(line, 16)
        if signed and v >= 1 << (W - 1):
            v -= 1 << W
        out.append(v)
    return out


def load_cases(dirs: list) -> list:
    """[(dump, op name, rounding, shape, x, m, k, out, T)] for every di_exp op."""
    cases = []
    for d in dirs:
        d = Path(d)
        man = json.loads((d / "manifest.json").read_text())
        tensors = {t["name"]: t for t in man["tensors"]}
        for op in man["ops"]:
            if op["kind"] != "di_exp":
                continue
            spec = op["params"]["spec"]["spec"]
            rounding = (man["model"]["spec"] if spec == "model" else spec)["rounding"]
            ins = {tensors[n]["arg"]: tensors[n] for n in op["inputs"]}
            outs = {tensors[n]["arg"]: tensors[n] for n in op["outputs"]}
            x = read_hex(d, ins["x"])
            m = read_hex(d, ins["scale"]["scale"]["m"])
            k = read_hex(d, ins["scale"]["scale"]["k"])
            out = read_hex(d, outs["out"])
            T = read_hex(d, outs["T"])
            cases.append((d.name, op["name"], rounding, tuple(ins["x"]["shape"]), x, m, k, out, T))
    return cases


def _index(flat: int, shape: tuple) -> tuple:
    idx = []
    for s in reversed(shape):
        idx.append(flat % s)
        flat //= s
    return tuple(reversed(idx))


@cocotb.test()
async def di_exp_matches_golden_vectors(dut):
    dirs = [p for p in os.environ["RTL_VECTORS"].split(":") if p]
    result_path = os.environ.get("RTL_RESULT")
    cases = load_cases(dirs)
    assert cases, f"no di_exp ops in {dirs}"
    checked, wrong, first = 0, 0, None
    for dump, name, rounding, shape, x, m, k, out, T in cases:
        C = shape[-1]
        dut.rnd.value = ROUND_CODE[rounding]
        for i, xv in enumerate(x):
            row = i // C
            dut.x.value = xv & (2 ** 64 - 1)
            dut.m.value = m[row]
            dut.k.value = k[row] & (2 ** 32 - 1)
            await Timer(1, unit="ns")
            got, got_t = dut.out.value.to_unsigned(), dut.t_unit.value.to_unsigned()
            checked += 1
            if got != out[i] or got_t != T[row]:
                wrong += 1
                if first is None:
                    first = {"dump": dump, "op": name, "index": list(_index(i, shape)), "flat": i,
                             "x": xv, "m": m[row], "k": k[row], "rounding": rounding,
                             "expected": {"out": out[i], "T": T[row]}, "got": {"out": got, "T": got_t}}
    verdict = {"checked": checked, "wrong": wrong, "first": first,
               "ops": [f"{c[0]}/{c[1]}" for c in cases]}
    if result_path:
        Path(result_path).write_text(json.dumps(verdict, indent=1) + "\n")
    if first is not None:
        f = first
        raise AssertionError(
            f"{wrong} of {checked} elements wrong; first wrong element: {f['dump']}/{f['op']} index "
            f"{tuple(f['index'])} (flat {f['flat']}), x={f['x']} m={f['m']} k={f['k']} "
            f"({f['rounding']}): expected out={f['expected']['out']} T={f['expected']['T']}, "
            f"got out={f['got']['out']} T={f['got']['T']}")
    dut._log.info("all %d elements of %d di_exp ops match", checked, len(cases))
