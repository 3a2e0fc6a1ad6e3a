"""scripts/ppl_table.py: the consolidated perplexity table of docs/RESULTS.md (issue 15,
item 8).  The committed rows file is well formed; on the small model, a row is converted and
scored once, its figure is what `intsim ppl` says of the same model, a second run measures
nothing, and a `known` figure is shown with its section; bad rows files are refused by entry."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from model_helpers import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import ppl_table  # noqa: E402

INTSIM = str(Path(sys.executable).parent / "intsim")


def test_committed_rows_file_is_well_formed():
    plan = ppl_table.load_rows(ROOT / "docs" / "ppl-rows.toml")
    assert set(plan["texts"]) == {"persuasion", "hamlet"}
    names = [r["name"] for r in plan["rows"]]
    assert "w4a4-recipe" in names and len(names) == len(set(names))


def _rows(tmp_path, text, known=""):
    f = tmp_path / "rows.toml"
    f.write_text(f'source = "{ROOT / "models" / "small"}"\nmax_tokens = 48\nctx = 24\n'
                 f'[texts]\nsample = ["{text}", 20.0, "made up for the test"]\n'
                 f'[[rows]]\nname = "a8"\nlabel = "W8A8"\nconvert = "--wbits 8 --abits 8"\n'
                 f'[[rows]]\nname = "b"\nlabel = "known row"\nconvert = "--wbits 6 --abits 6"\n'
                 f'{known}')
    return f


def test_a_row_is_measured_once_and_equals_intsim_ppl(tmp_path):
    text = tmp_path / "sample.txt"
    text.write_text((ROOT / "models" / "small" / "train_meta.json").read_text() * 4)
    rows = _rows(tmp_path, text, 'known = { sample = [30.0, "a section"] }\n')
    out = tmp_path / "out"
    cmd = [sys.executable, str(ROOT / "scripts" / "ppl_table.py"), str(rows), "--out", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    # the figure is what intsim ppl says of the converted model, run here directly
    d = subprocess.run([INTSIM, "ppl", str(out / "a8.intsim"), "--text", str(text), "--max-tokens",
                        "48", "--ctx", "24", "--json", "--no-float"], capture_output=True, text=True)
    ppl = json.loads(d.stdout)["ppl_int"]
    assert json.loads((out / "a8.sample.json").read_text())["ppl_int"] == ppl
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("| W8A8 "))
    shown = f"{ppl:.0f}" if ppl >= 1000 else f"{ppl:.5g}"      # 5 digits, whole above 1000
    ratio = ppl / 20.0
    assert f"({shown})" in line and (f"{ratio:.4f}" if ratio < 2 else f"{ratio:.3g}") in line
    known = next(ln for ln in r.stdout.splitlines() if ln.startswith("| known row "))
    assert "1.5000 (30) [1]" in known and "[1] measured earlier: docs/RESULTS.md, a section" in r.stdout
    assert not (out / "b.intsim").exists()          # a known figure is not measured again
    # a second run measures nothing: the model file is not even needed
    (out / "a8.intsim").unlink()
    r2 = subprocess.run(cmd, capture_output=True, text=True)
    assert r2.returncode == 0 and r2.stdout == r.stdout and not (out / "a8.intsim").exists()


@pytest.mark.parametrize("body,msg", [
    ('source = "x"\n[texts]\n', "no 'rows'"),
    ('source = "x"\nrows = []\n[texts]\nt = ["f", "x", "y"]\n', r"texts\.t must be"),
    ('source = "x"\n[texts]\nt = ["f", 1.0, "y"]\n[[rows]]\nname = "a"\nlabel = "A"\n', r"rows\[0\]: 'convert'"),
    ('source = "x"\n[texts]\nt = ["f", 1.0, "y"]\n[[rows]]\nname = "a"\nlabel = "A"\nconvert = ""\n'
     '[[rows]]\nname = "a"\nlabel = "B"\nconvert = ""\n', r"rows\[1\]: name 'a' twice"),
    ('source = "x"\n[texts]\nt = ["f", 1.0, "y"]\n[[rows]]\nname = "a"\nlabel = "A"\nconvert = ""\n'
     'known = { u = [1.0, "s"] }\n', r"\(a\): known\.u is not a text"),
])
def test_bad_rows_files_are_refused_by_entry(tmp_path, body, msg):
    f = tmp_path / "rows.toml"
    f.write_text(body)
    with pytest.raises(ppl_table.RowsError, match=msg):
        ppl_table.load_rows(f)
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "ppl_table.py"), str(f), "--dry-run",
                        "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert r.returncode == 2 and "ppl_table:" in r.stderr and "Traceback" not in r.stderr
