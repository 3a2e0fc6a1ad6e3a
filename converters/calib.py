"""FSBR calibration parameters: read them safely, validate them against a model, fold them.

I-LLM's calibration (FSBR, illm-method.md section 3) learns, per decoder layer, six
smoothing vectors and a learned-weight-clipping (LWC) pair per linear layer.  Its output
is ``fsbr_parameters.pth``: ``{layer_index: OrderedDict(name -> tensor)}`` saved with
``torch.save``.  This module

* reads that file WITHOUT torch and without executing pickled code
  (``read_fsbr_pth``): the zip's ``data.pkl`` is unpickled by a restricted unpickler
  that resolves only the handful of globals a tensor state dict needs and refuses every
  other global by name, before anything is called; tensors are rebuilt with NumPy from
  the zip's raw storages (offset, size and stride honoured and bounds-checked);
* reads and writes the project's own form, one safetensors file of float32 tensors
  named ``layers.{i}.{name}`` (``read_calib_safetensors``, ``save_calib_safetensors``);
* validates the parameters against a model (``prepare_calib``: layer count, names,
  shapes, finiteness, positive scales, RoPE-compatible q/k smoothing) with errors that
  name the layer and the parameter, before any output is written;
* applies them in float64 (``apply_smoothing``, ``lwc_bounds``, ``alpha_inv_mantissas``),
  as the official code's ``smooth_and_quant_inplace`` does:

  ========================  =============================================================
  parameter                 fold (s = the vector; "expand" repeats a kv-head vector over
                            the query heads of its group, GQA)
  ========================  =============================================================
  qkv_smooth_scale  [dim]   gamma_attn /= s;  W_q, W_k, W_v [:, c] *= s_c
  fc1_smooth_scale  [dim]   gamma_ffn /= s;   W_gate, W_up [:, c] *= s_c
  out_smooth_scale  [kv]    W_v [c, :] /= s_c;  W_o [:, c'] *= expand(s)_c'
  qkt_smooth_scale  [kv]    W_k [c, :] *= s_c;  W_q [c', :] /= expand(s)_c'
  x1x2_smooth_scale [ffn]   W_gate [c, :] *= s_c;  W_up [c, :] /= s_c;  SwiGLU computes
                            x1 * sigmoid(x1 / s) * x2  (alpha = s)
  fc2_smooth_scale  [ffn]   W_up [c, :] /= s_c;  W_down [:, c] *= s_c
  ========================  =============================================================

  (kv = n_kv_heads * head_dim, ffn = intermediate size).  Before folding, every smoothing
  scale below 1e-2 is raised to 1e-2, as the official code does (``truncate_number``).
  LWC: per output channel (or per weight group) ``hi = sigmoid(upbound_factor) *
  max(W_row)``, ``lo = sigmoid(lowbound_factor) * min(W_row)``, on the final (smoothed,
  gamma-folded) weight, then widened to contain 0 (``converters.weights`` needs
  ``lo <= 0 <= hi``).

Errors are ``CalibError`` (an ``IntsimError``) naming the file, the layer and the parameter.
"""
from __future__ import annotations

import collections
import io
import pickle
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from intsim.errors import IntsimError
from intsim.swiglu import ALPHA_K_LIMIT, ALPHA_M_LIMIT

__all__ = [
    "CalibError", "LayerCalib", "SMOOTH_SCALES", "SMOOTH_SHIFTS", "LWC_LINEARS",
    "read_calib", "read_fsbr_pth", "read_calib_safetensors", "save_calib_safetensors",
    "prepare_calib", "apply_smoothing", "lwc_bounds", "alpha_inv_mantissas", "sigmoid",
    "SCALE_FLOOR",
]


class CalibError(IntsimError):
    """Calibration parameters that cannot be read or do not fit the model."""


#: smoothing vectors: name -> which model dimension its length is
SMOOTH_SCALES = {
    "qkv_smooth_scale": "dim",
    "fc1_smooth_scale": "dim",
    "out_smooth_scale": "kv",
    "fc2_smooth_scale": "ffn",
    "qkt_smooth_scale": "kv",
    "x1x2_smooth_scale": "ffn",
}
#: channel shifts (OmniQuant's LET); LLaMA has none: accepted only when all zero
SMOOTH_SHIFTS = {
    "qkv_smooth_shift": "dim",
    "fc1_smooth_shift": "dim",
    "out_smooth_shift": "kv",
    "fc2_smooth_shift": "ffn",
}
#: official module names of the seven linears -> LayerParams names
LWC_LINEARS = {
    "self_attn.q_proj": "wq", "self_attn.k_proj": "wk", "self_attn.v_proj": "wv",
    "self_attn.o_proj": "wo", "mlp.gate_proj": "w_gate", "mlp.up_proj": "w_up",
    "mlp.down_proj": "w_down",
}
_LWC_SUFFIX = ".weight_quantizer."
_LWC_KINDS = ("upbound_factor", "lowbound_factor")
#: the official code's truncate_number threshold: |s| < 1e-2 becomes 1e-2 before folding
SCALE_FLOOR = 1e-2
#: safetensors metadata of the project's calibration form
CALIB_FORMAT = "intsim-fsbr-calib"


# ====================================================================== reading .pth

_STORAGE_DTYPES = {
    "FloatStorage": np.dtype("<f4"),
    "HalfStorage": np.dtype("<f2"),
    "BFloat16Storage": "bfloat16",           # rebuilt by a 16-bit shift into float32
    "DoubleStorage": np.dtype("<f8"),
}


@dataclass(frozen=True)
class _StorageType:
    name: str


@dataclass
class _Tensor:
    """A rebuilt tensor (what ``torch._utils._rebuild_tensor_v2`` stands for)."""
    array: np.ndarray


class _PthReader:
    """Rebuilds a torch zip checkpoint's object tree with NumPy, resolving no code."""

    def __init__(self, path: Path, zf: zipfile.ZipFile, prefix: str):
        self.path, self.zf, self.prefix = path, zf, prefix
        self.storages: dict[str, np.ndarray] = {}

    # --- the only callables the pickle may reach
    def rebuild_tensor_v2(self, storage, storage_offset, size, stride, requires_grad=False,
                          backward_hooks=None, metadata=None, *extra):
        if not isinstance(storage, np.ndarray):
            raise CalibError(f"{self.path}: data.pkl: _rebuild_tensor_v2 got a "
                             f"{type(storage).__name__} instead of a storage")
        return _Tensor(_as_strided(self.path, storage, storage_offset, size, stride))

    def rebuild_parameter(self, data, requires_grad=False, backward_hooks=None, *extra):
        if not isinstance(data, _Tensor):
            raise CalibError(f"{self.path}: data.pkl: _rebuild_parameter got a "
                             f"{type(data).__name__} instead of a tensor")
        return data

    def allowed(self) -> dict[str, object]:
        g = {"collections.OrderedDict": collections.OrderedDict,
             "torch._utils._rebuild_tensor_v2": self.rebuild_tensor_v2,
             "torch._utils._rebuild_parameter": self.rebuild_parameter}
        for name in _STORAGE_DTYPES:
            g[f"torch.{name}"] = _StorageType(name)
        return g

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise CalibError(f"{self.path}: data.pkl: unsupported persistent id {pid!r:.80}")
        _, stype, key, _location, numel = pid
        if not isinstance(stype, _StorageType):
            raise CalibError(f"{self.path}: data.pkl: storage type {stype!r:.80} is not one of "
                             f"torch.{{{', '.join(_STORAGE_DTYPES)}}}")
        if not isinstance(key, str) or not isinstance(numel, int) or numel < 0:
            raise CalibError(f"{self.path}: data.pkl: malformed storage id {pid!r:.80}")
        if key not in self.storages:
            self.storages[key] = self._read_storage(key, stype.name, numel)
        return self.storages[key]

    def _read_storage(self, key: str, stype: str, numel: int) -> np.ndarray:
        name = f"{self.prefix}data/{key}"
        try:
            raw = self.zf.read(name)
        except KeyError:
            raise CalibError(f"{self.path}: storage '{name}' named in data.pkl is missing "
                             f"from the archive") from None
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            raise CalibError(f"{self.path}: storage '{name}' is unreadable: {e}") from e
        dt = _STORAGE_DTYPES[stype]
        item = 2 if isinstance(dt, str) else dt.itemsize
        if len(raw) != numel * item:
            raise CalibError(f"{self.path}: storage '{name}' has {len(raw)} bytes, its "
                             f"{stype} of {numel} elements needs {numel * item}")
        if isinstance(dt, str):       # bfloat16: the high half of a float32
            u = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << np.uint32(16)
            return u.view(np.float32)
        return np.frombuffer(raw, dtype=dt).astype(dt.newbyteorder("="))


def _as_strided(path, storage: np.ndarray, offset, size, stride) -> np.ndarray:
    ok = (isinstance(offset, int) and offset >= 0 and isinstance(size, tuple)
          and isinstance(stride, tuple) and len(size) == len(stride)
          and all(isinstance(v, int) and v >= 0 for v in size + stride))
    if not ok:
        raise CalibError(f"{path}: data.pkl: malformed tensor geometry (offset {offset!r:.40}, "
                         f"size {size!r:.40}, stride {stride!r:.40})")
    n = int(np.prod(size, dtype=np.int64)) if size else 1
    if n == 0:
        return np.zeros(size, dtype=storage.dtype)
    last = offset + sum((s - 1) * st for s, st in zip(size, stride))
    if last >= storage.size:
        raise CalibError(f"{path}: data.pkl: tensor of size {size}, stride {stride} at offset "
                         f"{offset} reaches element {last} of a storage of {storage.size}")
    it = storage.itemsize
    view = np.lib.stride_tricks.as_strided(storage[offset:], shape=size,
                                           strides=tuple(st * it for st in stride),
                                           writeable=False)
    return np.array(view)


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, f, path: Path, reader: _PthReader):
        super().__init__(f)
        self._path = path
        self._reader = reader
        self._globals = reader.allowed()

    def find_class(self, module, name):
        key = f"{module}.{name}"
        if key in self._globals:
            return self._globals[key]
        raise CalibError(f"{self._path}: data.pkl references the global '{key}', which a tensor "
                         f"state dict does not need; refusing to load the file (nothing in it "
                         f"was executed)")

    def persistent_load(self, pid):
        return self._reader.persistent_load(pid)


def read_fsbr_pth(path) -> dict[int, dict[str, np.ndarray]]:
    """Read an official ``fsbr_parameters.pth`` (torch zip format) without torch.

    Returns ``{layer: {name: float32/float64 array}}``.  Only these globals are
    resolved: ``collections.OrderedDict``, ``torch._utils._rebuild_tensor_v2``,
    ``torch._utils._rebuild_parameter`` and the storage types ``torch.FloatStorage``,
    ``HalfStorage``, ``BFloat16Storage``, ``DoubleStorage`` (each mapped to NumPy code
    here); any other global is refused, by name, when the unpickler meets it, before it
    could be called.
    """
    path = Path(path)
    try:
        zf = zipfile.ZipFile(path)
    except FileNotFoundError:
        raise CalibError(f"{path}: no such calibration file") from None
    except (zipfile.BadZipFile, OSError) as e:
        raise CalibError(f"{path}: not a torch zip checkpoint ({e}); legacy (pre-1.6) torch "
                         f"files are not supported: re-save with torch.save, or write the "
                         f"safetensors form (converters.calib.save_calib_safetensors)") from e
    with zf:
        pkls = [n for n in zf.namelist() if n.endswith("data.pkl") and n.count("/") == 1]
        if len(pkls) != 1:
            raise CalibError(f"{path}: expected exactly one '<archive>/data.pkl' in the zip, "
                             f"found {len(pkls)}")
        prefix = pkls[0][: -len("data.pkl")]
        bo = prefix + "byteorder"
        if bo in zf.namelist() and zf.read(bo).strip() not in (b"little", b""):
            raise CalibError(f"{path}: big-endian torch checkpoints are not supported")
        reader = _PthReader(path, zf, prefix)
        try:
            data = zf.read(pkls[0])
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            raise CalibError(f"{path}: {pkls[0]} is unreadable: {e}") from e
        try:
            obj = _RestrictedUnpickler(io.BytesIO(data), path, reader).load()
        except CalibError:
            raise
        except Exception as e:    # malformed pickle stream
            raise CalibError(f"{path}: data.pkl is not a valid pickle of a state dict: "
                             f"{type(e).__name__}: {e}") from e
    return _tree_to_params(path, obj)


def _tree_to_params(path: Path, obj) -> dict[int, dict[str, np.ndarray]]:
    if not isinstance(obj, dict):
        raise CalibError(f"{path}: expected {{layer_index: OrderedDict(name -> tensor)}}, got "
                         f"a {type(obj).__name__}")
    out: dict[int, dict[str, np.ndarray]] = {}
    for layer, sd in obj.items():
        if isinstance(layer, str) and layer.isdigit():
            layer = int(layer)
        if isinstance(layer, bool) or not isinstance(layer, int):
            raise CalibError(f"{path}: top-level key {layer!r:.40} is not a layer index")
        if not isinstance(sd, dict):
            raise CalibError(f"{path}: layer {layer}: expected a dict of tensors, got a "
                             f"{type(sd).__name__}")
        params = {}
        for name, t in sd.items():
            if not isinstance(name, str):
                raise CalibError(f"{path}: layer {layer}: parameter name {name!r:.40} is not a "
                                 f"string")
            if not isinstance(t, _Tensor):
                raise CalibError(f"{path}: layer {layer}: parameter '{name}' is a "
                                 f"{type(t).__name__}, not a tensor")
            params[name] = t.array
        out[layer] = params
    return out


# ====================================================================== safetensors form

_ST_KEY = re.compile(r"layers\.(\d+)\.(.+)")


def save_calib_safetensors(params: dict[int, dict[str, np.ndarray]], path) -> Path:
    """Write calibration parameters as float32 tensors ``layers.{i}.{name}``."""
    from safetensors.numpy import save_file

    path = Path(path)
    tensors = {}
    for layer, sd in params.items():
        for name, a in sd.items():
            tensors[f"layers.{int(layer)}.{name}"] = np.ascontiguousarray(a, dtype=np.float32)
    save_file(tensors, str(path), metadata={"format": CALIB_FORMAT, "format_version": "1"})
    return path


def read_calib_safetensors(path) -> dict[int, dict[str, np.ndarray]]:
    """Read the project's safetensors form (float32 tensors named ``layers.{i}.{name}``)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CalibError(f"{path}: no such calibration file")
    out: dict[int, dict[str, np.ndarray]] = {}
    try:
        with safe_open(str(path), framework="np") as f:
            for key in f.keys():
                m = _ST_KEY.fullmatch(key)
                if not m:
                    raise CalibError(f"{path}: tensor '{key}' is not named "
                                     f"'layers.{{i}}.{{parameter}}'")
                dtype = f.get_slice(key).get_dtype()
                if dtype != "F32":
                    raise CalibError(f"{path}: tensor '{key}': dtype {dtype}, expected F32")
                out.setdefault(int(m.group(1)), {})[m.group(2)] = f.get_tensor(key)
    except CalibError:
        raise
    except Exception as e:
        raise CalibError(f"{path}: not a readable safetensors file (truncated or corrupt?): "
                         f"{e}") from e
    return out


def read_calib(path) -> dict[int, dict[str, np.ndarray]]:
    """Read calibration parameters, choosing the reader by the file's first bytes
    (a zip: the official ``.pth``; otherwise the safetensors form)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except FileNotFoundError:
        raise CalibError(f"{path}: no such calibration file") from None
    except OSError as e:
        raise CalibError(f"{path}: cannot read: {e}") from e
    if head[:2] == b"PK":
        return read_fsbr_pth(path)
    if head[:1] == b"\x80":
        raise CalibError(f"{path}: a legacy (pre-1.6, non-zip) torch file; re-save it with a "
                         f"current torch.save, or convert it to the safetensors form")
    return read_calib_safetensors(path)


# ====================================================================== validation

@dataclass
class LayerCalib:
    """One layer's validated parameters, float64.

    ``smooth``: smoothing vectors after the 1e-2 floor (and the q/k pair tie, if asked).
    ``lwc``: LayerParams linear name -> (upbound_factor, lowbound_factor), each [N, n] with
    n = 1 (per output channel) or n = K / group_size (per group).
    """
    smooth: dict[str, np.ndarray] = field(default_factory=dict)
    lwc: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    #: RoPE pairs of ``qkt_smooth_scale`` that differed and were tied (geometric mean), and
    #: the largest ratio between the two factors of such a pair (1.0: none)
    qkt_tied: int = 0
    qkt_max_ratio: float = 1.0


def _dims(config) -> dict[str, int]:
    return {"dim": config.dim, "kv": config.n_kv_heads * config.head_dim,
            "ffn": config.ffn_dim}


def _linear_nk(config) -> dict[str, tuple[int, int]]:
    c = config
    q, kv = c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim
    return {"wq": (q, c.dim), "wk": (kv, c.dim), "wv": (kv, c.dim), "wo": (c.dim, q),
            "w_gate": (c.ffn_dim, c.dim), "w_up": (c.ffn_dim, c.dim), "w_down": (c.dim, c.ffn_dim)}


#: how a ``qkt_smooth_scale`` with untied RoPE pairs is taken ("refuse": the old name of
#: "strict", still accepted)
QKT_TIES = ("geomean", "strict")


def prepare_calib(params: dict[int, dict[str, np.ndarray]], config, group_size: int = 0, *,
                  qkt_tie: str = "geomean", source="calibration") -> list[LayerCalib]:
    """Validate ``params`` against the model and return one ``LayerCalib`` per layer.

    ``config``: anything with ``n_layers, dim, n_heads, n_kv_heads, head_dim, ffn_dim``
    (e.g. ``intsim.model.ModelConfig``).  ``group_size``: the weight group size the model
    is converted with (0 = per output channel), which group-wise LWC factors must match.
    ``qkt_tie``: for a ``qkt_smooth_scale`` whose RoPE-paired channels i and i + head_dim/2
    differ (its fold would not commute with RoPE, SPEC section 9.3; the official I-LLM
    calibration learns them untied): ``"geomean"`` (default) replaces both by their
    geometric mean and counts the pairs in ``LayerCalib.qkt_tied``; ``"strict"`` (old
    name ``"refuse"``) refuses.
    Raises ``CalibError`` naming the layer and parameter for: a wrong layer count or
    index, an unknown parameter (``rescale_param`` included), a layer whose parameter
    set differs from layer 0's, a wrong shape, a non-finite value, a smoothing scale
    <= 0, a non-zero smoothing shift, an LWC pair with one half missing.
    """
    if qkt_tie == "refuse":
        qkt_tie = "strict"
    if qkt_tie not in QKT_TIES:
        raise CalibError(f"qkt_tie: {qkt_tie!r} is not 'geomean' or 'strict'")
    n = config.n_layers
    if sorted(params) != list(range(n)):
        have = sorted(params)
        missing = sorted(set(range(n)) - set(have))
        extra = sorted(set(have) - set(range(n)))
        what = (f"layer {missing[0]} is missing" if missing else f"has layer {extra[0]}")
        raise CalibError(f"{source}: layer count: the file has {len(have)} layers "
                         f"({what}); the model has {n} (layers 0..{n - 1})")
    if not params[0]:
        raise CalibError(f"{source}: layer 0 holds no parameters (an empty calibration "
                         f"would convert as an uncalibrated model; leave --calib out instead)")
    dims = _dims(config)
    nk = _linear_nk(config)
    names0 = set(params[0])
    out = []
    for i in range(n):
        sd = params[i]
        if set(sd) != names0:
            diff = sorted(set(sd) ^ names0)[0]
            raise CalibError(f"{source}: layer {i}: parameter '{diff}' is present in "
                             f"{'layer ' + str(i) if diff in sd else 'layer 0'} but not in "
                             f"{'layer 0' if diff in sd else 'layer ' + str(i)}")
        lc = LayerCalib()
        lwc_raw: dict[str, dict[str, np.ndarray]] = {}
        for name, raw in sd.items():
            where = f"{source}: layer {i}: '{name}'"
            a = np.asarray(raw)
            if a.dtype.kind != "f":
                raise CalibError(f"{where}: dtype {a.dtype}, expected a float tensor")
            a = a.astype(np.float64)
            if not np.all(np.isfinite(a)):
                bad = int(np.flatnonzero(~np.isfinite(a.ravel()))[0])
                raise CalibError(f"{where}: non-finite value {a.ravel()[bad]} at flat index {bad}")
            if name in SMOOTH_SCALES:
                want = (dims[SMOOTH_SCALES[name]],)
                if a.shape != want:
                    raise CalibError(f"{where}: shape {a.shape}, expected {want} "
                                     f"({SMOOTH_SCALES[name]})")
                if np.any(a <= 0):
                    bad = int(np.flatnonzero(a <= 0)[0])
                    raise CalibError(f"{where}: scale {a[bad]} at channel {bad} is not positive")
                lc.smooth[name] = np.maximum(a, SCALE_FLOOR)
            elif name in SMOOTH_SHIFTS:
                want = (dims[SMOOTH_SHIFTS[name]],)
                if a.shape != want:
                    raise CalibError(f"{where}: shape {a.shape}, expected {want}")
                if np.any(a != 0):
                    raise CalibError(f"{where}: non-zero channel shifts are not supported "
                                     f"(LLaMA's FSBR uses none; a shift would add a bias the "
                                     f"integer model does not have)")
            else:
                lin, _, kind = name.rpartition(_LWC_SUFFIX)
                if lin not in LWC_LINEARS or kind not in _LWC_KINDS:
                    hint = (" (the channel rescale option is not supported)"
                            if "rescale" in name else "")
                    raise CalibError(f"{where}: unknown parameter{hint}")
                lwc_raw.setdefault(LWC_LINEARS[lin], {})[kind] = a
        if "qkt_smooth_scale" in lc.smooth:
            (lc.smooth["qkt_smooth_scale"], lc.qkt_tied,
             lc.qkt_max_ratio) = _tie_qk(source, i, lc.smooth["qkt_smooth_scale"], config,
                                         qkt_tie)
        for lin, pair in lwc_raw.items():
            N, K = nk[lin]
            off = {v: k for k, v in LWC_LINEARS.items()}[lin]
            if set(pair) != set(_LWC_KINDS):
                miss = (set(_LWC_KINDS) - set(pair)).pop()
                raise CalibError(f"{source}: layer {i}: '{off}{_LWC_SUFFIX}{miss}' is missing "
                                 f"(its LWC partner is present)")
            lc.lwc[lin] = tuple(_lwc_shape(source, i, f"{off}{_LWC_SUFFIX}{kind}", pair[kind],
                                           N, K, group_size) for kind in _LWC_KINDS)
        out.append(lc)
    return out


def _lwc_shape(source, i, name, a, N, K, group_size) -> np.ndarray:
    G = group_size or K
    ng = K // G if K % G == 0 else None
    where = f"{source}: layer {i}: '{name}'"
    if a.shape in ((N,), (N, 1)):
        return a.reshape(N, 1)
    if ng is not None and ng > 1 and a.shape == (N * ng, 1):
        return a.reshape(N, ng)
    if a.ndim == 2 and a.shape[1] == 1 and a.shape[0] % N == 0 and a.shape[0] > N:
        other = K // (a.shape[0] // N) if K % (a.shape[0] // N) == 0 else "?"
        raise CalibError(f"{where}: shape {a.shape} is group-wise for group size {other}, but "
                         f"the model is converted with group size {G}")
    raise CalibError(f"{where}: shape {a.shape}, expected ({N}, 1) or ({N},) per output "
                     f"channel" + (f", or ({N * ng}, 1) per group of {G}" if ng and ng > 1 else ""))


def _tie_qk(source, i, s: np.ndarray, config, mode: str) -> tuple[np.ndarray, int, float]:
    """(tied vector, pairs changed, largest ratio within a changed pair)."""
    hd = config.head_dim
    pairs = s.reshape(config.n_kv_heads, 2, hd // 2)
    a, b = pairs[:, 0, :], pairs[:, 1, :]
    if np.array_equal(a, b):
        return s, 0, 1.0
    if mode == "geomean":
        g = np.sqrt(a * b)
        ratio = float(np.max(np.maximum(a, b) / np.minimum(a, b)))
        return np.stack([g, g], axis=1).reshape(-1), int(np.count_nonzero(a != b)), ratio
    h, j = (int(v[0]) for v in np.nonzero(a != b))
    raise CalibError(
        f"{source}: layer {i}: 'qkt_smooth_scale' differs between RoPE-paired channels "
        f"{h * hd + j} and {h * hd + j + hd // 2} (kv head {h}: {a[h, j]} vs {b[h, j]}); "
        f"the q/k fold then does not commute with RoPE (docs/SPEC.md section 9.3). Tie the "
        f"pairs, or convert with qkt_tie='geomean' (--qkt-tie geomean, the default)")


# ====================================================================== applying

def expand_kv(s: np.ndarray, n_heads: int, n_kv_heads: int) -> np.ndarray:
    """A [n_kv_heads * head_dim] vector repeated over each kv head's query heads (GQA)."""
    hd = s.size // n_kv_heads
    g = n_heads // n_kv_heads
    return np.repeat(s.reshape(n_kv_heads, 1, hd), g, axis=1).reshape(-1)


def apply_smoothing(w: dict[str, np.ndarray], gamma_attn: np.ndarray, gamma_ffn: np.ndarray,
                    lc: LayerCalib, config):
    """Fold one layer's smoothing vectors (float64, exact equivalences up to rounding).

    ``w``: LayerParams names -> float64 [N, K] weights.  Returns ``(w', gamma_attn',
    gamma_ffn', alpha)`` with ``alpha`` the x1x2 vector (None when absent), new arrays.
    """
    w = {k: np.array(v, dtype=np.float64) for k, v in w.items()}
    ga = np.array(gamma_attn, dtype=np.float64)
    gf = np.array(gamma_ffn, dtype=np.float64)
    sm = lc.smooth
    H, Hkv = config.n_heads, config.n_kv_heads
    if "qkv_smooth_scale" in sm:
        s = sm["qkv_smooth_scale"]
        ga = ga / s
        for k in ("wq", "wk", "wv"):
            w[k] = w[k] * s[None, :]
    if "fc1_smooth_scale" in sm:
        s = sm["fc1_smooth_scale"]
        gf = gf / s
        for k in ("w_gate", "w_up"):
            w[k] = w[k] * s[None, :]
    if "out_smooth_scale" in sm:
        s = sm["out_smooth_scale"]
        w["wv"] = w["wv"] / s[:, None]
        w["wo"] = w["wo"] * expand_kv(s, H, Hkv)[None, :]
    if "qkt_smooth_scale" in sm:
        s = sm["qkt_smooth_scale"]
        w["wk"] = w["wk"] * s[:, None]
        w["wq"] = w["wq"] / expand_kv(s, H, Hkv)[:, None]
    alpha = None
    if "x1x2_smooth_scale" in sm:
        alpha = sm["x1x2_smooth_scale"]
        w["w_gate"] = w["w_gate"] * alpha[:, None]
        w["w_up"] = w["w_up"] / alpha[:, None]
    if "fc2_smooth_scale" in sm:
        s = sm["fc2_smooth_scale"]
        w["w_up"] = w["w_up"] / s[:, None]
        w["w_down"] = w["w_down"] * s[None, :]
    return w, ga, gf, alpha


def sigmoid(x: np.ndarray) -> np.ndarray:
    """1 / (1 + e^-x) in float64, without overflow for large |x|."""
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def lwc_bounds(w: np.ndarray, up: np.ndarray, low: np.ndarray, group_size: int = 0):
    """LWC clipping bounds ``(lo, hi)``, each [N, K/G], for ``quantize_weight``.

    ``hi = sigmoid(up) * max(W_group)``, ``lo = sigmoid(low) * min(W_group)`` (OmniQuant's
    and I-LLM's rule), then ``lo = min(lo, 0)``, ``hi = max(hi, 0)`` so the range holds 0.
    ``up``/``low``: [N, 1] (one factor per output channel, applied to each of its groups)
    or [N, K/G].
    """
    w = np.asarray(w, dtype=np.float64)
    N, K = w.shape
    G = group_size or K
    wg = w.reshape(N, K // G, G)
    hi = sigmoid(up) * wg.max(axis=2)
    lo = sigmoid(low) * wg.min(axis=2)
    return np.minimum(lo, 0.0), np.maximum(hi, 0.0)


def alpha_inv_mantissas(alpha: np.ndarray, where: str = "alpha") -> tuple[np.ndarray, int]:
    """``1/alpha`` as int64 mantissas ``m_c`` over one exponent ``k``: ``1/alpha_c ~ m_c 2^-k``.

    ``k`` is the largest exponent <= 48 with every ``m_c = rint(2^k / alpha_c) <= 2^24``
    (DI-SwiGLU's bounds), so the largest ``1/alpha`` keeps 24 bits; a channel whose
    mantissa would round to 0 (a spread of ``alpha`` above 2^25) is refused.  Relative
    error of each ``m_c 2^-k`` is ``<= 1 / (2 m_c)`` (half to even, ``np.rint``).
    """
    a = np.asarray(alpha, dtype=np.float64)
    if a.ndim != 1 or a.size == 0 or not np.all(np.isfinite(a)) or np.any(a <= 0):
        raise CalibError(f"{where}: expected a non-empty vector of finite positive scales")
    r = 1.0 / a
    _, e = np.frexp(r.max())                  # max r = f 2^e, f in [0.5, 1)
    k = min(ALPHA_K_LIMIT, 25 - int(e))       # max r * 2^k in [2^24, 2^25): fits iff f = 1/2
    m = np.rint(np.ldexp(r, k))
    if m.max() > ALPHA_M_LIMIT:
        k -= 1                                # max r * 2^k in [2^23, 2^24): always fits
        m = np.rint(np.ldexp(r, k))
    if k < 0:
        raise CalibError(f"{where}: 1/alpha up to {r.max():.3g} needs more than 24 mantissa bits "
                         f"at exponent 0")
    m = m.astype(np.int64)
    if m.min() < 1:
        c = int(np.argmin(m))
        raise CalibError(f"{where}: channel {c}: 1/alpha = {r[c]:.3g} underflows the shared "
                         f"exponent 2^-{k} (alpha spans more than 2^25)")
    assert m.max() <= ALPHA_M_LIMIT
    return m, k


def describe(params: dict[int, dict[str, np.ndarray]]) -> dict:
    """A small JSON-able summary (layer count and parameter names) for model metadata."""
    names = sorted(params[min(params)]) if params else []
    return {"layers": len(params), "parameters": names}

