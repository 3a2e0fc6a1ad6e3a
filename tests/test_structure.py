"""The integer runtime's shape rules (the architecture issue's size and naming constraints):
no module over 800 lines, no function over 80 lines without a comment saying why it must
be one, rounding codes compared by name (``fixedpoint.RC_*``) and never as literals, and
every operator's Numba arithmetic in its own module (the fused path only orchestrates)."""
import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUNTIME = sorted((ROOT / "intsim").rglob("*.py"))
MAX_FILE, MAX_FUNC = 800, 80
WHY = "# why one function:"


def long_functions(src: str):
    lines = src.splitlines()
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            n = node.end_lineno - node.lineno + 1
            body = "\n".join(lines[node.lineno - 1:node.end_lineno])
            if n > MAX_FUNC and WHY not in body:
                yield node.name, node.lineno, n


def literal_codes(src: str):
    for i, line in enumerate(src.splitlines(), 1):
        if re.search(r"\b(code|rcode|rounding_code)\s*[=!]=\s*\d", line) or \
                re.search(r"\d\s+if\s+fitted\s+else\s+code", line):
            yield i, line.strip()


@pytest.mark.parametrize("path", RUNTIME, ids=lambda p: str(p.relative_to(ROOT)))
def test_runtime_module_shape(path):
    src = path.read_text()
    n = len(src.splitlines())
    assert n <= MAX_FILE, f"{path.relative_to(ROOT)}: {n} lines > {MAX_FILE}"
    assert list(long_functions(src)) == [], f"{path.relative_to(ROOT)}: functions over {MAX_FUNC} lines without '{WHY}'"
    assert list(literal_codes(src)) == [], f"{path.relative_to(ROOT)}: rounding codes as literals"


def test_the_checks_can_fail():
    body = "\n".join(f"    x = {i}" for i in range(MAX_FUNC + 1))
    long_src = f"def f():\n{body}\n"
    assert [(n, ln) for n, ln, _ in long_functions(long_src)] == [("f", 1)]
    assert list(long_functions(f"def f():\n    {WHY} a reason\n{body}\n")) == []
    assert list(literal_codes("    if code == 4:\n        pass\n")) == [(1, "if code == 4:")]
    assert list(literal_codes("    4 if fitted else code)\n"))
    assert list(literal_codes("    if code == RC_CEIL:\n")) == []


def test_fused_path_has_no_arithmetic_of_its_own():
    """intsim/fastpath.py calls the operators' kernels: it defines no rounding, division
    or shift-rounding helper and imports none of the fixed-point primitives but the
    scale fit its score-scale refit shares with llama.mul_scales."""
    src = (ROOT / "intsim" / "fastpath.py").read_text()
    tree = ast.parse(src)
    names = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
    assert not {n for n in names if re.search(r"round|div|rshift|exp_apply|sigmoid", n)}
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
                and n.module in ("fixedpoint", "intsim.fixedpoint") for a in n.names}
    assert imported <= {"ABS_LIMIT", "dyadic_fit_nb", "rounding_code"}, imported
