"""Stage records: an op's internal steps recomputed with the public functions on the
op's own arguments, recorded before the op (docs/GOLDEN_FORMAT.md, stage records):
DI-MatMul's input codes and exact accumulator, DI-ClippedSoftmax's clip, requantization
and DI-Exp."""
from __future__ import annotations

import numpy as np

from ..exp import di_exp, row_scale
from ..matmul import di_matmul_acc, requant_groups
from ..qtensor import Dyadic
from ..requant import requant_rows
from ..softmax import softmax_clip, visibility

#: stage records each kind gets (names appended to the op's name), in execution order
STAGES = {"di_matmul": ("x_q", "acc"), "di_matmul_acc": ("x_q",),
          "di_clipped_softmax": ("clip", "x_q", "exp")}


def stage_call(kind: str, stage: str, a: dict, result):
    """``(fn, arguments, result)`` of one stage of an op (module doc), recomputed with the
    public functions on the op's own arguments."""
    spec, backend = a["spec"], a["backend"]
    if kind in ("di_matmul", "di_matmul_acc"):
        x = a["x"]
        ag = a.get("a_group")
        if ag is not None:            # group-wise activations (SPEC 4.8): their codes and P
            return _group_stage(stage, a, x, ag, spec, backend)
        if stage == "x_q":
            args = {"v": x.centered(), "scale_in": x.scale, "bits": a["a_bits"], "symmetric": False,
                    "spec": spec, "backend": backend, "name": "x"}
            return requant_rows, args, requant_rows(**args)
        args = {"x": x, "w": a["w"], "a_bits": a["a_bits"], "spec": spec, "backend": backend}
        return di_matmul_acc, args, di_matmul_acc(**args)
    return _softmax_stage(stage, a, spec, backend)


def _group_stage(stage: str, a: dict, x, ag: int, spec, backend):
    """DI-MatMul's stages with group-wise activations: the group codes (``requant_groups``
    on the rows of x) and the exact accumulator with ``a_group``."""
    if stage == "x_q":
        K = x.q.shape[-1]
        lead = x.q.shape[:-1]
        args = {"v": x.centered().reshape(-1, K),
                "scale_in": Dyadic(*(np.broadcast_to(s, lead).reshape(-1) for s in (x.scale.m, x.scale.k))),
                "bits": a["a_bits"], "a_group": ag, "spec": spec, "backend": backend, "name": "x"}
        return requant_groups, args, requant_groups(**args)
    args = {"x": x, "w": a["w"], "a_bits": a["a_bits"], "spec": spec, "backend": backend, "a_group": ag}
    return di_matmul_acc, args, di_matmul_acc(**args)


def _softmax_stage(stage: str, a: dict, spec, backend):
    # di_clipped_softmax: scores, scale, mask, causal, q_offset
    scores = a["scores"]
    vis = visibility(scores.shape, a["mask"], a["causal"], a["q_offset"])
    rows = scores.shape[:-1]
    m, k = row_scale("scale", a["scale"], rows)
    clip_args = {"scores": scores, "scale": Dyadic(m, k), "mask": vis, "spec": spec, "backend": backend}
    xt = softmax_clip(**clip_args)
    if stage == "clip":
        return softmax_clip, clip_args, xt
    rq_args = {"v": xt, "scale_in": Dyadic(m, k), "bits": spec.softmax_in_bits, "symmetric": False,
               "spec": spec, "backend": backend, "name": "scores - rowmax (clipped)"}
    qt, nsat = requant_rows(**rq_args)
    if stage == "x_q":
        return requant_rows, rq_args, (qt, nsat)
    zero = qt.scale.m == 0
    xq = np.where(vis & ~zero[..., None], qt.centered(), 0)
    ex_args = {"x": xq, "scale": Dyadic(np.where(zero, 1, qt.scale.m), np.where(zero, 0, qt.scale.k)),
               "spec": spec, "backend": backend}
    return di_exp, ex_args, di_exp(**ex_args)
