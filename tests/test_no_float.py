"""The integer runtime never puts a float on the datapath.

A static scan of every module in intsim/ for the ways a float enters Python/NumPy code:
float literals, true division, float dtypes and constructors, float math functions and
float rounding.  Modules that legitimately measure a float baseline carry a first-lines
marker ``# float-allowed: <reason>`` and must be listed in ALLOWED below, so a new
exception needs a reviewed edit of this test.
"""
import ast
import re
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "intsim"
ALLOWED = {"bench.py"}          # float32 BLAS baseline timing only

FLOAT_NAMES = {"float", "float16", "float32", "float64", "float128", "floating", "half", "single",
               "double", "longdouble", "complex64", "complex128", "complex"}
FLOAT_FUNCS = {"exp", "exp2", "expm1", "log", "log2", "log10", "log1p", "sqrt", "cbrt", "sin", "cos",
               "tan", "tanh", "sinh", "cosh", "arctan", "power", "float_power", "true_divide", "divide",
               "round", "around", "rint", "fix", "frexp", "ldexp", "hypot", "mean", "average", "std",
               "var", "nanmean", "linspace", "logspace", "isnan", "isfinite", "nan_to_num", "interp"}
MODULES = {"np", "numpy", "math", "cmath"}
#: dtype names NumPy accepts as strings (a help text that merely starts with "float" is not one)
FLOAT_DTYPE_STR = re.compile(r"^[<>=|]?(float(16|32|64|128)?|half|single|double|longdouble|f[248]|e|d|g|"
                             r"complex(64|128)?|c(8|16))$")


def _violations(src: str, fname: str):
    out = []
    for node in ast.walk(ast.parse(src, fname)):
        where = f"{fname}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Constant) and isinstance(node.value, (float, complex)):
            out.append(f"{where}: float literal {node.value!r}")
        elif isinstance(node, (ast.BinOp, ast.AugAssign)) and isinstance(node.op, ast.Div):
            out.append(f"{where}: true division '/' (use // or fixedpoint.div_round)")
        elif isinstance(node, ast.Name) and node.id in FLOAT_NAMES:
            out.append(f"{where}: float name {node.id}")
        elif isinstance(node, ast.Attribute):
            base = node.value.id if isinstance(node.value, ast.Name) else None
            if node.attr in FLOAT_NAMES:
                out.append(f"{where}: float attribute .{node.attr}")
            elif base in MODULES and node.attr in FLOAT_FUNCS:
                out.append(f"{where}: float function {base}.{node.attr}")
            elif base == "math":
                out.append(f"{where}: math.{node.attr}")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and FLOAT_DTYPE_STR.match(node.value):
            out.append(f"{where}: float dtype string {node.value!r}")
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            # a relative import names a module of ours (e.g. `from .exp import di_exp`)
            absolute = isinstance(node, ast.ImportFrom) and node.level == 0
            names = [a.name for a in node.names] + ([node.module] if absolute else [])
            if any(n in ("math", "cmath", "statistics", "torch", "scipy") or n in FLOAT_NAMES
                   or n in FLOAT_FUNCS for n in names if n):
                out.append(f"{where}: imports {names}")
    return out


def _modules():
    return sorted(p for p in PKG.rglob("*.py"))


@pytest.mark.parametrize("path", _modules(), ids=lambda p: p.name)
def test_module_has_no_float_on_datapath(path):
    src = path.read_text()
    marked = "# float-allowed:" in "\n".join(src.splitlines()[:5])
    if path.name in ALLOWED:
        assert marked, f"{path.name} is allowed floats but lacks its '# float-allowed:' marker"
        return
    assert not marked, f"{path.name} claims '# float-allowed:' but is not in the reviewed ALLOWED list"
    bad = _violations(src, path.name)
    assert not bad, "floats in the integer runtime:\n" + "\n".join(bad)


def test_scanner_catches_each_kind_of_float():
    """The scan itself must be able to fail: every construct below is one violation."""
    samples = ["x = 0.5", "y = a / b", "a /= 2", "z = np.float32(1)", "w = x.astype(float)",
               "v = np.exp(x)", "u = np.round(x)", "import math", "t = np.zeros(3, 'float64')",
               "s = np.mean(x)", "r = math.floor(x)", "from numpy import float64",
               "from numpy import exp", "from math import floor", "a.astype('f8')", "np.zeros(2, '<f4')"]
    for s in samples:
        assert _violations(s, "sample.py"), f"scanner missed: {s}"
    assert not _violations("y = a // b\nz = np.int64(x) >> 3\nq = np.zeros(3, np.int32)\n"
                           "from .exp import di_exp\nhelp = 'float LLaMA checkpoint in'", "ok.py")
