"""The op catalogue of a golden dump: which functions a dump may name, their output
names and the rounding of their outputs, how model parameters are named, and which spec
an op ran under."""
from __future__ import annotations

from dataclasses import fields

import numpy as np

from ..attention import fold_scales, pv, qk_scores
from ..embedding import embed
from ..head import argmax, inv_sqrt_dyadic
from ..errors import IntsimError
from ..exp import di_exp
from ..fixedpoint import FLOOR, HALF_UP, div_round, dyadic_fit, isqrt, rshift_round
from ..hadamard import hadamard_rows
from ..matmul import QWeight, di_matmul, di_matmul_acc, fold_two_step, requant_groups
from ..norm import di_norm, norm_weight
from ..options import Spec
from ..requant import requant_rows
from ..residual import residual_add
from ..rope import rope
from ..softmax import di_clipped_softmax, softmax_clip
from ..swiglu import di_swiglu
from ..llama import mul_scales

#: the fixed-point primitives (docs/SPEC.md section 1), which only stress suites record
#: (``intsim stress``): they take their tie rule as an argument, not from a spec
PRIMITIVE_KINDS = ("isqrt", "dyadic_fit", "div_round", "rshift_round")
#: the op kinds a dump may name: the public operator functions (docs/SPEC.md), the
#: softmax clip stage, and (recorded by stress suites only) the primitives, the head's
#: argmax and 1/sqrt(d), and the graph's scale product.  A new op in forward() must be
#: added here to be captured.
KINDS = {f.__name__: f for f in (embed, di_norm, norm_weight, di_matmul, di_matmul_acc, rope,
                                 requant_rows, qk_scores, fold_scales, di_clipped_softmax, pv,
                                 residual_add, di_swiglu, di_exp, softmax_clip,
                                 isqrt, dyadic_fit, div_round, rshift_round, argmax, inv_sqrt_dyadic,
                                 mul_scales, requant_groups, hadamard_rows, fold_two_step)}
#: kinds without any rounding in their output (``rounding: exact``)
EXACT_KINDS = {"embed", "qk_scores", "pv", "norm_weight", "di_matmul_acc", "softmax_clip", "argmax",
               "fold_two_step"}
#: output argument names per kind (default: one output, "out")
OUT_NAMES = {"di_exp": ("out", "T"), "dyadic_fit": ("m", "k", "saturated"),
             "requant_groups": ("out", "zg", "exp"), "fold_two_step": ("inner", "P")}
#: op parameters added after records existed, whose default None means "as before": a
#: record holds them only when set, so every record made without them stays byte-identical
OPTIONAL_PARAMS = ("a_group",)


def recorded_params(arguments: dict) -> dict:
    """An op's bound arguments as a record holds them: :data:`OPTIONAL_PARAMS` at None left out."""
    return {a: v for a, v in arguments.items() if not (a in OPTIONAL_PARAMS and v is None)}


def rounding_of(kind: str, spec: Spec | None, params: dict | None = None) -> str:
    """The tie rule of an op's last rounding as the manifest names it: "exact" (nothing
    rounded: the exact kinds, RoPE without dropped bits), ``FLOOR`` for DI-Exp's output
    shift and the integer square root, a primitive's own ``rounding`` argument (from
    ``params``), else ``spec.rounding``."""
    if kind in EXACT_KINDS:
        return "exact"
    if kind == "isqrt":
        return FLOOR
    if kind == "inv_sqrt_dyadic":
        return HALF_UP                 # to nearest; no tie can occur (docs/SPEC.md section 12)
    if kind in PRIMITIVE_KINDS:
        return str((params or {}).get("rounding"))
    if kind == "rope":
        return "exact" if spec.rope_drop_bits == 0 else spec.rounding
    if kind == "di_exp":
        return FLOOR            # out = e >> q; T itself is rounded with spec.rounding
    return spec.rounding


def model_params(model) -> dict:
    """id -> name of every array / QWeight parameter of an IntModel (``layers.0.wq``,
    ``cos_q``, ...), so that ops can name the weights they were given."""
    out = {}
    for f in fields(model):
        v = getattr(model, f.name)
        if isinstance(v, (np.ndarray, QWeight)):
            out[id(v)] = f.name
    for i, L in enumerate(model.layers):
        for f in fields(L):
            v = getattr(L, f.name)
            if isinstance(v, (np.ndarray, QWeight)):
                out[id(v)] = f"layers.{i}.{f.name}"
    return out


def model_param(model, name: str):
    obj = model
    for part in name.split("."):
        if part.isdigit() and isinstance(obj, tuple) and int(part) < len(obj):
            obj = obj[int(part)]
        elif not part.isdigit() and hasattr(obj, part):
            obj = getattr(obj, part)
        else:
            raise IntsimError(f"model parameter '{name}' does not exist in this model")
    return obj


def model_tensors_sha256(model) -> str:
    from ..modelfile import model_tensors, tensors_sha256
    return tensors_sha256(model_tensors(model))


def spec_of(man: dict, op: dict) -> Spec:
    p = op["params"].get("spec", {"spec": "model"})
    if p.get("spec") == "model" and not isinstance(man.get("model"), dict):
        raise IntsimError(f"op '{op['name']}': names the model's spec, but the dump has no model")
    d = man["model"].get("spec", {}) if p.get("spec") == "model" else p.get("spec")
    try:
        return Spec.from_dict(d)
    except (TypeError, IntsimError) as e:
        raise IntsimError(f"op '{op['name']}': spec options unreadable: {e}") from e
