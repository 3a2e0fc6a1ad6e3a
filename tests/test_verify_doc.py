"""docs/VERIFY.md's testbench runs as copied: its code blocks marked ``file: NAME`` are
written to ``tb/`` of a temporary folder (whose ``.venv`` is the project's), the commands
of its run block are run as written under Icarus Verilog and must PASS, then the
shortcut the document describes is applied and the failure lines it quotes must appear.
Skipped, with the reason, when iverilog or cocotb is missing (``make rtl-test``, which CI
runs first, installs both)."""
import os
import re
import subprocess
from pathlib import Path

import pytest

from intsim.cocotb import available

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "VERIFY.md"


def blocks(text: str) -> list:
    """(language, body) of every fenced code block."""
    return [(m.group(1), m.group(2)) for m in re.finditer(r"^```(\w*)\n(.*?)^```$", text, re.M | re.S)]


def files(text: str) -> dict:
    out = {}
    for _, body in blocks(text):
        m = re.match(r"(?://|#) file: (\S+)\n", body)
        if m:
            out[m.group(1)] = body
    return out


def test_the_document_holds_a_complete_testbench():
    text = DOC.read_text()
    assert set(files(text)) == {"rshift_round.v", "test_rshift_round.py", "run_tb.py"}
    run = [b for lang, b in blocks(text) if lang == "sh" and "tb/run_tb.py icarus" in b]
    assert len(run) == 1 and "intsim stress --only rshift_round --out tb/stress" in run[0]
    assert "up = q[0];" in files(text)["rshift_round.v"]


def _run(tmp: Path, script: str):
    """As a shell would: without pytest's PYTEST_CURRENT_TEST, which makes cocotb's runner
    exit on a failed test instead of returning its results file."""
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}
    return subprocess.run(["bash", "-ec", script], cwd=tmp, capture_output=True, text=True, timeout=600, env=env)


@pytest.mark.skipif(available("icarus") is not None, reason=f"RTL simulation: {available('icarus')}")
def test_the_testbench_runs_as_copied_and_fails_on_the_documented_shortcut(tmp_path):
    text = DOC.read_text()
    tb = tmp_path / "tb"
    tb.mkdir()
    for name, body in files(text).items():
        (tb / name).write_text(body)
    (tmp_path / ".venv").symlink_to(ROOT / ".venv")
    run = next(b for lang, b in blocks(text) if lang == "sh" and "tb/run_tb.py icarus" in b)
    r = _run(tmp_path, run)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    assert "icarus: 1 of 1 test(s) passed" in r.stdout
    assert "[Icarus Verilog] PASS: 96 elements of 4 op(s) in 96 beats, every output equal to the golden values" in out
    v = tb / "rshift_round.v"
    v.write_text(v.read_text().replace("up = q[0];", "up = 1'b1;"))
    r = _run(tmp_path, run.splitlines()[-1])         # the simulation again, on the changed design
    out = r.stdout + r.stderr
    assert r.returncode == 1 and "icarus: 0 of 1 test(s) passed" in r.stdout, out[-4000:]
    quoted = next(b for lang, b in blocks(text) if lang == "text" and "first divergence" in b)
    for line in quoted.splitlines():
        assert line in out, f"VERIFY.md quotes a line the run did not print: {line}"
