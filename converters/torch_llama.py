"""A minimal PyTorch LLaMA (fp32, eager, KV cache): the float speed baseline for the bench.

Same math as :mod:`converters.float_model` (which it reuses for the config, the weights and the
RoPE tables), written with plain ``torch`` ops; attention goes through
``torch.nn.functional.scaled_dot_product_attention`` (what ``transformers`` uses by default).
No ``transformers`` dependency.

PyTorch is optional: ``pip install 'intsim[torch]'`` (pins torch==2.13.0, a CPU wheel).

    m = TorchLlama.from_hf("/tmp/smollm2_hf")
    logits = m.prefill(ids)          # float32 [T, V]; starts a new sequence
    nxt = m.decode(int(logits[-1].argmax()))   # float32 [V]; one token through the cache

Bench (``intsim bench --model`` times this through converters/modelbench.py, next to the integer runtime)::

    python -m converters.torch_llama /tmp/smollm2_hf
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from converters.float_model import LlamaConfig, load_hf_weights, rope_cos_sin

__all__ = ["TorchLlama", "TorchLlamaInt8", "bench_torch", "torch_ops", "require_torch", "TORCH_PIN"]

TORCH_PIN = "torch==2.13.0"
DTYPES = ("float32", "bfloat16", "float16")


def require_torch():
    """Import torch, or raise an ImportError that says how to install it."""
    try:
        import torch
    except ImportError as e:
        raise ImportError("converters.torch_llama needs PyTorch, an optional dependency: "
                          f"pip install 'intsim[torch]' (pins {TORCH_PIN}, CPU wheel)") from e
    return torch


class TorchLlama:
    """fp32 LLaMA forward in eager PyTorch with a growing KV cache.

    Shapes: T tokens, D hidden, H query heads, KV key/value heads, hd head dim, V vocabulary.
    """

    def __init__(self, cfg: LlamaConfig, weights: dict[str, np.ndarray], threads: int | None = None,
                 rope_angles: str = "hf_float32", device: str = "cpu", dtype: str = "float32"):
        torch = require_torch()
        self.torch, self.cfg = torch, cfg
        if dtype not in DTYPES:
            raise ValueError(f"dtype: one of {', '.join(DTYPES)}, got {dtype!r}")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"device: {device!r} asked for, but torch sees no CUDA device")
        self.device, self.dtype = torch.device(device), getattr(torch, dtype)
        if threads is not None:
            torch.set_num_threads(int(threads))
        t = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).to(  # noqa: E731
            self.device, self.dtype)
        self.emb = t(weights["model.embed_tokens.weight"])                            # [V, D]
        self.head = self.emb if weights["lm_head.weight"] is weights["model.embed_tokens.weight"] \
            else t(weights["lm_head.weight"])                                          # [V, D]
        self.norm = t(weights["model.norm.weight"])
        self.layers = []
        for i in range(cfg.n_layers):
            p = f"model.layers.{i}."
            self.layers.append({k: t(weights[p + n]) for k, n in (
                ("ln1", "input_layernorm.weight"), ("wq", "self_attn.q_proj.weight"),
                ("wk", "self_attn.k_proj.weight"), ("wv", "self_attn.v_proj.weight"),
                ("wo", "self_attn.o_proj.weight"), ("ln2", "post_attention_layernorm.weight"),
                ("wg", "mlp.gate_proj.weight"), ("wu", "mlp.up_proj.weight"),
                ("wd", "mlp.down_proj.weight"))})
        self.rope_angles = rope_angles
        self._cos = self._sin = torch.zeros(0, cfg.head_dim // 2, device=self.device, dtype=self.dtype)
        self.reset()

    @classmethod
    def from_hf(cls, model_dir: os.PathLike[str] | str, threads: int | None = None,
                rope_angles: str = "hf_float32", device: str = "cpu",
                dtype: str = "float32") -> "TorchLlama":
        require_torch()
        cfg, w = load_hf_weights(model_dir)
        return cls(cfg, w, threads=threads, rope_angles=rope_angles, device=device, dtype=dtype)

    def reset(self) -> None:
        """Forget the cached sequence (the next call starts at position 0)."""
        self.pos = 0
        self._k = [None] * self.cfg.n_layers        # [KV, capacity, hd] per layer
        self._v = [None] * self.cfg.n_layers

    def _rope(self, end: int):
        if self._cos.shape[0] < end:
            n = max(end, 2 * self._cos.shape[0], 256)
            c, s = rope_cos_sin(self.cfg, n, self.rope_angles)
            self._cos, self._sin = (self.torch.from_numpy(a).to(self.device, self.dtype) for a in (c, s))
        return self._cos[self.pos:end], self._sin[self.pos:end]

    def _rms(self, x, g):
        torch = self.torch
        return g * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.cfg.rms_eps))

    def _rotate(self, x, cos, sin):
        """Rotate-half RoPE, x [.., T, hd], cos/sin [T, hd/2]: (a, b) -> (a cos - b sin, b cos + a sin)."""
        half = x.shape[-1] // 2
        a, b = x[..., :half], x[..., half:]
        return self.torch.cat([a * cos - b * sin, b * cos + a * sin], dim=-1)

    def _store(self, i: int, k, v, end: int):
        """Append k, v [KV, T, hd] to layer i's cache; return the cached [KV, end, hd] views."""
        torch = self.torch
        buf_k, buf_v = self._k[i], self._v[i]
        if buf_k is None or buf_k.shape[1] < end:
            cap = max(end, 256 if buf_k is None else 2 * buf_k.shape[1])
            nk = torch.empty(k.shape[0], cap, k.shape[2], device=self.device, dtype=self.dtype)
            nv = torch.empty(k.shape[0], cap, k.shape[2], device=self.device, dtype=self.dtype)
            if buf_k is not None:
                nk[:, :self.pos] = buf_k[:, :self.pos]
                nv[:, :self.pos] = buf_v[:, :self.pos]
            self._k[i], self._v[i] = buf_k, buf_v = nk, nv
        buf_k[:, self.pos:end] = k
        buf_v[:, self.pos:end] = v
        return buf_k[:, :end], buf_v[:, :end]

    def _lin(self, i: int, name: str, h):
        """Layer i's linear ``name`` (wq wk wv wo wg wu wd) applied to h [T, K]: h W^T.
        A hook point: converters.mixllm overrides it to record inputs and gradients."""
        return h @ self.layers[i][name].T


    def _forward(self, ids):
        """Run ids [T] at positions pos..pos+T-1 through the cache; logits float32 [T, V]."""
        torch, c = self.torch, self.cfg
        F = torch.nn.functional
        T, hd, H, KV = ids.shape[0], c.head_dim, c.n_heads, c.n_kv_heads
        end = self.pos + T
        cos, sin = self._rope(end)                                           # [T, hd/2]
        mask = None
        if self.pos > 0 and T > 1:      # queries after a cached prefix: causal with an offset
            mask = torch.ones(T, end, dtype=torch.bool, device=self.device).tril(self.pos)
        x = self.emb[ids]                                                    # [T, D]
        for i, L in enumerate(self.layers):
            h = self._rms(x, L["ln1"])
            q = self._lin(i, "wq", h).view(T, H, hd).transpose(0, 1)               # [H, T, hd]
            k = self._lin(i, "wk", h).view(T, KV, hd).transpose(0, 1)              # [KV, T, hd]
            v = self._lin(i, "wv", h).view(T, KV, hd).transpose(0, 1)              # [KV, T, hd]
            q, k = self._rotate(q, cos, sin), self._rotate(k, cos, sin)
            kc, vc = self._store(i, k, v, end)                               # [KV, end, hd]
            o = F.scaled_dot_product_attention(
                q, kc, vc, attn_mask=mask, is_causal=(mask is None and T > 1),
                enable_gqa=(KV != H))                                        # [H, T, hd]
            x = x + self._lin(i, "wo", o.transpose(0, 1).reshape(T, H * hd))
            h = self._rms(x, L["ln2"])
            x = x + self._lin(i, "wd", F.silu(self._lin(i, "wg", h)) * self._lin(i, "wu", h))
        self.pos = end
        return self._rms(x, self.norm) @ self.head.T                         # [T, V]

    def _ids(self, ids):
        ids = np.asarray(ids)
        if ids.ndim != 1 or ids.size == 0 or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"ids: need a non-empty 1-D integer array, got {ids.dtype} {ids.shape}")
        if ids.min() < 0 or ids.max() >= self.cfg.vocab_size:
            raise ValueError(f"ids: token ids must lie in [0, {self.cfg.vocab_size})")
        return self.torch.from_numpy(ids.astype(np.int64)).to(self.device)

    def prefill(self, ids) -> np.ndarray:
        """Start a new sequence with ids [T]: logits float32 [T, V] (the cache then holds T)."""
        ids = self._ids(ids)
        self.reset()
        with self.torch.inference_mode():
            return self._forward(ids).float().cpu().numpy()

    def decode(self, next_id: int) -> np.ndarray:
        """Append one token at the next position using the cache: logits float32 [V]."""
        if self.pos == 0:
            raise ValueError("decode: no sequence started (call prefill first)")
        ids = self._ids(np.array([int(next_id)]))
        with self.torch.inference_mode():
            return self._forward(ids)[0].float().cpu().numpy()


class TorchLlamaInt8(TorchLlama):
    """The PyTorch int8 peer: every decoder linear through ``quantize_dynamic`` (int8
    weights per tensor, activations quantized per call, fbgemm/x86 kernels; CPU only), the
    rest (norms, RoPE, attention, LM head) fp32 as in :class:`TorchLlama`.  What people get
    from PyTorch's own int8 without a calibration set."""

    def __init__(self, cfg: LlamaConfig, weights: dict[str, np.ndarray], threads: int | None = None,
                 rope_angles: str = "hf_float32"):
        super().__init__(cfg, weights, threads=threads, rope_angles=rope_angles)
        torch = self.torch
        import warnings
        from torch.ao.quantization import quantize_dynamic
        self.qlin = []
        with warnings.catch_warnings():          # torch 2.13 marks the quantized tensor API deprecated
            warnings.simplefilter("ignore")
            for L in self.layers:
                mods = torch.nn.ModuleDict()
                for name in ("wq", "wk", "wv", "wo", "wg", "wu", "wd"):
                    lin = torch.nn.Linear(L[name].shape[1], L[name].shape[0], bias=False)
                    lin.weight.data.copy_(L[name])
                    mods[name] = lin
                self.qlin.append(quantize_dynamic(mods, {torch.nn.Linear}, dtype=torch.qint8))

    @classmethod
    def from_hf(cls, model_dir: os.PathLike[str] | str, threads: int | None = None,
                rope_angles: str = "hf_float32") -> "TorchLlamaInt8":
        require_torch()
        cfg, w = load_hf_weights(model_dir)
        return cls(cfg, w, threads=threads, rope_angles=rope_angles)

    def _lin(self, i: int, name: str, h):
        return self.qlin[i][name](h)


def torch_ops(model_dir: os.PathLike[str] | str, prompt_len: int = 64, decode_tokens: int = 64,
              prefill_len: int = 256, seed: int = 0, device: str = "cpu", dtype: str = "float32",
              int8: bool = False) -> tuple[dict, dict]:
    """The timed operations of :func:`bench_torch` (each returns seconds) and what they ran:

    - ``prefill``: ``prefill(ids)`` of ``prefill_len`` seeded random tokens, timed whole
      (the logits of every position included);
    - ``decode``: after an untimed prefill of ``prompt_len`` tokens, ``decode_tokens`` greedy
      steps (argmax feeds the next step), timed together.

    The ids are ``default_rng(seed)``'s, drawn as ``modelbench`` draws them for every peer.
    Torch's thread count is the caller's to set."""
    if int8 and (device != "cpu" or dtype != "float32"):
        raise ValueError("int8: PyTorch's dynamic quantization runs on the CPU in float32 only")
    torch = require_torch()
    m = TorchLlamaInt8.from_hf(model_dir) if int8 else \
        TorchLlama.from_hf(model_dir, device=device, dtype=dtype)
    rng = np.random.default_rng(seed)
    pre_ids = rng.integers(0, m.cfg.vocab_size, prefill_len)
    prompt = rng.integers(0, m.cfg.vocab_size, prompt_len)

    def run_prefill():
        t0 = time.perf_counter()
        m.prefill(pre_ids)
        return time.perf_counter() - t0

    def run_decode():
        nxt = int(m.prefill(prompt)[-1].argmax())
        t0 = time.perf_counter()
        for _ in range(decode_tokens):
            nxt = int(m.decode(nxt).argmax())
        return time.perf_counter() - t0

    info = {"torch_version": torch.__version__, "device": device,
            "dtype": "int8 dynamic" if int8 else dtype}
    return {"prefill": run_prefill, "decode": run_decode}, info


def bench_torch(model_dir: os.PathLike[str] | str, prompt_len: int = 64, decode_tokens: int = 64,
                prefill_len: int = 256, threads: int = 2, repeats: int = 3, seed: int = 0,
                device: str = "cpu", dtype: str = "float32", int8: bool = False) -> dict:
    """Eager PyTorch speed on a HF LLaMA folder, best of ``repeats`` after a warm-up, the
    operations of :func:`torch_ops`: ``prefill_torch_tok_s = prefill_len / best seconds``,
    ``decode_torch_tok_s = decode_tokens / best``.

    ``threads`` sets torch's intra-op threads for the run (restored afterwards).  ``device``
    ("cpu", "cuda") and ``dtype`` (float32, bfloat16, float16) place the weights; every timed
    call ends with its logits copied to the host, so GPU work is finished inside the timing.
    ``int8``: :class:`TorchLlamaInt8` (``quantize_dynamic`` linears; CPU, float32).
    """
    if int8 and (device != "cpu" or dtype != "float32"):
        raise ValueError("int8: PyTorch's dynamic quantization runs on the CPU in float32 only")
    torch = require_torch()
    old = torch.get_num_threads()
    torch.set_num_threads(int(threads))
    try:
        ops, info = torch_ops(model_dir, prompt_len, decode_tokens, prefill_len, seed, device,
                              dtype, int8)
        ops["prefill"]()
        ops["decode"]()             # warm-up: allocator, thread pool, cache buffers
        best_p = min(ops["prefill"]() for _ in range(repeats))
        best_d = min(ops["decode"]() for _ in range(repeats))
    finally:
        torch.set_num_threads(old)
    return {"prefill_torch_tok_s": prefill_len / best_p, "decode_torch_tok_s": decode_tokens / best_d,
            "threads": int(threads), **info}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m converters.torch_llama",
                                 description="Eager PyTorch speed of a HF LLaMA folder.")
    ap.add_argument("model_dir", help="a Hugging Face LLaMA folder (config.json, safetensors)")
    ap.add_argument("--prompt-len", type=int, default=64, help="tokens prefilled before decode")
    ap.add_argument("--decode-tokens", type=int, default=64, help="timed decode steps")
    ap.add_argument("--prefill-len", type=int, default=256, help="tokens of the timed prefill")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs; the best is reported")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (the GPU peer of --backend cuda)")
    ap.add_argument("--dtype", default="float32", choices=DTYPES, help="weights' and activations' type")
    ap.add_argument("--int8", action="store_true",
                    help="PyTorch's int8 dynamic quantization of the linears (CPU, float32)")
    a = ap.parse_args(argv)
    r = bench_torch(a.model_dir, a.prompt_len, a.decode_tokens, a.prefill_len, a.threads, a.repeats,
                    device=a.device, dtype=a.dtype, int8=a.int8)
    print(json.dumps(r, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
