"""Recording a forward pass: the :class:`Recorder` tap, the writer behind it, and
:func:`export_golden` (``intsim golden``)."""
from __future__ import annotations

import inspect
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..errors import IntsimError
from ..fixedpoint import _check_backend
from ..matmul import QWeight
from ..options import Spec
from ..qtensor import Dyadic, QTensor
from .formats import (FORMAT, FORMAT_VERSION, FORMATS, GENERATOR, INDEX_DIGITS, MANIFEST, hex_buffer,
                      manifest_text, npy_header, pack32_lines, sha256_of, txt_lines)
from .ops import KINDS, model_params, model_tensors_sha256, recorded_params, rounding_of
from .stages import STAGES, stage_call
from .values import CALL_DTYPE_DEFAULT, QWEIGHT_ARRAYS, components, jsonable, split_result


class _Writer:
    """Writes components and remembers what it wrote, so that an input equal to a tensor
    already written points to those files (``same_as``) instead of writing them again."""

    #: bytes queued for the writer threads before the producer waits for them
    QUEUE_LIMIT = 1 << 29

    def __init__(self, out_dir: Path, formats: tuple, hex_pack: bool):
        from concurrent.futures import ThreadPoolExecutor
        self.dir = out_dir
        self.formats = formats
        self.hex_pack = hex_pack
        self.tensors = {}        # content key of a whole tensor -> (name, [component entries])
        self.comps = {}          # content key of one component -> (tensor name, entry)
        self.bytes_written = 0
        self.pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="golden-write")
        self.pending = []        # (file entry, future of its sha256 or None, bytes)
        self.queued = 0

    def _write(self, name: str, parts, sha: str | None) -> str:
        try:
            with open(self.dir.joinpath(name), "wb") as f:
                for p in parts:
                    f.write(p)
        except OSError as e:
            raise IntsimError(f"{self.dir.joinpath(name)}: cannot write: {e.strerror or e}") from e
        return sha if sha is not None else sha256_of(*parts)

    def _put(self, name: str, *parts, sha: str | None = None) -> dict:
        """Queue a file for writing (and hashing, unless ``sha`` is known); returns its
        manifest entry, whose sha256 is filled in by :meth:`finish`."""
        n = sum(len(p) for p in parts)
        entry = {"path": name, "sha256": None}
        self.pending.append((entry, self.pool.submit(self._write, name, parts, sha)))
        self.bytes_written += n
        self.queued += n
        if self.queued > self.QUEUE_LIMIT:
            self._drain()
        return entry

    def _drain(self) -> None:
        for entry, fut in self.pending:
            entry["sha256"] = fut.result()
        self.pending, self.queued = [], 0

    def finish(self) -> None:
        try:
            self._drain()
        finally:
            self.pool.shutdown(wait=True)

    def tensor(self, name: str, typ: str, comps: list, is_output: bool) -> list:
        """Manifest entries of the components ``[(comp, arr, bits, signed)]`` of tensor
        ``name``; outputs are always written, inputs only when their content is new."""
        raw = []
        for comp, arr, bits, signed in comps:
            hdr = npy_header(arr)
            body = memoryview(arr).cast("B") if arr.size else b""
            raw.append((comp, arr, bits, signed, hdr, body, sha256_of(hdr, body)))
        tkey = typ + ":" + ",".join(r[-1] for r in raw)
        if not is_output and tkey in self.tensors:
            owner, entries = self.tensors[tkey]
            return [{**e, "same_as": owner} for e in entries]
        entries = []
        for comp, arr, bits, signed, hdr, body, key in raw:
            entry = {"shape": list(arr.shape), "dtype": arr.dtype.name, "bits": bits, "signed": signed,
                     "word_bits": arr.dtype.itemsize * 8}
            if not is_output and key in self.comps:
                owner, prev = self.comps[key]
                entries.append({**entry, "files": prev["files"], "same_as": owner})
                continue
            stem = name + (f".{comp}" if comp else "")
            files = {"npy": self._put(f"{stem}.npy", hdr, body, sha=key)}      # key = its sha256
            if "hex" in self.formats:
                files["hex"] = self._put(f"{stem}.hex", hex_buffer(arr))
            if "txt" in self.formats:
                files["txt"] = self._put(f"{stem}.txt", txt_lines(arr))
            if self.hex_pack and bits <= 4:
                text, lane, words = pack32_lines(arr, bits)
                files["pack32"] = self._put(f"{stem}.pack32.hex", text)
                files["pack32"].update(lane_bits=lane, words=words)
            entry["files"] = files
            entries.append(entry)
            if is_output or key not in self.comps:
                self.comps[key] = (name, entry)
        if is_output or tkey not in self.tensors:
            self.tensors[tkey] = (name, entries)
        return entries


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
