"""The integer LLaMA model as the interpreter sees it: configuration, widths, parameters.

``IntModel`` is what ``intsim.modelfile.load_model`` returns and what ``forward()`` runs.
Every array is an integer array; every scale a dyadic pair.  The float side
(``converters/``) builds it from a checkpoint: RMSNorm γ's are folded into the next
linear layer (q/k/v, gate/up, lm_head) or, for the two norms of each layer, kept as
per-channel DI-Norm weights (``norm_weight``, the form FSBR's smoothing needs), the embedding is quantized per row, the RoPE
tables are data.  docs/MODEL_FORMAT.md gives the on-disk form.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from .errors import IntsimError, check_int, check_int_array
from .matmul import QWeight
from .norm import check_norm_weight
from .options import Spec


@dataclass(frozen=True)
class ModelConfig:
    n_layers: int
    dim: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    ffn_dim: int
    vocab_size: int
    max_pos: int            # rows of the RoPE tables = the longest context accepted
    rope_theta: str         # kept as text (a float is data for the converter, not for us)
    bos_id: int
    eos_id: int

    def __post_init__(self):
        for name in ("n_layers", "dim", "n_heads", "n_kv_heads", "head_dim", "ffn_dim",
                     "vocab_size", "max_pos"):
            check_int(f"config.{name}", getattr(self, name), 1)
        if self.n_heads % self.n_kv_heads:
            raise IntsimError(f"config: n_heads {self.n_heads} is not a multiple of "
                              f"n_kv_heads {self.n_kv_heads}")
        if self.head_dim % 2:
            raise IntsimError(f"config.head_dim: {self.head_dim} must be even (RoPE pairs)")


@dataclass(frozen=True)
class Widths:
    """Bit widths of the integer graph (per model; the paper's WxAy setting)."""
    w_bits: int = 8          # linear weights (all seven projections)
    a_bits: int = 8          # every DI-MatMul input, and Q, K, V, P in attention (P: pv_bits)
    group_size: int = 0      # 0 = per output channel, else the weight group size
    head_w_bits: int = 8     # LM head weights (per output channel)
    emb_bits: int = 8        # embedding table (per row, symmetric)
    qk_bits: int = 16        # q/k projection outputs (symmetric, before RoPE)
    #: LM head input: the bits the final DI-Norm's output is quantized to for the head's
    #: DI-MatMul (docs/SPEC.md section 13.1); None = a_bits.  A value equal to a_bits is
    #: stored as None, so a model has one form and its file is the same either way.
    head_a_bits: int | None = None
    #: group-wise activations: every linear's and the LM head's input gets one power-of-two
    #: refinement and zero point per (token, group of a_group channels) (docs/SPEC.md
    #: section 4.8); None = per token.  Stored only when set.
    a_group: int | None = None
    #: online Hadamard rotation of down_proj's input: the block b of the exact integer
    #: Walsh–Hadamard transform applied to DI-SwiGLU's output (docs/SPEC.md section 7.6;
    #: the converter folds H_b / b into w_down); None = no rotation.  Stored only when set.
    down_rot: int | None = None
    #: probabilities into PV: the bits DI-ClippedSoftmax's probabilities, folded with the
    #: value scales, are requantized to per row before the PV matmul (docs/SPEC.md section
    #: 14.2); None = a_bits, range a_bits..15 (15: the int16 container of centered P codes
    #: in the PV kernels).  A value equal to a_bits is stored as None.  Stored only when set.
    pv_bits: int | None = None

    def __post_init__(self):
        check_int("w_bits", self.w_bits, 2, 8)
        check_int("a_bits", self.a_bits, 2, 8)
        check_int("group_size", self.group_size, 0)
        check_int("head_w_bits", self.head_w_bits, 2, 8)
        check_int("emb_bits", self.emb_bits, 2, 8)
        check_int("qk_bits", self.qk_bits, 2, 16)
        if self.head_a_bits is not None:
            h = check_int("head_a_bits", self.head_a_bits, 2, 8)
            object.__setattr__(self, "head_a_bits", None if h == self.a_bits else h)
        if self.a_group is not None:
            from .matmul import A_GROUP_LIMIT
            check_int("a_group", self.a_group, 1, A_GROUP_LIMIT)
        if self.down_rot is not None:
            from .hadamard import check_block_size
            check_block_size("down_rot", self.down_rot)
        if self.pv_bits is not None:
            from .attention import PV_BITS_LIMIT
            p = check_int("pv_bits", self.pv_bits)
            if not self.a_bits <= p <= PV_BITS_LIMIT:
                raise IntsimError(f"pv_bits: {p} is outside [a_bits = {self.a_bits}, "
                                  f"{PV_BITS_LIMIT}] (the probabilities into PV are at least "
                                  f"as wide as A; 15 bits fill the PV kernels' int16 operand)")
            object.__setattr__(self, "pv_bits", None if p == self.a_bits else p)

    @property
    def head_in_bits(self) -> int:
        """The LM head's input width: ``head_a_bits``, or ``a_bits`` when it is None."""
        return self.a_bits if self.head_a_bits is None else self.head_a_bits

    @property
    def pv_in_bits(self) -> int:
        """The width of the probability codes into PV: ``pv_bits``, or ``a_bits`` when None."""
        return self.a_bits if self.pv_bits is None else self.pv_bits

    def to_dict(self) -> dict:
        """The fields as a model file's ``widths`` header and a golden manifest record them:
        ``head_a_bits``, ``a_group``, ``down_rot`` and ``pv_bits`` only when set (files of
        models without them are unchanged)."""
        d = asdict(self)
        for key in ("head_a_bits", "a_group", "down_rot", "pv_bits"):
            if d[key] is None:
                del d[key]
        return d

    def group_kw(self) -> dict:
        """The DI-MatMul keyword of the linears and the head: ``{"a_group": G}`` when the
        model sets one, else nothing (so the calls, and golden dumps, are as before)."""
        return {} if self.a_group is None else {"a_group": self.a_group}


@dataclass(frozen=True)
class LayerParams:
    wq: QWeight             # [n_heads*head_dim, dim], γ_attn folded in
    wk: QWeight             # [n_kv_heads*head_dim, dim], γ_attn folded in
    wv: QWeight             # [n_kv_heads*head_dim, dim], γ_attn folded in
    wo: QWeight             # [dim, n_heads*head_dim]
    w_gate: QWeight         # [ffn_dim, dim], γ_ffn folded in
    w_up: QWeight           # [ffn_dim, dim], γ_ffn folded in
    w_down: QWeight         # [dim, ffn_dim]
    alpha_inv: np.ndarray | None = None   # FSBR act-smooth 1/α per ffn channel (int64), or None
    alpha_k: int = 0
    # DI-Norm per-channel weights (γ / s as 16-bit mantissas, exponent *_k), or None when γ
    # is folded into the next linears (then wq..wv, w_gate, w_up carry it, as above)
    attn_norm_w: np.ndarray | None = None
    attn_norm_k: int = 0
    ffn_norm_w: np.ndarray | None = None
    ffn_norm_k: int = 0


@dataclass(frozen=True)
class IntModel:
    config: ModelConfig
    widths: Widths
    spec: Spec
    emb_q: np.ndarray       # [vocab, dim] int8, symmetric per row
    emb_m: np.ndarray       # [vocab] int64 mantissas
    emb_k: np.ndarray       # [vocab] int64 exponents
    layers: tuple           # of LayerParams, n_layers long
    w_head: QWeight         # [vocab, dim], γ_final folded in (a copy when embeddings are tied)
    cos_q: np.ndarray       # [max_pos, head_dim/2] int16, Q1.f with f = spec.rope_frac_bits
    sin_q: np.ndarray
    meta: dict = field(default_factory=dict)   # provenance: format version, hashes, sources

    def __post_init__(self):
        c = self.config
        check_int_array("emb_q", self.emb_q, ndim=2)
        if self.emb_q.shape != (c.vocab_size, c.dim):
            raise IntsimError(f"emb_q: shape {self.emb_q.shape} != (vocab, dim) = {(c.vocab_size, c.dim)}")
        if len(self.layers) != c.n_layers:
            raise IntsimError(f"layers: {len(self.layers)} given, config says {c.n_layers}")
        q_out, kv_out = c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim
        for i, L in enumerate(self.layers):
            want = {"wq": (q_out, c.dim), "wk": (kv_out, c.dim), "wv": (kv_out, c.dim),
                    "wo": (c.dim, q_out), "w_gate": (c.ffn_dim, c.dim), "w_up": (c.ffn_dim, c.dim),
                    "w_down": (c.dim, c.ffn_dim)}
            for name, shape in want.items():
                got = getattr(L, name).q.shape
                if got != shape:
                    raise IntsimError(f"layers.{i}.{name}: shape {got} != {shape}")
            for name in ("attn_norm_w", "ffn_norm_w"):
                g = getattr(L, name)
                if g is not None:
                    check_norm_weight(f"layers.{i}.{name}", g,
                                      getattr(L, name.replace("_w", "_k")), c.dim)
        if self.widths.down_rot is not None:
            from .hadamard import check_block
            check_block("widths.down_rot", c.ffn_dim, self.widths.down_rot)
        if self.w_head.q.shape != (c.vocab_size, c.dim):
            raise IntsimError(f"w_head: shape {self.w_head.q.shape} != {(c.vocab_size, c.dim)}")
        want_rope = (c.max_pos, c.head_dim // 2)
        for name in ("cos_q", "sin_q"):
            t = getattr(self, name)
            check_int_array(name, t, ndim=2)
            if t.shape != want_rope:
                raise IntsimError(f"{name}: shape {t.shape} != (max_pos, head_dim/2) = {want_rope}")
