"""Every reference to a repository file in code and docs names a file that exists.

Checked, each failure named by file and line:

* every ``docs/...`` path in the code (``intsim/ intsim_app/ converters/ rtl/ scripts/
  tests/``, the Makefile), README.md and docs/*.md must exist (from the repository root);
* every relative Markdown link or image, ``[text](path)``, in README.md and docs/*.md must
  exist (from the Markdown file's folder);
* every inline code span in README.md and docs/*.md that is a bare repository path
  (```intsim/llama.py```, ```converters/```) must exist; spans with a placeholder
  (``{``, ``*``, ``<``) are not paths and are skipped;
* anchors are checked, not ignored: ``docs/X.md#slug`` (and ``#slug`` within a file)
  must be the GitHub slug of a heading of X.md;
* a section number cited next to the file, ``docs/SPEC.md §4.7``, ``SPEC section 14``,
  ``docs/GOLDEN_FORMAT.md section 2.1`` (and a bare ``section N`` inside SPEC.md and
  GOLDEN_FORMAT.md, which cite their own sections so), must be a numbered heading there.
"""
import re
from functools import lru_cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CODE_DIRS = ("intsim", "intsim_app", "converters", "rtl", "scripts", "tests")
CODE_SUFFIXES = {".py", ".v", ".sh", ".toml", ".md", ".txt"}
SKIP_DIRS = {"__pycache__", "build", ".pytest_cache", ".hypothesis"}
#: top-level folders a bare path in a Markdown code span may start with
TOP = ("intsim", "intsim_app", "converters", "tests", "rtl", "scripts", "docs", "models", "golden")

DOCS_PATH = re.compile(r"(?<![\w./~-])(docs/[\w./-]*[\w-])(#[\w-]+)?")
MD_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
CODE_SPAN = re.compile(r"(?<!`)`([^`\n]+)`(?!`)")
BARE_PATH = re.compile(rf"^(?:{'|'.join(TOP)})/[\w./-]*$")
SECTION = r"(?:§ ?|section )(\d+(?:\.\d+)*)"
#: "docs/SPEC.md §4", "docs/GOLDEN_FORMAT.md) §2", "SPEC section 14", "SPEC.md §2"
CITED = re.compile(rf"(?<![\w/])(?:docs/)?(SPEC|GOLDEN_FORMAT|MODEL_FORMAT|RESULTS)(?:\.md)?\]?\)?,? {SECTION}")
OWN_SECTION = re.compile(rf"(?<![\w.])(?<!SPEC )(?<!SPEC\.md ){SECTION}")
SELF_CITING = ("SPEC.md", "GOLDEN_FORMAT.md")


def _files():
    out = [ROOT / "README.md", ROOT / "Makefile", *sorted((ROOT / "docs").glob("*.md"))]
    for d in CODE_DIRS:
        out += sorted(p for p in (ROOT / d).rglob("*") if p.is_file() and p.suffix in CODE_SUFFIXES
                      and not SKIP_DIRS & set(p.relative_to(ROOT).parts))
    # this file's samples are broken on purpose (see the last test)
    return [p for p in out if p != Path(__file__).resolve()]


def _slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading: lower case, punctuation dropped, spaces to -."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@lru_cache(maxsize=None)
def _headings(md: Path) -> tuple[frozenset, frozenset]:
    """(anchors, section numbers) of a Markdown file's headings, outside code fences."""
    anchors, numbers, fenced = set(), set(), False
    for line in md.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
        m = None if fenced else re.match(r"#{1,6} +(.*)", line)
        if m:
            anchors.add(_slug(m.group(1)))
            n = re.match(r"(\d+(?:\.\d+)*)\.? ", m.group(1))
            if n:
                numbers.add(n.group(1))
    return frozenset(anchors), frozenset(numbers)


def _check_target(target: Path, anchor: str | None, what: str) -> str | None:
    if not target.exists():
        return f"{what}: no such file {target.relative_to(ROOT) if target.is_relative_to(ROOT) else target}"
    if anchor and target.suffix == ".md" and anchor not in _headings(target)[0]:
        return f"{what}: {target.name} has no heading with anchor #{anchor}"
    return None


def _problems(path: Path, text: str) -> list[str]:
    rel = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    is_md = path.suffix == ".md" and (path.parent == ROOT or path.parent == ROOT / "docs")
    out = []
    fenced = False
    for no, line in enumerate(text.splitlines(), 1):
        where = f"{rel}:{no}"
        if is_md and line.lstrip().startswith("```"):
            fenced = not fenced
        for m in DOCS_PATH.finditer(line):
            p = m.group(1)
            bad = _check_target(ROOT / p, (m.group(2) or "#")[1:] or None, f"{where}: {p}")
            out += [bad] if bad else []
        for m in CITED.finditer(line):
            target = ROOT / "docs" / f"{m.group(1)}.md"
            if target.exists() and m.group(2) not in _headings(target)[1]:
                out.append(f"{where}: {target.name} has no section {m.group(2)}")
        if not is_md:
            continue
        if path.name in SELF_CITING and not fenced:
            for m in OWN_SECTION.finditer(CITED.sub("", line)):
                if m.group(1) not in _headings(path)[1]:
                    out.append(f"{where}: {path.name} has no section {m.group(1)}")
        for m in MD_LINK.finditer(line):
            link = m.group(1)
            if re.match(r"[a-z][a-z0-9+.-]*:", link):          # http:, https:, mailto:
                continue
            file, _, anchor = link.partition("#")
            target = (path.parent / file).resolve() if file else path
            bad = _check_target(target, anchor or None, f"{where}: link {link}")
            out += [bad] if bad else []
        if not fenced:
            for m in CODE_SPAN.finditer(line):
                span = m.group(1)
                if BARE_PATH.match(span) and not (ROOT / span).exists():
                    out.append(f"{where}: `{span}`: no such file or folder")
    return out


def test_every_referenced_repo_file_exists():
    files = _files()
    assert {ROOT / "README.md", ROOT / "docs" / "SPEC.md", ROOT / "intsim" / "llama.py"} <= set(files)
    bad = [b for p in files for b in _problems(p, p.read_text(errors="replace"))]
    assert not bad, "broken references to repository files:\n" + "\n".join(bad)


def test_the_checker_finds_each_kind_of_broken_reference():
    """The check must be able to fail: each line below holds exactly one broken reference."""
    code = ROOT / "intsim" / "sample.py"
    md = ROOT / "docs" / "sample.md"
    broken_code = ["Spec: docs/spec/50-exp.md.", "(docs/RESULTS table (a))", "see docs/SPEC.md §99",
                   "docs/SPEC.md section 4.99", "SPEC section 17", "docs/SPEC.md#no-such-heading",
                   "docs/GOLDEN_FORMAT.md section 9"]
    for line in broken_code:
        assert len(_problems(code, line)) == 1, line
    broken_md = ["[spec](SPEC.md#nope)", "[x](../intsim/nope.py)", "![img](missing.png)",
                 "the `intsim/cli.py` module", "[here](#no-such-heading)"]
    for line in broken_md:
        assert len(_problems(md, line)) == 1, line
    fine_code = ("docs/SPEC.md §4.7, docs/SPEC.md section 14, SPEC §8.7, docs/RESULTS.md, "
                 "docs/GOLDEN_FORMAT.md section 2.1, https://x.readthedocs.io/en/docs/a, "
                 "docs/SPEC.md#2-options-the-choices-a-hardware-team-may-make-differently, "
                 "illm-method section 99")
    assert _problems(code, fine_code) == []
    fine_md = ("[spec](SPEC.md#151-reading-the-overflow-report-intsim-overflow-intsimoverflow) "
               "[r](../README.md) [u](https://example.org/x.md) `intsim/llama.py` `converters/` "
               "`models/smollm2-fsbr/w{8a8,6a6}.safetensors` `out/x.intsim`")
    assert _problems(md, fine_md) == []
    # a bare "section N" counts against the file's own headings only in the self-citing docs
    assert len(_problems(ROOT / "docs" / "SPEC.md", "see section 99")) == 1
    assert _problems(ROOT / "docs" / "SPEC.md", "see section 14 and §1.4") == []
    assert _problems(ROOT / "docs" / "RESULTS.md", "see section 99") == []
