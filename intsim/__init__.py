"""intsim: a bit-exact integer-only reference simulator of I-LLM quantized LLaMA models.

Numba's on-disk cache is keyed by each function's own source file, so a kernel that
inlines a primitive from ``fixedpoint.py`` keeps its stale machine code after that
primitive changes — kernel and reference would then silently disagree.  The cache
directory is therefore keyed by a hash of every source file of the package: any edit
gives a fresh cache.  Set NUMBA_CACHE_DIR yourself to override.  ``INTSIM_ISA=avx2``
(intsim.isa) is applied here too, before any kernel compiles.
"""
import hashlib
import os
import sys
from pathlib import Path

__version__ = "0.1.0"


def _source_hash() -> str:
    h = hashlib.sha256()
    root = Path(__file__).resolve().parent
    for p in sorted(root.rglob("*.py")):
        h.update(p.relative_to(root).as_posix().encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def _set_numba_cache_dir() -> None:
    if "NUMBA_CACHE_DIR" in os.environ:
        return
    # (joinpath, not the / operator: the float-leak scan refuses every true division)
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home().joinpath(".cache")))
    target = base.joinpath("intsim", "numba", _source_hash())
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError:
        return  # unwritable home: Numba falls back to its own default location
    os.environ["NUMBA_CACHE_DIR"] = str(target)
    if "numba" in sys.modules:  # imported before us: make it re-read the variable
        from numba.core import config
        config.reload_config()


_set_numba_cache_dir()
# INTSIM_ISA=avx2 (intsim.isa) must reach Numba before anything in this process compiles
from . import isa as _isa  # noqa: E402,F401
