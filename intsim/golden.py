"""Golden vectors: capture every op of a forward pass, write it, replay it, compare dumps.

The format (file names, the ``$readmemh`` hex contract, the manifest) is
docs/GOLDEN_FORMAT.md.  Three entry points, each an ``intsim`` subcommand:

* :func:`export_golden` (``intsim golden``): one prefill of a prompt through the
  op-by-op graph of ``intsim.llama.forward`` with a :class:`Recorder` as its tap.  The
  recorder only reads what ``forward`` hands it (the op function, its arguments and its
  result) and writes them; capturing never changes a result (tested against the fused
  path).  Optional *stages* recompute an op's internal steps with the same public
  functions (DI-MatMul's input codes and exact accumulator, DI-ClippedSoftmax's clip,
  requantization and DI-Exp) as extra records placed before the op.
* :func:`replay` (``intsim replay``): re-run ops from their dumped inputs and check the
  dumped outputs bit for bit.
* :func:`compare` (``intsim compare``): a device-under-test dump against the golden one:
  first divergent op and element, both values, LSB delta, mismatches per op, and
  whether the golden value sat on a rounding tie.

Integer only (the float scan applies); json and hashlib handle the manifest.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import os
import re
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
from numba import njit

from . import __version__
from .attention import fold_scales, pv, qk_scores
from .embedding import embed
from .errors import IntsimError, check_int, check_int_array
from .exp import di_exp, row_scale
from .hashing import file_sha256
from .fixedpoint import ROUND_CODE, _check_backend, bit_length_ref, dyadic_fit, rounding_code
from .matmul import QWeight, di_matmul, di_matmul_acc
from .norm import di_norm, norm_weight
from .options import DEFAULT_SPEC, Spec
from .qtensor import Dyadic, QTensor, dtype_for
from .requant import requant_rows
from .residual import residual_add
from .rope import rope
from .softmax import di_clipped_softmax, softmax_clip, visibility
from .swiglu import di_swiglu

FORMAT = "intsim-golden"
FORMAT_VERSION = 1
GENERATOR = f"intsim {__version__} intsim.golden"
MANIFEST = "manifest.json"
FORMATS = ("npy", "hex", "txt")
REGENERATE = "regenerate it with: intsim golden MODEL --prompt TEXT --out DIR"
#: index digits of a file stem (an index >= 10^4 simply has more digits)
INDEX_DIGITS = 4
#: largest |k| written as a 32-bit word; beyond it the exponent file is 64-bit
_I32 = 2 ** 31 - 1


# ------------------------------------------------------------------ a stage op

#: the op kinds a dump may name: the public operator functions (docs/SPEC.md) and the
#: softmax clip stage.  A new op in forward() must be added here to be captured.
KINDS = {f.__name__: f for f in (embed, di_norm, norm_weight, di_matmul, di_matmul_acc, rope,
                                 requant_rows, qk_scores, fold_scales, di_clipped_softmax, pv,
                                 residual_add, di_swiglu, di_exp, softmax_clip)}
#: kinds without any rounding in their output (``rounding: exact``)
EXACT_KINDS = {"embed", "qk_scores", "pv", "norm_weight", "di_matmul_acc", "softmax_clip"}
#: output argument names per kind (default: one output, "out")
OUT_NAMES = {"di_exp": ("out", "T")}
#: stage records each kind gets (names appended to the op's name), in execution order
STAGES = {"di_matmul": ("x_q", "acc"), "di_matmul_acc": ("x_q",),
          "di_clipped_softmax": ("clip", "x_q", "exp")}


def _rounding_of(kind: str, spec: Spec) -> str:
    if kind in EXACT_KINDS:
        return "exact"
    if kind == "rope":
        return "exact" if spec.rope_drop_bits == 0 else spec.rounding
    if kind == "di_exp":
        return "floor"          # out = e >> q; T itself is rounded with spec.rounding
    return spec.rounding


# ------------------------------------------------------------------ hex and text

_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
_UNHEX = np.full(256, 255, dtype=np.uint8)
_UNHEX[_HEX] = np.arange(16, dtype=np.uint8)


def word_bits(bits: int) -> int:
    """Hex word width: the smallest of 8, 16, 32, 64 holding ``bits``."""
    for w in (8, 16, 32, 64):
        if bits <= w:
            return w
    raise IntsimError(f"bits: {bits} > 64 has no hex word")


@njit(cache=True)
def _hex_nb(u, nd, out):
    """Element i of the unsigned words ``u`` as ``nd`` lowercase hex digits and a newline
    at ``out[i * (nd + 1):]``, most significant digit first.  Serial: the writer threads
    overlap it with hashing and file writes, and a parallel region's start-up costs more
    than most tensors take."""
    w = nd + 1
    for i in range(u.size):
        v = np.uint64(u[i])
        base = i * w
        for j in range(nd):
            d = np.int64((v >> np.uint64(4 * (nd - 1 - j))) & np.uint64(15))
            out[base + j] = 48 + d if d < 10 else 87 + d          # '0'..'9', 'a'..'f'
        out[base + nd] = 10


def hex_buffer(a: np.ndarray) -> np.ndarray:
    """The default hex layout of an integer array stored at its word width, as uint8 text:
    one line of W/4 lowercase digits per element, C order, two's complement
    (docs/GOLDEN_FORMAT.md 2.1)."""
    n = a.dtype.itemsize
    u = np.ascontiguousarray(a).view(f"u{n}").ravel()
    out = np.empty(u.size * (2 * n + 1), dtype=np.uint8)
    if u.size:
        _hex_nb(u, 2 * n, out)
    return out


def hex_lines(a: np.ndarray) -> bytes:
    """:func:`hex_buffer` as bytes."""
    return hex_buffer(a).tobytes()


def parse_hex(data: bytes, dtype: np.dtype, shape: tuple, what: str) -> np.ndarray:
    """Read a default-layout hex file back into ``dtype`` (the inverse of :func:`hex_lines`)."""
    n = np.dtype(dtype).itemsize
    raw = np.frombuffer(data, dtype=np.uint8)
    count = int(np.prod(shape, dtype=np.int64))
    if raw.size != count * (2 * n + 1):
        raise IntsimError(f"{what}: {raw.size} bytes, expected {count} lines of {2 * n} hex "
                          f"digits and a newline ({count * (2 * n + 1)} bytes)")
    lines = raw.reshape(count, 2 * n + 1)
    if count and not np.all(lines[:, -1] == 10):
        bad = int(np.argmax(lines[:, -1] != 10))
        raise IntsimError(f"{what}: line {bad} is not {2 * n} hex digits and a newline")
    nib = _UNHEX[lines[:, :-1]]
    if count and np.any(nib == 255):
        bad = int(np.argmax(np.any(nib == 255, axis=1)))
        raise IntsimError(f"{what}: line {bad} has a character that is not a lowercase hex digit")
    pairs = (nib[:, 0::2] << 4) | nib[:, 1::2]                          # big-endian bytes
    u = np.ascontiguousarray(pairs).view(f">u{n}").ravel().astype(f"u{n}")
    return u.view(np.dtype(dtype)).reshape(shape)


def pack32_lines(a: np.ndarray, bits: int) -> tuple[bytes, int, int]:
    """The packed layout (docs/GOLDEN_FORMAT.md 2.3): ``(text, lane_bits, words)``."""
    L = 1 if bits <= 1 else 2 if bits <= 2 else 4
    lanes = 32 // L
    u = (np.ascontiguousarray(a).view(f"u{a.dtype.itemsize}").ravel().astype(np.uint32)
         & np.uint32(2 ** L - 1))
    words = -(-u.size // lanes)
    pad = np.zeros(words * lanes, dtype=np.uint32)
    pad[:u.size] = u
    lanes_arr = pad.reshape(words, lanes) << (np.arange(lanes, dtype=np.uint32) * np.uint32(L))
    w = np.bitwise_or.reduce(lanes_arr, axis=1).astype(np.uint32) if words else pad[:0]
    return hex_lines(w.astype(np.uint32)), L, words


def txt_lines(a: np.ndarray) -> bytes:
    return "".join(f"{v}\n" for v in a.ravel().tolist()).encode()


def _sha(*parts) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p)
    return h.hexdigest()


# ------------------------------------------------------------------ values -> components

def _array_width(a: np.ndarray) -> tuple[int, bool]:
    """(bits, signed) of a plain integer array: the smallest width holding its values."""
    if a.dtype == np.bool_:
        return 1, False
    signed = a.dtype.kind == "i"
    if a.size == 0:
        return (2 if signed else 1), signed
    if signed:
        amax = max(abs(int(a.min())), abs(int(a.max())))
        return max(2, amax.bit_length() + 1), True
    return max(1, int(a.max()).bit_length()), False


def _store(a: np.ndarray, bits: int, signed: bool) -> np.ndarray:
    """``a`` in the storage dtype of its declared width (values unchanged, checked)."""
    dt = dtype_for(max(bits, 2), signed)
    if a.dtype == np.bool_:
        return np.ascontiguousarray(a, dtype=np.uint8)
    if a.size and dt.itemsize < a.dtype.itemsize:
        lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2 ** bits - 1)
        if int(a.min()) < lo or int(a.max()) > hi:
            raise IntsimError(f"value does not fit its declared {bits}-bit "
                              f"{'signed' if signed else 'unsigned'} container")
    return np.ascontiguousarray(a, dtype=dt)


def _k_store(k: np.ndarray) -> np.ndarray:
    k = np.asarray(k, dtype=np.int64)
    if k.size and (int(k.min()) < -_I32 or int(k.max()) > _I32):
        return np.ascontiguousarray(k)
    return np.ascontiguousarray(k, dtype=np.int32)


def components(value) -> tuple[str, dict, list]:
    """Split a value into ``(type, attrs, [(component, stored array, bits, signed)])``.

    ``component`` is "" for the codes / values, else "zp", "m", "k"."""
    if isinstance(value, QTensor):
        comps = [("", _store(value.q, value.bits, value.signed), value.bits, value.signed),
                 ("zp", np.ascontiguousarray(value.zp, dtype=np.int32), 32, True),
                 ("m", np.ascontiguousarray(value.scale.m, dtype=np.int32), 32, True)]
        k = _k_store(value.scale.k)
        comps.append(("k", k, k.dtype.itemsize * 8, True))
        return "qtensor", {"bits": value.bits, "signed": value.signed}, comps
    if isinstance(value, Dyadic):
        k = _k_store(value.k)
        return "dyadic", {}, [("m", np.ascontiguousarray(value.m, dtype=np.int32), 32, True),
                              ("k", k, k.dtype.itemsize * 8, True)]
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "iub":
            raise IntsimError(f"value: expected an integer or bool array, got dtype {value.dtype}")
        bits, signed = _array_width(value)
        attrs = {"bits": bits, "signed": signed}
        if value.dtype == np.bool_:
            attrs["logical"] = "bool"
        return "array", attrs, [("", _store(value, bits, signed), bits, signed)]
    raise IntsimError(f"value: cannot dump a {type(value).__name__}")


def assemble(typ: str, attrs: dict, comps: dict):
    """Rebuild a value from its components (the inverse of :func:`components`)."""
    if typ == "qtensor":
        q = comps[""]
        return QTensor(q, comps["zp"].astype(np.int32), Dyadic(comps["m"].astype(np.int64),
                                                              comps["k"].astype(np.int64)),
                       int(attrs["bits"]), bool(attrs["signed"]))
    if typ == "dyadic":
        return Dyadic(comps["m"].astype(np.int64), comps["k"].astype(np.int64))
    a = comps[""]
    return a.astype(np.bool_) if attrs.get("logical") == "bool" else a.astype(np.int64)


def split_result(kind: str, result) -> tuple[list, dict]:
    """An op's return value as ``([(arg, value)], stats)``: QTensors stay, an integer
    array followed by its Dyadic becomes ``QTensor.exact``, counters go to stats."""
    items = list(result) if isinstance(result, tuple) else [result]
    values, stats = [], {}
    i = 0
    while i < len(items):
        v = items[i]
        if isinstance(v, np.ndarray) and i + 1 < len(items) and isinstance(items[i + 1], Dyadic):
            values.append(QTensor.exact(v, items[i + 1]))
            i += 2
            continue
        if isinstance(v, (QTensor, np.ndarray)):
            values.append(v)
        elif isinstance(v, dict):
            stats.update({str(a): _jsonable(b) for a, b in v.items()})
        elif isinstance(v, (int, np.integer)) and not isinstance(v, bool):
            stats["saturated_rows"] = int(v)
        else:
            raise IntsimError(f"{kind}: cannot dump a result part of type {type(v).__name__}")
        i += 1
    names = OUT_NAMES.get(kind, ("out",))
    if len(values) > len(names):
        raise IntsimError(f"{kind}: {len(values)} outputs, names for {len(names)}")
    return list(zip(names, values)), stats


def _jsonable(v):
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, str) or v is None:
        return v
    raise IntsimError(f"cannot put a {type(v).__name__} into the manifest")


# ------------------------------------------------------------------ model parameters

def model_params(model) -> dict:
    """id -> name of every array / QWeight parameter of an IntModel (``layers.0.wq``,
    ``cos_q``, ...), so that ops can name the weights they were given."""
    out = {}
    for f in fields(model):
        v = getattr(model, f.name)
        if isinstance(v, (np.ndarray, QWeight)):
            out[id(v)] = f.name
    for i, L in enumerate(model.layers):
        for f in fields(L):
            v = getattr(L, f.name)
            if isinstance(v, (np.ndarray, QWeight)):
                out[id(v)] = f"layers.{i}.{f.name}"
    return out


def model_param(model, name: str):
    obj = model
    for part in name.split("."):
        if part.isdigit() and isinstance(obj, tuple) and int(part) < len(obj):
            obj = obj[int(part)]
        elif not part.isdigit() and hasattr(obj, part):
            obj = getattr(obj, part)
        else:
            raise IntsimError(f"model parameter '{name}' does not exist in this model")
    return obj


def model_tensors_sha256(model) -> str:
    from .modelfile import model_tensors, tensors_sha256
    return tensors_sha256(model_tensors(model))


# ------------------------------------------------------------------ the writer

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
        return sha if sha is not None else _sha(*parts)

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
            hdr = _npy_header(arr)
            body = memoryview(arr).cast("B") if arr.size else b""
            raw.append((comp, arr, bits, signed, hdr, body, _sha(hdr, body)))
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


def _npy_header(arr: np.ndarray) -> bytes:
    import io
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, np.lib.format.header_data_from_array_1_0(arr))
    return buf.getvalue()


# ------------------------------------------------------------------ the recorder (a tap)

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
    is the full graph's either way.
    """
    takes_op_calls = True

    def __init__(self, model, out_dir, formats=("npy", "hex"), hex_pack: bool = False,
                 stages: bool = True, layers=None):
        self.model = model
        self.params = model_params(model)
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
        for st in stage_names:
            fn, a, result = _stage(kind, st, args.arguments, call.result)
            self._record(f"{name}.{st}", fn, a, result, stage_of=name)
        self._record(name, call.fn, dict(args.arguments), call.result, stage_of=None)

    def _record(self, name, fn, arguments: dict, result, stage_of):
        kind = fn.__name__
        i, self.index = self.index, self.index + 1
        stem0 = f"{str(i).zfill(INDEX_DIGITS)}_{name}"
        spec = self.model.spec
        params, inputs = {}, []
        for arg, v in arguments.items():
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
                params[arg] = _jsonable(v)
        outs, stats = split_result(kind, result)
        rounding = _rounding_of(kind, spec)
        outputs = [self._tensor(f"{stem0}.out" + ("" if a == "out" else f".{a}"), name, i, "out", a,
                                v, rounding) for a, v in outs]
        self.ops.append({"index": i, "name": name, "kind": kind, "stage_of": stage_of,
                         "params": params, "rounding": rounding, "stats": stats,
                         "inputs": [t["name"] for t in inputs],
                         "outputs": [t["name"] for t in outputs]})

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


def _stage(kind: str, stage: str, a: dict, result):
    """``(fn, arguments, result)`` of one stage of an op (module doc), recomputed with the
    public functions on the op's own arguments."""
    spec, backend = a["spec"], a["backend"]
    if kind in ("di_matmul", "di_matmul_acc"):
        x = a["x"]
        if stage == "x_q":
            args = {"v": x.centered(), "scale_in": x.scale, "bits": a["a_bits"], "symmetric": False,
                    "spec": spec, "backend": backend, "name": "x"}
            return requant_rows, args, requant_rows(**args)
        args = {"x": x, "w": a["w"], "a_bits": a["a_bits"], "spec": spec, "backend": backend}
        return di_matmul_acc, args, di_matmul_acc(**args)
    # di_clipped_softmax: scores, scale, mask, causal, q_offset
    scores = a["scores"]
    vis = visibility(scores.shape, a["mask"], a["causal"], a["q_offset"])
    rows = scores.shape[:-1]
    m, k = row_scale("scale", a["scale"], rows)
    clip_args = {"scores": scores, "scale": Dyadic(m, k), "mask": vis, "spec": spec, "backend": backend}
    xt = softmax_clip(**clip_args)
    if stage == "clip":
        return softmax_clip, clip_args, xt
    rq_args = {"v": xt, "scale_in": Dyadic(m, k), "bits": spec.softmax_in_bits, "symmetric": False,
               "spec": spec, "backend": backend, "name": "scores - rowmax (clipped)"}
    qt, nsat = requant_rows(**rq_args)
    if stage == "x_q":
        return requant_rows, rq_args, (qt, nsat)
    zero = qt.scale.m == 0
    xq = np.where(vis & ~zero[..., None], qt.centered(), 0)
    ex_args = {"x": xq, "scale": Dyadic(np.where(zero, 1, qt.scale.m), np.where(zero, 0, qt.scale.k)),
               "spec": spec, "backend": backend}
    return di_exp, ex_args, di_exp(**ex_args)


# ------------------------------------------------------------------ export

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


def manifest_text(man: dict) -> str:
    """The manifest as written: keys sorted, one op / tensor per line (the C JSON encoder
    for each line; the pure-Python indenting encoder takes seconds on a large dump)."""
    lines = ["{"]
    keys = sorted(man)
    for j, key in enumerate(keys):
        end = "," if j < len(keys) - 1 else ""
        v = man[key]
        if key in ("ops", "tensors"):
            items = [json.dumps(x, sort_keys=True) for x in v]
            lines.append(f' {json.dumps(key)}: [' + ("" if items else "]" + end))
            if items:
                lines += [f"  {x}," for x in items[:-1]] + [f"  {items[-1]}", " ]" + end]
        else:
            lines.append(f" {json.dumps(key)}: {json.dumps(v, sort_keys=True)}{end}")
    return "\n".join(lines + ["}"]) + "\n"


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
    from .embedding import check_token_ids
    from .llama import forward
    _check_backend(backend)
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
    from dataclasses import asdict
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "generator": GENERATOR,
        "model": {"file_sha256": model_sha256, "tensors_sha256": model_tensors_sha256(model),
                  "config": asdict(model.config), "widths": asdict(model.widths),
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


# ------------------------------------------------------------------ reading a dump

def _bad(d, msg: str) -> IntsimError:
    return IntsimError(f"{d}: {msg}")


def load_manifest(d) -> dict:
    """Read and check ``d/manifest.json``: magic, version, and the shape of every entry."""
    d = Path(d)
    path = d.joinpath(MANIFEST)
    if not d.is_dir():
        raise _bad(d, "no such dump directory")
    if not path.is_file():
        raise _bad(d, f"no {MANIFEST}: not a golden dump, or an interrupted one; {REGENERATE}")
    try:
        man = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise _bad(d, f"{MANIFEST} is not valid JSON ({e}); {REGENERATE}") from e
    if not isinstance(man, dict) or man.get("format") != FORMAT:
        raise _bad(d, f"{MANIFEST}: format is not '{FORMAT}'; not a golden dump")
    if man.get("format_version") != FORMAT_VERSION:
        raise _bad(d, f"{MANIFEST}: format_version {man.get('format_version')!r}, this intsim "
                      f"({__version__}) reads {FORMAT_VERSION}; {REGENERATE}")
    for key, typ in (("model", dict), ("prompt", dict), ("ops", list), ("tensors", list)):
        if not isinstance(man.get(key), typ):
            raise _bad(d, f"{MANIFEST}: key '{key}' is missing or not a {typ.__name__}")
    names = set()
    for j, t in enumerate(man["tensors"]):
        _check_tensor_entry(d, j, t)
        if t["name"] in names:
            raise _bad(d, f"{MANIFEST}: tensor '{t['name']}' is listed twice")
        names.add(t["name"])
    for j, op in enumerate(man["ops"]):
        for key, typ in (("index", int), ("name", str), ("kind", str), ("params", dict),
                         ("inputs", list), ("outputs", list)):
            if not isinstance(op.get(key) if isinstance(op, dict) else None, typ):
                raise _bad(d, f"{MANIFEST}: ops[{j}] has no valid '{key}'")
        for tn in op["inputs"] + op["outputs"]:
            if tn not in names:
                raise _bad(d, f"{MANIFEST}: op '{op['name']}' names tensor '{tn}', which is not listed")
    return man


def _check_comp(d, what: str, c, codes: bool) -> None:
    if not isinstance(c, dict):
        raise _bad(d, f"{MANIFEST}: {what} is not an object")
    for key, typ in (("shape", list), ("dtype", str), ("files", dict)):
        if not isinstance(c.get(key), typ):
            raise _bad(d, f"{MANIFEST}: {what} has no valid '{key}'")
    try:
        dt = np.dtype(c["dtype"])
    except TypeError:
        raise _bad(d, f"{MANIFEST}: {what} dtype {c['dtype']!r} is not a NumPy dtype") from None
    if dt.kind not in "iu" or dt.byteorder == ">":
        raise _bad(d, f"{MANIFEST}: {what} dtype {c['dtype']!r} is not a little-endian integer dtype")
    if not all(isinstance(n, int) and n >= 0 for n in c["shape"]):
        raise _bad(d, f"{MANIFEST}: {what} shape {c['shape']!r} is not a list of sizes")
    if not any(f in c["files"] for f in ("npy", "hex")):
        raise _bad(d, f"{MANIFEST}: {what} lists neither an npy nor a hex file")
    for f, e in c["files"].items():
        if not isinstance(e, dict) or not isinstance(e.get("path"), str) or not isinstance(e.get("sha256"), str):
            raise _bad(d, f"{MANIFEST}: {what} file '{f}' needs a path and a sha256")
        if "/" in e["path"] or "\\" in e["path"] or e["path"].startswith("."):
            raise _bad(d, f"{MANIFEST}: {what} file path {e['path']!r} must be a plain file name")


def _check_tensor_entry(d, j: int, t) -> None:
    if not isinstance(t, dict) or not isinstance(t.get("name"), str):
        raise _bad(d, f"{MANIFEST}: tensors[{j}] has no name")
    what = f"tensor '{t['name']}'"
    for key in ("op", "role", "arg", "type"):
        if not isinstance(t.get(key), str):
            raise _bad(d, f"{MANIFEST}: {what} has no valid '{key}'")
    if t["type"] not in ("qtensor", "dyadic", "array"):
        raise _bad(d, f"{MANIFEST}: {what} has unknown type {t['type']!r}")
    if t["type"] != "dyadic":
        _check_comp(d, what, t, True)
        for key in ("bits", "signed"):
            if key not in t:
                raise _bad(d, f"{MANIFEST}: {what} has no '{key}'")
    if t["type"] == "qtensor":
        _check_comp(d, f"{what} zp", t.get("zp"), False)
    if t["type"] in ("qtensor", "dyadic"):
        s = t.get("scale")
        if not isinstance(s, dict):
            raise _bad(d, f"{MANIFEST}: {what} has no scale")
        for c in ("m", "k"):
            _check_comp(d, f"{what} scale {c}", s.get(c), False)


def tensor_components(t: dict) -> list:
    """``[(component, entry)]`` of a manifest tensor ("" = codes / values)."""
    out = [] if t["type"] == "dyadic" else [("", t)]
    if t["type"] == "qtensor":
        out.append(("zp", t["zp"]))
    if t["type"] in ("qtensor", "dyadic"):
        out += [("m", t["scale"]["m"]), ("k", t["scale"]["k"])]
    return out


def verify_files(d, man: dict) -> list:
    """Problems with the files of a dump: missing, or sha256 differing from the manifest."""
    d = Path(d)
    problems, seen = [], {}
    for t in man["tensors"]:
        for comp, c in tensor_components(t):
            for fmt, e in c["files"].items():
                path = d.joinpath(e["path"])
                what = f"tensor '{t['name']}'" + (f" {comp}" if comp else "") + f" ({fmt})"
                if e["path"] in seen:
                    if seen[e["path"]] != e["sha256"]:
                        problems.append(f"{what}: {e['path']} is listed with two different sha256")
                    continue
                if not path.is_file():
                    problems.append(f"{what}: file {e['path']} is missing")
                    continue
                seen[e["path"]] = e["sha256"]
                got = file_sha256(path)
                if got != e["sha256"]:
                    problems.append(f"{what}: {e['path']} has sha256 {got[:16]}..., the manifest "
                                    f"says {e['sha256'][:16]}... (file changed after the dump)")
    return problems


def read_component(d, c: dict, what: str) -> np.ndarray:
    """One component's array, from its .npy (or its .hex when no .npy is listed), checked
    against the manifest's dtype and shape."""
    d = Path(d)
    dt, shape = np.dtype(c["dtype"]), tuple(c["shape"])
    files = c["files"]
    if "npy" in files:
        path = d.joinpath(files["npy"]["path"])
        try:
            a = np.load(path, allow_pickle=False)
        except Exception as e:              # numpy raises ValueError / OSError / EOFError
            raise _bad(d, f"{what}: {files['npy']['path']} is not a readable .npy file ({e})") from e
        if not isinstance(a, np.ndarray) or a.dtype.kind not in "iu":
            raise _bad(d, f"{what}: {files['npy']['path']} holds dtype {getattr(a, 'dtype', '?')}, "
                          f"not integers")
        if a.dtype != dt:
            raise _bad(d, f"{what}: {files['npy']['path']} has dtype {a.dtype}, the manifest says {dt}")
        if a.shape != shape:
            raise _bad(d, f"{what}: {files['npy']['path']} has shape {a.shape}, the manifest says {shape}")
        return a
    path = d.joinpath(files["hex"]["path"])
    try:
        data = path.read_bytes()
    except OSError as e:
        raise _bad(d, f"{what}: cannot read {files['hex']['path']}: {e.strerror or e}") from e
    return parse_hex(data, dt, shape, f"{d}: {what}: {files['hex']['path']}")


def read_value(d, t: dict):
    """A manifest tensor as the value it was (QTensor, Dyadic or integer array)."""
    comps = {c: read_component(d, e, f"tensor '{t['name']}'" + (f" {c}" if c else ""))
             for c, e in tensor_components(t)}
    try:
        return assemble(t["type"], t, comps)
    except IntsimError as e:
        raise _bad(d, f"tensor '{t['name']}': {e}") from e


def _same_as(t: dict):
    """The output tensor all components of an input share their files with, or None."""
    owners = {c.get("same_as") for _, c in tensor_components(t)}
    return owners.pop() if len(owners) == 1 else None


# ------------------------------------------------------------------ element comparison

@dataclass
class Diff:
    """Mismatches of one tensor: count over all components, and the first one."""
    count: int = 0
    component: str = ""
    flat: int = -1
    index: tuple = ()
    want: int = 0
    got: int = 0

    @property
    def delta(self) -> int:
        return self.got - self.want


def diff_arrays(want: np.ndarray, got: np.ndarray, component: str, acc: Diff) -> Diff:
    """Add the element mismatches of two same-shape integer arrays to ``acc``."""
    w = want.astype(np.int64, copy=False).ravel()
    g = got.astype(np.int64, copy=False).ravel()
    ne = w != g
    n = int(np.count_nonzero(ne))
    if n and acc.count == 0:
        i = int(np.argmax(ne))
        acc.component, acc.flat = component, i
        acc.index = tuple(int(x) for x in np.unravel_index(i, want.shape))
        acc.want, acc.got = int(w[i]), int(g[i])
    acc.count += n
    return acc


def _value_comps(value) -> dict:
    typ, attrs, comps = components(value)
    return {c: a for c, a, _, _ in comps}, typ, attrs


# ------------------------------------------------------------------ replay

def select_ops(man: dict, op=None, layer=None, start=None, stop=None) -> list:
    """The op records a replay runs: one op (name or index), one layer, an index range, or all."""
    ops = man["ops"]
    if op is not None:
        got = [o for o in ops if o["name"] == op or str(o["index"]) == str(op)]
        if not got:
            raise IntsimError(f"--op: no op named or numbered {op!r} in this dump")
        return got
    if layer is not None:
        got = [o for o in ops if o["name"].startswith(f"layers.{int(layer)}.")]
        if not got:
            raise IntsimError(f"--layer: the dump has no op of layer {layer}")
        return got
    if start is not None or stop is not None:
        a = 0 if start is None else int(start)
        b = (ops[-1]["index"] if ops else 0) if stop is None else int(stop)
        got = [o for o in ops if a <= o["index"] <= b]
        if not got:
            raise IntsimError(f"--from/--to: no op with an index in [{a}, {b}]")
        return got
    return list(ops)


def check_model(man: dict, model, model_sha256: str | None, where) -> None:
    m = man["model"]
    if model_sha256 and m.get("file_sha256") and m["file_sha256"] != model_sha256:
        raise _bad(where, f"the dump was made from model file sha256 {m['file_sha256'][:16]}..., "
                          f"this model file is {model_sha256[:16]}...")
    got = model_tensors_sha256(model)
    if m.get("tensors_sha256") != got:
        raise _bad(where, f"the dump was made from a model with tensor sha256 "
                          f"{str(m.get('tensors_sha256'))[:16]}..., this model's is {got[:16]}...")


def _spec_of(man: dict, op: dict) -> Spec:
    p = op["params"].get("spec", {"spec": "model"})
    d = man["model"].get("spec", {}) if p.get("spec") == "model" else p.get("spec")
    try:
        return Spec.from_dict(d)
    except (TypeError, IntsimError) as e:
        raise IntsimError(f"op '{op['name']}': spec options unreadable: {e}") from e


def replay(golden_dir, model, *, model_sha256: str | None = None, ops=None,
           backend: str = "numba") -> dict:
    """Re-run ``ops`` (default: all) of a dump from their dumped inputs; an input that is
    the output of an op replayed earlier in the same run is taken from that replay.
    Returns ``{"identical": bool, "ops": [{index, name, kind, identical, tensors: ...}]}``.
    """
    _check_backend(backend)
    d = Path(golden_dir)
    man = load_manifest(d)
    problems = verify_files(d, man)
    if problems:
        raise _bad(d, f"{len(problems)} file problem(s): " + "; ".join(problems[:5]))
    check_model(man, model, model_sha256, d)
    tensors = {t["name"]: t for t in man["tensors"]}
    ops = select_ops(man) if ops is None else ops
    replayed, report = {}, []
    for op in ops:
        kind = op["kind"]
        fn = KINDS.get(kind)
        if fn is None:
            raise _bad(d, f"op '{op['name']}': unknown kind {kind!r}")
        kwargs, chained = {}, []
        for pname, p in op["params"].items():
            if isinstance(p, dict) and "model" in p:
                kwargs[pname] = model_param(model, p["model"])
            elif isinstance(p, dict) and "spec" in p:
                kwargs[pname] = _spec_of(man, op)
            elif pname == "backend":
                kwargs[pname] = backend
            else:
                kwargs[pname] = p
        for tn in op["inputs"]:
            t = tensors[tn]
            src = _same_as(t)
            if src in replayed and tensors[src]["type"] == t["type"]:
                kwargs[t["arg"]] = replayed[src]
                chained.append(t["arg"])
            else:
                kwargs[t["arg"]] = read_value(d, t)
        try:
            result = fn(**kwargs)
        except IntsimError as e:
            raise IntsimError(f"op {op['index']} '{op['name']}' ({kind}) refused its dumped "
                              f"inputs: {e}") from e
        outs, stats = split_result(kind, result)
        entry = {"index": op["index"], "name": op["name"], "kind": kind, "chained": chained,
                 "identical": True, "tensors": []}
        names = dict(zip([tensors[n]["arg"] for n in op["outputs"]], op["outputs"]))
        for arg, value in outs:
            tn = names.get(arg)
            if tn is None:
                raise _bad(d, f"op '{op['name']}': replay gave an output '{arg}' the dump lacks")
            t = tensors[tn]
            comps, typ, attrs = _value_comps(value)
            diff = Diff()
            ok = typ == t["type"] and (typ == "dyadic" or (attrs["bits"], attrs["signed"]) ==
                                       (t["bits"], bool(t["signed"])))
            for c, e in tensor_components(t):
                want = read_component(d, e, f"tensor '{tn}'" + (f" {c}" if c else ""))
                got = comps.get(c)
                if got is None or got.shape != want.shape:
                    ok = False
                    continue
                diff_arrays(want, got, c, diff)
            same = ok and diff.count == 0
            entry["tensors"].append({"name": tn, "identical": same, "mismatches": diff.count,
                                     "format_ok": ok, "first": _first(diff)})
            entry["identical"] &= same
            replayed[tn] = value
        if stats != op.get("stats", stats):
            entry["identical"] = False
            entry["stats"] = {"dumped": op.get("stats"), "replayed": stats}
        report.append(entry)
    return {"identical": all(e["identical"] for e in report), "ops": report}


def _first(diff: Diff):
    if diff.count == 0:
        return None
    return {"component": diff.component or "values", "index": list(diff.index), "flat": diff.flat,
            "golden": diff.want, "got": diff.got, "lsb_delta": diff.delta}


# ------------------------------------------------------------------ compare

def compare(golden_dir, dut_dir, *, outputs_only: bool = False, partial: bool = False) -> dict:
    """Compare a device-under-test dump with a golden dump, exactly (module doc).

    Raises ``IntsimError`` on bad input (a manifest or file problem, another model or
    prompt, a missing tensor, a shape / type mismatch); otherwise returns
    ``{"identical", "compared", "first", "ops": [{index, name, kind, mismatches}], ...}``.
    Tensors are matched by (op name, role, argument), so a dump numbered differently
    (e.g. without stages) still lines up.
    """
    g_dir, d_dir = Path(golden_dir), Path(dut_dir)
    gman, dman = load_manifest(g_dir), load_manifest(d_dir)
    problems = [f"golden {p}" for p in verify_files(g_dir, gman)]
    problems += [f"DUT {p}" for p in verify_files(d_dir, dman)]
    if problems:
        raise IntsimError(f"{len(problems)} file problem(s): " + "; ".join(problems[:8]) +
                          ("" if len(problems) <= 8 else f"; and {len(problems) - 8} more"))
    gm, dm = gman["model"], dman["model"]
    if gm.get("tensors_sha256") != dm.get("tensors_sha256") or (
            gm.get("file_sha256") and dm.get("file_sha256") and gm["file_sha256"] != dm["file_sha256"]):
        raise IntsimError(f"the dumps are of different models: golden {str(gm.get('file_sha256') or gm.get('tensors_sha256'))[:16]}..., "
                          f"DUT {str(dm.get('file_sha256') or dm.get('tensors_sha256'))[:16]}...")
    if gman["prompt"].get("tokens") != dman["prompt"].get("tokens"):
        raise IntsimError(f"the dumps are of different prompts: golden tokens "
                          f"{gman['prompt'].get('tokens')!r:.80}, DUT {dman['prompt'].get('tokens')!r:.80}")
    dut = {(t["op"], t["role"], t["arg"]): t for t in dman["tensors"]}
    g_ops = {o["name"]: o for o in gman["ops"]}
    structural, per_op, first, compared = [], {}, None, 0
    for t in gman["tensors"]:
        if outputs_only and t["role"] != "out":
            continue
        key = (t["op"], t["role"], t["arg"])
        u = dut.get(key)
        label = f"{t['op']} {t['role']} '{t['arg']}'"
        if u is None:
            if not partial:
                structural.append(f"{label}: missing from the DUT dump")
            continue
        if u["type"] != t["type"]:
            structural.append(f"{label}: DUT type {u['type']}, golden {t['type']}")
            continue
        diff = Diff()
        for (c, ge), (_, de) in zip(tensor_components(t), tensor_components(u)):
            what = f"{label}" + (f" {c}" if c else "")
            if list(de["shape"]) != list(ge["shape"]):
                structural.append(f"{what}: DUT shape {tuple(de['shape'])}, golden {tuple(ge['shape'])}")
                continue
            if de["dtype"] != ge["dtype"]:
                structural.append(f"{what}: DUT dtype {de['dtype']}, golden {ge['dtype']}")
                continue
            want = read_component(g_dir, ge, f"golden {what}")
            got = read_component(d_dir, de, f"DUT {what}")
            diff_arrays(want, got, c, diff)
        compared += 1
        if t["type"] != "dyadic" and (u.get("bits"), u.get("signed")) != (t.get("bits"), t.get("signed")) \
                and diff.count == 0:
            structural.append(f"{label}: DUT bits/signed {u.get('bits')}/{u.get('signed')}, golden "
                              f"{t.get('bits')}/{t.get('signed')}")
        op = g_ops.get(t["op"], {"index": t["op_index"], "name": t["op"], "kind": "?"})
        rec = per_op.setdefault(op["name"], {"index": op["index"], "name": op["name"],
                                             "kind": op["kind"], "mismatches": 0, "first": None})
        rec["mismatches"] += diff.count
        if diff.count and rec["first"] is None:
            f = _first(diff)
            f["tensor"] = t["name"]
            f["role"] = t["role"]
            f["tie"] = (tie_status(g_dir, gman, op, t, diff.flat) if t["role"] == "out" and diff.component == ""
                        else "not evaluated (only output values are)")
            rec["first"] = f
            if first is None:
                first = {"op": op["name"], "op_index": op["index"], "kind": op["kind"], **f}
    if structural:
        raise IntsimError(f"{len(structural)} problem(s) with the DUT dump: " + "; ".join(structural[:8]) +
                          ("" if len(structural) <= 8 else f"; and {len(structural) - 8} more"))
    if compared == 0:
        raise IntsimError("no tensor of the golden dump is in the DUT dump: nothing compared")
    ops = sorted(per_op.values(), key=lambda r: r["index"])
    return {"identical": first is None, "compared": compared, "first": first,
            "mismatching_ops": [r for r in ops if r["mismatches"]],
            "ops": ops}


# ------------------------------------------------------------------ rounding ties

def _requant_tie(v: list, m_in: int, k_in: int, bits: int, symmetric: bool, spec: Spec,
                 m_out: int, k_out: int, col: int) -> str:
    """Whether code ``col`` of one requant_rows row was an exact tie, recomputed with Python
    ints from the row's input (intsim.requant steps 1-4)."""
    from .fixedpoint import _fit_ref
    Q = 2 ** (bits - 1) - 1 if symmetric else 2 ** bits - 1
    R = max(abs(min(v)), abs(max(v))) if symmetric else max(max(v), 0) - min(min(v), 0)
    sh = max(0, R.bit_length() - 32)
    vs = [x >> sh for x in v]
    lo = 0 if symmetric else min(min(vs), 0)
    Rs = max(abs(min(vs)), abs(max(vs))) if symmetric else max(max(vs), 0) - lo
    if Rs == 0:
        return "no (all-zero row: codes 0)"
    fitted = spec.requant_mode == "fitted"
    k_lo, k_hi = spec.k_range
    m, e, sat = (int(x) for x in _fit_ref(np.int64(m_in * Rs), np.int64(Q), spec.m_bits,
                                          k_lo - k_in + sh, k_hi - k_in + sh,
                                          ROUND_CODE["ceil"] if fitted else rounding_code(spec.rounding)))
    k_want = min(max(0, k_lo), k_hi) if m == 0 else e + k_in - sh
    if (m, k_want) != (m_out, k_out):
        return "not evaluated (the recomputed scale differs from the dumped one)"
    if fitted and not sat and m > 0 and m.bit_length() - min(e, 0) <= 62:
        num, den = vs[col] * m_in * 2 ** max(e, 0), m * 2 ** max(-e, 0)
    else:
        num, den = vs[col] * Q, Rs
    return "yes" if 2 * (num % den) == den else "no"


def _shift_tie(x: int, sh: int) -> str:
    if sh <= 0:
        return "no (no bits shifted off)"
    return "yes" if x % (1 << sh) == 1 << (sh - 1) else "no"


def _input(d, man, op, arg):
    tensors = {t["name"]: t for t in man["tensors"]}
    for tn in op["inputs"]:
        if tensors[tn]["arg"] == arg:
            return read_value(d, tensors[tn])
    raise KeyError(arg)


def _output(d, man, op, arg="out"):
    tensors = {t["name"]: t for t in man["tensors"]}
    for tn in op["outputs"]:
        if tensors[tn]["arg"] == arg:
            return read_value(d, tensors[tn])
    raise KeyError(arg)


def tie_status(d, man: dict, op: dict, t: dict, flat: int) -> str:
    """Whether the golden value at flat index ``flat`` of output ``t`` of ``op`` sat exactly
    on a tie of the op's last rounding ("yes" / "no (...)" / "not evaluated (...)")."""
    kind = op.get("kind", "?")
    try:
        spec = _spec_of(man, op)
        rounding = _rounding_of(kind, spec) if kind in KINDS else "?"
        if rounding == "exact":
            return "no (exact op: nothing is rounded)"
        if kind == "di_norm":
            return "no (codes are the input's; only the row scale is fitted)"
        if kind == "di_exp":
            return "no (the last step floors: no tie rule)"
        shape = tuple(t["shape"])
        idx = np.unravel_index(flat, shape)
        row, col = tuple(int(i) for i in idx[:-1]), int(idx[-1])
        out = _output(d, man, op)
        p = op["params"]
        if kind == "requant_rows":
            v = np.asarray(_input(d, man, op, "v"), dtype=np.int64)
            s = _input(d, man, op, "scale_in")
            m_in, k_in = (int(np.broadcast_to(a, shape[:-1])[row]) for a in (s.m, s.k))
            return _requant_tie([int(x) for x in v[row]], m_in, k_in, int(p["bits"]), bool(p["symmetric"]),
                                spec, int(out.scale.m[row]), int(out.scale.k[row]), col)
        if kind == "di_matmul":
            acc_op = next((o for o in man["ops"] if o["name"] == op["name"] + ".acc"), None)
            if acc_op is None:
                return "not evaluated (the dump has no .acc stage of this op)"
            P = _output(d, man, acc_op)
            return _requant_tie([int(x) for x in P.q[row]], int(P.scale.m[row]), int(P.scale.k[row]),
                                int(p["out_bits"]), bool(p["out_symmetric"]), spec,
                                int(out.scale.m[row]), int(out.scale.k[row]), col)
        if kind == "fold_scales":
            vals = _input(d, man, op, "vals")
            m = np.broadcast_to(_input(d, man, op, "m"), shape)
            k = np.broadcast_to(_input(d, man, op, "k"), shape)
            try:
                vis = np.broadcast_to(_input(d, man, op, "visible"), shape)
            except KeyError:
                vis = np.ones(shape, dtype=np.bool_)
            if not vis[idx]:
                return "no (masked column: 0, nothing rounded)"
            guard = int(p["guard"])
            kref = int(out.scale.k[row]) - guard
            return _shift_tie((int(vals[idx]) * int(m[idx])) << guard, int(k[idx]) - kref)
        if kind == "di_clipped_softmax":
            exp_op = next((o for o in man["ops"] if o["name"] == op["name"] + ".exp"), None)
            if exp_op is None:
                return "not evaluated (the dump has no .exp stage of this op)"
            e = _output(d, man, exp_op)
            try:
                mask = _input(d, man, op, "mask")
            except KeyError:
                mask = None
            vis = visibility(shape, mask, bool(p.get("causal", False)), int(p.get("q_offset", 0)))
            erow = [int(x) if v else 0 for x, v in zip(e[row], vis[row])]
            S = max(sum(erow), 1)
            F = p.get("p_frac_bits") or spec.softmax_p_frac or spec.softmax_p_out
            if int(out.q[idx]) == 2 ** spec.softmax_p_out - 1:
                return "not evaluated (saturated at the largest code)"
            if spec.softmax_div == "reciprocal":
                return _shift_tie(erow[col] * ((2 ** 62 - 1) // S), 62 - F)
            return "yes" if 2 * ((erow[col] << F) % S) == S else "no"
    except (KeyError, IntsimError, IndexError, ValueError) as e:
        return f"not evaluated ({type(e).__name__}: {e})"
    return f"not evaluated for {kind}"


# ------------------------------------------------------------------ command line

def _load(model_path):
    from .modelfile import load_model, model_hash
    return load_model(model_path), model_hash(model_path)


def cmd_golden(args) -> int:
    import time
    model, sha = _load(args.model)
    if (args.prompt is None) == (args.ids is None):
        raise IntsimError("give exactly one of --prompt TEXT and --ids N,N,...")
    if args.ids is not None:
        try:
            ids = np.array([int(t) for t in args.ids.split(",") if t.strip()], dtype=np.int64)
        except ValueError:
            raise IntsimError(f"--ids: {args.ids!r} is not a comma-separated list of integers") from None
    else:
        from .modelfile import load_tokenizer
        ids = np.array(load_tokenizer(model).encode(args.prompt).ids, dtype=np.int64)
    if ids.size == 0:
        raise IntsimError("prompt: encodes to no tokens")
    if ids.size > model.config.max_pos:
        raise IntsimError(f"prompt: {ids.size} tokens exceed the model's context of {model.config.max_pos}")
    formats = tuple(f.strip() for f in args.format.split(",") if f.strip())
    t0 = time.perf_counter_ns()
    man = export_golden(model, ids, args.out, model_sha256=sha, prompt_text=args.prompt,
                        layers=parse_layers(args.layers, model.config.n_layers), formats=formats,
                        hex_pack=args.hex_pack, stages=not args.no_stages, backend=args.backend,
                        force=args.force, model_path=args.model)
    ms = (time.perf_counter_ns() - t0) // 10 ** 6
    nbytes = man["_bytes_written"]
    tenths = nbytes * 10000 // max(ms, 1) // 10 ** 6            # MB/s in tenths
    print(f"{args.out}: {len(man['ops'])} ops, {len(man['tensors'])} tensors, {ids.size} tokens, "
          f"{nbytes // 1000} kB in {ms} ms ({tenths // 10}.{tenths % 10} MB/s); "
          f"sha256 of the manifest: {file_sha256(Path(args.out).joinpath(MANIFEST))}")
    return 0


def cmd_replay(args) -> int:
    model, sha = _load(args.model)
    man = load_manifest(args.golden_dir)
    ops = select_ops(man, op=args.op, layer=args.layer, start=args.start, stop=args.stop)
    r = replay(args.golden_dir, model, model_sha256=sha, ops=ops, backend=args.backend)
    if args.json:
        print(json.dumps(r, sort_keys=True))
        return 0 if r["identical"] else 1
    bad = [e for e in r["ops"] if not e["identical"]]
    for e in (r["ops"] if args.verbose else bad[:args.max_report]):
        line = f"op {e['index']:>5} {e['name']:<40} {e['kind']:<20} {'identical' if e['identical'] else 'DIFFERS'}"
        if e["chained"]:
            line += f"  (chained: {', '.join(e['chained'])})"
        print(line)
        for t in e["tensors"]:
            if not t["identical"]:
                f = t["first"]
                print(f"      {t['name']}: {t['mismatches']} mismatching element(s)" +
                      ("" if t["format_ok"] else ", width/signedness or shape differs") +
                      (f"; first at {tuple(f['index'])} ({f['component']}): dumped {f['golden']}, "
                       f"replayed {f['got']}, delta {f['lsb_delta']} LSB" if f else ""))
        if "stats" in e:
            print(f"      stats differ: {e['stats']}")
    print(f"replayed {len(r['ops'])} op(s) on backend {args.backend}: " +
          ("all outputs bit-identical to the dump" if r["identical"] else f"{len(bad)} op(s) differ"))
    return 0 if r["identical"] else 1


def cmd_compare(args) -> int:
    r = compare(args.golden_dir, args.dut_dir, outputs_only=args.outputs_only, partial=args.partial)
    if args.json:
        print(json.dumps(r, sort_keys=True))
        return 0 if r["identical"] else 1
    if r["identical"]:
        print(f"identical: {r['compared']} tensor(s) compared, every element equal")
        return 0
    f = r["first"]
    print(f"first divergence: op {f['op_index']} '{f['op']}' ({f['kind']}), tensor {f['tensor']} "
          f"{f['component']} at index {tuple(f['index'])} (flat {f['flat']}): golden {f['golden']}, "
          f"DUT {f['got']}, delta {f['lsb_delta']:+d} LSB; golden value on a rounding tie: {f['tie']}")
    print("mismatches per op:")
    for o in r["mismatching_ops"][:args.max_report]:
        g = o["first"]
        print(f"  op {o['index']:>5} {o['name']:<40} {o['kind']:<20} {o['mismatches']:>9}  first "
              f"{tuple(g['index'])} golden {g['golden']} DUT {g['got']} ({g['lsb_delta']:+d}), tie: {g['tie']}")
    more = len(r["mismatching_ops"]) - args.max_report
    if more > 0:
        print(f"  ... and {more} more op(s)")
    print(f"{len(r['mismatching_ops'])} of {len(r['ops'])} compared op(s) differ")
    return 1


def add_golden_parsers(sub) -> None:
    g = sub.add_parser("golden", help="dump every op's inputs, outputs and scales as golden vectors",
                       description="One prefill of the prompt through the op-by-op integer graph; "
                                   "writes every op's inputs, outputs and requantization parameters "
                                   "in execution order (.npy, $readmemh hex, decimal text) with a "
                                   "manifest.json (docs/GOLDEN_FORMAT.md).")
    g.add_argument("model", metavar="MODEL", help="integer model file")
    g.add_argument("--prompt", help="prompt text (tokenized with the model's tokenizer)")
    g.add_argument("--ids", help="token ids instead of a prompt, e.g. 1,17,42")
    g.add_argument("--out", required=True, metavar="DIR", help="output directory (created; must be empty)")
    g.add_argument("--layers", help="dump only these layers, e.g. 0,2-3 (numbering stays the full graph's)")
    g.add_argument("--format", default="npy,hex", help="npy (always) and any of hex, txt (default npy,hex)")
    g.add_argument("--hex-pack", action="store_true", help="also write the packed 32-bit layout of sub-byte tensors")
    g.add_argument("--no-stages", action="store_true", help="leave out the stage records (matmul input codes "
                   "and accumulators, softmax clip / requant / DI-Exp)")
    g.add_argument("--backend", default="numba", choices=("numba", "reference"))
    g.add_argument("--force", action="store_true", help="replace an earlier dump in DIR")
    g.set_defaults(func=cmd_golden)
    r = sub.add_parser("replay", help="re-run ops from a golden dump and check their outputs bit for bit",
                       description="Re-runs one op, one layer, a range of ops or all of them from the "
                                   "dumped inputs; an input produced by an op replayed earlier in the "
                                   "same run comes from that replay.  Exit 0 only when every output is "
                                   "bit-identical to the dump.")
    r.add_argument("golden_dir", metavar="GOLDEN_DIR")
    r.add_argument("model", metavar="MODEL", help="the model file the dump was made from")
    sel = r.add_mutually_exclusive_group()
    sel.add_argument("--op", help="one op, by name or index")
    sel.add_argument("--layer", type=int, help="every op of one layer")
    sel.add_argument("--from", dest="start", type=int, metavar="A", help="first op index of a range")
    r.add_argument("--to", dest="stop", type=int, metavar="B", help="last op index of a range")
    r.add_argument("--backend", default="numba", choices=("numba", "reference"))
    r.add_argument("--json", action="store_true", help="print one JSON object")
    r.add_argument("--verbose", action="store_true", help="list every op, not only the differing ones")
    r.add_argument("--max-report", type=int, default=20, metavar="N", help="differing ops listed (default 20)")
    r.set_defaults(func=cmd_replay)
    c = sub.add_parser("compare", help="compare a device-under-test dump with a golden dump, exactly",
                       description="Checks both manifests and every file's sha256, then compares every "
                                   "tensor exactly: first divergent op and element, both values, LSB "
                                   "delta, mismatches per op, and whether the golden value sat on a "
                                   "rounding tie.  Exit 0 only when identical, 1 on a mismatch, 2 on "
                                   "bad input.")
    c.add_argument("golden_dir", metavar="GOLDEN_DIR")
    c.add_argument("dut_dir", metavar="DUT_DIR")
    c.add_argument("--outputs-only", action="store_true", help="compare op outputs only")
    c.add_argument("--partial", action="store_true", help="the DUT dumped a subset: compare what it has")
    c.add_argument("--json", action="store_true", help="print one JSON object")
    c.add_argument("--max-report", type=int, default=20, metavar="N", help="differing ops listed (default 20)")
    c.set_defaults(func=cmd_compare)
