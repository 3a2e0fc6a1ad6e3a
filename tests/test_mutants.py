"""The mutant registry (intsim.mutants) and its score on golden suites (``intsim mutants``,
intsim.golden.mutating; docs/MUTANTS.md).

* the registry: at least 30 mutants, unique names, each naming a SPEC step that exists;
* every mutant is real: its witness, an op call on a small input, gives another output
  under the mutant than the reference's (no equivalent no-op can hide in the registry);
* every variant in intsim.mutant_variants with its knobs at their defaults IS its
  reference (on random inputs and on every record of the committed suites), so a
  mutant deviates in its one step only;
* the reference is unchanged after all mutants ran (every swapped name restored);
* the command on the committed golden/ suites: its kills are real (the named record
  mismatches when ``intsim replay`` replays it under the mutant, and only then), and the
  score written in docs/MUTANTS.md is the score it reports.
"""
import contextlib
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from intsim import mutant_variants as mv
from intsim import mutants as mu
from intsim.attention import _fold_ref
from intsim.exp import _exp_apply_ref, _exp_unit_ref
from intsim.fixedpoint import ROUND_CODE, _fit_ref
from intsim.golden import replay
from intsim.golden.dump import read_component, tensor_components
from intsim.golden.mutating import Suite
from intsim.golden.values import split_result, value_comps
from intsim.llama import forward
from intsim.matmul import QWeight, _di_acc_ref
from intsim.modelfile import load_model, model_hash
from intsim.options import Spec
from intsim.norm import _di_norm_ref, fixed_preshift, sqrt_c_const
from intsim.requant import _requant_ref
from intsim.residual import _align_ref
from intsim.rope import _rope_ref
from intsim.softmax import _center_clip_ref, _exp_norm_ref
from intsim_app.cli import main as cli_main
from model_helpers import Calls

ROOT = Path(__file__).resolve().parents[1]
SUITES = [ROOT / "golden" / "darcy", ROOT / "golden" / "the", ROOT / "golden" / "head8", ROOT / "golden" / "pv8",
          ROOT / "golden" / "stress"]
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


def test_group_activation_variants_are_their_references():
    """SPEC 4.8: the group codes and the group fold, variants at their defaults."""
    from intsim.matmul import _di_acc_grp_ref, _group_codes_ref, fold_layout
    for rule in ("floor", "half_up", "half_even", "half_away"):
        spec = Spec(rounding=rule, overflow="saturate")
        for Ga in (1, 3, 4, 16):
            v = RNG.integers(-(2 ** 40), 2 ** 40, size=(4, 16)) >> RNG.integers(0, 40, size=(4, 1))
            v[1, 3] = 2 ** 61 - 1
            v[2] = 0
            m_in, k_in = RNG.integers(0, 2 ** 28, size=4), RNG.integers(-60, 60, size=4)
            want = _group_codes_ref(v, m_in, k_in, 4, Ga, spec)
            got = mv.group_codes_variant(v, m_in, k_in, 4, Ga, spec)
            assert all(np.array_equal(a, b) for a, b in zip(want, got))
            w = QWeight(RNG.integers(0, 16, size=(5, 16)).astype(np.uint8), 4, 4 if Ga in (1, 4, 16) else 16,
                        RNG.integers(0, 2 ** 16, size=(5, 4 if Ga in (1, 4, 16) else 1)),
                        RNG.integers(-(2 ** 20), 2 ** 20, size=(5, 4 if Ga in (1, 4, 16) else 1)), 3)
            Gf = fold_layout(16, w.group_size, Ga)
            q, zg, eg = want[0].astype(np.uint8), want[1], want[2]
            a, b = _di_acc_grp_ref(q, zg, eg, w, Ga, Gf), mv.group_fold_variant(q, zg, eg, w, Ga, Gf)
            assert np.array_equal(a[0], b[0]) and a[1] == b[1]


def test_hadamard_variant_is_its_reference():
    """SPEC 7.6: the rotation's butterflies and pre-shift, the variant at its defaults."""
    from intsim.hadamard import _fwht_ref
    for code in CODES:
        for b, C in ((2, 6), (4, 12), (16, 48), (64, 64)):
            for mag in (3, 40, 58, 61):
                y = RNG.integers(-(2 ** mag) + 1, 2 ** mag, size=(5, C), dtype=np.int64)
                y[1] = 0
                want, got = _fwht_ref(y, b, code), mv.fwht_variant(y, b, code)
                assert np.array_equal(want[0], got[0]) and np.array_equal(want[1], got[1])


def test_two_step_variant_is_its_reference():
    """SPEC 4.9: the two-step fold, the variant at its defaults, on inner sums of int64 size."""
    from intsim.matmul import _fold_two_step_ref
    for T, N, ng in ((1, 1, 1), (3, 5, 4), (2, 7, 9)):
        for mag in (8, 30, 40):
            acc = RNG.integers(-(2 ** mag), 2 ** mag, size=(T, N, ng), dtype=np.int64)
            xs = RNG.integers(-(2 ** 12), 2 ** 12, size=(T, ng), dtype=np.int64)
            c = RNG.integers(0, 2 ** 16, size=N, dtype=np.int64)
            u = RNG.integers(0, 256, size=(N, ng), dtype=np.int64)
            beta = -u * RNG.integers(0, 16, size=(N, ng), dtype=np.int64)
            want, got = _fold_two_step_ref(acc, xs, c, u, beta), mv.two_step_variant(acc, xs, c, u, beta)
            assert np.array_equal(want[0], got[0]) and np.array_equal(want[1], got[1])


def test_head_width_variant_is_the_graphs_choice():
    from intsim.llama import head_in_bits
    from intsim.model import Widths
    for a in (2, 4, 6, 8):
        for h in (None, 2, 5, 8):
            w = Widths(a_bits=a, head_a_bits=h)
            assert mv.head_in_bits_variant(w) == head_in_bits(w) == (a if h is None else h)
            assert mv.head_in_bits_variant(w, use_a=True) == a


def test_pv_width_variant_is_the_graphs_choice():
    from intsim.llama import pv_in_bits
    from intsim.model import Widths
    for a in (2, 4, 6, 8):
        for p in (None, a, 8, 15):
            w = Widths(a_bits=a, pv_bits=p)
            assert mv.pv_in_bits_variant(w) == pv_in_bits(w) == (a if p is None else p)
            assert mv.pv_in_bits_variant(w, use_a=True) == a


# ------------------------------------------------------------------ the committed suites

@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    """The committed small model converted by the current converter, as `make golden` does."""
    out = tmp_path_factory.mktemp("small") / "small-w8a8.intsim"
    r = subprocess.run([sys.executable, "-m", "intsim_app", "convert", "models/small", "--out", str(out)],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return out


@pytest.fixture(scope="module")
def head_model(tmp_path_factory):
    """The small model at A = 4 with an 8-bit LM head input, as `make golden` converts it
    for golden/head8."""
    out = tmp_path_factory.mktemp("small") / "small-a4-head8.intsim"
    r = subprocess.run([sys.executable, "-m", "intsim_app", "convert", "models/small", "--out", str(out),
                        "--abits", "4", "--head-abits", "8"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return out


@pytest.fixture(scope="module")
def pv_model(tmp_path_factory):
    """The small model at A = 4 with 8-bit probabilities into PV, as `make golden` converts
    it for golden/pv8."""
    out = tmp_path_factory.mktemp("small") / "small-a4-pv8.intsim"
    r = subprocess.run([sys.executable, "-m", "intsim_app", "convert", "models/small", "--out", str(out),
                        "--abits", "4", "--pv-bits", "8"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return out


def _models(*paths) -> list:
    return [(load_model(p), model_hash(p)) for p in paths]


@pytest.fixture(scope="module")
def report(small_model, head_model, pv_model):
    """``intsim mutants golden/darcy golden/the golden/head8 golden/pv8 golden/stress --model ...
    --json`` on the committed suites."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = cli_main(["mutants", *map(str, SUITES), "--model", str(small_model), "--model", str(head_model),
                       "--model", str(pv_model), "--json"])
    r = json.loads(out.getvalue())
    assert rc == (0 if r["killed"] == r["total"] else 1)
    return r


def test_variants_at_their_defaults_replay_the_committed_suites(small_model, head_model, pv_model):
    suites = [Suite(d, _models(small_model, head_model, pv_model)) for d in SUITES]
    nulls = [("intsim.fixedpoint", "_fit_ref", mv.fit_variant, True), ("intsim.requant", "_requant_ref", mv.requant_variant, False),
             ("intsim.exp", "_exp_unit_ref", mv.exp_unit_variant, True), ("intsim.exp", "_exp_apply_ref", mv.exp_apply_variant, True),
             ("intsim.softmax", "_center_clip_ref", mv.center_clip_variant, False),
             ("intsim.softmax", "_exp_norm_ref", mv.exp_norm_variant, False), ("intsim.norm", "_di_norm_ref", mv.norm_variant, False),
             ("intsim.rope", "_rope_ref", mv.rope_variant, False), ("intsim.residual", "_align_ref", mv.align_variant, False),
             ("intsim.attention", "_fold_ref", mv.fold_variant, False), ("intsim.matmul", "_di_acc_ref", mv.acc_variant, False),
             ("intsim.matmul", "_group_codes_ref", mv.group_codes_variant, False),
             ("intsim.matmul", "_di_acc_grp_ref", mv.group_fold_variant, False),
             ("intsim.hadamard", "_fwht_ref", mv.fwht_variant, False)]
    for module, attr, fn, everywhere in nulls:
        null = mu.Mutant("null", "§1", "no change", mu._variant(module, attr, fn, everywhere), None)
        with null.apply():
            assert [s.first_kill() for s in suites] == [None] * len(suites), f"{fn.__name__} at its defaults"
    assert sum(s.graph is not None for s in suites) == 4          # darcy, the, head8, pv8: whole graphs
    for attr, fn in (("head_in_bits", mv.head_in_bits_variant), ("pv_in_bits", mv.pv_in_bits_variant)):
        null = mu.Mutant("null", "§13.1", "no change", mu._variant("intsim.llama", attr, fn), None, graph=True)
        with null.apply():
            assert [s.first_kill(graph=True) for s in suites] == [None] * len(suites), attr


def _graph_output(model, ids, op: dict, arg: str, comp: str) -> np.ndarray:
    """One component of one op's output in a whole run of the graph (reference backend)."""
    res = Calls()
    forward(model, ids, backend="reference", tap=res)
    outs, _ = split_result(op["kind"], res.by_name[op["name"]].result)
    return value_comps(dict(outs)[arg])[0][comp]


def test_the_command_reports_every_mutant_with_real_kills(report, small_model, head_model, pv_model):
    assert [r["name"] for r in report["mutants"]] == NAMES
    assert report["killed"] == sum(r["killed"] for r in report["mutants"]) and report["total"] == len(NAMES)
    models = {sha: (m, sha) for m, sha in _models(small_model, head_model, pv_model)}
    for row in report["mutants"]:
        k = row["kill"]
        assert row["killed"] == (k is not None)
        if k is None:
            assert set(row["kills"].values()) == {None}
            continue
        assert k == next(v for v in row["kills"].values() if v is not None)
        m = next(x for x in mu.REGISTRY if x.name == row["name"])
        gdir = Path(k["suite"])
        man = json.loads((gdir / "manifest.json").read_text())
        op = [o for o in man["ops"] if o["index"] == k["op_index"]]
        mdl = (None, None) if gdir.name == "stress" else models[man["model"]["file_sha256"]]  # stress: no model
        assert replay(gdir, mdl[0], model_sha256=mdl[1], ops=op, backend="reference")["identical"]
        with m.apply():
            r = replay(gdir, mdl[0], model_sha256=mdl[1], ops=op, backend="reference")
        if k["kind"] == "graph":
            # a graph mutant: the record replays unchanged with its dumped arguments, and the
            # whole graph from the dumped token ids gives that op another output under the mutant
            assert m.graph and r["identical"], f"{row['name']}: a graph kill whose record mismatches"
            t = next(t for t in man["tensors"] if t["name"] == k["tensor"])
            comp = "" if k["component"] == "values" else k["component"]
            want = read_component(gdir, dict(tensor_components(t))[comp], k["tensor"])
            ids = np.array(man["prompt"]["tokens"])
            assert np.array_equal(_graph_output(mdl[0], ids, op[0], t["arg"], comp), want)
            with m.apply():
                got = _graph_output(mdl[0], ids, op[0], t["arg"], comp)
            assert got[tuple(k["index"])] == k["got"] != want[tuple(k["index"])] == k["golden"]
            continue
        assert not r["identical"], f"{row['name']}: {k['op']} does not mismatch under the mutant"
        if "tensor" in k and "error" not in k:
            t = next(t for t in r["ops"][0]["tensors"] if t["name"] == k["tensor"])
            assert not t["identical"] and t["first"]["index"] == k["index"]


def test_the_committed_suites_kill_every_mutant(report):
    """The regression set's promise (issue 12): no deviation in the registry passes it."""
    survivors = [r["name"] for r in report["mutants"] if not r["killed"]]
    assert survivors == [] and report["killed"] == report["total"] == len(NAMES)


def test_a_killed_mutant_is_killed_by_the_record_named(report, small_model):
    """One kill checked by hand: the codes flooring instead of rounding half up change the
    very first requantization, q_proj's input codes (op 3 of golden/darcy)."""
    row = next(r for r in report["mutants"] if r["name"] == "requant.codes_floor")
    k = row["kill"]
    assert (Path(k["suite"]).name, k["op_index"], k["op"]) == ("darcy", 3, "layers.0.attn.q_proj.x_q")
    assert k["golden"] - k["got"] == 1               # floor is one below half_up, never above


def test_the_documented_score_is_todays(report):
    doc = (ROOT / "docs" / "MUTANTS.md").read_text()
    assert f"killed {report['killed']} of {report['total']}" in doc
    for row in report["mutants"]:
        line = next((ln for ln in doc.splitlines() if ln.startswith(f"| `{row['name']}` ")), None)
        assert line is not None, f"docs/MUTANTS.md does not list {row['name']}"
        assert ("| killed |" in line) == row["killed"], f"docs/MUTANTS.md: {row['name']}"


# ------------------------------------------------------------------ the command line

def test_list_only_and_errors(capsys, small_model):
    assert cli_main(["mutants", "--list"]) == 0
    out = capsys.readouterr().out
    assert f"{len(NAMES)} mutant(s)" in out and all(n in out for n in NAMES)
    assert cli_main(["mutants", str(SUITES[1])]) == 2
    err = capsys.readouterr().err
    assert err.startswith("intsim: error:") and "--model" in err
    assert cli_main(["mutants"]) == 2
    assert "SUITE_DIR" in capsys.readouterr().err
    assert cli_main(["mutants", str(SUITES[1]), "--model", str(small_model), "--only", "nope"]) == 2
    assert "no mutant matches" in capsys.readouterr().err
    assert cli_main(["mutants", str(SUITES[0]), "--model", str(small_model), "--only", "rope.inter*",
                     "rope.reversed"]) == 0                 # every selected mutant killed: exit 0
    out = capsys.readouterr().out
    assert [ln.split()[:3] for ln in out.splitlines()[1:3]] == [["rope.interleaved", "§9.1", "layout"],
                                                                 ["rope.reversed", "§9.2", "killed"]]
    assert out.rstrip().splitlines()[-1].startswith("killed 2 of 2 (100 %) with ")
    assert cli_main(["mutants", str(SUITES[0]), "--model", str(small_model), "--only", "rope.*"]) == 1
    assert "killed 2 of 4 (50 %)" in capsys.readouterr().out   # survivors: exit 1


def test_a_folder_of_dumps_and_several_models(capsys, small_model, tmp_path):
    """``intsim mutants golden/``: every dump below, each with the model its manifest names;
    a dump whose model is not among those given is refused by name."""
    from intsim.golden.mutating import expand_suites
    dumps = expand_suites([ROOT / "golden"])
    assert [d.name for d in dumps] == sorted(p.parent.name for p in (ROOT / "golden").glob("*/manifest.json"))
    assert {"darcy", "the", "stress", "paper", "long"} <= {d.name for d in dumps}
    assert cli_main(["mutants", str(ROOT / "golden"), "--model", str(small_model),
                     "--only", "rope.reversed"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("intsim: error:") and "made from out/small-" in err and "none of the 1 given" in err
    (tmp_path / "empty").mkdir()
    assert cli_main(["mutants", str(tmp_path / "empty")]) == 2
    assert "nor a folder of dumps" in capsys.readouterr().err
