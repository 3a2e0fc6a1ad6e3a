"""Values and their stored components: a QTensor, Dyadic or integer array as the arrays
a dump writes (codes / values, zero point, scale m and k, each at its declared width),
and back; an op's result split into named outputs and counters."""
from __future__ import annotations

import numpy as np

from ..errors import IntsimError
from ..qtensor import Dyadic, QTensor, dtype_for
from .ops import OUT_NAMES

#: largest |k| written as a 32-bit word; beyond it the exponent file is 64-bit
_I32 = 2 ** 31 - 1
#: dtypes an array input is read back as when its manifest entry has no ``call_dtype``
CALL_DTYPE_DEFAULT = ("int64", "bool")
#: the arrays of a QWeight argument a stress suite dumps (``<arg>.q`` ...), in this order
QWEIGHT_ARRAYS = ("q", "m", "b", "row_bits")


def _array_width(a: np.ndarray) -> tuple[int, bool]:
    """(bits, signed) of a plain integer array: the smallest width holding its values."""
    if a.dtype == np.bool_:
        return 1, False
    signed = a.dtype.kind == "i"
    if a.size == 0:
        return (2 if signed else 1), signed
    if signed:
        amax = max(abs(int(a.min())), abs(int(a.max())))
        return max(2, amax.bit_length() + 1), True
    return max(1, int(a.max()).bit_length()), False


def _store(a: np.ndarray, bits: int, signed: bool) -> np.ndarray:
    """``a`` in the storage dtype of its declared width (values unchanged, checked)."""
    dt = dtype_for(max(bits, 2), signed)
    if a.dtype == np.bool_:
        return np.ascontiguousarray(a, dtype=np.uint8)
    if a.size and dt.itemsize < a.dtype.itemsize:
        lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2 ** bits - 1)
        if int(a.min()) < lo or int(a.max()) > hi:
            raise IntsimError(f"value does not fit its declared {bits}-bit "
                              f"{'signed' if signed else 'unsigned'} container")
    return np.ascontiguousarray(a, dtype=dt)


def _k_store(k: np.ndarray) -> np.ndarray:
    k = np.asarray(k, dtype=np.int64)
    if k.size and (int(k.min()) < -_I32 or int(k.max()) > _I32):
        return np.ascontiguousarray(k)
    return np.ascontiguousarray(k, dtype=np.int32)


def components(value) -> tuple[str, dict, list]:
    """Split a value into ``(type, attrs, [(component, stored array, bits, signed)])``.

    ``component`` is "" for the codes / values, else "zp", "m", "k"."""
    if isinstance(value, QTensor):
        comps = [("", _store(value.q, value.bits, value.signed), value.bits, value.signed),
                 ("zp", np.ascontiguousarray(value.zp, dtype=np.int32), 32, True),
                 ("m", np.ascontiguousarray(value.scale.m, dtype=np.int32), 32, True)]
        k = _k_store(value.scale.k)
        comps.append(("k", k, k.dtype.itemsize * 8, True))
        return "qtensor", {"bits": value.bits, "signed": value.signed}, comps
    if isinstance(value, Dyadic):
        k = _k_store(value.k)
        return "dyadic", {}, [("m", np.ascontiguousarray(value.m, dtype=np.int32), 32, True),
                              ("k", k, k.dtype.itemsize * 8, True)]
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "iub":
            raise IntsimError(f"value: expected an integer or bool array, got dtype {value.dtype}")
        bits, signed = _array_width(value)
        attrs = {"bits": bits, "signed": signed}
        if value.dtype == np.bool_:
            attrs["logical"] = "bool"
        return "array", attrs, [("", _store(value, bits, signed), bits, signed)]
    raise IntsimError(f"value: cannot dump a {type(value).__name__}")


def assemble(typ: str, attrs: dict, comps: dict):
    """Rebuild a value from its components (the inverse of :func:`components`)."""
    if typ == "qtensor":
        q = comps[""]
        return QTensor(q, comps["zp"].astype(np.int32), Dyadic(comps["m"].astype(np.int64),
                                                              comps["k"].astype(np.int64)),
                       int(attrs["bits"]), bool(attrs["signed"]))
    if typ == "dyadic":
        return Dyadic(comps["m"].astype(np.int64), comps["k"].astype(np.int64))
    a = comps[""]
    if attrs.get("logical") == "bool":
        return a.astype(np.bool_)
    try:
        dt = np.dtype(attrs.get("call_dtype") or "int64")
    except TypeError:
        dt = None
    if dt is None or dt.kind not in "iu":
        raise IntsimError(f"call_dtype {attrs.get('call_dtype')!r} is not an integer dtype")
    if a.size and (int(a.min()) < np.iinfo(dt).min or int(a.max()) > np.iinfo(dt).max):
        raise IntsimError(f"values do not fit its call_dtype {dt.name}")
    return a.astype(dt)


def split_result(kind: str, result) -> tuple[list, dict]:
    """An op's return value as ``([(arg, value)], stats)``: QTensors stay, an integer
    array followed by its Dyadic becomes ``QTensor.exact``, counters go to stats."""
    items = list(result) if isinstance(result, tuple) else [result]
    values, stats = [], {}
    i = 0
    while i < len(items):
        v = items[i]
        if isinstance(v, np.ndarray) and i + 1 < len(items) and isinstance(items[i + 1], Dyadic):
            values.append(QTensor.exact(v, items[i + 1]))
            i += 2
            continue
        if isinstance(v, (QTensor, np.ndarray, Dyadic)):
            values.append(v)
        elif isinstance(v, dict):
            stats.update({str(a): jsonable(b) for a, b in v.items()})
        elif isinstance(v, (int, np.integer)) and not isinstance(v, bool):
            stats["saturated_rows"] = int(v)
        else:
            raise IntsimError(f"{kind}: cannot dump a result part of type {type(v).__name__}")
        i += 1
    names = OUT_NAMES.get(kind, ("out",))
    if len(values) > len(names):
        raise IntsimError(f"{kind}: {len(values)} outputs, names for {len(names)}")
    return list(zip(names, values)), stats


def jsonable(v):
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, str) or v is None:
        return v
    if isinstance(v, (tuple, list)):
        return [jsonable(x) for x in v]
    raise IntsimError(f"cannot put a {type(v).__name__} into the manifest")


def value_comps(value) -> dict:
    typ, attrs, comps = components(value)
    return {c: a for c, a, _, _ in comps}, typ, attrs
