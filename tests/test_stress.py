"""The directed stress suite (``intsim stress``, intsim/stress/, docs/GOLDEN_FORMAT.md section 7)
and the committed one under golden/stress with its coverage table docs/COVERAGE.md.

What is checked: regeneration is byte-identical; the committed suite replays bit for bit on
both backends; every case's stimulus reaches its target (witnesses in Python integers,
intsim.oracle); a tie a record is built on reaches its output (the output changes under every
other tie rule it names); the coverage table is the committed suite's; every deviation of
tests/stress_deviations.py (plausible hardware shortcuts) is noticed by the suite; and the
reading side refuses malformed stress suites by name."""
import hashlib
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

from intsim import golden
from intsim.errors import IntsimError
from intsim.stress import StressError, all_cases, witness, write_suite
from intsim.stress.core import Case, Rng, arr, dy
from intsim.stress.coverage import coverage, coverage_markdown
from intsim.stress.sites import SITES
from intsim.stress.suite import rule_check
from intsim_app.cli import main as cli_main
from stress_deviations import DEVIATIONS, first_kill

ROOT = Path(__file__).resolve().parents[1]
SUITE = ROOT / "golden" / "stress"


def files_of(d: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir())}


@pytest.fixture(scope="module")
def cases():
    return all_cases()


# ------------------------------------------------------------------ the committed suite

def test_committed_suite_regenerates_byte_identical(tmp_path):
    man = golden.load_manifest(SUITE)
    run = man["run"]
    write_suite(tmp_path / "now", formats=tuple(run["formats"]), stages=run["stages"], only=run["only"])
    now, was = files_of(tmp_path / "now"), files_of(SUITE)
    if now != was:
        changed = sorted(set(now) ^ set(was) | {f for f in now if f in was and now[f] != was[f]})
        pytest.fail(f"`intsim stress` no longer reproduces golden/stress ({len(changed)} files differ, e.g. "
                    f"{changed[:5]}); if the change is intended, regenerate with `make golden`")


@pytest.mark.parametrize("backend", ["reference", "numba"])
def test_committed_suite_replays_bit_for_bit(backend):
    r = golden.replay(SUITE, None, backend=backend)
    bad = [e["name"] for e in r["ops"] if not e["identical"]]
    assert r["identical"], f"{len(bad)} stress records differ on {backend}, e.g. {bad[:5]}"
    assert len(r["ops"]) >= 250


def test_committed_suite_is_small_and_hex_complete():
    man = golden.load_manifest(SUITE)
    assert man["kind"] == "stress" and man["model"] is None and man["prompt"] is None
    assert set(man["run"]["formats"]) == {"npy", "hex"}
    assert golden.verify_files(SUITE, man) == []
    size = sum(p.stat().st_size for p in SUITE.iterdir())
    assert size < 8 * 10 ** 6, size
    kinds = {o["kind"] for o in man["ops"]}
    assert kinds == set(golden.KINDS), f"kinds without a stress record: {set(golden.KINDS) - kinds}"


def test_coverage_table_is_the_committed_suites():
    man = golden.load_manifest(SUITE)
    want = coverage_markdown(man)
    got = (ROOT / "docs" / "COVERAGE.md").read_text()
    assert got == want, "docs/COVERAGE.md is not the table of golden/stress: regenerate with `make golden`"
    cov = coverage(man)
    gaps = sorted(s for s in SITES if not cov.get(s))
    # the sites no op-level record can reach, each said so in the table (docs/COVERAGE.md "Gaps")
    assert gaps == [], gaps
    for op in man["ops"]:
        assert op["targets"].startswith("SPEC §") and op["sites"], op["name"]


# ------------------------------------------------------------------ the stimuli

def test_every_case_reaches_its_target(cases):
    assert len(cases) >= 250 and len({c.name for c in cases}) == len(cases)
    for c in cases:
        witness(c)                                   # raises StressError naming the case


def test_ties_reach_the_output(cases):
    """Each record built on ties gives another output under every other tie rule it names
    (a tie only kills a wrong tie rule if the tied value reaches the output)."""
    sensitive = [c for c in cases if c.distinct_from]
    assert len(sensitive) >= 120
    bad = {c.name: rule_check(c) for c in sensitive}
    assert not {k: v for k, v in bad.items() if v}


def test_rounding_sites_have_a_record_per_tie_rule(cases):
    for site in [s for s, (_, kind, _) in SITES.items() if kind == "rounding"]:
        rules = set()
        for c in cases:
            if site in c.sites and c.distinct_from:
                sp = c.args.get("spec")
                rules.add(c.args["rounding"] if "rounding" in c.args else sp.rounding)
        if site != "head.inv_sqrt":                  # no tie exists there (docs/SPEC.md section 12)
            assert rules == {"floor", "half_up", "half_even", "half_away"}, (site, rules)


def test_a_witness_can_fail():
    from intsim.stress.gen_requant import _ties_witness
    c = Case("t", "requant_rows", "SPEC §3", ("requant.zero",),
             {"v": arr([[254, 2, 4, 0]]), "scale_in": dy([1], [0]), "bits": 8, "symmetric": True,
              "spec": __import__("intsim.options", fromlist=["Spec"]).Spec(), "name": "v"}, _ties_witness())
    with pytest.raises(StressError, match="misses its target"):
        witness(c)


def test_rng_stream_is_fixed():
    r = Rng(1)
    assert [r.next() for _ in range(2)] == [0x910A2DEC89025CC1, 0xBEEB8DA1658EEC67]
    assert Rng(7).ints(3, -5, 5) == Rng(7).ints(3, -5, 5)


# ------------------------------------------------------------------ mutant-style deviations

def test_the_suite_notices_every_deviation():
    """Each plausible hardware shortcut of tests/stress_deviations.py changes some record's
    replayed output (or counters, or makes an op refuse its inputs)."""
    survivors = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in DEVIATIONS:
            if first_kill(SUITE, name) is None:
                survivors.append(name)
    assert survivors == []


# ------------------------------------------------------------------ the command and the format

def test_stress_command_subset_list_and_refusals(tmp_path, capsys):
    out = tmp_path / "s"
    assert cli_main(["stress", "--out", str(out), "--only", "di_exp", "requant_rows.preshift", "--format",
                     "npy,hex,txt"]) == 0
    man = golden.load_manifest(out)
    assert {o["kind"] for o in man["ops"]} == {"di_exp", "requant_rows"}
    assert all(o["name"].startswith(("di_exp.", "requant_rows.preshift.")) for o in man["ops"])
    assert cli_main(["replay", str(out)]) == 0
    assert "bit-identical" in capsys.readouterr().out
    assert cli_main(["compare", str(out), str(out)]) == 0
    capsys.readouterr()
    assert cli_main(["stress", "--out", str(out), "--only", "di_exp"]) == 2           # not empty
    assert "not empty" in capsys.readouterr().err
    assert cli_main(["stress", "--out", str(tmp_path / "x"), "--only", "no_such_op"]) == 2
    assert "--only" in capsys.readouterr().err
    assert cli_main(["stress", "--list", "--only", "isqrt"]) == 0
    assert "isqrt.squares" in capsys.readouterr().out
    assert cli_main(["replay", str(out), "model.intsim"]) == 2                          # no model for stress
    assert "without a MODEL" in capsys.readouterr().err
    assert cli_main(["replay", str(ROOT / "golden" / "darcy")]) == 2                    # a model dump needs one
    assert "needs the MODEL" in capsys.readouterr().err
    assert cli_main(["compare", str(out), str(ROOT / "golden" / "darcy")]) == 2
    assert "stress suite" in capsys.readouterr().err


def _edit(d: Path, edit) -> None:
    p = d / "manifest.json"
    man = json.loads(p.read_text())
    edit(man)
    p.write_text(json.dumps(man))


@pytest.mark.parametrize("damage,msg", [
    ("targets", "no 'targets' string"), ("sites", "no 'sites' list"), ("model", "key 'model' of a stress suite"),
    ("model_param", "names a model parameter"), ("kind", "key 'kind'"), ("call_dtype", "call_dtype"),
    ("qweight", "'qweight' needs integer"), ("qweight_part", "lacks its input")])
def test_malformed_stress_suites_are_refused_by_name(tmp_path, damage, msg):
    d = tmp_path / "s"
    write_suite(d, only=["di_matmul.out_ties.fitted.sym.half_up", "rope.drop1.half_up"])

    def edit(man):
        op = man["ops"][0]
        if damage == "targets":
            del op["targets"]
        elif damage == "sites":
            op["sites"] = "requant"
        elif damage == "model":
            man["model"] = {}
        elif damage == "model_param":
            op["params"]["a_bits"] = {"model": "layers.0.wq"}
        elif damage == "kind":
            man["kind"] = "mystery"
        elif damage == "call_dtype":
            next(t for t in man["tensors"] if t.get("call_dtype"))["call_dtype"] = "float32"
        elif damage == "qweight":
            op["params"]["w"]["qweight"]["k"] = "0"
        elif damage == "qweight_part":
            op["inputs"] = [t for t in op["inputs"] if not t.endswith(".w.b")]
    _edit(d, edit)
    with pytest.raises(IntsimError, match=msg.replace("(", r"\(")) as e:
        golden.replay(d)
    assert str(d) in str(e.value)


def test_qweight_and_call_dtype_round_trip(tmp_path):
    d = tmp_path / "s"
    man = write_suite(d, only=["di_matmul.groups.default", "rope.bound", "embed.bits16"])
    t = {x["arg"]: x for x in man["tensors"] if x["role"] == "in"}
    assert t["w.q"]["call_dtype"] == "uint8" and t["w.row_bits"]["call_dtype"] == "uint8"
    assert t["cos_q"]["call_dtype"] == "int32" and t["table_q"]["call_dtype"] == "int16"
    op = next(o for o in man["ops"] if o["kind"] == "di_matmul")
    assert op["params"]["w"] == {"qweight": {"bits": 8, "group_size": 4, "k": 11}}
    assert golden.replay(d)["identical"]
    # a DUT rounding one code the other way is found by compare, with the op and element
    dut = tmp_path / "dut"
    shutil.copytree(d, dut)
    out = next(x for x in man["tensors"] if x["op"] == "di_matmul.groups.default" and x["role"] == "out")
    f = dut / out["files"]["npy"]["path"]
    a = np.load(f)
    a.flat[3] ^= 1
    np.save(f, a)
    (dut / out["files"]["hex"]["path"]).write_bytes(golden.hex_lines(a))
    _edit(dut, lambda m: [e.__setitem__("sha256", hashlib.sha256((dut / e["path"]).read_bytes()).hexdigest())
                          for x in m["tensors"] for _, c in golden.tensor_components(x) for e in c["files"].values()])
    r = golden.compare(d, dut)
    assert not r["identical"] and r["first"]["op"] == "di_matmul.groups.default" and r["first"]["flat"] == 3


def test_refusal_record_replays_only_on_the_exact_error(tmp_path):
    """A refusal record (expect_error) is identical only when the op raises exactly that
    error; another message, or no error, is a mismatch (replay and mutant scoring)."""
    from intsim.golden.mutating import Suite
    d = tmp_path / "s"
    write_suite(d, only=["requant_rows.kmin_raise.fitted"])
    assert golden.replay(d)["identical"] and Suite(d).first_kill() is None
    _edit(d, lambda man: man["ops"][0]["expect_error"].update(message="another message"))
    assert not golden.replay(d)["identical"] and "another message" in Suite(d).first_kill()["error"]
    _edit(d, lambda man: man["ops"][0]["params"]["spec"]["spec"].update(overflow="saturate"))
    assert "returned" in golden.replay(d)["ops"][0]["error"]
    _edit(d, lambda man: man["ops"][0].update(expect_error={"type": "IntsimOverflowError"}))
    with pytest.raises(IntsimError, match="expect_error"):
        golden.replay(d)
