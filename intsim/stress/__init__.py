"""Directed stress vectors (``intsim stress``): op-level golden records aimed at every
branch of docs/SPEC.md -- exact ties under each tie rule, both sides of every saturation
and clamp, DI-Exp's T cap, fully masked and zero-range rows, the requantizer's pre-shift,
isqrt at perfect squares, every accumulator at its proven bound.

Each case (:class:`~intsim.stress.core.Case`) is one call of a public op with a stimulus
built for one target; the suite writer runs it on the NumPy reference and records it in
the golden dump format (docs/GOLDEN_FORMAT.md section 7: ``"kind": "stress"``, no model,
every op naming the SPEC step it ``targets``).  Generators by operator family: ``gen_prim``
(fixed-point primitives), ``gen_requant``, ``gen_matmul``, ``gen_exp``, ``gen_softmax``,
``gen_misc`` (norm, RoPE, residual, SwiGLU, embedding), ``gen_attn`` (scale folds, QK^T,
PV); ``sites`` is the catalogue of SPEC sites and ``coverage`` the table of which record
reaches which (docs/COVERAGE.md).
"""
from __future__ import annotations

from .core import Case, Rng, StressError
from .suite import all_cases, run_case, select, witness, write_suite

__all__ = ["Case", "Rng", "StressError", "all_cases", "run_case", "select", "witness", "write_suite"]
