"""The integer model file: one safetensors file of integer tensors plus a JSON header.

``save_model`` writes an ``IntModel`` (atomically), ``load_model`` reads and validates
one, ``load_tokenizer`` returns the tokenizer embedded in it, ``model_hash`` is the
file's sha256.  The layout (tensor names, dtypes, shapes, the metadata schema and the
version policy) is docs/MODEL_FORMAT.md; ``converters.convert`` builds the file from a
float checkpoint.

Every error is an ``IntsimError`` that names the file and, where one is at fault, the
tensor or metadata key.  Nothing here is float: the header's real-valued provenance
(e.g. ``rope_theta``) is kept as text.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from . import __version__
from .errors import IntsimError
from .hashing import file_sha256
from .matmul import QWeight, two_step_bits
from .model import IntModel, LayerParams, ModelConfig, Widths
from .options import Spec

#: format magic and version (docs/MODEL_FORMAT.md, "Version policy")
MAGIC = "intsim-model"
FORMAT_VERSION = 1
#: the one safetensors ``__metadata__`` key holding the JSON header
META_KEY = "intsim"
#: the seven linear layers of a block, as LayerParams names them (and the tensor names)
LINEARS = ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down")
#: the optional per-channel DI-Norm weights of a layer (int16; exponents in metadata norm_k)
NORM_WEIGHTS = ("attn_norm_w", "ffn_norm_w")
TOKENIZER_TENSOR = "tokenizer.json"
REGENERATE = "regenerate it with: intsim convert SRC --out MODEL"

_I64 = np.dtype(np.int64)
_U8 = np.dtype(np.uint8)


def _err(path, msg: str) -> IntsimError:
    return IntsimError(f"{path}: {msg}")


# ------------------------------------------------------------------ layout

def linear_shapes(c: ModelConfig) -> dict[str, tuple[int, int]]:
    """[N, K] of each linear of a block."""
    q_out, kv_out = c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim
    return {"wq": (q_out, c.dim), "wk": (kv_out, c.dim), "wv": (kv_out, c.dim),
            "wo": (c.dim, q_out), "w_gate": (c.ffn_dim, c.dim), "w_up": (c.ffn_dim, c.dim),
            "w_down": (c.dim, c.ffn_dim)}


def rope_dtype(spec: Spec) -> np.dtype:
    """int16 tables for rope_frac_bits <= 14 (values up to 2^14 fit), else int32."""
    return np.dtype(np.int16) if spec.rope_frac_bits <= 14 else np.dtype(np.int32)


def _qweight_tensors(prefix: str, w: QWeight) -> dict[str, np.ndarray]:
    t = {f"{prefix}.q": w.q, f"{prefix}.m": w.m, f"{prefix}.b": w.b}
    if w.row_bits is not None:
        t[f"{prefix}.row_bits"] = w.row_bits
    return t


def _qweight_meta(w: QWeight) -> dict:
    d = {"bits": w.bits, "group_size": w.group_size, "k": w.k}
    if w.row_bits is not None:
        d["row_bits"] = True          # mixed precision between output channels (MixLLM)
    return d


def model_tensors(model: IntModel) -> dict[str, np.ndarray]:
    """Every integer tensor of ``model`` under its file name (docs/MODEL_FORMAT.md)."""
    t = {"emb.q": model.emb_q, "emb.m": model.emb_m.astype(np.int64),
         "emb.k": model.emb_k.astype(np.int64)}
    for i, L in enumerate(model.layers):
        for name in LINEARS:
            t.update(_qweight_tensors(f"layers.{i}.{name}", getattr(L, name)))
        if L.alpha_inv is not None:
            t[f"layers.{i}.alpha_inv"] = L.alpha_inv.astype(np.int64)
        for n in NORM_WEIGHTS:
            g = getattr(L, n)
            if g is not None:
                t[f"layers.{i}.{n}"] = g.astype(np.int16)
    t.update(_qweight_tensors("head", model.w_head))
    t["rope.cos"] = model.cos_q
    t["rope.sin"] = model.sin_q
    return {k: np.ascontiguousarray(v) for k, v in t.items()}


def tensors_sha256(tensors: dict[str, np.ndarray]) -> str:
    """sha256 over the tensors in name order: name, dtype, shape and the raw bytes of each."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name])
        h.update(f"{name}\0{a.dtype.str}\0{list(a.shape)}\0".encode())
        h.update(a.data)
    return h.hexdigest()


# ------------------------------------------------------------------ writing

def save_model(model: IntModel, path, tokenizer_json: bytes) -> Path:
    """Write ``model`` and the tokenizer's JSON bytes to ``path`` as one safetensors file.

    Provenance from ``model.meta`` (keys ``generator``, ``source``, ``calib`` and any
    other) is copied into the header; the format keys (magic, version, config, widths,
    spec, per-weight scalars, hashes) are computed here and override ``model.meta``.
    The file is written under a temporary name in the same directory and renamed into
    place (``os.replace``), so an error or interruption leaves no partial file and an
    existing file at ``path`` untouched.
    """
    from dataclasses import asdict

    from safetensors.numpy import save as st_save

    path = Path(path)
    if not isinstance(tokenizer_json, (bytes, bytearray)) or not tokenizer_json:
        raise IntsimError("tokenizer_json: expected the non-empty bytes of a tokenizer.json")
    tensors = model_tensors(model)
    tensors[TOKENIZER_TENSOR] = np.frombuffer(bytes(tokenizer_json), dtype=np.uint8).copy()
    qmeta = {f"layers.{i}.{n}": _qweight_meta(getattr(L, n))
             for i, L in enumerate(model.layers) for n in LINEARS}
    qmeta["head"] = _qweight_meta(model.w_head)
    header = {k: v for k, v in model.meta.items()
              if k not in ("file", "file_sha256")}
    header.update({
        "format": MAGIC,
        "format_version": FORMAT_VERSION,
        "intsim_version": __version__,
        "config": asdict(model.config),
        "widths": model.widths.to_dict(),
        "spec": model.spec.to_dict(),
        "qweights": qmeta,
        "alpha_k": [None if L.alpha_inv is None else int(L.alpha_k) for L in model.layers],
        "norm_k": [[None if getattr(L, n) is None else int(getattr(L, n.replace("_w", "_k")))
                    for n in NORM_WEIGHTS] for L in model.layers],
        "tokenizer_sha256": hashlib.sha256(bytes(tokenizer_json)).hexdigest(),
        "tensor_sha256": tensors_sha256(tensors),
    })
    header.setdefault("generator", f"intsim.modelfile.save_model (intsim {__version__})")
    blob = st_save(tensors, metadata={META_KEY: json.dumps(header, sort_keys=True)})
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)          # mkstemp made it 0600
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


# ------------------------------------------------------------------ reading

def model_hash(path) -> str:
    """sha256 (hex) of the model file, read in 4 MiB chunks."""
    path = Path(path)
    try:
        return file_sha256(path)
    except OSError as e:
        raise _err(path, f"cannot read the model file: {e.strerror or e}") from e


def _open(path: Path):
    """safe_open the file; every failure becomes an IntsimError naming the file."""
    from safetensors import safe_open

    if not path.exists():
        raise _err(path, "no such model file; create one with: intsim convert SRC --out MODEL")
    if path.is_dir():
        how = (f"it holds a config.json; to make a model file of it run: intsim convert {path} "
               f"--out MODEL" if path.joinpath("config.json").exists()
               else "model files are written by: intsim convert SRC --out MODEL")
        raise _err(path, f"a folder, not a model file; {how}")
    if not path.is_file():
        raise _err(path, "not a regular file")
    try:
        return safe_open(str(path), framework="np")
    except Exception as e:   # safetensors raises its own SafetensorError (or OSError)
        size = path.stat().st_size
        raise _err(path, f"not a readable safetensors model file ({size} bytes; truncated or "
                         f"corrupt?): {e}") from e


def read_header(path) -> dict:
    """The validated JSON header of a model file (magic and version checked)."""
    path = Path(path)
    with _open(path) as f:
        return _header(path, f)


def _header(path: Path, f) -> dict:
    meta = f.metadata() or {}
    text = meta.get(META_KEY)
    if text is None:
        raise _err(path, f"not an intsim model file (no '{META_KEY}' metadata); "
                         f"create one with: intsim convert SRC --out MODEL")
    try:
        h = json.loads(text)
    except ValueError as e:
        raise _err(path, f"metadata '{META_KEY}' is not valid JSON ({e}); {REGENERATE}") from e
    if not isinstance(h, dict) or h.get("format") != MAGIC:
        raise _err(path, f"metadata '{META_KEY}': format is not '{MAGIC}'; not an intsim model "
                         f"file; create one with: intsim convert SRC --out MODEL")
    v = h.get("format_version")
    if v != FORMAT_VERSION:
        raise _err(path, f"model file format_version {v!r}, this intsim (version {__version__}) "
                         f"reads format_version {FORMAT_VERSION}; {REGENERATE}")
    for key in ("config", "widths", "spec", "qweights", "alpha_k", "tensor_sha256"):
        if key not in h:
            raise _err(path, f"metadata key '{key}' is missing; {REGENERATE}")
    return h


def _build(path: Path, what: str, fn, *args, **kw):
    try:
        return fn(*args, **kw)
    except IntsimError as e:
        raise _err(path, f"{what}: {e}") from e
    except TypeError as e:      # unknown or missing dataclass fields
        raise _err(path, f"{what}: {e}; {REGENERATE}") from e


def _expected(path: Path, h: dict, config: ModelConfig, widths: Widths, spec: Spec) -> dict:
    """name -> (dtype, shape) of every tensor the file must hold."""
    c = config
    want = {"emb.q": (np.dtype(np.int8), (c.vocab_size, c.dim)),
            "emb.m": (_I64, (c.vocab_size,)), "emb.k": (_I64, (c.vocab_size,))}
    alpha_k = h["alpha_k"]
    if not isinstance(alpha_k, list) or len(alpha_k) != c.n_layers:
        raise _err(path, f"metadata 'alpha_k': expected a list of {c.n_layers} entries; "
                         f"{REGENERATE}")
    norm_k = _norm_k(path, h, c.n_layers)
    qw = h["qweights"]
    shapes = linear_shapes(c)
    for i in range(c.n_layers):
        for name, (N, K) in shapes.items():
            G = widths.group_size or K
            want.update(_qweight_want(path, qw, f"layers.{i}.{name}", N, K, G, widths.w_bits))
        if alpha_k[i] is not None:
            want[f"layers.{i}.alpha_inv"] = (_I64, (c.ffn_dim,))
        for n, nk in zip(NORM_WEIGHTS, norm_k[i]):
            if nk is not None:
                want[f"layers.{i}.{n}"] = (np.dtype(np.int16), (c.dim,))
    want.update(_qweight_want(path, qw, "head", c.vocab_size, c.dim, c.dim, widths.head_w_bits))
    rd = rope_dtype(spec)
    want["rope.cos"] = (rd, (c.max_pos, c.head_dim // 2))
    want["rope.sin"] = (rd, (c.max_pos, c.head_dim // 2))
    return want


def _qweight_want(path: Path, qw: dict, prefix: str, N: int, K: int, G: int, bits: int) -> dict:
    s = qw.get(prefix)
    if (not isinstance(s, dict) or set(s) - {"row_bits"} != {"bits", "group_size", "k"}
            or s.get("row_bits", True) is not True):
        raise _err(path, f"metadata 'qweights.{prefix}': expected {{bits, group_size, k}} "
                         f"(and row_bits: true for a mixed-precision weight), got {s!r}; "
                         f"{REGENERATE}")
    if s["bits"] != bits or s["group_size"] != G:
        raise _err(path, f"metadata 'qweights.{prefix}': bits {s['bits']}, group_size "
                         f"{s['group_size']} disagree with the widths (bits {bits}, "
                         f"group_size {G}); {REGENERATE}")
    if K % G:
        raise _err(path, f"metadata 'widths.group_size': {G} does not divide K = {K} of "
                         f"{prefix}")
    ng = K // G
    want = {f"{prefix}.q": (_U8, (N, K)), f"{prefix}.m": (_I64, (N, ng)),
            f"{prefix}.b": (_I64, (N, ng))}
    if s.get("row_bits"):
        want[f"{prefix}.row_bits"] = (_U8, (N,))
    return want


def load_model(path, *, verify: bool = True) -> IntModel:
    """Read and validate an integer model file; return the ``IntModel``.

    Checks, each error naming the file and the tensor or key: the magic and
    ``format_version`` (a mismatch says how to regenerate the file), the config, widths
    and spec, every expected tensor's presence, dtype and shape, no unexpected tensor,
    every weight's value ranges (``QWeight``), and with ``verify`` the sha256 of all
    tensor bytes recorded at conversion (a corrupted byte is caught here).
    ``meta`` of the result is the header plus ``file`` (the path read).
    """
    path = Path(path)
    with _open(path) as f:
        h = _header(path, f)
        config = _build(path, "metadata 'config'", ModelConfig, **_dict(path, h, "config"))
        widths = _build(path, "metadata 'widths'", Widths, **_dict(path, h, "widths"))
        spec = _build(path, "metadata 'spec'", Spec.from_dict, _dict(path, h, "spec"))
        want = _expected(path, h, config, widths, spec)
        keys = set(f.keys())
        extra = sorted(keys - set(want) - {TOKENIZER_TENSOR})
        if extra:
            raise _err(path, f"unexpected tensor '{extra[0]}' ({len(extra)} unexpected in all); "
                             f"{REGENERATE}")
        t = {}
        for name, (dt, shape) in want.items():
            if name not in keys:
                raise _err(path, f"tensor '{name}' is missing; {REGENERATE}")
            try:
                a = f.get_tensor(name)
            except Exception as e:
                raise _err(path, f"tensor '{name}' is unreadable: {e}") from e
            if a.dtype != dt:
                raise _err(path, f"tensor '{name}': dtype {a.dtype}, expected {dt}")
            if a.shape != shape:
                raise _err(path, f"tensor '{name}': shape {a.shape}, expected {shape}")
            t[name] = a
        if TOKENIZER_TENSOR not in keys:
            raise _err(path, f"tensor '{TOKENIZER_TENSOR}' is missing; {REGENERATE}")
        if verify:      # the tokenizer bytes were hashed with the tensors at writing
            got = tensors_sha256({**t, TOKENIZER_TENSOR: _tokenizer_array(path, f)})
            if got != h["tensor_sha256"]:
                raise _err(path, f"tensor data sha256 {got} != recorded {h['tensor_sha256']}: "
                                 f"the file is corrupt; {REGENERATE}")

    def qweight(prefix: str) -> QWeight:
        s = h["qweights"][prefix]
        return _build(path, f"tensor '{prefix}'", QWeight, t[f"{prefix}.q"], s["bits"],
                      s["group_size"], t[f"{prefix}.m"], t[f"{prefix}.b"], s["k"],
                      t.get(f"{prefix}.row_bits"))

    layers = []
    for i in range(config.n_layers):
        ak = h["alpha_k"][i]
        alpha = t.get(f"layers.{i}.alpha_inv")
        if alpha is not None:
            _check_alpha(path, i, alpha, ak)
        norms = {}
        for n, nk in zip(NORM_WEIGHTS, _norm_k(path, h, config.n_layers)[i]):
            norms[n] = t.get(f"layers.{i}.{n}")
            norms[n.replace("_w", "_k")] = 0 if nk is None else nk
        layers.append(_build(path, f"layer {i}", LayerParams,
                             **{n: qweight(f"layers.{i}.{n}") for n in LINEARS},
                             alpha_inv=alpha, alpha_k=0 if ak is None else ak, **norms))
    u_bits = (h.get("quantizer") or {}).get("group_scale_bits")
    if u_bits is not None:
        _check_two_step(path, layers, u_bits)
    meta = dict(h)
    meta["file"] = str(path)
    return _build(path, "model", IntModel, config=config, widths=widths, spec=spec,
                  emb_q=t["emb.q"], emb_m=t["emb.m"], emb_k=t["emb.k"], layers=tuple(layers),
                  w_head=qweight("head"), cos_q=t["rope.cos"], sin_q=t["rope.sin"], meta=meta)


def _check_two_step(path: Path, layers: list, U) -> None:
    """A file whose quantizer records MixLLM's two-step form (``group_scale_bits`` U,
    docs/SPEC.md section 4.9): every linear's group scales must factor with multipliers u
    below 2^U, since a datapath sizes its group multipliers by U."""
    if isinstance(U, bool) or not isinstance(U, int) or not 2 <= U <= 16:
        raise _err(path, f"metadata 'quantizer.group_scale_bits': {U!r} is not an integer in "
                         f"[2, 16]; {REGENERATE}")
    for i, layer in enumerate(layers):
        for n in LINEARS:
            b = two_step_bits(getattr(layer, n))
            if b > U:
                raise _err(path, f"tensor 'layers.{i}.{n}.m': in the two-step form its group "
                                 f"scales need {b}-bit multipliers, more than the "
                                 f"{U} of 'quantizer.group_scale_bits'; {REGENERATE}")


def _dict(path: Path, h: dict, key: str) -> dict:
    v = h[key]
    if not isinstance(v, dict):
        raise _err(path, f"metadata '{key}': expected an object, got {type(v).__name__}; "
                         f"{REGENERATE}")
    return v


def _norm_k(path: Path, h: dict, n_layers: int) -> list:
    """``norm_k``: per layer ``[attn, ffn]`` exponents of the DI-Norm weights, ``None`` where
    γ is folded into the next linears (the whole key may be absent: all folded)."""
    nk = h.get("norm_k")
    if nk is None:
        return [[None, None]] * n_layers
    from .norm import NORM_W_K_MAX
    ok = isinstance(nk, list) and len(nk) == n_layers and all(
        isinstance(e, list) and len(e) == 2 and all(
            v is None or (isinstance(v, int) and not isinstance(v, bool)
                          and 0 <= v <= NORM_W_K_MAX) for v in e) for e in nk)
    if not ok:
        raise _err(path, f"metadata 'norm_k': expected {n_layers} pairs of integers in "
                         f"[0, {NORM_W_K_MAX}] or null; {REGENERATE}")
    return nk


def _check_alpha(path: Path, i: int, alpha: np.ndarray, ak) -> None:
    from .swiglu import ALPHA_K_LIMIT, ALPHA_M_LIMIT
    if isinstance(ak, bool) or not isinstance(ak, int) or not 0 <= ak <= ALPHA_K_LIMIT:
        raise _err(path, f"metadata 'alpha_k[{i}]': {ak!r} is not an integer in "
                         f"[0, {ALPHA_K_LIMIT}]")
    lo, hi = int(alpha.min()), int(alpha.max())
    if lo < 1 or hi > ALPHA_M_LIMIT:
        raise _err(path, f"tensor 'layers.{i}.alpha_inv': values [{lo}, {hi}] outside "
                         f"[1, {ALPHA_M_LIMIT}]")


def _tokenizer_array(path: Path, f) -> np.ndarray:
    try:
        a = f.get_tensor(TOKENIZER_TENSOR)
    except Exception as e:
        raise _err(path, f"tensor '{TOKENIZER_TENSOR}' is unreadable: {e}") from e
    if a.dtype != _U8 or a.ndim != 1 or a.size == 0:
        raise _err(path, f"tensor '{TOKENIZER_TENSOR}': expected non-empty 1-d uint8 bytes, got "
                         f"{a.dtype} {a.shape}")
    return a


def load_tokenizer(path_or_model):
    """The ``tokenizers.Tokenizer`` embedded in a model file (a path, or a loaded IntModel).

    The bytes are checked against the header's ``tokenizer_sha256``.
    """
    from tokenizers import Tokenizer

    if isinstance(path_or_model, IntModel):
        if "file" not in path_or_model.meta:
            raise IntsimError("load_tokenizer: this IntModel was not loaded from a file "
                              "(no meta['file']); pass the model file's path")
        path = Path(path_or_model.meta["file"])
    else:
        path = Path(path_or_model)
    with _open(path) as f:
        h = _header(path, f)
        if TOKENIZER_TENSOR not in set(f.keys()):
            raise _err(path, f"tensor '{TOKENIZER_TENSOR}' is missing; {REGENERATE}")
        raw = _tokenizer_array(path, f).tobytes()
    want = h.get("tokenizer_sha256")
    if want is not None and hashlib.sha256(raw).hexdigest() != want:
        raise _err(path, f"tensor '{TOKENIZER_TENSOR}': sha256 differs from the recorded "
                         f"tokenizer_sha256; the file is corrupt; {REGENERATE}")
    try:
        return Tokenizer.from_str(raw.decode("utf-8"))
    except Exception as e:
        raise _err(path, f"tensor '{TOKENIZER_TENSOR}': not a loadable tokenizer.json: {e}") from e


def check_prompt_ids(ids: np.ndarray, model, what: str = "prompt") -> np.ndarray:
    """The token ids of one prompt for a prefill of ``model``: refuses an empty prompt and
    one longer than the model's context with an ``IntsimError`` naming ``what`` (the
    option the ids came from).  Returns ``ids``."""
    if ids.size == 0:
        raise IntsimError(f"{what}: encodes to no tokens")
    if ids.size > model.config.max_pos:
        raise IntsimError(f"{what}: {ids.size} tokens exceed the model's context of "
                          f"{model.config.max_pos}")
    return ids
