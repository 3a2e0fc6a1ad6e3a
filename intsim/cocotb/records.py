"""The records a testbench drives: the ops of one kind (or named ops / stages) of a golden
dump or a stress suite, read through intsim.golden's reader (manifest checked, each
selected file's sha256 checked), with every input and output component addressable by a
*field* name.  Pure Python and NumPy: no simulator needed."""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import IntsimError
from ..golden.dump import is_stress, load_manifest, read_component, tensor_components
from ..golden.ops import spec_of
from ..hashing import file_sha256
from ..options import Spec


class NoRecords(IntsimError):
    """A dump with no record matching the selection (the message names the dump and its kinds)."""


def field_name(t: dict, component: str) -> str:
    """The field of one component of a manifest tensor, as its file stem ends:
    ``in.<arg>`` / ``out`` / ``out.<arg>``, then ``.<component>`` for a QTensor's zero
    point and scale (``zp``, ``m``, ``k``) or a Dyadic's ``m`` / ``k``."""
    base = f"in.{t['arg']}" if t["role"] == "in" else ("out" if t["arg"] == "out" else f"out.{t['arg']}")
    return base + (f".{component}" if component else "")


@dataclass
class Record:
    """One op of a dump: its manifest entry, spec, and every component as an integer
    array keyed by field name (:func:`field_name`), with the manifest entry each came from."""
    dump: Path
    manifest: dict = field(repr=False)
    op: dict = field(repr=False)
    spec: Spec | None
    values: dict = field(repr=False)          # field -> np.ndarray (stored dtype, manifest shape)
    entries: dict = field(repr=False)         # field -> (tensor entry, component, component entry)

    @property
    def name(self) -> str:
        return self.op["name"]

    @property
    def kind(self) -> str:
        return self.op["kind"]

    @property
    def index(self) -> int:
        return self.op["index"]

    @property
    def params(self) -> dict:
        """The op's parameters as the manifest records them (e.g. a primitive's ``rounding``)."""
        return self.op["params"]

    def __getitem__(self, fname: str) -> np.ndarray:
        if fname not in self.values:
            raise IntsimError(f"op '{self.name}' ({self.kind}) has no field '{fname}'; its fields: "
                              f"{', '.join(self.values)}")
        return self.values[fname]

    def declared(self, fname: str) -> tuple:
        """(bits, signed) the manifest declares for a field."""
        t, comp, c = self.entries[fname]
        if comp == "" and t["type"] != "dyadic":
            return int(t["bits"]), bool(t["signed"])
        return int(c.get("bits", np.dtype(c["dtype"]).itemsize * 8)), bool(c.get("signed", True))


def _check_files(d: Path, tensors: list) -> None:
    """The sha256 of every file a selected tensor lists (the dump's integrity check,
    limited to what is driven)."""
    bad, seen = [], set()
    for t in tensors:
        for comp, c in tensor_components(t):
            for e in c["files"].values():
                if e["path"] in seen:
                    continue
                seen.add(e["path"])
                p = d.joinpath(e["path"])
                if not p.is_file():
                    bad.append(f"tensor '{t['name']}': file {e['path']} is missing")
                elif file_sha256(p) != e["sha256"]:
                    bad.append(f"tensor '{t['name']}': {e['path']} differs from its manifest sha256 "
                               f"(file changed after the dump)")
    if bad:
        raise IntsimError(f"{d}: {len(bad)} file problem(s): " + "; ".join(bad[:4]) +
                          ("" if len(bad) <= 4 else f"; and {len(bad) - 4} more"))


def _matches(op: dict, kind, ops) -> bool:
    if kind is not None and op["kind"] != kind:
        return False
    if ops is not None:
        return any(op["name"] == p or str(op["index"]) == p or fnmatch.fnmatchcase(op["name"], p) for p in ops)
    return True


def load_records(dump, *, kind: str | None = None, ops=None, select=None) -> list:
    """The records of ``dump`` (a folder written by ``intsim golden`` or ``intsim stress``)
    to drive through a design, in execution order.

    ``kind``: only ops of this kind (``"di_exp"``, ``"requant_rows"``, ``"isqrt"``, ...;
    a stage record has the kind of the function it recomputes).  ``ops``: only these op
    names, indices or ``fnmatch`` patterns (``"layers.*.attn.softmax.exp"``).
    ``select``: a predicate on :class:`Record` (e.g. the shapes a design supports).
    Refusal records of a stress suite (``expect_error``: no outputs) are left out.
    Raises ``NoRecords`` (an IntsimError) naming the dump and its kinds when nothing
    matches, ``IntsimError`` when a file is bad."""
    d = Path(dump)
    man = load_manifest(d)
    if isinstance(ops, str):
        ops = [ops]
    tensors = {t["name"]: t for t in man["tensors"]}
    chosen = [o for o in man["ops"] if o["outputs"] and _matches(o, kind, ops)]
    if not chosen:
        what = " and ".join(x for x in (kind and f"kind '{kind}'", ops and f"ops {ops}") if x) or "outputs"
        kinds = sorted({o["kind"] for o in man["ops"]})
        raise NoRecords(f"{d}: no op with {what} in this {'stress suite' if is_stress(man) else 'dump'} "
                          f"(its kinds: {', '.join(kinds)})")
    _check_files(d, [tensors[n] for o in chosen for n in o["inputs"] + o["outputs"]])
    out = []
    for o in chosen:
        values, entries = {}, {}
        for n in o["inputs"] + o["outputs"]:
            t = tensors[n]
            for comp, c in tensor_components(t):
                f = field_name(t, comp)
                values[f] = read_component(d, c, f"tensor '{t['name']}'" + (f" {comp}" if comp else ""))
                entries[f] = (t, comp, c)
        try:
            spec = spec_of(man, o) if "spec" in o["params"] else None
        except IntsimError:
            spec = None
        rec = Record(d, man, o, spec, values, entries)
        if select is None or select(rec):
            out.append(rec)
    if not out:
        raise NoRecords(f"{d}: the select predicate kept none of the {len(chosen)} matching op(s)")
    return out
