"""The mutant registry (intsim.mutants).

* the registry: at least 30 mutants, unique names, each naming a SPEC step that exists;
* every mutant is real: its witness, an op call on a small input, gives another output
  under the mutant than the reference's (no equivalent no-op can hide in the registry);
* every variant in intsim.mutant_variants with its knobs at their defaults IS its
  reference (on random inputs and on every record of the committed suites), so a
  mutant deviates in its one step only;
* the reference is unchanged after all mutants ran (every swapped name restored).
"""
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from intsim import mutant_variants as mv
from intsim import mutants as mu
from intsim.attention import _fold_ref
from intsim.exp import _exp_apply_ref, _exp_unit_ref
from intsim.fixedpoint import ROUND_CODE, _fit_ref
from intsim.matmul import QWeight, _di_acc_ref
from intsim.norm import _di_norm_ref, fixed_preshift, sqrt_c_const
from intsim.requant import _requant_ref
from intsim.residual import _align_ref
from intsim.rope import _rope_ref
from intsim.softmax import _center_clip_ref, _exp_norm_ref

ROOT = Path(__file__).resolve().parents[1]
CODES = sorted(ROUND_CODE.values())
NAMES = [m.name for m in mu.REGISTRY]


# ------------------------------------------------------------------ the registry

def _spec_sections() -> set:
    out = set()
    for line in (ROOT / "docs" / "SPEC.md").read_text().splitlines():
        m = re.match(r"#{2,3} (\d+(?:\.\d+)*)\.? ", line)
        if m:
            out.add(m.group(1))
    return out


def test_registry_has_at_least_30_uniquely_named_mutants_each_naming_a_spec_step():
    assert len(mu.REGISTRY) >= 30
    assert len(set(NAMES)) == len(NAMES), "mutant names must be unique"
    sections = _spec_sections()
    for m in mu.REGISTRY:
        assert re.fullmatch(r"[a-z0-9]+\.[a-z0-9_]+", m.name), m.name
        sec = re.match(r"§(\d+(?:\.\d+)*)", m.spec_step)
        assert sec and sec.group(1) in sections, f"{m.name}: {m.spec_step} is no section of docs/SPEC.md"
        assert m.description and m.patches and callable(m.witness)


@pytest.mark.parametrize("name", NAMES)
def test_every_mutant_changes_its_op_on_its_witness(name):
    m = next(x for x in mu.REGISTRY if x.name == name)
    ref = m.witness()
    with m.apply():
        mutated = m.witness()
    again = m.witness()
    assert mu.outputs_of(ref), "a witness must return the op's outputs"
    assert not mu.same_outputs(ref, mutated), f"{name} is an equivalent mutant on its witness"
    assert mu.same_outputs(ref, again), f"{name} left the reference changed"


def _attrs():
    return {(n, a): id(v) for n, mod in sorted(sys.modules.items())
            if mod is not None and (n == "intsim" or n.startswith("intsim."))
            for a, v in sorted(vars(mod).items())}


def test_the_reference_is_unchanged_after_every_mutant_ran():
    before = _attrs()
    outputs = [m.witness() for m in mu.REGISTRY]
    n_c = sqrt_c_const(3)
    for m in mu.REGISTRY:
        with m.apply():
            m.witness()
            sqrt_c_const(3)                         # a cached constant computed under a mutant
    assert _attrs() == before
    assert all(mu.same_outputs(o, m.witness()) for o, m in zip(outputs, mu.REGISTRY))
    assert sqrt_c_const(3) == n_c
    m = mu.REGISTRY[0]
    with pytest.raises(RuntimeError), m.apply():
        raise RuntimeError("an op failing under a mutant")
    assert _attrs() == before


def test_select_by_name_and_pattern():
    assert [m.name for m in mu.select(["softmax.p_*"])] == ["softmax.p_floor", "softmax.p_tie",
                                                          "softmax.p_wraps"]
    assert len(mu.select(None)) == len(mu.REGISTRY)
    with pytest.raises(mu.IntsimError, match="no mutant matches 'nope'"):
        mu.select(["nope"])


# ------------------------------------------------------------------ variants at their defaults

RNG = np.random.default_rng(12)


def _rows(n, C, mag):
    return RNG.integers(-(2 ** mag), 2 ** mag, size=(n, C), dtype=np.int64)


def test_fit_variant_is_the_fit():
    for code in CODES:
        num = RNG.integers(0, 2 ** int(RNG.integers(1, 61)), size=400, dtype=np.int64)
        den = RNG.integers(1, 2 ** 20, size=400, dtype=np.int64)
        for m_bits, kr in ((8, (-128, 127)), (3, (-8, 7)), (16, (-20, 20))):
            want = _fit_ref(num, den, m_bits, *kr, code)
            got = mv.fit_variant(num, den, m_bits, *kr, code)
            assert all(np.array_equal(a, b) for a, b in zip(want, got))


def test_requant_variant_is_the_requantizer():
    for code in CODES:
        for fitted in (True, False):
            for bits, sym in ((8, False), (16, True), (4, False), (16, False)):
                v = np.concatenate([_rows(6, 9, int(RNG.integers(1, 60))), np.abs(_rows(2, 9, 40)),
                                    np.zeros((1, 9), np.int64)])
                m_in = RNG.integers(0, 2 ** 20, size=9, dtype=np.int64)
                k_in = RNG.integers(-30, 30, size=9, dtype=np.int64)
                args = (v, m_in, k_in, bits, sym, 8, -128, 127, code, fitted)
                want, got = _requant_ref(*args), mv.requant_variant(*args)
                assert all(np.array_equal(a, b) for a, b in zip(want[:4], got[:4])) and want[4] == got[4]


def test_exp_and_softmax_variants_are_their_references():
    for code in CODES:
        m = RNG.integers(1, 2 ** 20, size=50, dtype=np.int64)
        k = RNG.integers(-40, 80, size=50, dtype=np.int64)
        assert all(np.array_equal(a, b) for a, b in zip(_exp_unit_ref(m, k, code),
                                                        mv.exp_unit_variant(m, k, code)))
        T, j = _exp_unit_ref(m, k, code)
        x = -np.abs(_rows(50, 7, 40))
        assert np.array_equal(_exp_apply_ref(x, T[:, None], j[:, None], code),
                              mv.exp_apply_variant(x, T[:, None], j[:, None], code))
        vis = RNG.integers(0, 3, size=(50, 7)) > 0
        sm, sk = RNG.integers(0, 2 ** 28, size=50, dtype=np.int64), RNG.integers(-20, 40, size=50)
        x = _rows(50, 7, 50)
        assert np.array_equal(_center_clip_ref(x, vis, sm, sk, 15, code),
                              mv.center_clip_variant(x, vis, sm, sk, 15, code))
        xq = -np.abs(_rows(50, 7, 16))
        for recip in (True, False):
            for F in (16, 8, 1):
                assert np.array_equal(_exp_norm_ref(xq, vis, m, k, F, 2 ** 16 - 1, recip, code),
                                      mv.exp_norm_variant(xq, vis, m, k, F, 2 ** 16 - 1, recip, code))


def test_norm_rope_residual_fold_and_acc_variants_are_their_references():
    for code in CODES:
        for C, mag in ((7, 15), (256, 15), (3, 2)):
            q = np.concatenate([_rows(5, C, mag), np.zeros((1, C), np.int64)])
            zp = RNG.integers(-3, 3, size=6, dtype=np.int64)
            n_c, p2 = sqrt_c_const(C)
            for pf in (-1, fixed_preshift(C, 16)):
                want = _di_norm_ref(q, zp, n_c, p2, pf, 8, -128, 127, code)
                got = mv.norm_variant(q, zp, n_c, p2, pf, 8, -128, 127, code)
                assert all(np.array_equal(a, b) for a, b in zip(want, got))
        cos_q, sin_q = (RNG.integers(-(2 ** 14), 2 ** 14, size=(5, 4)).astype(np.int16) for _ in range(2))
        x, zp, pos = _rows(3, 16, 15), RNG.integers(-9, 9, size=3), np.array([0, 4, 2])
        for drop in (0, 5):
            assert np.array_equal(_rope_ref(x, zp, pos, cos_q, sin_q, 2, 8, drop, code),
                                  mv.rope_variant(x, zp, pos, cos_q, sin_q, 2, 8, drop, code))
        qa, qb = _rows(8, 5, 15), _rows(8, 5, 15)
        z = np.zeros(8, np.int64)
        ma, mb = RNG.integers(0, 2 ** 31 - 1, size=8), RNG.integers(0, 2 ** 31 - 1, size=8)
        ka, kb = RNG.integers(-80, 80, size=8), RNG.integers(-80, 80, size=8)
        want, got = _align_ref(qa, z, ma, ka, qb, z, mb, kb, code), mv.align_variant(qa, z, ma, ka, qb, z, mb, kb, code)
        assert np.array_equal(want[0], got[0]) and np.array_equal(want[1], got[1]) and want[2] == got[2]
        v, fm, fk = _rows(4, 6, 20), RNG.integers(0, 2 ** 16, size=(4, 6)), RNG.integers(0, 40, size=(4, 6))
        vis = RNG.integers(0, 3, size=(4, 6)) > 0
        assert all(np.array_equal(a, b) for a, b in zip(_fold_ref(v, fm, fk, vis, 16, code),
                                                        mv.fold_variant(v, fm, fk, vis, 16, code)))
    w = QWeight(RNG.integers(0, 256, size=(5, 12)).astype(np.uint8), 8, 4, RNG.integers(0, 2 ** 16, size=(5, 3)),
                RNG.integers(-(2 ** 20), 2 ** 20, size=(5, 3)), 9)
    xq, zx = RNG.integers(0, 256, size=(3, 12)).astype(np.uint8), RNG.integers(0, 256, size=3)
    want, got = _di_acc_ref(xq, zx, w), mv.acc_variant(xq, zx, w)
    assert np.array_equal(want[0], got[0]) and want[1] == got[1]
