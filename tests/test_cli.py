"""The ``intsim`` command line as a newcomer meets it: help text on every argument,
``--version``, one ``intsim: error:`` line (exit 2, no traceback) for every missing or
unreadable file, a quiet end when the output pipe closes early, and the packaging
metadata an install reads."""
import argparse
import json
import os
import subprocess
import sys
import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest

from intsim_app.cli import build_parser, main
from tiny_llama import make_tiny_hf

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "golden" / "the"          # a committed dump (tests/test_golden.py checks it)


def _env(unbuffered: bool) -> dict:
    """The environment of a child intsim: a user's shell has no PYTHONUNBUFFERED (stdout into
    a pipe is then block-buffered), some CI shells set it."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    return {**env, "PYTHONUNBUFFERED": "1"} if unbuffered else env


def test_pyproject_license_is_an_spdx_string():
    # the table form ({ text = ... }) makes setuptools print a deprecation notice on every
    # install; PEP 639's SPDX expression is a plain string
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert isinstance(project["license"], str) and project["license"] == "Apache-2.0"


# ------------------------------------------------------------------ help text

def arguments_without_help(parser: argparse.ArgumentParser, path=("intsim",)):
    """(command path, argument) of every argument, subcommand included, with no help text."""
    for a in parser._actions:
        if not a.help or a.help == argparse.SUPPRESS:
            yield " ".join(path), "/".join(a.option_strings) or a.dest
        if isinstance(a, argparse._SubParsersAction):
            helps = {c.dest: c.help for c in a._choices_actions}
            for name, sub in a.choices.items():
                if not helps.get(name):
                    yield " ".join(path), name
                yield from arguments_without_help(sub, (*path, name))


def test_every_argument_of_every_subcommand_has_help():
    assert list(arguments_without_help(build_parser())) == []


def test_the_help_walk_can_fail():
    p = argparse.ArgumentParser(prog="x")
    p.add_argument("--documented", help="yes")
    sub = p.add_subparsers(dest="c", help="commands")
    s = sub.add_parser("child")                       # no help for the subcommand itself
    s.add_argument("positional")                      # nor for this argument
    assert list(arguments_without_help(p)) == [("intsim", "child"), ("intsim child", "positional")]


def test_version_comes_from_the_package_metadata(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    import intsim
    assert capsys.readouterr().out.strip() == f"intsim {version('intsim')}"
    assert version("intsim") == intsim.__version__       # pyproject.toml and the runtime agree


# ------------------------------------------------------------------ missing or unreadable files

@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    hf = make_tiny_hf(d / "hf", n_layers=1, dim=64, n_heads=4, n_kv_heads=2, vocab_size=300,
                      max_pos=64)
    model = d / "tiny.intsim"
    assert main(["convert", str(hf), "--out", str(model)]) == 0
    garbage = d / "garbage.bin"
    garbage.write_bytes(bytes(range(256)) * 8)       # neither safetensors, JSON nor UTF-8
    text = d / "text.txt"
    text.write_text("a single man in possession of a good fortune " * 4)
    return {"hf": hf, "model": model, "garbage": garbage, "text": text, "dir": d,
            "missing": d / "missing"}


M, T, G = "{model}", "{text}", "{garbage}"
# (id, argv with {placeholders}, the path the one error line must name)
CASES = [
    ("run-missing", ["run", "{missing}.intsim", "--prompt", "x"], "{missing}.intsim"),
    ("run-hf-folder", ["run", "{hf}", "--prompt", "x"], "{hf}"),
    ("run-garbage", ["run", G, "--prompt", "x"], G),
    ("convert-missing-src", ["convert", "{missing}", "--out", "{dir}/o.intsim"], "{missing}"),
    ("convert-calib-missing", ["convert", "{hf}", "--out", "{dir}/o.intsim", "--calib", "{missing}.pth"], "{missing}.pth"),
    ("convert-calib-folder", ["convert", "{hf}", "--out", "{dir}/o.intsim", "--calib", "{dir}"], "{dir}"),
    ("convert-calib-garbage", ["convert", "{hf}", "--out", "{dir}/o.intsim", "--calib", G], G),
    ("convert-row-bits-missing", ["convert", "{hf}", "--out", "{dir}/o.intsim", "--row-bits", "{missing}.st"], "{missing}.st"),
    ("convert-row-bits-garbage", ["convert", "{hf}", "--out", "{dir}/o.intsim", "--row-bits", G], G),
    ("convert-spec-missing", ["convert", "{hf}", "--out", "{dir}/o.intsim", "--spec", "{missing}.json"], "{missing}.json"),
    ("convert-spec-garbage", ["convert", "{hf}", "--out", "{dir}/o.intsim", "--spec", G], G),
    ("ppl-missing-model", ["ppl", "{missing}.intsim", "--text", T], "{missing}.intsim"),
    ("ppl-text-missing", ["ppl", M, "--text", "{missing}.txt"], "{missing}.txt"),
    ("ppl-text-folder", ["ppl", M, "--text", "{dir}"], "{dir}"),
    ("ppl-text-not-utf8", ["ppl", M, "--text", G], G),
    ("ppl-float-src-missing", ["ppl", M, "--text", T, "--float-src", "{missing}"], "{missing}"),
    ("ppl-spec-missing", ["ppl", M, "--text", T, "--spec", "{missing}.json"], "{missing}.json"),
    ("golden-missing-model", ["golden", "{missing}.intsim", "--prompt", "x", "--out", "{dir}/g"], "{missing}.intsim"),
    ("replay-missing-dump", ["replay", "{missing}", M], "{missing}"),
    ("replay-missing-model", ["replay", str(GOLDEN), "{missing}.intsim"], "{missing}.intsim"),
    ("compare-missing-golden", ["compare", "{missing}", str(GOLDEN)], "{missing}"),
    ("compare-missing-dut", ["compare", str(GOLDEN), "{missing}"], "{missing}"),
    ("compare-dut-is-a-file", ["compare", str(GOLDEN), T], T),
    ("overflow-missing-model", ["overflow", "{missing}.intsim", "--prompt", "x"], "{missing}.intsim"),
    ("bench-missing-model", ["bench", "--quick", "--model", "{missing}.intsim"], "{missing}.intsim"),
    # outputs that cannot be written (a path under a regular file)
    ("convert-out-unwritable", ["convert", "{hf}", "--out", T + "/o.intsim"], T),
    ("overflow-png-unwritable", ["overflow", M, "--prompt", "x", "--png", T + "/h.png",
                                 "--backend", "reference"], T + "/h.png"),
    ("golden-out-unwritable", ["golden", M, "--prompt", "x", "--out", T + "/g"], T),
]


@pytest.mark.parametrize("argv,named", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_missing_or_unreadable_file_is_one_error_line(files, capsys, argv, named):
    argv = [a.format(**files) for a in argv]
    named = named.format(**files)
    assert main(argv) == 2
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("intsim: error: ") and named in lines[0], lines[0]
    assert out == ""                       # nothing printed first (run used to echo the prompt)


def test_a_folder_given_as_the_model_points_to_convert(files, capsys):
    assert main(["run", str(files["hf"]), "--prompt", "x"]) == 2
    assert f"intsim convert {files['hf']} --out MODEL" in capsys.readouterr().err


def test_missing_text_in_a_fresh_process(files):
    # the issue's own example, as a shell runs it: exit status 2, one line, no traceback
    r = subprocess.run([sys.executable, "-m", "intsim_app", "ppl", str(files["model"]),
                        "--text", "missing.txt"], capture_output=True, text=True, cwd=files["dir"])
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr == "intsim: error: --text missing.txt: no such file\n"


def test_spec_file_is_read_like_inline_json(files):
    from intsim.modelfile import load_model
    spec = files["dir"] / "spec.json"
    spec.write_text(json.dumps({"softmax_clip": 9}))
    out = files["dir"] / "spec.intsim"
    assert main(["convert", str(files["hf"]), "--out", str(out), "--spec", str(spec)]) == 0
    assert load_model(out).spec.softmax_clip == 9


# ------------------------------------------------------------------ a pipe closed early

@pytest.mark.parametrize("unbuffered", [False, True], ids=["buffered", "unbuffered"])
@pytest.mark.parametrize("argv", [["compare", str(GOLDEN), str(GOLDEN), "--json"],
                                  ["compare", str(GOLDEN), str(GOLDEN)],
                                  ["--help"]], ids=["compare-json", "compare", "help"])
def test_output_into_a_closed_pipe_ends_quietly(argv, unbuffered):
    # `intsim ... | head`: the reader is gone before intsim writes (the read end is closed
    # before the process starts, so the first write fails, deterministically)
    rd, wr = os.pipe()
    os.close(rd)
    try:
        r = subprocess.run([sys.executable, "-m", "intsim_app", *argv], stdout=wr,
                           stderr=subprocess.PIPE, text=True, env=_env(unbuffered))
    finally:
        os.close(wr)
    assert r.stderr == ""                   # no BrokenPipeError, no "Exception ignored"
    # 141: as a shell reports a process ended by SIGPIPE; argparse's help printer swallows
    # the error itself when its write fails at once (unbuffered) and exits 0
    assert r.returncode == 141 or (argv == ["--help"] and unbuffered and r.returncode == 0)


# ------------------------------------------------------------------ what the output says

def test_one_new_token_is_one_token(files, capsys):
    assert main(["run", str(files["model"]), "--prompt", "a single", "--max-new-tokens", "1"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("a single")                 # the prompt, echoed once it can run
    assert "[1 token in " in err and "[1 tokens" not in err


@pytest.mark.parametrize("unbuffered", [False, True], ids=["buffered", "unbuffered"])
def test_run_ends_the_text_line_before_its_summary(files, unbuffered):
    # stdout and stderr into one pipe, as `intsim run ... 2>&1 | less` sees them
    r = subprocess.run([sys.executable, "-m", "intsim_app", "run", str(files["model"]), "--prompt",
                        "a single", "--max-new-tokens", "2"], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, env=_env(unbuffered))
    assert r.returncode == 0, r.stdout
    assert r.stdout.startswith("a single")
    assert r.stdout.splitlines()[-1].startswith("[2 tokens in "), r.stdout


def test_ppl_says_when_the_float_reference_is_a_dequantized_gguf(files, tmp_path, capsys):
    pytest.importorskip("gguf")
    from collections import Counter

    from converters.gguf_import import import_gguf
    from converters.ppl import float_reference_note
    from test_gguf_import import GLOBAL_MAP, LAYER_MAP, N_LAYER, hf_weights, write_gguf
    src = write_gguf(tmp_path / "t.gguf", hf_weights())
    folder = import_gguf(src, tmp_path / "hf")
    # the synthetic GGUF's storage types, counted from the test's own table
    types = [q.name for q in [t for _, t in LAYER_MAP.values()] * N_LAYER] + \
            [GLOBAL_MAP[k][1].name for k in ("model.embed_tokens.weight", "model.norm.weight")]
    quantized = Counter(t for t in types if t not in ("F32", "F16"))
    note = float_reference_note(folder)
    assert note is not None and "t.gguf dequantized" in note and "quantized model" in note
    assert f"{sum(quantized.values())} of its {len(types)} tensors" in note
    assert all(f"{t} x{n}" in note for t, n in quantized.items())
    assert float_reference_note(files["hf"]) is None          # a float checkpoint: no note

    model = tmp_path / "g.intsim"
    assert main(["convert", str(src), "--out", str(model)]) == 0
    capsys.readouterr()
    text = files["text"]
    assert main(["ppl", str(model), "--text", str(text), "--ctx", "16", "--max-tokens", "16",
                 "--float-src", str(folder), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["float_note"] == note
    assert main(["ppl", str(files["model"]), "--text", str(text), "--ctx", "16",
                 "--max-tokens", "16", "--json"]) == 0
    assert "float_note" not in json.loads(capsys.readouterr().out)
