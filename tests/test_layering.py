"""The integer runtime does not import the float side (nor the command line above it).

Layers, bottom up: ``intsim`` (integer runtime) and ``converters`` (float side, which uses
``intsim``), then ``intsim_app`` (the ``intsim`` command line, the only package importing
both).  Two checks, because each misses what the other sees:

* a static scan of every ``intsim/**/*.py`` for an import of ``converters`` or
  ``intsim_app`` anywhere in the file, a lazy one inside a function included
  (``import x``, ``from x import y``, ``importlib.import_module("x")``, ``__import__("x")``);
* a fresh interpreter whose import system refuses ``converters`` and ``intsim_app``
  imports every ``intsim`` module, so an import made at import time by any route (a
  computed name, a helper that imports for you) fails there.
"""
import ast
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "intsim"
#: the packages the integer runtime must never import
FORBIDDEN = ("converters", "intsim_app")


def _forbidden(name: str | None) -> bool:
    return bool(name) and name.split(".")[0] in FORBIDDEN


def _imports_of_forbidden(src: str, fname: str) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(src, fname)):
        where = f"{fname}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            out += [f"{where}: import {a.name}" for a in node.names if _forbidden(a.name)]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and _forbidden(node.module):
            out.append(f"{where}: from {node.module} import ...")
        elif isinstance(node, ast.Call) and node.args:
            f = node.func
            fn = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else None
            arg = node.args[0]
            if (fn in ("import_module", "__import__") and isinstance(arg, ast.Constant)
                    and isinstance(arg.value, str) and _forbidden(arg.value)):
                out.append(f"{where}: {fn}({arg.value!r})")
    return out


def _intsim_files():
    return sorted(PKG.rglob("*.py"))


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def test_no_intsim_module_imports_the_float_side_or_the_app():
    files = _intsim_files()
    assert len(files) > 20, f"found only {len(files)} files under {PKG}"
    bad = []
    for p in files:
        bad += _imports_of_forbidden(p.read_text(), str(p.relative_to(ROOT)))
    assert not bad, "the integer runtime imports a layer it must not:\n" + "\n".join(bad)


def test_scan_catches_every_form_of_import():
    """The scan must be able to fail: each sample is one violation, the clean ones none."""
    samples = ["import converters", "import converters.ppl as p", "from converters import convert",
               "from converters.synthetic import make_block",
               "def f():\n    from converters.modelbench import model_bench",
               "import os, converters.ppl", "importlib.import_module('converters.ppl')",
               "__import__('converters')", "from intsim_app.cli import main", "import intsim_app"]
    for s in samples:
        assert _imports_of_forbidden(s, "sample.py"), f"scan missed: {s!r}"
    clean = ("from .convert import x\nimport convertersx\nfrom intsim.run import cmd_run\n"
             "s = 'converters/ppl.py'\n# import converters\nimport_module(name)\n")
    assert _imports_of_forbidden(clean, "ok.py") == []


#: run in a fresh interpreter: refuse FORBIDDEN, import each module named on the command
#: line, report the first that fails and exit 1; then prove the block was in force
_HARNESS = textwrap.dedent("""
    import importlib, sys
    BLOCKED = {blocked!r}

    class Refuse:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError("layering: blocked import of " + name)
            return None

    assert not any(m.split(".")[0] in BLOCKED for m in sys.modules), "already imported"
    sys.meta_path.insert(0, Refuse())
    for mod in sys.argv[1:]:
        try:
            importlib.import_module(mod)
        except ImportError as e:
            print(f"{{mod}}: {{e}}")
            sys.exit(1)
    leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    if leaked:
        print("imported anyway:", leaked)
        sys.exit(1)
    try:
        import converters
    except ImportError as e:
        assert "layering: blocked" in str(e), e
    else:
        sys.exit("the block was not in force")
    print("ok", len(sys.argv) - 1)
""")


def _import_blocked(modules, extra_path=None):
    env = None
    if extra_path is not None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(extra_path), *filter(None, [os.environ.get("PYTHONPATH")])])}
    return subprocess.run([sys.executable, "-c", _HARNESS.format(blocked=FORBIDDEN), *modules],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)


def test_every_intsim_module_imports_without_the_float_side():
    modules = [_module_name(p) for p in _intsim_files()]
    assert "intsim" in modules and "intsim.llama" in modules
    r = _import_blocked(modules)
    assert r.returncode == 0 and r.stdout.strip() == f"ok {len(modules)}", \
        f"an intsim module needs the float side:\n{r.stdout}{r.stderr}"


@pytest.mark.parametrize("body", ["from converters.synthetic import make_block",
                                  "import importlib\nimportlib.import_module('conv' + 'erters.ppl')",
                                  "import intsim_app.cli"],
                         ids=["plain", "computed_name", "app_layer"])
def test_the_block_catches_an_import_of_the_float_side(tmp_path, body):
    """The same harness must fail, naming the module, on one that imports the float side
    or the app layer at import time, however it spells the import."""
    (tmp_path / "leaky_mod.py").write_text(body + "\n")
    r = _import_blocked(["intsim.errors", "leaky_mod"], extra_path=tmp_path)
    assert r.returncode == 1 and r.stdout.startswith("leaky_mod: layering: blocked import of "), \
        r.stdout + r.stderr
