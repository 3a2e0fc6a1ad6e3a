"""Checkpoint converter: a float LLaMA checkpoint -> one integer model file.

``convert(src, out)`` (and the command line ``intsim convert SRC --out MODEL``) reads a
Hugging Face LLaMA folder (``config.json``, ``model.safetensors`` or shards with
``model.safetensors.index.json``, ``tokenizer.json``) or a ``.gguf`` file (imported
first with ``converters.gguf_import``), and writes the integer model that
``intsim.modelfile.load_model`` reads (docs/MODEL_FORMAT.md).  Float work happens here
only, in float64 NumPy:

a. FSBR calibration, if given (``converters.calib``): the smoothing vectors are folded
   into the weights and RMSNorm gains; LWC gives clipping bounds; the SwiGLU act-smooth
   gives ``alpha``, stored as the integer ``alpha_inv`` mantissas of each layer;
b. RMSNorm gains: by default (``norm_gain="channel"``) each block's γ (divided by FSBR's
   qkv/fc1 smoothing) is kept per channel as DI-Norm's integer weight (docs/SPEC.md
   section 8); ``norm_gain="fold"`` folds it into the next linear's input columns instead
   (input norm -> q, k, v; post-attention norm -> gate, up). The final norm's γ is always
   folded into the LM head (a copy of the embedding when they are tied);
c. quantization: the seven linears with ``converters.weights.quantize_weight`` (W bits,
   per output channel or per group, LWC bounds when calibrated), the LM head per output
   channel at ``head_w_bits``, the embedding per row at 8 bits
   (``converters.embedding.quantize_embedding``);
d. RoPE tables (``converters.rope_tables.rope_tables``, ``spec.rope_frac_bits``);
e. one safetensors file of integer tensors with a JSON header, written atomically.

Every refusal names the offending file and config key or tensor, and happens before
anything is written.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from intsim import __version__
from intsim.errors import IntsimError
from intsim.hashing import file_sha256
from intsim.matmul import QWeight, check_bounds, check_group_bounds
from intsim.model import IntModel, LayerParams, ModelConfig, Widths
from intsim.modelfile import linear_shapes, save_model
from intsim.options import Spec

from . import calib as fsbr
from .embedding import quantize_embedding
from .hfconfig import ConfigError, read_llama_config
from .provenance import locate
from .rotate import RotateError, down_block, fold_down, parse_rotate, residual_rotation, rotate_layer
from .rope_tables import rope_tables
from .weights import quantize_weight

__all__ = ["ConvertError", "convert", "build_model", "read_hf_dir", "HFSource", "main",
           "add_arguments", "run", "parse_spec", "DEFAULT_MAX_POS_CAP", "W_SCALE_BITS"]

#: default max_pos is the checkpoint's max_position_embeddings capped here (RoPE table rows)
DEFAULT_MAX_POS_CAP = 8192
#: mantissa bits of the weight group scales (converters.weights.quantize_weight)
W_SCALE_BITS = 16
_FLOAT_DTYPES = ("F32", "F16", "BF16", "F64")
_HF_LINEARS = {
    "wq": "self_attn.q_proj.weight", "wk": "self_attn.k_proj.weight",
    "wv": "self_attn.v_proj.weight", "wo": "self_attn.o_proj.weight",
    "w_gate": "mlp.gate_proj.weight", "w_up": "mlp.up_proj.weight",
    "w_down": "mlp.down_proj.weight",
}
_INDEX = "model.safetensors.index.json"


class ConvertError(IntsimError):
    """A checkpoint the converter refuses; the message names the file and key or tensor."""


# ====================================================================== reading the folder

@dataclass
class _TensorRef:
    file: Path
    dtype: str
    shape: tuple[int, ...]


@dataclass
class HFSource:
    """A validated-on-read Hugging Face folder: config, tensor index, tokenizer bytes."""
    path: Path
    config: dict
    config_text: str
    tensors: dict[str, _TensorRef]
    weight_files: list[Path]
    tokenizer_json: bytes
    _headers: dict = field(default_factory=dict, repr=False)

    def get(self, name: str) -> np.ndarray:
        """Tensor ``name`` as float64 (F32 / F16 / F64 via safetensors.numpy, BF16 by hand)."""
        from safetensors import safe_open

        ref = self.tensors[name]
        try:
            if ref.dtype == "BF16":
                raw = self._raw(ref.file, name)
                u = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << np.uint32(16)
                a = u.view(np.float32).reshape(ref.shape)
            else:
                with safe_open(str(ref.file), framework="np") as f:
                    a = f.get_tensor(name)
        except ConvertError:
            raise
        except Exception as e:
            raise ConvertError(f"{ref.file}: tensor '{name}' is unreadable: {e}") from e
        a = a.astype(np.float64)
        if not np.all(np.isfinite(a)):
            raise ConvertError(f"{ref.file}: tensor '{name}' holds a non-finite value")
        return a

    def _raw(self, file: Path, name: str) -> bytes:
        if file not in self._headers:
            with open(file, "rb") as f:
                n = int.from_bytes(f.read(8), "little")
                self._headers[file] = (8 + n, json.loads(f.read(n)))
        base, hdr = self._headers[file]
        b, e = hdr[name]["data_offsets"]
        with open(file, "rb") as f:
            f.seek(base + b)
            raw = f.read(e - b)
        if len(raw) != e - b:
            raise ConvertError(f"{file}: tensor '{name}' is truncated")
        return raw


def _scan_file(path: Path, out: dict[str, _TensorRef], expect: set[str] | None = None) -> None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="np") as f:
            keys = list(f.keys())
            for k in keys:
                sl = f.get_slice(k)
                out[k] = _TensorRef(path, sl.get_dtype(), tuple(int(v) for v in sl.get_shape()))
    except FileNotFoundError:
        raise ConvertError(f"{path}: no such weight file") from None
    except Exception as e:
        raise ConvertError(f"{path}: not a readable safetensors file (truncated or corrupt?): "
                           f"{e}") from e
    if expect is not None:
        missing = sorted(expect - set(keys))
        if missing:
            raise ConvertError(f"{path}: tensor '{missing[0]}' listed for this file in {_INDEX} "
                               f"is not in it")


def weight_hashes(hf: HFSource) -> dict:
    """sha256 of the files that define a folder's float model: ``config.json``, the
    safetensors index (for a sharded checkpoint) and each weight file, by file name.  The
    model file records them (``source.sha256``, with the tokenizer's); an FSBR report records
    them (``source_sha256``), so that a recipe knows which weights a calibration was learned
    on (``converters.recipes.choose``)."""
    files = {"config.json": file_sha256(hf.path / "config.json")}
    if (hf.path / _INDEX).is_file() and hf.weight_files[0].name != "model.safetensors":
        files[_INDEX] = file_sha256(hf.path / _INDEX)
    for fp in hf.weight_files:
        files[fp.name] = file_sha256(fp)
    return files


def read_hf_dir(src) -> HFSource:
    """Index a Hugging Face LLaMA folder (no weights are loaded yet)."""
    d = Path(src)
    if not d.is_dir():
        raise ConvertError(f"{d}: not a folder (expected a Hugging Face LLaMA folder or a "
                           f".gguf file)")
    cfg_path = d / "config.json"
    try:
        text = cfg_path.read_text()
        config = json.loads(text)
    except FileNotFoundError:
        raise ConvertError(f"{cfg_path}: missing (every Hugging Face folder has one)") from None
    except ValueError as e:
        raise ConvertError(f"{cfg_path}: not valid JSON: {e}") from e
    if not isinstance(config, dict):
        raise ConvertError(f"{cfg_path}: expected a JSON object")
    tensors: dict[str, _TensorRef] = {}
    single, index = d / "model.safetensors", d / _INDEX
    if single.is_file():
        files = [single]
        _scan_file(single, tensors)
    elif index.is_file():
        try:
            wmap = json.loads(index.read_text())["weight_map"]
            assert isinstance(wmap, dict) and all(isinstance(v, str) for v in wmap.values())
        except (ValueError, KeyError, TypeError, AssertionError) as e:
            raise ConvertError(f"{index}: not a valid index (needs a 'weight_map' of tensor -> "
                               f"file): {e}") from e
        files = []
        for fname in sorted(set(wmap.values())):
            fp = d / fname
            if Path(fname).name != fname or not fp.is_file():
                raise ConvertError(f"{index}: weight file '{fname}' is missing from {d}")
            files.append(fp)
            part: dict[str, _TensorRef] = {}
            _scan_file(fp, part, {k for k, v in wmap.items() if v == fname})
            for k in part:
                if wmap.get(k) != fname:
                    raise ConvertError(f"{fp}: tensor '{k}' is not listed for this file in "
                                       f"{_INDEX}")
            tensors.update(part)
    else:
        other = sorted(p.name for p in d.glob("*.bin")) + sorted(p.name for p in d.glob("*.pth"))
        hint = f" (found {other[0]}: only safetensors checkpoints are read)" if other else ""
        raise ConvertError(f"{d}: no model.safetensors or {_INDEX}{hint}")
    tok = d / "tokenizer.json"
    try:
        tok_bytes = tok.read_bytes()
    except FileNotFoundError:
        raise ConvertError(f"{tok}: missing (the model file embeds the tokenizer; the "
                           f"fast-tokenizer JSON is needed)") from None
    return HFSource(d, config, text, tensors, files, tok_bytes)


# ====================================================================== validating

def check_config(src: HFSource, max_pos: int | None = None) -> tuple[ModelConfig, bool, dict]:
    """Validate config.json against the tensors; return (ModelConfig, tied, float extras).

    The config itself is read by :func:`converters.hfconfig.read_llama_config`, the one
    reader the float reference, calibration and MixLLM share (both transformers spellings;
    every math-relevant key honoured or refused by name).
    """
    where = src.path / "config.json"
    try:
        lc = read_llama_config(src.config, str(where))
    except ConfigError as e:
        raise ConvertError(str(e)) from None
    n_layers, dim, n_heads, n_kv = lc.n_layers, lc.dim, lc.n_heads, lc.n_kv_heads
    head_dim, ffn, vocab = lc.head_dim, lc.ffn_dim, lc.vocab_size
    if max_pos is None:
        max_pos = min(lc.max_pos, DEFAULT_MAX_POS_CAP)
    elif isinstance(max_pos, bool) or not isinstance(max_pos, int) or max_pos < 1:
        raise ConvertError(f"max_pos: {max_pos!r} is not an integer >= 1")
    tie_cfg = bool(lc.tie_embeddings)

    # tensors: names, dtypes, shapes; a shape error names the config keys behind each axis
    q_out, kv_out = n_heads * head_dim, n_kv * head_dim
    hd = "'head_dim'" if src.config.get("head_dim") is not None else \
        "'hidden_size' / 'num_attention_heads'"
    V, D, F = ("'vocab_size'", vocab), ("'hidden_size'", dim), ("'intermediate_size'", ffn)
    Q, KV = (f"'num_attention_heads' x {hd}", q_out), (f"'num_key_value_heads' x {hd}", kv_out)
    want = {"model.embed_tokens.weight": (V, D), "model.norm.weight": (D,)}
    hf_shapes = {"wq": (Q, D), "wk": (KV, D), "wv": (KV, D), "wo": (D, Q), "w_gate": (F, D),
                 "w_up": (F, D), "w_down": (D, F)}
    for i in range(n_layers):
        p = f"model.layers.{i}."
        want[p + "input_layernorm.weight"] = (D,)
        want[p + "post_attention_layernorm.weight"] = (D,)
        for k, name in _HF_LINEARS.items():
            want[p + name] = hf_shapes[k]
    have = src.tensors
    tied = tie_cfg or "lm_head.weight" not in have
    if "lm_head.weight" in have:
        want["lm_head.weight"] = (V, D)
    elif not tie_cfg:
        raise ConvertError(f"{src.path}: tensor 'lm_head.weight' is missing and "
                           f"'tie_word_embeddings' is false in config.json")
    for name in sorted(have):
        ref = have[name]
        if name.endswith(".bias"):
            raise ConvertError(f"{ref.file}: tensor '{name}': bias tensors are not supported "
                               f"(LLaMA has none)")
        if name.endswith("rotary_emb.inv_freq"):
            continue                     # a buffer some old checkpoints carry: recomputed
        if name not in want:
            raise ConvertError(f"{ref.file}: unexpected tensor '{name}' (not part of a "
                               f"{n_layers}-layer LLaMA: 'num_hidden_layers' = {n_layers})")
    for name, axes in want.items():
        ref = have.get(name)
        shape = tuple(n for _, n in axes)
        if ref is None:
            layers = (f" ('num_hidden_layers' = {n_layers})"
                      if name.startswith("model.layers.") else "")
            raise ConvertError(f"{src.path}: tensor '{name}' is missing{layers}")
        if ref.dtype not in _FLOAT_DTYPES:
            raise ConvertError(f"{ref.file}: tensor '{name}': dtype {ref.dtype}, expected one "
                               f"of {', '.join(_FLOAT_DTYPES)}")
        if ref.shape != shape:
            keys = ", ".join(k for k, _ in axes)
            raise ConvertError(f"{ref.file}: tensor '{name}': shape {ref.shape}, expected "
                               f"{shape} from config.json ({keys})")
    # tokenizer
    from tokenizers import Tokenizer
    tpath = src.path / "tokenizer.json"
    try:
        tk = Tokenizer.from_str(src.tokenizer_json.decode("utf-8"))
    except Exception as e:
        raise ConvertError(f"{tpath}: not a loadable tokenizer.json: {e}") from e
    n_tok = tk.get_vocab_size(with_added_tokens=True)
    if n_tok > vocab:
        raise ConvertError(f"{tpath}: {n_tok} tokens, more than 'vocab_size' {vocab} in "
                           f"config.json")
    mc = ModelConfig(n_layers=n_layers, dim=dim, n_heads=n_heads, n_kv_heads=n_kv,
                     head_dim=head_dim, ffn_dim=ffn, vocab_size=vocab, max_pos=max_pos,
                     rope_theta=repr(float(lc.rope.theta)),
                     bos_id=-1 if lc.bos_id is None else lc.bos_id,
                     eos_id=-1 if lc.eos_id is None else lc.eos_id)
    extras = {"rope": lc.rope, "rms_norm_eps": lc.rms_eps, "tie_word_embeddings": tied,
              "unknown_keys": lc.unknown_keys}
    return mc, tied, extras


# ====================================================================== building

def _quantize(name: str, w: np.ndarray, bits, G: int, a_bits: int,
              bounds=None, max_bits: int = 8, a_group: int | None = None,
              group_scale_bits: int | None = None) -> QWeight:
    try:
        qw = quantize_weight(w, bits, G, scale_mant_bits=W_SCALE_BITS, bounds=bounds,
                             group_scale_bits=group_scale_bits)
        if qw.row_bits is not None and qw.bits < max_bits:   # the container is --wbits
            qw = QWeight(qw.q, max_bits, G, qw.m, qw.b, qw.k, qw.row_bits)
        if a_group is None:
            check_bounds(w.shape[1], qw, a_bits)
        else:                         # group-wise activations: nesting and the 2^E fold bound
            check_group_bounds(w.shape[1], qw, a_bits, a_group)
    except (ValueError, IntsimError) as e:
        raise ConvertError(f"{name}: {e}") from e
    return qw


#: where RMSNorm's γ goes: folded into the next linears' weights, or kept per channel
#: in DI-Norm (intsim.norm.norm_weight) so the activation quantizer sees x/rms * γ / s
NORM_GAINS = ("fold", "channel")


def quantize_norm_gain(g: np.ndarray, name: str) -> tuple[np.ndarray, int]:
    """γ (or γ / s) -> signed 16-bit mantissas and one exponent: ``g ~ q * 2^-k``.

    ``k`` is the largest integer in [0, 31] with ``round(max|g| 2^k) <= 2^15 - 1``;
    rounding to nearest, ties to even (np.rint).  Relative error per channel
    ``<= 2^-(k+1) / |g_c|``, at most 2^-15 of the largest |g|.
    """
    from intsim.norm import NORM_W_K_MAX, NORM_W_LIMIT
    g = np.asarray(g, dtype=np.float64)
    if not np.all(np.isfinite(g)):
        raise ConvertError(f"{name}: non-finite values")
    amax = float(np.abs(g).max()) if g.size else 0.0
    if np.rint(amax) > NORM_W_LIMIT:
        raise ConvertError(f"{name}: largest |value| {amax:.6g} exceeds {NORM_W_LIMIT}, the "
                           f"16-bit norm weight's range")
    k = 0
    while k < NORM_W_K_MAX and np.rint(amax * 2.0 ** (k + 1)) <= NORM_W_LIMIT:
        k += 1
    return np.rint(g * 2.0 ** k).astype(np.int16), k


def build_model(src, *, w_bits: int = 8, a_bits: int = 8, group_size: int = 0, calib=None,
                spec: Spec = Spec(), max_pos: int | None = None, head_w_bits: int = 8,
                qkt_tie: str = "geomean", norm_gain: str | None = None, row_bits=None,
                head_a_bits: int | None = None, a_group: int | None = None, rotate=(),
                down_block_size: int | None = None, rotate_seed: int = 0,
                pv_bits: int | None = None, group_scale_bits: int | None = None,
                _source_info: dict | None = None) -> tuple[IntModel, bytes]:
    """Build the ``IntModel`` and the tokenizer bytes from a Hugging Face folder (no writing).

    Arguments as ``convert``.  Raises ``ConvertError`` / ``CalibError`` / ``IntsimError``.
    """
    try:
        rotate = parse_rotate(rotate)
    except RotateError as e:
        raise ConvertError(str(e)) from None
    if "residual" in rotate:        # γ must sit in the weights: a rotated stream has no channels
        if norm_gain == "channel":
            raise ConvertError("norm_gain: 'channel' keeps RMSNorm's γ per channel, which a rotated "
                               "residual stream cannot (--rotate residual folds it: --norm-gain fold)")
        norm_gain = "fold"
    norm_gain = "channel" if norm_gain is None else norm_gain
    if row_bits is not None and "residual" in rotate:
        raise ConvertError("--row-bits: a MixLLM selection is made per output channel of the "
                           "unrotated model; --rotate residual mixes o_proj's and down_proj's "
                           "output channels (use one or the other)")
    if down_block_size is not None and "down" not in rotate:
        raise ConvertError("--down-block: given without --rotate down")
    if group_scale_bits is not None and not group_size:
        raise ConvertError("--group-scale-bits: the two-step form factors group scales over a "
                           "per-channel scale; it needs weight groups (--group-size G)")
    if group_scale_bits is not None and not 2 <= group_scale_bits <= 24 - W_SCALE_BITS:
        raise ConvertError(f"--group-scale-bits: {group_scale_bits} is outside [2, "
                           f"{24 - W_SCALE_BITS}]: with {W_SCALE_BITS}-bit channel scales the "
                           f"group mantissa c * u must fit 24 bits")
    try:
        widths = Widths(w_bits=w_bits, a_bits=a_bits, group_size=group_size,
                        head_w_bits=head_w_bits, head_a_bits=head_a_bits, a_group=a_group,
                        pv_bits=pv_bits)
    except IntsimError as e:
        raise ConvertError(f"widths: {e}") from e
    if a_group is not None and isinstance(spec, Spec) and spec.requant_mode != "fitted":
        raise ConvertError("widths: a_group: group-wise activations need requant_mode 'fitted', "
                           f"not {spec.requant_mode!r} (docs/SPEC.md section 4.8)")
    if not isinstance(spec, Spec):
        raise ConvertError(f"spec: expected an intsim.options.Spec, got {type(spec).__name__}")
    if norm_gain not in NORM_GAINS:
        raise ConvertError(f"norm_gain: {norm_gain!r} is not one of {', '.join(NORM_GAINS)}")
    hf = src if isinstance(src, HFSource) else read_hf_dir(src)
    config, tied, extras = check_config(hf, max_pos)
    R, rot_info = None, None
    try:
        if "down" in rotate:
            widths = Widths(**{**widths.to_dict(), "down_rot": down_block(config.ffn_dim,
                                                                          down_block_size)})
        if "residual" in rotate:
            R = residual_rotation(config.dim, rotate_seed)
    except IntsimError as e:
        raise ConvertError(f"{e} ({hf.path / 'config.json'}: 'hidden_size' {config.dim}, "
                           f"'intermediate_size' {config.ffn_dim})") from None
    if rotate:
        rot_info = {}
        if R is not None:
            rot_info["residual"] = {"order": config.dim, "seed": rotate_seed,
                                    "matrix": "diag(s) H / sqrt(n), converters.rotate"}
        if widths.down_rot is not None:
            rot_info["down"] = {"block": widths.down_rot, "fold": "W_down blockdiag(H_b) / b"}
    if extras["unknown_keys"]:
        print(f"intsim convert: note: {hf.path / 'config.json'}: keys intsim does not know, "
              f"read as not changing the math: {', '.join(extras['unknown_keys'])}",
              file=sys.stderr)
    shapes = linear_shapes(config)
    for name, (N, K) in shapes.items():
        if group_size and K % group_size:
            raise ConvertError(f"group_size: {group_size} does not divide K = {K}, the input "
                               f"width of {name} (choose a divisor of {K}, or 0 for per "
                               f"output channel)")

    mix, mix_info = None, None
    if row_bits is not None:
        from .mixllm import MixError, read_row_bits
        try:
            mix = read_row_bits(row_bits, config.n_layers, linear_shapes(config), w_bits)
        except MixError as e:
            raise ConvertError(str(e)) from e
        from safetensors import safe_open
        with safe_open(str(row_bits), "numpy") as f:
            mix_info = {"path": str(row_bits), "sha256": file_sha256(Path(row_bits)),
                        **json.loads((f.metadata() or {}).get("mixllm", "{}"))}

    calib_info, layer_calib = None, None
    if calib is not None:
        cpath = Path(calib)
        params = fsbr.read_calib(cpath)
        layer_calib = fsbr.prepare_calib(params, config, group_size, qkt_tie=qkt_tie,
                                         source=str(cpath))
        with open(cpath, "rb") as f:
            fmt = "pth" if f.read(2) == b"PK" else "safetensors"
        qk_tied = [(i, lc.qkt_tied, lc.qkt_max_ratio) for i, lc in enumerate(layer_calib)
                   if lc.qkt_tied]
        calib_info = {"path": str(cpath), "sha256": file_sha256(cpath), "format": fmt,
                      "qkt_tie": "strict" if qkt_tie == "refuse" else qkt_tie,
                      **fsbr.describe(params)}
        if qk_tied:
            calib_info["qkt_tied_pairs"] = sum(n for _, n, _ in qk_tied)
            print(f"intsim convert: note: {cpath}: 'qkt_smooth_scale' differs between "
                  f"RoPE-paired channels in {len(qk_tied)} of {len(layer_calib)} layers "
                  f"({calib_info['qkt_tied_pairs']} pairs, factors up to "
                  f"{max(r for _, _, r in qk_tied):.3g}x apart); each pair was set to its "
                  f"geometric mean so the q/k fold commutes with RoPE (docs/SPEC.md section "
                  f"9.3; --qkt-tie strict refuses instead)", file=sys.stderr)

    # embedding: per row, 8 bits, dyadic scales of spec.m_bits
    emb = hf.get("model.embed_tokens.weight")
    try:
        emb_q, emb_m, emb_k = quantize_embedding(emb if R is None else emb @ R, bits=widths.emb_bits,
                                                 scale_mant_bits=spec.m_bits,
                                                 k_range=spec.k_range)
    except ValueError as e:
        raise ConvertError(f"model.embed_tokens.weight: {e}") from e

    layers = []
    for i in range(config.n_layers):
        p = f"model.layers.{i}."
        w = {k: hf.get(p + name) for k, name in _HF_LINEARS.items()}
        g_attn = hf.get(p + "input_layernorm.weight")
        g_ffn = hf.get(p + "post_attention_layernorm.weight")
        alpha = None
        lc = layer_calib[i] if layer_calib is not None else None
        if lc is not None:
            w, g_attn, g_ffn, alpha = fsbr.apply_smoothing(w, g_attn, g_ffn, lc, config)
        norms = {}
        if norm_gain == "fold":
            # fold the RMSNorm gains into the input columns of the next linears
            for k in ("wq", "wk", "wv"):
                w[k] = w[k] * g_attn[None, :]
            for k in ("w_gate", "w_up"):
                w[k] = w[k] * g_ffn[None, :]
        else:
            # keep γ (/ s) per channel in DI-Norm, before the matmuls' activation quantizer
            for n, g, hfn in (("attn_norm", g_attn, "input_layernorm"),
                              ("ffn_norm", g_ffn, "post_attention_layernorm")):
                norms[f"{n}_w"], norms[f"{n}_k"] = quantize_norm_gain(
                    g, f"layers.{i}.{n}_w ({p}{hfn}.weight{' / s' if lc is not None else ''})")
        if widths.down_rot is not None:          # the runtime's H_b on its input (SPEC 7.6)
            w["w_down"] = fold_down(w["w_down"], widths.down_rot)
        if R is not None:                        # the residual stream's rotation (γ folded)
            w = rotate_layer(R, w)
        q = {}
        for k, wf in w.items():
            G = group_size or wf.shape[1]
            bounds = None
            if lc is not None and k in lc.lwc:
                up, low = lc.lwc[k]
                bounds = fsbr.lwc_bounds(wf, up, low, G)
            q[k] = _quantize(f"layers.{i}.{k} ({p}{_HF_LINEARS[k]})", wf,
                             w_bits if mix is None else mix[(i, k)], G, a_bits, bounds, w_bits,
                             widths.a_group, group_scale_bits)
        alpha_inv, alpha_k = None, 0
        if alpha is not None:
            alpha_inv, alpha_k = fsbr.alpha_inv_mantissas(
                alpha, where=f"{calib}: layer {i}: 'x1x2_smooth_scale'")
        layers.append(LayerParams(**q, alpha_inv=alpha_inv, alpha_k=alpha_k, **norms))

    head = emb if tied else hf.get("lm_head.weight")
    if tied and "lm_head.weight" in hf.tensors and not np.array_equal(
            hf.get("lm_head.weight"), emb):
        raise ConvertError(f"{hf.path}: 'tie_word_embeddings' is true but tensor "
                           f"'lm_head.weight' differs from 'model.embed_tokens.weight'")
    head = head * hf.get("model.norm.weight")[None, :]
    if R is not None:
        head = head @ R
    w_head = _quantize("head (lm_head.weight, final norm folded)", head, head_w_bits,
                       config.dim, widths.head_in_bits, a_group=widths.a_group)
    try:
        rope = extras["rope"]
        cos_q, sin_q = rope_tables(config.head_dim, config.max_pos, rope.theta,
                                   spec.rope_frac_bits,
                                   inv_freq=rope.inv_freq(config.head_dim, "float64"))
    except ValueError as e:
        raise ConvertError(f"rope tables: {e}") from e

    wh = weight_hashes(hf)
    files = {"config.json": wh.pop("config.json"),
             "tokenizer.json": hashlib.sha256(hf.tokenizer_json).hexdigest(), **wh}
    source = {"kind": "hf", "path": str(hf.path), "sha256": files,
              "config_json": hf.config_text, "tie_word_embeddings": tied,
              "rms_norm_eps": None if hf.config.get("rms_norm_eps") is None
              else repr(extras["rms_norm_eps"])}
    if extras["rope"].rope_type != "default":   # plain RoPE: theta alone, in the config
        source["rope"] = extras["rope"].describe()
    if _source_info:
        source.update(_source_info)
    meta = {"generator": f"converters.convert (intsim {__version__})", "source": source,
            "calib": calib_info, "row_bits": mix_info,
            "quantizer": {"weights": "converters.weights.quantize_weight", "norm_gain": norm_gain,
                          "weight_scale_mant_bits": W_SCALE_BITS,
                          "embedding": "converters.embedding.quantize_embedding",
                          "embedding_scale_mant_bits": spec.m_bits}}
    if rot_info:
        meta["quantizer"]["rotation"] = rot_info
    if group_scale_bits is not None:       # MixLLM's two-step form (docs/SPEC.md section 4.9)
        meta["quantizer"]["group_scale_bits"] = group_scale_bits
    try:
        model = IntModel(config=config, widths=widths, spec=spec, emb_q=emb_q, emb_m=emb_m,
                         emb_k=emb_k, layers=tuple(layers), w_head=w_head, cos_q=cos_q,
                         sin_q=sin_q, meta=meta)
    except IntsimError as e:
        raise ConvertError(f"model: {e}") from e
    return model, hf.tokenizer_json


def _is_gguf(path: Path) -> bool:
    if path.suffix.lower() == ".gguf":
        return True
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"GGUF"
    except OSError:
        return False


def convert(src, out, *, w_bits: int = 8, a_bits: int = 8, group_size: int = 0, calib=None,
            spec: Spec = Spec(), max_pos: int | None = None, head_w_bits: int = 8,
            qkt_tie: str = "geomean", norm_gain: str | None = None, row_bits=None,
            head_a_bits: int | None = None, a_group: int | None = None, rotate=(),
            down_block_size: int | None = None, rotate_seed: int = 0,
            recipe: str | None = None, pv_bits: int | None = None,
            group_scale_bits: int | None = None, explicit: dict | None = None) -> Path:
    """Convert a LLaMA checkpoint ``src`` into the integer model file ``out``; return ``out``.

    ``src``: a Hugging Face LLaMA folder or a ``.gguf`` file.  ``w_bits``: weight bits
    (2..8) of the seven linears; ``a_bits``: activation bits (2..8) recorded for the
    interpreter (and used to prove the DI-MatMul bounds here); ``group_size``: 0 = one
    scale per output channel, else the weight group size (must divide every K);
    ``calib``: an FSBR parameter file (official ``.pth`` or the safetensors form);
    ``spec``: the integer options stored in the file (``rope_frac_bits`` shapes the RoPE
    tables, ``m_bits``/``k_bits`` the embedding scales); ``max_pos``: RoPE table rows
    (default: ``max_position_embeddings`` capped at 8192); ``head_w_bits``: LM head bits;
    ``qkt_tie``: ``"geomean"`` (default: tie each pair, with a note on stderr) or
    ``"strict"`` (refuse) for a q/k smoothing vector whose RoPE pairs differ, as the
    official I-LLM calibration's do (``converters.calib.prepare_calib``); ``norm_gain``: ``"fold"`` (γ into the next
    linears) or ``"channel"`` (the default: γ, divided by FSBR's qkv/fc1 smoothing, kept per
    channel in DI-Norm: the form in which that smoothing acts); ``row_bits``: a MixLLM selection file
    (``python -m converters.mixllm``) giving per-output-channel weight widths <= ``w_bits``;
    ``head_a_bits``: the LM head's input width (2..8; None = ``a_bits``, docs/SPEC.md
    section 13.1): the final norm's output is quantized to it instead of A; ``a_group``:
    group-wise activations for every linear's and the head's input (docs/SPEC.md
    section 4.8; None = per token); ``rotate``: Hadamard rotations (``converters.rotate``),
    any of ``"residual"`` (the residual stream, offline; folds γ, so ``norm_gain`` defaults
    to ``"fold"`` and ``"channel"`` is refused) and ``"down"`` (down_proj's input, online:
    ``Widths.down_rot``, docs/SPEC.md section 7.6), as a tuple or a comma-separated string;
    ``down_block_size``: the online transform's block (default: the largest power of two
    dividing ffn_dim); ``rotate_seed``: the residual rotation's random signs; ``recipe``:
    ``"w8a8"``, ``"w6a6"`` or ``"w4a4"`` (``converters.recipes``) sets the widths and options
    of that recipe, with the committed FSBR calibration where one was learned on ``src``'s
    float weights (an argument given with another value than its default and the recipe's
    is refused) and records it in the model file; ``explicit``: the options given on the
    command line, refused with a recipe that sets them otherwise even at their defaults;
    ``pv_bits``: the width of the probabilities into PV (``a_bits``..15; None = ``a_bits``,
    docs/SPEC.md section 14.2);
    ``group_scale_bits``: MixLLM's two-step form of the seven linears' group scales, each an
    U-bit integer times a per-output-channel scale (needs ``group_size``; docs/SPEC.md
    section 4.9; None = free 16-bit group mantissas over the matrix's exponent).

    Nothing is written unless everything succeeded: the file is written under a temporary
    name next to ``out`` and renamed into place.
    """
    t0 = time.perf_counter()
    src, out = Path(src), Path(out)
    if out.is_dir():
        raise ConvertError(f"{out}: is a folder; --out names the model file to write")
    if not src.exists():
        raise ConvertError(f"{src}: no such file or folder")
    kw = dict(w_bits=w_bits, a_bits=a_bits, group_size=group_size, calib=calib, spec=spec,
              max_pos=max_pos, head_w_bits=head_w_bits, qkt_tie=qkt_tie, norm_gain=norm_gain,
              row_bits=row_bits, head_a_bits=head_a_bits, a_group=a_group, rotate=rotate,
              down_block_size=down_block_size, rotate_seed=rotate_seed, pv_bits=pv_bits,
              group_scale_bits=group_scale_bits)
    chosen = None
    if recipe is not None:
        from .recipes import _known
        _known(recipe)

    def build(hf: HFSource, **extra):
        nonlocal kw, chosen
        if recipe is not None:          # the variant depends on the float weights (recipes.choose)
            import inspect

            from .recipes import apply_recipe, choose
            defaults = {k: p.default for k, p in inspect.signature(convert).parameters.items()
                        if p.default is not p.empty}
            chosen = choose(recipe, weight_hashes(hf))
            print(chosen[2], file=sys.stderr)
            kw = apply_recipe(recipe, chosen[1], {**kw, "rotate": parse_rotate(rotate)},
                              defaults, explicit)
        return build_model(hf, **extra, **kw)

    if src.is_file() and _is_gguf(src):
        from .gguf_import import GGUFImportError, import_gguf
        with tempfile.TemporaryDirectory(prefix=".intsim-gguf-", dir=out.parent
                                         if out.parent.exists() else None) as tmp:
            try:
                hf_dir = import_gguf(src, Path(tmp) / "hf")
            except GGUFImportError as e:
                raise ConvertError(str(e)) from e
            info = {"kind": "gguf", "path": str(src),
                    "gguf_sha256": file_sha256(src)}
            model, tok = build(read_hf_dir(hf_dir), _source_info=info)
            model.meta["source"]["imported_sha256"] = model.meta["source"].pop("sha256")
            model.meta["source"]["sha256"] = {src.name: info["gguf_sha256"]}
    elif src.is_dir():
        model, tok = build(read_hf_dir(src))
    else:
        raise ConvertError(f"{src}: neither a Hugging Face folder nor a GGUF file")
    if chosen is not None:
        from .recipes import describe
        model.meta["recipe"] = describe(recipe, chosen[0], chosen[1])
    for key in ("source", "calib", "row_bits"):     # no checkout's or venv's location in the bytes
        entry = model.meta.get(key)
        if entry:
            entry.update(locate(entry["path"]))
    save_model(model, out, tok)
    dt = time.perf_counter() - t0
    wd = model.widths
    head, ag, pvb = wd.head_a_bits, wd.a_group, wd.pv_bits
    rot = ", ".join(f"{k} rotation" + (f" (blocks of {v['block']})" if k == "down" else "")
                    for k, v in (model.meta["quantizer"].get("rotation") or {}).items())
    print(f"converted {src} -> {out} ({out.stat().st_size / 2 ** 20:.1f} MiB, W{wd.w_bits}A{wd.a_bits}"
          f"{f' G{wd.group_size}' if wd.group_size else ''}{f', head A{head}' if head else ''}"
          f"{f', P{pvb} into PV' if pvb else ''}"
          f"{f', activation groups of {ag}' if ag else ''}{f', {rot}' if rot else ''}"
          f"{', FSBR' if model.meta.get('calib') else ''}"
          f"{f', recipe {recipe}' if recipe else ''}) in {dt:.1f} s",
          file=sys.stderr)
    return out


# ====================================================================== command line

def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The converter's arguments, for a stand-alone parser or an ``intsim convert`` subparser."""
    p.add_argument("src", metavar="SRC", help="Hugging Face LLaMA folder or .gguf file")
    p.add_argument("--out", metavar="MODEL", required=True,
                   help="model file to write (replaced atomically)")
    p.add_argument("--wbits", metavar="W", type=int, default=None,
                   help="weight bits of the seven linears per block, 2..8 (default 8)")
    p.add_argument("--abits", metavar="A", type=int, default=None,
                   help="activation bits of every matmul input, 2..8 (default 8)")
    p.add_argument("--group-size", metavar="G", type=int, default=None,
                   help="weight group size; 0 = one scale per output channel (default)")
    p.add_argument("--head-wbits", metavar="W", type=int, default=8,
                   help="LM head weight bits, per output channel (default 8)")
    p.add_argument("--head-abits", metavar="A", type=int, default=None,
                   help="LM head input bits, 2..8: the final norm's output is quantized to A "
                        "for the head's matmul (default: --abits); docs/SPEC.md section 13.1")
    p.add_argument("--pv-bits", metavar="P", type=int, default=None,
                   help="width of the attention probabilities into PV, A..15: DI-ClippedSoftmax's "
                        "output, folded with the value scales, is requantized to P bits instead of "
                        "A (longest context 2^31-1 // ((2^A-1)(2^P-1)); default: --abits); "
                        "docs/SPEC.md section 14.2")
    p.add_argument("--a-group", metavar="G", type=int, default=None,
                   help="group-wise activations: one power-of-two refinement and zero point per "
                        "token and group of G input channels (e.g. 32, 64, 128) at every linear's "
                        "and the LM head's input (default: per token); docs/SPEC.md section 4.8")
    p.add_argument("--calib", metavar="FILE",
                   help="FSBR calibration: the official fsbr_parameters.pth (read without "
                        "torch, no pickled code run) or the safetensors form")
    p.add_argument("--qkt-tie", choices=fsbr.QKT_TIES, default="geomean",
                   help="a qkt_smooth_scale whose RoPE-paired channels differ (the official "
                        "I-LLM calibration's do): use each pair's geometric mean, with a note "
                        "(default), or refuse (strict); docs/SPEC.md section 9.3")
    p.add_argument("--norm-gain", choices=NORM_GAINS, default=None,
                   help="RMSNorm gain: keep per channel in DI-Norm, where FSBR's qkv/fc1 "
                        "smoothing acts (default), or fold into the next linears (the default "
                        "with --rotate residual)")
    p.add_argument("--rotate", metavar="PARTS", default=None,
                   help="Hadamard rotations, comma-separated: 'residual' (the residual stream, "
                        "folded into the weights offline) and/or 'down' (down_proj's input: an "
                        "exact integer Walsh-Hadamard transform at run time); docs/SPEC.md "
                        "section 7.6")
    p.add_argument("--down-block", metavar="B", type=int, default=None,
                   help="with --rotate down: the transform's block, a power of two dividing the "
                        "ffn width (default: the largest such)")
    p.add_argument("--recipe", choices=("w8a8", "w6a6", "w4a4"), default=None,
                   help="the options that came closest to the perplexity targets at that width "
                        "on SmolLM2, with the committed FSBR calibration where SRC has the very "
                        "weights it was learned on, else the Hadamard rotation (docs/RESULTS.md "
                        "'Recipes on SmolLM2'); recorded in the model file")
    p.add_argument("--group-scale-bits", metavar="U", type=int, default=None,
                   help="MixLLM's two-step dequantization: each weight group's scale is an "
                        "U-bit integer times a per-output-channel scale (e.g. 8; needs "
                        "--group-size); docs/SPEC.md section 4.9")
    p.add_argument("--rotate-seed", metavar="N", type=int, default=0,
                   help="seed of the residual rotation's random signs (default 0)")
    p.add_argument("--row-bits", metavar="FILE", default=None,
                   help="mixed precision between output channels: a selection written by "
                        "'python -m converters.mixllm' (per-channel widths <= --wbits)")
    p.add_argument("--max-pos", metavar="N", type=int, default=None,
                   help=f"longest context (RoPE table rows); default: the checkpoint's "
                        f"max_position_embeddings, at most {DEFAULT_MAX_POS_CAP}")
    p.add_argument("--spec", metavar="SPEC", default=None,
                   help="spec options stored in the model: 'paper' (Spec.paper()), or a JSON "
                        "object of options over the defaults, e.g. '{\"rope_frac_bits\": 12}', "
                        "or (intsim convert) a file holding one (default: the defaults)")
    return p


def parse_spec(text: str | None) -> Spec:
    """``None`` -> Spec(); ``"paper"`` -> Spec.paper(); a JSON object -> defaults + options."""
    if text is None:
        return Spec()
    if text.strip() == "paper":
        return Spec.paper()
    try:
        over = json.loads(text)
    except ValueError as e:
        raise ConvertError(f"--spec: not 'paper' and not a JSON object: {e}") from e
    if not isinstance(over, dict):
        raise ConvertError("--spec: expected a JSON object of spec options")
    try:
        return Spec.from_dict({**Spec().to_dict(), **over})
    except IntsimError as e:
        raise ConvertError(f"--spec: {e}") from e


def build_parser(prog: str = "intsim convert") -> argparse.ArgumentParser:
    return add_arguments(argparse.ArgumentParser(prog=prog, description=DESCRIPTION))


DESCRIPTION = ("Convert a float LLaMA checkpoint (a Hugging Face folder with config.json, "
               "safetensors weights and tokenizer.json, or a .gguf file) into one integer "
               "model file for 'intsim run'. RMSNorm gains stay per channel in DI-Norm (or are "
               "folded into the next linear layers, --norm-gain fold), weights are quantized, "
               "RoPE tables tabulated; the tokenizer is embedded. Format: docs/MODEL_FORMAT.md.")


def run(args, prog: str = "intsim convert") -> int:
    """Run a conversion from parsed arguments (``add_arguments``); 0 on success, 2 on error."""
    given = {"w_bits": args.wbits, "a_bits": args.abits, "group_size": args.group_size,
             "head_a_bits": args.head_abits, "a_group": args.a_group, "calib": args.calib,
             "rotate": args.rotate, "pv_bits": args.pv_bits}
    given = {k: v for k, v in given.items() if v is not None}      # the flags on the line
    try:
        if args.rotate:
            given["rotate"] = parse_rotate(args.rotate)
        convert(args.src, args.out, max_pos=args.max_pos, head_w_bits=args.head_wbits,
                qkt_tie=args.qkt_tie, spec=parse_spec(args.spec), norm_gain=args.norm_gain,
                row_bits=args.row_bits, down_block_size=args.down_block,
                rotate_seed=args.rotate_seed, recipe=args.recipe,
                group_scale_bits=args.group_scale_bits, explicit=given, **given)
    except IntsimError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    return 0


def main(argv=None, prog: str = "intsim convert") -> int:
    return run(build_parser(prog).parse_args(argv), prog)


if __name__ == "__main__":
    sys.exit(main(prog="python -m converters.convert"))
