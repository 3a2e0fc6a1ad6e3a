"""Whole-model speed and memory: the integer model against PyTorch fp32 eager, PyTorch's
int8 dynamic quantization (``quantize_dynamic`` on the linears) and llama.cpp (Q8_0, the
shipped Q4_1 and F16 GGUF files, :mod:`converters.llamacpp_peer`), same machine, same run.

Each peer runs in its own Python subprocess (so its peak resident memory is its own), kept
alive for the whole run; the parent asks them in turn for one timed operation at a time,
round after round (:func:`interleave`), so that every peer sees the same load of the
machine, and reports the minimum and the median over the rounds.  All peers get the same
token ids (``default_rng(seed)``: the prefill's ``prefill_len`` ids, then the prompt's
``prompt_len``) and the same number of threads:

* ``prefill``: ``prefill_len`` tokens in one call from an empty cache, the logits of every
  position computed (and returned);
* ``prefill_last``: the same with the logits of the last position only (intsim's
  ``forward(..., last_only=True)``, llama.cpp's batch marking only the last token;
  the PyTorch peers have no such call);
* ``decode``: an untimed prefill of ``prompt_len`` tokens, then ``decode_tokens`` greedy
  steps through the KV cache (argmax feeds the next step), timed together.

Every peer runs each operation once untimed before the rounds (compilation, allocators,
page cache).  Peak memory is the subprocess's ``ru_maxrss`` (the interpreter and libraries
included: PyTorch's import alone is a few hundred MB).  File sizes: the integer model file
against the float checkpoint's weight files.
"""
from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def time_prefill(m, ids, last_only: bool = False) -> float:
    """Seconds for one fast-path prefill of ``ids`` (no cache); ``last_only``: the LM head of
    the last position only."""
    from intsim.runner import forward
    t0 = time.perf_counter()
    forward(m, ids, last_only=last_only)
    return time.perf_counter() - t0


def time_decode(m, prompt, decode_tokens: int) -> float:
    """Seconds for ``decode_tokens`` greedy one-token steps after prefilling ``prompt``
    into a fresh KV cache (the prefill itself is not timed)."""
    from intsim.head import argmax
    from intsim.llama import KVCache
    from intsim.runner import forward
    cache = KVCache.empty(m, len(prompt) + decode_tokens + 1)
    logits, _ = forward(m, prompt, cache)
    nxt = int(argmax(logits[-1:])[0])
    t0 = time.perf_counter()
    for _ in range(decode_tokens):
        logits, _ = forward(m, np.array([nxt]), cache)
        nxt = int(argmax(logits)[0])
    return time.perf_counter() - t0


def bench_int(model_path, prompt_len: int = 64, decode_tokens: int = 64, prefill_len: int = 256,
              repeats: int = 3, seed: int = 0) -> dict:
    from intsim.model import IntModel
    from intsim.modelfile import load_model
    m = model_path if isinstance(model_path, IntModel) else load_model(model_path)   # or a loaded model
    V = m.config.vocab_size
    rng = np.random.default_rng(seed)
    pre_ids = rng.integers(0, V, prefill_len)
    prompt = rng.integers(0, V, prompt_len)
    time_prefill(m, pre_ids)
    time_decode(m, prompt, decode_tokens)   # warm-up: JIT (cached on disk after the first time)
    best_p = min(time_prefill(m, pre_ids) for _ in range(repeats))
    best_d = min(time_decode(m, prompt, decode_tokens) for _ in range(repeats))
    return {"prefill_int_tok_s": prefill_len / best_p, "decode_int_tok_s": decode_tokens / best_d}


def _worker(kind: str, path: str) -> None:
    if kind == "int":
        res = bench_int(path)
    elif kind == "torch_int8":               # PyTorch's int8 dynamic quantization (CPU)
        from .torch_llama import bench_torch
        res = bench_torch(path, int8=True)
    elif kind.startswith("torch_cuda_"):      # the GPU peer: same protocol as gpu_bench's rows
        from .torch_llama import bench_torch
        res = bench_torch(path, prompt_len=64, decode_tokens=32, prefill_len=256, threads=1,
                          device="cuda", dtype=kind[len("torch_cuda_"):])
    else:
        from .torch_llama import bench_torch
        res = bench_torch(path)
    res["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(res))


def _spawn(kind: str, path) -> dict:
    code = f"from converters.modelbench import _worker; _worker({kind!r}, {str(path)!r})"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    for line in p.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    tail = (p.stderr or p.stdout).strip().splitlines()[-1:] or ["no output"]
    return {"error": tail[0]}


def torch_gpu_bench(model_path, float_dir=None, dtypes=("float32", "bfloat16")) -> dict:
    """PyTorch on the GPU, the peer of ``--backend cuda`` (rows only where torch sees a CUDA
    device; else ``{}``): prefill of 256 tokens and 32 decode steps after a 64-token prefill,
    per dtype, each in its own process: ``prefill_gpu_torch_<dtype>_tok_s``, ..."""
    try:
        import torch
    except ImportError:
        return {}
    if not torch.cuda.is_available():
        return {}
    if float_dir is None:
        from intsim.modelfile import load_model
        from .ppl import float_reference_dir
        float_dir = float_reference_dir(load_model(model_path))
    out: dict = {}
    for dt in dtypes:
        r = _spawn(f"torch_cuda_{dt}", float_dir)
        if "error" in r:
            out[f"gpu_torch_{dt}_error"] = r["error"]
            continue
        out[f"prefill_gpu_torch_{dt}_tok_s"] = r["prefill_torch_tok_s"]
        out[f"decode_gpu_torch_{dt}_tok_s"] = r["decode_torch_tok_s"]
    return out


#: the timed operations, in the order each round runs them
OPS = ("decode", "prefill", "prefill_last")
#: the peers of :func:`model_bench`: key name -> (the table's label, its operations).  Keys
#: of the result: ``{op}_{name}_tok_s`` (from the fastest round) and ``..._tok_s_median``;
#: ``{op}_ratio_{name}`` = intsim / peer (``{op}_ratio`` for PyTorch fp32), ``..._median``.
#: ``int_par`` is intsim again, its decode with each token row's GEMVs split over every
#: thread (``intsim.fastpath.GEMV_PARALLEL``, off by default: it stalls when another
#: process shares the cores), so its ratio is the default's rate over that variant's
PEERS = {
    "int": ("intsim (integer W8A8)", OPS),
    "int_par": ("intsim, GEMV_PARALLEL", ("decode",)),
    "torch": ("PyTorch fp32 eager", ("decode", "prefill")),
    "torch_int8": ("PyTorch int8 dynamic", ("decode", "prefill")),
    "llamacpp_q8": ("llama.cpp Q8_0", OPS),
    "llamacpp_q4_1": ("llama.cpp Q4_1 (shipped)", OPS),
    "llamacpp_f16": ("llama.cpp F16", OPS),
}
#: the protocol every peer follows
PROTOCOL = {"prompt_len": 64, "decode_tokens": 64, "prefill_len": 256, "seed": 0, "threads": 2}


def op_tokens(op: str, proto: dict = PROTOCOL) -> int:
    """Tokens one run of ``op`` processes (its tok/s numerator)."""
    return proto["decode_tokens"] if op == "decode" else proto["prefill_len"]


def _bench_ids(V: int, proto: dict = PROTOCOL):
    rng = np.random.default_rng(proto["seed"])
    return rng.integers(0, V, proto["prefill_len"]), rng.integers(0, V, proto["prompt_len"])


def _peer_ops(kind: str, path: str, arg, proto: dict) -> tuple[dict, dict]:
    """A peer's timed operations (name -> callable returning seconds) and what it ran."""
    if kind in ("int", "int_par"):
        import numba
        from intsim import fastpath
        from intsim.modelfile import load_model
        numba.set_num_threads(min(proto["threads"], numba.config.NUMBA_NUM_THREADS))
        m = load_model(path)
        pre, prompt = _bench_ids(m.config.vocab_size, proto)
        decode = {"decode": lambda: time_decode(m, prompt, proto["decode_tokens"])}
        if kind == "int_par":            # this process only: one token row on every thread
            fastpath.GEMV_PARALLEL = True
            return decode, {"numba_threads": numba.get_num_threads(), "gemv_parallel": True}
        return ({"prefill": lambda: time_prefill(m, pre),
                 "prefill_last": lambda: time_prefill(m, pre, last_only=True), **decode},
                {"numba_threads": numba.get_num_threads()})
    if kind in ("torch", "torch_int8"):
        import torch
        from .torch_llama import torch_ops
        torch.set_num_threads(proto["threads"])
        ops, info = torch_ops(path, proto["prompt_len"], proto["decode_tokens"], proto["prefill_len"],
                              proto["seed"], int8=kind == "torch_int8")
        return ops, {**info, "threads": torch.get_num_threads()}
    if kind.startswith("llamacpp_"):
        from .llamacpp_peer import TYPES, peer_ops
        return peer_ops(path, TYPES[kind[len("llamacpp_"):]], arg, lambda V: _bench_ids(V, proto),
                        proto["decode_tokens"], proto["threads"])
    raise ValueError(f"modelbench: unknown peer kind {kind!r}")


def _serve(kind: str, path: str, arg=None, proto: dict | None = None) -> None:
    """A peer's process: warm every operation up, say READY, then time one operation per
    line of stdin (``T <seconds>``) until a line that names none; then its peak memory."""
    ops, info = _peer_ops(kind, path, arg, proto or PROTOCOL)
    for fn in ops.values():
        fn()
    print("READY " + json.dumps({"ops": list(ops), **info}), flush=True)
    for line in sys.stdin:
        op = line.strip()
        if op not in ops:
            break
        print(f"T {ops[op]()!r}", flush=True)
    print("RESULT " + json.dumps(
        {"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}), flush=True)


class Peer:
    """One peer's process, speaking :func:`_serve`'s line protocol; ``cmd`` replaces the
    command (the tests' stand-ins).  A peer that dies or says something unexpected gets
    ``error`` (the last line of its stderr) and is left out of the remaining rounds."""

    def __init__(self, name: str, kind: str, path, arg=None, cmd: list | None = None,
                 proto: dict | None = None):
        self.name, self.ops, self.info, self.error, self.result = name, [], {}, None, {}
        code = (f"from converters.modelbench import _serve; "
                f"_serve({kind!r}, {str(path)!r}, {arg!r}, {proto or PROTOCOL!r})")
        self._cmd, self._p = cmd or [sys.executable, "-c", code], None
        self._err = tempfile.TemporaryFile("w+")

    def _expect(self, tag: str) -> str:
        while True:
            line = self._p.stdout.readline()
            if not line:
                raise RuntimeError("exited")
            if line.startswith(tag + " "):
                return line[len(tag) + 1:].strip()

    def _fail(self) -> None:
        if self._p.poll() is None:
            self._p.kill()
        self._p.wait()
        self._err.seek(0)
        tail = self._err.read().strip().splitlines()
        self.error = tail[-1] if tail else f"the peer's process exited with code {self._p.returncode}"

    def start(self) -> bool:
        """Start the peer's process and wait for it to load and warm up; False (and
        ``error``) if it could not."""
        self._p = subprocess.Popen(self._cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   stderr=self._err, text=True)
        try:
            ready = json.loads(self._expect("READY"))
            self.ops, self.info = list(ready.pop("ops")), ready
        except (RuntimeError, ValueError, KeyError, TypeError):
            self._fail()
        return self.error is None

    def time(self, op: str) -> float | None:
        """Seconds of one run of ``op`` (None, and ``error``, if the peer failed)."""
        try:
            self._p.stdin.write(op + "\n")
            self._p.stdin.flush()
            return float(self._expect("T"))
        except (RuntimeError, ValueError, OSError):
            self._fail()
            return None

    def finish(self) -> dict:
        """End the process; its last report (peak memory) or {} if it failed."""
        if self.error is None and self._p is not None:
            try:
                self._p.stdin.write("quit\n")
                self._p.stdin.flush()
                self.result = json.loads(self._expect("RESULT"))
                self._p.wait()
            except (RuntimeError, ValueError, OSError):
                self._fail()
        self._err.close()
        return self.result


def interleave(peers: list, rounds: int) -> dict:
    """Start the peers one after another (each warms up alone), then ``rounds`` rounds: per
    operation of :data:`OPS`, one timed run of each peer that has it, the peers' order
    rotating by one each round.  Returns ``{peer name: {op: [seconds, ...]}}``."""
    for p in peers:
        print(f"model bench: starting {p.name}", file=sys.stderr, flush=True)
        p.start()
    times = {p.name: {op: [] for op in p.ops} for p in peers}
    for r in range(rounds):
        print(f"model bench: round {r + 1} of {rounds}", file=sys.stderr, flush=True)
        live = [p for p in peers if p.error is None]
        order = live[r % len(live):] + live[:r % len(live)] if live else []
        for op in OPS:
            for p in order:
                if op in p.ops and p.error is None:
                    t = p.time(op)
                    if t is not None:
                        times[p.name][op].append(t)
    for p in peers:
        p.finish()
    return times


def summarize(times: dict, proto: dict = PROTOCOL) -> dict:
    """tok/s of each peer and operation from its fastest round and its median one."""
    out = {}
    for name, per_op in times.items():
        for op, ts in per_op.items():
            if ts:
                out[f"{op}_{name}_tok_s"] = op_tokens(op, proto) / min(ts)
                out[f"{op}_{name}_tok_s_median"] = op_tokens(op, proto) / statistics.median(ts)
    return out


def ratio_key(op: str, name: str) -> str:
    return f"{op}_ratio" if name == "torch" else f"{op}_ratio_{name}"


def ratios(r: dict) -> dict:
    """intsim's tok/s over each peer's, per operation both share, min and median (None
    where either side is missing); every peer's tok/s keys are present (None if absent)."""
    out = {}
    for name, (_, ops) in PEERS.items():
        for op in ops:
            for stat in ("", "_median"):
                out[f"{op}_{name}_tok_s{stat}"] = t = r.get(f"{op}_{name}_tok_s{stat}")
                if name != "int":
                    i = r.get(f"{op}_int_tok_s{stat}")
                    out[ratio_key(op, name) + stat] = i / t if i and t else None
    return out


def model_bench(model_path, float_dir=None, rounds: int = 5, proto: dict = PROTOCOL) -> dict:
    """The integer model against its peers (those installed), :data:`PEERS`, interleaved."""
    from intsim.modelfile import load_model
    from . import llamacpp_peer
    model_path = Path(model_path)
    model = load_model(model_path)
    out = {"model": str(model_path), "int_file_mib": model_path.stat().st_size / 2 ** 20,
           "model_rounds": rounds, "model_protocol": dict(proto),
           "model_peers": [[n, label, list(ops)] for n, (label, ops) in PEERS.items()]}
    peers = [Peer(n, n, model_path, proto=proto) for n in ("int", "int_par")]
    if float_dir is None:
        from .ppl import float_reference_dir
        float_dir = float_reference_dir(model)
    float_dir = Path(float_dir)
    out["float_file_mib"] = sum(f.stat().st_size for f in float_dir.glob("*.safetensors")) / 2 ** 20
    try:
        import torch  # noqa: F401
        peers += [Peer(n, n, float_dir, proto=proto) for n in ("torch", "torch_int8")]
    except ImportError:
        out["torch_note"] = "PyTorch not installed: pip install 'intsim[torch]'"
    gguf = llamacpp_peer.gguf_source(model)
    why = llamacpp_peer.missing() or (None if gguf else "the model was not converted from a GGUF file")
    if why:
        out["llamacpp_note"] = why
    else:
        peers += [Peer(n, n, gguf, str(model_path.parent), proto=proto)
                  for n in PEERS if n.startswith("llamacpp_")]
    times = interleave(peers, rounds)
    out.update(summarize(times, proto))
    for p in peers:
        out[f"{p.name}_peak_rss_mib"] = p.result.get("peak_rss_mib")
        if p.info:
            out[f"{p.name}_info"] = p.info
        if p.error:
            out[f"{p.name}_error"] = p.error
    out.update(ratios(out))
    return out


def main(argv: list[str] | None = None) -> int:
    import argparse
    ap = argparse.ArgumentParser(prog="python -m converters.modelbench",
                                 description="The integer model against its installed peers "
                                             "(intsim bench --model's model rows alone).")
    ap.add_argument("model", help="an integer model file (.intsim)")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    a = ap.parse_args(argv)
    from intsim.bench import model_table
    from intsim.errors import IntsimError
    try:
        r = model_bench(a.model, rounds=max(1, a.rounds))
    except (IntsimError, OSError) as e:
        ap.error(str(e))                                  # one line, exit 2
    print(json.dumps(r) if a.json else "\n".join(model_table(r)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
