"""One reader of a Hugging Face LLaMA ``config.json``, for every part of the float side.

The converter, the float reference (``converters.float_model``), FSBR calibration and
MixLLM all take the model's shape and RoPE from :func:`read_llama_config`, so that the
integer model and the float model it is measured against can never be built from two
readings of one file.

Both spellings are read:

- transformers 4: ``rope_theta`` at the top level, ``rope_scaling`` ``null`` or a dict
  (``rope_type``, or the older ``type``, plus its fields);
- transformers 5: ``rope_parameters`` = ``{"rope_type": ..., "rope_theta": ..., ...}``.

Where both are present they must agree.  Every key is in one of three sets:

- :data:`MATH_KEYS`: read and honoured (the shape, RoPE, RMSNorm's eps, tying, the
  context length and the special token ids); a value the integer graph does not implement
  (another activation, a bias, a rope type other than ``default``/``linear``/``llama3``) is
  refused by name;
- :data:`REFUSED_KEYS`: features of other LLaMA-like architectures that change the math
  (sliding windows, soft-capping, partial rotary, μP multipliers, QK norms, a quantized
  checkpoint …): refused by name unless absent or at their neutral value;
- :data:`INERT_KEYS`: bookkeeping that does not change what the model computes (dtype,
  initializer range, dropout at inference, the tensor-parallel split of a float sum …).

A key in none of the three is reported back (``LlamaConfig.unknown_keys``) so the caller
can say so: never silently read as harmless.

RoPE scaling (``linear``, ``llama3``) changes only the frequencies ``inv_freq``, which
:meth:`RopeConfig.inv_freq` computes the way transformers does; the converter turns them
into the integer tables (``converters.rope_tables``) and the float reference uses them
directly.  ``linear``: ``inv_freq / factor``.  ``llama3`` (Llama 3.1 / 3.2): with
``L = original_max_position_embeddings``, wavelengths ``λ = 2π / inv_freq`` above
``L / low_freq_factor`` are divided by ``factor``, those below ``L / high_freq_factor`` kept,
and those between blended with ``s = (L/λ − low) / (high − low)``:
``(1 − s) · inv_freq / factor + s · inv_freq``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .rope_tables import rope_inv_freq

__all__ = ["ConfigError", "LlamaConfig", "RopeConfig", "read_llama_config", "MATH_KEYS",
           "REFUSED_KEYS", "INERT_KEYS", "ROPE_TYPES"]


class ConfigError(ValueError):
    """A config.json the float side refuses; the message names the key (and spelling)."""


#: rope types the integer graph and the float reference implement
ROPE_TYPES = ("default", "linear", "llama3")
#: rope types transformers knows that change more than the frequency table
_ROPE_REFUSED = {"dynamic": "the frequencies depend on the sequence length",
                 "yarn": "it also scales attention (mscale) and blends frequency bands",
                 "longrope": "it switches frequency tables with the sequence length",
                 "su": "it switches frequency tables with the sequence length",
                 "proportional": "partial rotary dimensions",
                 "ntk": "the frequencies depend on the sequence length"}
#: the fields each supported rope type takes (beyond rope_type / type / rope_theta)
_ROPE_FIELDS = {"default": (), "linear": ("factor",),
                "llama3": ("factor", "low_freq_factor", "high_freq_factor",
                           "original_max_position_embeddings")}

#: keys read and honoured (or refused where the value is not implemented)
MATH_KEYS = frozenset({
    "model_type", "architectures", "hidden_size", "intermediate_size", "num_hidden_layers",
    "num_attention_heads", "num_key_value_heads", "head_dim", "vocab_size", "hidden_act",
    "rms_norm_eps", "rope_theta", "rope_scaling", "rope_parameters", "attention_bias",
    "mlp_bias", "tie_word_embeddings", "max_position_embeddings", "bos_token_id",
    "eos_token_id"})
#: math-changing keys of LLaMA-like architectures, with the value at which they change
#: nothing (None: only absence or null is neutral)
REFUSED_KEYS = {
    "partial_rotary_factor": 1.0, "sliding_window": None, "use_sliding_window": False,
    "attn_logit_softcapping": None, "final_logit_softcapping": None,
    "logits_scaling": 1.0, "embedding_multiplier": 1.0, "residual_multiplier": 1.0,
    "attention_multiplier": None, "use_qk_norm": False, "qk_layernorm": False,
    "no_rope_layers": None, "no_rope_layer_interval": None, "layer_types": None,
    "quantization_config": None, "rope_interleaved": False, "hidden_activation": None,
    "query_pre_attn_scalar": None, "scale_embedding": False, "norm_type": None,
    "layer_norm_eps": None, "num_local_experts": None, "num_experts": None,
    "moe_intermediate_size": None, "attention_chunk_size": None, "rope_local_base_freq": None,
    "use_bias": False, "bias": False, "parallel_attn": False, "parallel_residual": False,
    "qkv_bias": False, "clip_qkv": None, "alibi": False,
}
#: keys that do not change the computed function
INERT_KEYS = frozenset({
    "_name_or_path", "transformers_version", "torch_dtype", "dtype", "initializer_range",
    "use_cache", "pad_token_id", "attention_dropout", "hidden_dropout", "dropout",
    "pretraining_tp",            # transformers 4 only: splits a float sum, same function
    "output_attentions", "output_hidden_states", "return_dict", "is_encoder_decoder",
    "is_decoder", "add_cross_attention", "tie_encoder_decoder", "chunk_size_feed_forward",
    "id2label", "label2id", "problem_type", "tokenizer_class", "prefix", "sep_token_id",
    "decoder_start_token_id", "task_specific_params", "finetuning_task", "torchscript",
    "use_bfloat16", "pruned_heads", "cross_attention_hidden_size", "max_length",
    "min_length", "do_sample", "early_stopping", "num_beams", "temperature", "top_k",
    "top_p", "repetition_penalty", "length_penalty", "no_repeat_ngram_size",
    "bad_words_ids", "num_return_sequences", "output_scores", "return_dict_in_generate",
    "forced_bos_token_id", "forced_eos_token_id", "remove_invalid_values",
    "exponential_decay_length_penalty", "suppress_tokens", "begin_suppress_tokens",
    "num_beam_groups", "diversity_penalty", "typical_p", "encoder_no_repeat_ngram_size",
    "architectures_version", "auto_map", "custom_pipelines", "model_name", "license",
})


@dataclass(frozen=True)
class RopeConfig:
    """The rotary embedding of one checkpoint: base, type and the type's fields."""
    theta: float = 10000.0
    rope_type: str = "default"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_pos: int = 0

    def inv_freq(self, head_dim: int, precision: str = "float64") -> np.ndarray:
        """The head_dim/2 frequencies, scaled by the rope type.

        ``precision="float32"`` follows transformers' float32 torch arithmetic step by step
        (the float reference's Hugging Face mode); ``"float64"`` is the same formula in
        float64 (what the integer tables are built from).
        """
        if precision not in ("float32", "float64"):
            raise ValueError(f"precision: {precision!r} is not 'float32' or 'float64'")
        if precision == "float32":       # transformers' float32 steps, one by one
            f = np.float32
            expo = np.arange(0, head_dim, 2).astype(f) / f(head_dim)
            inv = (f(1.0) / (f(self.theta) ** expo)).astype(f)
        else:                            # the integer tables' own float64 base frequencies
            f = np.float64
            inv = rope_inv_freq(head_dim, self.theta)
        if self.rope_type == "linear":
            inv = (inv / f(self.factor)).astype(f)
        elif self.rope_type == "llama3":
            L = f(self.original_max_pos)
            low_wl = L / f(self.low_freq_factor)
            high_wl = L / f(self.high_freq_factor)
            wl = (f(2 * math.pi) / inv).astype(f)
            scaled = np.where(wl > low_wl, inv / f(self.factor), inv).astype(f)
            s = ((L / wl - f(self.low_freq_factor))
                 / (f(self.high_freq_factor) - f(self.low_freq_factor))).astype(f)
            smooth = ((f(1) - s) * scaled / f(self.factor) + s * scaled).astype(f)
            medium = ~(wl < high_wl) & ~(wl > low_wl)
            inv = np.where(medium, smooth, scaled).astype(f)
        return inv

    def describe(self) -> dict:
        """The fields that define the tables, for the model file's header."""
        d = {"rope_type": self.rope_type, "rope_theta": repr(float(self.theta))}
        for k in _ROPE_FIELDS[self.rope_type]:
            v = self.original_max_pos if k == "original_max_position_embeddings" else getattr(self, k)
            d[k] = v if isinstance(v, int) else repr(float(v))
        return d


@dataclass(frozen=True)
class LlamaConfig:
    """The fields of a Hugging Face ``config.json`` that the LLaMA forward uses."""
    n_layers: int
    dim: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    ffn_dim: int
    vocab_size: int
    rms_eps: float
    rope: RopeConfig
    max_pos: int
    tie_embeddings: bool | None     # None: the config does not say
    bos_id: int | None = None
    eos_id: int | None = None
    unknown_keys: tuple[str, ...] = field(default=(), compare=False)

    @property
    def n_rep(self) -> int:
        """Query heads per key/value head."""
        return self.n_heads // self.n_kv_heads

    @property
    def rope_theta(self) -> float:
        return self.rope.theta

    @classmethod
    def from_dict(cls, cfg: dict, where: str = "config.json") -> "LlamaConfig":
        return read_llama_config(cfg, where)


def _num(v, key: str, where: str, lo: float | None = None, strict_lo: bool = True) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ConfigError(f"{where}: '{key}' = {v!r} is not a finite number")
    if lo is not None and (v <= lo if strict_lo else v < lo):
        raise ConfigError(f"{where}: '{key}' = {v!r} must be {'>' if strict_lo else '>='} {lo}")
    return float(v)


def _int(cfg: dict, key: str, where: str, default=None, lo: int = 1) -> int:
    v = cfg.get(key, default)
    if v is None:
        raise ConfigError(f"{where}: required key '{key}' is missing")
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ConfigError(f"{where}: '{key}' = {v!r} is not an integer >= {lo}")
    return v


def _read_rope(cfg: dict, where: str, max_pos: int) -> RopeConfig:
    """Both spellings -> one RopeConfig; every field honoured or refused by name."""
    top_theta = cfg.get("rope_theta")
    scaling, params = cfg.get("rope_scaling"), cfg.get("rope_parameters")
    if params is not None and not isinstance(params, dict):
        raise ConfigError(f"{where}: 'rope_parameters' = {params!r} is not an object")
    if scaling is not None and not isinstance(scaling, dict):
        raise ConfigError(f"{where}: 'rope_scaling' = {scaling!r} is not an object or null")
    if params is not None and "full_attention" in params and isinstance(
            params["full_attention"], dict):
        raise ConfigError(f"{where}: 'rope_parameters' is given per layer type "
                          f"({sorted(params)}); LLaMA has one RoPE for every layer")
    if params is not None and scaling is not None:
        # transformers 5 may keep both spellings when it saves; they must say the same
        a = {k: v for k, v in params.items() if k != "rope_theta"}
        b = {("rope_type" if k == "type" else k): v for k, v in scaling.items()}
        if a != b:
            raise ConfigError(f"{where}: 'rope_parameters' {params!r} and 'rope_scaling' "
                              f"{scaling!r} disagree; which one the checkpoint was trained "
                              f"with is unknown")
    spelling = "rope_parameters" if params is not None else "rope_scaling"
    src = dict(params if params is not None else (scaling or {}))
    theta = src.pop("rope_theta", None)
    if theta is not None:
        theta = _num(theta, f"{spelling}.rope_theta", where, lo=1.0)
    if top_theta is not None:
        top_theta = _num(top_theta, "rope_theta", where, lo=1.0)
        if theta is not None and theta != top_theta:
            raise ConfigError(f"{where}: 'rope_theta' {top_theta!r} and "
                              f"'{spelling}.rope_theta' {theta!r} disagree")
    theta = theta if theta is not None else (top_theta if top_theta is not None else 10000.0)
    kind_key = "rope_type" if "rope_type" in src else "type"
    kind = src.pop("rope_type", None)
    legacy = src.pop("type", None)
    if kind is not None and legacy is not None and kind != legacy:
        raise ConfigError(f"{where}: '{spelling}.rope_type' {kind!r} and '{spelling}.type' "
                          f"{legacy!r} disagree")
    kind = kind if kind is not None else legacy
    if kind is None:
        if src:
            raise ConfigError(f"{where}: '{spelling}' {src!r} has no 'rope_type'")
        kind = "default"
    name = f"{spelling}.{kind_key}"
    if not isinstance(kind, str):
        raise ConfigError(f"{where}: '{name}' = {kind!r} is not a string")
    if kind in _ROPE_REFUSED:
        raise ConfigError(f"{where}: '{name}' is {kind!r}: not supported ({_ROPE_REFUSED[kind]}); "
                          f"supported: {', '.join(ROPE_TYPES)}")
    if kind not in ROPE_TYPES:
        raise ConfigError(f"{where}: '{name}' is {kind!r}: unknown rope type; supported: "
                          f"{', '.join(ROPE_TYPES)}")
    prf = src.pop("partial_rotary_factor", 1.0)
    if prf != 1.0:
        raise ConfigError(f"{where}: '{spelling}.partial_rotary_factor' = {prf!r}: partial "
                          f"rotary embedding is not supported (only 1.0)")
    att = src.pop("attention_factor", None)
    if att is not None and att != 1.0:
        raise ConfigError(f"{where}: '{spelling}.attention_factor' = {att!r}: scaled "
                          f"attention is not supported with rope type {kind!r} (only 1.0)")
    vals = {}
    for k in _ROPE_FIELDS[kind]:
        if k not in src:
            if k == "original_max_position_embeddings":
                vals[k] = max_pos           # transformers' fallback
                continue
            raise ConfigError(f"{where}: '{spelling}.{k}' is missing (rope type {kind!r} "
                              f"needs {', '.join(_ROPE_FIELDS[kind])})")
        v = src.pop(k)
        if k == "original_max_position_embeddings":
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"{where}: '{spelling}.{k}' = {v!r} is not an integer >= 1")
            vals[k] = v
        else:
            vals[k] = _num(v, f"{spelling}.{k}", where, lo=0.0)
    if src:
        k = sorted(src)[0]
        raise ConfigError(f"{where}: '{spelling}.{k}' = {src[k]!r}: a field rope type {kind!r} "
                          f"does not take (it takes {', '.join(_ROPE_FIELDS[kind]) or 'none'})")
    if kind == "llama3" and not vals["high_freq_factor"] > vals["low_freq_factor"]:
        raise ConfigError(f"{where}: '{spelling}.high_freq_factor' "
                          f"{vals['high_freq_factor']!r} must exceed 'low_freq_factor' "
                          f"{vals['low_freq_factor']!r}")
    return RopeConfig(theta=theta, rope_type=kind, factor=vals.get("factor", 1.0),
                      low_freq_factor=vals.get("low_freq_factor", 1.0),
                      high_freq_factor=vals.get("high_freq_factor", 4.0),
                      original_max_pos=vals.get("original_max_position_embeddings", 0))


def _refuse_features(cfg: dict, where: str) -> None:
    mt, arch = cfg.get("model_type"), cfg.get("architectures")
    if mt is None and arch is None:
        raise ConfigError(f"{where}: neither 'model_type' nor 'architectures' is set; cannot "
                          f"tell that this is a LLaMA checkpoint")
    if mt is not None and mt != "llama":
        raise ConfigError(f"{where}: 'model_type' is {mt!r}; only 'llama' is supported")
    if arch is not None and arch != ["LlamaForCausalLM"]:
        raise ConfigError(f"{where}: 'architectures' is {arch!r}; only ['LlamaForCausalLM'] "
                          f"is supported")
    for key in ("attention_bias", "mlp_bias"):
        if cfg.get(key, False) not in (False, None):
            raise ConfigError(f"{where}: '{key}' is {cfg[key]!r}; linear biases are not "
                              f"supported")
    act = cfg.get("hidden_act", "silu")
    if act != "silu":
        raise ConfigError(f"{where}: 'hidden_act' is {act!r}; only 'silu' (SwiGLU) is "
                          f"supported")
    for key, neutral in REFUSED_KEYS.items():
        if key in cfg and cfg[key] is not None and cfg[key] != neutral:
            raise ConfigError(f"{where}: '{key}' = {cfg[key]!r}: not part of the LLaMA graph "
                              f"intsim implements (it changes the math); only "
                              f"{'absent or null' if neutral is None else repr(neutral)} "
                              f"is accepted")


def read_llama_config(cfg: dict, where: str = "config.json") -> LlamaConfig:
    """Validate a ``config.json`` dict (either spelling); refuse what is not implemented.

    Raises :class:`ConfigError` naming ``where`` and the key.
    """
    if not isinstance(cfg, dict):
        raise ConfigError(f"{where}: expected a JSON object")
    _refuse_features(cfg, where)
    dim = _int(cfg, "hidden_size", where)
    ffn = _int(cfg, "intermediate_size", where)
    n_layers = _int(cfg, "num_hidden_layers", where)
    n_heads = _int(cfg, "num_attention_heads", where)
    n_kv = cfg.get("num_key_value_heads")
    n_kv = n_heads if n_kv is None else _int(cfg, "num_key_value_heads", where)
    vocab = _int(cfg, "vocab_size", where)
    if n_heads % n_kv:
        raise ConfigError(f"{where}: 'num_attention_heads' {n_heads} is not a multiple of "
                          f"'num_key_value_heads' {n_kv}")
    if cfg.get("head_dim") is not None:
        head_dim = _int(cfg, "head_dim", where)
    else:
        if dim % n_heads:
            raise ConfigError(f"{where}: 'hidden_size' {dim} is not divisible by "
                              f"'num_attention_heads' {n_heads} and 'head_dim' is not given")
        head_dim = dim // n_heads
    if head_dim % 2:
        raise ConfigError(f"{where}: head_dim {head_dim} is odd; RoPE needs channel pairs")
    max_pos = _int(cfg, "max_position_embeddings", where, default=2048)
    eps = cfg.get("rms_norm_eps", 1e-6)
    eps = _num(eps, "rms_norm_eps", where, lo=0.0, strict_lo=False)
    tie = cfg.get("tie_word_embeddings")
    if tie is not None and not isinstance(tie, bool):
        raise ConfigError(f"{where}: 'tie_word_embeddings' = {tie!r} is not a boolean")

    def token_id(key):
        v = cfg.get(key)
        if isinstance(v, list):          # e.g. several end-of-sequence ids: the first
            v = v[0] if v else None
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < vocab:
            raise ConfigError(f"{where}: '{key}' = {cfg.get(key)!r} is not a token id in "
                              f"[0, {vocab})")
        return v

    rope = _read_rope(cfg, where, max_pos)
    unknown = tuple(sorted(k for k in cfg if k not in MATH_KEYS and k not in REFUSED_KEYS
                           and k not in INERT_KEYS))
    return LlamaConfig(n_layers=n_layers, dim=dim, n_heads=n_heads, n_kv_heads=n_kv,
                       head_dim=head_dim, ffn_dim=ffn, vocab_size=vocab, rms_eps=eps,
                       rope=rope, max_pos=max_pos, tie_embeddings=tie,
                       bos_id=token_id("bos_token_id"), eos_id=token_id("eos_token_id"),
                       unknown_keys=unknown)
