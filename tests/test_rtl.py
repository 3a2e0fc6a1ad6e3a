"""The RTL check: rtl/di_exp.v under Icarus Verilog + cocotb against golden hex vectors.

The right module must pass and the deliberately wrong one (rtl/di_exp_wrong.v, T not
rounded) must fail naming the first wrong element.  Skipped, with the reason, only when
iverilog or cocotb is missing (``make rtl-test`` installs both).
"""
import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
RTL = ROOT / "rtl"
sys.path.insert(0, str(RTL))

needs_sim = pytest.mark.skipif(
    shutil.which("iverilog") is None or importlib.util.find_spec("cocotb") is None,
    reason="RTL simulation needs iverilog (apt-get install -y iverilog) and cocotb "
           "(pip install cocotb==2.1.0); `make rtl-test` installs both")


def test_vector_writer_follows_the_hex_contract():
    from make_vectors import hex_text, word_bits
    # docs/GOLDEN_FORMAT.md 2.1's worked example and its width table
    assert hex_text(np.array([[-1, 5], [-127, 0]]), 8, True) == "ff\n05\n81\n00\n"
    assert hex_text(np.array([-2]), 16, True) == "fffe\n"
    assert hex_text(np.array([40000]), 16, False) == "9c40\n"
    assert hex_text(np.array([-1]), 63, True) == "ffffffffffffffff\n"
    assert [word_bits(b) for b in (1, 8, 9, 17, 33, 64)] == [8, 8, 16, 32, 64, 64]


@pytest.fixture(scope="module")
def vectors(tmp_path_factory):
    out = tmp_path_factory.mktemp("rtl") / "vectors"
    subprocess.run([sys.executable, str(RTL / "make_vectors.py"), str(out)], check=True,
                   capture_output=True)
    return out


@needs_sim
def test_hex_reader_refuses_files_that_break_the_contract(vectors, tmp_path):
    from test_di_exp import VectorError, load_cases, read_hex
    cases = load_cases([vectors / "edges"])
    assert [c[1] for c in cases] == ["edges.floor", "edges.half_up", "edges.half_even", "edges.half_away"]
    d = tmp_path / "bad"
    shutil.copytree(vectors / "edges", d)
    comp = {"shape": [2], "word_bits": 8, "signed": True,
            "files": {"hex": {"path": "x.hex", "sha256": None}}}
    import hashlib
    for text, why in (("FF\n05\n", "lowercase"), ("ff\n5\n", "lowercase"), ("ff\n05", "lines"),
                      ("ff\n05\n00\n", "lines")):
        (d / "x.hex").write_text(text)
        comp["files"]["hex"]["sha256"] = hashlib.sha256(text.encode()).hexdigest()
        with pytest.raises(VectorError, match=why):
            read_hex(d, comp)
    (d / "x.hex").write_text("ff\n05\n")
    comp["files"]["hex"]["sha256"] = hashlib.sha256(b"ff\n05\n").hexdigest()
    assert read_hex(d, comp) == [-1, 5]
    comp["signed"] = False
    assert read_hex(d, comp) == [255, 5]
    comp["files"]["hex"]["sha256"] = "0" * 64
    with pytest.raises(VectorError, match="sha256"):
        read_hex(d, comp)


def _run(variant, vectors):
    return subprocess.run([sys.executable, str(RTL / "run.py"), "--variant", variant, "--vectors",
                           str(vectors), "--build", str(vectors.parent / "build")],
                          capture_output=True, text=True, cwd=ROOT)


@needs_sim
def test_rtl_di_exp_passes_the_golden_vectors(vectors):
    r = _run("right", vectors)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "PASS: di_exp.v" in r.stdout
    assert "golden-default/layers.0.attn.softmax.exp" in r.stdout     # intsim golden's stage
    assert "edges/edges.half_even" in r.stdout


@needs_sim
def test_rtl_wrong_variant_fails_naming_the_first_wrong_element(vectors):
    r = _run("wrong", vectors)
    assert r.returncode == 1, r.stdout + r.stderr
    line = next((s for s in r.stdout.splitlines() if s.startswith("FAIL: di_exp_wrong.v")), r.stdout)
    assert "first wrong element:" in line and "index (" in line
    assert "expected out=" in line and "got out=" in line
    # the named element really is wrong in the expected direction: T floored, one below
    exp_t = int(line.split("expected out=")[1].split("T=")[1].split(",")[0])
    got_t = int(line.split("got out=")[1].split("T=")[1])
    assert got_t == exp_t - 1
