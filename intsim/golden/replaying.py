"""Replaying a dump (``intsim replay``): re-run ops from their dumped inputs and check
the dumped outputs bit for bit."""
from __future__ import annotations

from pathlib import Path

from ..errors import IntsimError
from ..fixedpoint import _check_backend
from .comparing import Diff, diff_arrays, first_mismatch
from ..matmul import QWeight
from .dump import (dump_error, error_verdict, is_stress, load_manifest, read_component, read_value, tensor_components,
                   verify_files)
from .ops import KINDS, model_param, model_tensors_sha256, spec_of
from .values import QWEIGHT_ARRAYS, split_result, value_comps


def select_ops(man: dict, op=None, layer=None, start=None, stop=None) -> list:
    """The op records a replay runs: one op (name or index), one layer, an index range, or all."""
    ops = man["ops"]
    if op is not None:
        got = [o for o in ops if o["name"] == op or str(o["index"]) == str(op)]
        if not got:
            raise IntsimError(f"--op: no op named or numbered {op!r} in this dump")
        return got
    if layer is not None:
        got = [o for o in ops if o["name"].startswith(f"layers.{int(layer)}.")]
        if not got:
            raise IntsimError(f"--layer: the dump has no op of layer {layer}")
        return got
    if start is not None or stop is not None:
        a = 0 if start is None else int(start)
        b = (ops[-1]["index"] if ops else 0) if stop is None else int(stop)
        got = [o for o in ops if a <= o["index"] <= b]
        if not got:
            raise IntsimError(f"--from/--to: no op with an index in [{a}, {b}]")
        return got
    return list(ops)


def check_model(man: dict, model, model_sha256: str | None, where) -> None:
    m = man["model"]
    if model_sha256 and m.get("file_sha256") and m["file_sha256"] != model_sha256:
        raise dump_error(where, f"the dump was made from model file sha256 {m['file_sha256'][:16]}..., "
                          f"this model file is {model_sha256[:16]}...")
    got = model_tensors_sha256(model)
    if m.get("tensors_sha256") != got:
        raise dump_error(where, f"the dump was made from a model with tensor sha256 "
                          f"{str(m.get('tensors_sha256'))[:16]}..., this model's is {got[:16]}...")


def _same_as(t: dict):
    """The output tensor all components of an input share their files with, or None."""
    owners = {c.get("same_as") for _, c in tensor_components(t)}
    return owners.pop() if len(owners) == 1 else None


def _qweight(d, op: dict, pname: str, spec: dict, arrays: dict) -> QWeight:
    """A QWeight argument of a stress record from its ``qweight`` parameter and its dumped
    arrays (``<pname>.q``, ``.m``, ``.b``, optional ``.row_bits``)."""
    missing = [a for a in QWEIGHT_ARRAYS[:3] if a not in arrays]
    if missing:
        raise dump_error(d, f"op '{op['name']}': QWeight '{pname}' lacks its input(s) "
                            f"{', '.join(pname + '.' + a for a in missing)}")
    try:
        return QWeight(arrays["q"], spec["bits"], spec["group_size"], arrays["m"], arrays["b"],
                       spec["k"], arrays.get("row_bits"))
    except IntsimError as e:
        raise dump_error(d, f"op '{op['name']}': QWeight '{pname}': {e}") from e


def call_args(d, man: dict, op: dict, tensors: dict, model, backend: str, replayed: dict | None = None,
              chain: bool = False) -> tuple[dict, list]:
    """The keyword arguments of one op record's call, and the inputs taken from earlier
    replays (``replayed``: output tensor name -> value, used only when ``chain``):
    parameters (model parameters, the spec, the backend, a stress record's QWeight rebuilt
    from its dumped arrays) and dumped inputs (read with their ``call_dtype``).  ``tensors``:
    the manifest's tensors by name.  Anything that re-runs records (replay, mutant
    scoring) builds its calls here."""
    replayed = {} if replayed is None else replayed
    kwargs, chained, parts = {}, [], {}
    for pname, p in op["params"].items():
        if isinstance(p, dict) and "qweight" in p:
            continue                                  # assembled from its arrays below
        if isinstance(p, dict) and "model" in p:
            kwargs[pname] = model_param(model, p["model"])
        elif isinstance(p, dict) and "spec" in p:
            kwargs[pname] = spec_of(man, op)
        elif pname == "backend":
            kwargs[pname] = backend
        else:
            kwargs[pname] = p
    for tn in op["inputs"]:
        t = tensors[tn]
        src = _same_as(t)
        if chain and src in replayed and tensors[src]["type"] == t["type"]:
            value = replayed[src]
            chained.append(t["arg"])
        else:
            value = read_value(d, t)
        pname, dot, part = t["arg"].partition(".")
        if dot and isinstance(op["params"].get(pname), dict) and "qweight" in op["params"][pname]:
            parts.setdefault(pname, {})[part] = value
        else:
            kwargs[t["arg"]] = value
    for pname, p in op["params"].items():
        if isinstance(p, dict) and "qweight" in p:
            kwargs[pname] = _qweight(d, op, pname, p["qweight"], parts.get(pname, {}))
    return kwargs, chained


def _check_outputs(d, op: dict, tensors: dict, outs: list, entry: dict, replayed: dict) -> None:
    """Compare each replayed output with its dumped tensor, into ``entry``."""
    names = dict(zip([tensors[n]["arg"] for n in op["outputs"]], op["outputs"]))
    for arg, value in outs:
        tn = names.get(arg)
        if tn is None:
            raise dump_error(d, f"op '{op['name']}': replay gave an output '{arg}' the dump lacks")
        t = tensors[tn]
        comps, typ, attrs = value_comps(value)
        diff = Diff()
        ok = typ == t["type"] and (typ == "dyadic" or (attrs["bits"], attrs["signed"]) ==
                                   (t["bits"], bool(t["signed"])))
        for c, e in tensor_components(t):
            want = read_component(d, e, f"tensor '{tn}'" + (f" {c}" if c else ""))
            got = comps.get(c)
            if got is None or got.shape != want.shape:
                ok = False
                continue
            diff_arrays(want, got, c, diff)
        same = ok and diff.count == 0
        entry["tensors"].append({"name": tn, "identical": same, "mismatches": diff.count,
                                 "format_ok": ok, "first": first_mismatch(diff)})
        entry["identical"] &= same
        replayed[tn] = value


def replay(golden_dir, model=None, *, model_sha256: str | None = None, ops=None,
           backend: str = "numba", stop_at_difference: bool = False) -> dict:
    """Re-run ``ops`` (default: all) of a dump from their dumped inputs; an input that is
    the output of an op replayed earlier in the same run is taken from that replay
    (model-level dumps; the records of a stress suite stand alone).
    ``model``: the model a model-level dump was made from; a stress suite (``intsim
    stress``) has none and takes ``None``.  ``stop_at_difference``: return after the first
    op whose outputs differ (a quick verdict, e.g. when scoring deviations).
    Returns ``{"identical": bool, "ops": [{index, name, kind, identical, tensors: ...}]}``.
    """
    _check_backend(backend)
    d = Path(golden_dir)
    man = load_manifest(d)
    problems = verify_files(d, man)
    if problems:
        raise dump_error(d, f"{len(problems)} file problem(s): " + "; ".join(problems[:5]))
    stress = is_stress(man)
    if stress:
        if model is not None:
            raise dump_error(d, "a stress suite is replayed without a model (it has none)")
    elif model is None:
        raise dump_error(d, "a model-level dump is replayed with the model it was made from (MODEL)")
    else:
        check_model(man, model, model_sha256, d)
    tensors = {t["name"]: t for t in man["tensors"]}
    ops = select_ops(man) if ops is None else ops
    replayed, report = {}, []
    for op in ops:
        kind = op["kind"]
        fn = KINDS.get(kind)
        if fn is None:
            raise dump_error(d, f"op '{op['name']}': unknown kind {kind!r}")
        kwargs, chained = call_args(d, man, op, tensors, model, backend, replayed, not stress)
        if "expect_error" in op:                      # a refusal record: identical iff that exact error
            why = error_verdict(op["expect_error"], lambda: fn(**kwargs))
            entry = {"index": op["index"], "name": op["name"], "kind": kind, "chained": chained,
                     "identical": why is None, "tensors": []}
            if why is not None:
                entry["error"] = why
            report.append(entry)
            if stop_at_difference and why is not None:
                break
            continue
        try:
            result = fn(**kwargs)
        except IntsimError as e:
            raise IntsimError(f"op {op['index']} '{op['name']}' ({kind}) refused its dumped "
                              f"inputs: {e}") from e
        outs, stats = split_result(kind, result)
        entry = {"index": op["index"], "name": op["name"], "kind": kind, "chained": chained,
                 "identical": True, "tensors": []}
        _check_outputs(d, op, tensors, outs, entry, replayed)
        if stats != op.get("stats", stats):
            entry["identical"] = False
            entry["stats"] = {"dumped": op.get("stats"), "replayed": stats}
        report.append(entry)
        if stop_at_difference and not entry["identical"]:
            break
    return {"identical": all(e["identical"] for e in report), "ops": report}
