"""Writing a stress suite (``intsim stress``): every generator's cases, run on the NumPy
reference and recorded in the golden dump format with ``"kind": "stress"``
(docs/GOLDEN_FORMAT.md section 7)."""
from __future__ import annotations

import inspect
from pathlib import Path

from ..errors import IntsimError
from ..golden.formats import FORMAT, FORMAT_VERSION, FORMATS, GENERATOR, MANIFEST, manifest_text
from ..golden.ops import KINDS, recorded_params
from ..golden.record import Recorder, _prepare_dir
from ..golden.stages import STAGES, stage_call
from .core import Case, StressError

#: the SPEC step each stage record of a stress case targets
STAGE_TARGETS = {
    ("di_matmul", "x_q"): "SPEC §4.2 step 1: the input requantized to A bits (stage)",
    ("di_matmul", "acc"): "SPEC §4.2 steps 2-3: the exact accumulator P and its scale (stage)",
    ("di_matmul_acc", "x_q"): "SPEC §4.2 step 1: the input requantized to A bits (stage)",
    ("di_clipped_softmax", "clip"): "SPEC §6.2 step 1: x - rowmax, clipped (stage)",
    ("di_clipped_softmax", "x_q"): "SPEC §6.2 step 2: the clipped scores requantized (stage)",
    ("di_clipped_softmax", "exp"): "SPEC §6.2 step 3: DI-Exp of the codes, before masking (stage)",
}


def all_cases() -> list:
    """Every generator's cases, in suite order (module order, then each generator's)."""
    from . import (gen_agroup, gen_attn, gen_exp, gen_hadamard, gen_head, gen_matmul, gen_misc, gen_norm,
                   gen_prim, gen_pv, gen_requant, gen_softmax, gen_twostep)
    out = []
    # new generators go last: the suite's earlier records keep their numbers and files
    for g in (gen_prim, gen_requant, gen_matmul, gen_exp, gen_softmax, gen_norm, gen_misc, gen_attn, gen_head,
              gen_agroup, gen_hadamard, gen_pv, gen_twostep):
        out += g.cases()
    names = [c.name for c in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise StressError(f"stress cases with the same name: {dup}")
    return out


def select(cases: list, only) -> list:
    """Cases whose kind, or name prefix (up to a dot), is one of ``only`` (None: all)."""
    if not only:
        return list(cases)
    got = [c for c in cases if any(c.kind == o or c.name == o or c.name.startswith(o + ".") for o in only)]
    unknown = [o for o in only if not any(c.kind == o or c.name == o or c.name.startswith(o + ".")
                                          for c in cases)]
    if unknown:
        raise IntsimError(f"--only: no stress case of kind or name {', '.join(unknown)}; kinds: "
                          f"{', '.join(sorted({c.kind for c in cases}))}")
    return got


def bound_args(case: Case, backend: str = "reference") -> dict:
    """The case's call arguments by parameter name, defaults applied, on ``backend``."""
    fn = KINDS.get(case.kind)
    if fn is None:
        raise StressError(f"{case.name}: unknown op kind {case.kind!r}")
    a = dict(case.args)
    if "backend" in inspect.signature(fn).parameters:
        a["backend"] = backend
    try:
        b = inspect.signature(fn).bind(**a)
    except TypeError as e:
        raise StressError(f"{case.name}: arguments do not fit {case.kind}: {e}") from e
    b.apply_defaults()
    return recorded_params(b.arguments)


def run_case(case: Case, backend: str = "reference"):
    """``(arguments, result)`` of one case on ``backend``; for a case with ``expect_error``
    the result is the error the op raised (of exactly that type, else StressError)."""
    a = bound_args(case, backend)
    try:
        result = KINDS[case.kind](**a)
    except IntsimError as e:
        if case.expect_error is not None and type(e).__name__ == case.expect_error:
            return a, e
        raise StressError(f"{case.name}: {case.kind} refused the stimulus: {e}") from e
    if case.expect_error is not None:
        raise StressError(f"{case.name}: {case.kind} returned; the case expects {case.expect_error}")
    return a, result


def witness(case: Case) -> None:
    """Raise unless the case's stimulus reaches its target (its witness, Python ints)."""
    if case.witness is not None:
        miss = case.witness(case.args)
        if miss:
            raise StressError(f"{case.name}: the stimulus misses its target: {miss}")


def _outputs(kind: str, result) -> list:
    from ..golden.values import split_result, value_comps
    outs, stats = split_result(kind, result)
    return [(a, c) for a, v in outs for c in [value_comps(v)[0]]] + [("stats", stats)]


def _same(x, y) -> bool:
    if len(x) != len(y):
        return False
    for (a, ca), (b, cb) in zip(x, y):
        if a != b:
            return False
        if a == "stats":
            if ca != cb:
                return False
            continue
        if set(ca) != set(cb) or any(ca[c].shape != cb[c].shape or (ca[c] != cb[c]).any() for c in ca):
            return False
    return True


def rule_check(case: Case) -> list:
    """The rules of ``case.distinct_from`` under which the case's output does NOT change
    (empty: its targeted ties reach the output).  The run's rule is the spec's
    ``rounding`` (or a primitive's ``rounding`` argument)."""
    from dataclasses import replace
    from ..options import Spec
    _, base = run_case(case)
    want = _outputs(case.kind, base)
    same = []
    for r in case.distinct_from:
        args = dict(case.args)
        if "rounding" in args:
            args["rounding"] = r
        elif isinstance(args.get("spec"), Spec):
            args["spec"] = replace(args["spec"], rounding=r)
        else:
            raise StressError(f"{case.name}: distinct_from without a rounding or spec argument")
        try:
            _, got = run_case(Case(case.name, case.kind, "", (), args))
        except StressError:
            continue                     # the other rule is refused: different, too
        if _same(want, _outputs(case.kind, got)):
            same.append(r)
    return same


def write_suite(out_dir, *, formats=("npy", "hex"), only=None, force: bool = False,
                stages: bool = False, check: bool = True) -> dict:
    """Write the stress suite to ``out_dir``; returns its manifest.  ``formats``: "npy"
    (always) and any of "hex", "txt"; ``only``: kinds or name prefixes to keep;
    ``stages``: add the stage records of DI-MatMul and DI-ClippedSoftmax cases;
    ``check``: run every case's witness first."""
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise IntsimError(f"--format: unknown format(s) {bad}; choose from {', '.join(FORMATS)}")
    formats = tuple(f for f in FORMATS if f in formats or f == "npy")
    cases = select(all_cases(), only)
    if check:
        for c in cases:
            witness(c)
    out = Path(out_dir)
    _prepare_dir(out, force)
    rec = Recorder(None, out, formats, False, stages)
    try:
        for c in cases:
            a, result = run_case(c)
            if c.expect_error is not None:          # a refusal record: no outputs
                rec.record_call(c.name, KINDS[c.kind], a, None,
                                extra={"targets": c.targets, "sites": list(c.sites),
                                       "expect_error": {"type": type(result).__name__, "message": str(result)}})
                continue
            for st in (STAGES.get(c.kind, ()) if stages else ()):
                fn, sa, sr = stage_call(c.kind, st, a, result)
                rec.record_call(f"{c.name}.{st}", fn, sa, sr, stage_of=c.name,
                                extra={"targets": STAGE_TARGETS[(c.kind, st)], "sites": []})
            rec.record_call(c.name, KINDS[c.kind], a, result,
                            extra={"targets": c.targets, "sites": list(c.sites)})
    finally:
        rec.writer.finish()
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "generator": GENERATOR, "kind": "stress",
        "model": None, "prompt": None,
        "run": {"backend": "reference", "generator": "intsim.stress", "formats": list(formats),
                "hex_pack": False, "stages": bool(stages), "only": sorted(only) if only else None},
        "ops": rec.ops, "tensors": rec.tensors,
    }
    text = manifest_text(manifest)
    out.joinpath(MANIFEST).write_text(text)
    manifest["_bytes_written"] = rec.writer.bytes_written + len(text)
    return manifest
