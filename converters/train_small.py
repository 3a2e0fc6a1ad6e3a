"""Train the project's own small LLaMA: the embedded default model (``models/small/``).

One script, fixed seed, CPU or GPU (``--device``), PyTorch (the optional ``[torch]`` extra)
plus ``tokenizers`` and ``safetensors``; no ``transformers``.  It writes a Hugging Face
style folder that ``intsim convert`` and ``converters.float_model`` read:

- ``tokenizer.json``   byte-level BPE trained here on the training text (``--vocab`` entries,
                       special tokens ``<s>`` = 0 and ``</s>`` = 1; no post-processor, so
                       ``encode`` adds nothing);
- ``config.json``      ``LlamaForCausalLM`` keys (tied embeddings, plain RoPE, no biases);
- ``model.safetensors`` the weights, rounded to float16 (``--save-dtype float32`` keeps fp32);
- ``train_meta.json``  what was trained on (sha256 of every input and of the token streams),
                       the hyperparameters, the loss log, the final train / validation loss,
                       held-out perplexity (*Persuasion*, *Hamlet*) of the stored weights, and
                       greedy samples.

Data (``converters.texts``; the files are checked against its pinned sha256):

- training: ``austen_train.txt`` (five Austen novels) and ``shakespeare.txt`` with *Hamlet*
  cut out, so that both ``persuasion.txt`` and ``hamlet.txt`` stay held out;
- validation: the last ``--val-frac`` of each training text (cut at a line start), never
  trained on; the tokenizer is trained on the training parts only;
- held-out evaluation (after training only, never for any choice made while training):
  ``persuasion.txt`` and ``hamlet.txt``, consecutive non-overlapping windows of ``--ctx``
  tokens, positions 1..n-1 of each scored (as ``converters.evaluate.perplexity``).

The training stream is ``<s> text </s>`` per training text; batches are random windows of
``ctx + 1`` tokens of it.  AdamW, linear warm-up then cosine decay to 10 %, gradient clip 1,
dropout on the residual branches and attention.  On CUDA the forward runs under bfloat16
autocast (master weights fp32).

The model is the Hugging Face LLaMA forward (pre-norm RMSNorm, rotate-half RoPE with the
frequencies formed in float32, grouped-query attention, SwiGLU MLP, tied LM head), written
with plain ``torch`` ops; after export the stored weights are reloaded into
``converters.float_model.FloatLlama`` (NumPy) and its logits compared with this module's.

    python -m converters.train_small --out models/small --device cuda --steps 6000
    python -m converters.train_small --out /tmp/s --device cpu --threads 1 --steps 300 \\
        --dim 128 --layers 2 --vocab 2048 --ctx 128         # a quick CPU run
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from converters.texts import HELD_OUT_FILES

__all__ = ["ModelArgs", "SmallLlama", "train_tokenizer", "load_texts", "hf_config", "main"]

SPECIAL_TOKENS = ("<s>", "</s>")
BOS_ID, EOS_ID = 0, 1
TRAIN_FILES = ("austen_train.txt", "shakespeare.txt")
SAMPLE_PROMPTS = ("It is a truth universally", "Anne Elliot", "To be, or not to be",
                  "The weather was")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ============================================================================ data

def load_texts(texts_dir: Path, val_frac: float) -> dict:
    """The training/validation texts and the held-out ones, checked against their pinned hashes.

    Returns ``{"train": [str, ...], "val": [str, ...], "held_out": {name: str},
    "sha256": {file: hex}}``.  Shakespeare loses its *Hamlet* (``hamlet.txt`` occurs in it
    exactly once); each training text's last ``val_frac`` (from the next line start on)
    becomes validation.
    """
    from converters.texts import EXPECTED_SHA256

    raw, digests = {}, {}
    for name in TRAIN_FILES + HELD_OUT_FILES:
        p = texts_dir / name
        if not p.is_file():
            raise SystemExit(f"{p}: missing (python -m converters.texts writes it)")
        data = p.read_bytes()
        digests[name] = _sha256(data)
        if digests[name] != EXPECTED_SHA256[name]:
            raise SystemExit(f"{p}: sha256 {digests[name]} is not the pinned "
                             f"{EXPECTED_SHA256[name]} (converters.texts)")
        raw[name] = data.decode("utf-8")
    hamlet = raw["hamlet.txt"]
    if raw["shakespeare.txt"].count(hamlet) != 1:
        raise SystemExit("shakespeare.txt: does not hold hamlet.txt exactly once; cannot hold "
                         "Hamlet out")
    texts = {"austen_train.txt": raw["austen_train.txt"],
             "shakespeare.txt": raw["shakespeare.txt"].replace(hamlet, "")}
    train, val = [], []
    for name, t in texts.items():
        cut = t.find("\n", int(len(t) * (1.0 - val_frac))) + 1
        if not 0 < cut < len(t):
            raise SystemExit(f"--val-frac {val_frac}: leaves no training or validation text")
        train.append(t[:cut])
        val.append(t[cut:])
    return {"train": train, "val": val,
            "held_out": {n: raw[n] for n in HELD_OUT_FILES}, "sha256": digests}


def train_tokenizer(texts: list[str], vocab_size: int):
    """Byte-level BPE of ``vocab_size`` entries (specials ``<s>``, ``</s>`` first)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, show_progress=False,
                                  special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator(texts, trainer=trainer)
    for i, s in enumerate(SPECIAL_TOKENS):
        assert tk.token_to_id(s) == i, (s, tk.token_to_id(s))
    return tk


def encode(tk, text: str) -> np.ndarray:
    return np.asarray(tk.encode(text, add_special_tokens=False).ids, dtype=np.int64)


# ============================================================================ model

class ModelArgs:
    def __init__(self, dim=256, n_layers=6, n_heads=4, n_kv_heads=2, head_dim=64, ffn_dim=768,
                 vocab_size=4096, max_pos=512, rope_theta=10000.0, rms_eps=1e-5, dropout=0.0):
        self.dim, self.n_layers, self.n_heads, self.n_kv_heads = dim, n_layers, n_heads, n_kv_heads
        self.head_dim, self.ffn_dim, self.vocab_size, self.max_pos = head_dim, ffn_dim, vocab_size, max_pos
        self.rope_theta, self.rms_eps, self.dropout = rope_theta, rms_eps, dropout

    def as_dict(self) -> dict:
        return dict(vars(self))


def hf_config(a: ModelArgs, save_dtype: str) -> dict:
    """The ``config.json`` of a LlamaForCausalLM with these dimensions."""
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama",
            "hidden_size": a.dim, "intermediate_size": a.ffn_dim,
            "num_hidden_layers": a.n_layers, "num_attention_heads": a.n_heads,
            "num_key_value_heads": a.n_kv_heads, "head_dim": a.head_dim,
            "vocab_size": a.vocab_size, "max_position_embeddings": a.max_pos,
            "rope_theta": a.rope_theta, "rope_scaling": None, "rms_norm_eps": a.rms_eps,
            "hidden_act": "silu", "attention_bias": False, "mlp_bias": False,
            "tie_word_embeddings": True, "bos_token_id": BOS_ID, "eos_token_id": EOS_ID,
            "torch_dtype": save_dtype}


def _torch_modules():
    import torch
    from torch import nn
    F = nn.functional

    class RMSNorm(nn.Module):
        def __init__(self, d, eps):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(d))
            self.eps = eps

        def forward(self, x):
            xf = x.float()
            y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
            return self.weight * y.to(x.dtype)

    class Attention(nn.Module):
        def __init__(self, a: ModelArgs):
            super().__init__()
            self.a = a
            self.q_proj = nn.Linear(a.dim, a.n_heads * a.head_dim, bias=False)
            self.k_proj = nn.Linear(a.dim, a.n_kv_heads * a.head_dim, bias=False)
            self.v_proj = nn.Linear(a.dim, a.n_kv_heads * a.head_dim, bias=False)
            self.o_proj = nn.Linear(a.n_heads * a.head_dim, a.dim, bias=False)

        def forward(self, x, cos, sin):
            a = self.a
            B, T, _ = x.shape
            q = self.q_proj(x).view(B, T, a.n_heads, a.head_dim).transpose(1, 2)     # [B, H, T, hd]
            k = self.k_proj(x).view(B, T, a.n_kv_heads, a.head_dim).transpose(1, 2)  # [B, KV, T, hd]
            v = self.v_proj(x).view(B, T, a.n_kv_heads, a.head_dim).transpose(1, 2)
            q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True,
                                               dropout_p=a.dropout if self.training else 0.0)
            return self.o_proj(o.transpose(1, 2).reshape(B, T, a.n_heads * a.head_dim))

    class MLP(nn.Module):
        def __init__(self, a: ModelArgs):
            super().__init__()
            self.gate_proj = nn.Linear(a.dim, a.ffn_dim, bias=False)
            self.up_proj = nn.Linear(a.dim, a.ffn_dim, bias=False)
            self.down_proj = nn.Linear(a.ffn_dim, a.dim, bias=False)

        def forward(self, x):
            return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))

    class Layer(nn.Module):
        def __init__(self, a: ModelArgs):
            super().__init__()
            self.input_layernorm = RMSNorm(a.dim, a.rms_eps)
            self.self_attn = Attention(a)
            self.post_attention_layernorm = RMSNorm(a.dim, a.rms_eps)
            self.mlp = MLP(a)
            self.drop = nn.Dropout(a.dropout)

        def forward(self, x, cos, sin):
            x = x + self.drop(self.self_attn(self.input_layernorm(x), cos, sin))
            return x + self.drop(self.mlp(self.post_attention_layernorm(x)))

    def _rotate(x, cos, sin):
        """Rotate-half RoPE on [B, H, T, hd]; cos/sin [T, hd/2]."""
        half = x.shape[-1] // 2
        x1, x2 = x[..., :half], x[..., half:]
        c, s = cos.to(x.dtype), sin.to(x.dtype)
        return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1)

    class Inner(nn.Module):                      # "model." in the Hugging Face names
        def __init__(self, a: ModelArgs):
            super().__init__()
            self.embed_tokens = nn.Embedding(a.vocab_size, a.dim)
            self.layers = nn.ModuleList(Layer(a) for _ in range(a.n_layers))
            self.norm = RMSNorm(a.dim, a.rms_eps)

    class SmallLlama(nn.Module):
        """LLaMA with tied embeddings; parameter names are the Hugging Face ones."""

        def __init__(self, a: ModelArgs):
            super().__init__()
            self.a = a
            self.model = Inner(a)
            # inv_freq and the angles in float32, as Hugging Face forms them
            inv = 1.0 / (a.rope_theta ** (torch.arange(0, a.head_dim, 2, dtype=torch.float32)
                                          / a.head_dim))
            ang = torch.arange(a.max_pos, dtype=torch.float32)[:, None] * inv[None, :]
            self.register_buffer("cos", ang.cos(), persistent=False)
            self.register_buffer("sin", ang.sin(), persistent=False)
            self.apply(self._init)
            for L in self.model.layers:          # residual projections: smaller, by depth
                for w in (L.self_attn.o_proj.weight, L.mlp.down_proj.weight):
                    nn.init.normal_(w, std=0.02 / math.sqrt(2 * a.n_layers))

        @staticmethod
        def _init(m):
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)

        def forward(self, ids):                  # ids [B, T] -> logits [B, T, V]
            T = ids.shape[1]
            x = self.model.embed_tokens(ids)
            cos, sin = self.cos[:T], self.sin[:T]
            for L in self.model.layers:
                x = L(x, cos, sin)
            x = self.model.norm(x)
            return x @ self.model.embed_tokens.weight.T.to(x.dtype)

    return SmallLlama


def SmallLlama(a: ModelArgs):
    return _torch_modules()(a)


# ============================================================================ training

def _lr(step: int, steps: int, warmup: int, lr: float) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(t, 1.0))))


def _windows(tokens: np.ndarray, ctx: int, limit: int | None = None) -> list[np.ndarray]:
    """Consecutive non-overlapping windows of ``ctx`` (the last may be shorter, >= 2)."""
    out = [tokens[i:i + ctx] for i in range(0, len(tokens), ctx)]
    out = [w for w in out if len(w) >= 2]
    return out if limit is None else out[:limit]


def mean_nll(model, windows, device, autocast) -> tuple[float, int]:
    """Mean next-token NLL (nats) over positions 1..n-1 of each window, and the count."""
    import torch
    F = torch.nn.functional
    model.eval()
    tot, n = 0.0, 0
    with torch.no_grad():
        full = [w for w in windows if len(w) == len(windows[0])]
        rest = [w for w in windows if len(w) != len(windows[0])]
        batches = [full[i:i + 32] for i in range(0, len(full), 32)] + [[w] for w in rest]
        for b in batches:
            x = torch.from_numpy(np.stack(b)).to(device)
            with autocast():
                logits = model(x[:, :-1])
            loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]),
                                   x[:, 1:].reshape(-1), reduction="sum")
            tot += float(loss)
            n += x[:, 1:].numel()
    model.train()
    return tot / n, n


def greedy(model, tk, prompt: str, n_new: int, device) -> str:
    import torch
    model.eval()
    ids = encode(tk, prompt).tolist()
    with torch.no_grad():
        for _ in range(n_new):
            x = torch.tensor([ids[-model.a.max_pos:]], device=device)
            nxt = int(model(x)[0, -1].float().argmax())
            if nxt == EOS_ID:
                break
            ids.append(nxt)
    model.train()
    return tk.decode(ids)


def export(model, tk, args_m: ModelArgs, out: Path, save_dtype: str) -> dict:
    """Write config.json, model.safetensors (tied: no lm_head), tokenizer.json; return the
    stored tensors (as float32 torch tensors on the CPU)."""
    import torch
    from safetensors.torch import save_file
    out.mkdir(parents=True, exist_ok=True)
    dt = {"float16": torch.float16, "float32": torch.float32, "bfloat16": torch.bfloat16}[save_dtype]
    sd = {k: v.detach().to("cpu", dt).contiguous() for k, v in model.state_dict().items()
          if k.startswith("model.")}
    save_file(sd, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(hf_config(args_m, save_dtype), indent=2) + "\n")
    tk.save(str(out / "tokenizer.json"))
    return {k: v.float() for k, v in sd.items()}


def check_against_numpy(model, out: Path, ids: np.ndarray) -> float:
    """Max |logit difference| between this torch model (fp32, eval) and FloatLlama on ``out``."""
    import torch
    from converters.float_model import FloatLlama
    fm = FloatLlama.from_hf(out)
    ref = fm.logits(ids)
    model.eval()
    with torch.no_grad():
        got = model(torch.from_numpy(ids[None]).to(next(model.parameters()).device))[0].float()
    model.train()
    return float(np.abs(got.cpu().numpy() - ref).max())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m converters.train_small", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, type=Path, help="output folder (HF style)")
    ap.add_argument("--texts-dir", type=Path, default=Path("~/.cache/intsim/texts").expanduser())
    ap.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--tokenizer", type=Path, help="reuse this tokenizer.json instead of training one")
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--ffn", type=int, default=768)
    ap.add_argument("--ctx", type=int, default=512, help="training context = max_position_embeddings")
    ap.add_argument("--rope-theta", type=float, default=10000.0)
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--batch", type=int, default=64, help="sequences per step")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--val-frac", type=float, default=0.02)
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--eval-windows", type=int, default=64, help="validation windows per eval")
    ap.add_argument("--time-limit", type=float, default=None,
                    help="stop training after this many seconds (recorded in the metadata)")
    ap.add_argument("--save-dtype", choices=("float16", "float32", "bfloat16"), default="float16")
    ap.add_argument("--sample-tokens", type=int, default=40)
    args = ap.parse_args(argv)

    import torch
    t_start = time.time()
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = args.device
    if dev == "auto":
        dev = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(dev)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        autocast = lambda: torch.autocast("cuda", dtype=torch.bfloat16)  # noqa: E731
    else:
        import contextlib
        autocast = contextlib.nullcontext

    # ---- data and tokenizer
    data = load_texts(args.texts_dir, args.val_frac)
    if args.tokenizer:
        from tokenizers import Tokenizer
        tk = Tokenizer.from_file(str(args.tokenizer))
    else:
        tk = train_tokenizer(data["train"], args.vocab)
    vocab = tk.get_vocab_size(with_added_tokens=True)
    train_ids = np.concatenate([np.concatenate([[BOS_ID], encode(tk, t), [EOS_ID]])
                                for t in data["train"]]).astype(np.int64)
    val_ids = [encode(tk, t) for t in data["val"]]
    held = {n: encode(tk, t) for n, t in data["held_out"].items()}
    chars = sum(len(t) for t in data["train"])
    print(f"tokenizer: {vocab} entries, {chars / (len(train_ids) - 2 * len(data['train'])):.2f} "
          f"chars/token; train {len(train_ids):,} tokens, val {sum(map(len, val_ids)):,}, "
          + ", ".join(f"{n} {len(v):,}" for n, v in held.items()), flush=True)

    # ---- model
    ma = ModelArgs(dim=args.dim, n_layers=args.layers, n_heads=args.heads, n_kv_heads=args.kv_heads,
                   head_dim=args.head_dim, ffn_dim=args.ffn, vocab_size=vocab, max_pos=args.ctx,
                   rope_theta=args.rope_theta, dropout=args.dropout)
    model = SmallLlama(ma).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params:,} parameters ({json.dumps(ma.as_dict())}) on {device}", flush=True)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95), eps=1e-8,
                            **({"fused": True} if device.type == "cuda" else {}))
    train_t = torch.from_numpy(train_ids).to(device)
    val_windows = [w for v in val_ids for w in _windows(v, args.ctx + 1)]
    val_windows = [val_windows[i] for i in np.linspace(0, len(val_windows) - 1,
                                                       min(args.eval_windows, len(val_windows))).astype(int)]
    gen = torch.Generator(device=device).manual_seed(args.seed)
    offs = torch.arange(args.ctx + 1, device=device)
    n_start = len(train_ids) - args.ctx - 1
    tr_gen = np.random.default_rng(args.seed + 1)
    train_eval = [train_ids[o:o + args.ctx + 1] for o in
                  tr_gen.integers(0, n_start, min(args.eval_windows, 64))]

    F = torch.nn.functional
    log, recent = [], []
    step, stopped_early = 0, False
    t0 = time.time()
    model.train()
    for step in range(args.steps):
        for g in opt.param_groups:
            g["lr"] = _lr(step, args.steps, args.warmup, args.lr)
        starts = torch.randint(0, n_start, (args.batch,), device=device, generator=gen)
        x = train_t[starts[:, None] + offs[None, :]]                  # [B, ctx + 1]
        with autocast():
            logits = model(x[:, :-1])
        loss = F.cross_entropy(logits.float().reshape(-1, vocab), x[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        recent.append(loss.detach())
        last = step == args.steps - 1
        over = args.time_limit is not None and time.time() - t0 > args.time_limit
        if (step + 1) % args.eval_every == 0 or last or over:
            tl = float(torch.stack(recent).mean())
            recent = []
            vl, _ = mean_nll(model, val_windows, device, autocast)
            el = time.time() - t0
            log.append({"step": step + 1, "train_loss": round(tl, 4), "val_loss": round(vl, 4),
                        "lr": round(opt.param_groups[0]["lr"], 6), "seconds": round(el, 1)})
            print(f"step {step + 1:>6}  train {tl:.4f}  val {vl:.4f}  "
                  f"{(step + 1) * args.batch * args.ctx / el:,.0f} tok/s  {el:.0f} s", flush=True)
        if over and not last:
            stopped_early = True
            break
    steps_done = step + 1
    train_seconds = time.time() - t0

    # ---- export, then evaluate the stored (rounded) weights in true fp32 (no TF32)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    stored = export(model, tk, ma, args.out, args.save_dtype)
    with torch.no_grad():
        sd = model.state_dict()
        for k, v in stored.items():
            sd[k].copy_(v.to(device))
    model = model.float()
    max_diff = check_against_numpy(model, args.out, held["persuasion.txt"][:args.ctx])
    print(f"float_model.FloatLlama vs torch on the stored weights: max |logit diff| {max_diff:.2e}",
          flush=True)
    if not max_diff < 2e-3:
        raise SystemExit(f"the exported model does not match the NumPy reference ({max_diff})")
    fp32 = lambda: torch.autocast(device.type, enabled=False)  # noqa: E731
    final_train, _ = mean_nll(model, train_eval, device, fp32)
    final_val, n_val = mean_nll(model, [w for v in val_ids for w in _windows(v, args.ctx)],
                                device, fp32)
    ppl = {}
    for name, ids in held.items():
        nll, n = mean_nll(model, _windows(ids, args.ctx), device, fp32)
        ppl[name] = {"ppl": round(math.exp(nll), 3), "nll": round(nll, 5), "tokens": n,
                     "ctx": args.ctx}
    samples = {p: greedy(model, tk, p, args.sample_tokens, device) for p in SAMPLE_PROMPTS}
    for p, s in samples.items():
        print(f"--- {s!r}")
    print(f"final: train {final_train:.4f}  val {final_val:.4f}  " + "  ".join(
        f"{n} ppl {v['ppl']}" for n, v in ppl.items()), flush=True)

    meta = {
        "generator": "converters/train_small.py",
        "command": "python -m converters.train_small " + " ".join(
            a if " " not in a else repr(a) for a in (argv if argv is not None else sys.argv[1:])),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                 if k not in ("out", "texts_dir")},
        "model": {**ma.as_dict(), "parameters": n_params, "stored_dtype": args.save_dtype},
        "data": {
            "train_files": list(TRAIN_FILES), "held_out_files": list(HELD_OUT_FILES),
            "input_sha256": data["sha256"],
            "note": "shakespeare.txt with hamlet.txt removed; the last val_frac of each "
                    "training text (from a line start) is validation",
            "train_tokens": int(len(train_ids)), "val_tokens": int(sum(map(len, val_ids))),
            "train_tokens_sha256": _sha256(train_ids.astype("<i8").tobytes()),
            "tokenizer_sha256": _sha256((args.out / "tokenizer.json").read_bytes()),
            "vocab_size": vocab},
        "training": {"steps": steps_done, "stopped_by_time_limit": stopped_early,
                     "tokens_seen": steps_done * args.batch * args.ctx,
                     "epochs": round(steps_done * args.batch * args.ctx / len(train_ids), 2),
                     "seconds": round(train_seconds, 1), "log": log},
        "final": {"train_loss": round(final_train, 4), "val_loss": round(final_val, 4),
                  "val_tokens_scored": n_val, "held_out": ppl,
                  "numpy_check_max_abs_logit_diff": max_diff,
                  "note": "stored weights, fp32 forward; held-out: non-overlapping windows of "
                          "ctx, positions 1..n-1 scored"},
        "samples_greedy": samples,
        "machine": {"device": torch.cuda.get_device_name(device) if device.type == "cuda"
                    else platform.processor() or platform.machine(),
                    "torch": torch.__version__, "python": platform.python_version(),
                    "wall_seconds": round(time.time() - t_start, 1)},
    }
    (args.out / "train_meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"wrote {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
