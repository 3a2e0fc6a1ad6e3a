"""Which instruction set the integer vector tile is compiled for, and how to force the
fallback.

The vector tile (:func:`intsim.gemm.dot_tile_flat`) has two code generators: the portable
one (plain LLVM integer vector IR, lowered to ``vpmaddwd`` on AVX2) and, for 8-bit
operands where the JIT targets AVX-512 VNNI, one built on ``vpdpbusd``
(:mod:`intsim.tile_vnni`).  The choice is made when Numba compiles a kernel, from the
CPU features Numba's JIT compiles for (``NUMBA_CPU_FEATURES`` or the host's); those
features are part of Numba's cache key, so a cached kernel is never reused for the other
choice.

``INTSIM_ISA=avx2`` (read once, when this module is imported) forces the fallback: it
sets ``NUMBA_CPU_FEATURES`` to the host's features without any AVX-512 or AVX-VNNI
extension, so every kernel is compiled as on an AVX2-only machine of the same family
(unless ``NUMBA_CPU_FEATURES`` is already set, or Numba already compiled something in
this process: :func:`isa` then reports what is really in use).  ``INTSIM_ISA=auto`` (the
default, or unset) uses what the CPU has; any other value stops the process with
``intsim: error: INTSIM_ISA: ...`` (exit status 2).  ``intsim/__init__.py`` imports this
module first, so the setting reaches Numba before any kernel compiles.
"""
from __future__ import annotations

import os
import sys

import llvmlite.binding as llvm
import numba.core.config as nb_config


#: values of the INTSIM_ISA environment variable
ISA_CHOICES = ("auto", "avx2")


def _forced_features() -> str:
    """The host's feature string with every AVX-512 and AVX-VNNI extension off."""
    feats = llvm.get_host_cpu_features()
    for k in list(feats):
        if k.startswith("avx512") or k.startswith("avxvnni") or k.startswith("avx10"):
            feats[k] = False
    return feats.flatten()


def _apply_env() -> None:
    want = os.environ.get("INTSIM_ISA", "auto") or "auto"
    if want not in ISA_CHOICES:
        # a process-wide setting read at import: no caller to hand an exception to
        print(f"intsim: error: INTSIM_ISA: {want!r} is not one of {', '.join(ISA_CHOICES)}",
              file=sys.stderr)
        raise SystemExit(2)
    if want == "avx2" and not os.environ.get("NUMBA_CPU_FEATURES"):
        os.environ["NUMBA_CPU_FEATURES"] = _forced_features()
        nb_config.reload_config()


_apply_env()


def _host_features() -> str:
    """The host CPU's own feature string (whatever is forced)."""
    return llvm.get_host_cpu_features().flatten()


def target_features() -> str:
    """The feature string Numba's JIT compiles for (its cache key's third entry)."""
    from numba.core.registry import cpu_target
    return cpu_target.target_context.codegen().magic_tuple()[2]


def has_vnni(features: str | None = None) -> bool:
    """True where the JIT targets AVX-512 VNNI with 512-bit byte vectors (the
    ``vpdpbusd`` tile's requirements)."""
    f = set((target_features() if features is None else features).split(","))
    return {"+avx512f", "+avx512bw", "+avx512vnni"} <= f


def isa(features: str | None = None) -> str:
    """The tile's instruction set: ``avx512_vnni`` (``vpdpbusd`` for 8-bit operands),
    ``avx2`` (``vpmaddwd``), or ``generic`` (the same IR on another target)."""
    f = target_features() if features is None else features
    if has_vnni(f):
        return "avx512_vnni"
    if "+avx2" in f.split(","):
        return "avx2"
    return "generic"
