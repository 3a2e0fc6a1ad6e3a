"""Every command README.md and docs/*.md show can be typed into a fresh shell after the two
set-up commands (``make run``, ``make test``), as written:

* in docs/*.md a command runs the project's own tools by path (``.venv/bin/intsim``,
  ``.venv/bin/python``, ``.venv/bin/pip``), never a bare ``intsim`` / ``python`` / ``pip``,
  which a fresh shell does not have (or has from elsewhere);
* README.md says once, before its first bare command, to activate ``.venv``;
* every ``intsim`` command (code blocks and inline code) names a real subcommand and only
  options that subcommand has; every ``python -m converters.X`` / ``python scripts/X.py``
  command only options its ``--help`` lists; every ``make X`` a target of the Makefile.

Argument syntax only: nothing is run but ``--help`` (the commands themselves need the
SmolLM2 download, PyTorch or a GPU; the reviewer ran the ones that do not by hand).
"""
import re
import shlex
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import pytest

from intsim_app.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
ACTIVATE = ". .venv/bin/activate"
BARE = {"intsim", "python", "python3", "pip"}
TOOLS = BARE | {".venv/bin/intsim", ".venv/bin/python", ".venv/bin/pip", "make"}
ENV = re.compile(r"^[A-Z_][A-Z0-9_]*=\S*$")


def _words(cmd: str) -> list[str]:
    try:
        words = shlex.split(cmd, comments=True)
    except ValueError:                      # a synopsis with an unbalanced quote
        words = cmd.split("#")[0].split()
    while words and ENV.match(words[0]):    # NUMBA_NUM_THREADS=1 .venv/bin/python ...
        words = words[1:]
    for sep in ("|", "&&", ";", ">"):       # the first command of a pipeline or list
        if sep in words:
            words = words[:words.index(sep)]
    return [w for w in words if w not in ("...", "…")]     # "and so on" placeholders


def commands(md: Path):
    """(line number, in a code block?, words) of every command line or inline command."""
    fenced, pending, start = False, "", 0
    for n, line in enumerate(md.read_text().splitlines(), 1):
        if line.startswith("```"):
            fenced = not fenced
            continue
        if fenced:
            if not pending:
                start = n
            pending += line.rstrip("\\") + " "
            if line.endswith("\\"):
                continue
            words, pending = _words(pending), ""
            if words and words[0] in TOOLS:
                yield start, True, words
        else:
            for span in re.findall(r"(?<!`)`([^`\n]+)`(?!`)", line):
                words = _words(span)
                if words and words[0] in TOOLS and len(words) > 1:
                    yield n, False, words


def _options(words) -> list[str]:
    out = []
    for w in words:
        for part in re.split(r"[\[\]|()]", w):
            if part.startswith("--") and len(part) > 2:
                out.append(part.split("=")[0])
    return out


def _intsim_problems(words) -> list[str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    rest = [w for w in words[1:]]
    if not rest or rest[0].startswith("-"):
        known = {s for a in parser._actions for s in a.option_strings}
        return [f"intsim has no option {o}" for o in _options(rest) if o not in known]
    if rest[0] not in sub.choices:
        return [f"no subcommand '{rest[0]}'"]
    sp = sub.choices[rest[0]]
    known = {s for a in sp._actions for s in a.option_strings}
    return [f"intsim {rest[0]} has no option {o}" for o in _options(rest[1:]) if o not in known]


@lru_cache(maxsize=None)
def _help(argv: tuple) -> str:
    r = subprocess.run([sys.executable, *argv, "--help"], capture_output=True, text=True,
                       cwd=ROOT, timeout=120)
    assert r.returncode == 0, f"{' '.join(argv)} --help failed:\n{r.stderr[-2000:]}"
    return r.stdout


def _python_problems(words) -> list[str]:
    args = words[1:]
    if args[:1] == ["-m"] and len(args) > 1 and args[1].startswith("converters."):
        target = ("-m", args[1])
        rest = args[2:]
        if args[1] == "converters.ablate" and rest and not rest[0].startswith("-"):
            target, rest = target + (rest[0],), rest[1:]    # its subcommands
    elif args and args[0].startswith("scripts/") and args[0].endswith(".py"):
        target, rest = (args[0],), args[1:]
    else:
        return []                           # python -c ..., -m pip, ...: not ours to check
    text = _help(target)
    return [f"{' '.join(target)} has no option {o}" for o in _options(rest)
            if not re.search(rf"(?<![\w-]){re.escape(o)}(?![\w-])", text)]


def _make_targets() -> set[str]:
    return set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.M))


def _problems(words) -> list[str]:
    tool = words[0].removeprefix(".venv/bin/")
    if tool == "intsim":
        return _intsim_problems(words)
    if tool in ("python", "python3"):
        return _python_problems(words)
    if tool == "make":
        return [f"no make target '{t}'" for t in words[1:]
                if not ENV.match(t) and not t.startswith("-") and t not in _make_targets()]
    return []


ALL = [(md, n, block, words) for md in DOCS for n, block, words in commands(md)]


@pytest.mark.parametrize("md,n,block,words", ALL,
                         ids=[f"{md.name}:{n}" for md, n, _, _ in ALL])
def test_documented_command_has_valid_syntax(md, n, block, words):
    assert _problems(words) == [], f"{md.relative_to(ROOT)}:{n}: {' '.join(words)}"


def test_commands_in_docs_name_the_venv_tools():
    bad = [f"{md.relative_to(ROOT)}:{n}: {' '.join(w)}" for md, n, block, w in ALL
           if md.name != "README.md" and block and w[0] in BARE]
    assert bad == []


def test_readme_activates_the_venv_before_its_first_bare_command():
    readme = ROOT / "README.md"
    lines = readme.read_text().splitlines()
    act = next((i + 1 for i, ln in enumerate(lines) if ln.strip().startswith(ACTIVATE)), None)
    assert act is not None, f"README.md never says '{ACTIVATE}'"
    early = [n for n, block, w in commands(readme) if w[0] in BARE and n < act]
    assert early == [], f"README.md: bare commands on lines {early} before '{ACTIVATE}'"


def test_the_checks_can_fail(tmp_path):
    assert _problems(["intsim", "run", "M", "--promt", "x"]) == ["intsim run has no option --promt"]
    assert _problems(["intsim", "runn", "M"]) == ["no subcommand 'runn'"]
    assert _problems([".venv/bin/intsim", "golden", "M", "[--layers", "0,2-3]", "[--hex-pak]"]) \
        == ["intsim golden has no option --hex-pak"]
    assert _problems(["make", "tset"]) == ["no make target 'tset'"]
    assert _problems(["python", "-m", "converters.texts", "--cache-dirr", "D"]) \
        == ["-m converters.texts has no option --cache-dirr"]
    md = tmp_path / "x.md"
    md.write_text("text `intsim run M` more\n```sh\nNUMBA_NUM_THREADS=1 python -m x \\\n  --y 1"
                  "  # c\nls\n```\n")
    assert list(commands(md)) == [(1, False, ["intsim", "run", "M"]),
                                  (3, True, ["python", "-m", "x", "--y", "1"])]
