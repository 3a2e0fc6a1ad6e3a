"""Recording a forward pass: the :class:`Recorder` tap, the writer behind it, and
:func:`export_golden` (``intsim golden``)."""
from __future__ import annotations

import inspect
import re
import zlib
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..errors import IntsimError
from ..fixedpoint import _check_backend
from ..matmul import QWeight
from ..options import Spec
from ..qtensor import Dyadic, QTensor
from .formats import (FORMAT, FORMAT_VERSION, FORMATS, GENERATOR, INDEX_DIGITS, MANIFEST, hex_buffer,
                      hex_size, manifest_text, npy_header, pack32_lines, sha256_of, txt_lines)
from .ops import KINDS, model_params, model_tensors_sha256, recorded_params, rounding_of
from .stages import STAGES, stage_call
from .values import CALL_DTYPE_DEFAULT, QWEIGHT_ARRAYS, components, jsonable, split_result


class _Writer:
    """Writes components and remembers what it wrote, so that an input equal to a tensor
    already written points to those files (``same_as``) instead of writing them again.

    The producer (the forward's thread) only frames each file; the writer threads make
    the hex text, hash and write it.  Content is recognised by a cheap pre-key (dtype,
    shape, CRC-32 of the .npy bytes) and confirmed by sha256 equality, so a CRC collision
    writes a new file instead of pointing at another tensor's."""

    #: bytes queued for the writer threads before the producer waits for them
    QUEUE_LIMIT = 1 << 29

    def __init__(self, out_dir: Path, formats: tuple, hex_pack: bool):
        from concurrent.futures import ThreadPoolExecutor
        self.dir = out_dir
        self.formats = formats
        self.hex_pack = hex_pack
        self.tensors = {}        # pre-key of a whole tensor -> [(name, [component entries], [_Comp])]
        self.comps = {}          # pre-key of one component -> [(tensor name, entry, _Comp)]
        self.bytes_written = 0
        self.pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="golden-write")
        self.pending = []        # (file entry, future of its sha256)
        self.queued = 0

    def _write(self, name: str, parts) -> str:
        if callable(parts):
            parts = parts()
        try:
            with open(self.dir.joinpath(name), "wb") as f:
                for p in parts:
                    f.write(p)
        except OSError as e:
            raise IntsimError(f"{self.dir.joinpath(name)}: cannot write: {e.strerror or e}") from e
        return sha256_of(*parts)

    def _put(self, name: str, parts, nbytes: int) -> tuple:
        """Queue a file of ``nbytes`` bytes for writing and hashing (``parts``: buffers,
        or a function that makes them in the writer thread); returns its manifest entry,
        whose sha256 is filled in by :meth:`finish`, and the future of that sha256."""
        entry = {"path": name, "sha256": None}
        fut = self.pool.submit(self._write, name, parts)
        self.pending.append((entry, fut))
        self.bytes_written += nbytes
        self.queued += nbytes
        if self.queued > self.QUEUE_LIMIT:
            self._drain()
        return entry, fut

    def _drain(self) -> None:
        for entry, fut in self.pending:
            entry["sha256"] = fut.result()
        self.pending, self.queued = [], 0

    def finish(self) -> None:
        try:
            self._drain()
        finally:
            self.pool.shutdown(wait=True)

    @staticmethod
    def _find(table: dict, pre, comps: list):
        """The owner of the content of ``comps`` under pre-key ``pre``: the last output
        registered with that content, else the input that first wrote it (None if new)."""
        cands = table.get(pre)
        if not cands:
            return None
        want = [c.sha() for c in comps]
        first_input = None
        for cand in reversed(cands):
            if [_sha_of(x) for x in cand[2]] == want:
                if cand[3]:
                    return cand
                first_input = cand
        return first_input

    def tensor(self, name: str, typ: str, comps: list, is_output: bool) -> list:
        """Manifest entries of the components ``[(comp, arr, bits, signed)]`` of tensor
        ``name``; outputs are always written, inputs only when their content is new."""
        raw = [_Comp(comp, arr, bits, signed) for comp, arr, bits, signed in comps]
        tpre = (typ,) + tuple(c.pre for c in raw)
        if not is_output:
            hit = self._find(self.tensors, tpre, raw)
            if hit is not None:
                return [{**e, "same_as": hit[0]} for e in hit[1]]
        entries, shas = [], []
        for c in raw:
            arr = c.arr
            entry = {"shape": list(arr.shape), "dtype": arr.dtype.name, "bits": c.bits, "signed": c.signed,
                     "word_bits": arr.dtype.itemsize * 8}
            if not is_output:
                hit = self._find(self.comps, c.pre, [c])
                if hit is not None:
                    entries.append({**entry, "files": hit[1]["files"], "same_as": hit[0]})
                    shas.append(c.sha())
                    continue
            stem = name + (f".{c.comp}" if c.comp else "")
            files = {}
            files["npy"], fut = self._put(f"{stem}.npy", (c.hdr, c.body), len(c.hdr) + len(c.body))
            c.written(fut)
            if "hex" in self.formats:
                files["hex"], _ = self._put(f"{stem}.hex", _hex_parts(arr), hex_size(arr))
            if "txt" in self.formats:
                text = txt_lines(arr)
                files["txt"], _ = self._put(f"{stem}.txt", (text,), len(text))
            if self.hex_pack and c.bits <= 4:
                text, lane, words = pack32_lines(arr, c.bits)
                files["pack32"], _ = self._put(f"{stem}.pack32.hex", (text,), len(text))
                files["pack32"].update(lane_bits=lane, words=words)
            entry["files"] = files
            entries.append(entry)
            shas.append(c.sha_handle())
            self.comps.setdefault(c.pre, []).append((name, entry, [c.sha_handle()], is_output))
        self.tensors.setdefault(tpre, []).append((name, entries, shas, is_output))
        return entries


def _sha_of(x) -> str:
    """A sha256 string, or the future of one."""
    return x if isinstance(x, str) else x.result()


class _Comp:
    """One component's .npy framing, its pre-key (dtype, shape, CRC-32 of the .npy bytes)
    and, on demand, its sha256: the written file's, or computed here for a lookup.  The
    tables keep only the sha (or its future), never the array."""
    __slots__ = ("comp", "arr", "bits", "signed", "hdr", "body", "pre", "_sha")

    def __init__(self, comp, arr, bits, signed):
        self.comp, self.arr, self.bits, self.signed = comp, arr, bits, signed
        self.hdr = npy_header(arr)
        self.body = memoryview(arr).cast("B") if arr.size else b""
        self.pre = (arr.dtype.str, arr.shape, zlib.crc32(self.body, zlib.crc32(self.hdr)))
        self._sha = None

    def written(self, fut) -> None:
        if self._sha is None:
            self._sha = fut

    def sha_handle(self):
        return self._sha if self._sha is not None else self.sha()

    def sha(self) -> str:
        if self._sha is None:
            self._sha = sha256_of(self.hdr, self.body)
        return _sha_of(self._sha)


def _hex_parts(arr: np.ndarray):
    return lambda: (hex_buffer(arr),)


@dataclass(frozen=True)
class OpRecord:
    index: int
    name: str
    kind: str
    stage_of: str | None


class Recorder:
    """The tap of a golden export: ``forward(..., tap=Recorder(...))``.

    ``forward`` calls it as ``tap(name, value, call)`` with ``call`` an
    ``intsim.llama.OpCall`` (the op function, its arguments and its result); it writes
    the inputs, the outputs and the op's parameters, numbering ops in execution order.
    ``layers``: None (everything) or the set of layer indices to write; the numbering
    is the full graph's either way.  ``model=None`` records op calls without a model
    (:meth:`record_call`, the stress suites of ``intsim stress``): every spec is written
    out, a QWeight argument is dumped as its arrays, and an array argument whose dtype is
    not int64 (or bool) carries its ``call_dtype``.
    """
    takes_op_calls = True

    def __init__(self, model, out_dir, formats=("npy", "hex"), hex_pack: bool = False,
                 stages: bool = True, layers=None):
        self.model = model
        self.params = {} if model is None else model_params(model)
        self.writer = _Writer(Path(out_dir), tuple(formats), hex_pack)
        self.stages = stages
        self.layers = None if layers is None else set(layers)
        self.ops, self.tensors = [], []
        self.index = 0
        self.recent = {}

    def _selected(self, name: str) -> bool:
        if self.layers is None:
            return True
        m = re.match(r"layers\.(\d+)\.", name)
        return bool(m) and int(m.group(1)) in self.layers

    def __call__(self, name, value, call=None):
        if call is None:
            raise IntsimError("Recorder: forward() passed no op call (an old forward?)")
        kind = getattr(call.fn, "__name__", "?")
        if KINDS.get(kind) is not call.fn:
            raise IntsimError(f"{name}: op function {kind!r} is not a known op kind (intsim.golden.KINDS)")
        stage_names = STAGES.get(kind, ()) if self.stages else ()
        if not self._selected(name):
            self.index += len(stage_names) + 1
            return
        args = inspect.signature(call.fn).bind(*call.args, **call.kwargs)
        args.apply_defaults()
        arguments = recorded_params(args.arguments)
        for st in stage_names:
            fn, a, result = stage_call(kind, st, arguments, call.result)
            self._record(f"{name}.{st}", fn, a, result, stage_of=name)
        self._record(name, call.fn, arguments, call.result, stage_of=None)

    def record_call(self, name: str, fn, arguments: dict, result, stage_of=None,
                    extra: dict | None = None) -> None:
        """Record one op call made outside ``forward`` (``arguments`` by parameter name,
        defaults included); ``extra`` adds keys to the op's manifest entry.  ``result``
        None records inputs only (a stress suite's refusal record, with ``expect_error``)."""
        self._record(name, fn, arguments, result, stage_of, extra)

    def _record(self, name, fn, arguments: dict, result, stage_of, extra=None):
        kind = fn.__name__
        i, self.index = self.index, self.index + 1
        stem0 = f"{str(i).zfill(INDEX_DIGITS)}_{name}"
        spec = None if self.model is None else self.model.spec
        params, inputs = {}, []
        for arg, v in arguments.items():
            if isinstance(v, QWeight) and id(v) not in self.params:
                params[arg] = {"qweight": {"bits": v.bits, "group_size": v.group_size, "k": v.k}}
                for part in QWEIGHT_ARRAYS:
                    if getattr(v, part) is not None:
                        inputs.append(self._tensor(f"{stem0}.in.{arg}.{part}", name, i, "in",
                                                   f"{arg}.{part}", getattr(v, part), None))
                continue
            if isinstance(v, (QTensor, Dyadic, np.ndarray)) or id(v) in self.params:
                if id(v) in self.params:
                    params[arg] = {"model": self.params[id(v)]}
                    continue
                inputs.append(self._tensor(f"{stem0}.in.{arg}", name, i, "in", arg, v, None))
            elif isinstance(v, Spec):
                params[arg] = {"spec": "model"} if v == spec else {"spec": v.to_dict()}
                if v != spec:
                    spec = v
            else:
                params[arg] = jsonable(v)
        outs, stats = ([], None) if result is None else split_result(kind, result)   # None: a refusal
        rounding = rounding_of(kind, spec, params)
        outputs = [self._tensor(f"{stem0}.out" + ("" if a == "out" else f".{a}"), name, i, "out", a,
                                v, rounding) for a, v in outs]
        op = {"index": i, "name": name, "kind": kind, "stage_of": stage_of,
              "params": params, "rounding": rounding, "stats": stats,
              "inputs": [t["name"] for t in inputs],
              "outputs": [t["name"] for t in outputs]}
        op.update(extra or {})
        self.ops.append(op)

    #: recent outputs kept by identity, so that an input that IS one of them (the same
    #: arrays, e.g. the norm output fed to q, k and v) needs no conversion or hashing
    RECENT = 24

    def _tensor(self, stem, op, index, role, arg, value, rounding) -> dict:
        ident = _identity(value)
        hit = self.recent.get(ident) if role == "in" else None
        if hit is not None:
            _, owner, typ, attrs, names, entries = hit
            entries = [{**e, "same_as": owner} for e in entries]
        else:
            typ, attrs, comps = components(value)
            names = [c for c, _, _, _ in comps]
            entries = self.writer.tensor(stem, typ, comps, role == "out")
        t = {"name": stem, "op": op, "op_index": index, "role": role, "arg": arg, "type": typ,
             "rounding": rounding}
        t.update({k: v for k, v in attrs.items() if k == "logical"})
        if self.model is None and role == "in" and typ == "array" and value.dtype.name not in CALL_DTYPE_DEFAULT:
            t["call_dtype"] = value.dtype.name
        for comp, e in zip(names, entries):
            if comp == "":
                t.update(e)
                t["bits"], t["signed"] = attrs["bits"], attrs["signed"]
            elif comp == "zp":
                t["zp"] = e
            else:
                t.setdefault("scale", {})[comp] = e
        if role == "out":
            self.recent[ident] = (value, stem, typ, attrs, names, entries)   # value: keeps ids alive
            while len(self.recent) > self.RECENT:
                self.recent.pop(next(iter(self.recent)))
        self.tensors.append(t)
        return t


def _identity(value) -> tuple:
    """The identity of a value's arrays (not their content)."""
    if isinstance(value, QTensor):
        return ("qtensor", id(value.q), id(value.zp), id(value.scale.m), id(value.scale.k),
                value.bits, value.signed)
    if isinstance(value, Dyadic):
        return ("dyadic", id(value.m), id(value.k))
    return ("array", id(value))


def parse_layers(text: str | None, n_layers: int):
    """``"0,2-4"`` -> sorted list of layer indices (None for None)."""
    if text is None:
        return None
    out = set()
    for part in text.split(","):
        part = part.strip()
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            raise IntsimError(f"--layers: {part!r} is not N or N-M")
        a, b = int(m.group(1)), int(m.group(2) or m.group(1))
        if a > b or b >= n_layers:
            raise IntsimError(f"--layers: {part!r} is outside 0..{n_layers - 1}")
        out.update(range(a, b + 1))
    return sorted(out)


def _prepare_dir(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise IntsimError(f"--out {out}: exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    old = [p for p in out.iterdir()]
    if not old:
        return
    ours = [p for p in old if p.name == MANIFEST or re.match(r"\d{4,}_", p.name)]
    if len(ours) != len(old):
        raise IntsimError(f"--out {out}: directory holds files that are not a golden dump; "
                          f"refusing to write into it")
    if not force:
        raise IntsimError(f"--out {out}: directory is not empty (use --force to replace the dump in it)")
    for p in ours:
        p.unlink()


@contextmanager
def _one_core_for_the_writers():
    """The op-by-op forward of an export runs on one Numba thread fewer than the process
    has (at least one): the writer threads (hex text, sha256, file writes) take the
    remaining core.  On the 2-core machine, two Numba threads beside two busy writers
    spent more CPU waiting than computing (docs/RESULTS.md, golden export)."""
    import numba
    n = numba.get_num_threads()
    numba.set_num_threads(max(1, n - 1))
    try:
        yield
    finally:
        numba.set_num_threads(n)


def export_golden(model, ids, out_dir, *, model_sha256: str | None = None, prompt_text=None,
                  layers=None, formats=("npy", "hex"), hex_pack: bool = False, stages: bool = True,
                  backend: str = "numba", force: bool = False, model_path: str | None = None) -> dict:
    """Run one prefill of ``ids`` with a :class:`Recorder` and write the dump to ``out_dir``.

    Returns the manifest (also written as ``out_dir/manifest.json``, last, so a dump
    without a manifest is an interrupted one) with the logits under the key
    ``"_logits"`` removed before writing.  ``formats``: "npy" is always written, plus
    any of "hex", "txt".  ``layers``: None or the layer indices to dump.  ``model_path``
    (recorded as given, for regeneration) and ``model_sha256`` name the model file.
    """
    from ..embedding import check_token_ids
    from ..llama import forward
    _check_backend(backend)
    if backend == "cuda":                      # before anything is written
        from ..cudaops import require
        require()
    ids = check_token_ids(np.asarray(ids), model.config.vocab_size)
    if ids.ndim != 1 or ids.size == 0:
        raise IntsimError("prompt: expected a non-empty 1-d sequence of token ids")
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise IntsimError(f"--format: unknown format(s) {bad}; choose from {', '.join(FORMATS)}")
    formats = tuple(f for f in FORMATS if f in formats or f == "npy")
    out = Path(out_dir)
    _prepare_dir(out, force)
    rec = Recorder(model, out, formats, hex_pack, stages, layers)
    try:
        with _one_core_for_the_writers():
            logits, ls = forward(model, ids.astype(np.int64), None, backend, tap=rec)
    finally:
        rec.writer.finish()
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "generator": GENERATOR,
        "model": {"file_sha256": model_sha256, "tensors_sha256": model_tensors_sha256(model),
                  "config": asdict(model.config), "widths": model.widths.to_dict(),
                  "spec": model.spec.to_dict()},
        "prompt": {"text": prompt_text, "tokens": [int(t) for t in ids]},
        "run": {"backend": backend, "model_path": model_path, "positions": f"prefill 0..{ids.size - 1}, causal",
                "layers": "all" if layers is None else sorted(layers), "formats": list(formats),
                "hex_pack": bool(hex_pack), "stages": bool(stages)},
        "ops": rec.ops, "tensors": rec.tensors,
    }
    text = manifest_text(manifest)
    out.joinpath(MANIFEST).write_text(text)
    manifest["_bytes_written"] = rec.writer.bytes_written + len(text)
    manifest["_logits"] = (logits, ls)
    return manifest
