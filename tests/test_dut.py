"""Bare DUT dumps (docs/GOLDEN_FORMAT.md section 8): ``intsim compare GOLDEN DUT`` on the
.hex / .npy files a design writes, named after golden records, without a manifest; the
report's summary; ``intsim dut-template``; and every bad input as one error line.

The expected values come from the committed golden files (read with NumPy) and are written
here by an independent two's-complement formatter, never by the code under test."""
import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from intsim import golden
from intsim.errors import IntsimError
from intsim.golden import dut_template
from intsim_app.cli import main as cli_main

ROOT = Path(__file__).resolve().parents[1]
STRESS = ROOT / "golden" / "stress"
DARCY = ROOT / "golden" / "darcy"
THE = ROOT / "golden" / "the"
REC = "requant_rows.ties.fitted.sym.floor"            # op 33 of golden/stress: four exact ties
REC_STEM = "0033_requant_rows.ties.fitted.sym.floor.out"


def manifest(d: Path) -> dict:
    return json.loads((d / "manifest.json").read_text())


def components(t: dict):
    """(suffix, entry) of a manifest tensor's components, written out here (not golden's helper)."""
    out = [] if t["type"] == "dyadic" else [("", t)]
    if t["type"] == "qtensor":
        out.append((".zp", t["zp"]))
    if t["type"] in ("qtensor", "dyadic"):
        out += [(".m", t["scale"]["m"]), (".k", t["scale"]["k"])]
    return out


def hex_words(values, width: int) -> str:
    """Values as ``width``-bit two's-complement words, one per line."""
    return "".join(f"{int(v) & ((1 << width) - 1):0{width // 4}x}\n" for v in np.ravel(values))


def golden_values(d: Path, entry: dict) -> np.ndarray:
    return np.load(d / entry["files"]["npy"]["path"])


def requant_outputs(man: dict):
    """(file stem, component entry) of every output component of every requantizer record."""
    tensors = {t["name"]: t for t in man["tensors"]}
    for op in man["ops"]:
        if op["kind"] == "requant_rows":
            for tn in op["outputs"]:
                for suffix, e in components(tensors[tn]):
                    yield tn + suffix, e, op


def write_design(dut: Path, man: dict, gdir: Path = STRESS) -> dict:
    """A 'design' implementing only the requantizer: its outputs as bare hex files, words
    at the word width of the dtype.  Returns {file name: values}."""
    dut.mkdir(parents=True, exist_ok=True)
    written = {}
    for stem, e, _ in requant_outputs(man):
        v = golden_values(gdir, e)
        (dut / f"{stem}.hex").write_text(hex_words(v, v.dtype.itemsize * 8))
        written[f"{stem}.hex"] = v
    return written


def run(argv, capsys):
    code = cli_main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_error(argv, capsys) -> str:
    code, out, err = run(argv, capsys)
    assert code == 2, (out, err)
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("intsim: error: "), err
    assert "Traceback" not in err and out == ""
    return lines[0]


# ------------------------------------------------------------------ the done-when case

def test_a_requantizer_only_design_passes_then_fails_on_the_first_wrong_element(tmp_path, capsys):
    man = manifest(STRESS)
    dut = tmp_path / "dut"
    written = write_design(dut, man)
    n_req = sum(1 for o in man["ops"] if o["kind"] == "requant_rows" and o["outputs"])
    assert n_req == 56 and len(written) == 4 * n_req
    code, out, _ = run(["compare", STRESS, dut], capsys)
    assert code == 0, out
    assert "PASS" in out and f"{n_req} of {len(man['ops'])} golden op(s) checked" in out
    r = golden.compare(STRESS, dut)
    assert r["identical"] and r["summary"]["mode"] == "bare"
    assert r["summary"]["checked_kinds"] == {"requant_rows": n_req}
    assert len(r["summary"]["not_provided_ops"]) == len(man["ops"]) - n_req
    assert r["summary"]["elements"] == sum(v.size for v in written.values())
    # flip one word of a later record, then one of an earlier one: the earlier is named first
    names = sorted(n for n in written if n.endswith(".out.hex"))      # codes files
    late, early = names[-10], names[3]
    for name, flat in ((late, 0), (early, 1)):
        v = written[name].copy().ravel()
        v[flat] ^= 1
        (dut / name).write_text(hex_words(v, written[name].dtype.itemsize * 8))
    r = golden.compare(STRESS, dut)
    f = r["first"]
    assert not r["identical"] and f["file"] == early and f["line"] == 2 and f["flat"] == 1
    want = int(written[early].ravel()[1])
    assert (f["golden"], f["got"], f["lsb_delta"]) == (want, want ^ 1, (want ^ 1) - want)
    assert [o["mismatches"] for o in r["mismatching_ops"]] == [1, 1]
    assert r["summary"]["mismatching_elements"] == 2
    code, out, _ = run(["compare", STRESS, dut], capsys)
    assert code == 1 and f"FAIL: 2 element(s) differ, in 2 of {n_req} checked op(s)" in out
    assert f"DUT file {early} line 2" in out and f"golden {want}, DUT {want ^ 1}" in out


def test_a_tie_rounded_the_other_way_names_the_element_and_the_tie(tmp_path, capsys):
    dut = tmp_path / "dut"
    dut.mkdir()
    codes = golden_values(STRESS, next(e for s, e, _ in requant_outputs(manifest(STRESS)) if s == REC_STEM))
    assert codes.ravel().tolist() == [127, 0, 1, -1, -2, 2, -3, 0]       # floor of 254/2, 1/2, ...
    (dut / f"{REC_STEM}.hex").write_text(hex_words([127, 1, 1, -1, -2, 2, -3, 0], 8))   # 1/2 rounded up
    code, out, _ = run(["compare", STRESS, dut, "--json"], capsys)
    r = json.loads(out)
    assert code == 1 and r["first"]["index"] == [0, 1] and r["first"]["tie"] == "yes"
    assert (r["first"]["golden"], r["first"]["got"], r["first"]["lsb_delta"]) == (0, 1, 1)
    assert r["summary"]["missing_components"] == [f"{REC_STEM}.zp", f"{REC_STEM}.m", f"{REC_STEM}.k"]


def test_comparison_is_exact_in_the_top_and_the_bottom_bit(tmp_path):
    """A 64-bit value off by one LSB, and a 32-bit scale off in its top bit, are found."""
    man = manifest(STRESS)
    wide = next(t for t in man["tensors"] if t["role"] == "out" and t.get("bits") in (62, 63, 64)
                and t["type"] == "array" and np.abs(golden_values(STRESS, t)).max() > 2 ** 52)
    v = golden_values(STRESS, wide).astype(np.int64)
    dut = tmp_path / "dut"
    dut.mkdir()
    bumped = v.ravel().copy()
    i = int(np.argmax(np.abs(bumped)))
    bumped[i] += 1 if bumped[i] < 0 else -1
    (dut / f"{wide['name']}.hex").write_text(hex_words(bumped, 64))
    r = golden.compare(STRESS, dut)
    assert r["first"]["flat"] == i and abs(r["first"]["lsb_delta"]) == 1
    assert r["first"]["golden"] == int(v.ravel()[i])
    m = next(e for s, e, _ in requant_outputs(man) if s == f"{REC_STEM}.m")
    (dut / f"{wide['name']}.hex").unlink()
    (dut / f"{REC_STEM}.m.hex").write_text(hex_words(golden_values(STRESS, m) | (1 << 30), 32))
    r = golden.compare(STRESS, dut)
    assert r["first"]["component"] == "m" and r["first"]["lsb_delta"] == 1 << 30


# ------------------------------------------------------------------ naming, words, npy, subsets

def test_every_naming_form_and_word_form_reads_the_same_values(tmp_path):
    man = manifest(STRESS)
    rec = "di_matmul.narrow.out2s.half_up"              # 2-bit signed codes: -1..1
    t = next(x for x in man["tensors"] if x["op"] == rec and x["role"] == "out")
    codes = golden_values(STRESS, t)
    assert t["bits"] == 2 and t["signed"] and codes.min() < 0
    idx = t["op_index"]
    forms = {
        f"{t['name']}.hex": hex_words(codes, 2).replace("\n", "\r\n"),            # 2-bit words, CRLF
        f"{rec}.out.m.hex": "// 0x00000000\n" + hex_words(golden_values(STRESS, t["scale"]["m"]), 32),
        f"{idx:04d}.out.k.hex": "@0\n" + hex_words(golden_values(STRESS, t["scale"]["k"]), 64),  # sign-extended
        f"{idx}.out.zp.npy": None,
    }
    dut = tmp_path / "dut"
    dut.mkdir()
    for name, text in forms.items():
        if text is None:
            np.save(dut / name, golden_values(STRESS, t["zp"]).astype(np.int64).ravel())
        else:
            (dut / name).write_text(text.rstrip("\n") if name.endswith("k.hex") else text)  # no last '\n'
    (dut / "sim.log").write_text("not a record\n")
    r = golden.compare(STRESS, dut)
    assert r["identical"] and r["summary"]["files"] == 4 and r["summary"]["ignored"] == ["sim.log"]
    assert r["summary"]["missing_components"] == [] and r["summary"]["checked_ops"] == [rec]
    # the W-bit form of the same codes (fe for -2) and upper case read the same
    (dut / f"{t['name']}.hex").write_text(hex_words(codes, 8).upper())
    assert golden.compare(STRESS, dut)["identical"]
    # and a value written at a wrong width is a mismatch, not a silent reinterpretation
    (dut / f"{t['name']}.hex").write_text(hex_words(codes, 2).replace("2\n", "02\n").replace("3\n", "f\n"))
    r = golden.compare(STRESS, dut)
    assert r["identical"]                                # 3 -> f (sign-extended 4 bits) is still -1


def test_an_npy_design_and_a_subset_of_ops(tmp_path, capsys):
    man = manifest(STRESS)
    dut = tmp_path / "dut"
    dut.mkdir()
    keep = ["di_exp.tcap.half_up", "rshift_round.floor"]
    tensors = {t["name"]: t for t in man["tensors"]}
    for op in (o for o in man["ops"] if o["name"] in keep):
        for tn in op["outputs"]:
            for suffix, e in components(tensors[tn]):
                np.save(dut / f"{tn}{suffix}.npy", golden_values(STRESS, e).astype(np.int32))
    r = golden.compare(STRESS, dut)
    assert r["identical"] and sorted(r["summary"]["checked_ops"]) == sorted(keep)
    assert len(r["summary"]["not_provided_ops"]) == len(man["ops"]) - 2
    assert r["summary"]["missing_components"] == [] and len(list(dut.glob("*.npy"))) == 3   # out, out.T, out
    f = next(dut.glob("*di_exp*.out.npy"))
    a = np.load(f)
    a[2, 3] += 1
    np.save(f, a)
    code, out, _ = run(["compare", STRESS, dut], capsys)
    assert code == 1 and "at index (2, 3)" in out and "di_exp.tcap.half_up" in out
    assert re.search(r"not provided: \d+ golden op\(s\)", out) and "FAIL" in out


def test_a_model_level_dump_as_a_bare_dut(tmp_path):
    man = manifest(DARCY)
    dut = tmp_path / "dut"
    dut.mkdir()
    q = next(t for t in man["tensors"] if t["op"] == "layers.0.attn.q_proj" and t["role"] == "out")
    logits = next(t for t in man["tensors"] if t["op"] == "logits" and t["role"] == "out")
    codes = golden_values(DARCY, q)
    assert q["bits"] == 16
    (dut / "layers.0.attn.q_proj.out.hex").write_text(hex_words(codes, 16))
    np.save(dut / f"{logits['op_index']}.out.npy", golden_values(DARCY, logits))
    r = golden.compare(DARCY, dut)
    assert r["identical"] and r["summary"]["checked_ops"] == ["layers.0.attn.q_proj", "logits"]
    v = codes.ravel().copy()
    v[5] = v[5] + 1 if v[5] < 2 ** 15 - 1 else v[5] - 1
    (dut / "layers.0.attn.q_proj.out.hex").write_text(hex_words(v, 16))
    r = golden.compare(DARCY, dut)
    assert r["first"]["op"] == "layers.0.attn.q_proj" and r["first"]["flat"] == 5
    assert r["first"]["tie"].split()[0] in ("yes", "no")          # evaluated from the .acc stage


# ------------------------------------------------------------------ bad input

def _bad(kind: str, dut: Path) -> tuple[list, str]:
    """Damage ``dut`` (a correct one-record design) as ``kind``; (compare argv, message)."""
    f = dut / f"{REC_STEM}.hex"
    lines = f.read_text().splitlines()
    put = lambda i, w: f.write_text("\n".join(lines[:i] + [w] + lines[i + 1:]) + "\n")   # noqa: E731
    if kind == "too_few":
        f.write_text("\n".join(lines[:5]) + "\n")
        return [STRESS, dut], f"{f}: ends after line 5, 5 word(s): tensor {REC_STEM} has 8 element(s)"
    if kind == "too_many":
        f.write_text("\n".join(lines + ["00"]) + "\n")
        return [STRESS, dut], f"{f} line 9: word 9 is one too many"
    if kind == "too_wide":
        put(2, "1ff")
        return [STRESS, dut], f"{f} line 3: word 1ff is too wide"
    if kind == "not_hex":
        put(2, "g1")
        return [STRESS, dut], f"{f} line 3: 'g1' is not a hex word"
    if kind == "0x":
        put(3, "0x1f")
        return [STRESS, dut], f"{f} line 4: '0x1f' is not a hex word; a word is hex digits only: no 0x"
    if kind == "undriven":
        put(0, "xx")
        return [STRESS, dut], f"{f} line 1: 'xx' is not a hex word (x/z digits"
    if kind == "address_jump":
        f.write_text("@4\n" + "\n".join(lines) + "\n")
        return [STRESS, dut], f"{f} line 1: address @4 is not the next word (0)"
    if kind == "too_many_digits":
        put(0, "0" * 17)
        return [STRESS, dut], f"{f} line 1: {'0' * 17}... has 17 hex digits"
    n = dut / "33.out.npy"
    f.unlink()
    if kind == "npy_float":
        np.save(n, np.zeros((1, 8), dtype=np.float32))
        return [STRESS, dut], f"{n}: holds dtype float32, not integers"
    if kind == "npy_shape":
        np.save(n, np.zeros((2, 8), dtype=np.int8))
        return [STRESS, dut], f"{n}: shape (2, 8), tensor {REC_STEM} has shape (1, 8)"
    if kind == "npy_range":
        np.save(n, np.array([[0, 0, 0, 0, 128, 0, 0, 0]], dtype=np.int16))
        return [STRESS, dut], f"{n}: element 4 (flat) is 128, outside"
    if kind == "npy_garbage":
        n.write_bytes(b"\x93NUMPY garbage")
        return [STRESS, dut], f"{n}: not a readable .npy file"
    if kind == "empty":
        return [STRESS, dut], f"{dut}: no manifest.json and no .hex or .npy file"
    if kind == "unknown":
        (dut / "requant_rows.no_such_case.out.hex").write_text("00\n")
        return [STRESS, dut], f"{dut}: none of its 1 .hex/.npy file(s) names a record of {STRESS}"
    if kind == "some_unknown":
        (dut / "33.out.hex").write_text(hex_words([127, 0, 1, -1, -2, 2, -3, 0], 8))
        (dut / "9999.out.hex").write_text("00\n")
        return [STRESS, dut], f"mixes files of {STRESS} with 1 file(s) naming records {STRESS} lacks (9999.out.hex)"
    if kind == "duplicate":
        for name in ("33.out.hex", f"{REC}.out.hex"):
            (dut / name).write_text(hex_words([127, 0, 1, -1, -2, 2, -3, 0], 8))
        return [STRESS, dut], f"33.out.hex and {REC}.out.hex both give tensor {REC_STEM} (hex)"
    if kind == "other_numbering":          # golden/darcy (with stages) numbers q_proj 5, golden/the 3
        src = next(DARCY.glob("0005_layers.0.attn.q_proj.out.hex"))
        (dut / src.name).write_bytes(src.read_bytes())
        return [THE, dut], "0005_layers.0.attn.q_proj.out.hex: record 'layers.0.attn.q_proj' is op 3 of"
    if kind == "other_suite_files":        # the stress design's files against a model dump
        (dut / f"{REC_STEM}.hex").write_text("00\n" * 8)
        return [DARCY, dut], f"names a record of {DARCY}"
    if kind == "other_template":
        (dut / "33.out.hex").write_text(hex_words([127, 0, 1, -1, -2, 2, -3, 0], 8))
        dut_template.write_template(THE, ["0"], dut / "tpl")
        (dut / "dut_template.json").write_bytes((dut / "tpl" / "dut_template.json").read_bytes())
        return [STRESS, dut], f"{dut}: mixes two suites: its dut_template.json was written for the golden dump"
    if kind == "pack32":
        (dut / f"{REC_STEM}.pack32.hex").write_text("00000000\n")
        return [STRESS, dut], "the packed layout is not read from a DUT dump"
    if kind == "other_manifest":           # a DUT folder with the manifest of another suite
        return [STRESS, THE], "one dump is a stress suite and the other a model-level dump"
    if kind == "golden_without_manifest":
        (dut / "33.out.hex").write_text("00\n")
        return [dut, STRESS], (f"{dut}: no manifest.json: not a dump written by 'intsim golden' or 'intsim "
                               f"stress'")
    raise AssertionError(kind)


BAD = ["too_few", "too_many", "too_wide", "not_hex", "0x", "undriven", "address_jump", "too_many_digits",
       "npy_float", "npy_shape", "npy_range", "npy_garbage", "empty", "unknown", "some_unknown", "duplicate",
       "other_numbering", "other_suite_files", "other_template", "pack32", "other_manifest",
       "golden_without_manifest"]


@pytest.mark.parametrize("kind", BAD)
def test_bad_dut_input_is_one_error_line_naming_file_and_line(tmp_path, capsys, kind):
    dut = tmp_path / "dut"
    dut.mkdir()
    (dut / f"{REC_STEM}.hex").write_text(hex_words([127, 0, 1, -1, -2, 2, -3, 0], 8))
    assert golden.compare(STRESS, dut)["identical"]           # the undamaged design passes
    argv, msg = _bad(kind, dut)
    line = one_error(["compare", *argv], capsys)
    assert msg in line, line


def test_the_golden_first_hint_and_the_stress_advice(tmp_path):
    with pytest.raises(IntsimError, match=r"a device's bare dump goes second") as e:
        golden.compare(tmp_path, STRESS)
    assert "intsim stress --out DIR" in str(e.value)


def test_a_word_too_wide_is_refused_at_each_width():
    from intsim.golden.dut import Slot, _decode
    u = np.array([0x7, 0x8, 0xf, 0x10, 0xff8, 0xff7, 0xfffffffffffffff8], dtype=np.uint64)
    d = np.array([1, 1, 1, 2, 3, 3, 16], dtype=np.int64)
    val, bad = _decode(u, d, 4, True)                  # 4-bit signed: -8..7
    assert val[~bad].tolist() == [7, -8, -1, -8, -8] and bad.tolist() == [0, 0, 0, 1, 0, 1, 0]
    val, bad = _decode(u, d, 4, False)                 # 4-bit unsigned: 0..15
    assert bad.tolist() == [0, 0, 0, 1, 1, 1, 1] and val[:3].tolist() == [7, 8, 15]
    val, bad = _decode(np.array([2 ** 63, 2 ** 64 - 1], dtype=np.uint64), np.array([16, 16]), 64, True)
    assert val.tolist() == [-2 ** 63, -1] and not bad.any()
    assert Slot({"name": "0001_a.b.out", "op": "a.b"}, "m", {"shape": [1], "dtype": "int32"}).names() == \
        ["0001_a.b.out.m", "a.b.out.m", "0001.out.m", "1.out.m"]


# ------------------------------------------------------------------ dut-template

def test_dut_template_lists_what_a_design_writes(tmp_path, capsys):
    man = manifest(STRESS)
    out = tmp_path / "tpl"
    code, printed, _ = run(["dut-template", STRESS, "--ops", "requant_rows", "--out", out, "--values"], capsys)
    assert code == 0 and "56 record(s), 224 file(s)" in printed
    tpl = json.loads((out / "dut_template.json").read_text())
    want = {f"{s}.hex": (e["shape"], e["bits"], e["signed"], np.dtype(e["dtype"]).itemsize * 8)
            for s, e, op in requant_outputs(man) if "expect_error" not in op}
    got = {f["file"]: (f["shape"], f["bits"], f["signed"], f["word_bits"]) for f in tpl["files"]}
    assert got == want
    assert sorted(tpl["refusal_records"]) == ["requant_rows.kmin_raise.fitted", "requant_rows.kmin_raise.range"]
    rec = next(r for r in tpl["records"] if r["name"] == REC)
    assert [i["golden_file"] for i in rec["inputs"]] == [f"0033_{REC}.in.v.hex", f"0033_{REC}.in.scale_in.m.hex",
                                                         f"0033_{REC}.in.scale_in.k.hex"]
    readme = (out / "README.md").read_text()
    assert f"`{REC_STEM}.m.hex` | (1,) | 32 | yes | 32 |" in readme
    # the golden's values as a DUT dump: the same words as the golden's own hex files
    for name in want:
        assert (out / "values" / name).read_bytes() == (STRESS / name).read_bytes()
    assert run(["compare", STRESS, out / "values"], capsys)[0] == 0
    # the template folder itself is a valid (empty of records) place for a design's files
    (out / "33.out.hex").write_text(hex_words([127, 0, 1, -1, -2, 2, -3, 0], 8))
    r = golden.compare(STRESS, out)
    assert r["identical"] and set(r["summary"]["ignored"]) == {"README.md", "dut_template.json", "values"}


def test_dut_template_selection_list_and_refusals(tmp_path, capsys):
    code, out, _ = run(["dut-template", STRESS, "--list", "--ops", "33,di_exp.tcap", "--ops", "isqrt"], capsys)
    lines = out.splitlines()
    assert code == 0 and [ln.split()[1] for ln in lines] == ["isqrt.squares", REC, "di_exp.tcap.floor",
                                                             "di_exp.tcap.half_up", "di_exp.tcap.half_even",
                                                             "di_exp.tcap.half_away"]        # golden order
    assert "out[6, 8] s32, T[6] s32" in lines[2]
    assert "--ops: 'no_such'" in one_error(["dut-template", STRESS, "--ops", "no_such", "--out", tmp_path / "x"],
                                           capsys)
    assert not (tmp_path / "x").exists()
    assert "have no outputs" in one_error(["dut-template", STRESS, "--ops", "requant_rows.kmin_raise",
                                           "--out", tmp_path / "x"], capsys)
    assert "give --out DIR" in one_error(["dut-template", STRESS], capsys)


def test_dut_template_is_written_atomically_and_never_over_other_files(tmp_path, capsys, monkeypatch):
    out = tmp_path / "tpl"
    assert run(["dut-template", THE, "--ops", "logits", "--out", out], capsys)[0] == 0
    before = (out / "dut_template.json").read_bytes()
    assert "use --force" in one_error(["dut-template", STRESS, "--ops", "33", "--out", out], capsys)
    assert (out / "dut_template.json").read_bytes() == before
    # an interrupted write leaves the old template whole and no temporary folder
    monkeypatch.setattr(dut_template, "readme", lambda *a: (_ for _ in ()).throw(IntsimError("disk full")))
    assert "disk full" in one_error(["dut-template", STRESS, "--ops", "33", "--out", out, "--force"], capsys)
    monkeypatch.undo()
    assert (out / "dut_template.json").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tpl"]
    assert run(["dut-template", STRESS, "--ops", "33", "--out", out, "--force"], capsys)[0] == 0
    assert json.loads((out / "dut_template.json").read_text())["golden"] == str(STRESS)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tpl"]
    # a folder holding a design's files is never replaced
    (out / "33.out.hex").write_text("7f\n")
    assert "not a DUT template" in one_error(["dut-template", STRESS, "--ops", "33", "--out", out, "--force"],
                                             capsys)
    assert (out / "33.out.hex").read_text() == "7f\n"


# ------------------------------------------------------------------ the documented example

def _doc_blocks() -> list[str]:
    text = (ROOT / "docs" / "GOLDEN_FORMAT.md").read_text()
    section = text[text.index("### 8.5 "):]
    return re.findall(r"```sh\n(.*?)```", section, re.S)


def test_the_worked_example_in_golden_format_runs_as_written(tmp_path):
    """docs/GOLDEN_FORMAT.md section 8.5, run in a scratch folder that sees the repository's
    .venv and golden/ under the same relative names."""
    for name in (".venv", "golden"):
        (tmp_path / name).symlink_to(ROOT / name)
    blocks = _doc_blocks()
    assert len(blocks) == 2
    first = subprocess.run(["bash", "-e", "-c", blocks[0]], cwd=tmp_path, capture_output=True, text=True,
                           timeout=300)
    assert first.returncode == 0, first.stderr
    assert "PASS: every compared element identical (11)" in first.stdout
    assert (tmp_path / "out" / "dut-example" / "template" / "README.md").is_file()
    second = subprocess.run(["bash", "-e", "-c", blocks[1]], cwd=tmp_path, capture_output=True, text=True,
                            timeout=300)
    assert second.returncode == 0, second.stderr
    assert "at index (0, 1)" in second.stdout and "golden 0, DUT 1, delta +1 LSB" in second.stdout
    assert "rounding tie: yes" in second.stdout and second.stdout.rstrip().endswith("exit 1")
